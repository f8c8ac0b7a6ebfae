//! Keras MobileNetV2 weights: `.h5` files (Keras 2 and Keras 3 legacy HDF5, whole models or
//! weights only, the network alone or nested in a bigger model) and `.keras` archives /
//! `.weights.h5` files (Keras 3).
//!
//! Keras builds the same network as torchvision with TensorFlow's conventions: 'SAME' padding
//! (stride-2 layers pad 0 before and 1 after on even sizes), BatchNorm epsilon 1e-3, inputs in
//! [-1, 1], no dropout. So the spec gets `Padding::Tf`, `bn_eps` from the file (1e-3) and the
//! model `Preprocess::tf()`. Kernels are HWIO (depthwise `(H, W, C, 1)`, dense `(in, out)`) and
//! become OIHW / `[out, in]`.
//!
//! Layer names: legacy HDF5 files name each layer (`Conv1`, `bn_Conv1`,
//! `expanded_conv_depthwise`, `block_N_expand`, `block_N_depthwise_BN`, `Conv_1`, `Conv_1_bn`,
//! `predictions`), under `model_weights/` or the root, with `kernel:0` (Keras 2) or `kernel`
//! (Keras 3) datasets. Keras 3's own format numbers layers by class in model order
//! (`layers/conv2d_3/vars/0`), which follows the plan's order of layers.

pub(crate) mod hdf5;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;

use super::fit::CANDIDATE_WIDTHS;
use super::graph;
use super::{Tensor, TensorFile};
use crate::error::{Error, Result};
use crate::names::{self, expected, BnParam};
use crate::plan::{ConvKind, Op, Plan, Role};
use crate::preprocess::Preprocess;
use crate::spec::{Padding, Spec};

