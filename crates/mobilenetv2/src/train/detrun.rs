//! The detection training loop (`mnv2 train --task detection --head ssdlite`): SSDLite on
//! MobileNetV2 trained on a COCO, Pascal VOC or composed detection dataset
//! ([`crate::detect::dataset`]), from an ImageNet backbone or from a detector to fine-tune.
//!
//! The recipe of TF's `ssdlite_mobilenet_v2_coco.config`:
//! - the network: [`crate::detect::heads::spec`] (TF 'SAME' padding, BatchNorm epsilon 1e-3)
//!   with one logit per foreground class of the dataset plus background, square
//!   [`DetConfig::resolution`] (300 as the real model); extra layers and predictors initialised
//!   from a truncated normal of standard deviation 0.03 (TF's `conv_hyperparams`), biases zero;
//! - the loss [`crate::detect::loss::ssd_loss`] with [`LossConfig::default`] (argmax matcher at
//!   IoU 0.5, box coder (10, 10, 5, 5), weighted sigmoid classification, smooth L1, hard example
//!   mining with 3 negatives per positive, normalised by the matches), backward through
//!   predictors, extra layers and backbone ([`SsdHeadTrainer::step`]);
//! - augmentation [`crate::detect::augment`] (`ssd_random_crop`, flip, photometric jitter),
//!   then the detector's own resize and input mapping;
//! - RMSProp with TF's rule (the config: lr 0.004, decay 0.9, momentum 0.9, epsilon 1.0) or SGD
//!   with momentum, on any [`Schedule`]; L2 weight decay 4e-5 on convolution weights;
//! - BatchNorm on batch statistics (running statistics updated) or frozen
//!   ([`DetConfig::freeze_bn`]: [`BnMode::Eval`]).
//!
//! Each step draws [`DetConfig::batch`] training images at random (with replacement) from the
//! run's RNG, so a run is a function of its config and a resumed run continues bit for bit.
//!
//! Evaluation (every `eval_every` steps and at the end) builds the inference [`Detector`] of
//! the current weights (BatchNorm folded from the running statistics, the engine's fast path,
//! TF's post-processing with every score kept) and scores its detections on the val split
//! with [`crate::detect::cocoeval`] (COCO AP@[.5:.95] and AP50, as pycocotools).
//!
//! Outputs in [`DetConfig::out`], as the other loops write them: `metrics.jsonl` (one
//! [`Metrics`] line per evaluation: loss and its classification and localisation parts,
//! `val_map`, `val_ap50`, images/s, peak RSS), `curves.png`, an atomic resumable
//! `checkpoint.safetensors` and `final.safetensors`, a detector file (model, anchors,
//! post-processing, labels) that [`Detector::load`] (`mnv2 detect --weights`, `mnv2 eval --task
//! detection --weights`) reads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::ckpt;
use super::net::{BnMode, Net, Tape};
use super::optim::{Method, Optimizer, Schedule};
use super::run::{peak_rss_mb, Event, Metrics};
use super::ssd::{HeadTape, SsdHeadTrainer};
use crate::detect::augment::{self, SsdAugment};
use crate::detect::cocoeval;
use crate::detect::dataset::{BadAnnotations, DetectionDataset};
use crate::detect::heads::{self, HeadKind};
use crate::detect::loss::{LabeledBox, LossConfig};
use crate::detect::{Detector, DetectorOptions, SsdConfig, TfPreprocess};
use crate::engine::Mode;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::plan::Role;
use crate::preprocess;
use crate::rng::Rng;

/// What a detection run starts from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "path", rename_all = "lowercase")]
pub enum DetInit {
    /// Random weights everywhere (tests).
    Random,
    /// An ImageNet classifier (any format `mnv2` reads, e.g. torchvision's
    /// `mobilenet_v2-b0353104.pth`): its backbone tensors are copied, the head is new. The
    /// input mapping is `x * scale - offset` with the ImageNet mean and standard deviation
    /// averaged over the channels (`(x / 255 - 0.449) / 0.226`).
    Backbone(PathBuf),
    /// A detector (a TF frozen graph or a detector safetensors file): every tensor that fits is
    /// copied (the class predictors too when the dataset has as many classes), and its input
    /// mapping and post-processing are kept.
    Detector(PathBuf),
}

