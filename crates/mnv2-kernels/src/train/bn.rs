//! BatchNorm with batch statistics, fused with the clamp of ReLU6 (or none) and the residual add.
//!
//! All functions take a chunk of NHWC rows (`x.len()` a multiple of `c`) and per-channel
//! coefficients; the caller shares rows out over threads and adds the partial sums in a fixed
//! order, so results do not depend on timing. The forward value `z = x * scale + shift` is
//! computed the same way (multiply, then add; never fused) in the forward and in the backward,
//! so the ReLU6 mask the backward recomputes is exactly the forward's.
//!
//! The loops are written once, generic over where the gradient is read and written
//! ([`Grad`], in place or out of place), and compiled for the tier the caller holds
//! (`super::on_tier`): the autovectoriser emits that tier's vectors. None of them fuses a
//! multiply-add, so every tier gives the same bits.

use super::{on_tier, TierOp};
use crate::isa::Tier;
use crate::MinMax;

/// Rows summed in f32 before the partial sums move to f64.
const BLOCK: usize = 64;

/// BatchNorm (as `x * scale + shift`) and clamp of one layer.
#[derive(Clone, Copy, Debug)]
pub struct BnAct<'a> {
    /// Per channel multiplier.
    pub scale: &'a [f32],
    /// Per channel offset.
    pub shift: &'a [f32],
    /// The clamp after it.
    pub act: MinMax,
}

/// The backward of BatchNorm + clamp once its reductions are known:
/// `dx = ka * dz + kb * x + kd` with `dz` the clamp-masked output gradient.
#[derive(Clone, Copy, Debug)]
pub struct BnBwd<'a> {
    /// The layer's pre-BatchNorm output (all its rows).
    pub x: &'a [f32],
    /// The forward BatchNorm + clamp (for the mask).
    pub fwd: BnAct<'a>,
    /// Per channel coefficient of `dz`.
    pub ka: &'a [f32],
    /// Per channel coefficient of `x`.
    pub kb: &'a [f32],
    /// Per channel constant.
    pub kd: &'a [f32],
}

/// The output gradient of a BatchNorm + clamp, for [`BnAct::backward_sums`].
pub enum Grad<'g> {
    /// Read only.
    In(&'g [f32]),
    /// Read, and overwritten with the clamp-masked gradient `dz`.
    Mask(&'g mut [f32]),
}

/// Per channel accumulators of the backward reductions, and scratch.
pub struct Sums<'s> {
    /// `sum dz` is added here (`c` values).
    pub dz: &'s mut [f64],
    /// `sum dz * (x - mean)` is added here (`c` values).
    pub dzx: &'s mut [f64],
    /// At least `2 * c` values of scratch.
    pub tmp: &'s mut [f32],
}

/// A row of gradient values: read at `j`, and (for writable rows) written at `j`.
trait GRow {
    fn get(&self, j: usize) -> f32;
    fn set(&mut self, j: usize, v: f32);
}

impl GRow for &[f32] {
    #[inline(always)]
    fn get(&self, j: usize) -> f32 {
        self[j]
    }
    #[inline(always)]
    fn set(&mut self, _: usize, _: f32) {}
}

impl GRow for &mut [f32] {
    #[inline(always)]
    fn get(&self, j: usize) -> f32 {
        self[j]
    }
    #[inline(always)]
    fn set(&mut self, j: usize, v: f32) {
        self[j] = v
    }
}

/// Read from the first row, written to the second.
struct ToRow<'a>(&'a [f32], &'a mut [f32]);

impl GRow for ToRow<'_> {
    #[inline(always)]
    fn get(&self, j: usize) -> f32 {
        self.0[j]
    }
    #[inline(always)]
    fn set(&mut self, j: usize, v: f32) {
        self.1[j] = v
    }
}

