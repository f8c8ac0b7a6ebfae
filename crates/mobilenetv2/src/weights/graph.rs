//! What the graph importers (ONNX, TFLite) share: a foreign network read as a chain of
//! convolution units plus a classifier, then fitted to the [`Plan`] of some [`Spec`].
//!
//! An importer only walks its format's graph and records, for every convolution, its weights
//! (OIHW), geometry, BatchNorm or bias, activation and residual input, as value ids of its own.
//! [`fit`] then finds the spec whose plan has exactly these layers, wired exactly this way, and
//! names the tensors as torchvision does. Nothing here knows the network's shape: the plan does.

use std::collections::BTreeMap;
use std::path::Path;

use super::fit::{float_params, CANDIDATE_WIDTHS};
use super::Tensor;
use crate::error::{Error, Result};
use crate::names::{self, expected, BnParam};
use crate::plan::{conv_pad, Activation, Op, Plan, Role};
use crate::preprocess::Preprocess;
use crate::qscheme::{ActQuant, BlockQuant, Method, QuantSpec};
use crate::spec::{BottleneckActivation, Padding, Shortcut, Spec};

/// A value (tensor) of the foreign graph, numbered by the importer.
pub(crate) type ValueId = usize;

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
    /// What a quantised graph says about the unit (empty for a float graph).
    pub q: UnitQ,
}

/// An activation's quantisation as a file states it, in the int8 engine's terms: u8 affine,
/// `real = scale * (q - zero)` (an int8 tensor maps onto u8 by adding 128 to its zero point:
/// the same real values, rounding and saturation).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ActQ {
    pub scale: f32,
    pub zero: i32,
    /// The node or tensor that quantises, for messages.
    pub at: String,
}

impl ActQ {
    /// Whether ReLU6 before this quantisation changes nothing (zero point 0, so it clamps at
    /// 0, and its largest value within half a step of 6 or below): the ReLU6 is folded in.
    pub fn implies_relu6(&self) -> bool {
        crate::qscheme::relu6_implied(ActQuant { scale: self.scale, zero: self.zero })
    }

    fn describe(&self) -> String {
        format!("scale {}, zero point {} (at {})", self.scale, self.zero, self.at)
    }
}

/// What a quantised graph says about one unit.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct UnitQ {
    /// A quantisation straight after the convolution, before any activation or residual add.
    pub conv: Option<ActQ>,
    /// The quantisation of the unit's output (after its activation and residual add).
    pub output: Option<ActQ>,
    /// The weights' integers (OIHW) when the file holds them as symmetric int8.
    pub weights: Option<Vec<i8>>,
}

/// What a quantised graph says about the rest of the network.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct NetQ {
    pub input: Option<ActQ>,
    /// The pooled features' quantisations, in graph order (after pooling, after flattening).
    pub pooled: Vec<ActQ>,
    pub logits: Option<ActQ>,
    /// The classifier's weight integers (`[classes, channels]`) when symmetric int8.
    pub head_weights: Option<Vec<i8>>,
    /// Tensors the importer saw quantised in a way the int8 engine cannot hold (e.g. int16).
    pub unsupported: Option<String>,
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
    /// Quantisation beyond the units (empty for a float graph).
    pub quant: NetQ,
}

impl Network {
    /// Whether the graph quantises any activation (not only its weights).
    pub fn quantizes_activations(&self) -> bool {
        self.units.iter().any(|u| u.q.conv.is_some() || u.q.output.is_some()) || !self.quant.pooled.is_empty()
    }

