//! ONNX export: the plan as an ONNX graph for fp32 inference.
//!
//! A classifier ends in `logits`; a detector (a plan with an SSD head) in its two raw outputs,
//! `box_encodings` and `class_logits` for all anchors (see [`SSD_OUTPUTS`]); the pre- and
//! post-processing (resize, anchors, box decoding, NMS) stay outside the graph.
//!
//! Every convolution of the plan becomes `Conv` with BatchNorm folded in (weights and bias
//! exactly as the engine folds them), ReLU6 becomes `Clip(0, 6)` with its bounds as inputs,
//! residuals `Add`, then `GlobalAveragePool`, `Flatten` and `Gemm`. Padding is always explicit
//! (`pads`), so TF-style 'SAME' layers of the plan keep their asymmetric zeros. Nodes and
//! tensors carry torchvision's names; the model's metadata records the spec, preprocessing and
//! labels (`mnv2.spec`, `mnv2.preprocess`, `mnv2.labels`) for a lossless re-import.

use std::path::Path;

use prost::Message;

use crate::error::{Error, Result};
use crate::fold;
use crate::layout::{hwio_to_oihw, ConvDims};
use crate::model::Model;
use crate::names;
use crate::plan::{Activation, Head, Op};
use crate::weights::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// Opsets the exporter can write (the operators it uses have one form from 11 on).
pub const OPSETS: std::ops::RangeInclusive<i64> = 11..=21;
/// The opset written unless [`Options::opset`] says otherwise.
pub const DEFAULT_OPSET: i64 = 17;

/// How the graph is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// A symbolic batch dimension (`batch`) instead of 1.
    pub dynamic_batch: bool,
    /// The ONNX opset to declare, within [`OPSETS`].
    pub opset: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options { dynamic_batch: false, opset: DEFAULT_OPSET }
    }
}

/// The IR version that goes with an opset (onnx's `helper.VERSION_TABLE`).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

pub(super) fn tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// The attributes of an ONNX `Conv` node for a plan convolution (explicit pads, so TF-style
/// asymmetric padding survives).
pub(super) fn conv_attrs(c: &crate::plan::Conv) -> Vec<AttributeProto> {
    let (k, p) = (c.kernel, c.pad);
    vec![
        ints("dilations", &[c.dilation, c.dilation]),
        int("group", c.groups as i64),
        ints("kernel_shape", &[k, k]),
        ints("pads", &[p.top, p.left, p.bottom, p.right]),
        ints("strides", &[c.stride, c.stride]),
    ]
}

pub(super) fn ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

pub(super) fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

pub(super) fn node(op: &str, name: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    use tensor_shape_proto::dimension::Value;
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v as i64),
                None => Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The fp32 graph: nodes, initializers and each layer's output name. A layer reads the
