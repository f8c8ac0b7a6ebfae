//! PyTorch `.pth`/`.pt` state dicts, read without executing anything.
//!
//! `torch.save` writes Python pickles, and a pickle is a program: loading one with Python's
//! `pickle` calls whatever functions it names. This reader instead runs the pickle on a small
//! virtual machine of its own that knows only the opcodes a state dict uses and a short
//! whitelist of "globals" (`collections.OrderedDict`, `torch._utils._rebuild_tensor*`,
//! `torch._utils._rebuild_parameter*`, the `torch.*Storage` classes and `torch` dtypes), none of
//! which it calls: each is interpreted by Rust code that builds inert values. Any other global
//! or object-building opcode is refused with [`Error::UnsafePickle`], the same policy as
//! PyTorch's own `torch.load(weights_only=True)`.
//!
//! Two container formats exist:
//!
//! * **zip** (torch >= 1.6, the default): an archive whose entries all sit in one folder,
//!   `<name>/data.pkl` (the pickle), `<name>/data/<key>` (one entry per storage, raw
//!   little-endian elements), plus `byteorder`, `version` and a few bookkeeping files. Storages
//!   appear in the pickle as persistent ids `('storage', torch.FloatStorage, key, location,
//!   numel)`; torch 2.x writes `torch.storage.UntypedStorage` (numel in bytes) together with
//!   `_rebuild_tensor_v3`, which carries the dtype, for dtypes that have no storage class.
//! * **legacy** (`_use_new_zipfile_serialization=False`, and every file from before 1.6, such
//!   as torchvision's ImageNet weights): pickles back to back: the magic number, the protocol
//!   version 1001, a `sys_info` dict, the object (persistent ids `('storage', type, root_key,
//!   location, numel, view_metadata)`), the list of storage keys; then, for each key in that
//!   order, a little-endian u64 element count followed by the raw elements.
//!
//! Tensors are `storage[offset + sum(i_d * stride_d)]` for every index `i` of `shape`; the
//! reader gathers them into row-major [`Tensor`]s after checking that every element lies inside
//! its storage. Floats of any width become f32; integer types keep their type.
//!
//! Nothing here may panic or allocate without bound on hostile input: every read is
//! bounds-checked, the machine's work is capped ([`MAX_OPS`]) and so are the elements the
//! gathered tensors may hold ([`max_elements`]).

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::Path;
use std::rc::Rc;

use super::{bf16_to_f32, f16_to_f32, Data, Tensor, TensorFile};
use crate::error::{Error, Result};

const FORMAT: &str = "PyTorch";

/// Work one pickle may do: opcodes executed plus values copied. A state dict needs roughly 40
/// opcodes per tensor (torchvision's ImageNet MobileNetV2, 314 tensors, runs about 12k), so
/// this is far above any real file, while bounding what a hostile pickle can make the machine
/// hold: each unit of work adds at most one value.
const MAX_OPS: usize = 1 << 22;
/// Open MARKs at once (nesting depth); state dicts nest three deep.
const MAX_MARKS: usize = 1 << 12;
/// Memo entries.
const MAX_MEMO: usize = 1 << 20;
/// Tensor dimensions (PyTorch itself allows 64).
const MAX_DIMS: usize = 64;

/// The legacy format's first pickle: this number (torch/serialization.py `MAGIC_NUMBER`).
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
const LEGACY_PROTOCOL: i128 = 1001;

/// Elements the tensors of a file may add up to. Without views every element occupies at
/// least a byte of the file; views (a transposed weight next to its original) and stride-0
/// broadcasts can repeat elements, so allow some sharing but not a 1-byte pickle that
/// expands to terabytes.
fn max_elements(file_len: usize) -> usize {
    file_len.saturating_mul(4).saturating_add(1 << 16)
}

/// Reads a state dict from a PyTorch file in either format (the caller has sniffed it as one).
pub fn read(path: &Path, bytes: &[u8]) -> Result<TensorFile> {
    let tensors = if bytes.starts_with(b"PK") { read_zip(path, bytes)? } else { read_legacy(path, bytes)? };
    Ok(TensorFile { path: path.into(), tensors, metadata: BTreeMap::new() })
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::format(path, FORMAT, detail)
}

fn unsafe_pickle(path: &Path, what: impl Into<String>) -> Error {
    Error::UnsafePickle { path: path.into(), what: what.into() }
}

// ---------------------------------------------------------------------------------------------
// Element types

/// An element type as the reader converts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I8,
    U8,
}

/// One torch element type: its storage class (if it has one), dtype names, size in bytes and,
/// for types this reader converts, how. Types it does not convert are still listed so that
/// legacy files can skip their data and errors can name them.
#[derive(Debug, PartialEq, Eq)]
struct ElemInfo {
    storage: Option<&'static str>,
    dtypes: &'static [&'static str],
    size: usize,
    dtype: Option<DType>,
}

type Elem = &'static ElemInfo;

const fn elem(
    storage: Option<&'static str>,
    dtypes: &'static [&'static str],
    size: usize,
    dtype: Option<DType>,
) -> ElemInfo {
    ElemInfo { storage, dtypes, size, dtype }
}

static ELEMS: [ElemInfo; 26] = [
    elem(Some("Float"), &["float32", "float"], 4, Some(DType::F32)),
    elem(Some("Double"), &["float64", "double"], 8, Some(DType::F64)),
    elem(Some("Half"), &["float16", "half"], 2, Some(DType::F16)),
    elem(Some("BFloat16"), &["bfloat16"], 2, Some(DType::BF16)),
    elem(Some("Long"), &["int64", "long"], 8, Some(DType::I64)),
    elem(Some("Int"), &["int32", "int"], 4, Some(DType::I32)),
    elem(Some("Char"), &["int8"], 1, Some(DType::I8)),
    elem(Some("Byte"), &["uint8"], 1, Some(DType::U8)),
    elem(Some("Short"), &["int16", "short"], 2, None),
    elem(Some("Bool"), &["bool"], 1, None),
    elem(Some("ComplexFloat"), &["complex64", "cfloat"], 8, None),
    elem(Some("ComplexDouble"), &["complex128", "cdouble"], 16, None),
    elem(Some("QUInt8"), &["quint8"], 1, None),
    elem(Some("QInt8"), &["qint8"], 1, None),
    elem(Some("QInt32"), &["qint32"], 4, None),
    elem(Some("QUInt4x2"), &["quint4x2"], 1, None),
    elem(Some("QUInt2x4"), &["quint2x4"], 1, None),
    elem(None, &["complex32", "chalf"], 4, None),
    elem(None, &["uint16"], 2, None),
    elem(None, &["uint32"], 4, None),
    elem(None, &["uint64"], 8, None),
    elem(None, &["float8_e4m3fn"], 1, None),
    elem(None, &["float8_e5m2"], 1, None),
    elem(None, &["float8_e4m3fnuz"], 1, None),
    elem(None, &["float8_e5m2fnuz"], 1, None),
    elem(None, &["float8_e8m0fnu"], 1, None),
];

/// `torch.UntypedStorage` holds bytes; torch treats it as uint8.
fn untyped() -> Elem {
    &ELEMS[7]
}

fn elem_by_storage(class: &str) -> Option<Elem> {
    let prefix = class.strip_suffix("Storage")?;
    ELEMS.iter().find(|e| e.storage == Some(prefix))
}

