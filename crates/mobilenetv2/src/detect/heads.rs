//! SSDLite and SSD heads on MobileNetV2 as layer lists with exact costs: the arithmetic behind
//! the paper's Tables 5 and 6, and the layers a detector adds to the backbone.
//!
//! The head reads two backbone taps: block 14's expansion output (slim's
//! `layer_15/expansion_output`, output stride 16) and the last 1x1 conv (`layer_19`, output
//! stride 32). Four extra layers follow the second tap; each is a 1x1 conv to `d/2`, then a
//! 3x3 stride-2 layer to `d` (SSDLite: a depthwise 3x3 then a 1x1 to `d`; SSD: a regular 3x3
//! conv), with `d` = 512, 256, 256, 128 times the width multiplier (at least 16), BatchNorm
//! and ReLU6 after every conv. Each of the six feature maps then has a box predictor (4 numbers
//! per anchor) and a class predictor (one logit per class and anchor, background included):
//! SSDLite: a 3x3 depthwise + BatchNorm + ReLU6 and a 1x1 conv with bias; SSD: a 3x3 conv with
//! bias. Layers are named as the TF Object Detection API names their scopes, so a frozen graph's
//! weights map onto them by name.
//!
//! Costs ([`HeadCost`]) keep apart conv weights, BatchNorm gamma/beta, BatchNorm moving
//! statistics and biases, so every counting convention can be stated: a layer's multiply-adds
//! are `h_out w_out k^2 c_in c_out / groups` (BatchNorm, activations and biases not counted).
//!
//! Conventions that reproduce the paper (checked in tests/ssdlite_heads.rs):
//! - Table 6 "MNet V2 + SSDLite, 4.3M params, 0.8B MAdds": 320x320, 81 logits (80 classes +
//!   background), the backbone up to `layer_19` plus this head; params = conv weights + biases
//!   (+ BatchNorm gamma/beta or not: 4.29M without, 4.34M with, both 4.3M).
//! - Table 5 "SSD 14.8M / 1.25B" and "SSDLite 2.1M": the head alone at 320 with 81 logits,
//!   weights + biases. Table 5's "SSDLite 0.35B" matches no multiply-add count of this head
//!   (0.18B); twice it (FLOPs) is 0.36B.
//! - The real model (`ssdlite_mobilenet_v2_person.pb`, 2 logits, 300x300): 3,045,126 trainable
//!   parameters = conv weights + BatchNorm gamma/beta + biases of backbone and head.

use serde::Serialize;

/// Which head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Depthwise-separable extra layers and predictors (the paper's).
    SsdLite,
    /// Regular 3x3 convolutions (Table 5's comparison).
    Ssd,
}

/// A feature map: height, width, channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Map {
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
}

/// One conv of a head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeadLayer {
    /// TF Object Detection API scope of its weights.
    pub name: String,
    /// Kernel size (square): 1 or 3.
    pub kernel: usize,
    /// Stride along both axes.
    pub stride: usize,
    /// 1 for a regular conv, `c_in` for a depthwise one.
    pub groups: usize,
    /// The map it reads.
    pub input: Map,
    /// The map it makes.
    pub output: Map,
    /// BatchNorm + ReLU6 follow (otherwise a bias and no activation: a predictor's last conv).
    pub bn: bool,
    /// Index of the feature map a predictor belongs to (extra layers: the map they make).
    pub map: usize,
}

/// Costs, kept apart by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeadCost {
    /// Conv weights.
    pub weights: u64,
    /// BatchNorm gamma and beta.
    pub bn: u64,
    /// BatchNorm moving mean and variance (not trained).
    pub bn_stats: u64,
    /// Biases (the predictors' last convs).
    pub biases: u64,
    /// Multiply-adds for one image.
    pub madds: u64,
}

impl HeadCost {
    /// Trainable parameters: weights, biases and BatchNorm gamma/beta (TF's and torchvision's count).
    pub fn params(&self) -> u64 {
        self.weights + self.biases + self.bn
    }

    /// Weights and biases only.
    pub fn params_no_bn(&self) -> u64 {
        self.weights + self.biases
    }

    fn add(self, o: HeadCost) -> HeadCost {
        HeadCost {
            weights: self.weights + o.weights,
            bn: self.bn + o.bn,
            bn_stats: self.bn_stats + o.bn_stats,
            biases: self.biases + o.biases,
            madds: self.madds + o.madds,
        }
    }
}

impl HeadLayer {
    /// The layer's parameters and multiply-adds.
    pub fn cost(&self) -> HeadCost {
        let per_out = (self.input.c / self.groups * self.kernel * self.kernel) as u64;
        let c = self.output.c as u64;
        HeadCost {
            weights: c * per_out,
            bn: if self.bn { 2 * c } else { 0 },
            bn_stats: if self.bn { 2 * c } else { 0 },
            biases: if self.bn { 0 } else { c },
            madds: (self.output.h * self.output.w) as u64 * c * per_out,
        }
    }
}

/// A head's configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeadSpec {
    /// SSDLite or SSD.
    pub kind: HeadKind,
    /// Logits per anchor (classes + background).
    pub logits: usize,
    /// Extra layers' depths before the multiplier.
    pub extra_depths: Vec<usize>,
    /// Depth multiplier of the extra layers (the backbone's width).
    pub width: f64,
    /// No extra layer gets fewer channels than this.
    pub min_depth: usize,
    /// Anchors per location of each of the six maps.
    pub anchors: Vec<usize>,
}

