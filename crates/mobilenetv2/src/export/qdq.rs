//! ONNX export of an int8 model as a QDQ graph: what `mnv2`'s int8 engine computes, written
//! with `QuantizeLinear`/`DequantizeLinear` around float operators, which ONNX Runtime fuses
//! into its integer kernels (`QLinearConv`, `QGemm`).
//!
//! - Weights: `DequantizeLinear` (axis 0) of the int8 values and per-output-channel scales the
//!   engine itself runs (BatchNorm folded, symmetric, zero points 0).
//! - Activations: every tensor the engine holds as u8 (the stem's, expand and depthwise
//!   outputs, the block outputs, the pooled features) is `QuantizeLinear` then
//!   `DequantizeLinear` with the [`QuantSpec`]'s scale and zero point, as uint8.
//! - Biases: int32 with scale `input_scale * weight_scale` (`DequantizeLinear`, axis 0) where
//!   the convolution reads and writes quantised tensors (ONNX Runtime fuses such a group into
//!   `QLinearConv` only with an int32 bias); float where the engine computes in float.
//! - ReLU6 is folded into the quantisation where it is implied (zero point 0 and
//!   `255 * scale <= 6`: the u8 range clamps exactly as ReLU6 then quantisation do), else
//!   `Clip(0, 6)` stays.
//!
//! - The image: `QuantizeLinear` then `DequantizeLinear` on the graph's input with the
//!   quantisation the [`QuantSpec`] records, so the stem is one integer kernel too. A model
//!   quantised before that was recorded has none: its stem reads the float image.
//!
//! Two places compute in float in the engine, and so in the graph: a projection with a
//! residual adds the block's input to its real-valued output before quantising the sum once,
//! and the last 1x1 conv's ReLU6 outputs are pooled unquantised. The logits are float.

use super::onnx::{conv_attrs, int, node, tensor};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::names;
use crate::plan::{Activation, Op};
use crate::qscheme::{relu6_implied, ActQuant, QuantSpec};
use crate::weights::onnx::proto::{tensor_proto::DataType, NodeProto, TensorProto};
use crate::weights::{Data, Tensor};

/// The first opset with per-axis `DequantizeLinear`.
pub(super) const MIN_OPSET: i64 = 13;

fn raw(name: &str, dims: &[usize], dtype: DataType, bytes: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype as i32),
        raw_data: Some(bytes),
        ..Default::default()
    }
}

struct Graph {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
}

impl Graph {
    fn node(&mut self, op: &str, name: &str, inputs: &[&str], output: &str) {
        self.nodes.push(node(op, name, inputs, output, vec![]));
    }

    /// `QuantizeLinear` then `DequantizeLinear` of `x` with `q`; returns the dequantised name.
    fn qdq(&mut self, x: &str, prefix: &str, q: ActQuant) -> String {
        let (s, z) = (format!("{prefix}.scale"), format!("{prefix}.zero_point"));
        self.inits.push(tensor(&s, &[], &[q.scale]));
        self.inits.push(raw(&z, &[], DataType::Uint8, vec![q.zero as u8]));
        let (qn, dqn) = (format!("{prefix}.q"), format!("{prefix}.dq"));
        self.node("QuantizeLinear", &qn, &[x, &s, &z], &qn);
        self.node("DequantizeLinear", &dqn, &[&qn, &s, &z], &dqn);
        dqn
    }

    /// Per-output-channel int8 weights (first dimension), dequantised as `{layer}.weight`.
    fn weight(&mut self, layer: &str, dims: &[usize], q: &[i8], scales: &[f32]) -> String {
        let (wq, ws, wz, w) = (
            format!("{layer}.weight_quantized"),
            format!("{layer}.weight_scale"),
            format!("{layer}.weight_zero_point"),
            format!("{layer}.weight"),
        );
        self.inits.push(raw(&wq, dims, DataType::Int8, q.iter().map(|&v| v as u8).collect()));
        self.inits.push(tensor(&ws, &[dims[0]], scales));
        self.inits.push(raw(&wz, &[dims[0]], DataType::Int8, vec![0; dims[0]]));
        self.nodes.push(node("DequantizeLinear", &format!("{w}.dq"), &[&wq, &ws, &wz], &w, vec![int("axis", 0)]));
        w
    }

    /// The bias: int32 on the grid `input_scale * weight_scale` when the layer reads a
    /// quantised input (dequantised as `{layer}.bias`), else float.
    fn bias(&mut self, layer: &str, bias: &[f32], input: Option<ActQuant>, w_scales: &[f32]) -> String {
        let b = format!("{layer}.bias");
        let Some(input) = input else {
            self.inits.push(tensor(&b, &[bias.len()], bias));
            return b;
        };
        let scales: Vec<f32> = w_scales.iter().map(|&s| input.scale * s).collect();
        let q: Vec<i32> = bias
            .iter()
            .zip(&scales)
            .map(|(&v, &s)| (v as f64 / s as f64).round_ties_even().clamp(i32::MIN as f64, i32::MAX as f64) as i32)
            .collect();
        let (bq, bs, bz) = (format!("{b}_quantized"), format!("{b}_scale"), format!("{b}_zero_point"));
        let n = bias.len();
        self.inits.push(raw(&bq, &[n], DataType::Int32, q.iter().flat_map(|v| v.to_le_bytes()).collect()));
        self.inits.push(tensor(&bs, &[n], &scales));
        self.inits.push(raw(&bz, &[n], DataType::Int32, vec![0; 4 * n]));
        self.nodes.push(node("DequantizeLinear", &format!("{b}.dq"), &[&bq, &bs, &bz], &b, vec![int("axis", 0)]));
        b
    }
}