/// A Keras weight: its values and Keras shape.
struct Var {
    path: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// The weights of one Keras layer, by role.
#[derive(Default)]
struct Layer {
    kernel: Option<Var>,
    bias: Option<Var>,
    gamma: Option<Var>,
    beta: Option<Var>,
    mean: Option<Var>,
    var: Option<Var>,
}

/// Where to find each plan layer's Keras weights.
trait Source {
    /// The convolution and BatchNorm of plan layer `li`.
    fn conv(&mut self, plan: &Plan, li: usize) -> std::result::Result<(&Layer, &Layer), String>;
    /// The classifier.
    fn dense(&mut self) -> std::result::Result<&Layer, String>;
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::format(path, "Keras", detail)
}

/// Keras's names for the convolution and BatchNorm of a plan layer.
fn keras_names(plan: &Plan, li: usize) -> (String, String) {
    let layer = &plan.layers[li];
    match layer.role {
        Role::Stem => ("Conv1".into(), "bn_Conv1".into()),
        Role::LastConv => ("Conv_1".into(), "Conv_1_bn".into()),
        _ => {
            let b = layer.block.expect("block layer");
            let p = if b == 1 { "expanded_conv".to_string() } else { format!("block_{}", b - 1) };
            let part = match layer.role {
                Role::Expand => "expand",
                Role::Depthwise => "depthwise",
                _ => "project",
            };
            (format!("{p}_{part}"), format!("{p}_{part}_BN"))
        }
    }
}

/// Legacy HDF5: datasets found by layer name (the path component before the weight's name).
struct ByName {
    layers: HashMap<String, Layer>,
}

impl Source for ByName {
    fn conv(&mut self, plan: &Plan, li: usize) -> std::result::Result<(&Layer, &Layer), String> {
        let (c, b) = keras_names(plan, li);
        match (self.layers.get(&c), self.layers.get(&b)) {
            (Some(c), Some(b)) => Ok((c, b)),
            (None, _) => Err(format!("no weights for layer `{c}`")),
            (_, None) => Err(format!("no weights for layer `{b}`")),
        }
    }
    fn dense(&mut self) -> std::result::Result<&Layer, String> {
        if self.layers.contains_key("predictions") {
            return Ok(&self.layers["predictions"]);
        }
        // A custom head (e.g. GlobalAveragePooling + Dropout + Dense): the one dense layer.
        let dense: Vec<&String> = self
            .layers
            .iter()
            .filter(|(_, l)| l.kernel.as_ref().is_some_and(|k| k.shape.len() == 2) && l.bias.is_some())
            .map(|(n, _)| n)
            .collect();
        match dense[..] {
            [one] => Ok(&self.layers[one]),
            [] => {
                Err("no classifier (`predictions` or another Dense layer): was the model saved with include_top=False?"
                    .into())
            }
            _ => Err(format!("{} Dense layers; a MobileNetV2 classifier has one", dense.len())),
        }
    }
}

/// Keras 3 format: layers numbered by class in model order.
struct ByOrder {
    conv2d: Vec<Layer>,
    depthwise: Vec<Layer>,
    bn: Vec<Layer>,
    dense: Vec<Layer>,
    /// Conv2D layers met so far, and depthwise, in plan order.
    seen: (usize, usize, usize),
    last: usize,
}

impl Source for ByOrder {
    fn conv(&mut self, plan: &Plan, li: usize) -> std::result::Result<(&Layer, &Layer), String> {
        if li <= self.last {
            self.seen = (0, 0, 0);
        }
        self.last = li;
        let kind = plan.layers[li].conv().expect("conv").kind;
        let (c, list, what) = if kind == ConvKind::Depthwise {
            self.seen.1 += 1;
            (self.seen.1 - 1, &self.depthwise, "depthwise_conv2d")
        } else {
            self.seen.0 += 1;
            (self.seen.0 - 1, &self.conv2d, "conv2d")
        };
        self.seen.2 += 1;
        let b = self.seen.2 - 1;
        let conv = list.get(c).ok_or_else(|| format!("the file has {} {what} layers, the network more", list.len()))?;
        let bn = self
            .bn
            .get(b)
            .ok_or_else(|| format!("the file has {} batch_normalization layers, the network more", self.bn.len()))?;
        Ok((conv, bn))
    }
    fn dense(&mut self) -> std::result::Result<&Layer, String> {
        match &self.dense[..] {
            [one] => Ok(one),
            [] => Err("no Dense classifier: was the model saved with include_top=False?".into()),
            d => Err(format!("{} Dense layers; a MobileNetV2 classifier has one", d.len())),
        }
    }
}

fn role_of(leaf: &str) -> Option<fn(&mut Layer) -> &mut Option<Var>> {
    Some(match leaf {
        "kernel" | "depthwise_kernel" => |l| &mut l.kernel,
        "bias" => |l| &mut l.bias,
        "gamma" => |l| &mut l.gamma,
        "beta" => |l| &mut l.beta,
        "moving_mean" => |l| &mut l.mean,
        "moving_variance" => |l| &mut l.var,
        _ => return None,
    })
}

/// Reads the weights of every dataset (optimizer state excluded).
fn datasets(path: &Path, f: &hdf5::File, objs: &[hdf5::Object], bytes_len: usize) -> Result<Vec<Var>> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for o in objs {
        let Some(d) = &o.dataset else { continue };
        // Datasets never share bytes in a real file: more values than bytes means aliasing.
        total = total.saturating_add(d.shape.iter().product::<usize>());
        if total > bytes_len {
            return Err(bad(path, "its datasets hold more values than the file has bytes"));
        }
        if o.path.split('/').any(|c| c.starts_with("optimizer")) {
            continue;
        }
        let values = f.read_f32(&o.path, d)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { path: path.into(), name: o.path.clone(), index: i, value: values[i] });
        }
        out.push(Var { path: o.path.clone(), shape: d.shape.clone(), values });
    }
    Ok(out)
}

fn by_name(path: &Path, vars: Vec<Var>) -> Result<ByName> {
    let mut layers: HashMap<String, Layer> = HashMap::new();
    for v in vars {
        let comps: Vec<&str> = v.path.split('/').collect();
        let leaf = comps.last().copied().unwrap_or("").split(':').next().unwrap_or("");
        let (Some(slot), Some(&layer)) = (role_of(leaf), comps.len().checked_sub(2).and_then(|i| comps.get(i))) else {
            continue;
        };
        let l = layers.entry(layer.to_string()).or_default();
        let s = slot(l);
        if let Some(prev) = s {
            return Err(bad(
                path,
                format!("two `{leaf}` weights for layer `{layer}`: `{}` and `{}`", prev.path, v.path),
            ));
        }
        *s = Some(v);
    }
    Ok(ByName { layers })
}

