//! `mnv2 bench`: latency, throughput and memory of the engine, or a per-stage profile.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use mobilenetv2::accounting::{account, Accounting};
use mobilenetv2::engine::{Engine, Options, Profile};
use mobilenetv2::plan::{Head, Plan, Shape};
use mobilenetv2::{npy, Batch, Model, Spec};
use serde_json::json;

use super::args::{self, IsaArg, ModeArg, PrecisionArg};
use super::{out, Internal};

#[derive(clap::Args)]
pub struct Args {
    /// Weights file (a classifier, a DeepLab segmenter, or a detector: its network to the raw
    /// outputs, from a TF frozen graph or `mnv2 convert`'s file); without it, random weights
    /// of --width (timing does not depend on the values, so bench needs no download and
    /// measures any width)
    #[arg(long)]
    weights: Option<PathBuf>,
    /// NCHW float32 .npy input batch; without it, a random batch of --batch images
    #[arg(long)]
    input: Option<PathBuf>,
    /// Width multiplier for random weights
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Input resolution, N or HxW, for a random batch
    #[arg(long, default_value = "224")]
    resolution: String,
    /// Images per batch, for a random batch
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Threads. Default 1, not all cores (unlike classify, run and eval): a latency is only
    /// comparable at a stated thread count, and every figure in BENCHMARKS.md states it
    #[arg(long, default_value_t = 1, value_parser = super::args::threads)]
    threads: usize,
    /// Timed runs after the warm-up
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Minimum warm-up time in seconds
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Engine mode
    #[arg(long, value_enum, default_value_t = ModeArg::Fast)]
    mode: ModeArg,
    /// Kernel instruction set; default: the best this CPU has
    #[arg(long, value_enum, ignore_case = true)]
    isa: Option<IsaArg>,
    /// Number format [default: the weights' own: int8 for an int8 file, else fp32]
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    /// Print a per-stage time profile (one thread) with GMAC/s per stage
    #[arg(long)]
    profile: bool,
    /// Print one JSON object as the last line of stdout
    #[arg(long)]
    json: bool,
}

/// Peak resident set size of this process in bytes (Linux), if known.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// The weights: the file (a detector's TF frozen graph too: its network to the raw outputs),
/// or random ones of `--width`.
fn model(a: &Args) -> Result<Model> {
    Ok(match &a.weights {
        Some(w) if mobilenetv2::detect::is_graph(w)? => {
            let g = mobilenetv2::weights::tfgraph::TfGraph::read_path(w)?;
            let pre = mobilenetv2::detect::SsdConfig::from_graph(&g)?.preprocess;
            mobilenetv2::detect::tfimport::model(&g, pre.height, pre.width)?
        }
        Some(w) => Model::load(w)?,
        None => Model::init(&Spec::new(a.width, 224), 0, true)?,
    })
}

/// The NCHW input: the file, or a seeded random batch of `--batch` images at `--resolution`.
fn input(a: &Args) -> Result<(Vec<usize>, Vec<f32>)> {
    match &a.input {
        Some(p) => {
            let arr = npy::read(p)?;
            if arr.shape.len() != 4 || arr.shape[1] != 3 {
                bail!("{}: expected an N x 3 x H x W array, got shape {:?}", p.display(), arr.shape);
            }
            Ok((arr.shape, arr.data))
        }
        None => {
            let (h, w) = Spec::parse_resolution(&a.resolution)?;
            let n = a.batch * 3 * h * w;
            let mut rng = mobilenetv2::rng::Rng::new(1);
            Ok((vec![a.batch, 3, h, w], (0..n).map(|_| rng.normal() as f32).collect()))
        }
    }
}

