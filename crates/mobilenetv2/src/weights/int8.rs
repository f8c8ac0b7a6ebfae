//! The int8 model file: safetensors with, per convolution, `{name}.weight` (I8, PyTorch OIHW
//! layout), `{name}.weight_scale` (F32, per output channel) and `{name}.bias` (F32, BatchNorm
//! folded), the same for the classifier, and a `quantization` metadata entry
//! ([`crate::qscheme::QuantSpec`]). The scheme is described in [`crate::qscheme`].

use std::collections::BTreeMap;
use std::path::Path;

use mnv2_kernels::qgemm::quantize_weights;

use super::{Data, Tensor, TensorFile};
use crate::error::{Error, Result};
use crate::fold::{fold_conv, linear};
use crate::layout::{hwio_to_oihw, ConvDims};
use crate::names::{self, BnParam, Params};
use crate::plan::{Op, Plan};
use crate::qscheme::QuantSpec;

/// The quantised file's tensors: int8 weights in PyTorch layout with per-channel scales and
/// folded biases.
pub fn quantized_tensors(plan: &Plan, params: &Params) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for layer in &plan.layers {
        let (folded, k) = match &layer.op {
            Op::Conv(c) => (fold_conv(params, plan.spec.bn_eps, layer), c.kernel * c.kernel * layer.input.c / c.groups),
            Op::Linear => (linear(params, layer), layer.input.c),
            _ => continue,
        };
        let n = layer.output.c;
        let (q, scales) = quantize_weights(&folded.weights, k, n);
        // Kernels hold weights as HWIO ([in][out] for the classifier); files as PyTorch's OIHW.
        let (dims, shape) = match &layer.op {
            Op::Conv(c) => {
                let d = ConvDims { o: n, i: layer.input.c / c.groups, k: c.kernel };
                (d, vec![d.o, d.i, d.k, d.k])
            }
            _ => (ConvDims { o: n, i: k, k: 1 }, vec![n, k]),
        };
        let q_oihw = hwio_to_oihw(&q, dims);
        out.insert(names::weight(layer), Tensor { shape, data: Data::I8(q_oihw) });
        out.insert(names::weight_scale(layer), Tensor::f32(vec![n], scales));
        out.insert(names::bias(layer), Tensor::f32(vec![n], folded.bias));
    }
    out
}

/// Writes a quantised model file (atomically): the plan's int8 tensors, `metadata` and the
/// `quantization` entry.
pub fn write(
    path: &Path,
    plan: &Plan,
    params: &Params,
    spec: &QuantSpec,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut meta = metadata.clone();
    meta.insert("quantization".into(), serde_json::to_string(spec).expect("serialises"));
    super::safetensors_io::write(path, &quantized_tensors(plan, params), &meta)
}

/// Reads the tensors of a quantised file into float parameters with torchvision names: each
/// weight dequantised (`q * scale`), BatchNorm the identity (gamma 1, beta the folded bias,
/// mean 0, var `1 - eps`), so folding gives the dequantised weights back.
pub fn params_from_file(file: &TensorFile, plan: &Plan) -> Result<Params> {
    let path = &file.path;
    let get = |name: &str, shape: &[usize]| -> Result<&Tensor> {
        let t = file.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: path.clone(),
            name: name.into(),
            expected: shape.to_vec(),
        })?;
        if t.shape != shape {
            return Err(Error::ShapeMismatch {
                path: path.clone(),
                name: name.into(),
                expected: shape.to_vec(),
                got: t.shape.clone(),
            });
        }
        Ok(t)
    };
    let floats = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        match &get(name, shape)?.data {
            Data::F32(v) => {
                if let Some((index, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                    return Err(Error::NonFinite { path: path.clone(), name: name.into(), index, value });
                }
                Ok(v.clone())
            }
            d => Err(Error::DType {
                path: path.clone(),
                name: name.into(),
                expected: "float32".into(),
                got: d.dtype().into(),
            }),
        }
    };
    let eps = plan.spec.bn_eps;
    let mut params = BTreeMap::new();
    let mut known = Vec::new();
    for layer in &plan.layers {
        let shape = match &layer.op {
            Op::Conv(c) => vec![layer.output.c, layer.input.c / c.groups, c.kernel, c.kernel],
            Op::Linear => vec![layer.output.c, layer.input.c],
            _ => continue,
        };
        let n = layer.output.c;
        let wname = names::weight(layer);
        let q = match &get(&wname, &shape)?.data {
            Data::I8(v) => v.clone(),
            d => {
                return Err(Error::DType {
                    path: path.clone(),
                    name: wname,
                    expected: "int8".into(),
                    got: d.dtype().into(),
                })
            }
        };
        let (sname, bname) = (names::weight_scale(layer), names::bias(layer));
        let scales = floats(&sname, &[n])?;
        let bias = floats(&bname, &[n])?;
        let per = q.len() / n;
        let w: Vec<f32> = q.iter().enumerate().map(|(i, &v)| v as f32 * scales[i / per]).collect();
        known.extend([wname.clone(), sname, bname]);
        params.insert(wname, w);
        match &layer.op {
            // A conv with its own bias and no BatchNorm (DeepLab's logits, SSD's predictors)
            // takes the bias as is.
            Op::Conv(c) if c.bn.is_some() => {
                params.insert(names::bn(c, BnParam::Weight), vec![1.0; n]);
                params.insert(names::bn(c, BnParam::Bias), bias);
                params.insert(names::bn(c, BnParam::Mean), vec![0.0; n]);
                params.insert(names::bn(c, BnParam::Var), vec![1.0 - eps; n]);
            }
            _ => {
                params.insert(names::bias(layer), bias);
            }
        }
    }
    if let Some(name) = file.tensors.keys().find(|k| !known.contains(k)) {
        return Err(Error::UnknownTensor { path: path.clone(), name: name.clone() });
    }
    Ok(params)
}
