//! Exact counts read off a [`Plan`]: parameters, multiply-adds and activation memory.
//!
//! Conventions (they reproduce torchvision and the TF-slim README to the unit):
//! - parameters count conv and linear weights, the linear bias and BatchNorm's gamma and beta
//!   (torchvision's `num_params`); `params_no_bn` leaves BatchNorm out (the slim README);
//! - multiply-adds count convolutions and the classifier only, no BatchNorm, activation,
//!   pooling, residual add, concatenation or bilinear upsampling (the paper and slim:
//!   300,774,272 at 224/1.0 with 1000 classes); a convolution's own bias (DeepLab's logits, SSD's predictors)
//!   is a parameter but no multiply-add;
//! - memory follows the paper's Table 3: the bottleneck tensors that must be materialised.

use serde::Serialize;

use crate::error::Result;
use crate::plan::{Layer, Op, Plan, Shape};
use crate::spec::{HeadSpec, Spec};

/// Cost of one layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LayerCost {
    /// Weights and biases of the layer (BatchNorm excluded).
    pub weights: u64,
    /// BatchNorm gamma and beta after the layer.
    pub bn: u64,
    /// Multiply-adds for one image (convolutions and the classifier; zero for pooling and
    /// dropout).
    pub madds: u64,
}

impl LayerCost {
    /// Parameters as torchvision counts them.
    pub fn params(&self) -> u64 {
        self.weights + self.bn
    }
}

/// The cost of one layer of a plan, under the conventions of the module documentation.
pub fn layer_cost(layer: &Layer) -> LayerCost {
    let (i, o) = (layer.input, layer.output);
    match &layer.op {
        Op::Conv(c) => {
            let per_out = (i.c / c.groups * c.kernel * c.kernel) as u64;
            let madds = (o.h * o.w * o.c) as u64 * per_out;
            match c.bn {
                Some(_) => LayerCost { weights: o.c as u64 * per_out, bn: 2 * o.c as u64, madds },
                None => LayerCost { weights: o.c as u64 * (per_out + 1), bn: 0, madds },
            }
        }
        Op::Linear => LayerCost { weights: (i.c * o.c + o.c) as u64, bn: 0, madds: (i.c * o.c) as u64 },
        Op::GlobalAvgPool | Op::Dropout { .. } | Op::Concat { .. } | Op::Upsample { .. } => LayerCost::default(),
    }
}

/// Totals over a plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Accounting {
    /// torchvision's parameter count (BatchNorm gamma and beta included).
    pub params: u64,
    /// Parameters without BatchNorm (the slim README's column).
    pub params_no_bn: u64,
    /// Multiply-adds of one image.
    pub madds: u64,
    /// One entry per plan layer.
    pub layers: Vec<LayerCost>,
}

/// Parameters and multiply-adds of a whole plan, per layer and in total.
///
/// ```
/// use mobilenetv2::accounting::{account, memory};
/// use mobilenetv2::{Plan, Spec};
///
/// let plan = Plan::new(&Spec::new(1.0, 224))?;
/// let a = account(&plan);
/// assert_eq!(a.params, 3_504_872); // torchvision's sum(p.numel() for p in parameters())
/// assert_eq!(a.madds, 300_774_272); // the paper's "300M"
/// // The stem: 32 filters of 3x3x3 at 112x112, plus BatchNorm's gamma and beta.
/// assert_eq!(a.layers[0].weights, 32 * 27);
/// assert_eq!(a.layers[0].bn, 2 * 32);
/// assert_eq!(a.layers[0].madds, 112 * 112 * 32 * 27);
/// assert_eq!(a.layers.iter().map(|l| l.madds).sum::<u64>(), a.madds);
/// // Table 3 of the paper: at most 400K bytes of 16-bit activations.
/// assert_eq!(memory(&plan).table3_max_bytes_f16, 401_408);
/// # Ok::<(), mobilenetv2::Error>(())
/// ```
pub fn account(plan: &Plan) -> Accounting {
    let layers: Vec<LayerCost> = plan.layers.iter().map(layer_cost).collect();
    Accounting {
        params: layers.iter().map(|l| l.params()).sum(),
        params_no_bn: layers.iter().map(|l| l.weights).sum(),
        madds: layers.iter().map(|l| l.madds).sum(),
        layers,
    }
}

/// One input size of a multi-scale evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScaleCost {
    /// The scale factor of the plan's input size.
    pub scale: f64,
    /// Input height at this scale, pixels.
    pub height: usize,
    /// Input width at this scale, pixels.
    pub width: usize,
    /// Multiply-adds of one pass at this size.
    pub madds: u64,
}

/// Multiply-adds of TF DeepLab's multi-scale + left-right-flip inference (Table 7's "MF"):
/// one pass per scale of [`HeadSpec::MULTI_SCALES`] at TF's `scale_dimension` size of the
/// plan's input, each twice (the image and its mirror). The bilinear resizes and the softmax
/// averaging are not counted (the conventions above).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MultiScale {
    /// One entry per scale.
    pub scales: Vec<ScaleCost>,
    /// Passes per scale: 2 (flips).
    pub passes_per_scale: u64,
    /// Total multiply-adds of the whole evaluation of one image.
    pub madds: u64,
}