/// output of its [`crate::plan::Layer::source`] when it has one (the SSD head's taps), else
/// the layer before it's.
fn fp32_graph(model: &Model) -> (Vec<NodeProto>, Vec<TensorProto>, Vec<String>) {
    let plan = &model.plan;
    let mut nodes = Vec::new();
    let mut inits = vec![tensor("relu6_min", &[], &[0.0]), tensor("relu6_max", &[], &[6.0])];
    let mut outputs: Vec<String> = Vec::with_capacity(plan.layers.len());
    let mut block_input = "input".to_string();
    for (i, layer) in plan.layers.iter().enumerate() {
        let mut cur = match layer.source {
            Some(j) => outputs[j].clone(),
            None => outputs.last().cloned().unwrap_or_else(|| "input".into()),
        };
        if plan.block_of(i).is_some_and(|b| b.first_layer() == i) {
            block_input = cur.clone();
        }
        match &layer.op {
            Op::Conv(c) => {
                let f = fold::fold_conv(&model.params, model.spec().bn_eps, layer);
                let (o, ig, k) = (layer.output.c, layer.input.c / c.groups, c.kernel);
                // The fold is HWIO; ONNX wants OIHW.
                let w = hwio_to_oihw(&f.weights, ConvDims { o, i: ig, k });
                let (wn, bn) = (names::weight(layer), names::bias(layer));
                inits.push(tensor(&wn, &[o, ig, k, k], &w));
                inits.push(tensor(&bn, &[o], &f.bias));
                let out = format!("{}.conv", layer.name);
                nodes.push(node("Conv", &layer.name, &[&cur, &wn, &bn], &out, conv_attrs(c)));
                cur = out;
                if c.activation == Activation::Relu6 {
                    let out = format!("{}.relu6", layer.name);
                    nodes.push(node("Clip", &out, &[&cur, "relu6_min", "relu6_max"], &out, vec![]));
                    cur = out;
                }
                if c.activation == Activation::Relu {
                    let out = format!("{}.relu", layer.name);
                    nodes.push(node("Relu", &out, &[&cur], &out, vec![]));
                    cur = out;
                }
                if c.residual {
                    let out = format!("{}.add", layer.name);
                    nodes.push(node("Add", &out, &[&cur, &block_input], &out, vec![]));
                    cur = out;
                }
            }
            Op::GlobalAvgPool => {
                nodes.push(node("GlobalAveragePool", &layer.name, &[&cur], &layer.name, vec![]));
                cur = layer.name.clone();
                if matches!(plan.head, Head::Classifier(_)) {
                    nodes.push(node("Flatten", "flatten", &[&layer.name], "flatten", vec![int("axis", 1)]));
                    cur = "flatten".into();
                }
            }
            Op::Dropout { .. } => {}
            Op::Concat { sources } => {
                let parts: Vec<&str> = sources.iter().map(|&j| outputs[j].as_str()).collect();
                nodes.push(node("Concat", &layer.name, &parts, &layer.name, vec![int("axis", 1)]));
                cur = layer.name.clone();
            }
            Op::Upsample { align_corners } => {
                // Resize to [batch, c, h, w]: the batch (and channels) from the input's shape,
                // the size from the plan, so a dynamic batch works and no scale is rounded.
                let n = &layer.name;
                let (shape, nc, hw, sizes) =
                    (format!("{n}.shape"), format!("{n}.nc"), format!("{n}.hw"), format!("{n}.sizes"));
                let i64s = |name: &str, v: &[i64]| TensorProto {
                    name: Some(name.into()),
                    dims: vec![v.len() as i64],
                    data_type: Some(DataType::Int64 as i32),
                    int64_data: v.to_vec(),
                    ..Default::default()
                };
                inits.push(i64s(&format!("{n}.start"), &[0]));
                inits.push(i64s(&format!("{n}.end"), &[2]));
                inits.push(i64s(&hw, &[layer.output.h as i64, layer.output.w as i64]));
                nodes.push(node("Shape", &shape, &[&cur], &shape, vec![]));
                let (start, end) = (format!("{n}.start"), format!("{n}.end"));
                nodes.push(node("Slice", &nc, &[&shape, &start, &end], &nc, vec![]));
                nodes.push(node("Concat", &sizes, &[&nc, &hw], &sizes, vec![int("axis", 0)]));
                let mode = if *align_corners { "align_corners" } else { "half_pixel" };
                let attrs = vec![string("mode", "linear"), string("coordinate_transformation_mode", mode)];
                nodes.push(node("Resize", n, &[&cur, "", "", &sizes], n, attrs));
                cur = n.clone();
            }
            Op::Linear => {
                let (wn, bn) = (names::weight(layer), names::bias(layer));
                inits.push(tensor(&wn, &[layer.output.c, layer.input.c], model.param(&wn)));
                inits.push(tensor(&bn, &[layer.output.c], model.param(&bn)));
                nodes.push(node("Gemm", &layer.name, &[&cur, &wn, &bn], "logits", vec![int("transB", 1)]));
                cur = "logits".into();
            }
        }
        outputs.push(cur);
    }
    (nodes, inits, outputs)
}

/// Names of the SSD graph's two outputs.
pub const SSD_OUTPUTS: [&str; 2] = ["box_encodings", "class_logits"];

