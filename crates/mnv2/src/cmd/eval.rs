//! `mnv2 eval`: top-1, top-5 and the confusion matrix of weights on labelled data; with
//! `--task detection`, COCO AP/AR of a detector on a COCO or Pascal VOC dataset.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use mobilenetv2::data::{Dataset, OnBad};
use mobilenetv2::train::evaluate;
use mobilenetv2::Model;

use super::args::{self, AugmentArg};
use super::out;

/// What `mnv2 eval` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// A classifier: top-1, top-5, confusion matrix
    Classify,
    /// A detector (--weights: an SSD frozen graph): COCO AP/AR, as pycocotools computes them
    Detection,
}

#[derive(clap::Args)]
pub struct Args {
    /// Labelled data: a folder of class folders, an IDX folder (its t10k files) or IDX file;
    /// for --task detection a COCO or Pascal VOC dataset folder (see --split)
    #[arg(long)]
    data: PathBuf,
    /// What to measure
    #[arg(long, value_enum, default_value_t = Task::Classify)]
    task: Task,
    /// --task detection: the split: DATA/SPLIT/instances.json, DATA/annotations/instances_SPLIT.json
    /// (COCO) or DATA/ImageSets/Main/SPLIT.txt (VOC)
    #[arg(long, default_value = "val")]
    split: String,
    /// --task detection: write the detections here as a COCO results file
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// --task detection: detections scoring below this are not kept
    #[arg(long, default_value_t = 0.01)]
    threshold: f32,
    /// --task detection: skip malformed annotations (counted) instead of stopping
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
    /// Skip unreadable images (warn and count) instead of stopping
    #[arg(long)]
    skip_bad_images: bool,
    /// Print JSON: {"n", "loss", "top1", "top5", "classes", "confusion"}; --task detection:
    /// as `mnv2 coco-eval --json` plus "images", "skipped"
    #[arg(long)]
    json: bool,
    /// Also write each image's label and top-1 prediction to this file ("label predicted" per
    /// line, in data order), e.g. to measure how often two models agree
    #[arg(long)]
    predictions: Option<PathBuf>,
}

pub fn main(a: Args) -> Result<()> {
    if a.task == Task::Detection {
        return detection(a);
    }
    let model = Model::load(&super::fetch::weights_or_default(a.weights)?)?;
    let threads = a.threads.unwrap_or_else(args::cores);
    let on_bad = if a.skip_bad_images { OnBad::Skip } else { OnBad::Stop };
    let ds = Arc::new(Dataset::open_test(&a.data, on_bad)?);
    let idx = Arc::new((0..ds.len()).collect::<Vec<_>>());
    let r = evaluate(&model, ds.clone(), idx, a.augment.into(), a.batch.max(1), threads, a.skip_bad_images)?;
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

/// `--task detection`: runs the detector over the dataset's images, writes the detections
/// (COCO results) if asked, and prints pycocotools' table. A COCO dataset read whole is
/// evaluated against its own JSON (exactly what `mnv2 coco-eval` does); VOC, or COCO with
/// skipped records, against the boxes read (difficult boxes ignored, as crowds).
fn detection(a: Args) -> Result<()> {
    use mobilenetv2::detect::cocoeval::{self, GroundTruth};
    use mobilenetv2::detect::{BadAnnotations, DetectionDataset, Detector, DetectorOptions};

    let Some(weights) = &a.weights else {
        anyhow::bail!("--task detection needs --weights (an SSD frozen graph, .pb)")
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
    let det = Detector::from_graph(weights, DetectorOptions { threshold: a.threshold, threads, ..Default::default() })?;
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
