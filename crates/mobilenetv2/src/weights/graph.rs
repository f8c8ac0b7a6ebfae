//! What the graph importers (ONNX, TFLite) share: a foreign network read as a chain of
//! convolution units plus a classifier, then fitted to the [`Plan`] of some [`Spec`].
//!
//! An importer only walks its format's graph and records, for every convolution, its weights
//! (OIHW), geometry, BatchNorm or bias, activation and residual input, as value ids of its own.
//! [`fit`] then finds the spec whose plan has exactly these layers, wired exactly this way, and
//! names the tensors as torchvision does. Nothing here knows the network's shape: the plan does.

use std::collections::BTreeMap;
use std::path::Path;

use super::names::expected;
use super::Tensor;
use crate::error::{Error, Result};
use crate::model::Preprocess;
use crate::plan::{Activation, Op, Plan};
use crate::spec::{BottleneckActivation, Padding, Shortcut, Spec};

/// A value (tensor) of the foreign graph, numbered by the importer.
pub(crate) type ValueId = usize;

/// Widths tried, in order, when the graph does not say which it is.
pub(crate) const CANDIDATE_WIDTHS: [f64; 16] =
    [1.0, 0.35, 0.5, 0.75, 1.3, 1.4, 0.25, 0.6, 0.8, 0.9, 1.1, 1.2, 1.5, 1.75, 2.0, 0.1];

/// How a convolution pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConvPad {
    /// Zeros on each side: top, left, bottom, right.
    Explicit([usize; 4]),
    /// TensorFlow 'SAME' (ONNX `SAME_UPPER`): computed from the input size, extra zero after.
    Same,
}

/// BatchNorm statistics in inference form.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Bn {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub eps: f32,
    /// The node that held it (for errors).
    pub node: String,
}

/// One convolution with everything that follows it up to the next convolution.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Unit {
    /// The convolution node, as errors name it: ``node `name` (Conv)``.
    pub node: String,
    pub input: ValueId,
    /// Weights OIHW and their shape.
    pub weight: Vec<f32>,
    pub shape: [usize; 4],
    pub bias: Option<Vec<f32>>,
    pub bn: Option<Bn>,
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub pad: ConvPad,
    pub groups: usize,
    pub relu6: bool,
    /// The other input of a residual Add after the unit, and the Add node.
    pub residual: Option<(ValueId, String)>,
}

/// Global average pooling and the fully connected layer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Head {
    /// The value that is pooled.
    pub input: ValueId,
    /// The pooling node, for errors.
    pub node: String,
    /// The fully connected node, for errors.
    pub fc_node: String,
    /// `[classes, channels]`.
    pub weight: Vec<f32>,
    pub shape: [usize; 2],
    pub bias: Vec<f32>,
}

/// A foreign network, read.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Network {
    /// The image input.
    pub input: ValueId,
    /// Input height and width, when the file fixes them.
    pub hw: Option<(usize, usize)>,
    pub units: Vec<Unit>,
    pub head: Head,
    /// Output value of each unit (after its activation and residual add).
    pub outputs: Vec<ValueId>,
}

/// What an importer knows about its format's conventions.
pub(crate) struct FitOptions {
    /// Padding conventions to try, the preferred first (they agree on odd sizes).
    pub paddings: &'static [Padding],
    /// BatchNorm epsilon when the file has no BatchNorm left (folded into the convolutions).
    pub default_eps: f32,
    pub dropout: f32,
    /// A spec recorded in the file's metadata, tried first.
    pub hint: Option<Spec>,
}

fn misfit(path: &Path, node: &str, detail: String) -> Error {
    Error::NoConfig { path: path.into(), detail: format!("{node} does not fit a MobileNetV2: {detail}") }
}

fn describe(spec: &Spec) -> String {
    let pad = match spec.padding {
        Padding::Torch => "torch",
        Padding::Tf => "tf",
    };
    format!(
        "width {}, {}x{}, {} classes, {pad} padding, output stride {}",
        spec.width, spec.height, spec.width_px, spec.classes, spec.output_stride
    )
}

