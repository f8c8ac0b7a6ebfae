use std::path::PathBuf;

use anyhow::{bail, Result};
use mobilenetv2::spec::HeadSpec;
use mobilenetv2::{Model, Spec};

#[derive(clap::Args)]
pub struct Args {
    /// Width multiplier
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Number of classes
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    /// Input resolution recorded in the file, N or HxW
    #[arg(long, default_value = "224")]
    resolution: String,
    /// Expansion rate for every expanding block (Table 2 uses 6)
    #[arg(long)]
    expansion: Option<usize>,
    /// Seed of the random numbers
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Give BatchNorm non-trivial statistics and affine parameters (for parity tests:
    /// torchvision's identity BatchNorm hides folding errors)
    #[arg(long)]
    randomize_bn: bool,
    /// Head: classifier, deeplab (Mobile DeepLabv3, the paper's chosen head) or deeplab-aspp
    #[arg(long, default_value = "classifier")]
    head: String,
    /// Output stride of a DeepLab head's backbone (16 or 8; 32 for a classifier)
    #[arg(long)]
    output_stride: Option<usize>,
    /// Output file (.safetensors)
    #[arg(long)]
    out: PathBuf,
}

pub fn main(a: Args) -> Result<()> {
    let (height, width_px) = Spec::parse_resolution(&a.resolution)?;
    let head = match a.head.as_str() {
        "classifier" => HeadSpec::Classifier,
        "deeplab" => HeadSpec::DeepLab { aspp: false },
        "deeplab-aspp" => HeadSpec::DeepLab { aspp: true },
        h => bail!("--head {h}: expected classifier, deeplab or deeplab-aspp"),
    };
    let output_stride = a.output_stride.unwrap_or(if head == HeadSpec::Classifier { 32 } else { 16 });
    let spec = Spec {
        width: a.width,
        classes: a.classes,
        height,
        width_px,
        expansion: a.expansion,
        head,
        output_stride,
        ..Spec::default()
    };
    let model = Model::init(&spec, a.seed, a.randomize_bn)?;
    model.save(&a.out)?;
    eprintln!("wrote {} (width {}, {} classes, seed {})", a.out.display(), a.width, a.classes, a.seed);
    Ok(())
}
