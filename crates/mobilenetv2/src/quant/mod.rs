//! Post-training static quantisation to int8.
//!
//! The scheme (what the int8 engine runs):
//! - weights: BatchNorm folded, then s8 symmetric per output channel (`w = scale[o] * q`);
//! - activations: u8 with an affine map `real = scale * (q - zero)`, every tensor calibrated
//!   by running the float network on calibration images ([`calibrate`]) with min/max, a
//!   percentile, or the clip range that minimises the quantisation error (MSE). ReLU6 outputs
//!   (the stem, each expand and depthwise conv, the pooled features) keep zero point 0 and a
//!   range within the known [0, 6] (ReLU6 is what makes these ranges small and fixed); the
//!   linear bottleneck outputs (block outputs, residual sums included) are signed;
//! - accumulation in i32, requantisation in f32 fused into the kernels.
//!
//! Files: safetensors with, per convolution, `{name}.weight` (I8, PyTorch OIHW layout),
//! `{name}.weight_scale` (F32, per output channel) and `{name}.bias` (F32, BatchNorm folded),
//! the same for `classifier.1`, and a `quantization` metadata entry ([`QuantSpec`]).

use std::collections::BTreeMap;
use std::path::Path;

use mnv2_kernels::qgemm::{quantize_weights, QParams};
use serde::{Deserialize, Serialize};

use crate::engine::fold::{fold_conv, linear};
use crate::engine::{Engine, Mode, Options};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::plan::{Op, Plan};
use crate::tensor::Batch;
use crate::weights::{Data, Tensor, TensorFile};

/// Quantisation of one activation tensor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActQuant {
    pub scale: f32,
    pub zero: i32,
}

impl From<ActQuant> for QParams {
    fn from(a: ActQuant) -> QParams {
        QParams { scale: a.scale, zero: a.zero }
    }
}

impl From<QParams> for ActQuant {
    fn from(q: QParams) -> ActQuant {
        ActQuant { scale: q.scale, zero: q.zero }
    }
}

/// The quantisation of ReLU6 outputs: [0, 6] onto 0..=255.
pub const RELU6: QParams = QParams { scale: 6.0 / 255.0, zero: 0 };

/// How block-output ranges are chosen from the calibration values.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Method {
    /// The smallest and largest value seen.
    MinMax,
    /// The given percentile of each tail (e.g. 99.99), ignoring rare outliers.
    Percentile { percent: f64 },
    /// The clip range (a fraction of min/max) with the least mean squared quantisation error.
    Mse,
    /// Not calibrated here: the ranges come from an imported int8 model (ONNX QDQ, TFLite).
    Imported,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Method> {
        match s {
            "minmax" => Ok(Method::MinMax),
            "mse" => Ok(Method::Mse),
            _ => match s.strip_prefix("percentile") {
                Some(rest) => {
                    let p = rest.trim_start_matches([':', '=']);
                    let percent = if p.is_empty() { 99.9 } else { p.parse().map_err(|_| bad_method(s))? };
                    if !(50.0..=100.0).contains(&percent) {
                        return Err(bad_method(s));
                    }
                    Ok(Method::Percentile { percent })
                }
                None => Err(bad_method(s)),
            },
        }
    }
}

fn bad_method(s: &str) -> Error {
    Error::Input(format!("calibration method `{s}`: expected minmax, percentile[:P] (P in 50..100) or mse"))
}

/// The activations of one inverted residual block.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockQuant {
    /// The expanded tensor (the stem's output for a first block without expand conv).
    pub hidden: ActQuant,
    /// The depthwise conv's output.
    pub dw: ActQuant,
    /// The block's output (linear bottleneck, residual included).
    pub output: ActQuant,
}

/// What a quantised model file records beside its tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantSpec {
    /// `int8`: u8 affine activations, s8 per-channel weights.
    pub scheme: String,
    pub method: Method,
    /// Calibration images used.
    pub images: usize,
    /// Per block, in plan order.
    pub blocks: Vec<BlockQuant>,
    /// The pooled features (the classifier's input).
    pub pooled: ActQuant,
}

/// Values kept per tensor for percentile and MSE ranges.
const SAMPLES_PER_IMAGE: usize = 4096;

/// Running statistics of one tensor.
#[derive(Clone, Debug, Default)]
struct Stats {
    min: f32,
    max: f32,
    samples: Vec<f32>,
}

