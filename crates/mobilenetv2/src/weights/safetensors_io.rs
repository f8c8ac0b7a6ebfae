//! safetensors: the project's own format (torchvision names plus `mnv2.*` metadata) and the
//! format most PyTorch users export to.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use super::{bf16_to_f32, f16_to_f32, Data, Tensor, TensorFile};
use crate::error::{Error, Result};

/// Largest header accepted (the JSON index of tensors), a guard against corrupt sizes.
const MAX_HEADER: u64 = crate::limits::MAX_JSON_BYTES;

/// Refuses JSON whose objects name a key twice: `serde_json` keeps the last one silently,
/// so two readers of the same file could disagree about a tensor. serde_json's own recursion
/// limit (128) bounds the nesting.
pub(crate) fn no_duplicate_keys(json: &[u8]) -> std::result::Result<(), String> {
    use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
    struct Check;
    impl<'de> DeserializeSeed<'de> for Check {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Check {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> std::result::Result<(), A::Error> {
            while a.next_element_seed(Check)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = m.next_key::<String>()? {
                m.next_value_seed(Check)?;
                if !seen.insert(k) {
                    return Err(A::Error::custom("an object names the same key twice"));
                }
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    Check.deserialize(&mut de).map_err(|e| e.to_string())
}

/// Reads a safetensors file tensor by tensor, never holding the whole file in memory: peak
/// memory is the tensors themselves (the weights of a model are then never in memory twice).
pub fn read_path(path: &Path) -> Result<TensorFile> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |d: String| Error::format(path, "safetensors", d);
    let io = |e: std::io::Error| Error::io(path, e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    if file_len == 0 {
        return Err(Error::format(path, "weights", "the file is empty"));
    }
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8).map_err(|_| bad("truncated before the header size".into()))?;
    let header_len = u64::from_le_bytes(len8);
    if header_len > MAX_HEADER || header_len > file_len - 8 {
        return Err(bad(format!("header size {header_len} does not fit in the file ({file_len} bytes)")));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|_| bad("truncated header".into()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    no_duplicate_keys(&header).map_err(|e| bad(format!("header: {e}")))?;
    if json.as_object().is_some_and(|o| o.len() > crate::limits::MAX_TENSORS) {
        return Err(bad(format!("more than {} tensors", crate::limits::MAX_TENSORS)));
    }
    let obj = json.as_object().ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_len = file_len - 8 - header_len;
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::new();
    for (name, v) in obj {
        if name == "__metadata__" {
            let m = v.as_object().ok_or_else(|| bad("__metadata__ is not an object".into()))?;
            for (k, v) in m {
                let s = v.as_str().ok_or_else(|| bad(format!("metadata `{k}` is not a string")))?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let field = |f: &str| v.get(f).ok_or_else(|| bad(format!("tensor `{name}` has no `{f}`")));
        let dtype = field("dtype")?.as_str().ok_or_else(|| bad(format!("tensor `{name}`: dtype is not a string")))?;
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad(format!("tensor `{name}`: shape is not a list of sizes")))?;
        let offs: Vec<u64> = field("data_offsets")?
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| bad(format!("tensor `{name}`: data_offsets is not [begin, end]")))?;
        let width = match dtype {
            "F64" | "I64" => 8,
            "F32" | "I32" => 4,
            "F16" | "BF16" => 2,
            "I8" | "U8" => 1,
            other => {
                return Err(Error::DType {
                    path: path.into(),
                    name: name.clone(),
                    expected: "a float or integer type".into(),
                    got: other.into(),
                })
            }
        };
        let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let bytes = numel.and_then(|n| n.checked_mul(width));
        if offs[0] > offs[1] || offs[1] > data_len || Some(offs[1] - offs[0]) != bytes {
            return Err(bad(format!(
                "tensor `{name}` ({dtype} {shape:?}) has data offsets {:?} that do not fit its size or the file's {data_len} data bytes (truncated or corrupt)",
                offs
            )));
        }
        entries.push((offs[0], offs[1], name.clone(), dtype.to_string(), shape));
    }
    entries.sort();
    if let Some(w) = entries.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(bad(format!("tensors `{}` and `{}` overlap", w[0].2, w[1].2)));
    }
    let mut tensors = BTreeMap::new();
    let mut raw = Vec::new();
    for (begin, end, name, dtype, shape) in entries {
        f.seek(SeekFrom::Start(8 + header_len + begin)).map_err(io)?;
        raw.resize((end - begin) as usize, 0);
        f.read_exact(&mut raw).map_err(|_| bad(format!("truncated in tensor `{name}`")))?;
        let data = match dtype.as_str() {
            "F32" => Data::F32(raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()),
            "F64" => Data::F32(raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect()),
            "F16" => Data::F32(raw.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect()),
            "BF16" => Data::F32(raw.chunks_exact(2).map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect()),
            "I64" => Data::I64(raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()),
            "I32" => Data::I32(raw.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect()),
            "I8" => Data::I8(raw.iter().map(|&b| b as i8).collect()),
            _ => Data::U8(raw.clone()),
        };
        tensors.insert(name, Tensor { shape, data });
    }
    Ok(TensorFile { path: path.into(), tensors, metadata })
}

/// Parses safetensors bytes already in memory (see [`read_path`] for files).
pub fn read(path: &Path, bytes: &[u8]) -> Result<TensorFile> {
    let bad = |d: String| Error::format(path, "safetensors", d);
    let header_len = bytes.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize);
    if let Some(h) = bytes.get(8..8usize.saturating_add(header_len)) {
        no_duplicate_keys(h).map_err(|e| bad(format!("header: {e}")))?;
    }
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => Data::F32(raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()),
            Dtype::F64 => {
                Data::F32(raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect())
            }
            Dtype::F16 => {
                Data::F32(raw.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect())
            }
            Dtype::BF16 => {
                Data::F32(raw.chunks_exact(2).map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect())
            }
            Dtype::I64 => Data::I64(raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()),
            Dtype::I32 => Data::I32(raw.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect()),
            Dtype::I8 => Data::I8(raw.iter().map(|&b| b as i8).collect()),
            Dtype::U8 => Data::U8(raw.to_vec()),
            other => {
                return Err(Error::DType {
                    path: path.into(),
                    name,
                    expected: "a float or integer type".into(),
                    got: format!("{other:?}"),
                })
            }
        };
        tensors.insert(name, Tensor { shape: view.shape().to_vec(), data });
    }
    let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok(TensorFile { path: path.into(), tensors, metadata })
}

/// How floating-point tensors are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FloatStore {
    /// 32-bit floats, exactly as computed.
    #[default]
    F32,
    /// IEEE half precision (round to nearest even): half the file size, widened at load.
    F16,
}

