use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mobilenetv2::data::augment::Augment;
use mobilenetv2::data::loader::{Loader, Transform};
use mobilenetv2::data::{Dataset, OnBad};
use mobilenetv2::detect::{self, Detector, DetectorOptions};
use mobilenetv2::engine::Mode;
use mobilenetv2::plan::Shape;
use mobilenetv2::quant::{self, Method};
use mobilenetv2::{npy, preprocess, Batch, Model};

#[derive(clap::Args)]
pub struct Args {
    /// Float weights to quantise (a classifier, or a detector: a TF frozen graph or a file of
    /// `mnv2 convert`); default: the ImageNet weights in the weights home ($MNV2_HOME, else
    /// ~/.cache/mnv2; `mnv2 fetch` puts them there)
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Calibration data: a directory of JPEG/PNG images (searched recursively, preprocessed as
    /// the model expects), MNIST-family IDX files (an images file, or a folder holding
    /// train-images-idx3-ubyte[.gz]; resized to the input, as `mnv2 eval --augment none`) or an
    /// NCHW float32 .npy batch
    #[arg(long)]
    calib: PathBuf,
    /// Use at most this many calibration images
    #[arg(long, default_value_t = 100)]
    images: usize,
    /// How activation ranges are chosen: minmax, percentile[:P] or mse
    #[arg(long, default_value = "percentile:99.9", value_parser = super::args::method)]
    method: Method,
    /// Output file (safetensors with int8 weights and the quantisation in its metadata)
    #[arg(long)]
    out: PathBuf,
}

/// The JPEG and PNG files under `dir`, sorted; symlink cycles end (each folder is read once).
fn image_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
    };
    out.extend(mobilenetv2::fsutil::walk_files(dir, is_image)?);
    Ok(())
}

/// The first `n` images of an IDX dataset, preprocessed as evaluation does (`--augment none`).
fn idx_batches(path: &Path, model: &Model, n: usize) -> Result<Vec<Batch>> {
    let ds = Arc::new(Dataset::open(path, OnBad::Stop)?);
    let order = Arc::new((0..ds.len().min(n)).collect::<Vec<_>>());
    let spec = model.spec();
    let t = Transform::eval(model, Augment::None, OnBad::Stop);
    let shape = Shape::new(spec.height, spec.width_px, 3);
    Loader::new(ds, order, 32, 0, t, 2, 2)
        .map(|b| {
            let b = b?;
            Batch::new(b.labels.len(), shape, b.images)
        })
        .collect::<mobilenetv2::Result<_>>()
        .with_context(|| format!("reading calibration images from {}", path.display()))
}

/// A detector (a TF frozen graph or the project's detector file): calibrated on the photos
/// of `--calib` (a directory) as the detector feeds them to its network, written as an int8
/// detector file that `mnv2 detect` runs.
fn quantize_detector(a: &Args, weights: &Path) -> Result<()> {
    let det = Detector::load(weights, DetectorOptions { mode: Mode::Reference, ..DetectorOptions::default() })?;
    if det.model().quant.is_some() {
        bail!("{}: already quantised", weights.display());
    }
    if !a.calib.is_dir() {
        bail!("{}: a detector is calibrated on a directory of photos (JPEG or PNG)", a.calib.display());
    }
    let mut files = Vec::new();
    image_files(&a.calib, &mut files)?;
    if files.is_empty() {
        bail!("{}: no JPEG or PNG images found", a.calib.display());
    }
    files.truncate(a.images);
    let photos = files.iter().map(|f| preprocess::decode(f)).collect::<mobilenetv2::Result<Vec<_>>>()?;
    eprintln!(
        "calibrating the detector's {} blocks on {} photo(s) with {:?} ...",
        det.model().plan.blocks.len(),
        photos.len(),
        a.method
    );
    let qspec = det.calibrate(&photos, a.method)?;
    det.save_int8(&a.out, &qspec).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {} ({} bytes)", a.out.display(), std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0));
    Ok(())
}

pub fn main(a: Args) -> Result<()> {
    let method = a.method;
    if a.images == 0 {
        bail!("--images must be at least 1");
    }
    let weights = super::fetch::weights_or_default(a.weights.clone())?;
    if detect::is_graph(&weights)? {
        return quantize_detector(&a, &weights);
    }
    let mut model = Model::load(&weights)?;
    if model.plan.ssd("").is_ok() {
        return quantize_detector(&a, &weights);
    }
    if model.quant.is_some() {
        bail!("{}: already quantised", weights.display());
    }
    let spec = model.spec().clone();
    let batches: Vec<Batch> = if Dataset::is_idx(&a.calib) {
        idx_batches(&a.calib, &model, a.images)?
    } else if a.calib.is_dir() {
        let mut files = Vec::new();
        image_files(&a.calib, &mut files)?;
        if files.is_empty() {
            bail!("{}: no JPEG or PNG images found", a.calib.display());
        }
        files.truncate(a.images);
        files
            .chunks(8)
            .map(|c| preprocess::load_batch(c, &model.preprocess, spec.height, spec.width_px))
            .collect::<mobilenetv2::Result<_>>()?
    } else {
        let arr = npy::read(&a.calib)?;
        let at = |e: mobilenetv2::Error| anyhow::anyhow!("{}: {e}", a.calib.display());
        let b = Batch::from_nchw(&arr.shape, &arr.data).map_err(at)?;
        b.check_finite().map_err(at)?;
        let n = b.n.min(a.images);
        vec![Batch::new(n, b.shape, b.data[..n * b.shape.len()].to_vec()).map_err(at)?]
    };
    let count: usize = batches.iter().map(|b| b.n).sum();
    eprintln!("calibrating {} blocks on {count} image(s) with {method:?} ...", model.plan.blocks.len());
    let qspec = quant::calibrate(&model, &batches, method)?;
    model.quant = Some(qspec.clone());
    quant::save(&model, &qspec, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {} ({} bytes)", a.out.display(), std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0));
    Ok(())
}