/// A detection training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetConfig {
    /// Dataset root with `train` and `val` splits ([`DetectionDataset::open`]).
    pub data: PathBuf,
    /// The weights to start from.
    pub init: DetInit,
    /// Width multiplier (must match the weights of `init`).
    pub width: f64,
    /// Square input side in pixels (the real model: 300).
    pub resolution: usize,
    /// Images per step (two or more unless `freeze_bn`: the 1x1 extra maps' BatchNorm needs
    /// more than one value per channel).
    pub batch: usize,
    /// Training steps (the schedule runs over them).
    pub steps: u64,
    /// The update rule.
    pub method: Method,
    /// Base learning rate.
    pub lr: f64,
    /// Learning rate over the run (epochs are `train images / batch` steps).
    pub schedule: Schedule,
    /// L2 weight decay on convolution weights.
    pub weight_decay: f32,
    /// BatchNorm on its running statistics, not updated (TF's `freeze_batchnorm`).
    pub freeze_bn: bool,
    /// Training augmentation.
    pub augment: SsdAugment,
    /// Seed of the head's initialisation, the image draws and the augmentation.
    pub seed: u64,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Evaluate on the first this many val images (0: all).
    pub val_images: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Stop (with a checkpoint) after this many steps of the run without ending it: the
    /// schedule still runs over `steps`, and `--resume` continues.
    pub max_steps: Option<u64>,
    /// End the run (final evaluation and `final.safetensors`) once this many seconds of
    /// training steps (evaluation excluded; a resumed run's earlier time included) are spent,
    /// even before `steps`: a results run on a stated time budget.
    pub budget_seconds: Option<f64>,
    /// Skip malformed annotations (counted) instead of stopping.
    pub skip_bad_annotations: bool,
    /// Threads of the evaluation's detector.
    pub threads: usize,
    /// Output folder.
    pub out: PathBuf,
}

/// COCO scores of a detector on a split.
#[derive(Clone, Debug, PartialEq)]
pub struct DetEval {
    /// AP@[.5:.95] (pycocotools' first number).
    pub map: f64,
    /// AP at IoU 0.5.
    pub ap50: f64,
    /// The 12 numbers of pycocotools' `summarize()`.
    pub stats: [f64; 12],
    /// Images scored.
    pub images: usize,
}

struct State {
    model: Model,
    ssd: SsdConfig,
    net: Net,
    opt: Optimizer,
    step: u64,
    rng: Rng,
    train_seconds: f64,
}

const CHECKPOINT: &str = "checkpoint.safetensors";
const FORMAT: &str = "mnv2-dettrain-checkpoint";

/// ImageNet's per-channel mean and standard deviation, averaged over the channels, as a
/// single `x * scale - offset` (the detector's input mapping is per image, not per channel).
fn imagenet_mapping(resolution: usize) -> TfPreprocess {
    let (mean, std) = (0.449f32, 0.226f32);
    TfPreprocess { height: resolution, width: resolution, scale: 1.0 / (255.0 * std), offset: mean / std }
}

