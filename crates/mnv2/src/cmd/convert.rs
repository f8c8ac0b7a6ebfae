use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use mobilenetv2::weights::safetensors_io::FloatStore;
use mobilenetv2::Model;

#[derive(clap::Args)]
pub struct Args {
    /// Input weights (.pth, .pt, .safetensors, .onnx)
    input: PathBuf,
    /// Output file (.safetensors with torchvision names and mnv2 metadata)
    output: PathBuf,
    /// Storage of float tensors: f32, or f16 (half the size, widened back at load)
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn main(a: Args) -> Result<()> {
    let store = match a.dtype.as_str() {
        "f32" => FloatStore::F32,
        "f16" => FloatStore::F16,
        o => bail!("--dtype `{o}`: expected f32 or f16"),
    };
    let model = Model::load(&a.input)?;
    model.save_as(&a.output, store).with_context(|| format!("writing {}", a.output.display()))?;
    let s = model.spec();
    eprintln!(
        "{} -> {}: width {}, {} classes, {} tensors{}",
        a.input.display(),
        a.output.display(),
        s.width,
        s.classes,
        model.params.len(),
        if model.quant.is_some() { " (int8)" } else { "" }
    );
    Ok(())
}