fn by_order(path: &Path, vars: Vec<Var>) -> Result<ByOrder> {
    // layer path -> vars by index
    let mut layers: BTreeMap<String, BTreeMap<usize, Var>> = BTreeMap::new();
    for v in vars {
        let Some((layer, idx)) = v.path.rsplit_once("/vars/") else { continue };
        let Ok(i) = idx.parse::<usize>() else { continue };
        layers.entry(layer.to_string()).or_default().insert(i, v);
    }
    // (container, class) -> [(number, layer)]
    let mut classes: BTreeMap<(String, String), Vec<(usize, Layer)>> = BTreeMap::new();
    for (lp, vars) in layers {
        let (container, key) = lp.rsplit_once('/').unwrap_or(("", &lp));
        let (class, n) = match key.rsplit_once('_') {
            Some((c, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => (c, n.parse().unwrap_or(0) + 1),
            _ => (key, 0),
        };
        let mut vars: Vec<Var> = vars.into_values().collect();
        let layer = match class {
            "conv2d" | "depthwise_conv2d" | "dense" if (1..=2).contains(&vars.len()) => {
                let bias = if vars.len() == 2 { vars.pop() } else { None };
                Layer { kernel: vars.pop(), bias, ..Default::default() }
            }
            "batch_normalization" if vars.len() == 4 => {
                let mut it = vars.into_iter();
                Layer { gamma: it.next(), beta: it.next(), mean: it.next(), var: it.next(), ..Default::default() }
            }
            "conv2d" | "depthwise_conv2d" | "dense" | "batch_normalization" => {
                return Err(bad(path, format!("layer `{lp}` has {} variables, which is not the usual set", vars.len())))
            }
            _ => continue,
        };
        classes.entry((container.to_string(), class.to_string())).or_default().push((n, layer));
    }
    let mut take = |class: &str| -> Result<Vec<Layer>> {
        let keys: Vec<(String, String)> = classes.keys().filter(|(_, c)| c == class).cloned().collect();
        match &keys[..] {
            [] => Ok(Vec::new()),
            [k] => {
                let mut v = classes.remove(k).expect("key");
                v.sort_by_key(|(n, _)| *n);
                Ok(v.into_iter().map(|(_, l)| l).collect())
            }
            _ => Err(bad(path, format!("{class} layers in several places ({} and {})", keys[0].0, keys[1].0))),
        }
    };
    Ok(ByOrder {
        conv2d: take("conv2d")?,
        depthwise: take("depthwise_conv2d")?,
        bn: take("batch_normalization")?,
        dense: take("dense")?,
        seen: (0, 0, 0),
        last: usize::MAX,
    })
}

/// Input size and BatchNorm epsilon from a Keras model config, where it says.
fn from_config(config: Option<&Value>) -> (Option<(usize, usize)>, Option<f32>) {
    fn walk<'v>(v: &'v Value, class: &str, out: &mut Vec<&'v Value>) {
        match v {
            Value::Object(m) => {
                if m.get("class_name").and_then(Value::as_str) == Some(class) {
                    out.push(v);
                }
                m.values().for_each(|x| walk(x, class, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, class, out)),
            _ => {}
        }
    }
    let Some(c) = config else { return (None, None) };
    let mut inputs = Vec::new();
    walk(c, "InputLayer", &mut inputs);
    let hw = inputs.first().and_then(|l| {
        let cfg = l.get("config")?;
        let s = cfg.get("batch_shape").or_else(|| cfg.get("batch_input_shape"))?.as_array()?;
        match &s[..] {
            [_, h, w, _] => Some((h.as_u64()? as usize, w.as_u64()? as usize)),
            _ => None,
        }
    });
    let mut bns = Vec::new();
    walk(c, "BatchNormalization", &mut bns);
    let eps = bns.first().and_then(|l| l.get("config")?.get("epsilon")?.as_f64()).map(|e| e as f32);
    (hw, eps)
}

fn need<'l>(v: &'l Option<Var>, layer: &str, what: &str) -> std::result::Result<&'l Var, String> {
    v.as_ref().ok_or_else(|| format!("layer `{layer}` has no {what}"))
}

