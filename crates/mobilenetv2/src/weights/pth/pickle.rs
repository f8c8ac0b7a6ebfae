//! The pickle virtual machine: the opcodes a state dict uses, a memo, a stack with MARKs, and
//! the budgets that keep hostile pickles bounded (work, memo entries, MARKs, tuple depth).
//! What the torch globals mean is in [`super::torch`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use super::torch::{Global, Shared, StorageView};
use super::{bad, unsafe_pickle};
use crate::error::{Error, Result};

/// Work one pickle may do: opcodes executed plus values copied. A state dict needs roughly 40
/// opcodes per tensor (torchvision's ImageNet MobileNetV2, 314 tensors, runs about 12k), so
/// this is far above any real file, while bounding what a hostile pickle can make the machine
/// hold: each unit of work adds at most one value.
pub(super) const MAX_OPS: usize = 1 << 22;
/// Open MARKs at once (nesting depth); state dicts nest three deep.
pub(super) const MAX_MARKS: usize = 1 << 12;
/// Memo entries.
pub(super) const MAX_MEMO: usize = 1 << 20;
/// Tensor dimensions (PyTorch itself allows 64).
pub(super) const MAX_DIMS: usize = 64;
/// Tuples inside tuples. TUPLE1..3 need no MARK, so without this bound nesting is limited
/// only by [`MAX_OPS`], and dropping or printing a million-deep tuple overflows the stack.
pub(super) const MAX_DEPTH: usize = crate::limits::MAX_PICKLE_DEPTH;

/// A tuple and how deep tuples nest inside it (1 for a tuple of scalars), fixed when it is
/// built, so the depth bound costs one comparison per tuple.
#[derive(Default)]
pub(super) struct Tuple {
    pub(super) depth: usize,
    pub(super) items: Vec<Value>,
}

impl Tuple {
    pub(super) fn depth(v: &Value) -> usize {
        match v {
            Value::Tuple(t) => t.depth,
            _ => 0,
        }
    }
}

impl std::ops::Deref for Tuple {
    type Target = [Value];
    fn deref(&self) -> &[Value] {
        &self.items
    }
}

impl std::fmt::Debug for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.items.iter()).finish()
    }
}