/// TF 'SAME' padding of one axis.
fn same_pad(size: usize, kernel: usize, stride: usize, dilation: usize) -> (usize, usize) {
    let eff = dilation * (kernel - 1) + 1;
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + eff).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// Checks the network against a plan. On failure, how many units fitted and why the next did not.
fn check(path: &Path, net: &Network, plan: &Plan) -> std::result::Result<(), (usize, Error)> {
    let convs: Vec<usize> = (0..plan.layers.len()).filter(|&i| plan.layers[i].conv().is_some()).collect();
    let about = describe(&plan.spec);
    for (i, unit) in net.units.iter().enumerate() {
        let Some(&li) = convs.get(i) else {
            return Err((
                i,
                misfit(
                    path,
                    &unit.node,
                    format!("it is convolution {} but a MobileNetV2 ({about}) has {}", i + 1, convs.len()),
                ),
            ));
        };
        let layer = &plan.layers[li];
        let c = layer.conv().expect("a conv layer");
        let bad =
            |detail: String| Err((i, misfit(path, &unit.node, format!("{detail} ({about}, layer {})", layer.name))));
        let want = [layer.output.c, layer.input.c / c.groups, c.kernel, c.kernel];
        if unit.shape != want {
            return bad(format!("weights of shape {:?}, expected {want:?}", unit.shape));
        }
        if unit.groups != c.groups {
            return bad(format!("{} groups, expected {}", unit.groups, c.groups));
        }
        if unit.stride != [c.stride; 2] {
            return bad(format!("strides {:?}, expected [{s}, {s}]", unit.stride, s = c.stride));
        }
        if unit.dilation != [c.dilation; 2] {
            return bad(format!("dilations {:?}, expected [{d}, {d}]", unit.dilation, d = c.dilation));
        }
        let pads = match unit.pad {
            ConvPad::Explicit(p) => p,
            ConvPad::Same => {
                let (t, b) = same_pad(layer.input.h, c.kernel, c.stride, c.dilation);
                let (l, r) = same_pad(layer.input.w, c.kernel, c.stride, c.dilation);
                [t, l, b, r]
            }
        };
        let want_pads = [c.pad.top, c.pad.left, c.pad.bottom, c.pad.right];
        if pads != want_pads {
            return bad(format!(
                "pads (top, left, bottom, right) {pads:?} on a {}x{} input, expected {want_pads:?}",
                layer.input.h, layer.input.w
            ));
        }
        if unit.relu6 != (c.activation == Activation::Relu6) {
            return bad(if unit.relu6 {
                "it is followed by ReLU6 where the network has none".into()
            } else {
                "it is not followed by ReLU6 (Clip 0..6)".into()
            });
        }
        let want_input = if i == 0 { net.input } else { net.outputs[i - 1] };
        if unit.input != want_input {
            return bad(if i == 0 {
                "its input is not the image".into()
            } else {
                format!("its input is not the output of {}", net.units[i - 1].node)
            });
        }
        match (&unit.residual, c.residual) {
            (None, false) => {}
            (Some((_, add)), false) => {
                return Err((
                    i,
                    misfit(
                        path,
                        add,
                        format!("a residual Add after {}, where the network has none ({about})", unit.node),
                    ),
                ))
            }
            (None, true) => return bad("no residual Add after it, where the network has one".into()),
            (Some((other, add)), true) => {
                let block = plan.block_of(li).expect("a residual layer is in a block");
                let first = convs.iter().position(|&l| l == block.first_layer()).expect("block layer");
                if *other != net.units[first].input {
                    return Err((i, misfit(path, add, format!("it does not add the input of block {}", block.index))));
                }
            }
        }
    }
    let n = net.units.len();
    if n < convs.len() {
        let li = convs[n];
        return Err((
            n,
            misfit(
                path,
                &net.head.node,
                format!(
                    "the graph has {n} convolutions before it, a MobileNetV2 ({about}) has {} (the next would be {})",
                    convs.len(),
                    plan.layers[li].name
                ),
            ),
        ));
    }
    if net.outputs.last() != Some(&net.head.input) {
        return Err((n, misfit(path, &net.head.node, "it does not pool the output of the last convolution".into())));
    }
    let fc = plan.layers.iter().find(|l| matches!(l.op, Op::Linear)).expect("a classifier");
    let want = [fc.output.c, fc.input.c];
    if net.head.shape != want {
        return Err((
            n,
            misfit(
                path,
                &net.head.fc_node,
                format!("weights of shape {:?}, expected {want:?} ({about})", net.head.shape),
            ),
        ));
    }
    Ok(())
}