/// Adds `sum_rows (x - shift)` and `sum_rows (x - shift)^2` per channel to `sum` and `sumsq`.
/// Shifting by a value near the mean (any sample of the channel) keeps the variance accurate.
/// `tmp` holds at least `2 * c` values.
pub fn stats(tier: Tier, x: &[f32], c: usize, shift: &[f32], sum: &mut [f64], sumsq: &mut [f64], tmp: &mut [f32]) {
    assert!(c > 0 && x.len().is_multiple_of(c), "rows of {c} channels");
    assert!(shift.len() >= c && sum.len() >= c && sumsq.len() >= c && tmp.len() >= 2 * c);
    struct Stats<'a> {
        x: &'a [f32],
        c: usize,
        shift: &'a [f32],
        sum: &'a mut [f64],
        sumsq: &'a mut [f64],
        tmp: &'a mut [f32],
    }
    impl TierOp for Stats<'_> {
        #[inline(always)]
        fn run(self) {
            let Stats { x, c, shift, sum, sumsq, tmp } = self;
            let (s, q) = tmp[..2 * c].split_at_mut(c);
            let shift = &shift[..c];
            for block in x.chunks(BLOCK * c) {
                s.fill(0.0);
                q.fill(0.0);
                for row in block.chunks_exact(c) {
                    for (((s, q), &v), &m) in s.iter_mut().zip(q.iter_mut()).zip(row).zip(shift) {
                        let d = v - m;
                        *s += d;
                        *q += d * d;
                    }
                }
                for j in 0..c {
                    sum[j] += s[j] as f64;
                    sumsq[j] += q[j] as f64;
                }
            }
        }
    }
    on_tier(tier, Stats { x, c, shift, sum, sumsq, tmp })
}

impl BnAct<'_> {
    /// `out = clamp(x * scale + shift) (+ residual)` per channel.
    pub fn apply(&self, tier: Tier, x: &[f32], c: usize, residual: Option<&[f32]>, out: &mut [f32]) {
        assert!(c > 0 && x.len().is_multiple_of(c) && out.len() == x.len());
        assert!(self.scale.len() >= c && self.shift.len() >= c);
        struct Apply<'a, const RES: bool> {
            bn: &'a BnAct<'a>,
            x: &'a [f32],
            c: usize,
            r: &'a [f32],
            out: &'a mut [f32],
        }
        impl<const RES: bool> TierOp for Apply<'_, RES> {
            #[inline(always)]
            fn run(self) {
                let Apply { bn, x, c, r, out } = self;
                let (scale, shift, lo, hi) = (&bn.scale[..c], &bn.shift[..c], bn.act.min, bn.act.max);
                if RES {
                    for ((row, o), r) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)).zip(r.chunks_exact(c)) {
                        for ((((o, &v), &a), &b), &r) in o.iter_mut().zip(row).zip(scale).zip(shift).zip(r) {
                            *o = (v * a + b).max(lo).min(hi) + r;
                        }
                    }
                } else {
                    for (row, o) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
                        for (((o, &v), &a), &b) in o.iter_mut().zip(row).zip(scale).zip(shift) {
                            *o = (v * a + b).max(lo).min(hi);
                        }
                    }
                }
            }
        }
        match residual {
            Some(r) => {
                assert_eq!(r.len(), x.len());
                on_tier(tier, Apply::<true> { bn: self, x, c, r, out })
            }
            None => on_tier(tier, Apply::<false> { bn: self, x, c, r: &[], out }),
        }
    }

    /// The two reductions of the BatchNorm backward, through the clamp: with
    /// `dz = g` where `lo < x * scale + shift < hi` and 0 elsewhere, adds `sum dz` to
    /// `sums.dz` and `sum dz * (x - mean)` to `sums.dzx` per channel; [`Grad::Mask`] also
    /// leaves `dz` in the gradient.
    pub fn backward_sums(&self, tier: Tier, x: &[f32], grad: Grad, c: usize, mean: &[f32], sums: Sums) {
        let glen = match &grad {
            Grad::In(g) => g.len(),
            Grad::Mask(g) => g.len(),
        };
        assert!(c > 0 && x.len().is_multiple_of(c) && glen == x.len());
        assert!(self.scale.len() >= c && self.shift.len() >= c && mean.len() >= c);
        assert!(sums.dz.len() >= c && sums.dzx.len() >= c && sums.tmp.len() >= 2 * c);
        struct BwdSums<'a> {
            bn: &'a BnAct<'a>,
            x: &'a [f32],
            grad: Grad<'a>,
            c: usize,
            mean: &'a [f32],
            sums: Sums<'a>,
        }
        impl TierOp for BwdSums<'_> {
            #[inline(always)]
            fn run(self) {
                let BwdSums { bn, x, grad, c, mean, sums } = self;
                match grad {
                    Grad::In(g) => sums_loop(bn, x, g.chunks_exact(c), c, mean, sums),
                    Grad::Mask(g) => sums_loop(bn, x, g.chunks_exact_mut(c), c, mean, sums),
                }
            }
        }
        on_tier(tier, BwdSums { bn: self, x, grad, c, mean, sums })
    }
}