fn le_bytes(data: &Data, store: FloatStore) -> (Dtype, Vec<u8>) {
    match data {
        Data::F32(v) if store == FloatStore::F16 => {
            (Dtype::F16, v.iter().flat_map(|x| super::f32_to_f16(*x).to_le_bytes()).collect())
        }
        Data::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::I32(v) => (Dtype::I32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::I8(v) => (Dtype::I8, v.iter().map(|&x| x as u8).collect()),
        Data::U8(v) => (Dtype::U8, v.clone()),
    }
}

/// Serialises tensors and metadata to safetensors bytes.
pub fn to_bytes(tensors: &BTreeMap<String, Tensor>, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    to_bytes_as(tensors, metadata, FloatStore::F32)
}

/// [`to_bytes`], storing float tensors as `store`.
pub fn to_bytes_as(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    store: FloatStore,
) -> Result<Vec<u8>> {
    let encoded: Vec<(&String, Dtype, &Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let (dt, b) = le_bytes(&t.data, store);
            (n, dt, &t.shape, b)
        })
        .collect();
    let mut views = Vec::with_capacity(encoded.len());
    for (name, dt, shape, bytes) in &encoded {
        let view = TensorView::new(*dt, (*shape).clone(), bytes)
            .map_err(|e| Error::Unsupported(format!("tensor `{name}` cannot be written: {e}")))?;
        views.push(((*name).clone(), view));
    }
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Unsupported(format!("safetensors serialisation failed: {e}")))?;
    canonical(bytes)
}

/// The same file with its JSON header's keys in sorted order: `safetensors::serialize` writes
/// the metadata in the order of a `HashMap`, which differs from run to run, so the same model
/// would give different bytes. The data offsets are relative to the data, which is unchanged.
fn canonical(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |what: &str| Error::Unsupported(format!("safetensors serialisation gave {what}"));
    let n =
        bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).ok_or_else(|| bad("no header"))?;
    let end = usize::try_from(n).ok().and_then(|n| n.checked_add(8)).filter(|&e| e <= bytes.len());
    let end = end.ok_or_else(|| bad("a header longer than the file"))?;
    // serde_json's maps are sorted by key (no `preserve_order`).
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..end]).map_err(|_| bad("a header that is not JSON"))?;
    let mut json = serde_json::to_vec(&header).map_err(|_| bad("a header that cannot be written"))?;
    // As the crate does: spaces up to a multiple of 8 bytes, so the data stays aligned.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - end);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// Writes a safetensors file atomically.
pub fn write(path: &Path, tensors: &BTreeMap<String, Tensor>, metadata: &BTreeMap<String, String>) -> Result<()> {
    crate::fsutil::write_atomic(path, &to_bytes(tensors, metadata)?)
}

/// [`write()`], storing float tensors as `store`.
pub fn write_as(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    store: FloatStore,
) -> Result<()> {
    crate::fsutil::write_atomic(path, &to_bytes_as(tensors, metadata, store)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same tensors and metadata give the same bytes every time (the crate's metadata map
    /// is a `HashMap`, whose order differs between instances), and they read back.
    #[test]
    fn serialisation_is_deterministic() {
        let tensors: BTreeMap<String, Tensor> = [
            ("b.weight", Tensor { shape: vec![2, 3], data: Data::F32(vec![1.0, -2.0, 3.5, 0.0, 5.0, 6.25]) }),
            ("a.bias", Tensor { shape: vec![3], data: Data::I8(vec![-1, 0, 7]) }),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
        let metadata: BTreeMap<String, String> =
            (0..12).map(|i| (format!("key{i:02}"), format!("value {i}"))).collect();
        let first = to_bytes(&tensors, &metadata).unwrap();
        for _ in 0..8 {
            assert_eq!(to_bytes(&tensors, &metadata).unwrap(), first);
        }
        let n = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0, "the data stays 8-byte aligned");
        let header = std::str::from_utf8(&first[8..8 + n]).unwrap();
        let at: Vec<usize> = metadata.keys().map(|k| header.find(k.as_str()).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "metadata keys in order: {header}");
        let back = read(Path::new("t.safetensors"), &first).unwrap();
        assert_eq!(back.metadata, metadata);
        assert_eq!(back.tensors, tensors);
    }
}
