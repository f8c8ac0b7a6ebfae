//! Times the depthwise phases alone on one shape: `dw_phase N C H S` (images, channels, input
//! size, stride).
use std::time::Instant;

use mnv2_kernels::MinMax;
use mobilenetv2::train::ops::{self, BnAct, BnBwd, DwBwd, Geom, InGrad, Src, Work};

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (n, c, h, s) = (a[0], a[1], a[2], a[3]);
    let ho = (h - 1) / s + 1;
    let g = Geom { in_h: h, in_w: h, out_h: ho, out_w: ho, stride: s, dilation: 1, pad_top: 1, pad_left: 1 };
    let xe: Vec<f32> = (0..n * h * h * c).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let mut xd = vec![0f32; n * ho * ho * c];
    let w: Vec<f32> = (0..9 * c).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
    let ones = vec![1f32; c];
    let zeros = vec![0f32; c];
    let bn = BnAct { scale: &ones, shift: &zeros, act: MinMax::RELU6 };
    let mut work = Work::default();
    let isa = mnv2_kernels::Tier::best();
    let reps = 10;
    let t = Instant::now();
    for _ in 0..reps {
        ops::dw_forward(isa, Src::Bn(&xe, bn), n, c, g, &w, &mut xd, true, &mut work);
    }
    let tf = t.elapsed().as_secs_f64() / reps as f64;
    let dz = xd.clone();
    let mut g2 = vec![0f32; xe.len()];
    let t = Instant::now();
    for _ in 0..reps {
        let bwd = BnBwd { x: &xd, fwd: bn, ka: &ones, kb: &zeros, kd: &zeros };
        let db = DwBwd { dz: &dz, bwd, src: Src::Bn(&xe, bn), w_hwc: &w, n, c, g };
        let din = InGrad { out: &mut g2, residual: None, sums: Some((&xe, bn, &zeros)), masked: false };
        ops::dw_backward(isa, db, din, &mut work);
    }
    let tb = t.elapsed().as_secs_f64() / reps as f64;
    let mb = |v: usize| v as f64 * 4.0 / 1e6;
    println!(
        "n={n} c={c} {h}x{h} s{s} ({} threads): forward {:.2} ms (x_e {:.0} MB, x_d {:.0} MB), backward {:.2} ms",
        rayon::current_num_threads(),
        tf * 1e3,
        mb(xe.len()),
        mb(xd.len()),
        tb * 1e3
    );
}
