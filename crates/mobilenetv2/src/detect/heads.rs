//! Costs of the SSDLite and SSD heads ([`crate::plan::SsdHead`]), read off the plan through
//! [`crate::accounting`]: the arithmetic behind the paper's Tables 5 and 6.
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

use crate::accounting::layer_cost;
use crate::error::Result;
use crate::plan::{Layer, Op, Plan, Role};
use crate::spec::{HeadSpec, Padding, Spec};

/// Which head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Depthwise-separable extra layers and predictors (the paper's).
    SsdLite,
    /// Regular 3x3 convolutions (Table 5's comparison).
    Ssd,
}

/// The spec of an SSD detector as the TF Object Detection API builds it: TF 'SAME' padding,
/// BatchNorm epsilon 1e-3, `logits` per anchor (background included), square `resolution`.
pub fn spec(kind: HeadKind, logits: usize, width: f64, resolution: usize) -> Spec {
    Spec {
        padding: Padding::Tf,
        bn_eps: 1e-3,
        classes: logits,
        head: HeadSpec::SsdLite { separable: kind == HeadKind::SsdLite },
        ..Spec::new(width, resolution)
    }
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

    /// The cost of one plan layer, from [`crate::accounting::layer_cost`].
    pub fn of_layer(layer: &Layer) -> HeadCost {
        let c = layer_cost(layer);
        let biases = match &layer.op {
            Op::Conv(conv) if conv.bn.is_none() => layer.output.c as u64,
            Op::Linear => layer.output.c as u64,
            _ => 0,
        };
        HeadCost { weights: c.weights - biases, bn: c.bn, bn_stats: c.bn, biases, madds: c.madds }
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

/// A detector's costs split as the paper's tables need them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DetectorCost {
    /// Stem, blocks and the last conv (`layer_19`).
    pub backbone: HeadCost,
    /// The extra layers (`layer_19_*`).
    pub extra: HeadCost,
    /// The box and class predictors.
    pub predictors: HeadCost,
}

impl DetectorCost {
    /// Of a plan with an SSD head.
    pub fn of(plan: &Plan) -> Result<DetectorCost> {
        plan.ssd("SSD head accounting")?;
        let sum = |f: &dyn Fn(Role) -> bool| {
            plan.layers.iter().filter(|l| f(l.role)).map(HeadCost::of_layer).fold(HeadCost::default(), HeadCost::add)
        };
        Ok(DetectorCost {
            backbone: sum(&|r| !matches!(r, Role::Extra | Role::Predictor)),
            extra: sum(&|r| r == Role::Extra),
            predictors: sum(&|r| r == Role::Predictor),
        })
    }

    /// The head: extra layers and predictors.
    pub fn head(&self) -> HeadCost {
        self.extra.add(self.predictors)
    }

    /// Backbone and head.
    pub fn total(&self) -> HeadCost {
        self.backbone.add(self.head())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Shape;

    #[test]
    fn real_model_head_shapes() {
        // ssdlite-real-model.md §2.7/§2.8: extra layers 656,960 trainable, predictors 164,294.
        let plan = Plan::new(&spec(HeadKind::SsdLite, 2, 1.0, 300)).unwrap();
        let ssd = plan.ssd("test").unwrap();
        assert_eq!(ssd.extra.len(), 12);
        let n = plan.layers.iter().filter(|l| l.role == Role::Predictor).count();
        assert_eq!(n, 24);
        let cost = DetectorCost::of(&plan).unwrap();
        assert_eq!(cost.extra.params(), 656_960);
        assert_eq!(cost.predictors.params(), 164_294);
        assert_eq!(cost.predictors.biases, 198);
        let last = plan.layer_named("head.layer_19_2_Conv2d_5_3x3_s2_128.0").unwrap();
        assert_eq!(plan.layers[last].output, Shape::new(1, 1, 128));
        let c0 = plan.layer_named("head.BoxPredictor_0.ClassPredictor").unwrap();
        assert_eq!(plan.layers[c0].output, Shape::new(19, 19, 6));
        assert_eq!(ssd.classes[0], c0);
    }

    #[test]
    fn width_multiplier_keeps_min_depth() {
        let plan = Plan::new(&spec(HeadKind::SsdLite, 2, 0.1, 300)).unwrap();
        let names: Vec<&str> =
            plan.layers.iter().map(|l| l.name.as_str()).filter(|n| n.starts_with("head.layer_19_1")).collect();
        assert_eq!(
            names,
            [
                "head.layer_19_1_Conv2d_2_1x1_25.0",
                "head.layer_19_1_Conv2d_3_1x1_16.0",
                "head.layer_19_1_Conv2d_4_1x1_16.0",
                "head.layer_19_1_Conv2d_5_1x1_16.0"
            ]
        );
    }
}
