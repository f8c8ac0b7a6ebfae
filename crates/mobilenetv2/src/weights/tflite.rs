//! TFLite import: MobileNetV2 `.tflite` flatbuffers, fp32 and full-integer (int8/uint8).
//!
//! A hand-written reader of the few flatbuffer tables the graph needs (Model, OperatorCode,
//! SubGraph, Tensor, QuantizationParameters, Operator, Buffer and the options of the
//! operators below), after the TFLite schema (`schema.fbs`, Apache-2.0). Every offset is
//! bounds-checked: a corrupt file gives an error, never a panic.
//!
//! The graph is walked like the ONNX one: CONV_2D and DEPTHWISE_CONV_2D open a unit (BatchNorm
//! is already folded into their bias; a fused RELU6 is the unit's activation), PAD before a
//! VALID convolution becomes its padding, ADD is a residual, MEAN (or AVERAGE_POOL_2D) over H
//! and W, RESHAPE/SQUEEZE and FULLY_CONNECTED make the classifier; QUANTIZE, DEQUANTIZE and a
//! final SOFTMAX pass through. Quantized weights are dequantized (`scale * (q - zero_point)`,
//! per channel where the file says so). A full-integer model (every activation quantised)
//! then maps onto the project's int8 scheme and runs on the int8 engine; a model that
//! quantises only its weights runs in float.

use std::collections::HashMap;
use std::path::Path;

use super::graph::{self, ActQ, ConvPad, FitOptions, Head, Imported, NetQ, Network, Unit, UnitQ};
use super::{f16_to_f32, TensorFile};
use crate::error::{Error, Result};
use crate::layout::{hwio_to_oihw, ohwi_to_oihw, ConvDims};
use crate::preprocess::Preprocess;
use crate::spec::Padding;

/// Does the file carry TFLite's flatbuffer identifier?
pub fn sniff(head: &[u8]) -> bool {
    head.len() >= 8 && &head[4..8] == b"TFL3"
}

/// A flatbuffer table: its position and its vtable.
#[derive(Clone, Copy)]
struct Table<'a> {
    b: &'a [u8],
    pos: usize,
    vt: usize,
    vt_len: usize,
}

type R<T> = std::result::Result<T, String>;

fn rd<const N: usize>(b: &[u8], at: usize) -> R<[u8; N]> {
    at.checked_add(N)
        .and_then(|e| b.get(at..e))
        .map(|s| s.try_into().expect("N bytes"))
        .ok_or_else(|| format!("offset {at} is past the end of the file"))
}

fn u32_at(b: &[u8], at: usize) -> R<usize> {
    Ok(u32::from_le_bytes(rd::<4>(b, at)?) as usize)
}

impl<'a> Table<'a> {
    fn at(b: &'a [u8], pos: usize) -> R<Table<'a>> {
        let soff = i32::from_le_bytes(rd::<4>(b, pos)?) as i64;
        let vt = usize::try_from(pos as i64 - soff).map_err(|_| "a vtable before the start of the file".to_string())?;
        let vt_len = u16::from_le_bytes(rd::<2>(b, vt)?) as usize;
        if vt_len < 4 || !vt_len.is_multiple_of(2) {
            return Err(format!("a corrupt vtable at {vt}"));
        }
        Ok(Table { b, pos, vt, vt_len })
    }

    /// Position of field `i`, if present.
    fn field(&self, i: usize) -> R<Option<usize>> {
        let e = 4 + 2 * i;
        if e + 2 > self.vt_len {
            return Ok(None);
        }
        let off = u16::from_le_bytes(rd::<2>(self.b, self.vt + e)?) as usize;
        Ok((off != 0).then_some(self.pos + off))
    }

    fn scalar<const N: usize>(&self, i: usize) -> R<Option<[u8; N]>> {
        self.field(i)?.map(|p| rd::<N>(self.b, p)).transpose()
    }
    fn u8(&self, i: usize, d: u8) -> R<u8> {
        Ok(self.scalar::<1>(i)?.map_or(d, |b| b[0]))
    }
    fn i32(&self, i: usize, d: i32) -> R<i32> {
        Ok(self.scalar::<4>(i)?.map_or(d, i32::from_le_bytes))
    }
    fn u64(&self, i: usize) -> R<u64> {
        Ok(self.scalar::<8>(i)?.map_or(0, u64::from_le_bytes))
    }

    fn target(&self, i: usize) -> R<Option<usize>> {
        match self.field(i)? {
            None => Ok(None),
            Some(p) => Ok(Some(p.checked_add(u32_at(self.b, p)?).ok_or("offset overflow")?)),
        }
    }

    fn table(&self, i: usize) -> R<Option<Table<'a>>> {
        self.target(i)?.map(|p| Table::at(self.b, p)).transpose()
    }