/// The tensors under torchvision's names for a plan, or the first thing that does not fit.
fn tensors_for(plan: &Plan, src: &mut dyn Source) -> std::result::Result<BTreeMap<String, Tensor>, (usize, String)> {
    let mut out = BTreeMap::new();
    let exp = expected(plan);
    for (li, layer) in plan.layers.iter().enumerate() {
        let fail = |e: String| (li, e);
        match &layer.op {
            Op::Conv(c) => {
                let (kn, bnn) = keras_names(plan, li);
                let (conv, bn) = src.conv(plan, li).map_err(fail)?;
                let k = need(&conv.kernel, &kn, "kernel").map_err(fail)?;
                let (o, i, ks) = (layer.output.c, layer.input.c / c.groups, c.kernel);
                let dw = c.kind == ConvKind::Depthwise;
                let want = if dw { vec![ks, ks, o, 1] } else { vec![ks, ks, i, o] };
                if k.shape != want {
                    return Err(fail(format!("`{}` has shape {:?}, expected {want:?}", k.path, k.shape)));
                }
                // HWIO (depthwise HW C 1) to OIHW.
                let mut w = vec![0f32; o * i * ks * ks];
                for y in 0..ks {
                    for x in 0..ks {
                        for ic in 0..i {
                            for oc in 0..o {
                                w[((oc * i + ic) * ks + y) * ks + x] = k.values[((y * ks + x) * i + ic) * o + oc];
                            }
                        }
                    }
                }
                out.insert(names::weight(layer), Tensor::f32(vec![o, i, ks, ks], w));
                let mut stats = Vec::new();
                for (v, what) in
                    [(&bn.gamma, "gamma"), (&bn.beta, "beta"), (&bn.mean, "moving_mean"), (&bn.var, "moving_variance")]
                {
                    let v = need(v, &bnn, what).map_err(fail)?;
                    if v.shape != [o] {
                        return Err(fail(format!("`{}` has shape {:?}, expected [{o}]", v.path, v.shape)));
                    }
                    stats.push(v.values.clone());
                }
                if let Some(b) = &conv.bias {
                    if b.shape != [o] {
                        return Err(fail(format!("`{}` has shape {:?}, expected [{o}]", b.path, b.shape)));
                    }
                    // bn(conv + b): the bias moves the mean.
                    stats[2] = stats[2].iter().zip(&b.values).map(|(m, b)| m - b).collect();
                }
                for (p, v) in BnParam::ALL.into_iter().zip(stats) {
                    out.insert(names::bn(c, p), Tensor::f32(vec![o], v));
                }
            }
            Op::Linear => {
                let d = src.dense().map_err(fail)?;
                let k = need(&d.kernel, "dense", "kernel").map_err(fail)?;
                let b = need(&d.bias, "dense", "bias").map_err(fail)?;
                let (n_in, n_out) = (layer.input.c, layer.output.c);
                if k.shape != [n_in, n_out] || b.shape != [n_out] {
                    return Err(fail(format!(
                        "the classifier `{}` has shape {:?}, expected [{n_in}, {n_out}]",
                        k.path, k.shape
                    )));
                }
                let mut w = vec![0f32; n_in * n_out];
                for i in 0..n_in {
                    for o in 0..n_out {
                        w[o * n_in + i] = k.values[i * n_out + o];
                    }
                }
                out.insert(names::weight(layer), Tensor::f32(vec![n_out, n_in], w));
                out.insert(names::bias(layer), Tensor::f32(vec![n_out], b.values.clone()));
            }
            Op::GlobalAvgPool | Op::Dropout { .. } => {}
            Op::Concat { .. } | Op::Upsample { .. } => unreachable!("the Keras importer fits classifier plans"),
        }
    }
    debug_assert_eq!(out.len(), exp.len());
    Ok(out)
}

