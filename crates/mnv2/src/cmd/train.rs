//! `mnv2 train`: train or fine-tune a classifier on a folder of class folders or MNIST-family
//! IDX files (`mobilenetv2::train::train`), a DeepLab segmenter (`train_segmentation`) or an
//! SSDLite detector (`train_detection`); this file parses options and shows progress.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mobilenetv2::detect::augment::SsdAugment;
use mobilenetv2::train::{self, Config, DetConfig, DetInit, Event, Method, Schedule, SegConfig};

use super::args::{AugmentArg, BottleneckArg, ShortcutArg};

#[derive(clap::Args)]
pub struct Args {
    /// Training data: a folder of class folders, a folder with train-images-idx3-ubyte[.gz],
    /// or an IDX images file
    #[arg(long)]
    data: PathBuf,
    /// Validation data (same forms; the IDX folder given to --data means its t10k files)
    #[arg(long)]
    val: Option<PathBuf>,
    /// Hold out this fraction of --data for validation when there is no --val
    #[arg(long, default_value_t = 0.0)]
    val_split: f64,
    /// Start from these weights (any format `mnv2` reads); the classifier is replaced when
    /// the number of classes differs. Segmentation and detection: the ImageNet backbone
    /// (e.g. mobilenet_v2-b0353104.pth)
    #[arg(long)]
    init: Option<PathBuf>,
    /// Detection: fine-tune this detector instead (a TF frozen graph such as
    /// ssdlite_mobilenet_v2_person.pb, or a detector .safetensors)
    #[arg(long)]
    detector_init: Option<PathBuf>,
    /// Width multiplier (training from scratch)
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Input size in pixels (square) [default: 224; detection 300]
    #[arg(long)]
    resolution: Option<usize>,
    /// Epochs (classification)
    #[arg(long)]
    epochs: Option<usize>,
    /// What to train: a classifier on labelled images, a DeepLab segmentation model on a
    /// VOC-style or composed dataset with class masks, or an SSDLite detector on a COCO, VOC or
    /// composed detection dataset (--data: its root, train and val splits)
    #[arg(long, value_enum, default_value_t = TrainTask::Classification)]
    task: TrainTask,
    /// The head: deeplab (segmentation, the paper's section 6.3) or ssdlite (detection, 6.2)
    /// [default: deeplab; detection ssdlite]
    #[arg(long, value_enum)]
    head: Option<HeadArg>,
    /// Segmentation: the head with ASPP (three 3x3 atrous branches, rates 6/12/18 at output stride 16, doubled at 8)
    #[arg(long)]
    aspp: bool,
    /// Segmentation: output stride of the backbone (16 or 8)
    #[arg(long, default_value_t = 16)]
    output_stride: usize,
    /// Segmentation: square training crop in pixels (TF DeepLab: 513)
    #[arg(long, default_value_t = 513)]
    crop: usize,
    /// Segmentation and detection: training steps (the schedule runs over them)
    #[arg(long)]
    steps: Option<u64>,
    /// Segmentation: power of the poly learning-rate schedule
    #[arg(long, default_value_t = 0.9)]
    power: f64,
    /// Segmentation: random scale range of the augmentation
    #[arg(long, default_value_t = 0.5)]
    min_scale: f64,
    #[arg(long, default_value_t = 2.0)]
    max_scale: f64,
    /// Segmentation and detection: evaluate (mIoU, COCO AP) on at most this many val images (0: all)
    #[arg(long, default_value_t = 0)]
    val_images: usize,
    /// Images per step [default: 96; detection 24]
    #[arg(long)]
    batch: Option<usize>,
    /// The update rule
    #[arg(long, value_enum, default_value_t = Optimizer::Rmsprop)]
    optimizer: Optimizer,
    /// Base learning rate [default: 0.045; detection 0.004 (ssdlite_mobilenet_v2_coco.config)]
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Nesterov momentum (sgd)
    #[arg(long)]
    nesterov: bool,
    /// Epsilon: rmsprop adds it inside the square root (TF), adamw outside
    #[arg(long)]
    eps: Option<f32>,
    #[arg(long, default_value_t = 4e-5)]
    weight_decay: f32,
    /// Decay BatchNorm parameters and biases too
    #[arg(long)]
    decay_all: bool,
    /// The learning-rate schedule [default: step; detection constant]
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    #[arg(long, default_value_t = 0.98)]
    lr_decay: f64,
    /// Warm-up epochs of the cosine schedule (may be fractional)
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    #[arg(long, default_value_t = 0.2)]
    dropout: f32,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Training augmentation (classification)
    #[arg(long, value_enum, default_value_t = AugmentArg::Standard)]
    augment: AugmentArg,
    /// Detection: training augmentation
    #[arg(long, value_enum, default_value_t = DetAugmentArg::Ssd)]
    det_augment: DetAugmentArg,
    /// Detection: BatchNorm frozen on its running statistics (else trained on batch statistics)
    #[arg(long)]
    freeze_bn: bool,
    /// Detection: malformed annotations
    #[arg(long, value_enum, default_value_t = BadImages::Stop)]
    bad_annotations: BadImages,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    shuffle: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train only the classifier (BatchNorm in eval mode) for this many epochs, then all layers
    #[arg(long, default_value_t = 0)]
    freeze_backbone: usize,
    /// Keep an exponential moving average of the weights with this decay; it is saved as final
    #[arg(long)]
    ema: Option<f32>,
    /// Ablation (from scratch): the activation after each block's projection
    #[arg(long, value_enum, default_value_t = BottleneckArg::Linear)]
    bottleneck: BottleneckArg,
    /// Ablation (from scratch): residual connections
    #[arg(long, value_enum, default_value_t = ShortcutArg::Bottleneck)]
    shortcut: ShortcutArg,
    /// Also evaluate every this many steps
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// Also write a checkpoint every this many steps
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u64,
    /// Unreadable images
    #[arg(long, value_enum, default_value_t = BadImages::Skip)]
    bad_images: BadImages,
    /// Stop after this many steps
    #[arg(long)]
    max_steps: Option<u64>,
    /// Detection: end the run (final evaluation, final.safetensors) after this many minutes of
    /// training steps, even before --steps
    #[arg(long)]
    budget_minutes: Option<f64>,
    /// Compute threads [default: all available cores]
    #[arg(long, value_parser = super::args::threads)]
    threads: Option<usize>,
    /// Output folder: checkpoint.safetensors, final.safetensors, metrics.jsonl, curves.png
    #[arg(long)]
    out: PathBuf,
    /// Continue from OUT/checkpoint.safetensors (same options)
    #[arg(long)]
    resume: bool,
    /// No progress bar
    #[arg(long)]
    quiet: bool,
}

