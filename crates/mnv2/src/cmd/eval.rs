//! `mnv2 eval`: top-1, top-5 and the confusion matrix of weights on labelled data
//! (`--task classification`), mIoU, per-class IoU and pixel accuracy of a DeepLab model on
//! a VOC-style or composed segmentation dataset (`--task segmentation`), or COCO AP/AR of an SSD
//! detector on a COCO or Pascal VOC dataset (`--task detection`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use mobilenetv2::data::{Dataset, OnBad};
use mobilenetv2::engine::Options;
use mobilenetv2::segment::dataset::SegmentationSet;
use mobilenetv2::segment::metric::ConfusionMatrix;
use mobilenetv2::segment::Segmenter;
use mobilenetv2::train::evaluate;
use mobilenetv2::Model;

use super::args::{self, AugmentArg, PrecisionArg};
use super::out;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// Top-1/top-5 of a classifier on labelled images
    Classification,
    /// mIoU of a DeepLab model on images with class masks
    Segmentation,
    /// COCO AP/AR of an SSD detector (--weights: a frozen graph or its safetensors conversion) on a COCO or VOC dataset
    Detection,
}

#[derive(clap::Args)]
pub struct Args {
    /// What the weights do
    #[arg(long, value_enum, default_value_t = Task::Classification)]
    task: Task,
    /// Labelled data: a folder of class folders, an IDX folder (its t10k files) or IDX file;
    /// for segmentation, a VOC-style dataset (JPEGImages/, SegmentationClass/,
    /// ImageSets/Segmentation/) or one written by `mnv2 dataset compose`; for detection, a COCO
    /// or Pascal VOC dataset folder (see --split)
    #[arg(long)]
    data: PathBuf,
    /// Segmentation: the split (its list in ImageSets/Segmentation/SPLIT.txt); detection:
    /// DATA/SPLIT/instances.json, DATA/annotations/instances_SPLIT.json (COCO) or
    /// DATA/ImageSets/Main/SPLIT.txt (VOC)
    #[arg(long, default_value = "val")]
    split: String,
    /// Detection: write the detections here as a COCO results file
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Detection: detections scoring below this are not kept
    #[arg(long, default_value_t = 0.01)]
    threshold: f32,
    /// Detection: skip malformed annotations (counted) instead of stopping
    #[arg(long)]
    skip_bad_annotations: bool,
    /// Weights file (any format `mnv2 convert` reads); default: the ImageNet weights in the
    /// weights home ($MNV2_HOME, else ~/.cache/mnv2; `mnv2 fetch` puts them there)
    #[arg(long)]
    weights: Option<PathBuf>,
    /// standard: resize + center crop (ImageNet); none or crop-flip: resize to the input size
    #[arg(long, value_enum, default_value_t = AugmentArg::Standard)]
    augment: AugmentArg,
    /// Images per batch
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Worker threads [default: all available cores]
    #[arg(long, value_parser = super::args::threads)]
    threads: Option<usize>,
    /// Number format of the engine [default: the weights' own: int8 for a quantised file,
    /// else fp32]; e.g. bf16 to measure what bf16 costs in accuracy
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    /// Skip unreadable images (warn and count) instead of stopping
    #[arg(long)]
    skip_bad_images: bool,
    /// Print JSON: {"n", "loss", "top1", "top5", "classes", "confusion"}; segmentation:
    /// {"n", "mean_iou", "pixel_accuracy", "pixels", "classes": [{"class", "name", "iou"}], "confusion"};
    /// detection: as `mnv2 coco-eval --json` plus "images", "skipped", "detections"
    #[arg(long)]
    json: bool,
    /// Also write each image's label and top-1 prediction to this file ("label predicted" per
    /// line, in data order), e.g. to measure how often two models agree
    #[arg(long)]
    predictions: Option<PathBuf>,
}

