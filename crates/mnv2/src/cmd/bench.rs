use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use mobilenetv2::accounting::account;
use mobilenetv2::engine::{Engine, Isa, Options};
use mobilenetv2::{npy, Model, Spec};
use serde_json::json;

use super::out;

#[derive(clap::Args)]
pub struct Args {
    /// Weights file; without it, random weights of --width
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
    /// Threads
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed runs after the warm-up
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Minimum warm-up time in seconds
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Engine mode: fast or reference
    #[arg(long, default_value = "fast")]
    mode: String,
    /// Kernel instruction set (scalar, avx2, avx512); default: the best this CPU has
    #[arg(long)]
    isa: Option<String>,
    /// Print a per-stage time profile (one thread) with GMAC/s per stage
    #[arg(long)]
    profile: bool,
    /// Print one JSON object as the last line of stdout
    #[arg(long)]
    json: bool,
}

/// Peak resident set size of this process in bytes (Linux), if known.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

pub fn main(a: Args) -> Result<()> {
    let model = match &a.weights {
        Some(w) => Model::load(w)?,
        None => Model::init(&Spec::new(a.width, 224), 0, true)?,
    };
    let (dims, data) = match &a.input {
        Some(p) => {
            let arr = npy::read(p)?;
            if arr.shape.len() != 4 || arr.shape[1] != 3 {
                bail!("{}: expected an N x 3 x H x W array, got shape {:?}", p.display(), arr.shape);
            }
            (arr.shape, arr.data)
        }
        None => {
            let (h, w) = Spec::parse_resolution(&a.resolution)?;
            let n = a.batch * 3 * h * w;
            let mut rng = mobilenetv2::rng::Rng::new(1);
            (vec![a.batch, 3, h, w], (0..n).map(|_| rng.normal() as f32).collect())
        }
    };
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let isa = match &a.isa {
        Some(s) => Some(Isa::parse(s).ok_or_else(|| anyhow::anyhow!("--isa `{s}`: expected scalar, avx2 or avx512"))?),
        None => None,
    };
    let (engine, _) = Engine::new_owned(model, Options { mode: a.mode.parse()?, threads: a.threads, isa })?;
    let batch = dims[0];
    let image = mobilenetv2::plan::Shape::new(dims[2], dims[3], 3);
    let plan = engine.plan_for(image)?;
    let madds = account(&plan).madds;

    if a.profile {
        let input = mobilenetv2::Batch::from_nchw(&[1, 3, dims[2], dims[3]], &data[..3 * dims[2] * dims[3]])?;
        let mut total = None::<mobilenetv2::engine::Profile>;
        let start = Instant::now();
        let mut reps = 0;
        while start.elapsed().as_secs_f64() < a.warmup.max(0.5) || reps < 20 {
            let p = engine.profile(&input)?;
            if reps >= 5 {
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
        let t = total.expect("profiled");
        let n = (reps - 5) as f64;
        // Multiply-adds per stage, from the plan: stem, blocks, last conv + pool, classifier.
        let acc = account(&plan);
        let mut stage_madds = Vec::new();
        let stem_fused = plan.blocks[0].expand.is_none() && !plan.blocks[0].residual;
        if !stem_fused {
            stage_madds.push(acc.layers[0].madds);
        }
        for (i, b) in plan.blocks.iter().enumerate() {
            let from = if i == 0 && stem_fused { 0 } else { b.first_layer() };
            stage_madds.push((from..=b.project).map(|l| acc.layers[l].madds).sum());
        }
        let nl = plan.layers.len();
        stage_madds.push(acc.layers[nl - 4].madds);
        stage_madds.push(acc.layers[nl - 1].madds);
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
        let first_block = usize::from(!stem_fused);
        for (i, ((name, secs), m)) in t.stages.iter().zip(&stage_madds).enumerate() {
            s += &row(name, secs / n, *m);
            // The fused block's layers: expand (or the stem it is fused with), depthwise, project.
            if let Some(ops) = i.checked_sub(first_block).and_then(|k| t.block_ops.get(k).map(|o| (k, o))) {
                let (k, ops) = ops;
                let b = &plan.blocks[k];
                let first = b.expand.or((k == 0 && stem_fused).then_some(0));
                let names = [
                    first.map_or("-", |l| plan.layers[l].name.as_str()),
                    &plan.layers[b.depthwise].name,
                    &plan.layers[b.project].name,
                ];
                let macs = [
                    first.map_or(0, |l| acc.layers[l].madds),
                    acc.layers[b.depthwise].madds,
                    acc.layers[b.project].madds,
                ];
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
        s += &format!("isa: {}; kernels: {}\n", isa.map_or("reference", |i| i.name()), kernels.join(", "));
        return out(&s);
    }

    let run = || engine.run_nchw(&dims, &data).map(|_| ());
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
    times.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let median = percentile(&times, 0.5);
    let p90 = percentile(&times, 0.9);
    let rss = peak_rss();
    let act = engine.activation_bytes(image)?;
    let (isa, _) = engine.kernels();
    let ips = batch as f64 / (median / 1e3);
    if !a.json {
        out(&format!(
            "{} image(s) of {}x{}, {} thread(s), {} mode ({}): median {:.3} ms, p90 {:.3} ms, min {:.3} ms, {:.1} images/s, {:.1} GMAC/s\npeak RSS {:.1} MB, activation buffers {:.1} KB\n",
            batch, dims[2], dims[3], a.threads, a.mode, isa.map_or("reference", |i| i.name()), median, p90, times[0], ips,
            madds as f64 * batch as f64 / (median / 1e3) / 1e9,
            rss.unwrap_or(0) as f64 / 1e6, act as f64 / 1e3
        ))?;
    }
    let v = json!({
        "median_ms": median, "p90_ms": p90, "min_ms": times[0], "runs": a.runs, "batch": batch,
        "threads": a.threads, "mode": a.mode, "isa": isa.map(|i| i.name()), "images_per_s": ips,
        "peak_rss_bytes": rss, "activation_bytes": act, "madds": madds,
    });
    out(&format!("{v}\n"))
}
