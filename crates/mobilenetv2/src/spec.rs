//! The network as data: the paper's Table 2 plus the knobs it studies.
//!
//! A [`Spec`] is everything needed to describe one MobileNetV2: the (t, c, n, s) stage table,
//! the width multiplier, the input size, the number of classes, the ablation switches of the
//! paper's Figure 6, the padding convention of the framework the weights came from, and the
//! output stride for dense prediction heads. [`crate::plan::Plan::new`] expands it into layers;
//! nothing else in the project describes the network.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One row of Table 2: `n` inverted residual blocks with expansion `t`, `c` output channels,
/// the first with stride `s` and the others with stride 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Expansion factor: the hidden layer has `t` times the block's input channels.
    pub t: usize,
    /// Output channels before the width multiplier.
    pub c: usize,
    /// Number of blocks.
    pub n: usize,
    /// Stride of the first block (1 or 2).
    pub s: usize,
}

/// Table 2 of the paper (and torchvision's `inverted_residual_setting`).
#[rustfmt::skip]
pub const TABLE2: [Stage; 7] = [
    Stage { t: 1, c: 16,  n: 1, s: 1 },
    Stage { t: 6, c: 24,  n: 2, s: 2 },
    Stage { t: 6, c: 32,  n: 3, s: 2 },
    Stage { t: 6, c: 64,  n: 4, s: 2 },
    Stage { t: 6, c: 96,  n: 3, s: 1 },
    Stage { t: 6, c: 160, n: 3, s: 2 },
    Stage { t: 6, c: 320, n: 1, s: 1 },
];

/// Channels of the stem convolution before the width multiplier.
pub const STEM_CHANNELS: usize = 32;
/// Channels of the last 1x1 convolution before the width multiplier.
pub const LAST_CHANNELS: usize = 1280;

/// Activation after the linear projection of each block (Figure 6a of the paper).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BottleneckActivation {
    /// No activation: the paper's linear bottleneck.
    #[default]
    Linear,
    /// ReLU6 after the projection, the ablation the paper shows to be worse.
    Relu6,
}

/// Residual connections (Figure 6b of the paper).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Shortcut {
    /// A residual between the narrow ends of a block when stride is 1 and shapes match.
    #[default]
    Bottleneck,
    /// No residual connections at all.
    None,
}

/// How 3x3 convolutions are padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// PyTorch: `dilation` zeros on every side.
    #[default]
    Torch,
    /// TensorFlow/Keras 'SAME': the total padding split with the extra zero after,
    /// so stride-2 layers on even sizes pad 0 before and 1 after.
    Tf,
}

/// Which head sits on the backbone (see [`crate::plan::Head`] for its layers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HeadSpec {
    /// Global average pool, dropout and a fully connected layer to [`Spec::classes`] logits.
    #[default]
    Classifier,
    /// Mobile DeepLabv3 (the paper's section 6.3, Table 7's "MNet V2*"): on the last block's
    /// output (the "second last feature map", no last 1x1 conv) at [`Spec::output_stride`]
    /// 16 or 8, a 1x1 branch and an image-pooling branch of 256 channels, with `aspp` also
    /// three 3x3 atrous branches (rates [`HeadSpec::atrous_rates`]), concatenated, projected
    /// to 256, dropout, 1x1 logits with bias, bilinear upsampling to the input size.
    #[serde(rename = "deeplab")]
    DeepLab {
        /// Atrous Spatial Pyramid Pooling: the three 3x3 atrous convolutions.
        aspp: bool,
    },
    /// SSDLite (the paper's section 6.2), as the TF Object Detection API builds it, on block
    /// 14's expansion output and the last 1x1 conv: four extra layers and per feature map a box
    /// and a class predictor (see [`crate::plan::SsdHead`]). [`Spec::classes`] counts the
    /// logits per anchor, background included (81 for COCO, 2 for the person model).
    /// `separable: false` is the regular SSD head of Table 5 (3x3 convolutions).
    #[serde(rename = "ssdlite")]
    SsdLite {
        /// Depthwise-separable extra layers and predictors (SSDLite); regular 3x3 convs if false.
        separable: bool,
    },
}