    /// A vector's element count and the position of its first element.
    fn vector(&self, i: usize, elem: usize) -> R<(usize, usize)> {
        let Some(p) = self.target(i)? else { return Ok((0, 0)) };
        let n = u32_at(self.b, p)?;
        let end = n.checked_mul(elem).and_then(|s| s.checked_add(p + 4));
        if end.is_none_or(|e| e > self.b.len()) {
            return Err(format!("a vector of {n} elements at {p} runs past the end of the file"));
        }
        Ok((n, p + 4))
    }

    fn tables(&self, i: usize) -> R<Vec<Table<'a>>> {
        let (n, p) = self.vector(i, 4)?;
        (0..n).map(|k| Table::at(self.b, p + 4 * k + u32_at(self.b, p + 4 * k)?)).collect()
    }

    fn bytes(&self, i: usize) -> R<&'a [u8]> {
        let (n, p) = self.vector(i, 1)?;
        Ok(&self.b[p..p + n])
    }

    fn ints(&self, i: usize) -> R<Vec<i32>> {
        let (n, p) = self.vector(i, 4)?;
        (0..n).map(|k| Ok(i32::from_le_bytes(rd::<4>(self.b, p + 4 * k)?))).collect()
    }

    fn floats(&self, i: usize) -> R<Vec<f32>> {
        Ok(self.ints(i)?.into_iter().map(|v| f32::from_bits(v as u32)).collect())
    }

    fn longs(&self, i: usize) -> R<Vec<i64>> {
        let (n, p) = self.vector(i, 8)?;
        (0..n).map(|k| Ok(i64::from_le_bytes(rd::<8>(self.b, p + 8 * k)?))).collect()
    }

    fn string(&self, i: usize) -> R<String> {
        Ok(String::from_utf8_lossy(self.bytes(i)?).into_owned())
    }
}

// Builtin operator codes (schema.fbs `BuiltinOperator`).
const ADD: i32 = 0;
const AVERAGE_POOL_2D: i32 = 1;
const CONV_2D: i32 = 3;
const DEPTHWISE_CONV_2D: i32 = 4;
const DEQUANTIZE: i32 = 6;
const FULLY_CONNECTED: i32 = 9;
const RELU6: i32 = 21;
const RESHAPE: i32 = 22;
const SOFTMAX: i32 = 25;
const PAD: i32 = 34;
const MEAN: i32 = 40;
const SQUEEZE: i32 = 43;
const QUANTIZE: i32 = 114;

fn op_name(code: i32) -> String {
    match code {
        ADD => "ADD".into(),
        AVERAGE_POOL_2D => "AVERAGE_POOL_2D".into(),
        CONV_2D => "CONV_2D".into(),
        DEPTHWISE_CONV_2D => "DEPTHWISE_CONV_2D".into(),
        DEQUANTIZE => "DEQUANTIZE".into(),
        FULLY_CONNECTED => "FULLY_CONNECTED".into(),
        RELU6 => "RELU6".into(),
        RESHAPE => "RESHAPE".into(),
        SOFTMAX => "SOFTMAX".into(),
        PAD => "PAD".into(),
        MEAN => "MEAN".into(),
        SQUEEZE => "SQUEEZE".into(),
        QUANTIZE => "QUANTIZE".into(),
        c => format!("builtin operator {c}"),
    }
}

/// A tensor of the subgraph: shape, name, constant values (dequantized) if it has data, and
/// its quantisation.
struct Tens {
    shape: Vec<usize>,
    name: String,
    data: Option<Vec<f32>>,
    quantized: bool,
    /// Element type (schema.fbs `TensorType`).
    ty: u8,
    /// Per-tensor (one value) or per-channel scales and zero points.
    scale: Vec<f32>,
    zero: Vec<i64>,
    /// The integers of an int8 quantised constant.
    ints: Option<Vec<i8>>,
}