/// The multi-scale evaluation cost of a segmentation `spec` (see [`MultiScale`]); fails if a
/// scaled size makes no valid plan.
pub fn multi_scale(spec: &Spec) -> Result<MultiScale> {
    let scales = HeadSpec::MULTI_SCALES
        .iter()
        .map(|&scale| {
            let (height, width) =
                (HeadSpec::scale_dimension(spec.height, scale), HeadSpec::scale_dimension(spec.width_px, scale));
            let plan = Plan::new(&Spec { height, width_px: width, ..spec.clone() })?;
            Ok(ScaleCost { scale, height, width, madds: account(&plan).madds })
        })
        .collect::<Result<Vec<_>>>()?;
    let madds = scales.iter().map(|s| 2 * s.madds).sum();
    Ok(MultiScale { scales, passes_per_scale: 2, madds })
}

/// One row of the paper's Table 3: the widest bottleneck tensor at a spatial size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryRow {
    /// Height of the tensors of this row.
    pub h: usize,
    /// Width of the tensors of this row.
    pub w: usize,
    /// Channels of the widest bottleneck tensor at this size.
    pub channels: usize,
    /// Bytes at 16-bit activations, as the paper assumes.
    pub bytes_f16: u64,
}

/// Activation memory of one image, analytically.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Memory {
    /// Table 3: per spatial size, the widest bottleneck tensor that must be materialised when
    /// every inverted residual block runs as one operation whose expanded tensor is never
    /// whole. The stem's output is fed to the first block directly (the paper's caption:
    /// "for the first layer ... we can employ the trick described in Section 5") and the last
    /// 1x1 convolution is pooled as it is produced, so the 1x1 row is the pooled vector.
    pub table3: Vec<MemoryRow>,
    /// Largest entry of `table3` (401,408 bytes = the paper's "400K" at 224/1.0).
    pub table3_max_bytes_f16: u64,
    /// Eq. (2) of the paper with each block as one operation: the largest input + output of a
    /// block: the block's torchvision `features` index.
    pub eq2_block: usize,
    /// That block's input plus output, in values (not bytes).
    pub eq2_values: u64,
    /// Largest single tensor when every layer's output is materialised (naive engines).
    pub largest_tensor_values: u64,
    /// Largest input + output of one layer when every layer runs on its own.
    pub layerwise_peak_values: u64,
}

/// Activation memory of one image for `plan` (see [`Memory`] for the three measures).
pub fn memory(plan: &Plan) -> Memory {
    let mut rows: Vec<MemoryRow> = Vec::new();
    let mut add = |s: Shape| {
        let bytes = 2 * s.len() as u64;
        match rows.iter_mut().find(|r| r.h == s.h && r.w == s.w) {
            Some(r) if r.channels >= s.c => {}
            Some(r) => {
                r.channels = s.c;
                r.bytes_f16 = bytes;
            }
            None => rows.push(MemoryRow { h: s.h, w: s.w, channels: s.c, bytes_f16: bytes }),
        }
    };
    for b in &plan.blocks {
        add(b.output);
    }
    let last = plan.layers.iter().rev().find(|l| matches!(l.op, Op::GlobalAvgPool));
    if let Some(pool) = last {
        add(pool.output);
    }
    let (eq2_block, eq2_values) = plan
        .blocks
        .iter()
        .map(|b| (b.index, (b.input.len() + b.output.len()) as u64))
        .fold((0, 0), |acc, x| if x.1 > acc.1 { x } else { acc });
    let largest = plan.layers.iter().map(|l| l.output.len() as u64).max().unwrap_or(0);
    let layerwise = plan.layers.iter().map(|l| (l.input.len() + l.output.len()) as u64).max().unwrap_or(0);
    Memory {
        table3_max_bytes_f16: rows.iter().map(|r| r.bytes_f16).max().unwrap_or(0),
        table3: rows,
        eq2_block,
        eq2_values,
        largest_tensor_values: largest,
        layerwise_peak_values: layerwise,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_counts() {
        let a = account(&Plan::new(&Spec::default()).unwrap());
        assert_eq!(a.params, 3_504_872);
        assert_eq!(a.madds, 300_774_272);
        let a14 = account(&Plan::new(&Spec::new(1.4, 224)).unwrap());
        assert_eq!(a14.params, 6_108_776);
    }

    #[test]
    fn table3_is_400k_at_224() {
        let m = memory(&Plan::new(&Spec::default()).unwrap());
        assert_eq!(m.table3_max_bytes_f16, 401_408);
        assert_eq!(m.table3[0], MemoryRow { h: 112, w: 112, channels: 16, bytes_f16: 401_408 });
        assert_eq!(m.table3.last().unwrap().channels, 1280);
        assert_eq!(m.table3.last().unwrap().bytes_f16, 2560);
    }
}
