//! The training loop: a model from a seed or from weights (classifier replaced for the
//! dataset's classes), batches from [`crate::data`], steps of [`Net`], an [`Optimizer`] on a
//! [`Schedule`], evaluation with the inference engine, metrics, plots and checkpoints.
//!
//! Checkpoints (`OUT/checkpoint.safetensors`, written atomically) hold the tensors, the
//! optimizer's state, the EMA, the step, the epoch, the position in the epoch, the RNG state
//! and the config; data order and augmentation are functions of (seed, epoch, position), so a
//! resumed run continues bit for bit where the checkpoint was taken.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::net::{BnMode, Net, StepOptions, Tape};
use super::optim::{Ema, Method, Optimizer, Schedule};
use super::plot;
use crate::data::augment::Augment;
use crate::data::loader::{Loader, Transform};
use crate::data::{Dataset, OnBad};
use crate::engine::{Engine, Mode, Options, Precision};
use crate::error::{Error, Result};
use crate::model::{Model, Preprocess};
use crate::rng::Rng;
use crate::spec::{BottleneckActivation, Shortcut, Spec};
use crate::tensor::Batch as TBatch;
use crate::weights::{self, Data, Tensor};

/// Everything that determines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Training data: a folder of class folders, or IDX files (see [`Dataset::open`]).
    pub data: PathBuf,
    /// Validation data, in the same forms; `None` splits `val_split` off `data`.
    pub val: Option<PathBuf>,
    /// Fraction of the training data held out for validation when there is no `val`.
    pub val_split: f64,
    /// Weights to start from (any format [`Model::load`] reads; the classifier is replaced
    /// when the dataset has another number of classes); `None` for torchvision's random
    /// initialisation.
    pub init: Option<PathBuf>,
    /// Width multiplier of a network made from scratch.
    pub width: f64,
    /// Input size in pixels (square).
    pub resolution: usize,
    /// Passes over the training data.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// The optimizer.
    pub method: Method,
    /// Base learning rate (the schedule scales it).
    pub lr: f64,
    /// Weight decay (see [`Optimizer`]).
    pub weight_decay: f32,
    /// Decay BatchNorm parameters and biases too.
    pub decay_all: bool,
    /// Learning rate over the run.
    pub schedule: Schedule,
    /// Dropout before the classifier.
    pub dropout: f32,
    /// Label smoothing in [0, 1).
    pub label_smoothing: f32,
    /// Training augmentation (and the matching evaluation resize).
    pub augment: Augment,
    /// Shuffle the data every epoch (from `seed` and the epoch).
    pub shuffle: bool,
    /// Seed of initialisation, data order, augmentation and dropout: a run is a function of
    /// its config.
    pub seed: u64,
    /// Epochs with the backbone frozen (BatchNorm in eval mode, only the classifier trains).
    pub freeze_backbone: usize,
    /// Decay of an exponential moving average of the weights, evaluated and saved beside them.
    pub ema: Option<f32>,
    /// The paper's linear bottleneck, or the ReLU6 ablation.
    pub bottleneck: BottleneckActivation,
    /// Residual connections, or the no-shortcut ablation.
    pub shortcut: Shortcut,
    /// Evaluate every this many steps as well as after each epoch (0: epochs only).
    pub eval_every: u64,
    /// Write a checkpoint every this many steps as well as after each epoch (0: epochs only).
    pub checkpoint_every: u64,
    /// Skip (and count) images that cannot be decoded instead of stopping.
    pub skip_bad_images: bool,
    /// Stop after this many steps (benchmarks and tests).
    pub max_steps: Option<u64>,
    /// Output folder: weights, checkpoint, `metrics.jsonl`, plots.
    pub out: PathBuf,
}

