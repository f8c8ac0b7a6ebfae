//! BatchNorm folded into the preceding convolution, weights relaid out for NHWC kernels.
//!
//! For `y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta`, the folded convolution has
//! weights `w * s` and bias `beta - mean * s` with `s = gamma / sqrt(var + eps)`. The fold is
//! computed in f64 and rounded once.

use crate::model::Model;
use crate::plan::{Layer, Op};

/// A convolution with BatchNorm folded in: weights `[kh][kw][cin / groups][cout]` (HWIO).
#[derive(Clone, Debug, PartialEq)]
pub struct FoldedConv {
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Folds the BatchNorm of a convolution layer. Panics if `layer` is not a convolution of
/// `model`'s plan (a bug, not an input error).
pub fn fold_conv(model: &Model, layer: &Layer) -> FoldedConv {
    let c = match &layer.op {
        Op::Conv(c) => c,
        _ => panic!("fold_conv on {}", layer.name),
    };
    let eps = model.spec().bn_eps as f64;
    let w = model.param(&format!("{}.weight", layer.name));
    let gamma = model.param(&format!("{}.weight", c.bn));
    let beta = model.param(&format!("{}.bias", c.bn));
    let mean = model.param(&format!("{}.running_mean", c.bn));
    let var = model.param(&format!("{}.running_var", c.bn));
    let (cout, cin_g, k) = (layer.output.c, layer.input.c / c.groups, c.kernel);
    let scale: Vec<f64> = (0..cout).map(|o| gamma[o] as f64 / (var[o] as f64 + eps).sqrt()).collect();
    let mut weights = vec![0f32; k * k * cin_g * cout];
    for o in 0..cout {
        for i in 0..cin_g {
            for ky in 0..k {
                for kx in 0..k {
                    let v = w[((o * cin_g + i) * k + ky) * k + kx] as f64 * scale[o];
                    weights[((ky * k + kx) * cin_g + i) * cout + o] = v as f32;
                }
            }
        }
    }
    let bias = (0..cout).map(|o| (beta[o] as f64 - mean[o] as f64 * scale[o]) as f32).collect();
    FoldedConv { weights, bias }
}

/// The classifier as `[in][out]` weights and a bias.
pub fn linear(model: &Model, layer: &Layer) -> FoldedConv {
    let w = model.param(&format!("{}.weight", layer.name));
    let (n_in, n_out) = (layer.input.c, layer.output.c);
    let mut weights = vec![0f32; n_in * n_out];
    for o in 0..n_out {
        for i in 0..n_in {
            weights[i * n_out + o] = w[o * n_in + i];
        }
    }
    FoldedConv { weights, bias: model.param(&format!("{}.bias", layer.name)).to_vec() }
}

/// The folded weights of every layer of a plan, each handed out once by [`FoldedLayers::take`].
pub struct FoldedLayers {
    layers: Vec<Option<FoldedConv>>,
}

impl FoldedLayers {
    /// Folds every convolution and the classifier of `model`.
    pub fn from_model(model: &Model) -> FoldedLayers {
        FoldedLayers { layers: model.plan.layers.iter().map(|l| fold_layer(model, l)).collect() }
    }

    /// Like [`FoldedLayers::from_model`], removing each layer's parameters from `model` once
    /// folded, so the weights never exist twice (peak memory while an engine is built).
    pub fn from_owned(model: &mut Model) -> FoldedLayers {
        let plan = model.plan.clone();
        let layers = plan
            .layers
            .iter()
            .map(|l| {
                let f = fold_layer(model, l);
                let names = match &l.op {
                    Op::Conv(c) => vec![
                        format!("{}.weight", l.name),
                        format!("{}.weight", c.bn),
                        format!("{}.bias", c.bn),
                        format!("{}.running_mean", c.bn),
                        format!("{}.running_var", c.bn),
                    ],
                    Op::Linear => vec![format!("{}.weight", l.name), format!("{}.bias", l.name)],
                    _ => vec![],
                };
                for n in names {
                    model.params.remove(&n);
                }
                f
            })
            .collect();
        FoldedLayers { layers }
    }

    /// The folded weights of plan layer `i`. Panics if the layer has none or was taken.
    pub fn take(&mut self, i: usize) -> FoldedConv {
        self.layers[i].take().unwrap_or_else(|| panic!("layer {i} has no folded weights left"))
    }
}

fn fold_layer(model: &Model, l: &Layer) -> Option<FoldedConv> {
    match &l.op {
        Op::Conv(_) => Some(fold_conv(model, l)),
        Op::Linear => Some(linear(model, l)),
        _ => None,
    }
}