/// The quantisation of each plan layer's input and output, as the int8 engine holds them
/// (`None`: float).
pub(crate) fn layer_quant(model: &Model, q: &QuantSpec) -> (Vec<Option<ActQuant>>, Vec<Option<ActQuant>>) {
    let plan = &model.plan;
    let n = plan.layers.len();
    let (mut input, mut output) = (vec![None; n], vec![None; n]);
    input[0] = q.input;
    output[0] = Some(q.blocks[0].hidden);
    let mut prev = q.blocks[0].hidden;
    for (b, bq) in plan.blocks.iter().zip(&q.blocks) {
        if let Some(e) = b.expand {
            input[e] = Some(prev);
            output[e] = Some(bq.hidden);
        }
        input[b.depthwise] = Some(if b.expand.is_some() { bq.hidden } else { prev });
        output[b.depthwise] = Some(bq.dw);
        input[b.project] = Some(bq.dw);
        output[b.project] = Some(bq.output);
        prev = bq.output;
    }
    for (i, l) in plan.layers.iter().enumerate() {
        match l.op {
            Op::Conv(_) if i == plan.last_conv => input[i] = Some(prev),
            Op::Linear => input[i] = Some(q.pooled),
            _ => {}
        }
    }
    (input, output)
}

/// The QDQ graph of an int8 model: nodes, initializers and the output's name.
pub(super) fn graph(model: &Model, q: &QuantSpec, opset: i64) -> Result<(Vec<NodeProto>, Vec<TensorProto>, String)> {
    if opset < MIN_OPSET {
        return Err(Error::Input(format!(
            "an int8 model exports as a QDQ graph, which needs ONNX opset {MIN_OPSET} or later (per-channel DequantizeLinear), not {opset}"
        )));
    }
    let plan = &model.plan;
    plan.classifier("int8 ONNX export")?;
    if q.blocks.len() != plan.blocks.len() {
        return Err(Error::InvalidSpec(format!(
            "the quantisation has {} blocks, the network {}",
            q.blocks.len(),
            plan.blocks.len()
        )));
    }
    let tensors = crate::weights::int8::quantized_tensors(&model.plan, &model.params);
    let get = |name: &str| -> (&[usize], &Data) {
        let t: &Tensor = tensors.get(name).unwrap_or_else(|| panic!("quantized_tensors has `{name}`"));
        (&t.shape, &t.data)
    };
    let floats = |name: &str| match get(name).1 {
        Data::F32(v) => v.clone(),
        _ => unreachable!("`{name}` is float"),
    };
    let (in_q, out_q) = layer_quant(model, q);
    let mut g =
        Graph { nodes: Vec::new(), inits: vec![tensor("relu6_min", &[], &[0.0]), tensor("relu6_max", &[], &[6.0])] };
    let mut cur = match q.input {
        Some(iq) => g.qdq("input", "input", iq),
        None => "input".to_string(),
    };
    let mut block_input = cur.clone();
    for (i, layer) in plan.layers.iter().enumerate() {
        if plan.block_of(i).is_some_and(|b| b.first_layer() == i) {
            block_input = cur.clone();
        }
        let name = &layer.name;
        let weight = |g: &mut Graph| {
            let (dims, data) = get(&names::weight(layer));
            let Data::I8(wq) = data else { unreachable!("int8 weights") };
            let scales = floats(&names::weight_scale(layer));
            let w = g.weight(name, dims, wq, &scales);
            (w, scales)
        };
        match &layer.op {
            Op::Conv(c) => {
                let (w, scales) = weight(&mut g);
                // A group of quantised input, weights and output, nothing in between: one
                // integer kernel. Otherwise the convolution computes in float, as in the engine.
                let fused = in_q[i].is_some() && out_q[i].is_some() && !c.residual;
                let b = g.bias(name, &floats(&names::bias(layer)), in_q[i].filter(|_| fused), &scales);
                let out = format!("{name}.conv");
                g.nodes.push(node("Conv", name, &[&cur, &w, &b], &out, conv_attrs(c)));
                cur = out;
                let folded = fused && c.activation == Activation::Relu6 && out_q[i].is_some_and(relu6_implied);
                if c.activation == Activation::Relu6 && !folded {
                    let out = format!("{name}.relu6");
                    g.node("Clip", &out, &[&cur, "relu6_min", "relu6_max"], &out);
                    cur = out;
                }
                if c.residual {
                    let out = format!("{name}.add");
                    g.node("Add", &out, &[&cur, &block_input], &out);
                    cur = out;
                }
                if let Some(oq) = out_q[i] {
                    cur = g.qdq(&cur, &format!("{name}.output"), oq);
                }
            }
            Op::GlobalAvgPool => {
                g.node("GlobalAveragePool", name, &[&cur], name);
                g.nodes.push(node("Flatten", "flatten", &[name], "flatten", vec![int("axis", 1)]));
                cur = g.qdq("flatten", "pooled", q.pooled);
            }
            Op::Dropout { .. } => {}
            Op::Concat { .. } | Op::Upsample { .. } => unreachable!("checked for a classifier above"),
            Op::Linear => {
                let (w, scales) = weight(&mut g);
                let b = g.bias(name, &floats(&names::bias(layer)), in_q[i], &scales);
                g.nodes.push(node("Gemm", name, &[&cur, &w, &b], "logits", vec![int("transB", 1)]));
                cur = "logits".into();
            }
        }
    }
    Ok((g.nodes, g.inits, cur))
}