/// What the loop tells its caller.
#[derive(Clone, Debug)]
pub enum Event {
    /// The run starts (or resumes).
    Start {
        /// The epoch it starts in (0-based).
        epoch: usize,
        /// Steps in the whole run.
        steps: usize,
        /// Steps already done (a resumed run).
        done: usize,
        /// Training images.
        images: usize,
        /// Classes of the dataset.
        classes: usize,
        /// Trainable parameters.
        params: usize,
    },
    /// A training step finished.
    Step {
        /// Epoch (0-based).
        epoch: usize,
        /// Step within the epoch (0-based).
        step_in_epoch: usize,
        /// The batch's loss.
        loss: f64,
        /// The batch's top-1 accuracy in [0, 1].
        acc: f64,
        /// Recent training throughput.
        images_per_s: f64,
        /// The step's learning rate.
        lr: f64,
    },
    /// An evaluation finished (also written to `metrics.jsonl`).
    Eval(Metrics),
    /// Something worth telling the user (resuming, a replaced classifier).
    Note(String),
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Steps done.
    pub step: u64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Mean training loss since the last evaluation.
    pub train_loss: f64,
    /// Training top-1 accuracy since the last evaluation, in [0, 1] (segmentation: pixel
    /// accuracy; detection: 0, it has none).
    pub train_acc: f64,
    /// Validation loss, if there is validation data.
    pub val_loss: Option<f64>,
    /// Validation top-1 accuracy in [0, 1].
    pub val_top1: Option<f64>,
    /// Validation top-5 accuracy in [0, 1].
    pub val_top5: Option<f64>,
    /// Validation mean IoU in [0, 1] (segmentation; `val_top1` then holds pixel accuracy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_miou: Option<f64>,
    /// Detection: mean classification part of the training loss since the last evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cls_loss: Option<f64>,
    /// Detection: mean localisation part of the training loss since the last evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loc_loss: Option<f64>,
    /// Detection: COCO AP@[.5:.95] on the validation images, in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_map: Option<f64>,
    /// Detection: COCO AP at IoU 0.5 on the validation images, in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ap50: Option<f64>,
    /// Training throughput since the last evaluation.
    pub images_per_s: f64,
    /// Seconds spent in training steps so far (data waits included, evaluation excluded).
    pub train_seconds: f64,
    /// Peak resident memory of the process so far, MB.
    pub peak_rss_mb: f64,
}

/// Top-1, top-5, loss and the confusion matrix (`[true][predicted]`).
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// Images evaluated.
    pub n: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy in [0, 1].
    pub top1: f64,
    /// Top-5 accuracy in [0, 1].
    pub top5: f64,
    /// Counts by `[true class][predicted class]`.
    pub confusion: Vec<Vec<usize>>,
    /// Images skipped as undecodable.
    pub skipped: usize,
    /// `(label, top-1 prediction)` of every evaluated image, in order (skipped images absent).
    pub predictions: Vec<(usize, usize)>,
}

/// Peak resident memory of this process in MB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Evaluates `model` on samples `indices` of `ds` with the fast inference engine on `threads`
/// threads, in `precision` (`None`: the weights' own, as [`Options::precision`]).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Model,
    ds: Arc<Dataset>,
    indices: Arc<Vec<usize>>,
    augment: Augment,
    batch: usize,
    threads: usize,
    precision: Option<Precision>,
    skip_bad: bool,
) -> Result<EvalReport> {
    let k = model.spec().classes;
    if let Some(&bad) = indices.iter().map(|&i| &ds.labels[i]).find(|&&l| l >= k) {
        return Err(Error::Input(format!(
            "{}: label {bad} is out of range for a classifier of {k} classes",
            ds.path.display()
        )));
    }
    let engine = Engine::new(model, Options { mode: Mode::Fast, threads: threads.max(1), isa: None, precision })?;
    let (h, w) = (model.spec().height, model.spec().width_px);
    let t = Transform::eval(model, augment, if skip_bad { OnBad::Skip } else { OnBad::Stop });
    let mut rep = EvalReport {
        n: 0,
        loss: 0.0,
        top1: 0.0,
        top5: 0.0,
        confusion: vec![vec![0; k]; k],
        skipped: 0,
        predictions: vec![],
    };
    let (mut hit1, mut hit5) = (0usize, 0usize);
    for b in Loader::new(ds, indices, batch, 0, t, 1, 2) {
        let b = b?;
        rep.skipped += b.skipped;
        if b.labels.is_empty() {
            continue;
        }
        let n = b.labels.len();
        let logits = engine.run(&TBatch::new(n, crate::plan::Shape::new(h, w, 3), b.images)?)?;
        for (i, &label) in b.labels.iter().enumerate() {
            let z = &logits.data[i * k..(i + 1) * k];
            let mx = z.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
            let lse = mx + z.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln();
            rep.loss += lse - z[label] as f64;
            let top = crate::classify::top_k(z, 5.min(k));
            hit1 += (top[0].0 == label) as usize;
            hit5 += top.iter().any(|t| t.0 == label) as usize;
            rep.confusion[label][top[0].0] += 1;
            rep.predictions.push((label, top[0].0));
        }
        rep.n += n;
    }
    if rep.n == 0 {
        return Err(Error::Input("no images to evaluate".into()));
    }
    rep.loss /= rep.n as f64;
    rep.top1 = hit1 as f64 / rep.n as f64;
    rep.top5 = hit5 as f64 / rep.n as f64;
    Ok(rep)
}