impl Stats {
    fn add(&mut self, v: &[f32]) {
        for &x in v {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        let step = (v.len() / SAMPLES_PER_IMAGE).max(1);
        self.samples.extend(v.iter().step_by(step));
    }

    fn range(&mut self, method: Method) -> (f32, f32) {
        match method {
            Method::MinMax | Method::Imported => (self.min, self.max),
            Method::Percentile { percent } => {
                self.samples.sort_by(f32::total_cmp);
                let n = self.samples.len();
                let tail = ((1.0 - percent / 100.0) * n as f64).floor() as usize;
                (self.samples[tail.min(n - 1)], self.samples[(n - 1).saturating_sub(tail)])
            }
            Method::Mse => {
                let mut best = (f64::INFINITY, (self.min, self.max));
                for i in 0..=20 {
                    let f = 1.0 - 0.025 * i as f32;
                    let (lo, hi) = (self.min * f, self.max * f);
                    let q = QParams::from_range(lo, hi);
                    let err: f64 =
                        self.samples.iter().map(|&x| (q.dequantize(q.quantize(x)) - x) as f64).map(|e| e * e).sum();
                    if err < best.0 {
                        best = (err, (lo, hi));
                    }
                }
                best.1
            }
        }
    }
}

/// Calibrates every activation on `images` (NHWC batches in the model's preprocessing),
/// running the float reference network.
pub fn calibrate(model: &Model, images: &[Batch], method: Method) -> Result<QuantSpec> {
    if images.is_empty() {
        return Err(Error::Input("calibration needs at least one image".into()));
    }
    let engine = Engine::new(model, Options { mode: Mode::Reference, threads: 2, isa: None })?;
    let plan = &model.plan;
    // Per block: hidden, depthwise, output; then the pooled features.
    let mut taps = Vec::new();
    for b in &plan.blocks {
        taps.extend([b.expand.unwrap_or(b.first_layer().saturating_sub(1)), b.depthwise, b.project]);
    }
    let pool = plan.layers.iter().position(|l| matches!(l.op, Op::GlobalAvgPool)).expect("a plan has a pool");
    taps.push(pool);
    let mut stats: Vec<Stats> =
        vec![Stats { min: f32::INFINITY, max: f32::NEG_INFINITY, samples: Vec::new() }; taps.len()];
    let mut count = 0;
    for batch in images {
        let plan = engine.plan_for(batch.shape)?;
        let outs = engine.run_taps(batch, &plan, &taps)?;
        // Per image, so the sampled values do not depend on how images are batched.
        for (s, o) in stats.iter_mut().zip(&outs) {
            for i in 0..o.n {
                s.add(o.image(i));
            }
        }
        count += batch.n;
    }
    let mut range = |i: usize, relu6: bool| -> ActQuant {
        let (lo, hi) = stats[i].range(method);
        let q = if relu6 { QParams::from_range(0.0, hi.min(6.0)) } else { QParams::from_range(lo, hi) };
        q.into()
    };
    let blocks = (0..plan.blocks.len())
        .map(|k| BlockQuant { hidden: range(3 * k, true), dw: range(3 * k + 1, true), output: range(3 * k + 2, false) })
        .collect();
    let pooled = range(taps.len() - 1, true);
    Ok(QuantSpec { scheme: "int8".into(), method, images: count, blocks, pooled })
}

/// The quantised file's tensors: int8 weights in PyTorch layout with per-channel scales and
/// folded biases.
pub fn quantized_tensors(model: &Model) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for layer in &model.plan.layers {
        let (folded, k) = match &layer.op {
            Op::Conv(c) => (fold_conv(model, layer), c.kernel * c.kernel * layer.input.c / c.groups),
            Op::Linear => (linear(model, layer), layer.input.c),
            _ => continue,
        };
        let n = layer.output.c;
        let (q, scales) = quantize_weights(&folded.weights, k, n);
        // Kernels hold weights as [k][n] (HWIO / [in][out]); files as PyTorch [n][k] (OIHW).
        let mut q_nk = vec![0i8; k * n];
        for kk in 0..k {
            for j in 0..n {
                q_nk[j * k + kk] = q[kk * n + j];
            }
        }
        let shape = match &layer.op {
            Op::Conv(c) => vec![n, layer.input.c / c.groups, c.kernel, c.kernel],
            _ => vec![n, k],
        };
        // OIHW order of the kernel's taps: HWIO row index kk = (ky * k + kx) * cin + i.
        let q_oihw = match &layer.op {
            Op::Conv(c) => {
                let (ks, cin) = (c.kernel, layer.input.c / c.groups);
                let mut v = vec![0i8; k * n];
                for o in 0..n {
                    for i in 0..cin {
                        for t in 0..ks * ks {
                            v[(o * cin + i) * ks * ks + t] = q_nk[o * k + t * cin + i];
                        }
                    }
                }
                v
            }
            _ => q_nk,
        };
        out.insert(format!("{}.weight", layer.name), Tensor { shape, data: Data::I8(q_oihw) });
        out.insert(format!("{}.weight_scale", layer.name), Tensor::f32(vec![n], scales));
        out.insert(format!("{}.bias", layer.name), Tensor::f32(vec![n], folded.bias));
    }
    out
}

