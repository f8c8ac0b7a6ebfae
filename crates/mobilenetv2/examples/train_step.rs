//! Training-step throughput on random data (no data loading), with the time per kind of work.
//!
//! `cargo run --release -p mobilenetv2 --example train_step -- [RES] [BATCH] [STEPS] [WIDTH]`
//! (defaults 64 128 10 1.0). Threads: `RAYON_NUM_THREADS`.

use std::time::Instant;

use mobilenetv2::rng::Rng;
use mobilenetv2::train::{prof, BnMode, Net, StepOptions, Tape};
use mobilenetv2::{Model, Spec};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: f64| args.get(i).map_or(d, |s| s.parse().expect("a number"));
    let (res, batch, steps, width) = (arg(0, 64.0) as usize, arg(1, 128.0) as usize, arg(2, 10.0) as u64, arg(3, 1.0));
    let spec = Spec { classes: 10, ..Spec::new(width, res) };
    let model = Model::init(&spec, 0, false).expect("model");
    let mut net = Net::new(&model);
    let mut tape = Tape::new(&net.plan, batch);
    let mut rng = Rng::new(1);
    let images: Vec<f32> = (0..batch * res * res * 3).map(|_| rng.normal() as f32).collect();
    let labels: Vec<usize> = (0..batch).map(|i| i % 10).collect();
    let opts = StepOptions { bn: BnMode::Train, backbone: true, label_smoothing: 0.1 };
    for _ in 0..2 {
        net.step(&mut tape, &images, &labels, opts, Some(&mut rng)).expect("step");
    }
    prof::enable(std::env::var_os("MNV2_TRAIN_PROFILE").is_some());
    let (t, cpu0) = (Instant::now(), cpu_seconds());
    for _ in 0..steps {
        net.step(&mut tape, &images, &labels, opts, Some(&mut rng)).expect("step");
    }
    let (dt, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    println!(
        "{res}x{res} batch {batch} width {width}, {} threads: {:.1} img/s ({:.1} ms/step), {:.1} img per CPU-second",
        rayon::current_num_threads(),
        (batch as u64 * steps) as f64 / dt,
        1e3 * dt / steps as f64,
        (batch as u64 * steps) as f64 / cpu
    );
    if prof::enabled() {
        print!("{}", prof::report(steps));
    }
}

/// User + system time of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |p| p.1).split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}