/// A model for the run: from the checkpoint's spec, from `init` with the classifier replaced,
/// or from the seed.
fn build_model(cfg: &Config, classes: &[String]) -> Result<Model> {
    let k = classes.len();
    let mut model = match &cfg.init {
        Some(path) => {
            let src = Model::load(path)?;
            let spec = Spec {
                height: cfg.resolution,
                width_px: cfg.resolution,
                classes: k,
                dropout: cfg.dropout,
                ..src.spec().clone()
            };
            let mut fresh = Model::init(&spec, cfg.seed, false)?;
            for (name, v) in &src.params {
                let keep = !name.starts_with("classifier.") || src.spec().classes == k;
                if keep && fresh.params.get(name).is_some_and(|f| f.len() == v.len()) {
                    fresh.params.insert(name.clone(), v.clone());
                }
            }
            fresh.preprocess =
                Preprocess { resize: Preprocess::imagenet(cfg.resolution).resize, ..src.preprocess.clone() };
            fresh.source = path.clone();
            fresh
        }
        None => {
            let spec = Spec {
                width: cfg.width,
                classes: k,
                dropout: cfg.dropout,
                bottleneck: cfg.bottleneck,
                shortcut: cfg.shortcut,
                ..Spec::new(cfg.width, cfg.resolution)
            };
            Model::init(&spec, cfg.seed, false)?
        }
    };
    model.labels = Some(classes.to_vec());
    Ok(model)
}

/// The training state that a checkpoint holds.
struct State {
    model: Model,
    net: Net,
    opt: Optimizer,
    ema: Option<Ema>,
    step: u64,
    epoch: usize,
    batch_in_epoch: usize,
    rng: Rng,
    train_seconds: f64,
}

const CHECKPOINT: &str = "checkpoint.safetensors";

/// Refuses to save weights, optimizer state or EMA that hold NaN or infinity: the file could
/// not be loaded again (the loaders refuse non-finite weights), so the previous one is kept.
fn check_finite(s: &State) -> Result<()> {
    let bad =
        |what: &str| Err(Error::Input(format!("training diverged: the {what} hold non-finite values; not saved")));
    if s.net.params.iter().any(|v| !v.is_finite()) {
        return bad("weights");
    }
    if s.opt.state.iter().flatten().any(|v| !v.is_finite()) {
        return bad("optimizer state");
    }
    if s.ema.as_ref().is_some_and(|e| e.params.iter().any(|v| !v.is_finite())) {
        return bad("EMA weights");
    }
    Ok(())
}

fn save_checkpoint(cfg: &Config, s: &State) -> Result<()> {
    check_finite(s)?;
    let mut model = s.model.clone();
    s.net.store(&mut model);
    let mut tensors: BTreeMap<String, Tensor> =
        model.tensors().into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect();
    for (slot, buf) in s.opt.state.iter().enumerate() {
        for t in s.net.tensors.iter().filter(|t| t.trainable()) {
            tensors.insert(
                format!("optim.{slot}.{}", t.name),
                Tensor::f32(t.shape.clone(), buf[t.offset..t.offset + t.len].to_vec()),
            );
        }
    }
    if let Some(e) = &s.ema {
        for t in s.net.tensors.iter().filter(|t| t.trainable()) {
            tensors.insert(
                format!("ema.{}", t.name),
                Tensor::f32(t.shape.clone(), e.params[t.offset..t.offset + t.len].to_vec()),
            );
        }
    }
    let mut meta = model.metadata();
    meta.insert("format".into(), "mnv2-train-checkpoint".into());
    meta.insert("config".into(), serde_json::to_string(cfg).expect("config serialises"));
    meta.insert("step".into(), s.step.to_string());
    meta.insert("epoch".into(), s.epoch.to_string());
    meta.insert("batch_in_epoch".into(), s.batch_in_epoch.to_string());
    meta.insert("optim_steps".into(), s.opt.steps.to_string());
    meta.insert("rng".into(), serde_json::to_string(&s.rng.state()).unwrap());
    meta.insert("train_seconds".into(), s.train_seconds.to_string());
    weights::safetensors_io::write(&cfg.out.join(CHECKPOINT), &tensors, &meta)
}

