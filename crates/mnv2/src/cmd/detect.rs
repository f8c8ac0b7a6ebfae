//! `mnv2 detect`: objects in photos with an SSD detector (a TF Object Detection API frozen
//! graph, or the project's safetensors detector made from one by `mnv2 convert`). All the work is in `mobilenetv2::detect`; this file parses and prints.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use mobilenetv2::detect::{draw_png, Detector, DetectorOptions, PixelDetection};
use mobilenetv2::preprocess;
use serde_json::json;

use super::out;

#[derive(clap::Args)]
pub struct Args {
    /// JPEG or PNG images
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// The detector: a TF Object Detection API SSD frozen graph (.pb) or a safetensors
    /// detector written by `mnv2 convert GRAPH.pb OUT.safetensors`
    #[arg(long)]
    weights: PathBuf,
    /// Detections scoring below this are not shown
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Print one JSON array: [{"image", "size": [W, H], "detections": [{"box": [x0, y0, x1, y1], "score", "class", "label"}]}]
    #[arg(long)]
    json: bool,
    /// Write each image as DIR/<name>.png with its boxes drawn, labelled with class and score
    #[arg(long, value_name = "DIR")]
    draw: Option<PathBuf>,
    /// Worker threads [default: all available cores]
    #[arg(long, value_parser = super::args::threads)]
    threads: Option<usize>,
    /// Engine mode: fast (fused blocks, the head on the fast kernels), streaming (least
    /// activation memory) or reference (layer by layer, the oracle; slow)
    #[arg(long, value_enum, default_value_t = super::args::ModeArg::Fast)]
    mode: super::args::ModeArg,
    /// Number format [default: the weights' own: int8 for an int8 file, else fp32]
    #[arg(long, value_enum)]
    precision: Option<super::args::PrecisionArg>,
}

pub fn main(a: Args) -> Result<()> {
    if !(0.0..=1.0).contains(&a.threshold) {
        anyhow::bail!("--threshold {} must be in [0, 1]", a.threshold);
    }
    let threads = a.threads.unwrap_or_else(super::args::cores);
    let det = Detector::load(
        &a.weights,
        DetectorOptions {
            threshold: a.threshold,
            threads,
            mode: a.mode.into(),
            precision: a.precision.map(Into::into),
            ..Default::default()
        },
    )?;
    super::args::warn_slow_bf16(det.engine());
    if let Some(dir) = &a.draw {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the directory", dir.display()))?;
    }
    let mut results = Vec::new();
    let mut text = String::new();
    for path in &a.images {
        let image = preprocess::decode(path)?;
        let found = det.detect(&image)?;
        if let Some(dir) = &a.draw {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
            draw_png(&image, &found, &|k| det.label(k), &dir.join(format!("{stem}.png")))?;
        }
        let row = |d: &PixelDetection| json!({"box": d.bbox, "score": d.score, "class": d.class, "label": det.label(d.class)});
        results.push(json!({
            "image": path.display().to_string(),
            "size": [image.width, image.height],
            "detections": found.iter().map(row).collect::<Vec<_>>(),
        }));
        let _ = writeln!(text, "{} ({}x{}): {} detections", path.display(), image.width, image.height, found.len());
        for d in &found {
            let [x0, y0, x1, y1] = d.bbox;
            let _ = writeln!(text, "  {:.4}  {:<10} [{x0:.1}, {y0:.1}, {x1:.1}, {y1:.1}]", d.score, det.label(d.class));
        }
    }
    if a.json {
        out(&(serde_json::to_string_pretty(&results)? + "\n"))
    } else {
        out(&text)
    }
}
