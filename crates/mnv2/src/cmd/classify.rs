//! `mnv2 classify`: the top classes of photos, preprocessed exactly as torchvision does.
//! All the work is in `mobilenetv2::classify`; this file parses and prints.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use mobilenetv2::classify::{Classification, Classifier};
use mobilenetv2::engine::Options;
use mobilenetv2::Model;

use super::args::{self, PrecisionArg};
use super::out;

#[derive(clap::Args)]
pub struct Args {
    /// JPEG or PNG images
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Weights file (any format `mnv2 convert` reads); default: the ImageNet weights in the
    /// weights home ($MNV2_HOME, else ~/.cache/mnv2; `mnv2 fetch` puts them there)
    #[arg(long)]
    weights: Option<PathBuf>,
    /// How many classes to show per image
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    top: u64,
    /// Print one JSON array: [{"image": PATH, "top": [{"index", "label", "prob"}, ...]}, ...]
    #[arg(long)]
    json: bool,
    /// Worker threads [default: all available cores]
    #[arg(long, value_parser = super::args::threads)]
    threads: Option<usize>,
    /// Number format [default: the weights' own: int8 for an int8 file, else fp32]
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
}

pub fn main(a: Args) -> Result<()> {
    let model = Model::load(&super::fetch::weights_or_default(a.weights)?)?;
    let threads = a.threads.unwrap_or_else(args::cores);
    let precision = a.precision.map(Into::into);
    let classifier = Classifier::new(model, Options { threads, precision, ..Options::default() })?;
    args::warn_slow_bf16(classifier.engine());
    let results = classifier.classify_files(&a.images, a.top as usize)?;
    if a.json {
        out(&(serde_json::to_string_pretty(&results)? + "\n"))
    } else {
        out(&table(&results))
    }
}

/// One block per image: its path, then rank, probability, class index and label.
fn table(results: &[Classification]) -> String {
    let mut s = String::new();
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let _ = writeln!(s, "{}", r.image);
        let _ = writeln!(s, "  {:>4}  {:>8}  {:>5}  label", "rank", "prob", "class");
        for (rank, p) in r.top.iter().enumerate() {
            let _ = writeln!(
                s,
                "  {:>4}  {:>8.4}  {:>5}  {}",
                rank + 1,
                p.prob,
                p.index,
                p.label.as_deref().unwrap_or("-")
            );
        }
    }
    s
}