/// An SSD head's raw outputs as TF's exported graphs give them: each predictor's NCHW output
/// transposed to NHWC, reshaped to `[batch, h * w * anchors, k]` (anchors innermost, as the
/// anchor generator orders them) and the maps concatenated: `box_encodings` `[batch, anchors, 4]`
/// and `class_logits` `[batch, anchors, logits]`.
fn ssd_outputs(
    model: &Model,
    nodes: &mut Vec<NodeProto>,
    inits: &mut Vec<TensorProto>,
    outputs: &[String],
    batch: Option<usize>,
) -> Result<Vec<ValueInfoProto>> {
    let plan = &model.plan;
    let ssd = plan.ssd("ONNX export")?;
    let anchors: usize =
        ssd.maps.iter().zip(&ssd.anchors).map(|(&m, a)| plan.layers[m].output.h * plan.layers[m].output.w * a).sum();
    let mut infos = Vec::new();
    for (name, layers, k) in [(SSD_OUTPUTS[0], &ssd.boxes, 4), (SSD_OUTPUTS[1], &ssd.classes, plan.spec.classes)] {
        let shape = format!("{name}.shape");
        // 0 copies the batch dimension (Reshape's allowzero is 0).
        inits.push(TensorProto {
            name: Some(shape.clone()),
            dims: vec![3],
            data_type: Some(DataType::Int64 as i32),
            int64_data: vec![0, -1, k as i64],
            ..Default::default()
        });
        let mut parts = Vec::new();
        for &l in layers {
            let src = &outputs[l];
            let nhwc = format!("{src}.nhwc");
            nodes.push(node("Transpose", &nhwc, &[src], &nhwc, vec![ints("perm", &[0, 2, 3, 1])]));
            let flat = format!("{src}.flat");
            nodes.push(node("Reshape", &flat, &[&nhwc, &shape], &flat, vec![]));
            parts.push(flat);
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        nodes.push(node("Concat", name, &refs, name, vec![int("axis", 1)]));
        infos.push(value_info(name, &[batch, Some(anchors), Some(k)]));
    }
    Ok(infos)
}

/// The model as an ONNX `ModelProto`: fp32, or a QDQ graph for an int8 model (QuantizeLinear /
/// DequantizeLinear pairs around fp32 operators). Public for the tests that edit exported
/// graphs; use [`to_bytes`] or [`write`].
#[doc(hidden)]
pub fn to_proto(model: &Model, opts: Options) -> Result<ModelProto> {
    let ssd = model.plan.ssd("").is_ok();
    let deeplab = model.plan.deeplab("").is_ok();
    if !ssd && !deeplab {
        model.plan.classifier("ONNX export")?;
    } else if model.quant.is_some() {
        return Err(Error::Unsupported("ONNX export of an int8 detector or segmenter".into()));
    }
    if !OPSETS.contains(&opts.opset) {
        return Err(Error::Input(format!(
            "ONNX opset {} is not supported for export ({}..={})",
            opts.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    if deeplab && opts.opset < 13 {
        return Err(Error::Unsupported(format!(
            "ONNX export of a segmenter at opset {} (its Resize needs opset 13 or later)",
            opts.opset
        )));
    }
    let plan = &model.plan;
    let batch = if opts.dynamic_batch { None } else { Some(1) };
    let (nodes, inits, output) = match &model.quant {
        None if ssd => {
            let (mut nodes, mut inits, outputs) = fp32_graph(model);
            let infos = ssd_outputs(model, &mut nodes, &mut inits, &outputs, batch)?;
            (nodes, inits, infos)
        }
        None if deeplab => {
            // The upsampled per-pixel logits, NCHW.
            let (nodes, inits, outputs) = fp32_graph(model);
            let cur = outputs.last().cloned().unwrap_or_else(|| "input".into());
            let o = plan.output();
            (nodes, inits, vec![value_info(&cur, &[batch, Some(o.c), Some(o.h), Some(o.w)])])
        }
        None => {
            let (nodes, inits, outputs) = fp32_graph(model);
            let cur = outputs.last().cloned().unwrap_or_else(|| "input".into());
            (nodes, inits, vec![value_info(&cur, &[batch, Some(plan.output().c)])])
        }
        Some(q) => {
            let (nodes, inits, cur) = super::qdq::graph(model, q, opts.opset)?;
            (nodes, inits, vec![value_info(&cur, &[batch, Some(plan.output().c)])])
        }
    };
    let inp = plan.input();
    let meta = model.metadata();
    let mut metadata_props: Vec<StringStringEntryProto> = ["spec", "preprocess", "labels"]
        .iter()
        .filter_map(|k| {
            meta.get(*k).map(|v| StringStringEntryProto { key: Some(format!("mnv2.{k}")), value: Some(v.clone()) })
        })
        .collect();
    if let Some(q) = &model.quant {
        metadata_props.push(StringStringEntryProto {
            key: Some("mnv2.quantization".into()),
            value: Some(serde_json::to_string(q).expect("the quantisation serialises")),
        });
    }
    Ok(ModelProto {
        ir_version: Some(ir_version(opts.opset)),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opts.opset) }],
        producer_name: Some("mnv2".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(GraphProto {
            name: Some("mobilenetv2".into()),
            node: nodes,
            initializer: inits,
            input: vec![value_info("input", &[batch, Some(3), Some(inp.h), Some(inp.w)])],
            output,
            ..Default::default()
        }),
        metadata_props,
        ..Default::default()
    })
}

/// The model as ONNX bytes (a serialised `ModelProto`): fp32, or a QDQ graph for an int8
/// model.
///
/// ```
/// use mobilenetv2::export::onnx::{self, Options};
/// use mobilenetv2::{Model, Spec};
///
/// let model = Model::init(&Spec::new(0.35, 64), 1, false)?;
/// let bytes = onnx::to_bytes(&model, Options { dynamic_batch: true, ..Options::default() })?;
/// // Read back by the project's own ONNX importer: the same network.
/// let back = Model::from_file(mobilenetv2::weights::onnx::read("m.onnx".as_ref(), &bytes)?)?;
/// assert_eq!(back.spec(), model.spec());
/// # Ok::<(), mobilenetv2::Error>(())
/// ```
pub fn to_bytes(model: &Model, opts: Options) -> Result<Vec<u8>> {
    Ok(to_proto(model, opts)?.encode_to_vec())
}

/// Writes the model as an ONNX file, atomically.
pub fn write(model: &Model, path: &Path, opts: Options) -> Result<()> {
    crate::fsutil::write_atomic(path, &to_bytes(model, opts)?)
}