fn load_checkpoint(cfg: &Config, path: &Path) -> Result<State> {
    let file = weights::load(path)?;
    let meta = |k: &str| -> Result<String> {
        file.metadata
            .get(k)
            .cloned()
            .ok_or_else(|| Error::format(path, "checkpoint", format!("no `{k}` in the metadata")))
    };
    let bad = |k: &str, e: String| Error::format(path, "checkpoint", format!("metadata `{k}`: {e}"));
    let stored: Config = serde_json::from_str(&meta("config")?).map_err(|e| bad("config", e.to_string()))?;
    let mut mine = cfg.clone();
    mine.max_steps = stored.max_steps;
    if mine != stored {
        return Err(Error::Input(format!(
            "{}: --resume with a different configuration than the checkpoint's (stored: {})",
            path.display(),
            serde_json::to_string(&stored).unwrap()
        )));
    }
    let mut tf = weights::TensorFile { path: path.into(), tensors: BTreeMap::new(), metadata: file.metadata.clone() };
    let mut extra = BTreeMap::new();
    for (k, v) in file.tensors {
        match k.strip_prefix("model.") {
            Some(name) => {
                tf.tensors.insert(name.to_string(), v);
            }
            None => {
                extra.insert(k, v);
            }
        }
    }
    tf.metadata.remove("format");
    let model = Model::from_file(tf)?;
    let net = Net::new(&model);
    let mut opt = Optimizer::new(stored.method, stored.weight_decay, stored.decay_all, net.params.len());
    let f32s = |name: &str| -> Result<Vec<f32>> {
        match extra.get(name).map(|t| &t.data) {
            Some(Data::F32(v)) => Ok(v.clone()),
            _ => Err(Error::format(path, "checkpoint", format!("missing or non-float tensor `{name}`"))),
        }
    };
    for (slot, buf) in opt.state.iter_mut().enumerate() {
        for t in net.tensors.iter().filter(|t| t.trainable()) {
            let v = f32s(&format!("optim.{slot}.{}", t.name))?;
            if v.len() != t.len {
                return Err(Error::format(
                    path,
                    "checkpoint",
                    format!("optimizer state of `{}` has the wrong size", t.name),
                ));
            }
            buf[t.offset..t.offset + t.len].copy_from_slice(&v);
        }
    }
    if let Some(i) = opt.state.iter().flatten().position(|v| !v.is_finite()) {
        return Err(Error::format(path, "checkpoint", format!("optimizer state holds a non-finite value at {i}")));
    }
    let ema = match stored.ema {
        Some(d) => {
            let mut e = Ema::new(d, &net.params);
            for t in net.tensors.iter().filter(|t| t.trainable()) {
                let v = f32s(&format!("ema.{}", t.name))?;
                if v.len() != t.len {
                    return Err(Error::format(path, "checkpoint", format!("EMA of `{}` has the wrong size", t.name)));
                }
                e.params[t.offset..t.offset + t.len].copy_from_slice(&v);
            }
            Some(e)
        }
        None => None,
    };
    if ema.as_ref().is_some_and(|e: &Ema| e.params.iter().any(|v| !v.is_finite())) {
        return Err(Error::format(path, "checkpoint", "the EMA weights hold a non-finite value"));
    }
    let num = |k: &str| -> Result<u64> { meta(k)?.parse().map_err(|e: std::num::ParseIntError| bad(k, e.to_string())) };
    opt.steps = num("optim_steps")?;
    let rng: [u64; 4] = serde_json::from_str(&meta("rng")?).map_err(|e| bad("rng", e.to_string()))?;
    Ok(State {
        net,
        opt,
        ema,
        step: num("step")?,
        epoch: num("epoch")? as usize,
        batch_in_epoch: num("batch_in_epoch")? as usize,
        rng: Rng::from_state(rng),
        train_seconds: meta("train_seconds")?.parse().unwrap_or(0.0),
        model,
    })
}

fn append_metrics(cfg: &Config, m: &Metrics) -> Result<()> {
    let path = cfg.out.join("metrics.jsonl");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
    writeln!(f, "{}", serde_json::to_string(m).unwrap()).map_err(|e| Error::io(&path, e))
}