/// Reads Keras weights from HDF5 bytes; `config` is the model config when it lives outside
/// the HDF5 file (`.keras` archives).
fn from_h5(path: &Path, bytes: &[u8], config: Option<Value>) -> Result<TensorFile> {
    let f = hdf5::File::open(path, bytes)?;
    let objs = f.objects()?;
    let config = config.or_else(|| {
        objs.first()
            .and_then(|root| root.attrs.iter().find(|(k, _)| k == "model_config"))
            .and_then(|(_, v)| v.first())
            .and_then(|s| serde_json::from_str(s).ok())
    });
    let vars = datasets(path, &f, &objs, bytes.len())?;
    if vars.is_empty() {
        return Err(bad(path, "the file holds no weights"));
    }
    let keras3 = vars.iter().any(|v| v.path.contains("/vars/"));
    let mut src: Box<dyn Source> =
        if keras3 { Box::new(by_order(path, vars)?) } else { Box::new(by_name(path, vars)?) };
    let classes = match src.dense() {
        Ok(d) => match d.kernel.as_ref().map(|k| &k.shape[..]) {
            Some([_, n]) if *n > 0 => *n,
            _ => return Err(bad(path, "the classifier's kernel is not 2-D")),
        },
        Err(e) => return Err(bad(path, e)),
    };
    let (hw, eps) = from_config(config.as_ref());
    let (height, width_px) = hw.filter(|&(h, w)| h >= 32 && w >= 32).unwrap_or((224, 224));
    let mut best: Option<(usize, String)> = None;
    for width in CANDIDATE_WIDTHS {
        let spec = Spec {
            width,
            height,
            width_px,
            classes,
            padding: Padding::Tf,
            dropout: 0.0,
            bn_eps: eps.unwrap_or(1e-3),
            ..Spec::default()
        };
        let plan = Plan::new(&spec).map_err(|e| bad(path, e.to_string()))?;
        match tensors_for(&plan, src.as_mut()) {
            Ok(tensors) => {
                let metadata = graph::metadata(&spec, &Preprocess::tf(), "keras");
                return Ok(TensorFile { path: path.into(), tensors, metadata });
            }
            Err((i, e)) => {
                if best.as_ref().is_none_or(|(b, _)| i > *b) {
                    best = Some((i, e));
                }
            }
        }
    }
    let (_, e) = best.expect("candidates");
    Err(Error::NoConfig { path: path.into(), detail: format!("not a Keras MobileNetV2: {e}") })
}

/// Reads a Keras `.h5` or `.weights.h5` file.
pub fn read_h5(path: &Path, bytes: &[u8]) -> Result<TensorFile> {
    from_h5(path, bytes, None)
}

/// Is this zip a Keras 3 `.keras` archive?
pub fn is_archive(bytes: &[u8]) -> bool {
    zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .is_ok_and(|z| z.file_names().any(|n| n.is_ok_and(|n| n == "model.weights.h5")))
}

/// Reads a Keras 3 `.keras` archive (zip: config.json, model.weights.h5).
pub fn read_archive(path: &Path, bytes: &[u8]) -> Result<TensorFile> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| bad(path, format!("zip: {e}")))?;
    let mut member = |name: &str| -> Result<Option<Vec<u8>>> {
        let mut f = match z.by_name(name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(bad(path, format!("{name}: {e}"))),
        };
        let mut v = Vec::new();
        let limit = bytes.len() as u64;
        (&mut f).take(limit).read_to_end(&mut v).map_err(|e| bad(path, format!("{name}: {e}")))?;
        Ok(Some(v))
    };
    let config = member("config.json")?.and_then(|c| serde_json::from_slice(&c).ok());
    let h5 = member("model.weights.h5")?.ok_or_else(|| bad(path, "no model.weights.h5 in the archive"))?;
    from_h5(path, &h5, config)
}