impl HeadSpec {
    /// Whether this is the classification head.
    pub fn is_classifier(&self) -> bool {
        *self == HeadSpec::Classifier
    }

    /// TF DeepLab's multi-scale evaluation (`eval_scales = [0.5:0.25:1.75]`), used with
    /// left-right flips for Table 7's "MF" rows.
    pub const MULTI_SCALES: [f64; 6] = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75];

    /// TF DeepLab's `scale_dimension`: a side of `dim` pixels at `scale` is
    /// `int((dim - 1) * scale + 1)` (so 513 gives 257, 385, 513, 641, 769, 897).
    pub fn scale_dimension(dim: usize, scale: f64) -> usize {
        ((dim as f64 - 1.0) * scale + 1.0) as usize
    }

    /// The dilation rates of DeepLab's three 3x3 ASPP branches at an output stride: TF
    /// DeepLab's 6, 12, 18 at output stride 16, doubled at 8. Empty without ASPP.
    pub fn atrous_rates(&self, output_stride: usize) -> Vec<usize> {
        match *self {
            HeadSpec::DeepLab { aspp: true } => [6, 12, 18].iter().map(|r| r * 16 / output_stride).collect(),
            _ => Vec::new(),
        }
    }
}

/// Everything that determines one MobileNetV2 network.
///
/// [`Spec::new`] gives the paper's network at a width multiplier and a square resolution;
/// the other fields are public for ablations and imported weights (and are checked by
/// [`Spec::validate`], which [`Plan::new`](crate::Plan::new) calls). Note the two widths:
/// [`width`](Spec::width) is the *multiplier*, [`width_px`](Spec::width_px) the input's
/// width in pixels.
///
/// ```
/// use mobilenetv2::spec::{Shortcut, TABLE2};
/// use mobilenetv2::Spec;
///
/// let spec = Spec::new(0.35, 96);
/// assert_eq!((spec.height, spec.width_px, spec.classes), (96, 96, 1000));
/// assert_eq!(spec.stem_channels(), 16); // 32 * 0.35 rounded to a multiple of 8
/// assert_eq!(spec.last_channels(), 1280); // not scaled below width 1
/// assert_eq!(spec.num_blocks(), 17);
///
/// // An ablation of Figure 6b: no residual connections, 10 classes, a 160x128 input.
/// let (height, width_px) = Spec::parse_resolution("160x128")?;
/// let ablated = Spec { shortcut: Shortcut::None, classes: 10, height, width_px, ..Spec::new(1.0, 224) };
/// ablated.validate()?;
/// assert_eq!(ablated.stages, TABLE2.to_vec());
/// assert!(Spec::new(0.0, 224).validate().is_err());
/// # Ok::<(), mobilenetv2::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Width multiplier (the paper explores 0.35 to 1.4).
    pub width: f64,
    /// Input height in pixels (>= 32).
    pub height: usize,
    /// Input width in pixels (>= 32).
    pub width_px: usize,
    /// Number of classifier outputs (classes per pixel for DeepLab; logits per anchor,
    /// background included, for SSDLite).
    pub classes: usize,
    /// The stage table; Table 2 unless changed.
    pub stages: Vec<Stage>,
    /// Replaces t for every stage whose t is not 1 (the paper: 5 to 10 behave alike).
    pub expansion: Option<usize>,
    /// Activation after each block's projection (linear in the paper).
    pub bottleneck: BottleneckActivation,
    /// Whether blocks have residual connections.
    pub shortcut: Shortcut,
    /// Padding convention of the framework the weights come from.
    pub padding: Padding,
    /// 32 for classification; 16 or 8 turn later strides into dilation (DeepLabv3).
    pub output_stride: usize,
    /// Dropout before the classifier (training only).
    pub dropout: f32,
    /// BatchNorm epsilon: 1e-5 for torchvision weights, 1e-3 for TF/Keras.
    pub bn_eps: f32,
    /// The head on the backbone. Not written for a classifier, so files keep the bytes they
    /// had before heads existed (and such files load as classifiers).
    #[serde(default, skip_serializing_if = "HeadSpec::is_classifier")]
    pub head: HeadSpec,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            width: 1.0,
            height: 224,
            width_px: 224,
            classes: 1000,
            stages: TABLE2.to_vec(),
            expansion: None,
            bottleneck: BottleneckActivation::Linear,
            shortcut: Shortcut::Bottleneck,
            padding: Padding::Torch,
            output_stride: 32,
            dropout: 0.2,
            bn_eps: 1e-5,
            head: HeadSpec::Classifier,
        }
    }
}

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, at least 8, and never
/// more than 10% below `v`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = ((v + d / 2.0) as usize / divisor * divisor).max(divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