/// The model and post-processing of the run for `classes` foreground classes: random, with
/// `init`'s tensors copied. Returns a line saying what was copied.
fn build_model(cfg: &DetConfig, labels: &[String]) -> Result<(Model, SsdConfig, String)> {
    let classes = labels.len();
    let spec = heads::spec(HeadKind::SsdLite, classes + 1, cfg.width, cfg.resolution);
    let mut model = Model::init(&spec, cfg.seed, false)?;
    // TF's conv_hyperparams for the extra layers and predictors: truncated N(0, 0.03).
    let mut rng = Rng::new(cfg.seed ^ 0x55d1);
    for layer in model.plan.layers.clone() {
        if matches!(layer.role, Role::Extra | Role::Predictor) {
            if let Some(w) = model.params.get_mut(&crate::names::weight(&layer)) {
                for v in w.iter_mut() {
                    *v = loop {
                        let z = rng.normal();
                        if z.abs() <= 2.0 {
                            break (z * 0.03) as f32;
                        }
                    };
                }
            }
        }
    }
    let mut ssd = SsdConfig { classes, ..SsdConfig::default() };
    ssd.preprocess = imagenet_mapping(cfg.resolution);
    let width_check = |path: &Path, w: f64| -> Result<()> {
        if (w - cfg.width).abs() > 1e-9 {
            return Err(Error::Input(format!(
                "{}: width {w} but the run's is {} (--width)",
                path.display(),
                cfg.width
            )));
        }
        Ok(())
    };
    let note = match &cfg.init {
        DetInit::Random => "all weights random".to_string(),
        DetInit::Backbone(path) => {
            let src = Model::load(path)?;
            width_check(path, src.spec().width)?;
            let mut copied = 0;
            for (name, v) in model.params.iter_mut() {
                if let Some(s) = src.params.get(name).filter(|s| s.len() == v.len() && name.starts_with("features.")) {
                    v.copy_from_slice(s);
                    copied += 1;
                }
            }
            if copied == 0 {
                return Err(Error::Input(format!("{}: no backbone tensor fits the detector", path.display())));
            }
            format!("backbone: {copied} tensors from {}", path.display())
        }
        DetInit::Detector(path) => {
            let det = Detector::load(path, DetectorOptions::default())?;
            width_check(path, det.model().spec().width)?;
            let theirs = det.options().config.clone();
            if theirs.box_specs != ssd.box_specs {
                return Err(Error::Unsupported(format!(
                    "{}: fine-tuning a detector with other anchors than ssdlite_mobilenet_v2_coco.config's",
                    path.display()
                )));
            }
            let (mut copied, mut fresh) = (0, 0);
            for (name, v) in model.params.iter_mut() {
                match det.model().params.get(name).filter(|s| s.len() == v.len()) {
                    Some(s) => {
                        v.copy_from_slice(s);
                        copied += 1;
                    }
                    None => fresh += 1,
                }
            }
            ssd = SsdConfig {
                classes,
                preprocess: TfPreprocess { height: cfg.resolution, width: cfg.resolution, ..theirs.preprocess },
                ..theirs
            };
            format!("detector: {copied} tensors from {} ({fresh} new: other classes)", path.display())
        }
    };
    Ok((model, ssd, note))
}

/// The inference detector of `model` with `ssd`'s post-processing, every score kept (for COCO
/// evaluation) or those above `threshold`.
fn detector(model: &Model, ssd: &SsdConfig, labels: &[String], threshold: f32, threads: usize) -> Result<Detector> {
    let labels = labels.to_vec();
    Detector::new(
        model.clone(),
        DetectorOptions {
            threshold,
            threads: threads.max(1),
            mode: Mode::Fast,
            precision: None,
            config: ssd.clone(),
            labels,
        },
    )
}

/// COCO AP of `det` on (up to `limit`, 0: all) the first images of `set`.
pub fn evaluate_detection(det: &Detector, set: &DetectionDataset, limit: usize) -> Result<DetEval> {
    let count = if limit == 0 { set.images.len() } else { limit.min(set.images.len()) };
    let mut subset = set.clone();
    subset.images.truncate(count);
    if count == 0 {
        return Err(Error::Input(format!("{}: no val images to evaluate", set.source.display())));
    }
    let mut results = Vec::new();
    for start in (0..count).step_by(8) {
        let end = (start + 8).min(count);
        let images = (start..end).map(|i| preprocess::decode(&set.images[i].path)).collect::<Result<Vec<_>>>()?;
        for (k, found) in det.detect_batch(&images)?.iter().enumerate() {
            results.extend(set.results_for(start + k, found)?);
        }
    }
    let ev = cocoeval::evaluate(&subset.to_ground_truth(), &results)?;
    Ok(DetEval { map: ev.stats[0], ap50: ev.stats[1], stats: ev.stats, images: count })
}