/// `--task`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainTask {
    /// A classifier
    Classification,
    /// Semantic segmentation (SGD momentum, poly schedule; see docs/segmentation.md)
    Segmentation,
    /// Object detection with SSDLite (see docs/detection-training.md)
    Detection,
}

/// `--head`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HeadArg {
    /// Mobile DeepLabv3 on the last block's output
    Deeplab,
    /// SSDLite (detection)
    Ssdlite,
}

/// `--det-augment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DetAugmentArg {
    /// ssd_random_crop, horizontal flip and photometric jitter
    Ssd,
    /// ssd_random_crop and horizontal flip (ssdlite_mobilenet_v2_coco.config's two)
    Tf,
    /// Horizontal flip only
    Flip,
    /// None: the whole image, resized
    None,
}

/// `--optimizer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Optimizer {
    /// RMSProp with TensorFlow's rule (the paper's)
    Rmsprop,
    /// SGD with momentum (--nesterov for Nesterov's)
    Sgd,
    /// AdamW
    Adamw,
}

/// `--schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    /// lr x --lr-decay per epoch
    Step,
    /// Cosine, after --warmup epochs of linear warm-up
    Cosine,
    /// Constant
    Constant,
}

/// `--bad-images`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BadImages {
    /// Warn, count and go on
    Skip,
    /// Stop with an error
    Stop,
}

fn method(a: &Args) -> Method {
    match a.optimizer {
        Optimizer::Rmsprop => Method::RmsProp { decay: 0.9, momentum: a.momentum, eps: a.eps.unwrap_or(1.0) },
        Optimizer::Sgd => Method::Sgd { momentum: a.momentum, nesterov: a.nesterov },
        Optimizer::Adamw => Method::AdamW { beta1: 0.9, beta2: 0.999, eps: a.eps.unwrap_or(1e-8) },
    }
}

