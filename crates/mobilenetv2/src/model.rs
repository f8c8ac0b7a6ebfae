//! A network with its weights: a [`Plan`] plus torchvision-named parameters, class labels and
//! the preprocessing its weights expect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::names::{expected, Params};
use crate::plan::Plan;
pub use crate::preprocess::Preprocess;
use crate::qscheme::QuantSpec;
use crate::spec::{Padding, Spec};
use crate::weights::fit::{first_misfit, float_params, infer_spec};
use crate::weights::{self, Tensor, TensorFile};

/// A network with its weights: the [`Plan`], the parameters by torchvision name, the class
/// names and the preprocessing the weights expect. Load one with [`Model::load`] (any
/// supported format: safetensors, PyTorch `.pth`, ONNX, TFLite, Keras), make one with
/// [`Model::init`], save it with [`Model::save`]; run it with an
/// [`Engine`](crate::Engine) or a [`Classifier`](crate::classify::Classifier).
///
/// Invariant: `params` holds exactly the tensors [`names::expected`](crate::names::expected)
/// lists for `plan`, with those shapes; every constructor checks it, so code that changes the
/// public fields must keep it.
///
/// ```
/// use mobilenetv2::{Model, Spec};
///
/// let model = Model::init(&Spec::new(0.35, 64), 42, false)?;
/// assert_eq!(model.param("features.0.0.weight").len(), 16 * 3 * 3 * 3); // OIHW
/// assert_eq!(model.label(1), Some("goldfish")); // ImageNet's names for 1000 classes
///
/// // Save and load back (the project's format: safetensors plus metadata).
/// let path = std::env::temp_dir().join(format!("mnv2-doctest-{}.safetensors", std::process::id()));
/// model.save(&path)?;
/// let back = Model::load(&path)?;
/// assert_eq!(back.spec(), model.spec());
/// assert_eq!(back.params, model.params);
/// # std::fs::remove_file(&path).ok();
///
/// // The same weights at another input size.
/// let bigger = model.with_spec(&Spec::new(0.35, 96))?;
/// assert_eq!(bigger.plan.input().h, 96);
/// # Ok::<(), mobilenetv2::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Model {
    /// The network's layers and shapes.
    pub plan: Plan,
    /// Parameters and BatchNorm statistics by torchvision name, in PyTorch layout.
    pub params: Params,
    /// Class names, if known.
    pub labels: Option<Vec<String>>,
    /// How images are turned into network inputs (resize, crop, normalisation) for these
    /// weights.
    pub preprocess: Preprocess,
    /// Where the weights came from (for error messages).
    pub source: PathBuf,
    /// Present for int8 files: the activation quantisation the int8 engine runs with (the
    /// parameters then hold the dequantised weights, BatchNorm folded).
    pub quant: Option<QuantSpec>,
}

fn meta_err(path: &Path, key: &str, value: &str, detail: impl Into<String>) -> Error {
    let value = crate::limits::clip(value, 200);
    Error::Metadata { path: path.into(), key: key.into(), value, detail: detail.into() }
}

impl Model {
    /// Random weights with torchvision's initialisation (Kaiming-normal convolutions, a
    /// `N(0, 0.01)` classifier, zero biases) from `seed`; BatchNorm is the identity unless
    /// `randomize_bn` draws its statistics too (for tests where the fold must matter).
    /// Fails only on an invalid spec.
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

    /// Fits tensors already read (by [`weights::load`] or a format's reader) to a network:
    /// from the file's `spec` metadata if present, otherwise the configuration the tensor
    /// shapes imply. Every tensor is checked against the plan (names, shapes, finiteness), so
    /// a `Model` never holds weights that do not fit it.
    pub fn from_file(file: TensorFile) -> Result<Model> {
        let path = file.path.clone();
        let quant: Option<QuantSpec> = match file.metadata.get("quantization") {
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
                weights::int8::params_from_file(&file, &plan)?
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

    /// The spec of the plan.
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

    /// A parameter by torchvision name, flattened in PyTorch layout.
    ///
    /// # Panics
    ///
    /// If the model has no such tensor: use `model.params.get(name)` for names that come from
    /// outside the plan.
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
            Some(q) => weights::int8::write(path, &self.plan, &self.params, q, &self.metadata()),
            None => weights::safetensors_io::write_as(path, &self.tensors(), &self.metadata(), store),
        }
    }
}