/// The training boxes of image `i`: normalised, crowd and difficult boxes left out.
fn boxes_of(set: &DetectionDataset, i: usize, width: usize, height: usize) -> Vec<LabeledBox> {
    let (w, h) = (width as f32, height as f32);
    set.images[i]
        .boxes
        .iter()
        .filter(|b| !b.crowd && !b.difficult)
        .map(|b| {
            let [x0, y0, x1, y1] = b.bbox;
            LabeledBox { bbox: [y0 / h, x0 / w, y1 / h, x1 / w].map(|v| v.clamp(0.0, 1.0)), class: b.class }
        })
        .filter(|b| b.bbox[2] > b.bbox[0] && b.bbox[3] > b.bbox[1])
        .collect()
}

fn check_config(cfg: &DetConfig) -> Result<()> {
    if cfg.batch == 0 || cfg.steps == 0 {
        return Err(Error::Input("--batch and --steps must be at least 1".into()));
    }
    if cfg.batch < 2 && !cfg.freeze_bn {
        return Err(Error::Input(format!(
            "--batch {}: detection training with trainable BatchNorm needs two or more images per step \
             (the 1x1 extra maps); pass --freeze-bn or a larger --batch",
            cfg.batch
        )));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::Input(format!("learning rate {} must be positive", cfg.lr)));
    }
    if cfg.resolution < 32 {
        return Err(Error::Input(format!("--resolution {} is too small for SSD (32 or more)", cfg.resolution)));
    }
    Ok(())
}

/// Whether a checkpoint of `stored` may be continued with `cfg` (what only paces or places the
/// run may differ).
fn same_run(stored: &DetConfig, cfg: &DetConfig) -> bool {
    let norm = |c: &DetConfig| DetConfig {
        eval_every: 0,
        val_images: 0,
        checkpoint_every: 0,
        max_steps: None,
        budget_seconds: None,
        threads: 1,
        out: PathBuf::new(),
        ..c.clone()
    };
    norm(stored) == norm(cfg)
}

fn save_checkpoint(cfg: &DetConfig, s: &State) -> Result<()> {
    let extra = [
        ("config", serde_json::to_string(cfg).expect("config serialises")),
        ("ssd_config", serde_json::to_string(&s.ssd).expect("config serialises")),
    ];
    ckpt::save(&cfg.out.join(CHECKPOINT), FORMAT, &s.model, &s.net, &s.opt, s.step, &s.rng, s.train_seconds, &extra)
}

fn load_checkpoint(cfg: &DetConfig, path: &Path, labels: &[String]) -> Result<State> {
    let (mut model, _, _) = build_model(&DetConfig { init: DetInit::Random, ..cfg.clone() }, labels)?;
    let mut net = Net::new(&model);
    let mut opt = Optimizer::new(cfg.method, cfg.weight_decay, false, net.params.len());
    let r = ckpt::load(path, FORMAT, &mut net, &mut opt, "another --resolution/--width or dataset?")?;
    let bad = |what: String| Error::format(path, "checkpoint", what);
    let get = |k: &str| r.metadata.get(k).ok_or_else(|| bad(format!("no `{k}` in the metadata")));
    let stored: DetConfig = serde_json::from_str(get("config")?).map_err(|e| bad(format!("metadata `config`: {e}")))?;
    if !same_run(&stored, cfg) {
        return Err(Error::Input(format!(
            "{}: --resume with other options than the checkpoint's (stored: {})",
            path.display(),
            serde_json::to_string(&stored).expect("serialises")
        )));
    }
    let ssd: SsdConfig =
        serde_json::from_str(get("ssd_config")?).map_err(|e| bad(format!("metadata `ssd_config`: {e}")))?;
    net.store(&mut model);
    Ok(State { model, ssd, net, opt, step: r.step, rng: r.rng, train_seconds: r.train_seconds })
}