fn read_metrics(cfg: &Config) -> Vec<Metrics> {
    super::ckpt::read_metrics(&cfg.out)
}

/// Trains as `cfg` says; with `resume`, continues from `OUT/checkpoint.safetensors`.
/// Returns the path of the final weights.
pub fn train(cfg: &Config, resume: bool, on: &mut dyn FnMut(Event)) -> Result<PathBuf> {
    check_config(cfg)?;
    let on_bad = if cfg.skip_bad_images { OnBad::Skip } else { OnBad::Stop };
    let (ds, train_idx, val) = open_data(cfg, on_bad)?;
    let mut s = initial_state(cfg, resume, &ds, on)?;
    let k = s.model.spec().classes;
    if let Some(&bad) = ds.labels.iter().find(|&&l| l >= k) {
        return Err(Error::Input(format!("{}: label {bad} is out of range for {k} classes", ds.path.display())));
    }
    Net::check_plan(&s.net.plan)?;
    let per_epoch = Loader::batches(train_idx.len(), cfg.batch) as u64;
    let mut run = Run {
        cfg,
        on_bad,
        ds,
        train_idx: Arc::new(train_idx),
        val,
        ckpt: cfg.out.join(CHECKPOINT),
        cls_layer: s.net.plan.classifier("training")?.classifier,
        per_epoch,
        total: per_epoch * cfg.epochs as u64,
        tape: Tape::new(&s.net.plan, cfg.batch),
        threads: rayon::current_num_threads(),
        history: read_metrics(cfg),
    };
    while s.epoch < cfg.epochs {
        if run.epoch(&mut s, on)? == Flow::Stop {
            break;
        }
    }
    finish(cfg, &s)
}