impl Tens {
    /// The quantisation of an activation tensor in the int8 engine's terms (u8; int8 tensors
    /// map by adding 128 to the zero point).
    /// None for a float tensor; an error for a scale or zero point no u8 tensor can have.
    fn act_q(&self, at: &str) -> R<Option<ActQ>> {
        let Some(&scale) = self.scale.first() else { return Ok(None) };
        let zero = self.zero.first().copied().unwrap_or(0);
        let shifted = zero.checked_add(if self.ty == INT8 { 128 } else { 0 });
        let zero = match shifted.and_then(|z| i32::try_from(z).ok()) {
            Some(z) if (0..=255).contains(&z) && scale.is_finite() && scale > 0.0 => z,
            _ => {
                return Err(format!(
                    "tensor `{}` has an invalid quantisation: scale {scale}, zero point {zero}",
                    self.name
                ))
            }
        };
        Ok(Some(ActQ { scale, zero, at: format!("{at} `{}`", self.name) }))
    }
}

// Tensor types (schema.fbs `TensorType`).
const UINT8: u8 = 3;
const INT8: u8 = 9;

/// One tensor, its constant data decoded. `budget` is the number of values all tensors may
/// still decode; this tensor's are charged before any is allocated, so buffers shared by many
/// tensors cannot multiply memory.
fn tensor(t: &Table, buffers: &[Table], b: &[u8], budget: &mut usize) -> R<Tens> {
    let shape: Vec<usize> = t
        .ints(0)?
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<R<_>>()?;
    let name = t.string(3)?;
    let ty = t.u8(1, 0)?;
    let buf = u32::from_le_bytes(t.scalar::<4>(2)?.unwrap_or([0; 4])) as usize;
    let raw: &[u8] = match buffers.get(buf) {
        Some(bt) if buf > 0 => {
            let data = bt.bytes(0)?;
            let (off, size) = (bt.u64(1)?, bt.u64(2)?);
            if data.is_empty() && off > 1 {
                let (o, s) = (off as usize, size as usize);
                o.checked_add(s)
                    .and_then(|e| b.get(o..e))
                    .ok_or_else(|| format!("tensor `{name}`: data past the end"))?
            } else {
                data
            }
        }
        _ => &[],
    };
    let q = t.table(4)?;
    let (scale, zero, qdim) = match &q {
        Some(q) => (q.floats(2)?, q.longs(3)?, q.i32(6, 0)?),
        None => (vec![], vec![], 0),
    };
    let quantized = !scale.is_empty();
    // Zero points are codes of the tensor's own type.
    let codes: Option<(i64, i64)> = match ty {
        3 => Some((0, 255)),
        9 => Some((-128, 127)),
        7 => Some((i16::MIN.into(), i16::MAX.into())),
        2 => Some((i32::MIN.into(), i32::MAX.into())),
        _ => None,
    };
    if let Some((lo, hi)) = codes {
        if let Some(&z) = zero.iter().find(|&&z| z < lo || z > hi) {
            return Err(format!("tensor `{name}` has zero point {z}, outside its element type's {lo}..={hi}"));
        }
    }
    if raw.is_empty() {
        return Ok(Tens { shape, name, data: None, quantized, ty, scale, zero, ints: None });
    }
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("implausible shape")?;
    let size = match ty {
        0 | 2 => 4,
        4 | 10 => 8,
        1 | 7 => 2,
        3 | 9 => 1,
        _ => return Err(format!("tensor `{name}` has element type {ty}, which this reader does not handle")),
    };
    let bytes = n.checked_mul(size).ok_or("implausible shape")?;
    if raw.len() != bytes {
        return Err(format!("tensor `{name}` has {} bytes of data, its shape {shape:?} needs {bytes}", raw.len()));
    }
    *budget = budget.checked_sub(n).ok_or("its constants hold more values than the file has bytes")?;
    // The integer code of element `i` of an integer tensor, read in place: no widened copy of
    // the tensor is ever made (an int8 file would otherwise take 8 more bytes per byte).
    let code = |i: usize| -> i64 {
        match ty {
            2 => i32::from_le_bytes(raw[4 * i..4 * i + 4].try_into().expect("4")).into(),
            4 => i64::from_le_bytes(raw[8 * i..8 * i + 8].try_into().expect("8")),
            7 => i16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]).into(),
            3 => raw[i].into(),
            _ => (raw[i] as i8).into(),
        }
    };
    let values: Vec<f32> = match ty {
        0 => raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(),
        10 => raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8")) as f32).collect(),
        1 => raw.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        _ if quantized => {
            // Per channel along `quantized_dimension`, or per tensor.
            let qd = usize::try_from(qdim).ok().filter(|&d| d < shape.len().max(1)).ok_or("bad quantized_dimension")?;
            let channels = if scale.len() > 1 { shape.get(qd).copied().unwrap_or(1) } else { 1 };
            if scale.len() != channels || (!zero.is_empty() && zero.len() != scale.len()) {
                return Err(format!("tensor `{name}`: {} scales for {channels} channels", scale.len()));
            }
            let inner: usize = shape.get(qd + 1..).map_or(1, |s| s.iter().product());
            (0..n)
                .map(|i| {
                    let c = if channels > 1 { (i / inner.max(1)) % channels } else { 0 };
                    let z = zero.get(c).copied().unwrap_or(0);
                    (scale[c] as f64 * (code(i) as f64 - z as f64)) as f32
                })
                .collect()
        }
        _ => (0..n).map(|i| code(i) as f32).collect(),
    };
    // Only symmetric int8 weights are kept as integers (the int8 engine can take them as they
    // are); one byte each.
    let ints = (quantized && ty == INT8).then(|| raw.iter().map(|&v| v as i8).collect());
    Ok(Tens { shape, name, data: Some(values), quantized, ty, scale, zero, ints })
}