/// Trains as `cfg` says; with `resume`, continues from `OUT/checkpoint.safetensors`. Returns
/// the path of `final.safetensors` (or of the checkpoint when `max_steps` stopped the run
/// before its end; `budget_seconds` ends it with `final.safetensors`).
pub fn train_detection(cfg: &DetConfig, resume: bool, on: &mut dyn FnMut(Event)) -> Result<PathBuf> {
    check_config(cfg)?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let mode = if cfg.skip_bad_annotations { BadAnnotations::Skip } else { BadAnnotations::Stop };
    let train = DetectionDataset::open(&cfg.data, "train", mode)?;
    if train.images.is_empty() {
        return Err(Error::Input(format!("{}: the train split has no images", cfg.data.display())));
    }
    if train.skipped > 0 {
        on(Event::Note(format!("skipped {} bad annotation records in the train split", train.skipped)));
    }
    let val = match DetectionDataset::open(&cfg.data, "val", mode) {
        Ok(v) if !v.images.is_empty() => Some(v),
        _ => {
            on(Event::Note(format!("{}: no val split: no evaluation", cfg.data.display())));
            None
        }
    };
    let labels: Vec<String> = train.categories.iter().map(|c| c.name.clone()).collect();
    if labels.is_empty() {
        return Err(Error::Input(format!("{}: the dataset has no categories", cfg.data.display())));
    }
    let ckpt_path = cfg.out.join(CHECKPOINT);
    let mut s = if resume && ckpt_path.is_file() {
        let s = load_checkpoint(cfg, &ckpt_path, &labels)?;
        on(Event::Note(format!("resuming from {} at step {}", ckpt_path.display(), s.step)));
        s
    } else {
        if resume {
            on(Event::Note(format!("no checkpoint in {}: starting from scratch", cfg.out.display())));
        }
        let _ = std::fs::remove_file(cfg.out.join("metrics.jsonl"));
        let (model, ssd, note) = build_model(cfg, &labels)?;
        on(Event::Note(note));
        let net = Net::new(&model);
        let opt = Optimizer::new(cfg.method, cfg.weight_decay, false, net.params.len());
        State { model, ssd, net, opt, step: 0, rng: Rng::new(cfg.seed ^ 0xde7), train_seconds: 0.0 }
    };
    let head = SsdHeadTrainer::new(&s.net.plan)?;
    let loss_cfg = LossConfig::default();
    let bn = if cfg.freeze_bn { BnMode::Eval } else { BnMode::Train };
    let pre = s.ssd.preprocess;
    let mut tape = Tape::new(&s.net.plan, cfg.batch);
    let mut htape = HeadTape::default();
    on(Event::Start {
        epoch: 0,
        steps: cfg.steps as usize,
        done: s.step as usize,
        images: train.images.len(),
        classes: labels.len(),
        params: s.net.params.len(),
    });
    let mut history = ckpt::read_metrics(&cfg.out);
    let (mut sums, mut since, mut t_since) = ([0f64; 3], 0u64, 0f64);
    let per_epoch = (train.images.len() / cfg.batch).max(1) as u64;
    let stop_at = cfg.max_steps.map_or(cfg.steps, |m| m.min(cfg.steps));
    while s.step < stop_at && !cfg.budget_seconds.is_some_and(|b| s.train_seconds >= b) {
        let t0 = Instant::now();
        let (mut x, mut boxes) = (Vec::with_capacity(cfg.batch * pre.height * pre.width * 3), Vec::new());
        for _ in 0..cfg.batch {
            let i = s.rng.below(train.images.len());
            let img = preprocess::decode(&train.images[i].path)?;
            let b = boxes_of(&train, i, img.width, img.height);
            let (xi, bi) = augment::augment(&img, &b, &cfg.augment, &pre, &mut s.rng);
            x.extend(xi);
            boxes.push(bi);
        }
        let lr = cfg.schedule.lr(cfg.lr, s.step, per_epoch, cfg.steps);
        let l = head.step(&mut s.net, &mut tape, &mut htape, &x, &boxes, &loss_cfg, bn, true)?;
        if !l.total.is_finite() {
            return Err(Error::Input(format!(
                "the loss is {} at step {}: training diverged (try a lower --lr); the last good checkpoint is kept",
                l.total,
                s.step + 1
            )));
        }
        s.opt.step(&mut s.net.params, &s.net.grads, &s.net.tensors, lr as f32, |_| true);
        s.step += 1;
        let dt = t0.elapsed().as_secs_f64();
        s.train_seconds += dt;
        t_since += dt;
        sums[0] += l.total;
        sums[1] += l.classification;
        sums[2] += l.localization;
        since += 1;
        on(Event::Step {
            epoch: ((s.step - 1) / per_epoch) as usize,
            step_in_epoch: ((s.step - 1) % per_epoch) as usize,
            loss: l.total,
            acc: 0.0,
            images_per_s: cfg.batch as f64 / dt.max(1e-9),
            lr,
        });
        let over_budget = cfg.budget_seconds.is_some_and(|b| s.train_seconds >= b);
        let end = s.step == stop_at || over_budget;
        if end || (cfg.eval_every > 0 && s.step.is_multiple_of(cfg.eval_every)) {
            let ev = match &val {
                Some(v) => {
                    let mut model = s.model.clone();
                    s.net.store(&mut model);
                    Some(evaluate_detection(&detector(&model, &s.ssd, &labels, 0.0, cfg.threads)?, v, cfg.val_images)?)
                }
                None => None,
            };
            let n = since.max(1) as f64;
            let m = Metrics {
                epoch: s.step as f64 / per_epoch as f64,
                step: s.step,
                lr,
                train_loss: sums[0] / n,
                train_acc: 0.0,
                val_loss: None,
                val_top1: None,
                val_top5: None,
                val_miou: None,
                cls_loss: Some(sums[1] / n),
                loc_loss: Some(sums[2] / n),
                val_map: ev.as_ref().map(|e| e.map),
                val_ap50: ev.as_ref().map(|e| e.ap50),
                images_per_s: (since as f64 * cfg.batch as f64) / t_since.max(1e-9),
                train_seconds: s.train_seconds,
                peak_rss_mb: peak_rss_mb(),
            };
            ckpt::record(&cfg.out, &mut history, m, on)?;
            (sums, since, t_since) = ([0.0; 3], 0, 0.0);
        }
        if end || (cfg.checkpoint_every > 0 && s.step.is_multiple_of(cfg.checkpoint_every)) {
            save_checkpoint(cfg, &s)?;
        }
        if over_budget {
            on(Event::Note(format!(
                "time budget of {:.0} s spent after step {} of {}: finishing",
                s.train_seconds, s.step, cfg.steps
            )));
            break;
        }
    }
    let budget_spent = cfg.budget_seconds.is_some_and(|b| s.train_seconds >= b);
    if s.step < cfg.steps && !budget_spent {
        on(Event::Note(format!("stopped at step {} of {} (--max-steps): continue with --resume", s.step, cfg.steps)));
        return Ok(ckpt_path);
    }
    let mut model = s.model.clone();
    s.net.store(&mut model);
    let out = cfg.out.join("final.safetensors");
    detector(&model, &s.ssd, &labels, 0.5, 1)?.save(&out, crate::weights::safetensors_io::FloatStore::F32)?;
    Ok(out)
}
