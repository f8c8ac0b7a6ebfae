//! The segmentation training loop (`mnv2 train --task segmentation --head deeplab`): Mobile
//! DeepLabv3 fine-tuned from an ImageNet backbone on a VOC-style or composed segmentation
//! dataset ([`crate::segment::dataset`]).
//!
//! TF DeepLab's recipe: per image a random scale in [0.5, 2.0] (bilinear image, nearest mask),
//! padded to the crop size (image zeros after normalisation, mask [`IGNORE`]), a random crop
//! and a random left-right flip; SGD with momentum under the poly schedule
//! `lr * (1 - step / steps)^power` ([`Schedule::Poly`]); dropout 0.1 before the logits; the
//! loss of [`Net::seg_step`]. Validation (every `eval_every` steps and at the end) runs
//! BatchNorm on running statistics over the val split, each image centre-cropped or padded to
//! the crop size, and scores the labelled pixels' argmax with a confusion matrix (mIoU, pixel
//! accuracy).
//!
//! Outputs in [`SegConfig::out`], as classification training writes them: `metrics.jsonl` (one
//! [`Metrics`] line per evaluation, `val_miou` set), `curves.png`, an atomic
//! `checkpoint.safetensors` (weights, momentum, step, RNG; `resume` continues from it) and
//! `final.safetensors`, a DeepLab model that [`crate::segment::Segmenter`] (and `mnv2 segment
//! --weights`) loads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::ckpt;
use super::deeplab::{SegTape, IGNORE};
use super::net::{BnMode, Net, Tape};
use super::optim::{Method, Optimizer, Schedule};
use super::run::{peak_rss_mb, Event, Metrics};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::preprocess::{self, Preprocess};
use crate::rng::Rng;
use crate::segment::dataset::{Sample, SegmentationSet};
use crate::segment::metric::ConfusionMatrix;
use crate::spec::{HeadSpec, Spec};

/// A segmentation training run.
#[derive(Clone, Debug, Serialize)]
pub struct SegConfig {
    /// Dataset root (VOC layout or `mnv2 dataset compose` output) with `train` and `val` splits.
    pub data: PathBuf,
    /// Backbone weights to start from (any format `mnv2` reads, e.g. torchvision's
    /// `mobilenet_v2-b0353104.pth`): every backbone tensor that fits is copied, the head is
    /// initialised randomly. `None`: all random (a test's setting).
    pub init: Option<PathBuf>,
    /// Width multiplier of the backbone (must match `init`).
    pub width: f64,
    /// 16 or 8.
    pub output_stride: usize,
    /// The head with ASPP (three 3x3 atrous branches, rates 6/12/18 at output stride 16,
    /// doubled at 8) as well as the 1x1 and image-pooling branches.
    pub aspp: bool,
    /// Square crop side in pixels (TF DeepLab: 513).
    pub crop: usize,
    /// Training steps (TF DeepLab's `training_number_of_steps`).
    pub steps: u64,
    /// Images per step (two or more: the image-pooling BatchNorm needs them).
    pub batch: usize,
    /// Base learning rate of the poly schedule.
    pub lr: f64,
    /// Power of the poly schedule (DeepLab: 0.9).
    pub power: f64,
    /// SGD momentum.
    pub momentum: f32,
    /// L2 weight decay on convolution weights.
    pub weight_decay: f32,
    /// Random scale range per image.
    pub min_scale: f64,
    /// See `min_scale`.
    pub max_scale: f64,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Evaluate on at most this many val images (0: all).
    pub val_images: usize,
    /// Checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Seed of the head's initialisation, the augmentation and dropout.
    pub seed: u64,
    /// Output folder.
    pub out: PathBuf,
}

/// Validation scores of a segmentation model.
#[derive(Clone, Debug, PartialEq)]
pub struct SegEval {
    /// Mean intersection over union over the classes present (in truth or prediction).
    pub miou: f64,
    /// Labelled pixels predicted right.
    pub pixel_acc: f64,
    /// Images scored.
    pub images: usize,
}

struct State {
    model: Model,
    net: Net,
    opt: Optimizer,
    step: u64,
    rng: Rng,
    train_seconds: f64,
}

const CHECKPOINT: &str = "checkpoint.safetensors";

fn method(cfg: &SegConfig) -> Method {
    Method::Sgd { momentum: cfg.momentum, nesterov: false }
}

