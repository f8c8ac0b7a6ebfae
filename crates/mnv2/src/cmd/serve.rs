//! `mnv2 serve`: the HTTP inference server. All the work is in the `mnv2-serve` crate; this
//! file parses the flags, loads the weights and reports where it listens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use mobilenetv2::detect::{Detector, DetectorOptions};
use mobilenetv2::engine::Options;
use mobilenetv2::segment::Segmenter;
use mobilenetv2::Model;

#[derive(clap::Args)]
pub struct Args {
    /// Weights file (.pth, .pt, .safetensors)
    #[arg(long)]
    weights: PathBuf,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Engine threads (and images decoded at once); default: the available cores
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: Option<u64>,
    /// Most images per engine batch; also how many requests read and decode their bodies at once
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_batch: u64,
    /// How long the first image of a batch waits for others, in milliseconds
    #[arg(long, default_value_t = 2)]
    batch_wait_ms: u64,
    /// Inference requests admitted at once; beyond, 503 with Retry-After
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    queue: u64,
    /// Per-request timeout (upload, queueing and inference), in milliseconds
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Largest request body, in bytes
    #[arg(long, default_value_t = 20 << 20)]
    max_body: usize,
    /// Largest image, in pixels, read from its header before decoding
    #[arg(long, default_value_t = 24_000_000)]
    max_pixels: u64,
    /// Most images in one request
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_images: u64,
    /// The model's name in the Open Inference Protocol routes (/v2/models/NAME)
    #[arg(long, default_value = "mobilenet_v2")]
    model_name: String,
    /// Detector for POST /v1/detect: a TF Object Detection API SSD frozen graph (.pb) or a
    /// safetensors detector (as `mnv2 detect --weights`)
    #[arg(long)]
    detector: Option<PathBuf>,
    /// Segmenter for POST /v1/segment: a DeepLab model (as `mnv2 segment --weights`)
    #[arg(long)]
    segmenter: Option<PathBuf>,
    /// Number format of the classifier, the detector and the segmenter [default: each weights
    /// file's own: int8 for an int8 file, else fp32]
    #[arg(long, value_enum)]
    precision: Option<super::args::PrecisionArg>,
}

pub fn main(a: Args) -> Result<()> {
    tune_malloc();
    let model = Model::load(&a.weights)?;
    let defaults = mnv2_serve::Config::default();
    let threads = a.threads.map_or(defaults.threads, |t| t as usize);
    let precision = a.precision.map(Into::into);
    let mut heads = mnv2_serve::Heads::default();
    if let Some(p) = &a.detector {
        // Threshold 0: each request filters with its own ?threshold= (default 0.5).
        let options = DetectorOptions { threshold: 0.0, threads, precision, ..DetectorOptions::default() };
        let detector = Detector::load(p, options).with_context(|| format!("--detector {}", p.display()))?;
        super::args::warn_slow_bf16(detector.engine());
        heads.detector = Some(detector);
    }
    if let Some(p) = &a.segmenter {
        let m = Model::load(p)?;
        let segmenter = Segmenter::new(m, Options { threads, precision, ..Options::default() })
            .with_context(|| format!("--segmenter {}", p.display()))?;
        super::args::warn_slow_bf16(segmenter.engine());
        heads.segmenter = Some(segmenter);
    }
    let config = mnv2_serve::Config {
        threads,
        max_batch: a.max_batch as usize,
        batch_wait: Duration::from_millis(a.batch_wait_ms),
        queue: a.queue as usize,
        timeout: Duration::from_millis(a.timeout_ms),
        max_body: a.max_body,
        max_pixels: a.max_pixels,
        max_images: a.max_images as usize,
        model_name: a.model_name,
        precision,
    };
    let routes = match (heads.detector.is_some(), heads.segmenter.is_some()) {
        (false, false) => "classify",
        (true, false) => "classify, detect",
        (false, true) => "classify, segment",
        (true, true) => "classify, detect, segment",
    };
    mnv2_serve::run(model, heads, config, a.addr, |addr| {
        let format = precision.map_or(String::new(), |p: mobilenetv2::engine::Precision| format!("; {}", p.name()));
        eprintln!(
            "mnv2 serve: listening on http://{addr} ({threads} engine threads{format}; {routes}); Ctrl-C or SIGTERM stops"
        );
    })?;
    Ok(())
}

/// glibc's malloc, left to its defaults, keeps a server's freed memory: one arena per thread
/// (up to 8 per core) each holding its own free pages, and a "dynamic" mmap threshold that,
/// once a large block has been freed, serves the next large blocks (bodies, decoded photos,
/// 600 KB input tensors) from those arenas, where they fragment instead of going back to the
/// system. Under 64 connections that doubles the resident memory (129 MB against 78 MB of live
/// peak). Its tunables are read from the environment when the process starts, so unless the
/// user set them, `mnv2 serve` replaces itself (exec: same process id, nothing has run yet)
/// with two arenas and a fixed 128 KiB mmap threshold. `MALLOC_ARENA_MAX` set to anything,
/// even its default, keeps the process as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("MALLOC_ARENA_MAX", "2")
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .exec();
    // Only returns on failure: serve with the defaults.
    eprintln!("mnv2 serve: could not restart with malloc tuned ({err}); going on without");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}