/// The loop of [`BnAct::backward_sums`], over gradient rows of any kind.
#[inline(always)]
fn sums_loop<R: GRow>(bn: &BnAct, x: &[f32], rows: impl Iterator<Item = R>, c: usize, mean: &[f32], sums: Sums) {
    let Sums { dz: sum_dz, dzx: sum_dzx, tmp } = sums;
    let (s, q) = tmp[..2 * c].split_at_mut(c);
    let (scale, shift, mean, lo, hi) = (&bn.scale[..c], &bn.shift[..c], &mean[..c], bn.act.min, bn.act.max);
    let mut flush = |s: &mut [f32], q: &mut [f32]| {
        for j in 0..c {
            sum_dz[j] += s[j] as f64;
            sum_dzx[j] += q[j] as f64;
        }
        s.fill(0.0);
        q.fill(0.0);
    };
    s.fill(0.0);
    q.fill(0.0);
    let mut in_block = 0;
    for (row, mut g) in x.chunks_exact(c).zip(rows) {
        for j in 0..c {
            let v = row[j];
            let z = v * scale[j] + shift[j];
            let dz = if z > lo && z < hi { g.get(j) } else { 0.0 };
            g.set(j, dz);
            s[j] += dz;
            q[j] += dz * (v - mean[j]);
        }
        in_block += 1;
        if in_block == BLOCK {
            flush(s, q);
            in_block = 0;
        }
    }
    if in_block > 0 {
        flush(s, q);
    }
}

/// `g = ka * dz + (kb * x + kd)` per row, `dz` the gradient masked by the clamp (`MASK`) or
/// as given.
#[inline(always)]
fn affine_loop<R: GRow, const MASK: bool>(b: &BnBwd, x: &[f32], rows: impl Iterator<Item = R>, c: usize) {
    let f = &b.fwd;
    let (scale, shift, lo, hi) = (&f.scale[..c], &f.shift[..c], f.act.min, f.act.max);
    let (ka, kb, kd) = (&b.ka[..c], &b.kb[..c], &b.kd[..c]);
    for (row, mut g) in x.chunks_exact(c).zip(rows) {
        for j in 0..c {
            let v = row[j];
            let dz = if MASK {
                let z = v * scale[j] + shift[j];
                if z > lo && z < hi {
                    g.get(j)
                } else {
                    0.0
                }
            } else {
                g.get(j)
            };
            g.set(j, ka[j] * dz + (kb[j] * v + kd[j]));
        }
    }
}

/// Where [`BnBwd`] reads `x` and the gradient, and writes its result.
enum AffineIo<'a> {
    InPlace(&'a mut [f32]),
    To(&'a [f32], &'a mut [f32]),
}

struct Affine<'a, const MASK: bool> {
    b: &'a BnBwd<'a>,
    x: &'a [f32],
    io: AffineIo<'a>,
    c: usize,
}

impl<const MASK: bool> TierOp for Affine<'_, MASK> {
    #[inline(always)]
    fn run(self) {
        let Affine { b, x, io, c } = self;
        match io {
            AffineIo::InPlace(g) => affine_loop::<_, MASK>(b, x, g.chunks_exact_mut(c), c),
            AffineIo::To(g, out) => {
                let rows = g.chunks_exact(c).zip(out.chunks_exact_mut(c)).map(|(g, o)| ToRow(g, o));
                affine_loop::<_, MASK>(b, x, rows, c)
            }
        }
    }
}

