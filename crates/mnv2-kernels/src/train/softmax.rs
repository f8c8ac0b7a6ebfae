//! Softmax over the classes of a row of pixels, for the pixel-wise cross-entropy of
//! segmentation training.
//!
//! The logits come class-major (`z[c * n + x]` for class `c` of pixel `x`), so every step is a
//! loop over the pixels of one class that the autovectoriser turns into full vectors whatever
//! the number of classes (a loop over a pixel's 11 classes would fill one masked vector at
//! best). The exponential is [`exp_neg`], branch-free plain Rust, so it vectorises too.
//!
//! The loop is written once and compiled per tier (`super::on_tier`); Rust does not contract
//! multiplications and additions into FMAs, so every tier gives the same bits (the test
//! checks it).

use super::{on_tier, TierOp};
use crate::isa::Tier;

/// `exp(x)` for `x <= 0` (as a softmax shifted by its maximum feeds it), to a relative error
/// of 2e-7 (the softmax's own `z - max` in f32 adds `|z - max| 2^-24`); 0 below -87.3 (where `exp` leaves the normal floats). Range reduction
/// `x = n ln 2 + r` with `|r| <= ln 2 / 2` (`n` rounded to nearest by the 1.5 * 2^23 trick),
/// a degree-7 Taylor polynomial of `exp(r)`, and `2^n` built in the exponent bits.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let under = x < -87.3;
    let x = if under { -87.3 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // The low bits of `t` hold n (two's complement, offset by the 1.5 * 2^23 mantissa).
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let scale = f32::from_bits(((ni + 127) << 23) as u32);
    if under {
        0.0
    } else {
        p * scale
    }
}

/// The outputs of [`softmax_columns`] per pixel.
pub struct Columns<'a> {
    /// `w[x] * softmax(z[.., x])[c]` at `p[c * n + x]`.
    pub p: &'a mut [f32],
    /// The largest logit of each pixel.
    pub max: &'a mut [f32],
    /// `sum_c exp(z[c, x] - max[x])` of each pixel (at least 1).
    pub sum: &'a mut [f32],
    /// The first class of each pixel with the largest logit.
    pub arg: &'a mut [u32],
}