/// Arguments no run can start with; an output folder that cannot be written is found now,
/// not at the first checkpoint an epoch later.
fn check_config(cfg: &Config) -> Result<()> {
    if cfg.batch == 0 || cfg.epochs == 0 {
        return Err(Error::Input("--batch and --epochs must be at least 1".into()));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::Input(format!("learning rate {} must be positive", cfg.lr)));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let probe = cfg.out.join(".mnv2-writable");
    crate::fsutil::write_atomic(&probe, b"").map_err(|e| match e {
        Error::Io { source, .. } => {
            Error::io(&cfg.out, std::io::Error::new(source.kind(), format!("output folder is not writable: {source}")))
        }
        other => other,
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Validation images: a dataset and the indices of the images in it.
type Val = Option<(Arc<Dataset>, Arc<Vec<usize>>)>;

/// The training set, the indices trained on, and the validation images (`--val`, or a
/// `--val-split` of the training set).
fn open_data(cfg: &Config, on_bad: OnBad) -> Result<(Arc<Dataset>, Vec<usize>, Val)> {
    let ds = Arc::new(Dataset::open(&cfg.data, on_bad)?);
    let (train_idx, val) = match &cfg.val {
        Some(v) => {
            let vd = if v == &cfg.data { Dataset::open_test(v, on_bad)? } else { Dataset::open(v, on_bad)? };
            let idx: Vec<usize> = (0..vd.len()).collect();
            ((0..ds.len()).collect::<Vec<_>>(), Some((Arc::new(vd), Arc::new(idx))))
        }
        None if cfg.val_split > 0.0 => {
            let (t, v) = ds.split(cfg.val_split, cfg.seed);
            (t, Some((ds.clone(), Arc::new(v))))
        }
        None => ((0..ds.len()).collect(), None),
    };
    if train_idx.is_empty() {
        return Err(Error::Input(format!("{}: no training images", cfg.data.display())));
    }
    Ok((ds, train_idx, val))
}

/// The state to start from: the checkpoint when resuming, else a new model and optimiser.
fn initial_state(cfg: &Config, resume: bool, ds: &Dataset, on: &mut dyn FnMut(Event)) -> Result<State> {
    let ckpt = cfg.out.join(CHECKPOINT);
    if resume && ckpt.is_file() {
        let s = load_checkpoint(cfg, &ckpt)?;
        on(Event::Note(format!("resuming from {} at step {} (epoch {})", ckpt.display(), s.step, s.epoch + 1)));
        return Ok(s);
    }
    if resume {
        on(Event::Note(format!("no checkpoint in {}: starting from scratch", cfg.out.display())));
    }
    let model = build_model(cfg, &ds.classes)?;
    let net = Net::new(&model);
    let opt = Optimizer::new(cfg.method, cfg.weight_decay, cfg.decay_all, net.params.len());
    let ema = cfg.ema.map(|d| Ema::new(d, &net.params));
    let _ = std::fs::remove_file(cfg.out.join("metrics.jsonl"));
    Ok(State {
        model,
        net,
        opt,
        ema,
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        rng: Rng::new(cfg.seed),
        train_seconds: 0.0,
    })
}

/// Whether the run goes on after an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// What stays the same for every epoch of a run.
struct Run<'c> {
    cfg: &'c Config,
    on_bad: OnBad,
    ds: Arc<Dataset>,
    train_idx: Arc<Vec<usize>>,
    val: Val,
    ckpt: PathBuf,
    cls_layer: usize,
    per_epoch: u64,
    total: u64,
    tape: Tape,
    threads: usize,
    history: Vec<Metrics>,
}

/// Running sums of an epoch, for the progress line and the metrics.
struct Sums {
    loss: f64,
    hits: usize,
    seen: usize,
    /// Images since the last evaluation (for its images/s).
    since_eval: usize,
}

impl Run<'_> {
    /// One epoch (or what is left of it after a resume): its batches, evaluations and
    /// checkpoints as configured.
    fn epoch(&mut self, s: &mut State, on: &mut dyn FnMut(Event)) -> Result<Flow> {
        let cfg = self.cfg;
        let epoch = s.epoch;
        let mut order = (*self.train_idx).clone();
        if cfg.shuffle {
            Rng::new(cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F)).shuffle(&mut order);
        }
        let t = Transform {
            augment: cfg.augment,
            train: true,
            preprocess: s.model.preprocess.clone(),
            height: s.model.spec().height,
            width: s.model.spec().width_px,
            seed: cfg.seed,
            epoch: epoch as u64,
            on_bad: self.on_bad,
        };
        on(Event::Start {
            epoch,
            steps: self.per_epoch as usize,
            done: s.batch_in_epoch,
            images: order.len(),
            classes: s.model.spec().classes,
            params: s.net.params.len(),
        });
        let mut loader = Loader::new(self.ds.clone(), Arc::new(order), cfg.batch, s.batch_in_epoch, t, 1, 3);
        let mut sums = Sums { loss: 0.0, hits: 0, seen: 0, since_eval: 0 };
        let mut t_epoch = Instant::now();
        loop {
            let wait = super::prof::span(10);
            let Some(b) = loader.next() else { break };
            drop(wait);
            let b = b?;
            if b.labels.is_empty() {
                s.batch_in_epoch += 1;
                continue;
            }
            let lr = self.step(s, &b.images, &b.labels, &mut sums)?;
            let dt = t_epoch.elapsed().as_secs_f64();
            s.train_seconds += dt;
            t_epoch = Instant::now();
            on(Event::Step {
                epoch,
                step_in_epoch: s.batch_in_epoch,
                loss: sums.loss / sums.seen as f64,
                acc: sums.hits as f64 / sums.seen as f64,
                images_per_s: b.labels.len() as f64 / dt.max(1e-9),
                lr,
            });
            let stop = cfg.max_steps.is_some_and(|m| s.step >= m);
            let end = s.batch_in_epoch as u64 >= self.per_epoch;
            let eval_now = end || stop || (cfg.eval_every > 0 && s.step.is_multiple_of(cfg.eval_every));
            if end {
                s.epoch += 1;
                s.batch_in_epoch = 0;
            }
            if eval_now {
                self.evaluate(s, lr, &mut sums, on)?;
                t_epoch = Instant::now();
            }
            if end || stop || (cfg.checkpoint_every > 0 && s.step.is_multiple_of(cfg.checkpoint_every)) {
                let had = self.ckpt.is_file();
                save_checkpoint(cfg, s).map_err(|e| {
                    let kept = if had { "the previous checkpoint is kept" } else { "no checkpoint was written before" };
                    write_error(&self.ckpt, "the checkpoint", e, kept)
                })?;
                t_epoch = Instant::now();
            }
            if stop {
                return Ok(Flow::Stop);
            }
        }
        if s.batch_in_epoch != 0 {
            // The loader ended early (only with skipped images at the end).
            s.epoch += 1;
            s.batch_in_epoch = 0;
        }
        Ok(Flow::Continue)
    }

    /// One optimisation step on a batch; returns the learning rate it used.
    fn step(&mut self, s: &mut State, images: &[f32], labels: &[usize], sums: &mut Sums) -> Result<f64> {
        let cfg = self.cfg;
        let lr = cfg.schedule.lr(cfg.lr, s.step, self.per_epoch, self.total);
        let frozen = s.epoch < cfg.freeze_backbone;
        let opts = StepOptions {
            bn: if frozen { BnMode::Eval } else { BnMode::Train },
            backbone: !frozen,
            label_smoothing: cfg.label_smoothing,
        };
        let st = s.net.step(&mut self.tape, images, labels, opts, Some(&mut s.rng))?;
        if !st.loss.is_finite() {
            return Err(Error::Input(format!(
                "the loss is {} at step {} (epoch {}): training diverged (try a lower --lr); the last good checkpoint {} is kept",
                st.loss,
                s.step + 1,
                s.epoch + 1,
                self.ckpt.display()
            )));
        }
        let _sp = super::prof::span(9);
        let cls_layer = self.cls_layer;
        s.opt.step(&mut s.net.params, &s.net.grads, &s.net.tensors, lr as f32, |t| !frozen || t.layer == cls_layer);
        if let Some(e) = &mut s.ema {
            e.update(&s.net.params);
        }
        s.step += 1;
        s.batch_in_epoch += 1;
        let n = labels.len();
        sums.loss += st.loss * n as f64;
        sums.hits += st.correct;
        sums.seen += n;
        sums.since_eval += n;
        Ok(lr)
    }

    /// Metrics now: the running training sums, validation if there is a validation set; appended
    /// to metrics.jsonl, drawn into curves.png and reported.
    fn evaluate(&mut self, s: &State, lr: f64, sums: &mut Sums, on: &mut dyn FnMut(Event)) -> Result<()> {
        let cfg = self.cfg;
        let since = s.train_seconds - self.history.last().map_or(0.0, |m| m.train_seconds);
        let ips = sums.since_eval as f64 / since.max(1e-9);
        sums.since_eval = 0;
        let mut m = Metrics {
            epoch: s.step as f64 / self.per_epoch as f64,
            step: s.step,
            lr,
            train_loss: sums.loss / sums.seen as f64,
            train_acc: sums.hits as f64 / sums.seen as f64,
            val_loss: None,
            val_top1: None,
            val_top5: None,
            val_miou: None,
            cls_loss: None,
            loc_loss: None,
            val_map: None,
            val_ap50: None,
            images_per_s: ips,
            train_seconds: s.train_seconds,
            peak_rss_mb: peak_rss_mb(),
        };
        if let Some((vd, vi)) = &self.val {
            let mut model = s.model.clone();
            s.net.store(&mut model);
            let r = evaluate(
                &model,
                vd.clone(),
                vi.clone(),
                cfg.augment,
                cfg.batch,
                self.threads,
                None,
                cfg.skip_bad_images,
            )?;
            m.val_loss = Some(r.loss);
            m.val_top1 = Some(r.top1);
            m.val_top5 = Some(r.top5);
        }
        append_metrics(cfg, &m)?;
        self.history.push(m.clone());
        if let Err(e) = plot::curves(&cfg.out.join("curves.png"), &self.history) {
            on(Event::Note(format!("warning: could not draw the curves: {e}")));
        }
        on(Event::Eval(m));
        Ok(())
    }
}

/// The final weights (the EMA's where there is one), checked finite, written atomically.
fn finish(cfg: &Config, s: &State) -> Result<PathBuf> {
    let mut model = s.model.clone();
    s.net.store(&mut model);
    if let Some(e) = &s.ema {
        let mut ema_net = s.net.clone();
        ema_net.params.copy_from_slice(&e.params);
        ema_net.store(&mut model);
    }
    let out = cfg.out.join("final.safetensors");
    check_finite(s)?;
    model.save(&out).map_err(|e| write_error(&out, "the final weights", e, "the last checkpoint is kept"))?;
    Ok(out)
}

/// A failed write (full disk, file size limit, permissions) as one clear line; the atomic
/// writer has already removed its temporary file, so nothing half-written is left.
fn write_error(path: &Path, what: &str, e: Error, kept: &str) -> Error {
    match e {
        Error::Io { source, .. } => {
            Error::Input(format!("could not write {what} {}: {source} (is the disk full?); {kept}", path.display()))
        }
        other => other,
    }
}
