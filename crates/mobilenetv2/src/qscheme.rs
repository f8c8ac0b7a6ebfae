//! The int8 quantisation scheme as plain data: what an int8 model file records and what the
//! int8 engine, the importers and the exporter all read. Calibration (which computes these
//! values by running the float network) lives in [`crate::quant`].
//!
//! - weights: BatchNorm folded, then s8 symmetric per output channel (`w = scale[o] * q`);
//! - activations: u8 with an affine map `real = scale * (q - zero)`; ReLU6 outputs keep zero
//!   point 0 and a range within [0, 6]; the linear bottleneck outputs are signed;
//! - accumulation in i32, requantisation in f32 fused into the kernels.

use mnv2_kernels::qgemm::QParams;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Quantisation of one activation tensor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActQuant {
    /// Real value of one quantisation step: `real = scale * (q - zero)`.
    pub scale: f32,
    /// The u8 value (0..=255) that stands for 0.0.
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
    Percentile {
        /// The percentile, in [50, 100].
        percent: f64,
    },
    /// The clip range (a fraction of min/max) with the least mean squared quantisation error.
    Mse,
    /// Not calibrated here: the ranges come from an imported int8 model (ONNX QDQ, TFLite).
    Imported,
}

/// Parses `minmax`, `mse`, `percentile` (99.9) or `percentile:P` with P in [50, 100], as
/// `mnv2 quantize --method` takes them.
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
    /// How the ranges were chosen.
    pub method: Method,
    /// Calibration images used.
    pub images: usize,
    /// Per block, in plan order.
    pub blocks: Vec<BlockQuant>,
    /// The pooled features (the classifier's input).
    pub pooled: ActQuant,
    /// The image's quantisation: the int8 stem then multiplies u8 image codes by the int8
    /// weights. Absent in files quantised before it was recorded; their stem runs in f32 on
    /// the float image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<ActQuant>,
}

/// Whether `Clip(0, 6)` before quantising with `q` changes nothing: `q` clamps at 0 (zero point
/// 0) and its largest value is at most 6 (within half a step: values between round to it).
pub fn relu6_implied(q: ActQuant) -> bool {
    q.zero == 0 && 255.0 * q.scale as f64 <= 6.0 + 0.5 * q.scale as f64
}
