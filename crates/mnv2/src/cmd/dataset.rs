//! `mnv2 dataset compose`: the scene dataset of Fashion-MNIST items on real photographs
//! (`mobilenetv2::data::compose` does the work; this file parses, shows progress and prints).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mobilenetv2::data::compose::{compose, ComposeConfig, Sources, Split};

use super::out;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Paste Fashion-MNIST items onto crops of real photos: COCO instances JSON (boxes, RLE
    /// masks) and VOC-style class masks, train and val splits, deterministic from a seed
    Compose(ComposeArgs),
}

#[derive(clap::Args)]
struct ComposeArgs {
    /// Output folder (must not exist; written in a hidden sibling folder, renamed when complete)
    #[arg(long)]
    out: PathBuf,
    /// IDX folder with train-* (train items) and t10k-* (val items) files
    #[arg(long, default_value = "data/fashion-mnist")]
    fashion_mnist: PathBuf,
    /// Folder of background photos (.png, .jpg); scripts/fetch_backgrounds.sh fetches real ones
    #[arg(long, default_value = "data/backgrounds")]
    backgrounds: PathBuf,
    /// Seed of everything random (same seed, same bytes)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training images
    #[arg(long, default_value_t = 20_000)]
    train: usize,
    /// Validation images
    #[arg(long, default_value_t = 2_000)]
    val: usize,
    /// Side of the square images in pixels
    #[arg(long, default_value_t = 320)]
    size: usize,
    /// Items drawn per image, MIN..MAX (inclusive)
    #[arg(long, value_name = "MIN..MAX", default_value = "2..8")]
    items_per_image: String,
    /// An item's longer side in pixels, MIN..MAX [default: size/10..2*size/5]
    #[arg(long, value_name = "MIN..MAX")]
    item_scale: Option<String>,
    /// Smallest visible fraction of an item that a later item may leave
    #[arg(long, default_value_t = 0.3)]
    min_visible: f64,
    /// Write the images as JPEG of this quality (1-100) instead of PNG (about 7x smaller:
    /// the default 22000 PNG images take about 4 GB); masks stay PNG
    #[arg(long, value_name = "QUALITY")]
    jpeg: Option<u8>,
    /// Worker threads [default: all available cores]
    #[arg(long, value_parser = super::args::threads)]
    threads: Option<usize>,
    /// Print the summary as JSON
    #[arg(long)]
    json: bool,
}

fn range(s: &str, what: &str) -> Result<(usize, usize)> {
    let parse = |p: &str| p.trim().parse::<usize>().with_context(|| format!("{what} `{s}`: expected MIN..MAX"));
    match s.split_once("..") {
        Some((a, b)) => Ok((parse(a)?, parse(b.trim_start_matches('='))?)),
        None => {
            let v = parse(s)?;
            Ok((v, v))
        }
    }
}

pub fn main(a: Args) -> Result<()> {
    match a.command {
        Command::Compose(c) => main_compose(c),
    }
}

fn main_compose(a: ComposeArgs) -> Result<()> {
    let mut cfg = ComposeConfig::for_size(a.size);
    cfg.seed = a.seed;
    cfg.train = a.train;
    cfg.val = a.val;
    cfg.items = range(&a.items_per_image, "--items-per-image")?;
    if let Some(s) = &a.item_scale {
        cfg.scale = range(s, "--item-scale")?;
    }
    cfg.min_visible = a.min_visible;
    cfg.jpeg_quality = a.jpeg;
    cfg.validate()?;
    if a.out.exists() {
        bail!("{}: already exists (remove it or choose another folder)", a.out.display());
    }
    let src = Sources::open(&a.fashion_mnist, &a.backgrounds)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.unwrap_or_else(super::args::cores))
        .build()
        .context("cannot start the worker threads")?;
    let bar = ProgressBar::new((cfg.train + cfg.val) as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} images {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix("compose");
    let train = cfg.train as u64;
    let progress = |split: Split, done: usize| {
        let pos = match split {
            Split::Train => done as u64,
            Split::Val => train + done as u64,
        };
        if pos > bar.position() {
            bar.set_position(pos);
        }
    };
    let t0 = std::time::Instant::now();
    let summary = pool.install(|| compose(&cfg, &src, &a.out, &progress))?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let images = summary.images.0 + summary.images.1;
    if a.json {
        let v = serde_json::json!({
            "out": a.out.display().to_string(),
            "train": {"images": summary.images.0, "instances": summary.instances.0, "left_out": summary.left_out.0},
            "val": {"images": summary.images.1, "instances": summary.instances.1, "left_out": summary.left_out.1},
            "seconds": secs,
        });
        return out(&(serde_json::to_string_pretty(&v)? + "\n"));
    }
    out(&format!(
        "{}: train {} images, {} instances; val {} images, {} instances ({} + {} items left out by the occlusion rule); {:.1} s, {:.0} images/s\n",
        a.out.display(),
        summary.images.0,
        summary.instances.0,
        summary.images.1,
        summary.instances.1,
        summary.left_out.0,
        summary.left_out.1,
        secs,
        images as f64 / secs.max(1e-9),
    ))
}