pub fn main(a: Args) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let model = model(&a)?;
    let (dims, data) = input(&a)?;
    let precision = a.precision.map(Into::into);
    let options = Options { mode: a.mode.into(), threads: a.threads, isa: a.isa.map(Into::into), precision };
    let (engine, _) = Engine::new_owned(model, options)?;
    args::warn_slow_bf16(&engine);
    let image = Shape::new(dims[2], dims[3], 3);
    let plan = engine.plan_for(image)?;
    if a.profile {
        let first = Batch::from_nchw(&[1, 3, dims[2], dims[3]], &data[..3 * dims[2] * dims[3]])?;
        let (profile, reps) = profile(&engine, &first, a.warmup)?;
        return out(&profile_table(&engine, &plan, &profile, reps));
    }
    let times = time(&a, || engine.run_nchw(&dims, &data).map(|_| ()))?;
    report(&a, &engine, &plan, &dims, &times)
}

/// Profiles repeatedly for at least `warmup` seconds (0.5 at least, 20 runs at least) and sums
/// the per-stage times of all runs but the first 5; returns the sum and how many runs it holds.
fn profile(engine: &Engine, input: &Batch, warmup: f64) -> Result<(Profile, usize)> {
    const SKIP: usize = 5;
    let mut total = None::<Profile>;
    let start = Instant::now();
    let mut reps = 0;
    while start.elapsed().as_secs_f64() < warmup.max(0.5) || reps < 20 {
        let p = engine.profile(input)?;
        if reps >= SKIP {
            match &mut total {
                None => total = Some(p),
                Some(t) => {
                    t.stages.iter_mut().zip(p.stages).for_each(|(a, b)| a.1 += b.1);
                    for (a, b) in t.block_ops.iter_mut().zip(p.block_ops) {
                        (0..3).for_each(|i| a[i] += b[i]);
                    }
                }
            }
        }
        reps += 1;
    }
    let total = total.ok_or_else(|| Internal("the profile loop ran no counted repetition".into()))?;
    Ok((total, reps - SKIP))
}

/// Whether the first block is fused with the stem (it has no expansion and no residual).
fn stem_fused(plan: &Plan) -> bool {
    plan.blocks[0].expand.is_none() && !plan.blocks[0].residual
}

/// Multiply-adds per profiled stage, from the plan: stem, blocks, last conv + pool, classifier.
fn stage_madds(plan: &Plan, acc: &Accounting) -> Vec<u64> {
    let fused = stem_fused(plan);
    let mut m = Vec::new();
    if !fused {
        m.push(acc.layers[0].madds);
    }
    for (i, b) in plan.blocks.iter().enumerate() {
        let from = if i == 0 && fused { 0 } else { b.first_layer() };
        m.push((from..=b.project).map(|l| acc.layers[l].madds).sum());
    }
    m.push(acc.layers[plan.last_conv].madds);
    // Profiles come from the fast engine, which runs classifiers only.
    if let Head::Classifier(h) = &plan.head {
        m.push(acc.layers[h.classifier].madds);
    }
    m
}