/// The classifier: operator, `[out, in]`, weights, bias.
type Fc = (String, [usize; 2], Vec<f32>, Vec<f32>);

#[derive(Clone, Debug)]
enum Val {
    Input,
    Unit(usize),
    /// A PAD of a value: the value's id for [`graph`] and the pads (top, left, bottom, right).
    Padded(usize, [usize; 4]),
    Pooled,
    Flat,
    Logits,
}

/// Reads a MobileNetV2 `.tflite` model into torchvision-named tensors.
pub fn read(path: &Path, bytes: &[u8]) -> Result<TensorFile> {
    read_inner(path, bytes).map_err(|e| match e {
        Walk::Format(d) => Error::format(path, "TFLite", d),
        Walk::Misfit(d) => Error::NoConfig { path: path.into(), detail: d },
        Walk::Other(e) => e,
    })
}

enum Walk {
    Format(String),
    Misfit(String),
    Other(Error),
}

impl From<String> for Walk {
    fn from(s: String) -> Walk {
        Walk::Format(s)
    }
}

impl From<&str> for Walk {
    fn from(s: &str) -> Walk {
        Walk::Format(s.into())
    }
}

type W<T> = std::result::Result<T, Walk>;

/// The graph walk's state: the subgraph's tensors, what each value is to the network, and the
/// network built so far.
struct Walker<'t> {
    tensors: &'t [Tens],
    /// Values decoded or copied so far may not exceed this (a hostile file could make many
    /// operators share one big constant).
    budget: usize,
    vals: HashMap<i32, Val>,
    units: Vec<Unit>,
    netq: NetQ,
    pool: Option<(usize, String)>,
    fc: Option<Fc>,
}

/// One operator as the walk sees it.
struct OpAt<'a> {
    code: i32,
    label: String,
    ins: Vec<i32>,
    out: i32,
    opts: Option<Table<'a>>,
}

impl OpAt<'_> {
    fn misfit(&self, d: impl std::fmt::Display) -> Walk {
        Walk::Misfit(format!("{} does not fit a MobileNetV2: {d}", self.label))
    }

    /// Whether the fused activation in options field `field` is ReLU6 (none is false).
    fn fused(&self, field: usize) -> W<bool> {
        match self.opts.map(|o| o.u8(field, 0)).transpose()?.unwrap_or(0) {
            0 => Ok(false),
            3 => Ok(true),
            a => Err(self.misfit(format!("fused activation {a} is not ReLU6"))),
        }
    }
}

