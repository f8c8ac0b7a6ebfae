use std::path::PathBuf;

use anyhow::{Context, Result};
use mobilenetv2::detect::{Detector, DetectorOptions};
use mobilenetv2::weights::safetensors_io::FloatStore;
use mobilenetv2::Model;

use super::args::DtypeArg;

#[derive(clap::Args)]
pub struct Args {
    /// Input weights: PyTorch (.pth, .pt), safetensors, ONNX (.onnx, fp32 or int8 QDQ), Keras
    /// (.h5, .keras, .weights.h5), TFLite (.tflite, fp32 or full-integer int8), or a TF Object
    /// Detection API SSD frozen graph (.pb)
    input: PathBuf,
    /// Output file (.safetensors with torchvision names and mnv2 metadata; int8 models keep
    /// their int8 weights and activation quantisation; a detector keeps its post-processing
    /// and labels, so `mnv2 detect --weights OUTPUT` needs nothing else)
    output: PathBuf,
    /// Storage of float tensors
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
}

pub fn main(a: Args) -> Result<()> {
    let store: FloatStore = a.dtype.into();
    if mobilenetv2::detect::is_graph(&a.input)? {
        let det = Detector::from_graph(&a.input, DetectorOptions::default())?;
        det.save(&a.output, store).with_context(|| format!("writing {}", a.output.display()))?;
        let s = det.model().spec();
        eprintln!(
            "{} -> {}: SSD detector, width {}, {}x{} input, {} classes + background, {} tensors",
            a.input.display(),
            a.output.display(),
            s.width,
            s.height,
            s.width_px,
            s.classes - 1,
            det.model().params.len()
        );
        return Ok(());
    }
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
