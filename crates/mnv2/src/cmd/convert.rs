use std::path::PathBuf;

use anyhow::{Context, Result};
use mobilenetv2::Model;

#[derive(clap::Args)]
pub struct Args {
    /// Input weights (.pth, .pt, .safetensors)
    input: PathBuf,
    /// Output file (.safetensors with torchvision names and mnv2 metadata)
    output: PathBuf,
}

pub fn main(a: Args) -> Result<()> {
    let model = Model::load(&a.input)?;
    model.save(&a.output).with_context(|| format!("writing {}", a.output.display()))?;
    let s = model.spec();
    eprintln!(
        "{} -> {}: width {}, {} classes, {} tensors",
        a.input.display(),
        a.output.display(),
        s.width,
        s.classes,
        model.params.len()
    );
    Ok(())
}