impl<'t> Walker<'t> {
    fn tens(&self, i: i32) -> R<&'t Tens> {
        let tensors = self.tensors;
        usize::try_from(i).ok().and_then(|i| tensors.get(i)).ok_or_else(|| format!("tensor index {i} out of range"))
    }

    fn spend(&mut self, n: usize) -> R<()> {
        self.budget = self.budget.checked_sub(n).ok_or("its constants hold more values than the file has bytes")?;
        Ok(())
    }

    /// What input `i` of `op` is to the network.
    fn val(&self, op: &OpAt, i: usize) -> W<Val> {
        let t = *op.ins.get(i).ok_or_else(|| op.misfit(format!("input {i} is missing")))?;
        self.vals.get(&t).cloned().ok_or_else(|| {
            op.misfit(format!("its input `{}` is not produced before it", self.tens(t).map_or("?", |t| &t.name)))
        })
    }

    /// Input `i` of `op` as a constant, charged to the budget.
    fn konst(&mut self, op: &OpAt, i: usize) -> W<(&'t Tens, &'t Vec<f32>)> {
        let t = self.tens(*op.ins.get(i).ok_or_else(|| op.misfit(format!("input {i} is missing")))?)?;
        self.spend(t.data.as_ref().map_or(0, Vec::len))?;
        t.data.as_ref().map(|d| (t, d)).ok_or_else(|| op.misfit(format!("`{}` is not a constant", t.name)))
    }

    /// The quantisation of `op`'s output tensor, if any.
    fn out_q(&self, op: &OpAt) -> W<Option<ActQ>> {
        Ok(self.tens(op.out)?.act_q(&op.label)?)
    }

    /// One operator: dispatched by code to the methods below; returns what its output is.
    fn op(&mut self, op: &OpAt) -> W<Val> {
        match op.code {
            QUANTIZE | DEQUANTIZE => self.quantize(op),
            CONV_2D | DEPTHWISE_CONV_2D => self.conv(op),
            PAD => self.pad(op),
            RELU6 => self.relu6(op),
            ADD => self.add(op),
            MEAN | AVERAGE_POOL_2D => self.pool(op),
            RESHAPE | SQUEEZE => self.flatten(op),
            FULLY_CONNECTED => self.fully_connected(op),
            SOFTMAX => match self.val(op, 0)? {
                Val::Logits => Ok(Val::Logits),
                _ => Err(op.misfit("a SOFTMAX that is not on the logits")),
            },
            _ => Err(op.misfit("this operator has no place in a MobileNetV2")),
        }
    }

    /// QUANTIZE (the float image quantised, or an activation requantised) and DEQUANTIZE:
    /// the value passes through.
    fn quantize(&mut self, op: &OpAt) -> W<Val> {
        let v = self.val(op, 0)?;
        if op.code == QUANTIZE {
            let q = self.out_q(op)?;
            match v {
                Val::Input => self.netq.input = q,
                Val::Unit(u) => self.units[u].q.output = q,
                Val::Pooled | Val::Flat => self.netq.pooled.extend(q),
                _ => {}
            }
        }
        Ok(v)
    }

    /// CONV_2D and DEPTHWISE_CONV_2D: a new convolution unit.
    fn conv(&mut self, op: &OpAt) -> W<Val> {
        let dw = op.code == DEPTHWISE_CONV_2D;
        let (x, extra) = match self.val(op, 0)? {
            Val::Input => (0, [0; 4]),
            Val::Unit(u) => (u + 1, [0; 4]),
            Val::Padded(x, p) => (x, p),
            _ => return Err(op.misfit("its input is not the image or a convolution's output")),
        };
        let (wt, w) = self.konst(op, 1)?;
        let [a, kh, kw, c] = wt.shape[..] else {
            return Err(op.misfit(format!("a filter of shape {:?}", wt.shape)));
        };
        let bias = match op.ins.get(2) {
            Some(&b) if b >= 0 => Some(self.konst(op, 2)?.1.clone()),
            _ => None,
        };
        let o = op.opts.ok_or_else(|| op.misfit("no options"))?;
        let (padding, sw, sh) = (o.u8(0, 0)?, o.i32(1, 1)?, o.i32(2, 1)?);
        let (act, dwf, dhf) = if dw { (4, 5, 6) } else { (3, 4, 5) };
        let relu6 = op.fused(act)?;
        let (dil_w, dil_h) = (o.i32(dwf, 1)?, o.i32(dhf, 1)?);
        let pos = |v: i32, what: &str| {
            usize::try_from(v).ok().filter(|&v| v > 0).ok_or_else(|| op.misfit(format!("{what} {v}")))
        };
        let stride = [pos(sh, "stride")?, pos(sw, "stride")?];
        let dilation = [pos(dil_h, "dilation")?, pos(dil_w, "dilation")?];
        let pad = match (padding, extra) {
            (1, p) => ConvPad::Explicit(p),
            (0, [0, 0, 0, 0]) => ConvPad::Same,
            _ => return Err(op.misfit("SAME padding after a PAD")),
        };
        if kh != kw {
            return Err(op.misfit(format!("a {kh}x{kw} filter (only square ones)")));
        }
        // TFLite filters: OHWI, depthwise 1HWC (which is HWIO with one input). To OIHW.
        let (shape, groups) = if dw {
            if a != 1 {
                return Err(op.misfit(format!("a depthwise filter of shape {:?}", wt.shape)));
            }
            ([c, 1, kh, kw], c)
        } else {
            ([a, c, kh, kw], 1)
        };
        let dims = ConvDims { o: shape[0], i: shape[1], k: kh };
        let to_oihw = |v: &[f32]| if dw { hwio_to_oihw(v, dims) } else { ohwi_to_oihw(v, dims) };
        let oihw = to_oihw(w);
        // The integers of symmetric int8 weights, per output channel or per tensor.
        let per_channel = wt.scale.len() == dims.o && wt.scale.len() > 1;
        let weights = match &wt.ints {
            Some(q) if wt.ty == INT8 && wt.zero.iter().all(|&z| z == 0) && (per_channel || wt.scale.len() == 1) => {
                Some(if dw { hwio_to_oihw(q, dims) } else { ohwi_to_oihw(q, dims) })
            }
            _ => None,
        };
        let oq = self.out_q(op)?;
        let q = if relu6 {
            UnitQ { output: oq, weights, ..UnitQ::default() }
        } else {
            UnitQ { conv: oq.clone(), output: oq, weights }
        };
        self.units.push(Unit {
            node: op.label.clone(),
            input: x,
            weight: oihw,
            shape,
            bias,
            bn: None,
            stride,
            dilation,
            pad,
            groups,
            relu6,
            residual: None,
            q,
        });
        Ok(Val::Unit(self.units.len() - 1))
    }

    /// PAD of the image or a unit's output: becomes the next convolution's padding.
    fn pad(&mut self, op: &OpAt) -> W<Val> {
        let x = match self.val(op, 0)? {
            Val::Input => 0,
            Val::Unit(u) => u + 1,
            _ => return Err(op.misfit("it does not pad the image or a convolution's output")),
        };
        let (_, p) = self.konst(op, 1)?;
        let p: Vec<usize> = p.iter().map(|&v| v as usize).collect();
        match p[..] {
            [0, 0, t, b, l, r, 0, 0] => Ok(Val::Padded(x, [t, l, b, r])),
            _ => Err(op.misfit(format!("paddings {p:?} (only height and width may be padded)"))),
        }
    }

    /// A separate RELU6: the unit's activation.
    fn relu6(&mut self, op: &OpAt) -> W<Val> {
        match self.val(op, 0)? {
            Val::Unit(u) if !self.units[u].relu6 && self.units[u].residual.is_none() => {
                self.units[u].relu6 = true;
                self.units[u].q.output = self.out_q(op)?;
                Ok(Val::Unit(u))
            }
            _ => Err(op.misfit("a ReLU6 in a place a MobileNetV2 has none")),
        }
    }

    /// ADD of two units' outputs: the later unit's residual.
    fn add(&mut self, op: &OpAt) -> W<Val> {
        match (self.val(op, 0)?, self.val(op, 1)?) {
            (Val::Unit(i), Val::Unit(j)) => {
                let (u, other) = if i > j { (i, j) } else { (j, i) };
                if self.units[u].residual.is_some() {
                    return Err(op.misfit("a second residual Add"));
                }
                if op.fused(0)? {
                    return Err(op.misfit("a ReLU6 after a residual Add"));
                }
                self.units[u].residual = Some((other + 1, op.label.clone()));
                self.units[u].q.output = self.out_q(op)?;
                Ok(Val::Unit(u))
            }
            _ => Err(op.misfit("an ADD that is not a residual")),
        }
    }

    /// MEAN over height and width, or AVERAGE_POOL_2D: the pooled features.
    fn pool(&mut self, op: &OpAt) -> W<Val> {
        let Val::Unit(u) = self.val(op, 0)? else {
            return Err(op.misfit("it does not pool a convolution's output"));
        };
        if op.code == MEAN {
            let (_, axes) = self.konst(op, 1)?;
            let mut axes: Vec<i64> = axes.iter().map(|&a| if a < 0.0 { a as i64 + 4 } else { a as i64 }).collect();
            axes.sort_unstable();
            if axes != [1, 2] {
                return Err(op.misfit(format!("a MEAN over axes {axes:?}, expected height and width")));
            }
        }
        if self.pool.is_some() {
            return Err(op.misfit("a second pooling"));
        }
        self.pool = Some((u + 1, op.label.clone()));
        let q = self.out_q(op)?;
        self.netq.pooled.extend(q);
        Ok(Val::Pooled)
    }

    /// RESHAPE or SQUEEZE of the pooled features.
    fn flatten(&mut self, op: &OpAt) -> W<Val> {
        match self.val(op, 0)? {
            Val::Pooled | Val::Flat => {
                let q = self.out_q(op)?;
                self.netq.pooled.extend(q);
                Ok(Val::Flat)
            }
            _ => Err(op.misfit("it does not flatten the pooled features")),
        }
    }

    /// FULLY_CONNECTED on the pooled features: the classifier.
    fn fully_connected(&mut self, op: &OpAt) -> W<Val> {
        if !matches!(self.val(op, 0)?, Val::Pooled | Val::Flat) {
            return Err(op.misfit("its input is not the pooled features"));
        }
        let (wt, w) = self.konst(op, 1)?;
        let [o, i] = wt.shape[..] else {
            return Err(op.misfit(format!("weights of shape {:?}", wt.shape)));
        };
        let bias = match op.ins.get(2) {
            Some(&b) if b >= 0 => self.konst(op, 2)?.1.clone(),
            _ => vec![0.0; o],
        };
        if op.fused(0)? {
            return Err(op.misfit("a ReLU6 on the logits"));
        }
        if self.fc.is_some() {
            return Err(op.misfit("a second fully connected layer"));
        }
        self.fc = Some((op.label.clone(), [o, i], w.clone(), bias));
        self.netq.head_weights = match &wt.ints {
            Some(q)
                if wt.ty == INT8 && wt.zero.iter().all(|&z| z == 0) && (wt.scale.len() == 1 || wt.scale.len() == o) =>
            {
                Some(q.clone())
            }
            _ => None,
        };
        self.netq.logits = self.out_q(op)?;
        Ok(Val::Logits)
    }
}