fn schedule(a: &Args, default: ScheduleArg) -> Schedule {
    match a.schedule.unwrap_or(default) {
        ScheduleArg::Step => Schedule::Step { gamma: a.lr_decay },
        ScheduleArg::Cosine => Schedule::Cosine { warmup: a.warmup },
        ScheduleArg::Constant => Schedule::Constant,
    }
}

fn config(a: &Args) -> Result<Config> {
    let method = method(a);
    let schedule = schedule(a, ScheduleArg::Step);
    if !(0.0..1.0).contains(&a.val_split) {
        bail!("--val-split {} must be in [0, 1)", a.val_split);
    }
    if !(0.0..1.0).contains(&a.label_smoothing) {
        bail!("--label-smoothing {} must be in [0, 1)", a.label_smoothing);
    }
    Ok(Config {
        data: a.data.clone(),
        val: a.val.clone(),
        val_split: a.val_split,
        init: a.init.clone(),
        width: a.width,
        resolution: a.resolution.unwrap_or(224),
        epochs: a.epochs.context("--epochs is required (classification)")?,
        batch: a.batch.unwrap_or(96),
        method,
        lr: a.lr.unwrap_or(0.045),
        weight_decay: a.weight_decay,
        decay_all: a.decay_all,
        schedule,
        dropout: a.dropout,
        label_smoothing: a.label_smoothing,
        augment: a.augment.into(),
        shuffle: a.shuffle,
        seed: a.seed,
        freeze_backbone: a.freeze_backbone,
        ema: a.ema,
        bottleneck: a.bottleneck.into(),
        shortcut: a.shortcut.into(),
        eval_every: a.eval_every,
        checkpoint_every: a.checkpoint_every,
        skip_bad_images: a.bad_images == BadImages::Skip,
        max_steps: a.max_steps,
        out: a.out.clone(),
    })
}

fn seg_config(a: &Args) -> Result<SegConfig> {
    if a.optimizer != Optimizer::Sgd {
        bail!("--task segmentation trains with SGD and momentum (DeepLab's recipe): pass --optimizer sgd");
    }
    Ok(SegConfig {
        data: a.data.clone(),
        init: a.init.clone(),
        width: a.width,
        output_stride: a.output_stride,
        aspp: a.aspp,
        crop: a.crop,
        steps: a.steps.context("--task segmentation needs --steps")?,
        batch: a.batch.unwrap_or(96),
        lr: a.lr.unwrap_or(0.045),
        power: a.power,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        min_scale: a.min_scale,
        max_scale: a.max_scale,
        eval_every: a.eval_every,
        val_images: a.val_images,
        checkpoint_every: a.checkpoint_every,
        seed: a.seed,
        out: a.out.clone(),
    })
}

/// `--task segmentation`: the loop is `mobilenetv2::train::train_segmentation`.
/// A progress bar over `steps` steps, `done` of them already (a resumed run), drawn with
/// `template`.
fn progress_bar(steps: usize, done: usize, template: &str) -> ProgressBar {
    let b = ProgressBar::new(steps as u64).with_position(done as u64);
    b.set_style(ProgressStyle::with_template(template).expect("the progress template is valid").progress_chars("=> "));
    b
}

/// A line for the user: above the progress bar when there is one, else on stderr.
fn say(bar: &Option<ProgressBar>, line: impl AsRef<str>) {
    match bar {
        // A hidden bar (stderr is not a terminal: a log file, CI) drops println: print plainly.
        Some(b) if !b.is_hidden() => b.println(line),
        _ => eprintln!("{}", line.as_ref()),
    }
}