/// The spec whose plan is this network, and the network's tensors under torchvision's names.
pub(crate) fn fit(path: &Path, net: &Network, opts: &FitOptions) -> Result<(Spec, BTreeMap<String, Tensor>)> {
    // BatchNorm epsilon: the file's, if it kept BatchNorm (one value for the whole network).
    let mut eps = None;
    for bn in net.units.iter().filter_map(|u| u.bn.as_ref()) {
        match eps {
            None => eps = Some(bn.eps),
            Some(e) if e == bn.eps => {}
            Some(e) => {
                return Err(misfit(
                    path,
                    &bn.node,
                    format!("BatchNorm epsilon {} differs from the {e} of the layers before it", bn.eps),
                ))
            }
        }
    }
    let eps = eps.or(opts.hint.as_ref().map(|h| h.bn_eps)).unwrap_or(opts.default_eps);
    for u in &net.units {
        let o = u.shape[0];
        let lens = [u.bias.as_ref().map(Vec::len), u.bn.as_ref().map(|b| b.gamma.len())];
        if u.weight.len() != u.shape.iter().product::<usize>() || lens.iter().flatten().any(|&l| l != o) {
            return Err(misfit(path, &u.node, format!("its bias or BatchNorm does not have {o} channels")));
        }
        if let Some(bn) = &u.bn {
            if [&bn.beta, &bn.mean, &bn.var].iter().any(|v| v.len() != o) {
                return Err(misfit(path, &bn.node, format!("its parameters do not have {o} channels")));
            }
        }
    }
    let h = &net.head;
    if h.weight.len() != h.shape[0] * h.shape[1] || h.bias.len() != h.shape[0] {
        return Err(misfit(path, &h.fc_node, format!("its bias does not have {} values", h.shape[0])));
    }
    if !(eps > 0.0 && eps.is_finite() && eps < 1.0) {
        return Err(misfit(path, "BatchNormalization", format!("epsilon {eps} is not in (0, 1)")));
    }
    let (height, width_px) = net.hw.unwrap_or((224, 224));
    // Features visible directly in the graph.
    let classes = net.head.shape[0];
    let expansion = net
        .units
        .get(3)
        .filter(|u| u.groups == 1 && u.shape[1] > 0 && u.shape[0].is_multiple_of(u.shape[1]))
        .map(|u| u.shape[0] / u.shape[1])
        .filter(|&t| t != 6 && (1..=32).contains(&t));
    let bottleneck = match net.units.get(2) {
        Some(u) if u.relu6 => BottleneckActivation::Relu6,
        _ => BottleneckActivation::Linear,
    };
    let shortcut = if net.units.iter().any(|u| u.residual.is_some()) { Shortcut::Bottleneck } else { Shortcut::None };
    let mut candidates = Vec::new();
    if let Some(h) = &opts.hint {
        candidates.push(Spec { height, width_px, classes, bn_eps: eps, ..h.clone() });
    }
    for &padding in opts.paddings {
        for output_stride in [32, 16, 8] {
            for width in CANDIDATE_WIDTHS {
                candidates.push(Spec {
                    width,
                    height,
                    width_px,
                    classes,
                    expansion,
                    bottleneck,
                    shortcut,
                    padding,
                    output_stride,
                    dropout: opts.dropout,
                    bn_eps: eps,
                    ..Spec::default()
                });
            }
        }
    }
    // On failure, report the candidate that fitted the most units in order, then the one whose
    // weight shapes agree most often: the likeliest configuration the file was meant to be.
    let mut best: Option<((usize, usize), Error)> = None;
    let mut found = None;
    for spec in candidates {
        let Ok(plan) = Plan::new(&spec) else { continue };
        match check(path, net, &plan) {
            Ok(()) => {
                found = Some(plan);
                break;
            }
            Err((i, e)) => {
                let exp = expected(&plan);
                let shapes = net
                    .units
                    .iter()
                    .zip(exp.iter().filter(|e| e.kind == super::names::Kind::ConvWeight))
                    .filter(|(u, e)| u.shape[..] == e.shape[..])
                    .count();
                if best.as_ref().is_none_or(|(b, _)| (i, shapes) > *b) {
                    best = Some(((i, shapes), e));
                }
            }
        }
    }
    let Some(plan) = found else {
        return Err(best.map(|b| b.1).unwrap_or_else(|| {
            misfit(path, "the graph", format!("no MobileNetV2 takes a {height}x{width_px} input"))
        }));
    };
    let mut tensors = BTreeMap::new();
    let exp = expected(&plan);
    let mut units = net.units.iter();
    for layer in &plan.layers {
        match &layer.op {
            Op::Conv(c) => {
                let u = units.next().expect("checked: one unit per conv");
                let o = u.shape[0];
                tensors.insert(format!("{}.weight", layer.name), Tensor::f32(u.shape.to_vec(), u.weight.clone()));
                let zeros = vec![0f32; o];
                let bias = u.bias.as_deref().unwrap_or(&zeros);
                let (gamma, beta, mean, var) = match &u.bn {
                    // BatchNorm after a convolution with bias: bn(x + b) has mean (mean - b).
                    Some(bn) => (
                        bn.gamma.clone(),
                        bn.beta.clone(),
                        bn.mean.iter().zip(bias).map(|(m, b)| m - b).collect(),
                        bn.var.clone(),
                    ),
                    // Folded: an identity BatchNorm whose fold gives back the weights exactly
                    // (scale 1 / sqrt((1 - eps) + eps) rounds to 1) and the bias as its shift.
                    None => (vec![1.0; o], bias.to_vec(), zeros.clone(), vec![1.0 - eps; o]),
                };
                for (suffix, v) in [("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var)] {
                    tensors.insert(format!("{}.{suffix}", c.bn), Tensor::f32(vec![o], v));
                }
            }
            Op::Linear => {
                let h = &net.head;
                tensors.insert(format!("{}.weight", layer.name), Tensor::f32(h.shape.to_vec(), h.weight.clone()));
                tensors.insert(format!("{}.bias", layer.name), Tensor::f32(vec![h.shape[0]], h.bias.clone()));
            }
            Op::GlobalAvgPool | Op::Dropout { .. } => {}
        }
    }
    debug_assert_eq!(tensors.len(), exp.len());
    Ok((plan.spec, tensors))
}

/// Metadata for a [`super::TensorFile`] made by an importer: the spec it fitted and the
/// preprocessing of the framework it came from.
pub(crate) fn metadata(spec: &Spec, preprocess: &Preprocess, source: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("spec".into(), serde_json::to_string(spec).expect("spec serialises"));
    m.insert("preprocess".into(), serde_json::to_string(preprocess).expect("preprocess serialises"));
    m.insert("imported_from".into(), source.into());
    m
}
