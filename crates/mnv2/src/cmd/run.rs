use std::path::PathBuf;

use anyhow::Result;
use mobilenetv2::engine::{Engine, Options};
use mobilenetv2::npy;
use mobilenetv2::{Batch, Model};

use super::args::{self, ModeArg, PrecisionArg};

#[derive(clap::Args)]
pub struct Args {
    /// Weights file (any format `mnv2 convert` reads); default: the ImageNet weights in the
    /// weights home ($MNV2_HOME, else ~/.cache/mnv2; `mnv2 fetch` puts them there)
    #[arg(long)]
    weights: Option<PathBuf>,
    /// NCHW float32 .npy input batch
    #[arg(long)]
    input: PathBuf,
    /// Where to write the logits (.npy, float32, N x classes)
    #[arg(long)]
    output: PathBuf,
    /// Worker threads [default: all available cores]
    #[arg(long, value_parser = super::args::threads)]
    threads: Option<usize>,
    /// Engine mode
    #[arg(long, value_enum, default_value_t = ModeArg::Fast)]
    mode: ModeArg,
    /// Number format [default: the weights' own: int8 for an int8 file, else fp32]
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
}

pub fn main(a: Args) -> Result<()> {
    let model = Model::load(&super::fetch::weights_or_default(a.weights)?)?;
    let arr = npy::read(&a.input)?;
    let at = |e: mobilenetv2::Error| anyhow::anyhow!("{}: {e}", a.input.display());
    // Validate shape and values up front so errors name the input file.
    Batch::from_nchw(&arr.shape, &arr.data).and_then(|b| b.check_finite()).map_err(at)?;
    let threads = a.threads.unwrap_or_else(args::cores);
    let precision = a.precision.map(Into::into);
    let (engine, _) = Engine::new_owned(model, Options { mode: a.mode.into(), threads, isa: None, precision })?;
    args::warn_slow_bf16(&engine);
    let logits = engine.run_nchw(&arr.shape, &arr.data).map_err(at)?;
    let classes = logits.shape.c;
    npy::write(&a.output, &npy::Array { shape: vec![logits.n, classes], data: logits.data })?;
    Ok(())
}