/// The DeepLab model of the run: random, with the backbone copied from `init`.
fn build_model(cfg: &SegConfig, classes: usize) -> Result<(Model, usize)> {
    let spec = Spec {
        classes,
        output_stride: cfg.output_stride,
        head: HeadSpec::DeepLab { aspp: cfg.aspp },
        ..Spec::new(cfg.width, cfg.crop)
    };
    let mut model = Model::init(&spec, cfg.seed, false)?;
    super::deeplab::check(&model.plan)?;
    let mut copied = 0;
    if let Some(init) = &cfg.init {
        let src = Model::load(init)?;
        if (src.spec().width - cfg.width).abs() > 1e-9 {
            return Err(Error::Input(format!(
                "{}: width {} but the run's is {} (--width)",
                init.display(),
                src.spec().width,
                cfg.width
            )));
        }
        for (name, v) in model.params.iter_mut() {
            if let Some(s) = src.params.get(name).filter(|s| s.len() == v.len() && name.starts_with("features.")) {
                v.copy_from_slice(s);
                copied += 1;
            }
        }
        model.preprocess = src.preprocess.clone();
        model.preprocess.resize = None;
    }
    Ok((model, copied))
}

const FORMAT: &str = "mnv2-segtrain-checkpoint";

fn save_checkpoint(cfg: &SegConfig, s: &State) -> Result<()> {
    let config = serde_json::to_string(cfg).expect("config serialises");
    ckpt::save(
        &cfg.out.join(CHECKPOINT),
        FORMAT,
        &s.model,
        &s.net,
        &s.opt,
        s.step,
        &s.rng,
        s.train_seconds,
        &[("config", config)],
    )
}

fn load_checkpoint(cfg: &SegConfig, path: &Path, classes: usize) -> Result<State> {
    let (mut model, _) = build_model(&SegConfig { init: None, ..cfg.clone() }, classes)?;
    let mut net = Net::new(&model);
    let mut opt = Optimizer::new(method(cfg), cfg.weight_decay, false, net.params.len());
    let r = ckpt::load(path, FORMAT, &mut net, &mut opt, "another --crop/--width?")?;
    net.store(&mut model);
    Ok(State { model, net, opt, step: r.step, rng: r.rng, train_seconds: r.train_seconds })
}

/// One training sample after TF DeepLab's augmentation: scaled, padded, cropped, flipped;
/// `crop x crop` pixels (normalised NHWC values) and labels.
fn augment(cfg: &SegConfig, s: &Sample, pre: &Preprocess, rng: &mut Rng) -> (Vec<f32>, Vec<u8>) {
    let scale = cfg.min_scale + (cfg.max_scale - cfg.min_scale) * rng.uniform();
    let (w0, h0) = (s.image.width, s.image.height);
    let (w, h) = (((w0 as f64 * scale).round() as usize).max(1), ((h0 as f64 * scale).round() as usize).max(1));
    let img = preprocess::resize_bilinear(&s.image, w, h);
    let mask: Vec<u8> = (0..h)
        .flat_map(|y| {
            let sy = ((y as f64 + 0.5) * h0 as f64 / h as f64) as usize;
            (0..w).map(move |x| (sy.min(h0 - 1), ((x as f64 + 0.5) * w0 as f64 / w as f64) as usize))
        })
        .map(|(sy, sx)| s.mask[sy * w0 + sx.min(w0 - 1)])
        .collect();
    let c = cfg.crop;
    let (oy, ox) = (rng.below(h.saturating_sub(c) + 1), rng.below(w.saturating_sub(c) + 1));
    let flip = rng.uniform() < 0.5;
    let tensor = preprocess::to_tensor(&img, pre);
    let (mut x, mut y) = (vec![0f32; c * c * 3], vec![IGNORE; c * c]);
    for r in 0..c.min(h) {
        for q in 0..c.min(w) {
            let dq = if flip { c.min(w) - 1 - q } else { q };
            let (sy, sx) = (oy + r, ox + q);
            x[(r * c + dq) * 3..][..3].copy_from_slice(&tensor[(sy * w + sx) * 3..][..3]);
            y[r * c + dq] = mask[sy * w + sx];
        }
    }
    (x, y)
}

/// One step's batch, drawn ahead of the step by the loader thread.
struct Batch {
    /// `batch x crop x crop x 3` NHWC values.
    x: Vec<f32>,
    /// `batch x crop x crop` labels.
    y: Vec<u8>,
    /// The seed of the step's dropout.
    drop_seed: u64,
    /// The run's generator once this batch is drawn (what a checkpoint after the step saves).
    rng: Rng,
}