/// Writes a quantised model file (atomically).
pub fn save(model: &Model, spec: &QuantSpec, path: &Path) -> Result<()> {
    let mut meta = model.metadata();
    meta.insert("quantization".into(), serde_json::to_string(spec).expect("serialises"));
    crate::weights::safetensors_io::write(path, &quantized_tensors(model), &meta)
}

/// Reads the tensors of a quantised file into float parameters with torchvision names: each
/// weight dequantised (`q * scale`), BatchNorm the identity (gamma 1, beta the folded bias,
/// mean 0, var `1 - eps`), so folding gives the dequantised weights back.
pub(crate) fn params_from_file(file: &TensorFile, plan: &Plan) -> Result<BTreeMap<String, Vec<f32>>> {
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
        let wname = format!("{}.weight", layer.name);
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
        let scales = floats(&format!("{}.weight_scale", layer.name), &[n])?;
        let bias = floats(&format!("{}.bias", layer.name), &[n])?;
        let per = q.len() / n;
        let w: Vec<f32> = q.iter().enumerate().map(|(i, &v)| v as f32 * scales[i / per]).collect();
        known.extend([wname.clone(), format!("{}.weight_scale", layer.name), format!("{}.bias", layer.name)]);
        params.insert(wname, w);
        match &layer.op {
            Op::Conv(c) => {
                params.insert(format!("{}.weight", c.bn), vec![1.0; n]);
                params.insert(format!("{}.bias", c.bn), bias);
                params.insert(format!("{}.running_mean", c.bn), vec![0.0; n]);
                params.insert(format!("{}.running_var", c.bn), vec![1.0 - eps; n]);
            }
            _ => {
                params.insert(format!("{}.bias", layer.name), bias);
            }
        }
    }
    if let Some(name) = file.tensors.keys().find(|k| !known.contains(k)) {
        return Err(Error::UnknownTensor { path: path.clone(), name: name.clone() });
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_ranges() {
        assert_eq!("minmax".parse::<Method>().unwrap(), Method::MinMax);
        assert_eq!("percentile:99.9".parse::<Method>().unwrap(), Method::Percentile { percent: 99.9 });
        assert_eq!("percentile".parse::<Method>().unwrap(), Method::Percentile { percent: 99.9 });
        assert!("percentile:20".parse::<Method>().is_err());
        assert!("magic".parse::<Method>().is_err());
        let mut s = Stats { min: f32::INFINITY, max: f32::NEG_INFINITY, samples: Vec::new() };
        let mut v: Vec<f32> = (0..10000).map(|i| (i as f32 / 10000.0) - 0.5).collect();
        v.push(50.0);
        s.add(&v);
        assert_eq!(s.range(Method::MinMax), (-0.5, 50.0));
        let (_, hi) = s.range(Method::Percentile { percent: 99.9 });
        assert!(hi < 1.0, "{hi}");
        // MSE picks the clip range with the least squared error on the samples: never worse
        // than min/max. (At 8 bits one far outlier costs more clipped than it saves.)
        let err = |s: &Stats, (lo, hi): (f32, f32)| -> f64 {
            let q = QParams::from_range(lo, hi);
            s.samples.iter().map(|&x| ((q.dequantize(q.quantize(x)) - x) as f64).powi(2)).sum()
        };
        let mse = s.range(Method::Mse);
        assert!(err(&s, mse) <= err(&s, (-0.5, 50.0)));
        // And with many moderate outliers.
        let mut t = Stats { min: f32::INFINITY, max: f32::NEG_INFINITY, samples: Vec::new() };
        let heavy: Vec<f32> = (0..4000).map(|i| if i % 400 == 0 { 8.0 } else { (i % 7) as f32 * 0.01 }).collect();
        t.add(&heavy);
        let clipped = t.range(Method::Mse);
        assert!(err(&t, clipped) <= err(&t, (t.min, t.max)));
    }
}