fn read_inner(path: &Path, bytes: &[u8]) -> W<TensorFile> {
    let model = Table::at(bytes, u32_at(bytes, 0)?)?;
    let codes: Vec<i32> =
        model.tables(1)?.iter().map(|c| Ok((c.u8(0, 0)? as i8 as i32).max(c.i32(3, 0)?))).collect::<R<_>>()?;
    let subgraphs = model.tables(2)?;
    let sg = subgraphs.first().ok_or("the model has no subgraph")?;
    let buffers = model.tables(4)?;
    // Every constant value takes at least one byte of the file unless buffers are shared, so
    // all tensors together may decode as many values as the file has bytes (plus slack): at
    // most 5 bytes of memory per byte of file (f32 values, and int8 codes kept as they are).
    let budget = bytes.len() + (1 << 20);
    let mut left = budget;
    let mut tensors: Vec<Tens> = Vec::new();
    for t in sg.tables(0)? {
        tensors.push(tensor(&t, &buffers, bytes, &mut left)?);
    }
    // The network's copies of the constants get a budget of their own, the same size.
    let mut walk = Walker {
        tensors: &tensors,
        budget,
        vals: HashMap::new(),
        units: Vec::new(),
        netq: NetQ::default(),
        pool: None,
        fc: None,
    };
    let inputs = sg.ints(1)?;
    let outputs = sg.ints(2)?;
    let input = *inputs.first().ok_or("the subgraph has no input")?;
    let it = walk.tens(input)?;
    let hw = match it.shape[..] {
        [_, h, w, 3] if h > 0 && w > 0 => Some((h, w)),
        _ => {
            return Err(Walk::Format(format!(
                "input `{}` has shape {:?}, expected NHWC with 3 channels",
                it.name, it.shape
            )))
        }
    };
    walk.vals.insert(input, Val::Input);
    if it.ty == INT8 || it.ty == UINT8 {
        walk.netq.input = it.act_q("input")?;
    }
    for (k, op) in sg.tables(3)?.iter().enumerate() {
        let code = *usize::try_from(op.i32(0, 0)?).ok().and_then(|i| codes.get(i)).ok_or("bad opcode index")?;
        let ins = op.ints(1)?;
        let out = *op.ints(2)?.first().ok_or("an operator without outputs")?;
        let label = format!(
            "operator #{k} ({}{})",
            op_name(code),
            walk.tens(out).map(|t| format!(" -> `{}`", t.name)).unwrap_or_default()
        );
        let at = OpAt { code, label, ins, out, opts: op.table(4)? };
        let v = walk.op(&at)?;
        if let Some(t) =
            walk.tens(out).ok().filter(|t| t.data.is_none() && t.quantized && !matches!(t.ty, INT8 | UINT8))
        {
            walk.netq.unsupported.get_or_insert_with(|| {
                format!("{} holds an activation of type {} (not int8 or uint8)", at.label, t.ty)
            });
        }
        walk.vals.insert(out, v);
    }
    let out = *outputs.first().ok_or("the subgraph has no output")?;
    if !matches!(walk.vals.get(&out), Some(Val::Logits)) {
        return Err(Walk::Misfit(format!("the output `{}` is not the classifier's", walk.tens(out)?.name)));
    }
    let quantized = tensors.iter().any(|t| t.quantized && t.data.is_some());
    let Walker { units, netq, pool, fc, .. } = walk;
    // The decoded constants are not needed any more: the network holds its own copies.
    drop(tensors);
    finish(path, quantized, hw, units, netq, pool, fc)
}

