//! A network with its weights: a [`Plan`] plus torchvision-named parameters, class labels and
//! the preprocessing its weights expect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::spec::{Padding, Spec};
use crate::weights::names::{expected, is_bn_counter, Expected};
use crate::weights::{self, Data, Tensor, TensorFile};

/// How an image becomes the network's input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Shorter side after resizing; `None` resizes straight to the input size (Keras).
    pub resize: Option<usize>,
    /// Per-channel mean and std applied to values in [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// torchvision's ImageNet evaluation transform: resize the shorter side to 256 (for a
    /// 224 crop), center crop, mean/std normalisation.
    pub fn imagenet(crop: usize) -> Self {
        Preprocess {
            resize: Some((crop as f64 * 256.0 / 224.0).round() as usize),
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// Keras `mobilenet_v2.preprocess_input`: resize to the input size, scale to [-1, 1].
    pub fn tf() -> Self {
        Preprocess { resize: None, mean: [0.5; 3], std: [0.5; 3] }
    }

    /// Checks values read from a file: a resize of 1..=`limits::MAX_RESIZE`, finite means,
    /// finite positive stds (`std: 0` divided by zero; a resize of 2^62 overflowed).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let max = crate::limits::MAX_RESIZE;
        if let Some(r) = self.resize.filter(|&r| r == 0 || r > max) {
            return Err(format!("resize {r} is outside 1..={max}"));
        }
        if !self.mean.iter().all(|m| m.is_finite()) || !self.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err("mean must be finite and std finite and positive".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct Model {
    pub plan: Plan,
    /// Parameters and BatchNorm statistics by torchvision name, in PyTorch layout.
    pub params: BTreeMap<String, Vec<f32>>,
    /// Class names, if known.
    pub labels: Option<Vec<String>>,
    pub preprocess: Preprocess,
    /// Where the weights came from (for error messages).
    pub source: PathBuf,
    /// Present for int8 files: the activation quantisation the int8 engine runs with (the
    /// parameters then hold the dequantised weights, BatchNorm folded).
    pub quant: Option<crate::quant::QuantSpec>,
}

/// Widths tried, in order, when a file does not say which it is.
const CANDIDATE_WIDTHS: [f64; 16] =
    [1.0, 0.35, 0.5, 0.75, 1.3, 1.4, 0.25, 0.6, 0.8, 0.9, 1.1, 1.2, 1.5, 1.75, 2.0, 0.1];

/// The first expected tensor a file does not have right, or `None` if all fit.
fn first_misfit(file: &TensorFile, exp: &[Expected]) -> Option<(usize, Error)> {
    for (i, e) in exp.iter().enumerate() {
        match file.tensors.get(&e.name) {
            None => {
                return Some((
                    i,
                    Error::MissingTensor { path: file.path.clone(), name: e.name.clone(), expected: e.shape.clone() },
                ))
            }
            Some(t) if t.shape != e.shape => {
                return Some((
                    i,
                    Error::ShapeMismatch {
                        path: file.path.clone(),
                        name: e.name.clone(),
                        expected: e.shape.clone(),
                        got: t.shape.clone(),
                    },
                ))
            }
            Some(_) => {}
        }
    }
    None
}

fn meta_err(path: &Path, key: &str, value: &str, detail: impl Into<String>) -> Error {
    let value = crate::limits::clip(value, 200);
    Error::Metadata { path: path.into(), key: key.into(), value, detail: detail.into() }
}

impl Model {
    /// Random weights with torchvision's initialisation (see [`weights::init`]).
    pub fn init(spec: &Spec, seed: u64, randomize_bn: bool) -> Result<Model> {
        let plan = Plan::new(spec)?;
        let params = weights::init::init(&plan, seed, randomize_bn);
        Ok(Model {
            preprocess: Preprocess::imagenet(spec.height.min(spec.width_px)),
            labels: None,
            plan,
            params,
            source: PathBuf::from(format!("<init seed {seed}>")),
            quant: None,
        })
    }

    /// Loads weights from a file in any supported format, finding the configuration from
    /// the file's metadata or, failing that, from the tensor shapes.
    pub fn load(path: &Path) -> Result<Model> {
        Model::from_file(weights::load(path)?)
    }

    pub fn from_file(file: TensorFile) -> Result<Model> {
        let path = file.path.clone();
        let quant: Option<crate::quant::QuantSpec> = match file.metadata.get("quantization") {
            Some(s) => Some(serde_json::from_str(s).map_err(|e| meta_err(&path, "quantization", s, e.to_string()))?),
            None => None,
        };
        let spec = match file.metadata.get("spec") {
            Some(s) => {
                let spec: Spec = serde_json::from_str(s).map_err(|e| meta_err(&path, "spec", s, e.to_string()))?;
                spec.validate().map_err(|e| meta_err(&path, "spec", s, e.to_string()))?;
                if quant.is_none() {
                    if let Some((_, err)) = first_misfit(&file, &expected(&Plan::new(&spec)?)) {
                        return Err(err);
                    }
                }
                spec
            }
            None if quant.is_some() => {
                return Err(meta_err(&path, "spec", "(missing)", "an int8 file must record its network spec"))
            }
            None => infer_spec(&file)?,
        };
        let plan = Plan::new(&spec)?;
        let params = match &quant {
            Some(q) => {
                if q.blocks.len() != plan.blocks.len() {
                    return Err(meta_err(
                        &path,
                        "quantization",
                        &format!("{} blocks", q.blocks.len()),
                        format!("the network has {} blocks", plan.blocks.len()),
                    ));
                }
                let mut acts = q.blocks.iter().flat_map(|b| [b.hidden, b.dw, b.output]).chain([q.pooled]);
                if let Some(b) = acts.find(|b| !(b.scale > 0.0 && b.scale.is_finite() && (0..=255).contains(&b.zero))) {
                    return Err(meta_err(
                        &path,
                        "quantization",
                        &format!("{b:?}"),
                        "scales must be positive, zero points in 0..=255",
                    ));
                }
                crate::quant::params_from_file(&file, &plan)?
            }
            None => float_params(file.tensors, &plan, &path)?,
        };
        let labels = match file.metadata.get("labels") {
            Some(s) => {
                let l: Vec<String> =
                    serde_json::from_str(s).map_err(|e| meta_err(&path, "labels", s, e.to_string()))?;
                if l.len() != spec.classes {
                    return Err(meta_err(
                        &path,
                        "labels",
                        &format!("{} names", l.len()),
                        format!("the classifier has {} classes", spec.classes),
                    ));
                }
                Some(l)
            }
            None => None,
        };
        let preprocess = match file.metadata.get("preprocess") {
            Some(s) => {
                let p: Preprocess =
                    serde_json::from_str(s).map_err(|e| meta_err(&path, "preprocess", s, e.to_string()))?;
                p.validate().map_err(|e| meta_err(&path, "preprocess", s, e))?;
                p
            }
            None if spec.padding == Padding::Tf => Preprocess::tf(),
            None => Preprocess::imagenet(spec.height.min(spec.width_px)),
        };
        Ok(Model { plan, params, labels, preprocess, source: path, quant })
    }

    pub fn spec(&self) -> &Spec {
        &self.plan.spec
    }

    /// The class names: the file's own, else ImageNet's for 1000 classes.
    pub fn label(&self, class: usize) -> Option<&str> {
        match &self.labels {
            Some(l) => l.get(class).map(|s| s.as_str()),
            None if self.spec().classes == 1000 => crate::labels::IMAGENET.get(class).copied(),
            None => None,
        }
    }

    /// A parameter by torchvision name.
    pub fn param(&self, name: &str) -> &[f32] {
        self.params.get(name).unwrap_or_else(|| panic!("model has no parameter `{name}`: plan and params disagree"))
    }

    /// Same weights for another spec (e.g. a different input size); the tensors must fit it.
    pub fn with_spec(&self, spec: &Spec) -> Result<Model> {
        let plan = Plan::new(spec)?;
        for e in expected(&plan) {
            match self.params.get(&e.name) {
                Some(v) if v.len() == e.shape.iter().product::<usize>() => {}
                _ => {
                    return Err(Error::InvalidSpec(format!(
                        "weights from {} do not fit the new configuration at `{}`",
                        self.source.display(),
                        e.name
                    )))
                }
            }
        }
        Ok(Model { plan, ..self.clone() })
    }

    /// The metadata the project writes next to the tensors.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let s = self.spec();
        let mut m = BTreeMap::new();
        m.insert("format".into(), "mnv2".into());
        m.insert("spec".into(), serde_json::to_string(s).expect("spec serialises"));
        m.insert("width".into(), s.width.to_string());
        m.insert("resolution".into(), format!("{}x{}", s.height, s.width_px));
        m.insert("classes".into(), s.classes.to_string());
        m.insert("padding".into(), serde_json::to_value(s.padding).unwrap().as_str().unwrap().into());
        m.insert("preprocess".into(), serde_json::to_string(&self.preprocess).unwrap());
        if let Some(l) = &self.labels {
            m.insert("labels".into(), serde_json::to_string(l).unwrap());
        }
        m
    }

    /// Tensors with torchvision names and shapes.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        expected(&self.plan)
            .into_iter()
            .map(|e| {
                let v = self.param(&e.name).to_vec();
                (e.name, Tensor::f32(e.shape, v))
            })
            .collect()
    }

    /// Writes the project's format: safetensors with torchvision names plus metadata, atomically.
    /// An int8 model is written in the int8 format (see [`crate::quant`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_as(path, weights::safetensors_io::FloatStore::F32)
    }

    /// [`Model::save`] with float tensors stored as `store` (f16 halves the file; weights are
    /// widened back to f32 when loaded). int8 models keep their int8 format.
    pub fn save_as(&self, path: &Path, store: weights::safetensors_io::FloatStore) -> Result<()> {
        match &self.quant {
            Some(q) => crate::quant::save(self, q, path),
            None => weights::safetensors_io::write_as(path, &self.tensors(), &self.metadata(), store),
        }
    }
}