/// The softmax of each of `n` pixels over `k` classes (`z[c * n + x]`), scaled per pixel by
/// `w[x]`, with each pixel's maximum, sum of shifted exponentials and argmax (see [`Columns`]).
///
/// Panics if a slice is shorter than `k * n` (`z`, `p`) or `n` (the others), or `k == 0`.
pub fn softmax_columns(tier: Tier, z: &[f32], k: usize, n: usize, w: &[f32], out: Columns) {
    assert!(k > 0, "softmax over no classes");
    assert!(z.len() >= k * n && out.p.len() >= k * n, "softmax_columns: logits {} for {k} x {n}", z.len());
    assert!(w.len() >= n && out.max.len() >= n && out.sum.len() >= n && out.arg.len() >= n);
    struct Op<'a> {
        z: &'a [f32],
        k: usize,
        n: usize,
        w: &'a [f32],
        out: Columns<'a>,
    }
    impl TierOp for Op<'_> {
        #[inline(always)]
        fn run(self) {
            let Op { z, k, n, w, out } = self;
            let Columns { p, max, sum, arg } = out;
            let (max, sum, arg, w) = (&mut max[..n], &mut sum[..n], &mut arg[..n], &w[..n]);
            max.copy_from_slice(&z[..n]);
            arg.fill(0);
            for c in 1..k {
                let row = &z[c * n..][..n];
                for ((m, a), &v) in max.iter_mut().zip(arg.iter_mut()).zip(row) {
                    let more = v > *m;
                    *a = if more { c as u32 } else { *a };
                    *m = if more { v } else { *m };
                }
            }
            sum.fill(0.0);
            for c in 0..k {
                let (row, pr) = (&z[c * n..][..n], &mut p[c * n..][..n]);
                for (((e, s), &v), &m) in pr.iter_mut().zip(sum.iter_mut()).zip(row).zip(&*max) {
                    *e = exp_neg(v - m);
                    *s += *e;
                }
            }
            // Reuse nothing across pixels: the per-pixel factor, then the scaled probabilities.
            for c in 0..k {
                for ((e, &s), &wx) in p[c * n..][..n].iter_mut().zip(&*sum).zip(w) {
                    *e *= wx / s;
                }
            }
        }
    }
    on_tier(tier, Op { z, k, n, w, out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_is_exp_to_two_ulps_of_its_relative_error() {
        let mut worst = 0f64;
        let mut x = 0f32;
        while x > -87.0 {
            let want = (x as f64).exp();
            let got = exp_neg(x) as f64;
            worst = worst.max((got - want).abs() / want);
            x -= 0.000_37;
        }
        assert!(worst < 2e-7, "relative error {worst:e}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(-88.0), 0.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert!(exp_neg(-87.2) > 0.0);
    }

    /// Against the definition in f64 on every tier the host has (the tiers agree to the bit),
    /// over pixel counts around the vector widths and with ties for the argmax.
    #[test]
    fn every_tier_matches_the_definition() {
        let tiers = Tier::host();
        eprintln!("softmax tested on: {:?}", tiers.iter().map(|t| t.isa()).collect::<Vec<_>>());
        for isa in [crate::Isa::Avx2, crate::Isa::Avx512] {
            if Tier::new(isa).is_none() {
                crate::isa::runs_or_skips(&format!("softmax_f32_{}", isa.name()), crate::isa::Needs::of(isa));
            }
        }
        for (k, n) in [(1, 5), (11, 1), (11, 15), (11, 16), (11, 17), (21, 257), (3, 100)] {
            let mut z = crate::test_vals::uniform(k as u64 * 1000 + n as u64, k * n, -30.0, 60.0);
            // Ties: pixel 0 has its maximum at classes 1 and the last.
            if k > 2 {
                z[n] = 100.0;
                z[(k - 1) * n] = 100.0;
            }
            let w = crate::test_vals::uniform(7, n, 0.0, 1.0);
            let mut outs = Vec::new();
            for &tier in &tiers {
                let (mut p, mut max, mut sum, mut arg) =
                    (vec![f32::NAN; k * n], vec![0.0; n], vec![0.0; n], vec![9; n]);
                let out = Columns { p: &mut p, max: &mut max, sum: &mut sum, arg: &mut arg };
                softmax_columns(tier, &z, k, n, &w, out);
                for x in 0..n {
                    let col: Vec<f64> = (0..k).map(|c| z[c * n + x] as f64).collect();
                    let m = col.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let first = col.iter().position(|&v| v == m).unwrap();
                    assert_eq!((max[x] as f64, arg[x] as usize), (m, first), "{k}x{n} pixel {x}");
                    let s: f64 = col.iter().map(|v| (v - m).exp()).sum();
                    assert!((sum[x] as f64 - s).abs() <= 1e-6 * s, "{k}x{n} pixel {x}: sum {} vs {s}", sum[x]);
                    for c in 0..k {
                        let want = w[x] as f64 * (col[c] - m).exp() / s;
                        let got = p[c * n + x] as f64;
                        // The f32 difference `z - max` is rounded to half an ulp of itself,
                        // which the exponential turns into a relative error of `|z - max| 2^-24`;
                        // below exp(-87.3) it gives 0.
                        let tol = want * (1e-6 + (col[c] - m).abs() * 6e-8) + 2e-38;
                        assert!((got - want).abs() <= tol, "{k}x{n} pixel {x} class {c}: {got} vs {want}");
                    }
                }
                outs.push((p, max, sum, arg));
            }
            assert!(outs.windows(2).all(|o| o[0] == o[1]), "tiers disagree at {k}x{n}");
        }
    }
}
