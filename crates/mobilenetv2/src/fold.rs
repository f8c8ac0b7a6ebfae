//! BatchNorm folded into the preceding convolution, weights relaid out for NHWC kernels.
//!
//! For `y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta`, the folded convolution has
//! weights `w * s` and bias `beta - mean * s` with `s = gamma / sqrt(var + eps)`. The fold is
//! computed in f64 and rounded once.

use crate::layout::{oihw_to_hwio, ConvDims};
use crate::names::{self, param, BnParam, Params};
use crate::plan::{Layer, Op, Plan};

/// A convolution with BatchNorm folded in: weights `[kh][kw][cin / groups][cout]` (HWIO).
#[derive(Clone, Debug, PartialEq)]
pub struct FoldedConv {
    /// HWIO weights (`[in][out]` for the classifier).
    pub weights: Vec<f32>,
    /// One bias per output channel.
    pub bias: Vec<f32>,
}

/// Folds the BatchNorm (epsilon `bn_eps`) of a convolution layer. Panics if `layer` is not a
/// convolution whose tensors are in `params` (a bug, not an input error: loaders check files
/// against the plan).
pub fn fold_conv(params: &Params, bn_eps: f32, layer: &Layer) -> FoldedConv {
    let c = match &layer.op {
        Op::Conv(c) => c,
        _ => panic!("fold_conv on {}", layer.name),
    };
    let w = param(params, &names::weight(layer));
    let (cout, cin_g, k) = (layer.output.c, layer.input.c / c.groups, c.kernel);
    if c.bn.is_none() {
        // Its own bias, no BatchNorm: only the relayout.
        let weights = oihw_to_hwio(w, ConvDims { o: cout, i: cin_g, k });
        return FoldedConv { weights, bias: param(params, &names::bias(layer)).to_vec() };
    }
    let eps = bn_eps as f64;
    let gamma = param(params, &names::bn(c, BnParam::Weight));
    let beta = param(params, &names::bn(c, BnParam::Bias));
    let mean = param(params, &names::bn(c, BnParam::Mean));
    let var = param(params, &names::bn(c, BnParam::Var));
    let scale: Vec<f64> = (0..cout).map(|o| gamma[o] as f64 / (var[o] as f64 + eps).sqrt()).collect();
    let per_out = cin_g * k * k;
    let scaled: Vec<f32> = w.iter().enumerate().map(|(j, &v)| (v as f64 * scale[j / per_out]) as f32).collect();
    let weights = oihw_to_hwio(&scaled, ConvDims { o: cout, i: cin_g, k });
    let bias = (0..cout).map(|o| (beta[o] as f64 - mean[o] as f64 * scale[o]) as f32).collect();
    FoldedConv { weights, bias }
}

/// The classifier as `[in][out]` weights and a bias.
pub fn linear(params: &Params, layer: &Layer) -> FoldedConv {
    let w = param(params, &names::weight(layer));
    let weights = oihw_to_hwio(w, ConvDims { o: layer.output.c, i: layer.input.c, k: 1 });
    FoldedConv { weights, bias: param(params, &names::bias(layer)).to_vec() }
}

/// The folded weights of every layer of a plan, each handed out once by [`FoldedLayers::take`].
pub struct FoldedLayers {
    layers: Vec<Option<FoldedConv>>,
}

impl FoldedLayers {
    /// Folds every convolution and the classifier of `plan`.
    pub fn new(plan: &Plan, params: &Params) -> FoldedLayers {
        FoldedLayers { layers: plan.layers.iter().map(|l| fold_layer(params, plan.spec.bn_eps, l)).collect() }
    }

    /// Like [`FoldedLayers::new`], removing each layer's parameters from `params` once folded,
    /// so the weights never exist twice (peak memory while an engine is built).
    pub fn from_owned(plan: &Plan, params: &mut Params) -> FoldedLayers {
        let layers = plan
            .layers
            .iter()
            .map(|l| {
                let f = fold_layer(params, plan.spec.bn_eps, l);
                for n in names::of_layer(l) {
                    params.remove(&n);
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

fn fold_layer(params: &Params, bn_eps: f32, l: &Layer) -> Option<FoldedConv> {
    match &l.op {
        Op::Conv(_) => Some(fold_conv(params, bn_eps, l)),
        Op::Linear => Some(linear(params, l)),
        _ => None,
    }
}
