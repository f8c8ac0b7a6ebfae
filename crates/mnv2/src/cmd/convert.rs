use std::path::PathBuf;

use anyhow::{Context, Result};
use mobilenetv2::weights::safetensors_io::FloatStore;
use mobilenetv2::Model;

use super::args::DtypeArg;

#[derive(clap::Args)]
pub struct Args {
    /// Input weights: PyTorch (.pth, .pt), safetensors, ONNX (.onnx, fp32 or int8 QDQ), Keras
    /// (.h5, .keras, .weights.h5) or TFLite (.tflite, fp32 or full-integer int8)
    input: PathBuf,
    /// Output file (.safetensors with torchvision names and mnv2 metadata; int8 models keep
    /// their int8 weights and activation quantisation)
    output: PathBuf,
    /// Storage of float tensors
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
}

pub fn main(a: Args) -> Result<()> {
    let store: FloatStore = a.dtype.into();
    let file = mobilenetv2::weights::load(&a.input)?;
    // What an imported int8 model does not carry over exactly (see docs/bring-your-own-weights.md).
    if let Some(notes) = file.metadata.get("import_notes") {
        for n in serde_json::from_str::<Vec<String>>(notes).unwrap_or_default() {
            eprintln!("note: {n}");
        }
    }
    let model = Model::from_file(file)?;
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