impl Spec {
    /// The standard network (Table 2, 1000 classes, PyTorch padding) at a width multiplier
    /// and a square resolution in pixels.
    pub fn new(width: f64, resolution: usize) -> Self {
        Spec { width, height: resolution, width_px: resolution, ..Spec::default() }
    }

    /// Checks the values that the plan cannot work with: [`Error::InvalidSpec`] naming the
    /// first one (width in (0, 10], input 32 to 8192 pixels per side, at least one class, a
    /// valid stage table, output stride 8, 16 or 32, dropout in [0, 1), positive epsilon).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidSpec(msg));
        if !(self.width.is_finite() && self.width > 0.0 && self.width <= 10.0) {
            return bad(format!("width multiplier {} must be in (0, 10]", self.width));
        }
        if self.height < 32 || self.width_px < 32 {
            return bad(format!("input {}x{} is smaller than the minimum 32x32", self.height, self.width_px));
        }
        if self.height > 8192 || self.width_px > 8192 {
            return bad(format!("input {}x{} is larger than the supported 8192x8192", self.height, self.width_px));
        }
        if self.classes == 0 || self.classes > crate::limits::MAX_CLASSES {
            return bad(format!("number of classes {} must be in 1..={}", self.classes, crate::limits::MAX_CLASSES));
        }
        if self.stages.is_empty() {
            return bad("the stage table is empty".into());
        }
        for (i, s) in self.stages.iter().enumerate() {
            if s.t == 0 || s.c == 0 || s.n == 0 || !(1..=2).contains(&s.s) {
                return bad(format!(
                    "stage {i} (t={}, c={}, n={}, s={}) needs t, c, n >= 1 and s in 1..=2",
                    s.t, s.c, s.n, s.s
                ));
            }
        }
        if let Some(t) = self.expansion {
            if !(1..=32).contains(&t) {
                return bad(format!("expansion rate {t} must be in 1..=32"));
            }
        }
        if ![8, 16, 32].contains(&self.output_stride) {
            return bad(format!("output stride {} must be 8, 16 or 32", self.output_stride));
        }
        if let HeadSpec::DeepLab { aspp } = self.head {
            if ![8, 16].contains(&self.output_stride) {
                return bad(format!(
                    "the DeepLab head needs output stride 16 or 8, not {} (aspp: {aspp})",
                    self.output_stride
                ));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if !(self.bn_eps > 0.0 && self.bn_eps.is_finite()) {
            return bad(format!("BatchNorm epsilon {} must be positive", self.bn_eps));
        }
        Ok(())
    }

    /// Channels of the stem convolution after the width multiplier.
    pub fn stem_channels(&self) -> usize {
        make_divisible(STEM_CHANNELS as f64 * self.width, 8)
    }

    /// Channels of the last 1x1 convolution: 1280 for width <= 1, scaled above
    /// (1792 at 1.4), as torchvision, Keras and slim's released checkpoints do.
    pub fn last_channels(&self) -> usize {
        make_divisible(LAST_CHANNELS as f64 * self.width.max(1.0), 8)
    }

    /// Output channels of a stage after the width multiplier.
    pub fn stage_channels(&self, stage: &Stage) -> usize {
        make_divisible(stage.c as f64 * self.width, 8)
    }

    /// Expansion rate used by a stage, after the override.
    pub fn stage_expansion(&self, stage: &Stage) -> usize {
        match self.expansion {
            Some(t) if stage.t != 1 => t,
            _ => stage.t,
        }
    }

    /// Total number of inverted residual blocks (17 for Table 2).
    pub fn num_blocks(&self) -> usize {
        self.stages.iter().map(|s| s.n).sum()
    }

    /// Parses `"N"` or `"HxW"` (pixels) into (height, width); [`Error::InvalidSpec`] otherwise.
    pub fn parse_resolution(s: &str) -> Result<(usize, usize)> {
        let bad = || Error::InvalidSpec(format!("resolution `{s}` is not N or HxW"));
        let parts: Vec<&str> = s.split(['x', 'X']).collect();
        match parts.as_slice() {
            [n] => {
                let n = n.trim().parse().map_err(|_| bad())?;
                Ok((n, n))
            }
            [h, w] => Ok((h.trim().parse().map_err(|_| bad())?, w.trim().parse().map_err(|_| bad())?)),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_matches_torchvision() {
        // Values computed with torchvision.models._utils._make_divisible.
        assert_eq!(make_divisible(32.0 * 0.35, 8), 16);
        assert_eq!(make_divisible(16.0 * 0.35, 8), 8);
        assert_eq!(make_divisible(24.0 * 0.35, 8), 8);
        assert_eq!(make_divisible(96.0 * 0.35, 8), 32);
        assert_eq!(make_divisible(160.0 * 0.35, 8), 56);
        assert_eq!(make_divisible(320.0 * 0.35, 8), 112);
        assert_eq!(make_divisible(24.0 * 0.75, 8), 24);
        assert_eq!(make_divisible(1280.0 * 1.4, 8), 1792);
        assert_eq!(make_divisible(1280.0 * 1.3, 8), 1664);
        assert_eq!(make_divisible(32.0 * 1.4, 8), 48);
        // The 10% rule: 0.9 * 20 = 18 > 16, so 16 is bumped to 24.
        assert_eq!(make_divisible(20.0, 8), 24);
    }

    #[test]
    fn last_channels_rule() {
        assert_eq!(Spec::new(0.35, 224).last_channels(), 1280);
        assert_eq!(Spec::new(1.0, 224).last_channels(), 1280);
        assert_eq!(Spec::new(1.4, 224).last_channels(), 1792);
    }

    #[test]
    fn validation_rejects_bad_values() {
        let mut s = Spec::new(1.0, 31);
        assert!(s.validate().is_err());
        s = Spec::new(1.0, 224);
        s.output_stride = 4;
        assert!(s.validate().is_err());
        s = Spec::new(f64::NAN, 224);
        assert!(s.validate().is_err());
        assert!(Spec::new(0.35, 97).validate().is_ok());
        // A class count from a flag or a file's metadata is bounded before any classifier is
        // allocated: 2^40 classes would be a 5 TB weight matrix.
        for (classes, ok) in [(0, false), (1, true), (100_000, true), (100_001, false), (1 << 40, false)] {
            let s = Spec { classes, ..Spec::new(1.0, 224) };
            assert_eq!(s.validate().is_ok(), ok, "{classes} classes");
        }
    }

    #[test]
    fn resolution_parsing() {
        assert_eq!(Spec::parse_resolution("224").unwrap(), (224, 224));
        assert_eq!(Spec::parse_resolution("97x113").unwrap(), (97, 113));
        assert!(Spec::parse_resolution("a").is_err());
        assert!(Spec::parse_resolution("1x2x3").is_err());
    }
}