    /// Frees the float weights once [`fit`] has turned them into tensors (what [`int8`] reads,
    /// the quantisation and the weights' integers, stays), so a big file's weights are not
    /// held twice while the import finishes.
    pub fn release_weights(&mut self) {
        for u in &mut self.units {
            u.weight = Vec::new();
        }
        self.head.weight = Vec::new();
    }
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
                let (t, b) = conv_pad(Padding::Tf, layer.input.h, c.kernel, c.stride, c.dilation);
                let (l, r) = conv_pad(Padding::Tf, layer.input.w, c.kernel, c.stride, c.dilation);
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
        // A quantisation that clamps to [0, 6] right after the convolution is a folded ReLU6.
        let folded = c.activation == Activation::Relu6 && unit.q.conv.as_ref().is_some_and(ActQ::implies_relu6);
        if unit.relu6 != (c.activation == Activation::Relu6) && !folded {
            return bad(if unit.relu6 {
                "it is followed by ReLU6 where the network has none".into()
            } else {
                match &unit.q.conv {
                    Some(q) => format!(
                        "it is not followed by ReLU6 (Clip 0..6), nor quantised to a range within [0, 6] ({})",
                        q.describe()
                    ),
                    None => "it is not followed by ReLU6 (Clip 0..6)".into(),
                }
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
                    .zip(exp.iter().filter(|e| e.kind == crate::names::Kind::ConvWeight))
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
                tensors.insert(names::weight(layer), Tensor::f32(u.shape.to_vec(), u.weight.clone()));
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
                for (p, v) in BnParam::ALL.into_iter().zip([gamma, beta, mean, var]) {
                    tensors.insert(names::bn(c, p), Tensor::f32(vec![o], v));
                }
            }
            Op::Linear => {
                let h = &net.head;
                tensors.insert(names::weight(layer), Tensor::f32(h.shape.to_vec(), h.weight.clone()));
                tensors.insert(names::bias(layer), Tensor::f32(vec![h.shape[0]], h.bias.clone()));
            }
            Op::GlobalAvgPool | Op::Dropout { .. } => {}
            Op::Concat { .. } | Op::Upsample { .. } => unreachable!("the graph importers fit classifier plans"),
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

/// A quantised network mapped onto the int8 engine: the tensors of the project's int8 format
/// (see [`crate::quant`]), the activation quantisation, and what of the file the mapping does
/// not represent exactly.
pub(crate) struct Int8Import {
    pub tensors: BTreeMap<String, Tensor>,
    pub quant: QuantSpec,
    pub notes: Vec<String>,
}

/// What [`int8`] made of a fitted graph: the int8 import, or the float tensors back unchanged.
pub(crate) enum Imported {
    Int8(Int8Import),
    Float(BTreeMap<String, Tensor>),
}

fn not_int8(path: &Path, detail: String) -> Error {
    Error::Unsupported(format!("{}: {detail}", path.display()))
}

/// Maps a fitted quantised network (its float `tensors` from [`fit`]) onto the int8 engine's
/// scheme: u8 activations with the file's scales and zero points (ReLU6 outputs with zero point
/// 0), int8 weights per output channel. `None` when the graph quantises no activation (only its
/// weights): it then runs in float. Refuses a graph that quantises only some activations, or
/// one whose quantisation the scheme cannot hold.
pub(crate) fn int8(
    path: &Path,
    spec: &Spec,
    net: &Network,
    tensors: BTreeMap<String, Tensor>,
    hint: Option<&QuantSpec>,
) -> Result<Imported> {
    if !net.quantizes_activations() {
        return Ok(Imported::Float(tensors));
    }
    if let Some(what) = &net.quant.unsupported {
        return Err(not_int8(path, format!("{what}: mnv2's int8 engine holds u8 (or int8) activations")));
    }
    let plan = Plan::new(spec)?;
    let convs: Vec<usize> = (0..plan.layers.len()).filter(|&i| plan.layers[i].conv().is_some()).collect();
    let mut notes = Vec::new();
    let need = |u: &Unit| -> Result<ActQ> {
        u.q.output.clone().ok_or_else(|| {
            not_int8(
                path,
                format!(
                    "the output of {} is not quantised, while other activations are: a partially quantised graph (mnv2 runs graphs whose activations are all quantised on its int8 engine, and float graphs)",
                    u.node
                ),
            )
        })
    };
    let act = |q: &ActQ| ActQuant { scale: q.scale, zero: q.zero };
    // ReLU6 outputs: zero point 0 in the engine's scheme.
    let mut shifted = Vec::new();
    let relu6 = |u: &Unit, layer: &str, shifted: &mut Vec<String>| -> Result<ActQuant> {
        let q = need(u)?;
        let top = (255 - q.zero) as f64 * q.scale as f64;
        if q.zero == 0 {
            Ok(act(&q))
        } else if top >= 6.0 - 0.5 * q.scale as f64 {
            // [0, 6] holds the same values on (scale, 0): the codes below the zero point go unused.
            shifted.push(format!("{layer} (zero point {})", q.zero));
            Ok(ActQuant { scale: q.scale, zero: 0 })
        } else {
            Err(not_int8(
                path,
                format!(
                    "{}: its ReLU6 output is quantised with {}, which clips at {top} (below 6) and keeps codes for negative values; mnv2's int8 engine quantises ReLU6 outputs with zero point 0 (the range [0, 255 * scale]) and cannot represent it",
                    u.node,
                    q.describe()
                ),
            ))
        }
    };
    let empty = BlockQuant {
        hidden: ActQuant { scale: 1.0, zero: 0 },
        dw: ActQuant { scale: 1.0, zero: 0 },
        output: ActQuant { scale: 1.0, zero: 0 },
    };
    let mut blocks = vec![empty; plan.blocks.len()];
    let mut stem = None;
    let mut pre_add = Vec::new();
    for (i, &li) in convs.iter().enumerate() {
        let u = &net.units[i];
        let layer = &plan.layers[li];
        let k = plan.blocks.iter().position(|b| b.expand == Some(li) || b.depthwise == li || b.project == li);
        match (layer.role, k) {
            (Role::Stem, _) => stem = Some(relu6(u, &layer.name, &mut shifted)?),
            (Role::Expand, Some(k)) => blocks[k].hidden = relu6(u, &layer.name, &mut shifted)?,
            (Role::Depthwise, Some(k)) => blocks[k].dw = relu6(u, &layer.name, &mut shifted)?,
            (Role::Project, Some(k)) => {
                blocks[k].output = act(&need(u)?);
                if u.q.conv.is_some() && u.residual.is_some() {
                    pre_add.push(layer.name.as_str());
                }
            }
            (Role::LastConv, _) => {
                if let Some(q) = u.q.output.as_ref().or(u.q.conv.as_ref()) {
                    let top = (255 - q.zero) as f32 * q.scale;
                    notes.push(format!(
                        "the last convolution's output quantisation (scale {}, zero point {}{}) is not applied: the engine pools its ReLU6 outputs in float",
                        q.scale,
                        q.zero,
                        if top < 6.0 { format!(", which also clips them at {top}") } else { String::new() }
                    ));
                }
            }
            _ => unreachable!("the plan's convolutions are stem, expand, depthwise, project and last"),
        }
    }
    if !shifted.is_empty() {
        notes.push(format!(
            "ReLU6 outputs quantised with a non-zero zero point are mapped to zero point 0 with the same scale (the same values in [0, 6]): {}",
            shifted.join(", ")
        ));
    }
    if !pre_add.is_empty() {
        notes.push(format!(
            "the projection's own quantisation before the residual add is not applied (the engine adds the block input to the real-valued projection and quantises the sum once) in {} blocks: {}",
            pre_add.len(),
            pre_add.join(", ")
        ));
    }
    let stem = stem.expect("a plan starts with the stem");
    let mut prev = stem;
    for (b, bq) in plan.blocks.iter().zip(blocks.iter_mut()) {
        match b.expand {
            // The engine holds one quantisation for the stem's output and a first expand's.
            Some(_) if b.index == 1 && bq.hidden != stem => {
                return Err(not_int8(
                    path,
                    "a first block with an expand convolution whose output is quantised unlike the stem's".into(),
                ))
            }
            Some(_) => {}
            None => bq.hidden = prev,
        }
        prev = bq.output;
    }
    let pooled = net.quant.pooled.last().ok_or_else(|| {
        not_int8(path, format!("the pooled features ({}) are not quantised, while the convolutions are", net.head.node))
    })?;
    if net.quant.pooled.iter().any(|q| (q.scale, q.zero) != (pooled.scale, pooled.zero)) {
        notes.push(format!(
            "the pooled features are quantised twice ({}); the engine quantises them once, with the last",
            net.quant.pooled.iter().map(ActQ::describe).collect::<Vec<_>>().join("; ")
        ));
    }
    if let Some(q) = &net.quant.logits {
        notes.push(format!(
            "the logits' quantisation (scale {}, zero point {}) is not applied: the engine's logits are float",
            q.scale, q.zero
        ));
    }
    let quant = QuantSpec {
        scheme: "int8".into(),
        method: hint.map_or(Method::Imported, |h| h.method),
        images: hint.map_or(0, |h| h.images),
        blocks,
        pooled: act(pooled),
        input: net.quant.input.as_ref().map(act),
    };
    // The int8 tensors exactly as the engine quantises the weights (per output channel,
    // symmetric): the file's own integers when they are on such a grid.
    // The float tensors are consumed: a big file's weights are not held twice.
    let params = float_params(tensors, &plan, path)?;
    let int8 = super::int8::quantized_tensors(&plan, &params);
    let heads = [(plan.classifier("an int8 import")?.classifier, net.quant.head_weights.as_ref())];
    let units = convs.iter().zip(&net.units).map(|(&li, u)| (li, u.q.weights.as_ref()));
    let mut requantised = Vec::new();
    for (li, file_ints) in units.chain(heads) {
        let name = &plan.layers[li].name;
        let same = match (&int8[&names::weight(&plan.layers[li])].data, file_ints) {
            (super::Data::I8(q), Some(f)) => q == f,
            _ => false,
        };
        if !same {
            requantised.push(name.as_str());
        }
    }
    if !requantised.is_empty() {
        let n = convs.len() + 1;
        notes.push(format!(
            "the weights of {} are requantised to symmetric int8 per output channel, as the engine runs them (the file's are not on such a grid: per tensor, asymmetric, not int8, or with BatchNorm to fold)",
            if requantised.len() == n { format!("all {n} layers") } else { format!("{} of {n} layers: {}", requantised.len(), requantised.join(", ")) }
        ));
    }
    Ok(Imported::Int8(Int8Import { tensors: int8, quant, notes }))
}
