//! An SSD's pre- and post-processing read from a TF Object Detection API frozen graph, so that a
//! model exported with other settings (input size, anchor scales and ratios, box coder scales,
//! score function, NMS thresholds, number of classes) runs with its own.
//!
//! Where each setting lives in the graph (node names are those every OD API export uses; the
//! NMS and anchor settings are found by structure, so graphs with any number of classes or
//! feature maps work):
//!
//! | setting | node |
//! |---|---|
//! | input size | the `size` input of the one `ResizeBilinear` (a Const `[h, w]`); its `align_corners` and `half_pixel_centers` must be false |
//! | `x * scale - offset` | `Preprocessor/mul/x`, `Preprocessor/sub/y` |
//! | anchor aspect ratios of map k | the input of `MultipleGridAnchorGenerator/Sqrt_k` (`Sqrt` for k = 0) |
//! | anchor scales of map k | input 0 of the `RealDiv` that divides by that `Sqrt` |
//! | box coder scales (y, x, h, w) | `Postprocessor/Decode/truediv{,_1,_2,_3}/y` |
//! | logit scale, score function | `Postprocessor/scale_logits/y`, the op of `Postprocessor/convert_scores` |
//! | background column | `Postprocessor/Slice/begin` (last value 1: column 0 dropped) |
//! | per-class NMS | the `NonMaxSuppressionV2..V5` nodes, one per class: input 3 (IoU), input 4 (score threshold), input 2 via `Minimum` (max per class) |
//! | max total | the other `Minimum` in the same `MultiClassNonMaxSuppression` scope |

use super::anchors::BoxSpec;
use super::boxcoder::BoxCoder;
use super::nms::Nms;
use super::postprocess::{PostProcess, ScoreFn};
use super::resize::TfPreprocess;
use crate::error::{Error, Result};
use crate::weights::tfgraph::{node_name, Node, TfGraph};

/// Everything around the network of an OD API SSD.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsdConfig {
    /// How an image becomes the network input.
    pub preprocess: TfPreprocess,
    /// Box specs per feature map.
    pub box_specs: Vec<Vec<BoxSpec>>,
    /// From raw outputs to detections.
    pub post: PostProcess,
    /// Foreground classes.
    pub classes: usize,
}

fn bad(g: &TfGraph, detail: impl Into<String>) -> Error {
    Error::format(&g.path, "TF Object Detection API SSD graph", detail)
}

/// The numeric suffix of `prefix`, `prefix_1`, ... (0 for the bare name).
fn suffix(name: &str, prefix: &str) -> Option<usize> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix('_')?.parse().ok()
}

fn input<'a>(g: &'a TfGraph, n: &Node, k: usize) -> Result<&'a Node> {
    let i = n.data_inputs().nth(k).ok_or_else(|| bad(g, format!("node `{}` ({}) has no input {k}", n.name, n.op)))?;
    g.resolve(i)
}

impl Default for SsdConfig {
    /// `ssdlite_mobilenet_v2_coco.config`'s settings with one foreground class.
    fn default() -> Self {
        SsdConfig {
            preprocess: TfPreprocess::default(),
            box_specs: super::AnchorGenerator::default().box_specs(),
            post: PostProcess::default(),
            classes: 1,
        }
    }
}

impl SsdConfig {
    /// Reads the configuration from the constants and nodes of an exported OD API graph
    /// (preprocessing, box coder scales, score function, NMS settings, anchors); a format error
    /// names what is missing.
    pub fn from_graph(g: &TfGraph) -> Result<SsdConfig> {
        let post = PostProcess {
            coder: BoxCoder {
                scales: [
                    g.scalar_f32("Postprocessor/Decode/truediv/y")?,
                    g.scalar_f32("Postprocessor/Decode/truediv_1/y")?,
                    g.scalar_f32("Postprocessor/Decode/truediv_2/y")?,
                    g.scalar_f32("Postprocessor/Decode/truediv_3/y")?,
                ],
            },
            score_fn: match g.require("Postprocessor/convert_scores")?.op.as_str() {
                "Sigmoid" => ScoreFn::Sigmoid,
                "Softmax" => ScoreFn::Softmax,
                "Identity" => ScoreFn::Identity,
                op => {
                    return Err(bad(
                        g,
                        format!("node `Postprocessor/convert_scores` is a {op}, expected Sigmoid, Softmax or Identity"),
                    ))
                }
            },
            logit_scale: g.scalar_f32("Postprocessor/scale_logits/y")?,
            background: {
                let begin = g.values_f64("Postprocessor/Slice/begin")?;
                match begin.last() {
                    Some(&b) if b == 0.0 || b == 1.0 => b == 1.0,
                    _ => {
                        return Err(bad(
                            g,
                            format!("node `Postprocessor/Slice/begin` is {begin:?}, expected [0, 0, 0|1]"),
                        ))
                    }
                }
            },
            nms: Nms::default(),
            window: [0.0, 0.0, 1.0, 1.0],
        };
        let (nms, classes) = read_nms(g)?;
        Ok(SsdConfig {
            preprocess: read_preprocess(g)?,
            box_specs: read_box_specs(g)?,
            post: PostProcess { nms, ..post },
            classes,
        })
    }
}

