//! Strided tensors gathered from the bytes of their storages into row-major [`Tensor`]s.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::bad;
use super::torch::{DType, Shared, TensorRef};
use crate::error::{Error, Result};
use crate::limits::{load_alloc_budget, Budget};
use crate::weights::{bf16_to_f32, f16_to_f32, Data, Tensor};

/// Gathers a tensor from the bytes of its root storage.
pub(super) fn gather(path: &Path, name: &str, t: &TensorRef, root: &[u8], budget: &mut Budget) -> Result<Tensor> {
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
    // What the gathered tensor allocates: floats of any width become f32.
    let out_width = match dtype {
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 | DType::I32 => 4,
        DType::I64 => 8,
        DType::I8 | DType::U8 => 1,
    };
    if let Err(total) = budget.charge(numel.saturating_mul(out_width)) {
        return Err(oob(format!(
            "{numel} elements take the tensors of this file past {total} bytes, more than a file of its size can hold (stride-0 expansion?)"
        )));
    }
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
pub(super) fn le<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Storage positions of the elements of a strided tensor, in row-major order: an odometer over
/// the index that moves the position by the stride of each dimension it steps.
pub(super) fn element_positions<'s>(
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
pub(super) fn materialise(
    path: &Path,
    shared: &Shared,
    entries: Vec<(String, usize)>,
    file_len: usize,
    storage_bytes: &HashMap<usize, &[u8]>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut budget = Budget::new(load_alloc_budget(file_len));
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