/// Runs a head's training loop (`run`, given the event callback) with the CLI's progress: the
/// start line, a progress bar (unless `quiet`) whose message is `progress(loss, acc)` plus
/// images/s and the learning rate, and a line per evaluation: the step, `eval(metrics)`, then
/// images/s, training time and peak RSS.
fn with_progress(
    net: &str,
    quiet: bool,
    progress: &dyn Fn(f64, f64) -> String,
    eval: &dyn Fn(&train::Metrics) -> String,
    run: impl FnOnce(&mut dyn FnMut(Event)) -> mobilenetv2::Result<PathBuf>,
) -> Result<()> {
    let mut bar: Option<ProgressBar> = None;
    let mut on = |e: Event| match e {
        Event::Start { steps, done, images, classes, params, .. } => {
            if done == 0 {
                eprintln!("training {net} on {images} images, {classes} classes, {params} parameters, {steps} steps");
            }
            if !quiet {
                bar = Some(progress_bar(steps, done, "[{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})"));
            }
        }
        Event::Step { loss, acc, images_per_s, lr, .. } => {
            if let Some(b) = &bar {
                b.inc(1);
                b.set_message(format!("{} {images_per_s:.1} img/s lr {lr:.5}", progress(loss, acc)));
            }
        }
        Event::Eval(m) => {
            let line = format!(
                "step {}: {} | {:.1} img/s, {:.0} s training, peak RSS {:.0} MB",
                m.step,
                eval(&m),
                m.images_per_s,
                m.train_seconds,
                m.peak_rss_mb
            );
            say(&bar, line);
        }
        Event::Note(n) => say(&bar, n),
    };
    let out = run(&mut on)?;
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn main_segmentation(a: Args) -> Result<()> {
    if a.head.unwrap_or(HeadArg::Deeplab) != HeadArg::Deeplab {
        bail!("--task segmentation trains the deeplab head (--head ssdlite is for --task detection)");
    }
    let cfg = seg_config(&a)?;
    let threads = a.threads.unwrap_or_else(super::args::cores);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().ok();
    let progress = |loss: f64, acc: f64| format!("loss {loss:.4} pixel acc {:.2}%", acc * 100.0);
    let eval = |m: &train::Metrics| {
        format!(
            "train loss {:.4} pixel acc {:.2}%{}",
            m.train_loss,
            m.train_acc * 100.0,
            match (m.val_miou, m.val_top1) {
                (Some(miou), Some(acc)) => format!(" | val mIoU {:.2}% pixel acc {:.2}%", miou * 100.0, acc * 100.0),
                _ => String::new(),
            }
        )
    };
    // MNV2_TRAIN_PROFILE=1: time per kind of work, printed at the end.
    train::prof::enable(std::env::var_os("MNV2_TRAIN_PROFILE").is_some());
    with_progress("DeepLab", a.quiet, &progress, &eval, |on| train::train_segmentation(&cfg, a.resume, on))?;
    if train::prof::enabled() {
        let steps = cfg.steps;
        eprint!("time per step ({steps} steps, evaluation forward passes included):\n{}", train::prof::report(steps));
    }
    Ok(())
}

fn det_config(a: &Args) -> Result<DetConfig> {
    if a.head.unwrap_or(HeadArg::Ssdlite) != HeadArg::Ssdlite {
        bail!("--task detection trains the ssdlite head (--head deeplab is for --task segmentation)");
    }
    if a.optimizer == Optimizer::Adamw {
        bail!("--task detection trains with --optimizer rmsprop (TF's config) or sgd");
    }
    let init = match (&a.init, &a.detector_init) {
        (Some(p), None) => DetInit::Backbone(p.clone()),
        (None, Some(p)) => DetInit::Detector(p.clone()),
        (None, None) => DetInit::Random,
        (Some(_), Some(_)) => bail!("give --init (an ImageNet backbone) or --detector-init (a detector), not both"),
    };
    let augment = match a.det_augment {
        DetAugmentArg::Ssd => SsdAugment::default(),
        DetAugmentArg::Tf => SsdAugment { photometric: false, ..SsdAugment::default() },
        DetAugmentArg::Flip => SsdAugment { flip: true, ..SsdAugment::none() },
        DetAugmentArg::None => SsdAugment::none(),
    };
    Ok(DetConfig {
        data: a.data.clone(),
        init,
        width: a.width,
        resolution: a.resolution.unwrap_or(300),
        batch: a.batch.unwrap_or(24),
        steps: a.steps.context("--task detection needs --steps")?,
        method: method(a),
        lr: a.lr.unwrap_or(0.004),
        schedule: schedule(a, ScheduleArg::Constant),
        weight_decay: a.weight_decay,
        freeze_bn: a.freeze_bn,
        augment,
        seed: a.seed,
        eval_every: a.eval_every,
        val_images: a.val_images,
        checkpoint_every: a.checkpoint_every,
        max_steps: a.max_steps,
        budget_seconds: match a.budget_minutes {
            Some(m) if !(m.is_finite() && m > 0.0) => bail!("--budget-minutes {m} must be positive"),
            m => m.map(|m| m * 60.0),
        },
        skip_bad_annotations: a.bad_annotations == BadImages::Skip,
        threads: a.threads.unwrap_or_else(super::args::cores),
        out: a.out.clone(),
    })
}

/// `--task detection`: the loop is `mobilenetv2::train::train_detection`.
fn main_detection(a: Args) -> Result<()> {
    let cfg = det_config(&a)?;
    rayon::ThreadPoolBuilder::new().num_threads(cfg.threads).build_global().ok();
    let progress = |loss: f64, _acc: f64| format!("loss {loss:.4}");
    let eval = |m: &train::Metrics| {
        format!(
            "train loss {:.4} (classification {:.4}, localisation {:.4}){}",
            m.train_loss,
            m.cls_loss.unwrap_or(f64::NAN),
            m.loc_loss.unwrap_or(f64::NAN),
            match (m.val_map, m.val_ap50) {
                (Some(map), Some(ap50)) => format!(" | val mAP {:.2}% AP50 {:.2}%", map * 100.0, ap50 * 100.0),
                _ => String::new(),
            }
        )
    };
    with_progress("SSDLite", a.quiet, &progress, &eval, |on| train::train_detection(&cfg, a.resume, on))
}

pub fn main(a: Args) -> Result<()> {
    match a.task {
        TrainTask::Segmentation => return main_segmentation(a),
        TrainTask::Detection => return main_detection(a),
        TrainTask::Classification => {}
    }
    let cfg = config(&a)?;
    let threads = a.threads.unwrap_or_else(super::args::cores);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().ok();
    // MNV2_TRAIN_PROFILE=1: time per kind of work, printed at the end.
    train::prof::enable(std::env::var_os("MNV2_TRAIN_PROFILE").is_some());
    let mut steps = 0u64;
    let mut bar: Option<ProgressBar> = None;
    let quiet = a.quiet;
    let mut on = |e: Event| match e {
        Event::Start { epoch, steps, done, images, classes, params } => {
            if epoch == 0 && done == 0 {
                eprintln!(
                    "training on {images} images, {classes} classes, {params} parameters, {} epochs of {steps} steps",
                    cfg.epochs
                );
            }
            if !quiet {
                let b = progress_bar(steps, done, "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})");
                b.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
                bar = Some(b);
            }
        }
        Event::Step { step_in_epoch, loss, acc, images_per_s, lr, .. } => {
            steps += 1;
            if let Some(b) = &bar {
                b.set_position(step_in_epoch as u64);
                b.set_message(format!("loss {loss:.4} acc {:.2}% {images_per_s:.0} img/s lr {lr:.4}", acc * 100.0));
            }
        }
        Event::Eval(m) => {
            let line = format!(
                "epoch {:.2} step {}: train loss {:.4} acc {:.2}%{} | {:.0} img/s, {:.0} s training, peak RSS {:.0} MB",
                m.epoch,
                m.step,
                m.train_loss,
                m.train_acc * 100.0,
                match (m.val_loss, m.val_top1, m.val_top5) {
                    (Some(l), Some(t1), Some(t5)) =>
                        format!(" | val loss {l:.4} top-1 {:.2}% top-5 {:.2}%", t1 * 100.0, t5 * 100.0),
                    _ => String::new(),
                },
                m.images_per_s,
                m.train_seconds,
                m.peak_rss_mb
            );
            say(&bar, line);
        }
        Event::Note(n) => say(&bar, n),
    };
    let out = train::train(&cfg, a.resume, &mut on)?;
    if let Some(b) = bar.take() {
        b.finish_and_clear();
    }
    eprintln!("wrote {}", out.display());
    if train::prof::enabled() {
        eprint!("time per step ({steps} steps, evaluation and checkpoints excluded):\n{}", train::prof::report(steps));
    }
    Ok(())
}