impl BnBwd<'_> {
    fn check(&self, c: usize) {
        let f = &self.fwd;
        assert!(c > 0 && f.scale.len() >= c && f.shift.len() >= c);
        assert!(self.ka.len() >= c && self.kb.len() >= c && self.kd.len() >= c);
    }

    /// Rows `lo..hi` (`c` wide) of `dx` into `out`, from those of the output gradient `g`.
    pub fn rows_to(&self, tier: Tier, lo: usize, hi: usize, c: usize, g: &[f32], out: &mut [f32]) {
        self.check(c);
        let x = &self.x[lo * c..hi * c];
        assert!(g.len() == x.len() && out.len() == x.len());
        on_tier(tier, Affine::<true> { b: self, x, io: AffineIo::To(g, out), c })
    }

    /// Rows `lo..hi` (`c` wide) of `dx`, in place of those of the output gradient `g`.
    pub fn rows_in_place(&self, tier: Tier, lo: usize, hi: usize, c: usize, g: &mut [f32]) {
        self.check(c);
        let x = &self.x[lo * c..hi * c];
        assert!(g.len() == x.len());
        on_tier(tier, Affine::<true> { b: self, x, io: AffineIo::InPlace(g), c })
    }

    /// `out = ka * dz + (kb * x + kd)` from an already masked gradient `dz` and the rows `x`
    /// it belongs to (the same arithmetic as [`BnBwd::rows_to`] inside the clamp).
    pub fn affine_to(&self, tier: Tier, dz: &[f32], x: &[f32], c: usize, out: &mut [f32]) {
        self.check(c);
        assert!(x.len().is_multiple_of(c) && dz.len() == x.len() && out.len() == x.len());
        on_tier(tier, Affine::<false> { b: self, x, io: AffineIo::To(dz, out), c })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(seed: u64, n: usize) -> Vec<f32> {
        crate::test_vals::uniform(seed, n, -2.0, 8.0)
    }

    /// Every entry point against a definition written out, on every tier the host has (the
    /// tiers must agree to the bit), over row counts around the f32 block.
    #[test]
    fn every_tier_matches_the_definition() {
        let c = 37;
        let tiers = Tier::host();
        eprintln!("bn tested on: {:?}", tiers.iter().map(|t| t.isa()).collect::<Vec<_>>());
        for isa in [crate::Isa::Avx2, crate::Isa::Avx512] {
            if Tier::new(isa).is_none() {
                crate::isa::runs_or_skips(&format!("bn_f32_{}", isa.name()), crate::isa::Needs::of(isa));
            }
        }
        for rows in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 300] {
            let mut outs = Vec::new();
            for &tier in &tiers {
                outs.push(run_all(tier, rows, c));
            }
            assert!(outs.windows(2).all(|w| w[0] == w[1]), "tiers disagree at {rows} rows");
        }
    }

    /// Runs every function on `rows` rows, checks them against the definition, and returns
    /// their outputs.
    fn run_all(tier: Tier, rows: usize, c: usize) -> Vec<Vec<f64>> {
        let x = vals(1, rows * c);
        let dy = vals(2, rows * c);
        let scale = vals(3, c);
        let shift = vals(4, c);
        let mean = vals(5, c);
        let bn = BnAct { scale: &scale, shift: &shift, act: MinMax::RELU6 };
        let mut tmp = vec![0.0; 2 * c];
        let (mut s, mut q) = (vec![0f64; c], vec![0f64; c]);
        stats(tier, &x, c, &shift, &mut s, &mut q, &mut tmp);
        let (mut a, mut b) = (vec![0f64; c], vec![0f64; c]);
        bn.backward_sums(tier, &x, Grad::In(&dy), c, &mean, Sums { dz: &mut a, dzx: &mut b, tmp: &mut tmp });
        let mut out = vec![0.0; x.len()];
        bn.apply(tier, &x, c, Some(&dy), &mut out);
        let mut plain = vec![0.0; x.len()];
        bn.apply(tier, &x, c, None, &mut plain);
        let bwd = BnBwd { x: &x, fwd: bn, ka: &scale, kb: &shift, kd: &mean };
        let mut g = dy.clone();
        bwd.rows_in_place(tier, 0, rows, c, &mut g);
        let mut g2 = vec![f32::NAN; x.len()];
        bwd.rows_to(tier, 0, rows, c, &dy, &mut g2);
        assert_eq!(g, g2);
        // The same through the masked gradient: sums, then the affine part.
        let mut dz = dy.clone();
        let (mut a2, mut b2) = (vec![0f64; c], vec![0f64; c]);
        bn.backward_sums(tier, &x, Grad::Mask(&mut dz), c, &mean, Sums { dz: &mut a2, dzx: &mut b2, tmp: &mut tmp });
        assert_eq!((&a, &b), (&a2, &b2));
        bwd.affine_to(tier, &dz, &x, c, &mut g2);
        assert_eq!(g, g2);
        for j in 0..c {
            let (mut ws, mut wq, mut wa, mut wb) = (0f64, 0f64, 0f64, 0f64);
            for r in 0..rows {
                let v = x[r * c + j];
                let d = (v - shift[j]) as f64;
                ws += d;
                wq += d * d;
                let z = v * scale[j] + shift[j];
                let inside = z > 0.0 && z < 6.0;
                let dzv = if inside { dy[r * c + j] } else { 0.0 };
                wa += dzv as f64;
                wb += dzv as f64 * (v - mean[j]) as f64;
                assert_eq!(out[r * c + j], z.clamp(0.0, 6.0) + dy[r * c + j]);
                assert_eq!(plain[r * c + j], z.clamp(0.0, 6.0));
                assert_eq!(dz[r * c + j], dzv);
                let want = scale[j] * dzv + (shift[j] * v + mean[j]);
                assert_eq!(g[r * c + j], want);
            }
            for (got, want) in [(s[j], ws), (q[j], wq), (a[j], wa), (b[j], wb)] {
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "channel {j}: {got} vs {want}");
            }
        }
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        vec![s, q, a, b, f(&out), f(&plain), f(&g), f(&dz)]
    }
}