/// The float parameters of a plan from a file's tensors: every tensor known, every value finite.
fn float_params(mut tensors: BTreeMap<String, Tensor>, plan: &Plan, path: &Path) -> Result<BTreeMap<String, Vec<f32>>> {
    let exp = expected(plan);
    // Every tensor must be one the plan needs (or BatchNorm's step counter).
    for name in tensors.keys() {
        if !is_bn_counter(name) && !exp.iter().any(|e| &e.name == name) {
            return Err(Error::UnknownTensor { path: path.into(), name: name.clone() });
        }
    }
    let mut params = BTreeMap::new();
    for e in &exp {
        let t = tensors.remove(&e.name).expect("checked by first_misfit");
        let values = match t.data {
            Data::F32(v) => v,
            other => {
                return Err(Error::DType {
                    path: path.into(),
                    name: e.name.clone(),
                    expected: "a floating point type".into(),
                    got: other.dtype().into(),
                })
            }
        };
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite { path: path.into(), name: e.name.clone(), index, value });
        }
        params.insert(e.name.clone(), values);
    }
    Ok(params)
}

/// Finds width, expansion and classes from tensor shapes (files without `mnv2` metadata).
fn infer_spec(file: &TensorFile) -> Result<Spec> {
    let cls = "classifier.1.weight";
    let classes = match file.tensors.get(cls) {
        Some(t) if t.shape.len() == 2 && t.shape[0] > 0 => t.shape[0],
        Some(t) => {
            return Err(Error::ShapeMismatch {
                path: file.path.clone(),
                name: cls.into(),
                expected: vec![0, 1280],
                got: t.shape.clone(),
            })
        }
        None => {
            return Err(Error::NoConfig {
                path: file.path.clone(),
                detail: format!(
                    "there is no `{cls}` tensor, so this is not a torchvision MobileNetV2 state dict ({} tensors{})",
                    file.tensors.len(),
                    file.tensors.keys().next().map(|k| format!(", the first is `{k}`")).unwrap_or_default()
                ),
            })
        }
    };
    // The expansion rate is visible in the first expanding block: hidden = in * t.
    let expansion = file
        .tensors
        .get("features.2.conv.0.0.weight")
        .filter(|t| t.shape.len() == 4 && t.shape[1] > 0 && t.shape[0] % t.shape[1] == 0)
        .map(|t| t.shape[0] / t.shape[1])
        .filter(|&t| t != 6 && (1..=32).contains(&t));
    let mut best: Option<(usize, Error)> = None;
    for width in CANDIDATE_WIDTHS {
        let spec = Spec { width, classes, expansion, ..Spec::default() };
        let plan = Plan::new(&spec)?;
        match first_misfit(file, &expected(&plan)) {
            None => return Ok(spec),
            Some((i, err)) => {
                if best.as_ref().is_none_or(|(b, _)| i > *b) {
                    best = Some((i, err));
                }
            }
        }
    }
    Err(best.expect("at least one candidate").1)
}
