//! `mnv2 eval`: top-1, top-5 and the confusion matrix of weights on labelled data.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use mobilenetv2::data::{Dataset, OnBad};
use mobilenetv2::train::evaluate;
use mobilenetv2::Model;

use super::args::{self, AugmentArg};
use super::out;

#[derive(clap::Args)]
pub struct Args {
    /// Labelled data: a folder of class folders, an IDX folder (its t10k files) or IDX file
    #[arg(long)]
    data: PathBuf,
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
    /// Print JSON: {"n", "loss", "top1", "top5", "classes", "confusion"}
    #[arg(long)]
    json: bool,
    /// Also write each image's label and top-1 prediction to this file ("label predicted" per
    /// line, in data order), e.g. to measure how often two models agree
    #[arg(long)]
    predictions: Option<PathBuf>,
}

pub fn main(a: Args) -> Result<()> {
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