/// Draws a batch from `rng`: per image a random sample and its augmentation, then the
/// dropout seed (the order the loop drew them in when it loaded on the step's thread).
fn draw_batch(
    cfg: &SegConfig,
    train: &SegmentationSet,
    classes: usize,
    pre: &Preprocess,
    rng: &mut Rng,
) -> Result<Batch> {
    let (mut x, mut y) =
        (Vec::with_capacity(cfg.batch * cfg.crop * cfg.crop * 3), Vec::with_capacity(cfg.batch * cfg.crop * cfg.crop));
    for _ in 0..cfg.batch {
        let sample = train.load(rng.below(train.len()), classes)?;
        let (a, b) = augment(cfg, &sample, pre, rng);
        x.extend(a);
        y.extend(b);
    }
    let drop_seed = rng.next_u64();
    Ok(Batch { x, y, drop_seed, rng: rng.clone() })
}

/// The val-time input: the image centre-cropped (or zero-padded) to `crop x crop`, with its
/// mask cut the same way (padding ignored).
fn centre(s: &Sample, crop: usize, model: &Model) -> (Vec<f32>, Vec<u8>) {
    let (w, h) = (s.image.width, s.image.height);
    let (oy, ox) = (h.saturating_sub(crop) / 2, w.saturating_sub(crop) / 2);
    let tensor = preprocess::to_tensor(&s.image, &model.preprocess);
    let (mut x, mut y) = (vec![0f32; crop * crop * 3], vec![IGNORE; crop * crop]);
    for r in 0..crop.min(h) {
        for q in 0..crop.min(w) {
            let (sy, sx) = (oy + r, ox + q);
            x[(r * crop + q) * 3..][..3].copy_from_slice(&tensor[(sy * w + sx) * 3..][..3]);
            y[r * crop + q] = s.mask[sy * w + sx];
        }
    }
    (x, y)
}

/// mIoU and pixel accuracy of `net` on (up to `limit`, 0: all) images of `set`, BatchNorm on
/// running statistics.
pub fn evaluate_segmentation(
    net: &mut Net,
    model: &Model,
    set: &SegmentationSet,
    crop: usize,
    limit: usize,
) -> Result<SegEval> {
    let classes = net.plan.spec.classes;
    let mut tape = Tape::new(&net.plan, 1);
    let mut seg = SegTape::new(&net.plan, 1)?;
    let mut cm = ConfusionMatrix::new(classes);
    let count = if limit == 0 { set.len() } else { limit.min(set.len()) };
    for i in 0..count {
        let s = set.load(i, classes)?;
        let (x, y) = centre(&s, crop, model);
        net.seg_forward(&mut tape, &mut seg, &x, 1, BnMode::Eval, None)?;
        let pred = seg.predict(0);
        let (t, p): (Vec<u8>, Vec<u8>) =
            y.iter().zip(&pred).filter(|(t, _)| **t != IGNORE).map(|(t, p)| (*t, *p)).unzip();
        cm.add(&t, &p)?;
    }
    let sc = cm.scores();
    Ok(SegEval { miou: sc.mean_iou, pixel_acc: sc.pixel_accuracy, images: count })
}

