use std::path::PathBuf;

use anyhow::Result;
use mobilenetv2::engine::{Engine, Options};
use mobilenetv2::npy;
use mobilenetv2::{Batch, Model};

#[derive(clap::Args)]
pub struct Args {
    /// Weights file
    #[arg(long)]
    weights: PathBuf,
    /// NCHW float32 .npy input batch
    #[arg(long)]
    input: PathBuf,
    /// Where to write the logits (.npy, float32, N x classes)
    #[arg(long)]
    output: PathBuf,
    /// Worker threads
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Engine mode: fast or reference
    #[arg(long, default_value = "fast")]
    mode: String,
}

pub fn main(a: Args) -> Result<()> {
    let model = Model::load(&a.weights)?;
    let arr = npy::read(&a.input)?;
    let at = |e: mobilenetv2::Error| anyhow::anyhow!("{}: {e}", a.input.display());
    // Validate shape and values up front so errors name the input file.
    Batch::from_nchw(&arr.shape, &arr.data).and_then(|b| b.check_finite()).map_err(at)?;
    let (engine, _) = Engine::new_owned(model, Options { mode: a.mode.parse()?, threads: a.threads, isa: None })?;
    let logits = engine.run_nchw(&arr.shape, &arr.data).map_err(at)?;
    let classes = logits.shape.c;
    npy::write(&a.output, &npy::Array { shape: vec![logits.n, classes], data: logits.data })?;
    Ok(())
}
