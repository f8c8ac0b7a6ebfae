//! A small, read-only HDF5 reader: exactly what Keras weight files (written by h5py) need.
//!
//! Superblocks 0 to 3; object headers 1 and 2 with continuation blocks; old-style groups
//! (symbol table: v1 B-tree, symbol nodes, local heap) and compact new-style groups (link
//! messages); datasets with contiguous or compact layout, float (16/32/64-bit, either byte
//! order) and integer element types; string attributes, fixed-length or variable-length (global
//! heap). Chunked or filtered datasets, dense (fractal heap) groups and shared messages are
//! refused with a clear error. Written from the HDF5 File Format Specification 3.0.
//!
//! Every read is bounds-checked: a corrupt file gives an error naming the file, never a panic.
//! Loops and recursion are bounded, so a cyclic or hostile file cannot hang the reader.

use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};

const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
const UNDEFINED: u64 = u64::MAX;
/// Limits on hostile files.
const MAX_DEPTH: usize = 32;
const MAX_OBJECTS: usize = 100_000;
const MAX_MESSAGES: usize = 100_000;
const MAX_WORK: usize = 2_000_000;

/// Does the file start with the HDF5 signature?
pub fn sniff(head: &[u8]) -> bool {
    head.starts_with(SIGNATURE)
}

/// Element type of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    Float { size: usize, big_endian: bool },
    Int { size: usize, signed: bool, big_endian: bool },
    Other,
}

/// A dataset: shape, element type and where its bytes are.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub shape: Vec<usize>,
    pub elem: Elem,
    /// Contiguous bytes in the file (or `None` for a layout this reader does not handle).
    data: std::result::Result<(usize, usize), String>,
}

/// One object of the file, with its path from the root ("a/b/c").
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub path: String,
    /// String attributes (other attribute types are skipped).
    pub attrs: Vec<(String, Vec<String>)>,
    pub dataset: Option<Dataset>,
}

pub struct File<'a> {
    /// Steps of work done (objects, B-tree entries, messages, heap objects): bounded so that a
    /// hostile file whose structures share or repeat children cannot make the reader spin.
    work: std::cell::Cell<usize>,
    path: &'a Path,
    bytes: &'a [u8],
    base: u64,
    so: usize,
    sl: usize,
    root: Root,
}

enum Root {
    /// Superblock 0/1: the root's object header plus its cached B-tree and heap.
    Header(u64),
}

/// A bounds-checked little-endian cursor.
#[derive(Clone)]
struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn uint(&mut self, n: usize) -> Option<u64> {
        let s = self.take(n)?;
        if n > 8 {
            return None;
        }
        Some(s.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
    }
    fn u16(&mut self) -> Option<u64> {
        self.uint(2)
    }
    fn u32(&mut self) -> Option<u64> {
        self.uint(4)
    }
}

impl<'a> File<'a> {
    fn err(&self, detail: impl Into<String>) -> Error {
        Error::format(self.path, "HDF5", detail)
    }

    fn tick(&self) -> Result<()> {
        self.work.set(self.work.get() + 1);
        if self.work.get() > MAX_WORK {
            return Err(self.err("the file's structures are implausibly large or repeat themselves"));
        }
        Ok(())
    }