pub fn main(a: Args) -> Result<()> {
    if a.task == Task::Segmentation {
        return segmentation(a);
    }
    if a.task == Task::Detection {
        return detection(a);
    }
    let model = Model::load(&super::fetch::weights_or_default(a.weights)?)?;
    let threads = a.threads.unwrap_or_else(args::cores);
    let on_bad = if a.skip_bad_images { OnBad::Skip } else { OnBad::Stop };
    let ds = Arc::new(Dataset::open_test(&a.data, on_bad)?);
    let idx = Arc::new((0..ds.len()).collect::<Vec<_>>());
    let precision = a.precision.map(Into::into);
    let r = evaluate(&model, ds.clone(), idx, a.augment.into(), a.batch.max(1), threads, precision, a.skip_bad_images)?;
    if let Some(p) = &a.predictions {
        let text: String = r.predictions.iter().map(|(l, p)| format!("{l} {p}\n")).collect();
        mobilenetv2::fsutil::write_atomic(p, text.as_bytes())?;
    }
    let names: Vec<String> = (0..model.spec().classes)
        .map(|i| model.label(i).map(str::to_string).or_else(|| ds.classes.get(i).cloned()).unwrap_or(i.to_string()))
        .collect();
    if a.json {
        let v = serde_json::json!({
            "n": r.n, "loss": r.loss, "top1": r.top1, "top5": r.top5, "skipped": r.skipped,
            "classes": names, "confusion": r.confusion,
        });
        return out(&(serde_json::to_string_pretty(&v)? + "\n"));
    }
    let mut s = String::new();
    writeln!(s, "{} images: top-1 {:.2}%, top-5 {:.2}%, loss {:.4}", r.n, r.top1 * 100.0, r.top5 * 100.0, r.loss)?;
    if r.skipped > 0 {
        writeln!(s, "{} unreadable images skipped", r.skipped)?;
    }
    if names.len() <= 30 {
        writeln!(s, "confusion matrix (rows: true class, columns: predicted):")?;
        let w = names.iter().map(|n| n.len()).max().unwrap_or(1).min(14);
        write!(s, "{:w$} ", "")?;
        for j in 0..names.len() {
            write!(s, "{j:>6}")?;
        }
        writeln!(s)?;
        for (i, row) in r.confusion.iter().enumerate() {
            let name: String = names[i].chars().take(w).collect();
            write!(s, "{name:>w$} ")?;
            for v in row {
                write!(s, "{v:>6}")?;
            }
            writeln!(s, "   {i}")?;
        }
    }
    out(&s)
}

