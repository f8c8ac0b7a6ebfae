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
//! Nothing here may panic, recurse or allocate without bound on hostile input: every read is
//! bounds-checked, the machine's work, memo, MARKs and tuple nesting are capped
//! (`pickle.rs`), zip entries that share bytes or names are refused and storages are read
//! only as far as they are needed, and the bytes the gathered tensors may allocate are
//! bounded by the file's size ([`crate::limits::load_alloc_budget`]).
//!
//! The code: `pickle.rs` (the virtual machine), `torch.rs` (what torch's globals and persistent
//! ids mean, the state dict), `gather.rs` (strided tensors to row-major), this file (the two
//! containers).

mod gather;
mod pickle;
#[cfg(test)]
mod tests;
mod torch;

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::path::Path;

use super::{Tensor, TensorFile};
use crate::error::{Error, Result};
use gather::{le, materialise};
use pickle::{unpickle, Key, Obj, Value};
use torch::{state_dict, Shared};

const FORMAT: &str = "PyTorch";

/// The legacy format's first pickle: this number (torch/serialization.py `MAGIC_NUMBER`).
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
const LEGACY_PROTOCOL: i128 = 1001;

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
// Containers

/// The zip container. Entries that share bytes (overlapping local headers or data) or names
/// are refused: without that, K names pointing at one stored entry, read K times, multiply
/// memory by K. Every byte read is charged to one budget of the file's size, and a storage
/// entry is read only as far as its storage needs.
fn read_zip(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Tensor>> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| bad(path, format!("zip archive: {e}")))?;
    if zip.has_duplicate_names() {
        return Err(bad(path, "the zip archive names an entry twice"));
    }
    match zip.has_overlapping_entries() {
        Ok(false) => {}
        Ok(true) => return Err(bad(path, "zip entries overlap (several names share the same bytes)")),
        Err(e) => return Err(bad(path, format!("zip archive: {e}"))),
    }
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
    let mut budget = crate::limits::Budget::new(bytes.len());
    // Reads entry `name` up to `want` bytes (all of it if it is no longer; reading to the end
    // checks the entry's CRC-32), or `None` if there is no such entry.
    let mut entry = |name: &str, want: usize| -> Result<Option<Vec<u8>>> {
        let mut f = match zip.by_name(name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(bad(path, format!("zip entry `{name}`: {e}"))),
        };
        // A stored entry cannot be larger than the file; refuse sizes that would make the
        // read reserve memory a corrupt header asks for.
        let size = usize::try_from(f.size()).unwrap_or(usize::MAX);
        if size > bytes.len() {
            return Err(bad(path, format!("zip entry `{name}` claims {} bytes", f.size())));
        }
        let n = size.min(want);
        if budget.charge(n).is_err() {
            return Err(bad(path, format!("zip entry `{name}`: the entries add up to more than the file")));
        }
        let mut buf = Vec::with_capacity(n);
        let read = if n == size { f.read_to_end(&mut buf) } else { f.take(n as u64).read_to_end(&mut buf) };
        read.map_err(|e| bad(path, format!("zip entry `{name}`: {e}")))?;
        Ok(Some(buf))
    };
    if let Some(order) = entry(&format!("{prefix}/byteorder"), 64)? {
        if order != b"little" {
            return Err(bad(
                path,
                format!(
                    "byte order `{}`: only little-endian files are supported",
                    crate::limits::clip(&String::from_utf8_lossy(&order), 16)
                ),
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
        let raw =
            entry(&name, nbytes)?.ok_or_else(|| bad(path, format!("storage `{}` has no entry `{name}`", st.key)))?;
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
        return Err(bad(
            path,
            format!("legacy protocol version {}, expected {LEGACY_PROTOCOL}", version.value.describe()),
        ));
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
