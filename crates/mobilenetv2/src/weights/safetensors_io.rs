//! safetensors: the project's own format (torchvision names plus `mnv2.*` metadata) and the
//! format most PyTorch users export to.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use super::{bf16_to_f32, f16_to_f32, Data, Tensor, TensorFile};
use crate::error::{Error, Result};

pub fn read(path: &Path, bytes: &[u8]) -> Result<TensorFile> {
    let bad = |d: String| Error::format(path, "safetensors", d);
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
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Unsupported(format!("safetensors serialisation failed: {e}")))
}

/// Writes a safetensors file atomically.
pub fn write(path: &Path, tensors: &BTreeMap<String, Tensor>, metadata: &BTreeMap<String, String>) -> Result<()> {
    super::write_atomic(path, &to_bytes(tensors, metadata)?)
}

/// [`write`], storing float tensors as `store`.
pub fn write_as(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &BTreeMap<String, String>,
    store: FloatStore,
) -> Result<()> {
    super::write_atomic(path, &to_bytes_as(tensors, metadata, store)?)
}