/// Iterative, so that even a tuple nested deeper than the bound (were one ever built) could
/// not overflow the stack when dropped: children whose last owner this is are moved to a
/// heap stack and emptied there.
impl Drop for Tuple {
    fn drop(&mut self) {
        let mut pending = std::mem::take(&mut self.items);
        while let Some(v) = pending.pop() {
            if let Value::Tuple(rc) = v {
                if let Ok(mut t) = Rc::try_unwrap(rc) {
                    pending.append(&mut t.items);
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
pub(super) enum Value {
    None,
    Bool(bool),
    /// Every integer a state dict holds fits (the legacy magic number needs 80 bits).
    Int(i128),
    /// Checkpoints hold floats (learning rates, accuracies) that the reader never needs;
    /// the value is kept for `Debug` output.
    #[allow(dead_code)]
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Tuple>),
    /// Index into the machine's objects: lists and dicts are mutable and may be shared
    /// through the memo, so values refer to them instead of owning them.
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(StorageView),
    /// Index into [`Shared::tensors`].
    Tensor(usize),
}

impl Value {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    /// A short description for error messages: scalars with their value (strings clipped),
    /// anything else by its kind. Never `Debug` of an untrusted value, which could be huge.
    pub(super) fn describe(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Str(s) => format!("'{}'", crate::limits::clip(s, 80)),
            other => format!("a {}", other.kind()),
        }
    }
}

/// Dict keys: the hashable values a state dict or checkpoint uses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Key {
    None,
    Bool(bool),
    Int(i128),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
}

impl Key {
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Key::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short description for error messages (strings clipped, bytes by length).
    pub(super) fn describe(&self) -> String {
        match self {
            Key::None => "None".into(),
            Key::Bool(b) => b.to_string(),
            Key::Int(i) => i.to_string(),
            Key::Str(s) => format!("'{}'", crate::limits::clip(s, 80)),
            Key::Bytes(b) => format!("bytes of length {}", b.len()),
        }
    }
}

#[derive(Debug)]
pub(super) enum Obj {
    List(Vec<Value>),
    Dict(BTreeMap<Key, Value>),
}

/// The result of one pickle: its top value and the objects its handles point into.
pub(super) struct Unpickled {
    pub(super) value: Value,
    pub(super) objects: Vec<Obj>,
    /// Offset just past the STOP opcode.
    pub(super) end: usize,
}

// ---------------------------------------------------------------------------------------------
// The pickle machine

pub(super) struct Machine<'a> {
    pub(super) path: &'a Path,
    /// What is being unpickled, for error messages ("data.pkl", "the legacy object pickle").
    pub(super) what: &'a str,
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    pub(super) stack: Vec<Value>,
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u32, Value>,
    pub(super) objects: Vec<Obj>,
    pub(super) shared: &'a mut Shared,
    /// What is left of [`MAX_OPS`].
    pub(super) work: usize,
}

/// Runs the pickle starting at `data[start]` up to its STOP.
pub(super) fn unpickle(path: &Path, what: &str, data: &[u8], start: usize, shared: &mut Shared) -> Result<Unpickled> {
    let mut m = Machine {
        path,
        what,
        data,
        pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
        shared,
        work: MAX_OPS,
    };
    let value = m.run()?;
    Ok(Unpickled { value, objects: m.objects, end: m.pos })
}

/// Names of the pickle opcodes this machine does not implement, for refusals.
pub(super) fn unsupported_opcode(op: u8) -> Option<&'static str> {
    Some(match op {
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        b'P' => "PERSID",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'g' => "GET",
        b'p' => "PUT",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

impl<'a> Machine<'a> {
    /// A Format error that says where in which pickle it happened.
    pub(super) fn bad(&self, at: usize, detail: impl std::fmt::Display) -> Error {
        bad(self.path, format!("{} at byte {at}: {detail}", self.what))
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let data: &'a [u8] = self.data;
        match self.pos.checked_add(n).filter(|&end| end <= data.len()) {
            Some(end) => {
                let s = &data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.bad(
                self.pos,
                format!("truncated: {n} more bytes needed, {} left", data.len().saturating_sub(self.pos)),
            )),
        }
    }

    pub(super) fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.take_array::<1>()?[0])
    }

    pub(super) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take_array()?))
    }

    /// A length prefix as usize (the bytes themselves are checked by `take`).
    pub(super) fn len_u64(&mut self) -> Result<usize> {
        let at = self.pos;
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| self.bad(at, format!("length {n} is too large")))
    }

    /// A newline-terminated line (GLOBAL's operands).
    pub(super) fn line(&mut self) -> Result<&'a str> {
        let at = self.pos;
        let rest = &self.data[self.pos.min(self.data.len())..];
        let n =
            rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.bad(at, "truncated: unterminated GLOBAL name"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.bad(at, "GLOBAL name is not UTF-8"))?;
        self.pos = at + n + 1;
        Ok(s)
    }

    pub(super) fn utf8(&self, at: usize, bytes: &[u8]) -> Result<Value> {
        std::str::from_utf8(bytes).map(|s| Value::Str(s.into())).map_err(|_| self.bad(at, "string is not valid UTF-8"))
    }

    pub(super) fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    /// The stack floor: values below the innermost MARK belong to an outer construct.
    pub(super) fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    pub(super) fn pop(&mut self, at: usize) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.bad(at, "stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.bad(at, "stack underflow"))
    }

    pub(super) fn top(&self, at: usize) -> Result<&Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.bad(at, "stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.bad(at, "stack underflow"))
    }

    /// The values pushed since the innermost MARK, which is removed.
    pub(super) fn pop_mark(&mut self, at: usize) -> Result<Vec<Value>> {
        let mark = self.marks.pop().ok_or_else(|| self.bad(at, "no MARK to pop to"))?;
        // Marks are stack lengths at the time and the stack never shrinks below the innermost
        // one (see `pop`), so `mark <= len`; `min` keeps that true even if it ever were not.
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    pub(super) fn memo_put(&mut self, at: usize, index: u32) -> Result<()> {
        let v = self.top(at)?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
            return Err(self.bad(at, format!("more than {MAX_MEMO} memo entries")));
        }
        self.memo.insert(index, v);
        Ok(())
    }

    pub(super) fn memo_get(&mut self, at: usize, index: u32) -> Result<()> {
        let v = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| self.bad(at, format!("memo entry {index} was never stored")))?;
        self.push(v);
        Ok(())
    }

    pub(super) fn new_obj(&mut self, obj: Obj) -> usize {
        self.objects.push(obj);
        self.objects.len() - 1
    }

    pub(super) fn key(&self, at: usize, v: Value) -> Result<Key> {
        Ok(match v {
            Value::None => Key::None,
            Value::Bool(b) => Key::Bool(b),
            Value::Int(i) => Key::Int(i),
            Value::Str(s) => Key::Str(s),
            Value::Bytes(b) => Key::Bytes(b),
            other => return Err(self.bad(at, format!("a {} as a dict key is not supported", other.kind()))),
        })
    }

    pub(super) fn append(&mut self, at: usize, target: &Value, items: Vec<Value>) -> Result<()> {
        if let Value::List(i) = target {
            if let Some(Obj::List(l)) = self.objects.get_mut(*i) {
                l.extend(items);
                return Ok(());
            }
        }
        Err(self.bad(at, format!("APPEND to a {}", target.kind())))
    }

    pub(super) fn dict_insert(&mut self, at: usize, target: &Value, pairs: Vec<Value>) -> Result<()> {
        if !pairs.len().is_multiple_of(2) {
            return Err(self.bad(at, "SETITEMS with an odd number of values"));
        }
        let mut keyed = Vec::with_capacity(pairs.len() / 2);
        let mut it = pairs.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            keyed.push((self.key(at, k)?, v));
        }
        let kind = target.kind();
        if let Value::Dict(i) = target {
            if let Some(Obj::Dict(d)) = self.objects.get_mut(*i) {
                d.extend(keyed);
                return Ok(());
            }
        }
        Err(self.bad(at, format!("SETITEM on a {kind}")))
    }

    /// Takes `n` units from the work budget.
    pub(super) fn charge(&mut self, at: usize, n: usize) -> Result<()> {
        match self.work.checked_sub(n) {
            Some(left) => {
                self.work = left;
                Ok(())
            }
            None => Err(self.bad(at, format!("more than {MAX_OPS} opcodes and copied values"))),
        }
    }

    /// A tuple of `items`, refused if it would nest tuples deeper than [`MAX_DEPTH`].
    fn tuple(&self, at: usize, items: Vec<Value>) -> Result<Value> {
        let depth = 1 + items.iter().map(Tuple::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(self.bad(at, format!("tuples nest more than {MAX_DEPTH} deep")));
        }
        Ok(Value::Tuple(Rc::new(Tuple { depth, items })))
    }

    /// Runs opcodes up to STOP and returns the value it pops.
    pub(super) fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            self.charge(at, 1)?;
            let op = self.u8()?;
            let handled = match op {
                b'.' => return self.pop(at),
                0x80 | 0x95 | b'(' | b'0' | b'1' | b'2' => self.control(at, op)?,
                b'N' | 0x88 | 0x89 | b'J' | b'K' | b'M' | 0x8a | 0x8b | b'G' => self.number(at, op)?,
                b'X' | 0x8c | 0x8d | b'T' | b'U' | b'B' | b'C' | 0x8e => self.string(at, op)?,
                b')' | b't' | 0x85..=0x87 | b']' | b'l' | b'a' | b'e' | b'}' | b'd' | b's' | b'u' => {
                    self.container(at, op)?
                }
                b'q' | b'r' | 0x94 | b'h' | b'j' => self.memo_op(at, op)?,
                b'c' | 0x93 | b'Q' | b'R' | b'b' => self.object(at, op)?,
                _ => false,
            };
            if !handled {
                return Err(match unsupported_opcode(op) {
                    Some(name) => unsafe_pickle(self.path, format!("the opcode {name}")),
                    None => self.bad(at, format!("unknown opcode 0x{op:02x}")),
                });
            }
        }
    }

    /// PROTO, FRAME, MARK, POP, POP_MARK, DUP.
    fn control(&mut self, at: usize, op: u8) -> Result<bool> {
        match op {
            // PROTO: protocol 2 is what torch writes; 3..5 come with `pickle_protocol=`.
            0x80 => {
                let v = self.u8()?;
                if v > 5 {
                    return Err(self.bad(at, format!("pickle protocol {v} is not supported")));
                }
            }
            // FRAME: a length hint for buffered readers; the data is already in memory.
            0x95 => {
                self.u64()?;
            }
            b'(' => {
                if self.marks.len() >= MAX_MARKS {
                    return Err(self.bad(at, format!("more than {MAX_MARKS} nested MARKs")));
                }
                self.marks.push(self.stack.len());
            }
            b'0' => {
                self.pop(at)?;
            }
            b'1' => {
                self.pop_mark(at)?;
            }
            b'2' => {
                let v = self.top(at)?.clone();
                self.push(v);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// None, booleans, the integer opcodes and BINFLOAT.
    fn number(&mut self, at: usize, op: u8) -> Result<bool> {
        let v = match op {
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'J' => Value::Int(i32::from_le_bytes(self.take_array()?).into()),
            b'K' => Value::Int(self.u8()?.into()),
            b'M' => Value::Int(u16::from_le_bytes(self.take_array()?).into()),
            // LONG1 / LONG4: little-endian two's complement of the given length.
            0x8a | 0x8b => {
                let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                if n > 16 {
                    return Err(self.bad(at, format!("a {n}-byte integer is too large")));
                }
                let b = self.take(n)?;
                let mut v: i128 = 0;
                for (i, &byte) in b.iter().enumerate() {
                    v |= (byte as i128) << (8 * i);
                }
                // Sign-extend from the top bit of the last byte.
                if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                    v -= 1i128 << (8 * n);
                }
                Value::Int(v)
            }
            // BINFLOAT is big-endian, unlike everything else in a pickle.
            b'G' => Value::Float(f64::from_be_bytes(self.take_array()?)),
            _ => return Ok(false),
        };
        self.push(v);
        Ok(true)
    }

    /// Text (BINUNICODE*, Python 2 BINSTRING) and bytes (BINBYTES*).
    fn string(&mut self, at: usize, op: u8) -> Result<bool> {
        let v = match op {
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => self.u32()? as usize,
                    0x8c => self.u8()? as usize,
                    _ => self.len_u64()?,
                };
                let b = self.take(n)?;
                self.utf8(at, b)?
            }
            // Python 2 `str` (pre-1.0 torch files); torch loads them as UTF-8 text.
            b'T' | b'U' => {
                let n = if op == b'T' {
                    let n = i32::from_le_bytes(self.take_array()?);
                    usize::try_from(n).map_err(|_| self.bad(at, "negative BINSTRING length"))?
                } else {
                    self.u8()? as usize
                };
                let b = self.take(n)?;
                self.utf8(at, b)?
            }
            b'B' | b'C' | 0x8e => {
                let n = match op {
                    b'B' => self.u32()? as usize,
                    b'C' => self.u8()? as usize,
                    _ => self.len_u64()?,
                };
                Value::Bytes(self.take(n)?.into())
            }
            _ => return Ok(false),
        };
        self.push(v);
        Ok(true)
    }

    /// Tuples, lists and dicts: building them and adding to them.
    fn container(&mut self, at: usize, op: u8) -> Result<bool> {
        match op {
            b')' => {
                let v = self.tuple(at, Vec::new())?;
                self.push(v);
            }
            b't' => {
                let items = self.pop_mark(at)?;
                let v = self.tuple(at, items)?;
                self.push(v);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop(at)?);
                }
                items.reverse();
                let v = self.tuple(at, items)?;
                self.push(v);
            }
            b']' | b'l' => {
                let items = if op == b'l' { self.pop_mark(at)? } else { Vec::new() };
                let i = self.new_obj(Obj::List(items));
                self.push(Value::List(i));
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![self.pop(at)?] } else { self.pop_mark(at)? };
                let target = self.top(at)?.clone();
                self.append(at, &target, items)?;
            }
            b'}' | b'd' => {
                let items = if op == b'd' { self.pop_mark(at)? } else { Vec::new() };
                let i = self.new_obj(Obj::Dict(BTreeMap::new()));
                self.dict_insert(at, &Value::Dict(i), items)?;
                self.push(Value::Dict(i));
            }
            b's' | b'u' => {
                let items = if op == b'u' {
                    self.pop_mark(at)?
                } else {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    vec![k, v]
                };
                let target = self.top(at)?.clone();
                self.dict_insert(at, &target, items)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// BINPUT, LONG_BINPUT, MEMOIZE, BINGET, LONG_BINGET.
    fn memo_op(&mut self, at: usize, op: u8) -> Result<bool> {
        match op {
            b'q' => {
                let i = self.u8()?;
                self.memo_put(at, i.into())?;
            }
            b'r' => {
                let i = self.u32()?;
                self.memo_put(at, i)?;
            }
            0x94 => {
                let i = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                self.memo_put(at, i)?;
            }
            b'h' => {
                let i = self.u8()?;
                self.memo_get(at, i.into())?;
            }
            b'j' => {
                let i = self.u32()?;
                self.memo_get(at, i)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// GLOBAL, STACK_GLOBAL, BINPERSID, REDUCE and BUILD: the opcodes that name or make
    /// objects, all interpreted by [`super::torch`] against its whitelist.
    fn object(&mut self, at: usize, op: u8) -> Result<bool> {
        match op {
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let g = self.global(module, name)?;
                self.push(g);
            }
            0x93 => {
                let name = self.pop(at)?;
                let module = self.pop(at)?;
                let (Value::Str(m), Value::Str(n)) = (&module, &name) else {
                    return Err(self.bad(at, format!("STACK_GLOBAL of a {} and a {}", module.kind(), name.kind())));
                };
                let g = self.global(m, n)?;
                self.push(g);
            }
            b'Q' => {
                let pid = self.pop(at)?;
                let v = self.persistent_load(at, &pid)?;
                self.push(v);
            }
            b'R' => {
                let args = self.pop(at)?;
                let callable = self.pop(at)?;
                let v = self.reduce(at, callable, args)?;
                self.push(v);
            }
            b'b' => {
                let state = self.pop(at)?;
                let target = self.top(at)?.clone();
                self.build(&target, &state)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}
