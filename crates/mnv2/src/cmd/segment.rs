//! `mnv2 segment`: per-pixel classes of photos with a DeepLab model. All the work is in
//! `mobilenetv2::segment`; this file parses, writes the files and prints.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mobilenetv2::engine::Options;
use mobilenetv2::fsutil::write_atomic;
use mobilenetv2::segment::Segmenter;
use mobilenetv2::Model;
use serde_json::json;

use super::out;

#[derive(clap::Args)]
pub struct Args {
    /// JPEG or PNG images
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Weights of a DeepLab model (safetensors with a DeepLab spec)
    #[arg(long)]
    weights: PathBuf,
    /// Output directory: <stem>.png (class indices, VOC palette) and <stem>_overlay.png
    #[arg(long)]
    out: PathBuf,
    /// Print one JSON array: [{"image", "width", "height", "mask", "overlay", "classes": [{"class", "fraction"}]}]
    #[arg(long)]
    json: bool,
    /// TF DeepLab's multi-scale (0.5..1.75) + left-right-flip inference: 12 passes, the
    /// class probabilities averaged (Table 7's MF)
    #[arg(long)]
    multi_scale: bool,
    /// Worker threads
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Engine mode: fast (fused blocks, the head on the fast kernels), streaming (least
    /// activation memory) or reference (layer by layer, the oracle; slow)
    #[arg(long, value_enum, default_value_t = super::args::ModeArg::Fast)]
    mode: super::args::ModeArg,
    /// Number format [default: the weights' own: fp32]
    #[arg(long, value_enum)]
    precision: Option<super::args::PrecisionArg>,
}

fn stem(p: &Path) -> Result<String> {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .with_context(|| format!("{}: no file name to name the outputs after", p.display()))
}

pub fn main(a: Args) -> Result<()> {
    let model = Model::load(&a.weights)?;
    let options = Options {
        threads: a.threads,
        mode: a.mode.into(),
        precision: a.precision.map(Into::into),
        ..Options::default()
    };
    let segmenter = Segmenter::new(model, options).with_context(|| format!("{}", a.weights.display()))?;
    super::args::warn_slow_bf16(segmenter.engine());
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("{}: cannot create the output directory", a.out.display()))?;
    let mut results = Vec::new();
    let mut text = String::new();
    for path in &a.images {
        let name = stem(path)?;
        let (photo, seg) = segmenter.segment_file(path, a.multi_scale)?;
        let (mask, overlay) = (a.out.join(format!("{name}.png")), a.out.join(format!("{name}_overlay.png")));
        write_atomic(&mask, &seg.to_png()?)?;
        write_atomic(&overlay, &seg.overlay_png(&photo)?)?;
        let fractions = segmenter.fractions(&seg);
        let _ = writeln!(text, "{} ({}x{}) -> {}", path.display(), seg.width, seg.height, mask.display());
        for f in &fractions {
            let _ =
                writeln!(text, "  {:>5}  {:>7.3}%  {}", f.class, 100.0 * f.fraction, f.label.as_deref().unwrap_or("-"));
        }
        results.push(json!({
            "image": path.display().to_string(), "width": seg.width, "height": seg.height,
            "mask": mask.display().to_string(), "overlay": overlay.display().to_string(), "classes": fractions,
        }));
    }
    if a.json {
        out(&(serde_json::to_string_pretty(&results)? + "\n"))
    } else {
        out(&text)
    }
}