/// The walked network fitted to a plan, with the int8 import where the file is int8.
fn finish(
    path: &Path,
    quantized: bool,
    hw: Option<(usize, usize)>,
    units: Vec<Unit>,
    netq: NetQ,
    pool: Option<(usize, String)>,
    fc: Option<Fc>,
) -> W<TensorFile> {
    let (pool_in, pool_node) = pool.ok_or_else(|| Walk::Misfit("no global average pooling".into()))?;
    let (fc_node, shape, weight, bias) = fc.expect("logits imply a classifier");
    let n = units.len();
    let mut net = Network {
        input: 0,
        hw,
        units,
        head: Head { input: pool_in, node: pool_node, fc_node, weight, shape, bias },
        outputs: (1..=n).collect(),
        quant: netq,
    };
    let opts = FitOptions { paddings: &[Padding::Tf, Padding::Torch], default_eps: 1e-3, dropout: 0.0, hint: None };
    let (spec, tensors) = graph::fit(path, &net, &opts).map_err(Walk::Other)?;
    net.release_weights();
    let preprocess = match spec.padding {
        Padding::Tf => Preprocess::tf(),
        Padding::Torch => Preprocess::imagenet(spec.height.min(spec.width_px)),
    };
    let int8 = graph::int8(path, &spec, &net, tensors, None).map_err(Walk::Other)?;
    let source = match (&int8, quantized) {
        (Imported::Int8(_), _) => "tflite-int8",
        (Imported::Float(_), true) => "tflite-quantized",
        (Imported::Float(_), false) => "tflite",
    };
    let mut metadata = graph::metadata(&spec, &preprocess, source);
    let tensors = match int8 {
        Imported::Int8(imp) => {
            metadata.insert("quantization".into(), serde_json::to_string(&imp.quant).expect("serialises"));
            metadata.insert("import_notes".into(), serde_json::to_string(&imp.notes).expect("serialises"));
            imp.tensors
        }
        Imported::Float(tensors) => {
            if quantized {
                metadata.insert("dequantized".into(), "weights dequantized from int8/uint8; runs in float".into());
            }
            tensors
        }
    };
    Ok(TensorFile { path: path.into(), tensors, metadata })
}