/// The per-stage table, with each fused block's three convolutions under it.
fn profile_table(engine: &Engine, plan: &Plan, t: &Profile, reps: usize) -> String {
    let n = reps as f64;
    let acc = account(plan);
    let madds = acc.madds;
    let stage_madds = stage_madds(plan, &acc);
    let mut s = format!("{:<28} {:>10} {:>8} {:>14} {:>9}\n", "stage", "time (us)", "share", "madds", "GMAC/s");
    let total_s: f64 = t.stages.iter().map(|x| x.1).sum::<f64>() / n;
    let row = |name: &str, sec: f64, m: u64| {
        format!(
            "{:<28} {:>10.1} {:>7.1}% {:>14} {:>9.1}\n",
            name,
            sec * 1e6,
            100.0 * sec / total_s,
            m,
            m as f64 / sec / 1e9
        )
    };
    let fused = stem_fused(plan);
    let first_block = usize::from(!fused);
    for (i, ((name, secs), m)) in t.stages.iter().zip(&stage_madds).enumerate() {
        s += &row(name, secs / n, *m);
        // The fused block's layers: expand (or the stem it is fused with), depthwise, project.
        if let Some((k, ops)) = i.checked_sub(first_block).and_then(|k| t.block_ops.get(k).map(|o| (k, o))) {
            let b = &plan.blocks[k];
            let first = b.expand.or((k == 0 && fused).then_some(0));
            let names = [
                first.map_or("-", |l| plan.layers[l].name.as_str()),
                &plan.layers[b.depthwise].name,
                &plan.layers[b.project].name,
            ];
            let macs =
                [first.map_or(0, |l| acc.layers[l].madds), acc.layers[b.depthwise].madds, acc.layers[b.project].madds];
            for j in 0..3 {
                if macs[j] > 0 {
                    s += &row(&format!("  {}", names[j]), ops[j] / n, macs[j]);
                }
            }
        }
    }
    s += &format!(
        "{:<28} {:>10.1} {:>8} {:>14} {:>9.1}\n",
        "total",
        total_s * 1e6,
        "",
        madds,
        madds as f64 / total_s / 1e9
    );
    let (isa, kernels) = engine.kernels();
    s += &format!(
        "isa: {}; precision: {}; kernels: {}\n",
        isa.map_or("reference", |i| i.name()),
        precision_name(engine),
        distinct(&kernels).join(", ")
    );
    s
}

/// The engine's precision as `--precision` names it (`fp32` for the reference mode).
fn precision_name(engine: &Engine) -> &'static str {
    engine.precision().map_or("fp32", |p| p.name())
}

/// Kernel names in first-use order, each once.
fn distinct(kernels: &[&'static str]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for k in kernels {
        if !v.contains(k) {
            v.push(k);
        }
    }
    v
}

/// Warms up (at least `--warmup` seconds and 10 runs), then times `--runs` runs; the times in
/// milliseconds, sorted.
fn time(a: &Args, run: impl Fn() -> mobilenetv2::Result<()>) -> Result<Vec<f64>> {
    let start = Instant::now();
    let mut warm = 0;
    while start.elapsed() < Duration::from_secs_f64(a.warmup) || warm < 10 {
        run()?;
        warm += 1;
    }
    let mut times = Vec::with_capacity(a.runs);
    for _ in 0..a.runs {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// The summary line (unless `--json`) and the JSON object.
fn report(a: &Args, engine: &Engine, plan: &Plan, dims: &[usize], times: &[f64]) -> Result<()> {
    let batch = dims[0];
    let madds = account(plan).madds;
    let median = percentile(times, 0.5);
    let p90 = percentile(times, 0.9);
    let rss = peak_rss();
    let act = engine.activation_bytes(Shape::new(dims[2], dims[3], 3))?;
    let (isa, kernels) = engine.kernels();
    let kernels = distinct(&kernels);
    let precision = precision_name(engine);
    let ips = batch as f64 / (median / 1e3);
    let mode = args::name(&a.mode);
    if !a.json {
        out(&format!(
            "{} image(s) of {}x{}, {} thread(s), {} mode ({}, {}): median {:.3} ms, p90 {:.3} ms, min {:.3} ms, {:.1} images/s, {:.1} GMAC/s\npeak RSS {:.1} MB, activation buffers {:.1} KB\nkernels: {}\n",
            batch, dims[2], dims[3], a.threads, mode, isa.map_or("reference", |i| i.name()), precision, median, p90, times[0], ips,
            madds as f64 * batch as f64 / (median / 1e3) / 1e9,
            rss.unwrap_or(0) as f64 / 1e6, act as f64 / 1e3, kernels.join(", ")
        ))?;
    }
    let v = json!({
        "median_ms": median, "p90_ms": p90, "min_ms": times[0], "runs": a.runs, "batch": batch,
        "threads": a.threads, "mode": mode, "isa": isa.map(|i| i.name()), "precision": precision,
        "kernels": kernels, "images_per_s": ips,
        "peak_rss_bytes": rss, "activation_bytes": act, "madds": madds,
    });
    out(&format!("{v}\n"))
}