fn elem_by_dtype(name: &str) -> Option<Elem> {
    ELEMS.iter().find(|e| e.dtypes.contains(&name))
}

impl ElemInfo {
    fn name(&self) -> &'static str {
        self.dtypes[0]
    }
}

// ---------------------------------------------------------------------------------------------
// Values of the pickle machine

/// The globals a state dict may name. None is ever called: REDUCE interprets them.
#[derive(Clone, Debug)]
enum Global {
    OrderedDict,
    /// `_rebuild_tensor(storage, offset, size, stride)`
    RebuildTensor,
    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`
    RebuildTensorV2,
    /// `_rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])`
    RebuildTensorV3,
    /// `_rebuild_parameter(tensor, requires_grad, hooks)`
    RebuildParameter,
    /// `_rebuild_parameter_with_state(tensor, requires_grad, hooks, state)`
    RebuildParameterWithState,
    /// A storage class, e.g. `torch.FloatStorage`; only ever a tag inside a persistent id.
    StorageType(Elem),
    /// A dtype, e.g. `torch.float32` (argument of `_rebuild_tensor_v3`).
    Dtype(Elem),
}

/// Maps `module.name` to a whitelisted global, or `None` for anything else.
fn resolve_global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor_v3") => Some(Global::RebuildTensorV3),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => Some(Global::RebuildParameterWithState),
        ("torch" | "torch.storage", "UntypedStorage") => Some(Global::StorageType(untyped())),
        // Files saved from a GPU by old torch name `torch.cuda.FloatStorage`; the data is the
        // same and this reader does not care where it was.
        ("torch" | "torch.cuda", class) if class.ends_with("Storage") => {
            elem_by_storage(class).map(Global::StorageType)
        }
        ("torch", dtype) => elem_by_dtype(dtype).map(Global::Dtype),
        _ => None,
    }
}

/// Where a storage view starts and how long it is, in bytes of its root storage.
#[derive(Clone, Copy, Debug)]
struct StorageView {
    storage: usize,
    offset: usize,
    len: usize,
}

#[derive(Clone, Debug)]
enum Value {
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
    Tuple(Rc<[Value]>),
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
    fn kind(&self) -> &'static str {
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
}

/// Dict keys: the hashable values a state dict or checkpoint uses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    None,
    Bool(bool),
    Int(i128),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
}

impl Key {
    fn as_str(&self) -> Option<&str> {
        match self {
            Key::Str(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Debug)]
enum Obj {
    List(Vec<Value>),
    Dict(BTreeMap<Key, Value>),
}

/// A storage as persistent ids describe it.
struct StorageEntry {
    key: Rc<str>,
    elem: Elem,
    /// In elements of `elem`.
    numel: usize,
}

impl StorageEntry {
    fn nbytes(&self) -> Option<usize> {
        self.numel.checked_mul(self.elem.size)
    }
}

/// A tensor as `_rebuild_tensor*` describes it; gathered once the storages are known.
struct TensorRef {
    view: StorageView,
    elem: Elem,
    /// In elements of `elem`, like the strides.
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// What the pickles of one file share: storages and tensors found by persistent ids.
#[derive(Default)]
struct Shared {
    storages: Vec<StorageEntry>,
    by_key: HashMap<Rc<str>, usize>,
    tensors: Vec<TensorRef>,
}

/// The result of one pickle: its top value and the objects its handles point into.
struct Unpickled {
    value: Value,
    objects: Vec<Obj>,
    /// Offset just past the STOP opcode.
    end: usize,
}

// ---------------------------------------------------------------------------------------------
// The pickle machine

struct Machine<'a> {
    path: &'a Path,
    /// What is being unpickled, for error messages ("data.pkl", "the legacy object pickle").
    what: &'a str,
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Obj>,
    shared: &'a mut Shared,
    /// What is left of [`MAX_OPS`].
    work: usize,
}

/// Runs the pickle starting at `data[start]` up to its STOP.
fn unpickle(path: &Path, what: &str, data: &[u8], start: usize, shared: &mut Shared) -> Result<Unpickled> {
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
fn unsupported_opcode(op: u8) -> Option<&'static str> {
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
    fn bad(&self, at: usize, detail: impl std::fmt::Display) -> Error {
        bad(self.path, format!("{} at byte {at}: {detail}", self.what))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
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

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take_array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take_array()?))
    }

    /// A length prefix as usize (the bytes themselves are checked by `take`).
    fn len_u64(&mut self) -> Result<usize> {
        let at = self.pos;
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| self.bad(at, format!("length {n} is too large")))
    }

    /// A newline-terminated line (GLOBAL's operands).
    fn line(&mut self) -> Result<&'a str> {
        let at = self.pos;
        let rest = &self.data[self.pos.min(self.data.len())..];
        let n =
            rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.bad(at, "truncated: unterminated GLOBAL name"))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.bad(at, "GLOBAL name is not UTF-8"))?;
        self.pos = at + n + 1;
        Ok(s)
    }

    fn utf8(&self, at: usize, bytes: &[u8]) -> Result<Value> {
        std::str::from_utf8(bytes).map(|s| Value::Str(s.into())).map_err(|_| self.bad(at, "string is not valid UTF-8"))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    /// The stack floor: values below the innermost MARK belong to an outer construct.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, at: usize) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.bad(at, "stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.bad(at, "stack underflow"))
    }

    fn top(&self, at: usize) -> Result<&Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.bad(at, "stack underflow"));
        }
        self.stack.last().ok_or_else(|| self.bad(at, "stack underflow"))
    }

    /// The values pushed since the innermost MARK, which is removed.
    fn pop_mark(&mut self, at: usize) -> Result<Vec<Value>> {
        let mark = self.marks.pop().ok_or_else(|| self.bad(at, "no MARK to pop to"))?;
        // Marks are stack lengths at the time and the stack never shrinks below the innermost
        // one (see `pop`), so `mark <= len`; `min` keeps that true even if it ever were not.
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn memo_put(&mut self, at: usize, index: u32) -> Result<()> {
        let v = self.top(at)?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
            return Err(self.bad(at, format!("more than {MAX_MEMO} memo entries")));
        }
        self.memo.insert(index, v);
        Ok(())
    }

    fn memo_get(&mut self, at: usize, index: u32) -> Result<()> {
        let v = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| self.bad(at, format!("memo entry {index} was never stored")))?;
        self.push(v);
        Ok(())
    }

    fn new_obj(&mut self, obj: Obj) -> usize {
        self.objects.push(obj);
        self.objects.len() - 1
    }

    fn key(&self, at: usize, v: Value) -> Result<Key> {
        Ok(match v {
            Value::None => Key::None,
            Value::Bool(b) => Key::Bool(b),
            Value::Int(i) => Key::Int(i),
            Value::Str(s) => Key::Str(s),
            Value::Bytes(b) => Key::Bytes(b),
            other => return Err(self.bad(at, format!("a {} as a dict key is not supported", other.kind()))),
        })
    }

    fn append(&mut self, at: usize, target: &Value, items: Vec<Value>) -> Result<()> {
        if let Value::List(i) = target {
            if let Some(Obj::List(l)) = self.objects.get_mut(*i) {
                l.extend(items);
                return Ok(());
            }
        }
        Err(self.bad(at, format!("APPEND to a {}", target.kind())))
    }

    fn dict_insert(&mut self, at: usize, target: &Value, pairs: Vec<Value>) -> Result<()> {
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
    fn charge(&mut self, at: usize, n: usize) -> Result<()> {
        match self.work.checked_sub(n) {
            Some(left) => {
                self.work = left;
                Ok(())
            }
            None => Err(self.bad(at, format!("more than {MAX_OPS} opcodes and copied values"))),
        }
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            self.charge(at, 1)?;
            let op = self.u8()?;
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
                b'.' => return self.pop(at),
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
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v.into()));
                }
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
                    self.push(Value::Int(v));
                }
                // BINFLOAT is big-endian, unlike everything else in a pickle.
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Value::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    let v = self.utf8(at, b)?;
                    self.push(v);
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
                    let v = self.utf8(at, b)?;
                    self.push(v);
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    self.push(Value::Bytes(b.into()));
                }
                b')' => self.push(Value::Tuple(Rc::from(Vec::new()))),
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.push(Value::Tuple(items.into()));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items.into()));
                }
                b']' => {
                    let i = self.new_obj(Obj::List(Vec::new()));
                    self.push(Value::List(i));
                }
                b'l' => {
                    let items = self.pop_mark(at)?;
                    let i = self.new_obj(Obj::List(items));
                    self.push(Value::List(i));
                }
                b'a' => {
                    let v = self.pop(at)?;
                    let target = self.top(at)?.clone();
                    self.append(at, &target, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark(at)?;
                    let target = self.top(at)?.clone();
                    self.append(at, &target, items)?;
                }
                b'}' => {
                    let i = self.new_obj(Obj::Dict(BTreeMap::new()));
                    self.push(Value::Dict(i));
                }
                b'd' => {
                    let items = self.pop_mark(at)?;
                    let i = self.new_obj(Obj::Dict(BTreeMap::new()));
                    self.dict_insert(at, &Value::Dict(i), items)?;
                    self.push(Value::Dict(i));
                }
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    let target = self.top(at)?.clone();
                    self.dict_insert(at, &target, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    let target = self.top(at)?.clone();
                    self.dict_insert(at, &target, items)?;
                }
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
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(g);
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.global(m, n)?;
                            self.push(g);
                        }
                        _ => {
                            return Err(
                                self.bad(at, format!("STACK_GLOBAL of a {} and a {}", module.kind(), name.kind()))
                            )
                        }
                    }
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
                other => {
                    return Err(match unsupported_opcode(other) {
                        Some(name) => unsafe_pickle(self.path, format!("the opcode {name}")),
                        None => self.bad(at, format!("unknown opcode 0x{other:02x}")),
                    })
                }
            }
        }
    }

    fn global(&self, module: &str, name: &str) -> Result<Value> {
        resolve_global(module, name)
            .map(Value::Global)
            .ok_or_else(|| unsafe_pickle(self.path, format!("the global `{module}.{name}`")))
    }

    /// BINPERSID: a storage, `('storage', type, key, location, numel[, view_metadata])`.
    fn persistent_load(&mut self, at: usize, pid: &Value) -> Result<Value> {
        let Value::Tuple(t) = pid else {
            return Err(self.bad(at, format!("persistent id is a {}", pid.kind())));
        };
        match t.first() {
            Some(Value::Str(s)) if &**s == "storage" => {}
            Some(Value::Str(s)) => return Err(unsafe_pickle(self.path, format!("a persistent id of type `{s}`"))),
            _ => return Err(self.bad(at, "persistent id without a type name")),
        }
        if t.len() != 5 && t.len() != 6 {
            return Err(self.bad(at, format!("storage persistent id has {} fields", t.len())));
        }
        let elem = match &t[1] {
            Value::Global(Global::StorageType(e)) => *e,
            other => return Err(self.bad(at, format!("storage type is a {}, not a storage class", other.kind()))),
        };
        let key: Rc<str> = match &t[2] {
            Value::Str(s) => s.clone(),
            other => return Err(self.bad(at, format!("storage key is a {}", other.kind()))),
        };
        let numel = self.usize_of(at, &t[4], "storage size")?;
        let index = match self.shared.by_key.get(&key) {
            Some(&i) => {
                let s = &self.shared.storages[i];
                if s.elem != elem || s.numel != numel {
                    return Err(self.bad(
                        at,
                        format!(
                            "storage `{key}` is described twice, as {} x {} and as {} x {}",
                            s.numel,
                            s.elem.name(),
                            numel,
                            elem.name()
                        ),
                    ));
                }
                i
            }
            None => {
                self.shared.storages.push(StorageEntry { key: key.clone(), elem, numel });
                let i = self.shared.storages.len() - 1;
                self.shared.by_key.insert(key.clone(), i);
                i
            }
        };
        let root_bytes = self.shared.storages[index]
            .nbytes()
            .ok_or_else(|| self.bad(at, format!("storage `{key}` is too large")))?;
        let mut view = StorageView { storage: index, offset: 0, len: root_bytes };
        // Legacy view metadata `(view_key, offset, size)`, in elements: torch < 0.4 could save
        // a view of part of a storage.
        if let Some(Value::Tuple(v)) = t.get(5) {
            if v.len() != 3 {
                return Err(self.bad(at, "storage view metadata must have 3 fields"));
            }
            let offset = self.usize_of(at, &v[1], "storage view offset")?;
            let size = self.usize_of(at, &v[2], "storage view size")?;
            let start = offset.checked_mul(elem.size);
            let len = size.checked_mul(elem.size);
            match (start, len) {
                (Some(s), Some(l)) if s.checked_add(l).is_some_and(|e| e <= root_bytes) => {
                    view.offset = s;
                    view.len = l;
                }
                _ => {
                    return Err(self
                        .bad(at, format!("view [{offset}, +{size}) lies outside storage `{key}` of {numel} elements")))
                }
            }
        } else if let Some(v) = t.get(5).filter(|v| !matches!(v, Value::None)) {
            return Err(self.bad(at, format!("storage view metadata is a {}", v.kind())));
        }
        Ok(Value::Storage(view))
    }

    fn usize_of(&self, at: usize, v: &Value, what: &str) -> Result<usize> {
        match v {
            Value::Int(i) => usize::try_from(*i)
                .ok()
                .filter(|&u| u <= i64::MAX as usize)
                .ok_or_else(|| self.bad(at, format!("{what} {i} is out of range"))),
            other => Err(self.bad(at, format!("{what} is a {}, not an int", other.kind()))),
        }
    }

    fn dims(&self, at: usize, v: &Value, what: &str) -> Result<Vec<usize>> {
        let Value::Tuple(t) = v else {
            return Err(self.bad(at, format!("tensor {what} is a {}", v.kind())));
        };
        if t.len() > MAX_DIMS {
            return Err(self.bad(at, format!("tensor has {} dimensions", t.len())));
        }
        t.iter().map(|d| self.usize_of(at, d, what)).collect()
    }

    /// REDUCE: `callable(*args)` for the whitelisted callables, interpreted, never called.
    fn reduce(&mut self, at: usize, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(g) = callable else {
            return Err(self.bad(at, format!("REDUCE calls a {}", callable.kind())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.bad(at, format!("REDUCE arguments are a {}", args.kind())));
        };
        let arity = |ok: &[usize], name: &str| -> Result<()> {
            if ok.contains(&args.len()) {
                Ok(())
            } else {
                Err(self.bad(at, format!("{name} called with {} arguments", args.len())))
            }
        };
        match g {
            Global::OrderedDict => {
                arity(&[0, 1], "OrderedDict")?;
                let i = self.new_obj(Obj::Dict(BTreeMap::new()));
                // Python 2 pickled an OrderedDict as `OrderedDict([[key, value], ...])`.
                if let Some(items) = args.first() {
                    let n = match items {
                        Value::List(l) => match self.objects.get(*l) {
                            Some(Obj::List(v)) => v.len(),
                            _ => 0,
                        },
                        Value::Tuple(t) => t.len(),
                        _ => 0,
                    };
                    // Copies, unlike every other opcode: charge them so that calling this
                    // on one big memoized list again and again cannot exhaust memory.
                    self.charge(at, n.saturating_mul(2))?;
                    let pairs: Vec<Value> = match items {
                        Value::List(l) => match self.objects.get(*l) {
                            Some(Obj::List(v)) => v.clone(),
                            _ => Vec::new(),
                        },
                        Value::Tuple(t) => t.to_vec(),
                        other => return Err(self.bad(at, format!("OrderedDict of a {}", other.kind()))),
                    };
                    let mut flat = Vec::with_capacity(pairs.len() * 2);
                    for p in pairs {
                        let kv: Vec<Value> = match &p {
                            Value::Tuple(t) => t.to_vec(),
                            Value::List(l) => match self.objects.get(*l) {
                                Some(Obj::List(v)) => v.clone(),
                                _ => Vec::new(),
                            },
                            _ => Vec::new(),
                        };
                        if kv.len() != 2 {
                            return Err(self.bad(at, "OrderedDict item is not a (key, value) pair"));
                        }
                        flat.extend(kv);
                    }
                    self.dict_insert(at, &Value::Dict(i), flat)?;
                }
                Ok(Value::Dict(i))
            }
            Global::RebuildTensor | Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                let dtype = match g {
                    Global::RebuildTensor => {
                        arity(&[4], "_rebuild_tensor")?;
                        None
                    }
                    Global::RebuildTensorV2 => {
                        arity(&[6, 7], "_rebuild_tensor_v2")?;
                        None
                    }
                    _ => {
                        arity(&[7, 8], "_rebuild_tensor_v3")?;
                        match &args[6] {
                            Value::Global(Global::Dtype(e)) => Some(*e),
                            other => {
                                return Err(self.bad(at, format!("_rebuild_tensor_v3 dtype is a {}", other.kind())))
                            }
                        }
                    }
                };
                let Value::Storage(view) = args[0] else {
                    return Err(self.bad(at, format!("tensor storage is a {}", args[0].kind())));
                };
                let storage_elem = self
                    .shared
                    .storages
                    .get(view.storage)
                    .map(|s| s.elem)
                    .ok_or_else(|| self.bad(at, "unknown storage"))?;
                let offset = self.usize_of(at, &args[1], "storage offset")?;
                let shape = self.dims(at, &args[2], "size")?;
                let stride = self.dims(at, &args[3], "stride")?;
                if shape.len() != stride.len() {
                    return Err(
                        self.bad(at, format!("tensor size has {} dimensions but stride {}", shape.len(), stride.len()))
                    );
                }
                self.shared.tensors.push(TensorRef {
                    view,
                    elem: dtype.unwrap_or(storage_elem),
                    offset,
                    shape,
                    stride,
                });
                Ok(Value::Tensor(self.shared.tensors.len() - 1))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                if matches!(g, Global::RebuildParameter) {
                    arity(&[3], "_rebuild_parameter")?;
                } else {
                    arity(&[4], "_rebuild_parameter_with_state")?;
                }
                match &args[0] {
                    t @ Value::Tensor(_) => Ok(t.clone()),
                    other => Err(self.bad(at, format!("parameter data is a {}", other.kind()))),
                }
            }
            Global::StorageType(e) => {
                Err(unsafe_pickle(self.path, format!("a call of torch.{}Storage", e.storage.unwrap_or("Untyped"))))
            }
            Global::Dtype(e) => Err(unsafe_pickle(self.path, format!("a call of torch.{}", e.name()))),
        }
    }

    /// BUILD: `target.__setstate__(state)`. The only use in a state dict is the `_metadata`
    /// attribute `Module.state_dict()` sets on its OrderedDict (per-module versions, which
    /// this reader does not need); anything else could run arbitrary `__setstate__` code.
    fn build(&self, target: &Value, state: &Value) -> Result<()> {
        if let (Value::Dict(_), Value::Dict(s)) = (target, state) {
            if let Some(Obj::Dict(attrs)) = self.objects.get(*s) {
                if let Some(k) = attrs.keys().find(|k| k.as_str() != Some("_metadata")) {
                    return Err(unsafe_pickle(self.path, format!("BUILD setting the attribute {k:?} on a dict")));
                }
                return Ok(());
            }
        }
        Err(unsafe_pickle(self.path, format!("BUILD of a {} with a {}", target.kind(), state.kind())))
    }
}

// ---------------------------------------------------------------------------------------------
// From the unpickled object to named tensors

/// The `(name, tensor index)` pairs of the state dict in `top`, names without `module.`.
fn state_dict(path: &Path, top: &Unpickled) -> Result<Vec<(String, usize)>> {
    let dict_of = |v: &Value| -> Option<&BTreeMap<Key, Value>> {
        match v {
            Value::Dict(i) => match top.objects.get(*i) {
                Some(Obj::Dict(d)) => Some(d),
                _ => None,
            },
            _ => None,
        }
    };
    let Some(outer) = dict_of(&top.value) else {
        return Err(bad(path, format!("the file holds a {}, not a state dict (a dict of tensors)", top.value.kind())));
    };
    // Training checkpoints wrap the state dict: {"epoch": .., "state_dict": {..}, ..}.
    let inner = ["state_dict", "model"].iter().find_map(|k| outer.get(&Key::Str((*k).into())).and_then(dict_of));
    let dict = inner.unwrap_or(outer);
    let mut out: Vec<(String, usize)> = Vec::with_capacity(dict.len());
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in dict {
        let Some(name) = k.as_str() else {
            return Err(bad(path, format!("state dict key {k:?} is not a string")));
        };
        let t = match v {
            Value::Tensor(t) => *t,
            // A copy of the per-module `_metadata` some tools store as an entry.
            Value::Dict(_) if name == "_metadata" => continue,
            other => return Err(bad(path, format!("state dict entry `{name}` is a {}, not a tensor", other.kind()))),
        };
        // DataParallel / DistributedDataParallel prefix every name with `module.`.
        let name = name.strip_prefix("module.").unwrap_or(name).to_string();
        if !seen.insert(name.clone()) {
            return Err(bad(path, format!("tensor `{name}` appears twice (with and without `module.`)")));
        }
        out.push((name, t));
    }
    Ok(out)
}

/// Gathers a tensor from the bytes of its root storage.
fn gather(path: &Path, name: &str, t: &TensorRef, root: &[u8], budget: &mut usize) -> Result<Tensor> {
    let elem = t.elem;
    let Some(dtype) = elem.dtype else {
        return Err(Error::DType {
            path: path.into(),
            name: name.into(),
            expected: "float32, float64, float16, bfloat16, int64, int32, int8 or uint8".into(),
            got: elem.name().into(),
        });
    };
    let size = elem.size;
    let oob = |detail: String| bad(path, format!("tensor `{name}`: {detail}"));
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| oob(format!("size {:?} overflows", t.shape)))?;
    if numel > *budget {
        return Err(oob(format!("{numel} elements is more than the file can hold (stride-0 expansion?)")));
    }
    *budget -= numel;
    // The view's bytes inside the root storage (checked when the storage was described,
    // re-checked here against the bytes actually present).
    let view = t
        .view
        .offset
        .checked_add(t.view.len)
        .and_then(|end| root.get(t.view.offset..end))
        .ok_or_else(|| oob("storage view lies outside its storage data".into()))?;
    let view_elems = view.len() / size;
    // Dimensions of size 1 never step, so their stride does not matter.
    let stride: Vec<usize> = t.shape.iter().zip(&t.stride).map(|(&d, &s)| if d == 1 { 0 } else { s }).collect();
    if numel > 0 {
        // The last element the tensor touches must lie inside the view.
        let last = t
            .shape
            .iter()
            .zip(&stride)
            .try_fold(t.offset, |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x)));
        match last {
            Some(last) if last < view_elems => {}
            _ => {
                return Err(oob(format!(
                    "offset {} size {:?} stride {:?} reaches past the end of its storage ({} elements)",
                    t.offset, t.shape, t.stride, view_elems
                )))
            }
        }
    }
    let positions = element_positions(t.offset, &t.shape, &stride, numel);
    let at = |p: usize| &view[p * size..(p + 1) * size];
    let data = match dtype {
        DType::F32 => Data::F32(positions.map(|p| f32::from_le_bytes(le(at(p)))).collect()),
        DType::F64 => Data::F32(positions.map(|p| f64::from_le_bytes(le(at(p))) as f32).collect()),
        DType::F16 => Data::F32(positions.map(|p| f16_to_f32(u16::from_le_bytes(le(at(p))))).collect()),
        DType::BF16 => Data::F32(positions.map(|p| bf16_to_f32(u16::from_le_bytes(le(at(p))))).collect()),
        DType::I64 => Data::I64(positions.map(|p| i64::from_le_bytes(le(at(p)))).collect()),
        DType::I32 => Data::I32(positions.map(|p| i32::from_le_bytes(le(at(p)))).collect()),
        DType::I8 => Data::I8(positions.map(|p| at(p)[0] as i8).collect()),
        DType::U8 => Data::U8(positions.map(|p| at(p)[0]).collect()),
    };
    Ok(Tensor { shape: t.shape.clone(), data })
}

/// A fixed-size array from a slice of exactly that size (the callers slice by element size).
fn le<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Storage positions of the elements of a strided tensor, in row-major order: an odometer over
/// the index that moves the position by the stride of each dimension it steps.
fn element_positions<'s>(
    offset: usize,
    shape: &'s [usize],
    stride: &'s [usize],
    numel: usize,
) -> impl Iterator<Item = usize> + 's {
    let mut index = vec![0usize; shape.len()];
    let mut pos = offset;
    (0..numel).map(move |_| {
        let here = pos;
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            pos += stride[d];
            if index[d] < shape[d] {
                break;
            }
            // Wrapped: back to the start of this dimension. Cannot underflow: `pos` moved up
            // by exactly `shape[d] * stride[d]` since this dimension was last zero.
            pos -= shape[d] * stride[d];
            index[d] = 0;
        }
        here
    })
}

/// Gathers every tensor of the state dict from the bytes of the root storages, by index.
fn materialise(
    path: &Path,
    shared: &Shared,
    entries: Vec<(String, usize)>,
    file_len: usize,
    storage_bytes: &HashMap<usize, &[u8]>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut budget = max_elements(file_len);
    let mut out = BTreeMap::new();
    for (name, ti) in entries {
        let t = &shared.tensors[ti];
        let root = match storage_bytes.get(&t.view.storage) {
            Some(b) => b,
            // Unsupported dtypes are not read; `gather` names the dtype before it looks.
            None if t.elem.dtype.is_none() => &[][..],
            None => {
                let key = &shared.storages[t.view.storage].key;
                return Err(bad(path, format!("tensor `{name}`: storage `{key}` has no data")));
            }
        };
        let tensor = gather(path, &name, t, root, &mut budget)?;
        out.insert(name, tensor);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Containers

fn read_zip(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Tensor>> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| bad(path, format!("zip archive: {e}")))?;
    // The pickle is `<folder>/data.pkl`; the folder name is whatever the file was first saved
    // as, so find it rather than guess it.
    let mut prefixes = Vec::new();
    for name in zip.file_names_raw() {
        if let Some(folder) = name.strip_suffix(b"/data.pkl") {
            if !folder.is_empty() && !folder.contains(&b'/') {
                prefixes.push(String::from_utf8_lossy(folder).into_owned());
            }
        }
    }
    let prefix = match prefixes.as_slice() {
        [p] => p.clone(),
        [] => return Err(bad(path, "the zip archive has no `<name>/data.pkl`: not a torch.save file")),
        _ => return Err(bad(path, format!("the zip archive has several pickles: {}", prefixes.join(", ")))),
    };
    let mut entry = |name: &str, max: usize| -> Result<Option<Vec<u8>>> {
        let mut f = match zip.by_name(name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(bad(path, format!("zip entry `{name}`: {e}"))),
        };
        // A stored entry cannot be larger than the file; refuse sizes that would make
        // `read_to_end` reserve memory a corrupt header asks for.
        let size = usize::try_from(f.size()).unwrap_or(usize::MAX);
        if size > bytes.len() || size > max {
            return Err(bad(path, format!("zip entry `{name}` claims {} bytes", f.size())));
        }
        let mut buf = Vec::with_capacity(size);
        // Reading through the zip crate checks the entry's CRC-32.
        f.read_to_end(&mut buf).map_err(|e| bad(path, format!("zip entry `{name}`: {e}")))?;
        Ok(Some(buf))
    };
    if let Some(order) = entry(&format!("{prefix}/byteorder"), 64)? {
        if order != b"little" {
            return Err(bad(
                path,
                format!("byte order `{}`: only little-endian files are supported", String::from_utf8_lossy(&order)),
            ));
        }
    }
    let pkl = entry(&format!("{prefix}/data.pkl"), bytes.len())?.ok_or_else(|| bad(path, "data.pkl vanished"))?;
    let mut shared = Shared::default();
    let top = unpickle(path, "data.pkl", &pkl, 0, &mut shared)?;
    let entries = state_dict(path, &top)?;
    // Read each storage a convertible tensor needs, once.
    let mut needed: Vec<usize> = entries
        .iter()
        .map(|(_, t)| &shared.tensors[*t])
        .filter(|t| t.elem.dtype.is_some())
        .map(|t| t.view.storage)
        .collect();
    needed.sort_unstable();
    needed.dedup();
    let mut data: HashMap<usize, Vec<u8>> = HashMap::new();
    for s in needed {
        let st = &shared.storages[s];
        let Some(nbytes) = st.nbytes() else {
            return Err(bad(path, format!("storage `{}` is too large", st.key)));
        };
        let name = format!("{prefix}/data/{}", st.key);
        let raw = entry(&name, bytes.len())?
            .ok_or_else(|| bad(path, format!("storage `{}` has no entry `{name}`", st.key)))?;
        if raw.len() < nbytes {
            return Err(bad(
                path,
                format!(
                    "storage `{}` should hold {} {} elements ({nbytes} bytes) but has {} bytes",
                    st.key,
                    st.numel,
                    st.elem.name(),
                    raw.len()
                ),
            ));
        }
        data.insert(s, raw);
    }
    let slices = data.iter().map(|(&i, v)| (i, v.as_slice())).collect();
    materialise(path, &shared, entries, bytes.len(), &slices)
}

fn read_legacy(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Tensor>> {
    let mut shared = Shared::default();
    let magic = unpickle(path, "the legacy magic number", bytes, 0, &mut shared)?;
    if !matches!(magic.value, Value::Int(LEGACY_MAGIC)) {
        return Err(bad(path, "bad magic number: not a legacy torch.save file"));
    }
    let version = unpickle(path, "the legacy protocol version", bytes, magic.end, &mut shared)?;
    if !matches!(version.value, Value::Int(LEGACY_PROTOCOL)) {
        return Err(bad(path, format!("legacy protocol version {:?}, expected {LEGACY_PROTOCOL}", version.value)));
    }
    let sys = unpickle(path, "the legacy sys_info", bytes, version.end, &mut shared)?;
    if let Value::Dict(i) = sys.value {
        if let Some(Obj::Dict(d)) = sys.objects.get(i) {
            if let Some(Value::Bool(false)) = d.get(&Key::Str("little_endian".into())) {
                return Err(bad(path, "big-endian files are not supported"));
            }
        }
    }
    let top = unpickle(path, "the legacy object pickle", bytes, sys.end, &mut shared)?;
    let keys = unpickle(path, "the legacy storage keys", bytes, top.end, &mut shared)?;
    let key_list: Vec<Value> = match keys.value {
        Value::List(i) => match keys.objects.get(i) {
            Some(Obj::List(l)) => l.clone(),
            _ => Vec::new(),
        },
        other => return Err(bad(path, format!("legacy storage keys are a {}, not a list", other.kind()))),
    };
    // The data: for each listed key, a u64 element count and the raw elements.
    let mut pos = keys.end;
    let mut data: HashMap<usize, &[u8]> = HashMap::new();
    for k in &key_list {
        let Value::Str(key) = k else {
            return Err(bad(path, format!("legacy storage key is a {}", k.kind())));
        };
        let &i = shared
            .by_key
            .get(key)
            .ok_or_else(|| bad(path, format!("storage `{key}` has data but no tensor describes it")))?;
        let st = &shared.storages[i];
        let count = pos
            .checked_add(8)
            .and_then(|end| bytes.get(pos..end))
            .ok_or_else(|| bad(path, format!("truncated before storage `{key}`")))?;
        let numel = u64::from_le_bytes(le(count));
        if numel != st.numel as u64 {
            return Err(bad(
                path,
                format!("storage `{key}` has {numel} elements in the data but {} in the pickle", st.numel),
            ));
        }
        let start = pos + 8;
        let raw =
            st.nbytes().and_then(|n| start.checked_add(n)).and_then(|end| bytes.get(start..end)).ok_or_else(|| {
                bad(path, format!("truncated in storage `{key}` ({} x {})", st.numel, st.elem.name()))
            })?;
        if data.insert(i, raw).is_some() {
            return Err(bad(path, format!("storage `{key}` is listed twice")));
        }
        pos = start + raw.len();
    }
    let entries = state_dict(path, &top)?;
    materialise(path, &shared, entries, bytes.len(), &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pickle written opcode by opcode.
    struct P(Vec<u8>);

    impl P {
        /// Protocol 2, like torch.
        fn new() -> P {
            P(vec![0x80, 2])
        }
        fn op(mut self, b: &[u8]) -> P {
            self.0.extend_from_slice(b);
            self
        }
        fn s(self, s: &str) -> P {
            let n = (s.len() as u32).to_le_bytes();
            self.op(b"X").op(&n).op(s.as_bytes())
        }
        fn int(self, i: i32) -> P {
            self.op(b"J").op(&i.to_le_bytes())
        }
        fn global(self, module: &str, name: &str) -> P {
            self.op(b"c").op(module.as_bytes()).op(b"\n").op(name.as_bytes()).op(b"\n")
        }
        fn ints(self, v: &[usize]) -> P {
            v.iter().fold(self.op(b"("), |p, &d| p.int(d as i32)).op(b"t")
        }
        fn ordered_dict(self) -> P {
            self.global("collections", "OrderedDict").op(b")R")
        }
        /// `_rebuild_tensor_v2` of a FloatStorage `key` of `numel` elements, with optional
        /// legacy view metadata `(view_key, offset, size)`.
        fn tensor(
            self,
            key: &str,
            numel: usize,
            view: Option<(usize, usize)>,
            offset: usize,
            size: &[usize],
            stride: &[usize],
        ) -> P {
            let p = self
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b"((")
                .s("storage")
                .global("torch", "FloatStorage")
                .s(key)
                .s("cpu")
                .int(numel as i32);
            let p = match view {
                None => p.op(b"N"),
                Some((o, n)) => p.op(b"(").s("view").int(o as i32).int(n as i32).op(b"t"),
            };
            p.op(b"tQ").int(offset as i32).ints(size).ints(stride).op(&[0x89]).ordered_dict().op(b"tR")
        }
        fn stop(self) -> Vec<u8> {
            self.op(b".").0
        }
    }

    /// A legacy file: magic, protocol, sys_info, `object`, the keys, and f32 storages.
    fn legacy(object: Vec<u8>, storages: &[(&str, &[f32])]) -> Vec<u8> {
        let mut f = vec![0x80, 2, 0x8a, 10];
        f.extend_from_slice(&LEGACY_MAGIC.to_le_bytes()[..10]);
        f.push(b'.');
        f.extend(P::new().op(b"M").op(&1001u16.to_le_bytes()).stop());
        f.extend(P::new().op(b"}").s("little_endian").op(&[0x88]).op(b"s").stop());
        f.extend(object);
        let keys = storages.iter().fold(P::new().op(b"]("), |p, (k, _)| p.s(k)).op(b"e").stop();
        f.extend(keys);
        for (_, values) in storages {
            f.extend((values.len() as u64).to_le_bytes());
            for v in *values {
                f.extend(v.to_le_bytes());
            }
        }
        f
    }

    fn read_bytes(bytes: &[u8]) -> Result<TensorFile> {
        read(Path::new("t.pth"), bytes)
    }

    fn f32s(file: &TensorFile, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = &file.tensors[name];
        match &t.data {
            Data::F32(v) => (t.shape.clone(), v.clone()),
            other => panic!("{name}: {}", other.dtype()),
        }
    }

    fn run_one(pickle: &[u8]) -> Result<(Value, Vec<Obj>)> {
        let mut shared = Shared::default();
        let u = unpickle(Path::new("t.pkl"), "test", pickle, 0, &mut shared)?;
        Ok((u.value, u.objects))
    }

    fn is_unsafe(r: Result<impl std::fmt::Debug>, what: &str) {
        match r {
            Err(Error::UnsafePickle { what: w, .. }) => assert!(w.contains(what), "{w}"),
            other => panic!("expected UnsafePickle naming {what}, got {other:?}"),
        }
    }

    fn is_format(r: Result<impl std::fmt::Debug>, detail: &str) {
        match r {
            Err(e @ Error::Format { .. }) => assert!(e.to_string().contains(detail), "{e}"),
            other => panic!("expected a Format error with `{detail}`, got {other:?}"),
        }
    }

    const STORE: [f32; 6] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];

    #[test]
    fn legacy_views_strides_and_offsets() {
        let obj = P::new()
            .ordered_dict()
            .op(b"(")
            .s("w")
            .tensor("k", 6, None, 0, &[2, 3], &[3, 1])
            .s("t")
            .tensor("k", 6, None, 0, &[3, 2], &[1, 3])
            .s("v")
            // A pre-0.4 storage view: elements 2..6 of `k`, tensor offset 1 inside it.
            .tensor("k", 6, Some((2, 4)), 1, &[3], &[1])
            .s("bcast")
            .tensor("k", 6, None, 4, &[2, 2], &[0, 1])
            .s("scalar")
            .tensor("k", 6, None, 5, &[], &[])
            .op(b"u")
            .stop();
        let f = read_bytes(&legacy(obj, &[("k", &STORE)])).unwrap();
        assert_eq!(f32s(&f, "w"), (vec![2, 3], STORE.to_vec()));
        assert_eq!(f32s(&f, "t"), (vec![3, 2], vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]));
        assert_eq!(f32s(&f, "v"), (vec![3], vec![3.0, 4.0, 5.0]));
        assert_eq!(f32s(&f, "bcast"), (vec![2, 2], vec![4.0, 5.0, 4.0, 5.0]));
        assert_eq!(f32s(&f, "scalar"), (vec![], vec![5.0]));
    }

    #[test]
    fn tensors_reaching_outside_their_storage_are_format_errors() {
        let one = |offset, size: &[usize], stride: &[usize], view| {
            let obj = P::new().op(b"}").s("w").tensor("k", 6, view, offset, size, stride).op(b"s").stop();
            read_bytes(&legacy(obj, &[("k", &STORE)]))
        };
        is_format(one(6, &[1], &[1], None), "reaches past the end");
        is_format(one(1, &[2, 3], &[3, 1], None), "reaches past the end");
        is_format(one(0, &[3, 2], &[1, 4], None), "reaches past the end");
        is_format(one(0, &[5], &[1], Some((2, 4))), "reaches past the end");
        is_format(one(0, &[1], &[1], Some((4, 4))), "outside storage");
        is_format(one(0, &[2], &[1, 1], None), "dimensions but stride");
        // Stride 0 over a huge size: refused before anything is allocated.
        is_format(one(0, &[1 << 30, 1 << 30], &[0, 0], None), "more than the file");
        // An empty tensor may sit anywhere.
        assert!(one(100, &[0, 3], &[3, 1], None).is_ok());
    }

    #[test]
    fn legacy_storage_data_must_match_the_pickle() {
        let obj = P::new().op(b"}").s("w").tensor("k", 6, None, 0, &[6], &[1]).op(b"s").stop();
        // Element count in the data differs from the persistent id.
        is_format(read_bytes(&legacy(obj.clone(), &[("k", &STORE[..5])])), "5 elements in the data but 6");
        // A key no tensor describes.
        is_format(read_bytes(&legacy(obj.clone(), &[("k", &STORE), ("x", &STORE)])), "no tensor describes it");
        // No data for a storage a tensor needs.
        is_format(read_bytes(&legacy(obj.clone(), &[])), "has no data");
        // Truncated data.
        let full = legacy(obj, &[("k", &STORE)]);
        is_format(read_bytes(&full[..full.len() - 1]), "truncated in storage");
        // Wrong magic number.
        let mut bad_magic = full.clone();
        bad_magic[5] ^= 1;
        is_format(read_bytes(&bad_magic), "magic number");
    }

    #[test]
    fn protocol_4_opcodes() {
        // FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, BINUNICODE8, BINBYTES,
        // SHORT_BINBYTES, BINFLOAT, LONG1, BININT1/2, DUP, POP, LIST, DICT, TUPLE1..3.
        let mut p = vec![0x80, 4, 0x95];
        p.extend(0u64.to_le_bytes());
        p.extend([0x8c, 11]);
        p.extend(b"collections");
        p.push(0x94);
        p.extend([0x8c, 11]);
        p.extend(b"OrderedDict");
        p.extend([0x93, 0x94, b')', b'R', 0x94]); // OrderedDict()
        p.push(0x8d);
        p.extend(3u64.to_le_bytes());
        p.extend(b"key");
        p.extend(b"(");
        p.extend([b'G']);
        p.extend(0.25f64.to_be_bytes());
        p.extend([0x8a, 2, 0x00, 0x80]); // LONG1 -32768
        p.extend([0x8a, 1, 0xff]); // LONG1 -1
        p.extend([0x8a, 0]); // LONG1 0
        p.extend([b'K', 200, b'M', 0x34, 0x12]);
        p.extend([b'B', 2, 0, 0, 0, 1, 2, b'C', 1, 9]);
        p.extend([b'N', b'2', b'0']); // DUP then POP
        p.extend([0x88, 0x85, 0x89, 0x88, 0x86, b'N', b'N', b'N', 0x87]);
        p.extend(b"l"); // LIST of everything since the MARK
        p.extend(b"s."); // SETITEM
        let (v, objects) = run_one(&p).unwrap();
        let Value::Dict(d) = v else { panic!("{v:?}") };
        let Obj::Dict(d) = &objects[d] else { panic!() };
        let Value::List(l) = d[&Key::Str("key".into())] else { panic!() };
        let Obj::List(items) = &objects[l] else { panic!() };
        let text = format!("{items:?}");
        assert_eq!(
            text,
            "[Float(0.25), Int(-32768), Int(-1), Int(0), Int(200), Int(4660), Bytes([1, 2]), \
             Bytes([9]), None, Tuple([Bool(true)]), Tuple([Bool(false), Bool(true)]), \
             Tuple([None, None, None])]"
        );
    }

    #[test]
    fn refuses_what_a_state_dict_does_not_need() {
        let g = |m: &str, n: &str| run_one(&P::new().global(m, n).stop());
        is_unsafe(g("os", "system"), "`os.system`");
        is_unsafe(g("posix", "system"), "`posix.system`");
        is_unsafe(g("builtins", "eval"), "`builtins.eval`");
        is_unsafe(g("torch", "load"), "`torch.load`");
        is_unsafe(g("torch._utils", "_rebuild_qtensor"), "_rebuild_qtensor");
        is_unsafe(g("torch.cuda", "Stream"), "torch.cuda.Stream");
        // STACK_GLOBAL goes through the same whitelist.
        let mut p = vec![0x80, 4, 0x8c, 8];
        p.extend(b"builtins");
        p.extend([0x8c, 4]);
        p.extend(b"exec");
        p.extend([0x93, b'.']);
        is_unsafe(run_one(&p), "`builtins.exec`");
        // Object-building opcodes, whatever they name.
        is_unsafe(run_one(b"\x80\x02ios\nsystem\n."), "INST");
        is_unsafe(run_one(b"\x80\x02(o."), "OBJ");
        is_unsafe(run_one(b"\x80\x02N)\x81."), "NEWOBJ");
        is_unsafe(run_one(b"\x80\x02\x82\x01."), "EXT1");
        is_unsafe(run_one(b"\x80\x02\x8f."), "EMPTY_SET");
        // Calling a storage class or a dtype.
        let call = P::new().global("torch", "FloatStorage").op(b")R").stop();
        is_unsafe(run_one(&call), "torch.FloatStorage");
        let call = P::new().global("torch", "float32").op(b")R").stop();
        is_unsafe(run_one(&call), "torch.float32");
        // BUILD may only set `_metadata` on a dict.
        let build = |attr: &str| P::new().ordered_dict().op(b"}").s(attr).op(b"}s").op(b"b").stop();
        assert!(run_one(&build("_metadata")).is_ok());
        is_unsafe(run_one(&build("__class__")), "__class__");
        is_unsafe(run_one(&P::new().op(b"]}b").stop()), "BUILD of a list");
        // Persistent ids other than storages (legacy files could embed module source).
        let pid = P::new().op(b"(").s("module").op(b"NNtQ").stop();
        is_unsafe(run_one(&pid), "`module`");
    }

    #[test]
    fn malformed_pickles_are_format_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "truncated"),
            (b"\x80\x02", "truncated"),
            (b"\x80\x02X\xff\xff\xff\x7fab", "truncated"),
            (b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff", "truncated"),
            (b"\x80\x02h\x05.", "memo entry 5"),
            (b"\x80\x02.", "stack underflow"),
            (b"\x80\x02N(0.", "stack underflow"),
            (b"\x80\x02t.", "no MARK"),
            (b"\x80\x02\xff", "unknown opcode 0xff"),
            (b"\x80\x06N.", "protocol 6"),
            (b"\x80\x02\x8a\x11", "too large"),
            (b"\x80\x02X\x02\x00\x00\x00\xc3\x28.", "UTF-8"),
            (b"\x80\x02}Na.", "APPEND to a dict"),
            (b"\x80\x02](NNNu.", "odd number"),
            (b"\x80\x02]NNs.", "SETITEM on a list"),
            (b"\x80\x02}]Ns.", "dict key"),
            (b"\x80\x02T\xff\xff\xff\xff", "negative"),
            (b"\x80\x02cos\nsys", "unterminated"),
            (b"\x80\x02N)R.", "REDUCE calls a None"),
            (b"\x80\x02N", "truncated"),
        ];
        for (pickle, detail) in cases {
            is_format(run_one(pickle), detail);
        }
        // Nesting and work are bounded.
        let deep = vec![b'('; MAX_MARKS + 1];
        is_format(run_one(&deep), "nested MARKs");
        let busy: Vec<u8> = b"N0".repeat(MAX_OPS / 2 + 1);
        is_format(run_one(&busy), "more than");
    }

    #[test]
    fn python2_ordered_dict_and_its_copy_budget() {
        // Python 2 pickled `OrderedDict([[key, value], ...])`.
        let p = P::new().global("collections", "OrderedDict").op(b"((").s("a").op(b"Nl").s("b").op(b"Kx\x86l\x85R.");
        let (v, objects) = run_one(&p.0).unwrap();
        let Value::Dict(d) = v else { panic!("{v:?}") };
        let Obj::Dict(d) = &objects[d] else { panic!() };
        assert_eq!(d.len(), 2);
        assert!(matches!(d[&Key::Str("b".into())], Value::Int(120)));
        // Copying one big memoized list again and again runs out of budget, not memory.
        let mut p = P::new().op(b"](");
        for _ in 0..1000 {
            p = p.op(b"NN\x86");
        }
        p = p.op(b"eq\x00");
        for _ in 0..(MAX_OPS / 2000 + 1) {
            p = p.global("collections", "OrderedDict").op(b"h\x00\x85R0");
        }
        is_format(run_one(&p.stop()), "copied values");
    }

    #[test]
    fn checkpoints_prefixes_and_non_tensors() {
        let t = |p: P, name: &str| p.s(name).tensor("k", 6, None, 0, &[6], &[1]);
        let file = |obj: Vec<u8>| read_bytes(&legacy(obj, &[("k", &STORE)]));
        // {"epoch": 3, "state_dict": {"module.a": .., "module.b": ..}}
        let wrapped = t(t(P::new().op(b"}(").s("epoch").int(3).s("state_dict").op(b"}("), "module.a"), "module.b")
            .op(b"uu")
            .stop();
        let f = file(wrapped).unwrap();
        assert_eq!(f.tensors.keys().collect::<Vec<_>>(), ["a", "b"]);
        // {"model": {...}} works the same.
        let model = t(P::new().op(b"}").s("model").op(b"}"), "x").op(b"ss").stop();
        assert!(file(model).unwrap().tensors.contains_key("x"));
        // A name with and without the prefix collides.
        let twice = t(t(P::new().op(b"}("), "module.a"), "a").op(b"u").stop();
        is_format(file(twice), "appears twice");
        // Non-tensor values are named.
        let lr = t(P::new().op(b"}("), "w").s("lr").int(1).op(b"u").stop();
        is_format(file(lr), "entry `lr` is a int");
        // A top level that is not a dict.
        let list = legacy(P::new().op(b"]").stop(), &[]);
        is_format(read_bytes(&list), "holds a list");
    }

    #[test]
    fn unsupported_storage_types_are_dtype_errors() {
        let obj = P::new()
            .op(b"}")
            .s("w")
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .s("storage")
            .global("torch", "ShortStorage")
            .s("k")
            .s("cpu")
            .int(2)
            .op(b"NtQ")
            .int(0)
            .ints(&[2])
            .ints(&[1])
            .op(&[0x89])
            .ordered_dict()
            .op(b"tRs")
            .stop();
        let mut f = legacy(obj, &[]);
        // The legacy data for `k`: 2 int16 elements.
        let keys = P::new().op(b"](").s("k").op(b"e").stop();
        let cut = f.len() - P::new().op(b"](").op(b"e").stop().len();
        f.truncate(cut);
        f.extend(keys);
        f.extend(2u64.to_le_bytes());
        f.extend([1, 0, 2, 0]);
        match read_bytes(&f) {
            Err(Error::DType { name, got, .. }) => assert_eq!((name.as_str(), got.as_str()), ("w", "int16")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn element_tables_are_consistent() {
        assert_eq!(elem_by_storage("FloatStorage").unwrap().dtype, Some(DType::F32));
        assert_eq!(elem_by_dtype("half").unwrap().dtype, Some(DType::F16));
        assert_eq!(untyped().dtype, Some(DType::U8));
        assert!(elem_by_storage("FooStorage").is_none());
        for e in &ELEMS {
            let expected = match e.dtype {
                Some(DType::F64 | DType::I64) => 8,
                Some(DType::F32 | DType::I32) => 4,
                Some(DType::F16 | DType::BF16) => 2,
                Some(DType::I8 | DType::U8) => 1,
                None => e.size,
            };
            assert_eq!(e.size, expected, "{}", e.name());
        }
    }
}