/// `--task segmentation`: every image of the split segmented at its own size, its mask counted
/// in one confusion matrix.
fn segmentation(a: Args) -> Result<()> {
    let weights = a.weights.context("--task segmentation needs --weights (a DeepLab model)")?;
    let model = Model::load(&weights)?;
    let classes = model.spec().classes;
    let set = SegmentationSet::open(&a.data, &a.split)?;
    let threads = a.threads.unwrap_or_else(args::cores);
    let precision = a.precision.map(Into::into);
    let segmenter = Segmenter::new(model, Options { threads, precision, ..Options::default() })
        .with_context(|| format!("{}", weights.display()))?;
    super::args::warn_slow_bf16(segmenter.engine());
    if set.class_names.len() != classes {
        eprintln!(
            "warning: {}: the dataset has {} classes, the model {classes}; labels must stay below {classes}",
            a.data.display(),
            set.class_names.len()
        );
    }
    let mut cm = ConfusionMatrix::new(classes);
    let bar = indicatif::ProgressBar::new(set.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("eval [{bar:30}] {pos}/{len} images {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    for i in 0..set.len() {
        let sample = set.load(i, classes)?;
        let seg = segmenter.segment_image(&sample.image).map_err(|e| match e {
            mobilenetv2::Error::Input(d) => anyhow::anyhow!("{}: {d}", set.image_path(i).display()),
            e => e.into(),
        })?;
        cm.add(&sample.mask, &seg.classes).with_context(|| format!("{}", set.mask_path(i).display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let s = cm.scores();
    let name = |c: usize| {
        segmenter
            .model()
            .label(c)
            .map(str::to_string)
            .or_else(|| set.class_names.get(c).cloned())
            .unwrap_or(c.to_string())
    };
    if a.json {
        let per: Vec<_> =
            s.iou.iter().enumerate().map(|(c, v)| serde_json::json!({"class": c, "name": name(c), "iou": v})).collect();
        let v = serde_json::json!({
            "n": set.len(), "split": a.split, "mean_iou": nan_null(s.mean_iou),
            "pixel_accuracy": nan_null(s.pixel_accuracy), "pixels": s.pixels, "classes": per,
            "confusion": cm.rows(), "ignore_label": 255,
        });
        return out(&(serde_json::to_string_pretty(&v)? + "\n"));
    }
    let mut t = String::new();
    writeln!(
        t,
        "{} images ({} split), {} pixels scored (label 255 ignored): mIoU {:.2}%, pixel accuracy {:.2}%",
        set.len(),
        a.split,
        s.pixels,
        100.0 * s.mean_iou,
        100.0 * s.pixel_accuracy
    )?;
    writeln!(t, "per-class IoU (classes absent from both ground truth and prediction: -, left out of the mean):")?;
    for (c, v) in s.iou.iter().enumerate() {
        match v {
            Some(v) => writeln!(t, "  {c:>3}  {:>7.2}%  {}", 100.0 * v, name(c))?,
            None => writeln!(t, "  {c:>3}  {:>8}  {}", "-", name(c))?,
        }
    }
    out(&t)
}

fn nan_null(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// `--task detection`: runs the detector over the dataset's images, writes the detections
/// (COCO results) if asked, and prints pycocotools' table. A COCO dataset read whole is
/// evaluated against its own JSON (exactly what `mnv2 coco-eval` does); VOC, or COCO with
/// skipped records, against the boxes read (difficult boxes ignored, as crowds).
fn detection(a: Args) -> Result<()> {
    use mobilenetv2::detect::cocoeval::{self, GroundTruth};
    use mobilenetv2::detect::{BadAnnotations, DetectionDataset, Detector, DetectorOptions};

    let Some(weights) = &a.weights else {
        anyhow::bail!(
            "--task detection needs --weights (an SSD detector: a frozen graph .pb or its .safetensors conversion)"
        )
    };
    if !(0.0..=1.0).contains(&a.threshold) {
        anyhow::bail!("--threshold {} must be in [0, 1]", a.threshold);
    }
    let mode = if a.skip_bad_annotations { BadAnnotations::Skip } else { BadAnnotations::Stop };
    let ds = DetectionDataset::open(&a.data, &a.split, mode)?;
    for m in &ds.skip_messages {
        eprintln!("warning: skipped: {m}");
    }
    let threads = a.threads.unwrap_or_else(args::cores);
    let precision = a.precision.map(Into::into);
    let det =
        Detector::load(weights, DetectorOptions { threshold: a.threshold, threads, precision, ..Default::default() })?;
    super::args::warn_slow_bf16(det.engine());
    let mut results = Vec::new();
    for (i, im) in ds.images.iter().enumerate() {
        let image = mobilenetv2::preprocess::decode(&im.path)?;
        if (image.width, image.height) != (im.width as usize, im.height as usize) {
            anyhow::bail!(
                "{}: the image is {}x{}, its annotations say {}x{}",
                im.path.display(),
                image.width,
                image.height,
                im.width,
                im.height
            );
        }
        results.extend(ds.results_for(i, &det.detect(&image)?)?);
    }
    if let Some(p) = &a.out {
        mobilenetv2::fsutil::write_atomic(p, cocoeval::results_json(&results).as_bytes())?;
    }
    let gt = if ds.format == mobilenetv2::detect::dataset::DatasetFormat::Coco && ds.skipped == 0 {
        GroundTruth::load(&ds.source)?
    } else {
        ds.to_ground_truth()
    };
    let e = cocoeval::evaluate(&gt, &results)?;
    if a.json {
        let mut v = e.stats_json();
        v["images"] = serde_json::json!(ds.images.len());
        v["skipped"] = serde_json::json!(ds.skipped);
        v["detections"] = serde_json::json!(results.len());
        return out(&(serde_json::to_string_pretty(&v)? + "\n"));
    }
    let mut s = format!("{} images, {} boxes, {} detections\n", ds.images.len(), ds.num_boxes(), results.len());
    if ds.skipped > 0 {
        s += &format!("{} malformed annotation records skipped\n", ds.skipped);
    }
    s += &super::coco_eval::report(&e, false)?;
    out(&s)
}
