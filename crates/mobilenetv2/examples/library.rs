//! The README's "As a library" snippet, compiled (CI builds every example):
//!
//! ```text
//! cargo run --release -p mobilenetv2 --example library -- WEIGHTS IMAGE
//! cargo run --release -p mobilenetv2 --example library -- weights/mobilenet_v2-b0353104.pth photo.jpg
//! ```
//!
//! WEIGHTS is any file `Model::load` reads (safetensors, PyTorch `.pth`, ONNX, TFLite, Keras).

use std::path::{Path, PathBuf};

use mobilenetv2::engine::{Engine, Mode, Options};
use mobilenetv2::plan::Shape;
use mobilenetv2::{classify, preprocess, Batch, Model};

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [weights, image] = args.as_slice() else {
        eprintln!("usage: library WEIGHTS IMAGE");
        std::process::exit(2);
    };
    if let Err(e) = classify_one(weights, image) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn classify_one(weights: &Path, image: &Path) -> mobilenetv2::Result<()> {
    // --- README snippet ---
    let model = Model::load(weights)?;
    let engine = Engine::new(&model, Options { mode: Mode::Fast, threads: 2, isa: None, precision: None })?;
    let (h, w) = (model.spec().height, model.spec().width_px);
    // The image resized, cropped and normalised as the weights expect: NHWC values.
    let pixels = preprocess::load(image, &model.preprocess, h, w)?;
    let logits = engine.run(&Batch::new(1, Shape::new(h, w, 3), pixels)?)?; // run_nchw for NCHW input
    for p in classify::predictions(&model, logits.image(0), 5) {
        println!("{:5.1}% {}", 100.0 * p.prob, p.label.unwrap_or_default());
    }
    // --- end of snippet ---
    Ok(())
}