fn read_preprocess(g: &TfGraph) -> Result<TfPreprocess> {
    let resizes: Vec<&Node> = g.nodes.iter().filter(|n| n.op.starts_with("Resize")).collect();
    let [resize] = resizes[..] else {
        return Err(bad(g, format!("expected one resize node, found {}", resizes.len())));
    };
    if resize.op != "ResizeBilinear" {
        return Err(bad(g, format!("node `{}` is a {}, only ResizeBilinear is supported", resize.name, resize.op)));
    }
    for flag in ["align_corners", "half_pixel_centers"] {
        if resize.attr_bool(&g.path, flag)? == Some(true) {
            return Err(bad(
                g,
                format!("node `{}` has {flag}=true, only TF1's legacy resize is supported", resize.name),
            ));
        }
    }
    let size = g.values_f64(&input(g, resize, 1)?.name)?;
    let [h, w] = size[..] else {
        return Err(bad(g, format!("node `{}`: size {size:?} is not [height, width]", resize.name)));
    };
    if !(1.0..=16384.0).contains(&h) || !(1.0..=16384.0).contains(&w) {
        return Err(bad(g, format!("node `{}`: size {size:?} out of range", resize.name)));
    }
    Ok(TfPreprocess {
        height: h as usize,
        width: w as usize,
        scale: g.scalar_f32("Preprocessor/mul/x")?,
        offset: g.scalar_f32("Preprocessor/sub/y")?,
    })
}

fn read_box_specs(g: &TfGraph) -> Result<Vec<Vec<BoxSpec>>> {
    const SQRT: &str = "MultipleGridAnchorGenerator/Sqrt";
    let mut sqrts: Vec<(usize, &Node)> =
        g.nodes.iter().filter(|n| n.op == "Sqrt").filter_map(|n| Some((suffix(&n.name, SQRT)?, n))).collect();
    sqrts.sort_by_key(|s| s.0);
    if sqrts.is_empty() || sqrts.iter().enumerate().any(|(i, s)| s.0 != i) {
        return Err(bad(g, format!("no anchor generator: expected nodes `{SQRT}`, `{SQRT}_1`, ...")));
    }
    sqrts
        .into_iter()
        .map(|(_, sqrt)| {
            let ratios = g.f32s(&input(g, sqrt, 0)?.name, None)?;
            let div = g
                .consumers(&sqrt.name)
                .into_iter()
                .find(|n| n.op == "RealDiv" && n.data_inputs().nth(1).map(node_name) == Some(sqrt.name.as_str()))
                .ok_or_else(|| bad(g, format!("no RealDiv divides by `{}` (the anchor scales)", sqrt.name)))?;
            let scales = g.f32s(&input(g, div, 0)?.name, None)?;
            if scales.len() != ratios.len() || scales.is_empty() {
                return Err(bad(
                    g,
                    format!("node `{}`: {} scales for {} aspect ratios", div.name, scales.len(), ratios.len()),
                ));
            }
            Ok(scales.iter().zip(ratios).map(|(&scale, &aspect_ratio)| BoxSpec { scale, aspect_ratio }).collect())
        })
        .collect()
}

fn read_nms(g: &TfGraph) -> Result<(Nms, usize)> {
    let ops = ["NonMaxSuppressionV2", "NonMaxSuppressionV3", "NonMaxSuppressionV4", "NonMaxSuppressionV5"];
    let nodes: Vec<&Node> = g.nodes.iter().filter(|n| ops.contains(&n.op.as_str())).collect();
    let Some(first) = nodes.first() else {
        return Err(bad(g, "no NonMaxSuppression node"));
    };
    let mut per_class = Vec::new();
    let mut settings = None;
    for n in &nodes {
        let max = input(g, n, 2)?;
        let max_value = if max.op == "Minimum" {
            per_class.push(max.name.clone());
            g.scalar_int(&input(g, max, 0)?.name)?
        } else {
            g.scalar_int(&max.name)?
        };
        let iou = g.scalar_f32(&input(g, n, 3)?.name)?;
        let score =
            if n.op == "NonMaxSuppressionV2" { f32::NEG_INFINITY } else { g.scalar_f32(&input(g, n, 4)?.name)? };
        let s = (max_value, iou, score);
        if settings.is_some_and(|t| t != s) {
            return Err(bad(
                g,
                format!("node `{}`: NMS settings {s:?} differ from the other classes' {settings:?}", n.name),
            ));
        }
        settings = Some(s);
    }
    let (max_per_class, iou_threshold, score_threshold) = settings.expect("at least one NMS node");
    // The scope holding the per-class NMS: its other Minimum is the total limit.
    const SCOPE: &str = "MultiClassNonMaxSuppression/";
    let scope = first
        .name
        .rfind(&format!("/{SCOPE}"))
        .map(|i| i + 1)
        .map(|i| &first.name[..i + SCOPE.len()])
        .ok_or_else(|| bad(g, format!("node `{}` is not inside a `{SCOPE}` scope", first.name)))?;
    let totals: Vec<&Node> = g
        .nodes
        .iter()
        .filter(|n| {
            n.op == "Minimum" && suffix(&n.name, &format!("{scope}Minimum")).is_some() && !per_class.contains(&n.name)
        })
        .collect();
    let max_total = match totals[..] {
        [t] => g.scalar_int(&input(g, t, 0)?.name)?,
        _ => return Err(bad(g, format!("expected one total-detections Minimum in `{scope}`, found {}", totals.len()))),
    };
    let count = |v: i64, what: &str| usize::try_from(v).map_err(|_| bad(g, format!("{what} is {v}")));
    let nms = Nms {
        iou_threshold,
        score_threshold,
        max_per_class: count(max_per_class, "max detections per class")?,
        max_total: count(max_total, "max total detections")?,
    };
    Ok((nms, nodes.len()))
}
