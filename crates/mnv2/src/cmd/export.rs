//! `mnv2 export`: weights to a format other engines run (ONNX for now; an int8 model as a QDQ
//! graph).

use std::path::PathBuf;

use anyhow::{Context, Result};
use mobilenetv2::export::onnx;
use mobilenetv2::Model;

#[derive(clap::Args)]
pub struct Args {
    /// Weights file (any format `mnv2 convert` reads); default: the ImageNet weights in the
    /// weights home ($MNV2_HOME, else ~/.cache/mnv2; `mnv2 fetch` puts them there)
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Onnx)]
    format: Format,
    /// Output file
    #[arg(long)]
    out: PathBuf,
    /// A symbolic batch dimension instead of batch 1
    #[arg(long)]
    dynamic_batch: bool,
    /// ONNX opset (11 to 21; 13 or later for an int8 model, whose QDQ graph needs per-channel DequantizeLinear)
    #[arg(long, default_value_t = onnx::DEFAULT_OPSET)]
    opset: i64,
    /// Input resolution, N or HxW (default: the one the weights were made for)
    #[arg(long)]
    resolution: Option<String>,
}

/// `--format`: what `mnv2 export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// ONNX: fp32 with BatchNorm folded, or an int8 model as a QDQ graph
    Onnx,
}

pub fn main(a: Args) -> Result<()> {
    let weights = super::fetch::weights_or_default(a.weights)?;
    let mut model = Model::load(&weights)?;
    if let Some(r) = &a.resolution {
        let (height, width_px) = mobilenetv2::Spec::parse_resolution(r)?;
        model = model.with_spec(&mobilenetv2::Spec { height, width_px, ..model.spec().clone() })?;
    }
    let Format::Onnx = a.format;
    let opts = onnx::Options { dynamic_batch: a.dynamic_batch, opset: a.opset };
    onnx::write(&model, &a.out, opts).with_context(|| format!("writing {}", a.out.display()))?;
    let s = model.spec();
    eprintln!(
        "{} -> {}: ONNX opset {}{}, input {}x3x{}x{}, {} classes",
        weights.display(),
        a.out.display(),
        a.opset,
        if model.quant.is_some() { " (int8 QDQ)" } else { "" },
        if a.dynamic_batch { "N" } else { "1" },
        s.height,
        s.width_px,
        s.classes
    );
    Ok(())
}