impl HeadSpec {
    /// The TF Object Detection API's SSDLite (or SSD) on MobileNetV2: extra depths 512, 256,
    /// 256, 128, min depth 16, 3 anchors on the first map and 6 on the others.
    pub fn new(kind: HeadKind, logits: usize, width: f64) -> HeadSpec {
        HeadSpec {
            kind,
            logits,
            extra_depths: vec![512, 256, 256, 128],
            width,
            min_depth: 16,
            anchors: vec![3, 6, 6, 6, 6, 6],
        }
    }

    fn depth(&self, d: usize) -> usize {
        ((d as f64 * self.width) as usize).max(self.min_depth)
    }

    /// The head's layers for taps `t16` (block 14's expansion) and `t32` (the last conv), in
    /// the order the graph computes them: extra layers, then each map's box and class predictors.
    pub fn layers(&self, t16: Map, t32: Map) -> Vec<HeadLayer> {
        let same = |x: usize, s: usize| x.div_ceil(s);
        let mut out = Vec::new();
        let mut maps = vec![t16, t32];
        let mut prev = t32;
        for (i, &d) in self.extra_depths.iter().enumerate() {
            let idx = i + 2;
            let (half, full) = (self.depth(d / 2), self.depth(d));
            let m1 = Map { c: half, ..prev };
            out.push(layer(format!("layer_19_1_Conv2d_{idx}_1x1_{half}"), 1, 1, 1, prev, m1, true, idx));
            let down = Map { h: same(prev.h, 2), w: same(prev.w, 2), c: half };
            let name = format!("layer_19_2_Conv2d_{idx}_3x3_s2_{full}");
            let m2 = Map { c: full, ..down };
            match self.kind {
                HeadKind::SsdLite => {
                    out.push(layer(format!("{name}_depthwise"), 3, 2, half, m1, down, true, idx));
                    out.push(layer(name, 1, 1, 1, down, m2, true, idx));
                }
                HeadKind::Ssd => out.push(layer(name, 3, 2, 1, m1, m2, true, idx)),
            }
            maps.push(m2);
            prev = m2;
        }
        for (k, (&m, &a)) in maps.iter().zip(&self.anchors).enumerate() {
            for (what, n) in [("BoxEncodingPredictor", 4 * a), ("ClassPredictor", self.logits * a)] {
                let name = format!("BoxPredictor_{k}/{what}");
                let o = Map { c: n, ..m };
                match self.kind {
                    HeadKind::SsdLite => {
                        out.push(layer(format!("{name}_depthwise"), 3, 1, m.c, m, m, true, k));
                        out.push(layer(name, 1, 1, 1, m, o, false, k));
                    }
                    HeadKind::Ssd => out.push(layer(name, 3, 1, 1, m, o, false, k)),
                }
            }
        }
        out
    }

    /// Total cost of the head.
    pub fn cost(&self, t16: Map, t32: Map) -> HeadCost {
        self.layers(t16, t32).iter().map(HeadLayer::cost).fold(HeadCost::default(), HeadCost::add)
    }
}

#[allow(clippy::too_many_arguments)]
fn layer(
    name: String,
    kernel: usize,
    stride: usize,
    groups: usize,
    input: Map,
    output: Map,
    bn: bool,
    map: usize,
) -> HeadLayer {
    HeadLayer { name, kernel, stride, groups, input, output, bn, map }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T16: Map = Map { h: 19, w: 19, c: 576 };
    const T32: Map = Map { h: 10, w: 10, c: 1280 };

    #[test]
    fn real_model_head_shapes() {
        // ssdlite-real-model.md §2.7/§2.8: extra layers 656,960 trainable, predictors 164,294.
        let h = HeadSpec::new(HeadKind::SsdLite, 2, 1.0);
        let layers = h.layers(T16, T32);
        assert_eq!(layers.len(), 12 + 24);
        let extra = layers
            .iter()
            .filter(|l| l.name.starts_with("layer_19"))
            .map(HeadLayer::cost)
            .fold(HeadCost::default(), HeadCost::add);
        let pred = layers
            .iter()
            .filter(|l| l.name.starts_with("BoxPredictor"))
            .map(HeadLayer::cost)
            .fold(HeadCost::default(), HeadCost::add);
        assert_eq!(extra.params(), 656_960);
        assert_eq!(pred.params(), 164_294);
        assert_eq!(pred.biases, 198);
        let last = layers.iter().find(|l| l.name == "layer_19_2_Conv2d_5_3x3_s2_128").unwrap();
        assert_eq!(last.output, Map { h: 1, w: 1, c: 128 });
        let c0 = layers.iter().find(|l| l.name == "BoxPredictor_0/ClassPredictor").unwrap();
        assert_eq!(c0.output, Map { h: 19, w: 19, c: 6 });
    }

    #[test]
    fn width_multiplier_keeps_min_depth() {
        let h = HeadSpec::new(HeadKind::SsdLite, 2, 0.1);
        let names: Vec<String> =
            h.layers(T16, T32).into_iter().map(|l| l.name).filter(|n| n.starts_with("layer_19_1")).collect();
        assert_eq!(
            names,
            [
                "layer_19_1_Conv2d_2_1x1_25",
                "layer_19_1_Conv2d_3_1x1_16",
                "layer_19_1_Conv2d_4_1x1_16",
                "layer_19_1_Conv2d_5_1x1_16"
            ]
        );
    }
}
