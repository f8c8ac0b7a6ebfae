//! A TF Object Detection API SSD graph on MobileNetV2 mapped onto the project's plan with its
//! SSDLite head ([`crate::plan::SsdHead`]): the backbone (`FeatureExtractor/MobilenetV2/...`),
//! the extra layers (`FeatureExtractor/MobilenetV2/layer_19_*`) and the predictors
//! (`BoxPredictor_k/...`), so the reference engine computes TF's raw box encodings and class
//! logits.
//!
//! Plan layers map to TF scopes by role and block: the stem is `Conv`, block `b` (torchvision
//! `features.b`) is `expanded_conv` for b = 1 and `expanded_conv_{b-1}` after, with `/expand`,
//! `/depthwise` and `/project`; the last conv is `Conv_1`; head layers are named after their
//! TF scopes (see [`crate::plan::SsdHead`]), predictors' last convs with `biases`. Kernels are transposed from TF's
//! HWIO (`[kh, kw, cin, cout]`; depthwise `[kh, kw, C, 1]`) to OIHW; BatchNorm keeps its four
//! tensors and the graph's own epsilon (every `FusedBatchNorm` must agree); the padding is TF's
//! 'SAME' ([`Padding::Tf`]). The logits per anchor (background included) are read from
//! `BoxPredictor_0/ClassPredictor/biases`. A graph that is not a MobileNetV2 SSD fails naming
//! the node.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::names::{self, BnParam};
use crate::plan::{ConvKind, Layer, Op, Plan, Role, SSD_ANCHORS};
use crate::spec::{HeadSpec, Padding, Spec};
use crate::weights::tfgraph::TfGraph;
use crate::weights::{Tensor, TensorFile};
use crate::Model;

const PREFIX: &str = "FeatureExtractor/MobilenetV2/";

fn bad(g: &TfGraph, detail: impl Into<String>) -> Error {
    Error::format(&g.path, "TF Object Detection API SSD graph", detail)
}

/// TF scope of a backbone layer.
pub fn tf_scope(layer: &Layer) -> Option<String> {
    let block = |b: usize| if b == 1 { "expanded_conv".to_string() } else { format!("expanded_conv_{}", b - 1) };
    let s = match (layer.role, layer.block) {
        (Role::Stem, _) => "Conv".to_string(),
        (Role::Expand, Some(b)) => format!("{}/expand", block(b)),
        (Role::Depthwise, Some(b)) => format!("{}/depthwise", block(b)),
        (Role::Project, Some(b)) => format!("{}/project", block(b)),
        (Role::LastConv, _) => "Conv_1".to_string(),
        (Role::Extra | Role::Predictor, _) => {
            let n = layer.name.strip_prefix("head.")?;
            let scope = n.strip_suffix(".0").unwrap_or(n).replace('.', "/");
            return Some(if layer.role == Role::Extra { format!("{PREFIX}{scope}") } else { scope });
        }
        _ => return None,
    };
    Some(format!("{PREFIX}{s}"))
}

/// The BatchNorm epsilon of the graph (all its FusedBatchNorm nodes must agree).
fn bn_eps(g: &TfGraph) -> Result<f32> {
    let mut eps = None;
    for n in g.nodes.iter().filter(|n| n.op.starts_with("FusedBatchNorm")) {
        let e = n.attr_float(&g.path, "epsilon")?;
        if n.attr_bool(&g.path, "is_training")? == Some(true) {
            return Err(bad(g, format!("node `{}` normalises with batch statistics (is_training=true)", n.name)));
        }
        if eps.is_some_and(|p| p != e) {
            return Err(bad(g, format!("node `{}` has epsilon {e}, others {eps:?}", n.name)));
        }
        eps = Some(e);
    }
    eps.ok_or_else(|| bad(g, format!("no FusedBatchNorm under `{PREFIX}`: not a MobileNetV2 feature extractor")))
}

/// The detector (backbone and SSDLite head) as a [`Model`] for `height x width` inputs.
pub fn model(g: &TfGraph, height: usize, width: usize) -> Result<Model> {
    let stem = g.f32s(&format!("{PREFIX}Conv/weights"), None)?;
    let stem_out = stem.len() / 27;
    if stem.len() != 27 * stem_out {
        return Err(bad(g, format!("node `{PREFIX}Conv/weights` is not a 3x3x3 stem")));
    }
    // Table 2's stem has 32 channels at width 1 (make_divisible(32 w, 8)).
    let width_mult = stem_out as f64 / 32.0;
    let cls = "BoxPredictor_0/ClassPredictor/biases";
    let n = g.f32s(cls, None)?.len();
    let a0 = SSD_ANCHORS[0];
    if n == 0 || n % a0 != 0 {
        return Err(bad(g, format!("node `{cls}` has {n} values, not {a0} anchors x classes")));
    }
    let spec = Spec {
        padding: Padding::Tf,
        bn_eps: bn_eps(g)?,
        classes: n / a0,
        width_px: width,
        head: HeadSpec::SsdLite { separable: true },
        ..Spec::new(width_mult, height)
    };
    let plan = Plan::new(&spec)?;
    let mut tensors = BTreeMap::new();
    for layer in &plan.layers {
        match &layer.op {
            Op::Conv(c) => {
                let scope = tf_scope(layer).expect("every conv of the detector has a TF scope");
                let dw = c.kind == ConvKind::Depthwise;
                let kname = format!("{scope}/{}", if dw { "depthwise_weights" } else { "weights" });
                let (k, ci, co) = (c.kernel, layer.input.c / c.groups, layer.output.c);
                let hwio = if dw { [k, k, co, 1] } else { [k, k, ci, co] };
                let w = g.f32s(&kname, Some(&hwio))?;
                // HWIO (depthwise: HW C 1) to OIHW (depthwise: C 1 H W).
                let mut oihw = vec![0f32; w.len()];
                for y in 0..k {
                    for x in 0..k {
                        for i in 0..ci {
                            for o in 0..co {
                                let src = if dw { (y * k + x) * co + o } else { ((y * k + x) * ci + i) * co + o };
                                oihw[((o * ci + i) * k + y) * k + x] = w[src];
                            }
                        }
                    }
                }
                tensors.insert(names::weight(layer), Tensor::f32(vec![co, ci, k, k], oihw));
                if c.bn.is_none() {
                    let b = g.f32s(&format!("{scope}/biases"), Some(&[co]))?;
                    tensors.insert(names::bias(layer), Tensor::f32(vec![co], b.to_vec()));
                    continue;
                }
                for (p, tf) in BnParam::ALL.into_iter().zip(["gamma", "beta", "moving_mean", "moving_variance"]) {
                    let v = g.f32s(&format!("{scope}/BatchNorm/{tf}"), Some(&[co]))?;
                    tensors.insert(names::bn(c, p), Tensor::f32(vec![co], v.to_vec()));
                }
            }
            Op::Linear | Op::GlobalAvgPool | Op::Dropout { .. } | Op::Concat { .. } | Op::Upsample { .. } => {
                unreachable!("an SSD plan has no classifier or DeepLab layers")
            }
        }
    }
    let mut metadata = BTreeMap::new();
    metadata.insert("spec".to_string(), serde_json::to_string(&spec).expect("a spec serialises"));
    Model::from_file(TensorFile { path: g.path.clone(), tensors, metadata })
}