    fn cur(&self, addr: u64) -> Result<Cur<'a>> {
        let a = addr.checked_add(self.base).filter(|&a| a != UNDEFINED).ok_or_else(|| self.err("undefined address"))?;
        let pos = usize::try_from(a).ok().filter(|&p| p < self.bytes.len());
        pos.map(|pos| Cur { b: self.bytes, pos }).ok_or_else(|| {
            self.err(format!("address {addr:#x} is past the end of the file ({} bytes)", self.bytes.len()))
        })
    }

    fn short(&self, what: &str) -> Error {
        self.err(format!("truncated or corrupt {what}"))
    }

    fn addr(&self, c: &mut Cur) -> Option<u64> {
        let v = c.uint(self.so)?;
        Some(if self.so < 8 && v == (1u64 << (8 * self.so)) - 1 { UNDEFINED } else { v })
    }

    fn len(&self, c: &mut Cur) -> Option<u64> {
        c.uint(self.sl)
    }

    /// Opens a file: finds the superblock (at 0 or after a user block).
    pub fn open(path: &'a Path, bytes: &'a [u8]) -> Result<File<'a>> {
        let bad = |d: &str| Error::format(path, "HDF5", d);
        let mut at = 0usize;
        while !bytes.get(at..).is_some_and(|b| b.starts_with(SIGNATURE)) {
            at = if at == 0 { 512 } else { at * 2 };
            if at >= bytes.len() {
                return Err(bad("no HDF5 signature"));
            }
        }
        let mut c = Cur { b: bytes, pos: at + 8 };
        let version = c.u8().ok_or_else(|| bad("truncated superblock"))?;
        let mut f = File { work: std::cell::Cell::new(0), path, bytes, base: 0, so: 8, sl: 8, root: Root::Header(0) };
        let sizes_ok = |so: usize, sl: usize| [2, 4, 8].contains(&so) && [2, 4, 8].contains(&sl);
        match version {
            0 | 1 => {
                let h = c.take(7).ok_or_else(|| bad("truncated superblock"))?;
                let (so, sl) = (h[4] as usize, h[5] as usize);
                if !sizes_ok(so, sl) {
                    return Err(bad("unsupported sizes of offsets or lengths"));
                }
                f.so = so;
                f.sl = sl;
                c.skip(if version == 1 { 12 } else { 8 }).ok_or_else(|| bad("truncated superblock"))?;
                let base = f.addr(&mut c).ok_or_else(|| bad("truncated superblock"))?;
                // Free-space, end of file, driver info addresses.
                for _ in 0..3 {
                    f.addr(&mut c).ok_or_else(|| bad("truncated superblock"))?;
                }
                // Root group symbol table entry: name offset, object header address, ...
                f.addr(&mut c).ok_or_else(|| bad("truncated superblock"))?;
                let root = f.addr(&mut c).ok_or_else(|| bad("truncated superblock"))?;
                f.base = base;
                f.root = Root::Header(root);
            }
            2 | 3 => {
                let (so, sl) = (c.u8().unwrap_or(0) as usize, c.u8().unwrap_or(0) as usize);
                if !sizes_ok(so, sl) {
                    return Err(bad("unsupported sizes of offsets or lengths"));
                }
                f.so = so;
                f.sl = sl;
                c.skip(1).ok_or_else(|| bad("truncated superblock"))?;
                let base = f.addr(&mut c).ok_or_else(|| bad("truncated superblock"))?;
                f.addr(&mut c).ok_or_else(|| bad("truncated superblock"))?;
                f.addr(&mut c).ok_or_else(|| bad("truncated superblock"))?;
                let root = f.addr(&mut c).ok_or_else(|| bad("truncated superblock"))?;
                f.base = base;
                f.root = Root::Header(root);
            }
            v => return Err(bad(&format!("superblock version {v} is not supported"))),
        }
        Ok(f)
    }

    /// The raw messages (type, data) of an object header, continuation blocks followed.
    fn messages(&self, addr: u64) -> Result<Vec<(u16, u8, &'a [u8])>> {
        let mut c = self.cur(addr)?;
        let mut out = Vec::new();
        // Blocks still to read: (cursor, end, v2?).
        let mut blocks: Vec<(Cur<'a>, usize, bool)> = Vec::new();
        let sig = c.b.get(c.pos..c.pos + 4);
        let v2 = sig == Some(b"OHDR");
        let mut v2_times_flags = 0u8;
        if v2 {
            c.skip(4).ok_or_else(|| self.short("object header"))?;
            if c.u8() != Some(2) {
                return Err(self.err(format!("object header at {addr:#x} has an unknown version")));
            }
            let flags = c.u8().ok_or_else(|| self.short("object header"))?;
            v2_times_flags = flags;
            if flags & 0x20 != 0 {
                c.skip(16).ok_or_else(|| self.short("object header"))?;
            }
            if flags & 0x10 != 0 {
                c.skip(4).ok_or_else(|| self.short("object header"))?;
            }
            let size = c.uint(1 << (flags & 3)).ok_or_else(|| self.short("object header"))? as usize;
            let end = c.pos.checked_add(size).filter(|&e| e <= self.bytes.len());
            let end = end.ok_or_else(|| self.short("object header"))?;
            blocks.push((c.clone(), end, true));
        } else {
            let version = c.u8().ok_or_else(|| self.short("object header"))?;
            if version != 1 {
                return Err(self.err(format!("object header at {addr:#x} has an unknown version {version}")));
            }
            c.skip(3).ok_or_else(|| self.short("object header"))?;
            c.u32().ok_or_else(|| self.short("object header"))?;
            let size = c.u32().ok_or_else(|| self.short("object header"))? as usize;
            c.skip(4).ok_or_else(|| self.short("object header"))?;
            let end = c.pos.checked_add(size).filter(|&e| e <= self.bytes.len());
            let end = end.ok_or_else(|| self.short("object header"))?;
            blocks.push((c.clone(), end, false));
        }
        let mut seen = HashSet::new();
        while let Some((mut c, end, v2)) = blocks.pop() {
            if !seen.insert(c.pos) || seen.len() > 10_000 {
                return Err(self.err("object header continuation blocks form a loop"));
            }
            let head = if v2 { 4 + if v2_times_flags & 0x04 != 0 { 2 } else { 0 } } else { 8 };
            while c.pos + head <= end {
                self.tick()?;
                if out.len() > MAX_MESSAGES {
                    return Err(self.err("too many object header messages"));
                }
                let (ty, size, flags) = if v2 {
                    let ty = c.u8().ok_or_else(|| self.short("message"))? as u16;
                    let size = c.u16().ok_or_else(|| self.short("message"))? as usize;
                    let flags = c.u8().ok_or_else(|| self.short("message"))?;
                    if v2_times_flags & 0x04 != 0 {
                        c.skip(2).ok_or_else(|| self.short("message"))?;
                    }
                    (ty, size, flags)
                } else {
                    let ty = c.u16().ok_or_else(|| self.short("message"))? as u16;
                    let size = c.u16().ok_or_else(|| self.short("message"))? as usize;
                    let flags = c.u8().ok_or_else(|| self.short("message"))?;
                    c.skip(3).ok_or_else(|| self.short("message"))?;
                    (ty, size, flags)
                };
                if c.pos + size > end {
                    return Err(self.short("object header message"));
                }
                let data = c.take(size).ok_or_else(|| self.short("message"))?;
                if ty == 0x10 {
                    // Continuation: another block of messages.
                    let mut d = Cur { b: data, pos: 0 };
                    let at = self.addr(&mut d).ok_or_else(|| self.short("continuation"))?;
                    let len = self.len(&mut d).ok_or_else(|| self.short("continuation"))? as usize;
                    let mut bc = self.cur(at)?;
                    let mut bend = bc.pos.checked_add(len).filter(|&e| e <= self.bytes.len());
                    if v2 {
                        if bc.take(4) != Some(b"OCHK") {
                            return Err(self.err("continuation block without its OCHK signature"));
                        }
                        bend = bend.and_then(|e| e.checked_sub(4)); // checksum
                    }
                    let bend = bend.ok_or_else(|| self.short("continuation block"))?;
                    blocks.push((bc, bend, v2));
                } else {
                    out.push((ty, flags, data));
                }
            }
        }
        Ok(out)
    }

    fn dataspace(&self, d: &[u8]) -> Option<Vec<usize>> {
        let mut c = Cur { b: d, pos: 0 };
        let version = c.u8()?;
        let rank = c.u8()? as usize;
        let flags = c.u8()?;
        match version {
            1 => c.skip(5)?,
            2 => {
                if c.u8()? == 2 {
                    return Some(vec![0]); // null dataspace: no elements
                }
            }
            _ => return None,
        }
        if rank > 32 {
            return None;
        }
        let _ = flags;
        (0..rank).map(|_| self.len(&mut c).and_then(|v| usize::try_from(v).ok())).collect()
    }

    /// Datatype: (element, size, vlen string?, fixed string?).
    fn datatype(&self, d: &[u8]) -> Option<(Elem, usize, StrKind)> {
        let mut c = Cur { b: d, pos: 0 };
        let cv = c.u8()?;
        let bits = c.take(3)?;
        let size = c.u32()? as usize;
        let big_endian = bits[0] & 1 != 0;
        Some(match cv & 0x0f {
            0 => (Elem::Int { size, signed: bits[0] & 0x08 != 0, big_endian }, size, StrKind::No),
            1 => (Elem::Float { size, big_endian }, size, StrKind::No),
            3 => (Elem::Other, size, StrKind::Fixed),
            9 if bits[0] & 0x0f == 1 => (Elem::Other, size, StrKind::Vlen),
            _ => (Elem::Other, size, StrKind::No),
        })
    }

    /// A variable-length string from its global heap reference.
    fn vlen_string(&self, r: &[u8]) -> Option<String> {
        let mut c = Cur { b: r, pos: 0 };
        let _len = c.u32()?;
        let heap = self.addr(&mut c)?;
        let index = c.u32()?;
        let mut h = self.cur(heap).ok()?;
        if h.take(4)? != b"GCOL" {
            return None;
        }
        h.skip(4)?;
        let size = self.len(&mut h)? as usize;
        let end = (h.pos - 8 - self.sl).checked_add(size)?.min(self.bytes.len());
        while h.pos + 8 + self.sl <= end {
            self.tick().ok()?;
            let id = h.u16()?;
            h.skip(6)?;
            let n = self.len(&mut h)? as usize;
            if id == 0 {
                return None;
            }
            let data = h.take(n)?;
            if id == index {
                return Some(String::from_utf8_lossy(data).into_owned());
            }
            h.skip((8 - n % 8) % 8)?;
        }
        None
    }

    fn attribute(&self, d: &[u8]) -> Option<(String, Option<Vec<String>>)> {
        let mut c = Cur { b: d, pos: 0 };
        let version = c.u8()?;
        c.skip(1)?;
        let (nn, nd, ns) = (c.u16()? as usize, c.u16()? as usize, c.u16()? as usize);
        if version == 3 {
            c.skip(1)?;
        }
        let pad = |n: usize| if version == 1 { n.div_ceil(8) * 8 } else { n };
        if !(1..=3).contains(&version) {
            return None;
        }
        let name = c.take(nn)?;
        c.skip(pad(nn) - nn)?;
        let name = String::from_utf8_lossy(name.split(|&b| b == 0).next()?).into_owned();
        let dt = c.take(nd)?;
        c.skip(pad(nd) - nd)?;
        let ds = c.take(ns)?;
        c.skip(pad(ns) - ns)?;
        let (_, size, kind) = self.datatype(dt)?;
        let shape = self.dataspace(ds)?;
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        if kind == StrKind::No || size == 0 || n > 1 << 16 {
            return Some((name, None));
        }
        let data = c.take(n.checked_mul(size)?)?;
        let values = data
            .chunks_exact(size)
            .map(|e| match kind {
                StrKind::Vlen => self.vlen_string(e),
                _ => Some(
                    String::from_utf8_lossy(e.split(|&b| b == 0).next().unwrap_or(e)).trim_end_matches(' ').to_string(),
                ),
            })
            .collect::<Option<Vec<String>>>()?;
        Some((name, Some(values)))
    }

    fn layout(&self, d: &[u8], elems: usize, esize: usize) -> std::result::Result<(usize, usize), String> {
        let short = || "truncated data layout message".to_string();
        let mut c = Cur { b: d, pos: 0 };
        let version = c.u8().ok_or_else(short)?;
        let nbytes = elems.checked_mul(esize).ok_or("the dataset is implausibly large")?;
        let (class, addr, compact) = match version {
            1 | 2 => {
                let rank = c.u8().ok_or_else(short)? as usize;
                let class = c.u8().ok_or_else(short)?;
                c.skip(5).ok_or_else(short)?;
                let addr = if class != 0 { Some(self.addr(&mut c).ok_or_else(short)?) } else { None };
                c.skip(4 * rank).ok_or_else(short)?;
                let compact = if class == 0 {
                    let n = c.u32().ok_or_else(short)? as usize;
                    Some(c.pos..c.pos + n)
                } else {
                    None
                };
                (class, addr, compact)
            }
            3 | 4 => {
                let class = c.u8().ok_or_else(short)?;
                match class {
                    0 => {
                        let n = c.u16().ok_or_else(short)? as usize;
                        (0, None, Some(c.pos..c.pos + n))
                    }
                    1 => (1, Some(self.addr(&mut c).ok_or_else(short)?), None),
                    _ => (class, None, None),
                }
            }
            v => return Err(format!("data layout version {v} is not supported")),
        };
        match (class, addr, compact) {
            (0, _, Some(r)) => {
                // Compact data lives in the message: find it in the file by its position.
                let start = (d.as_ptr() as usize).checked_sub(self.bytes.as_ptr() as usize).ok_or_else(short)?;
                if r.end > d.len() || r.len() < nbytes {
                    return Err(short());
                }
                Ok((start + r.start, nbytes))
            }
            (1, Some(UNDEFINED), _) if nbytes == 0 => Ok((0, 0)),
            (1, Some(a), _) => {
                let pos = a.checked_add(self.base).and_then(|p| usize::try_from(p).ok()).ok_or("bad data address")?;
                if pos.checked_add(nbytes).is_none_or(|e| e > self.bytes.len()) {
                    return Err(format!("its {nbytes} bytes at {a:#x} run past the end of the file"));
                }
                Ok((pos, nbytes))
            }
            (2, ..) => Err("chunked storage is not supported (Keras writes contiguous datasets)".into()),
            _ => Err(format!("storage layout class {class} is not supported")),
        }
    }

    /// All objects reachable from the root, depth first, with their paths.
    pub fn objects(&self) -> Result<Vec<Object>> {
        let Root::Header(root) = self.root;
        let mut out = Vec::new();
        let mut visiting = Vec::new();
        self.visit(root, String::new(), &mut out, &mut visiting)?;
        Ok(out)
    }

    fn visit(&self, addr: u64, path: String, out: &mut Vec<Object>, visiting: &mut Vec<u64>) -> Result<()> {
        if visiting.contains(&addr) || visiting.len() > MAX_DEPTH {
            return Err(self.err(format!("group `{path}` is nested too deeply or contains itself")));
        }
        if out.len() > MAX_OBJECTS {
            return Err(self.err("too many objects"));
        }
        self.tick()?;
        let msgs = self.messages(addr)?;
        let mut attrs = Vec::new();
        let mut links: Vec<(String, u64)> = Vec::new();
        let (mut space, mut dtype, mut layout, mut filtered) = (None, None, None, false);
        for (ty, flags, d) in msgs {
            let bad = |what: &str| self.err(format!("object `{path}`: corrupt {what} message"));
            if flags & 0x02 != 0 && matches!(ty, 0x01 | 0x03 | 0x08) {
                return Err(self.err(format!("object `{path}`: shared {ty:#x} messages are not supported")));
            }
            match ty {
                0x01 => space = Some(self.dataspace(d).ok_or_else(|| bad("dataspace"))?),
                0x03 => dtype = Some(self.datatype(d).ok_or_else(|| bad("datatype"))?),
                0x08 => layout = Some(d),
                0x0b => filtered = true,
                0x0c => {
                    if let Some((name, Some(v))) = self.attribute(d) {
                        attrs.push((name, v));
                    }
                }
                0x11 => {
                    let mut c = Cur { b: d, pos: 0 };
                    let btree = self.addr(&mut c).ok_or_else(|| bad("symbol table"))?;
                    let heap = self.addr(&mut c).ok_or_else(|| bad("symbol table"))?;
                    self.symbol_table(btree, heap, &path, &mut links, 0)?;
                }
                0x06 => links.extend(self.link(d).map_err(|e| self.err(format!("object `{path}`: {e}")))?),
                0x02 => {
                    let mut c = Cur { b: d, pos: 0 };
                    c.skip(1).ok_or_else(|| bad("link info"))?;
                    let flags = c.u8().ok_or_else(|| bad("link info"))?;
                    if flags & 1 != 0 {
                        c.skip(8).ok_or_else(|| bad("link info"))?;
                    }
                    if self.addr(&mut c).ok_or_else(|| bad("link info"))? != UNDEFINED {
                        return Err(self.err(format!(
                            "group `{path}` keeps its links in dense storage (a fractal heap), which is not supported"
                        )));
                    }
                }
                _ => {}
            }
        }
        let dataset = match (space, dtype, layout) {
            (Some(shape), Some((elem, size, _)), Some(l)) => {
                let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                let data = match n {
                    _ if filtered => Err("the dataset is compressed or filtered, which is not supported".into()),
                    Some(n) => self.layout(l, n, size),
                    None => Err("the dataset is implausibly large".into()),
                };
                Some(Dataset { shape, elem, data })
            }
            _ => None,
        };
        out.push(Object { path: path.clone(), attrs, dataset });
        visiting.push(addr);
        for (name, child) in links {
            let p = if path.is_empty() { name } else { format!("{path}/{name}") };
            self.visit(child, p, out, visiting)?;
        }
        visiting.pop();
        Ok(())
    }

    fn link(&self, d: &[u8]) -> std::result::Result<Option<(String, u64)>, String> {
        let short = || "corrupt link message".to_string();
        let mut c = Cur { b: d, pos: 0 };
        if c.u8() != Some(1) {
            return Err("unknown link message version".into());
        }
        let flags = c.u8().ok_or_else(short)?;
        let ty = if flags & 0x08 != 0 { c.u8().ok_or_else(short)? } else { 0 };
        if flags & 0x04 != 0 {
            c.skip(8).ok_or_else(short)?;
        }
        if flags & 0x10 != 0 {
            c.skip(1).ok_or_else(short)?;
        }
        let n = c.uint(1 << (flags & 3)).ok_or_else(short)? as usize;
        let name = String::from_utf8_lossy(c.take(n).ok_or_else(short)?).into_owned();
        if ty != 0 {
            return Ok(None); // soft or external link: not followed
        }
        Ok(Some((name, self.addr(&mut c).ok_or_else(short)?)))
    }

    fn symbol_table(&self, node: u64, heap: u64, path: &str, out: &mut Vec<(String, u64)>, depth: usize) -> Result<()> {
        if depth > 16 {
            return Err(self.err(format!("group `{path}`: its B-tree is too deep")));
        }
        let bad = || self.err(format!("group `{path}`: corrupt B-tree"));
        let mut c = self.cur(node)?;
        if c.take(4) != Some(b"TREE") {
            return Err(bad());
        }
        let (ty, level) = (c.u8().ok_or_else(bad)?, c.u8().ok_or_else(bad)?);
        let used = c.u16().ok_or_else(bad)? as usize;
        if ty != 0 {
            return Err(bad());
        }
        self.addr(&mut c).ok_or_else(bad)?;
        self.addr(&mut c).ok_or_else(bad)?;
        for _ in 0..used {
            self.tick()?;
            self.len(&mut c).ok_or_else(bad)?; // key
            let child = self.addr(&mut c).ok_or_else(bad)?;
            if level > 0 {
                self.symbol_table(child, heap, path, out, depth + 1)?;
            } else {
                self.symbol_node(child, heap, path, out)?;
            }
            if out.len() > MAX_OBJECTS {
                return Err(self.err("too many objects"));
            }
        }
        Ok(())
    }

    fn symbol_node(&self, node: u64, heap: u64, path: &str, out: &mut Vec<(String, u64)>) -> Result<()> {
        let bad = || self.err(format!("group `{path}`: corrupt symbol table node"));
        let mut c = self.cur(node)?;
        if c.take(4) != Some(b"SNOD") {
            return Err(bad());
        }
        c.skip(2).ok_or_else(bad)?;
        let n = c.u16().ok_or_else(bad)? as usize;
        // Local heap: the names.
        let mut h = self.cur(heap)?;
        if h.take(4) != Some(b"HEAP") {
            return Err(self.err(format!("group `{path}`: corrupt local heap")));
        }
        h.skip(4).ok_or_else(bad)?;
        let size = self.len(&mut h).ok_or_else(bad)? as usize;
        self.len(&mut h).ok_or_else(bad)?;
        let data = self.addr(&mut h).ok_or_else(bad)?;
        let seg = self.cur(data)?;
        let seg = seg.b.get(seg.pos..seg.pos.saturating_add(size)).ok_or_else(bad)?;
        for _ in 0..n {
            let name_off = self.len(&mut c).ok_or_else(bad)? as usize;
            let obj = self.addr(&mut c).ok_or_else(bad)?;
            c.skip(24).ok_or_else(bad)?;
            let name = seg.get(name_off..).and_then(|s| s.split(|&b| b == 0).next()).ok_or_else(bad)?;
            out.push((String::from_utf8_lossy(name).into_owned(), obj));
        }
        Ok(())
    }

    /// A dataset's values as f32.
    pub fn read_f32(&self, path: &str, d: &Dataset) -> Result<Vec<f32>> {
        let (pos, n) = d.data.clone().map_err(|e| self.err(format!("dataset `{path}`: {e}")))?;
        let raw = self.bytes.get(pos..pos + n).ok_or_else(|| self.short("dataset"))?;
        let conv = |size: usize, big: bool, f: fn(u64, usize) -> f32| -> Vec<f32> {
            raw.chunks_exact(size)
                .map(|b| {
                    let v = if big {
                        b.iter().fold(0u64, |a, &x| (a << 8) | x as u64)
                    } else {
                        b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64)
                    };
                    f(v, size)
                })
                .collect()
        };
        Ok(match d.elem {
            Elem::Float { size: 4, big_endian } => conv(4, big_endian, |v, _| f32::from_bits(v as u32)),
            Elem::Float { size: 8, big_endian } => conv(8, big_endian, |v, _| f64::from_bits(v) as f32),
            Elem::Float { size: 2, big_endian } => conv(2, big_endian, |v, _| super::super::f16_to_f32(v as u16)),
            Elem::Int { size: s @ (1 | 2 | 4 | 8), signed, big_endian } => {
                let f: fn(u64, usize) -> f32 =
                    if signed { |v, s| ((v << (64 - 8 * s)) as i64 >> (64 - 8 * s)) as f32 } else { |v, _| v as f32 };
                conv(s, big_endian, f)
            }
            _ => return Err(self.err(format!("dataset `{path}` does not hold numbers this reader knows"))),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StrKind {
    No,
    Fixed,
    Vlen,
}