/// Trains as `cfg` says; with `resume`, continues from `OUT/checkpoint.safetensors`. Returns
/// the path of `final.safetensors`.
pub fn train_segmentation(cfg: &SegConfig, resume: bool, on: &mut dyn FnMut(Event)) -> Result<PathBuf> {
    if cfg.batch < 2 {
        return Err(Error::Input(format!(
            "--batch {}: segmentation training needs two or more images per step (the image-pooling BatchNorm)",
            cfg.batch
        )));
    }
    if !(cfg.min_scale > 0.0 && cfg.min_scale <= cfg.max_scale) {
        return Err(Error::Input(format!("scale range {}..{} is empty", cfg.min_scale, cfg.max_scale)));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let train = SegmentationSet::open(&cfg.data, "train")?;
    let val = SegmentationSet::open(&cfg.data, "val").ok();
    let classes = train.class_names.len();
    let ckpt = cfg.out.join(CHECKPOINT);
    let mut s = if resume && ckpt.exists() {
        let s = load_checkpoint(cfg, &ckpt, classes)?;
        on(Event::Note(format!("resuming from {} at step {}", ckpt.display(), s.step)));
        s
    } else {
        if resume {
            on(Event::Note(format!("no checkpoint in {}: starting from scratch", cfg.out.display())));
        }
        let _ = std::fs::remove_file(cfg.out.join("metrics.jsonl"));
        let (model, copied) = build_model(cfg, classes)?;
        if let Some(init) = &cfg.init {
            on(Event::Note(format!("backbone: {copied} tensors from {}", init.display())));
        }
        let net = Net::new(&model);
        let opt = Optimizer::new(method(cfg), cfg.weight_decay, false, net.params.len());
        State { model, net, opt, step: 0, rng: Rng::new(cfg.seed ^ 0x5e6), train_seconds: 0.0 }
    };
    super::deeplab::check(&s.net.plan)?;
    let mut tape = Tape::new(&s.net.plan, cfg.batch);
    let mut seg = SegTape::new(&s.net.plan, cfg.batch)?;
    let schedule = Schedule::Poly { power: cfg.power };
    let params = s.net.params.len();
    on(Event::Start {
        epoch: 0,
        steps: cfg.steps as usize,
        done: s.step as usize,
        images: train.len(),
        classes,
        params,
    });
    let mut history: Vec<Metrics> = ckpt::read_metrics(&cfg.out);
    let (mut loss_sum, mut acc_sum, mut since, mut t_since) = (0f64, 0f64, 0u64, 0f64);
    let per_epoch = (train.len() / cfg.batch).max(1) as u64;
    // The loader thread draws each step's batch while the step before computes (one ahead),
    // from its own copy of the run's generator, in the order the steps consume it.
    let pre = s.model.preprocess.clone();
    let (loader_rng, ahead) = (s.rng.clone(), cfg.steps.saturating_sub(s.step));
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(0);
        let train = &train;
        scope.spawn(move || {
            let mut rng = loader_rng;
            for _ in 0..ahead {
                let b = draw_batch(cfg, train, classes, &pre, &mut rng);
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    break;
                }
            }
        });
        while s.step < cfg.steps {
            let t0 = Instant::now();
            let wait = super::prof::span(10);
            let b = rx.recv().expect("the loader sends a batch or an error per step")?;
            drop(wait);
            let lr = schedule.lr(cfg.lr, s.step, per_epoch, cfg.steps);
            let mut drop_rng = Rng::new(b.drop_seed);
            let st = s.net.seg_step(&mut tape, &mut seg, &b.x, &b.y, cfg.batch, Some(&mut drop_rng))?;
            s.rng = b.rng;
            if !st.loss.is_finite() {
                return Err(Error::Input(format!(
                    "the loss is {} at step {}: training diverged (try a lower --lr); the last good checkpoint is kept",
                    st.loss, s.step
                )));
            }
            let sp = super::prof::span(9);
            s.opt.step(&mut s.net.params, &s.net.grads, &s.net.tensors, lr as f32, |_| true);
            drop(sp);
            s.step += 1;
            let dt = t0.elapsed().as_secs_f64();
            s.train_seconds += dt;
            t_since += dt;
            let acc = st.correct as f64 / st.pixels.max(1) as f64;
            loss_sum += st.loss;
            acc_sum += acc;
            since += 1;
            let step_in_epoch = ((s.step - 1) % per_epoch) as usize;
            let epoch = ((s.step - 1) / per_epoch) as usize;
            on(Event::Step { epoch, step_in_epoch, loss: st.loss, acc, images_per_s: cfg.batch as f64 / dt, lr });
            let end = s.step == cfg.steps;
            if end || (cfg.eval_every > 0 && s.step.is_multiple_of(cfg.eval_every)) {
                let ev = match &val {
                    Some(v) => Some(evaluate_segmentation(&mut s.net, &s.model, v, cfg.crop, cfg.val_images)?),
                    None => None,
                };
                let m = Metrics {
                    epoch: s.step as f64 / per_epoch as f64,
                    step: s.step,
                    lr,
                    train_loss: loss_sum / since as f64,
                    train_acc: acc_sum / since as f64,
                    val_loss: None,
                    val_top1: ev.as_ref().map(|e| e.pixel_acc),
                    val_top5: None,
                    val_miou: ev.as_ref().map(|e| e.miou),
                    cls_loss: None,
                    loc_loss: None,
                    val_map: None,
                    val_ap50: None,
                    images_per_s: (since as f64 * cfg.batch as f64) / t_since.max(1e-9),
                    train_seconds: s.train_seconds,
                    peak_rss_mb: peak_rss_mb(),
                };
                ckpt::record(&cfg.out, &mut history, m, on)?;
                (loss_sum, acc_sum, since, t_since) = (0.0, 0.0, 0, 0.0);
            }
            if end || (cfg.checkpoint_every > 0 && s.step.is_multiple_of(cfg.checkpoint_every)) {
                save_checkpoint(cfg, &s)?;
            }
        }
        Ok(())
    })?;
    let mut model = s.model.clone();
    s.net.store(&mut model);
    // The dataset's class names travel with the model (`mnv2 segment` prints them).
    model.labels = Some(train.class_names.clone());
    let out = cfg.out.join("final.safetensors");
    model.save(&out)?;
    Ok(out)
}
