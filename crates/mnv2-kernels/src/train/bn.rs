//! BatchNorm with batch statistics, fused with the clamp of ReLU6 (or none) and the residual add.
//!
//! All functions take a chunk of NHWC rows (`x.len()` a multiple of `c`) and per-channel
//! coefficients; the caller shares rows out over threads and adds the partial sums in a fixed
//! order, so results do not depend on timing. The forward value `z = x * scale + shift` is
//! computed the same way (multiply, then add; never fused) in the forward and in the backward,
//! so the ReLU6 mask the backward recomputes is exactly the forward's.

use super::dispatch;

/// Rows summed in f32 before the partial sums move to f64.
const BLOCK: usize = 64;

/// Adds `sum_rows (x - shift)` and `sum_rows (x - shift)^2` per channel to `sum` and `sumsq`.
/// Shifting by a value near the mean (any sample of the channel) keeps the variance accurate.
/// `tmp` holds at least `2 * c` values.
pub fn stats(x: &[f32], c: usize, shift: &[f32], sum: &mut [f64], sumsq: &mut [f64], tmp: &mut [f32]) {
    assert!(c > 0 && x.len().is_multiple_of(c), "rows of {c} channels");
    assert!(shift.len() >= c && sum.len() >= c && sumsq.len() >= c && tmp.len() >= 2 * c);
    stats_d(x, c, shift, sum, sumsq, tmp)
}

#[inline(always)]
fn stats_impl(x: &[f32], c: usize, shift: &[f32], sum: &mut [f64], sumsq: &mut [f64], tmp: &mut [f32]) {
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
dispatch!(stats_d, stats_impl, (x: &[f32], c: usize, shift: &[f32], sum: &mut [f64], sumsq: &mut [f64], tmp: &mut [f32]));

/// `out = clamp(x * scale + shift, lo, hi) (+ residual)` per channel.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    x: &[f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    lo: f32,
    hi: f32,
    residual: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(c > 0 && x.len().is_multiple_of(c) && out.len() == x.len());
    assert!(scale.len() >= c && shift.len() >= c);
    match residual {
        Some(r) => {
            assert_eq!(r.len(), x.len());
            apply_res_d(x, c, scale, shift, lo, hi, r, out)
        }
        None => apply_d(x, c, scale, shift, lo, hi, out),
    }
}

#[inline(always)]
fn apply_impl(x: &[f32], c: usize, scale: &[f32], shift: &[f32], lo: f32, hi: f32, out: &mut [f32]) {
    let (scale, shift) = (&scale[..c], &shift[..c]);
    for (row, o) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        for (((o, &v), &a), &b) in o.iter_mut().zip(row).zip(scale).zip(shift) {
            *o = (v * a + b).max(lo).min(hi);
        }
    }
}
dispatch!(apply_d, apply_impl, (x: &[f32], c: usize, scale: &[f32], shift: &[f32], lo: f32, hi: f32, out: &mut [f32]));

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn apply_res_impl(x: &[f32], c: usize, scale: &[f32], shift: &[f32], lo: f32, hi: f32, r: &[f32], out: &mut [f32]) {
    let (scale, shift) = (&scale[..c], &shift[..c]);
    for ((row, o), r) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)).zip(r.chunks_exact(c)) {
        for ((((o, &v), &a), &b), &r) in o.iter_mut().zip(row).zip(scale).zip(shift).zip(r) {
            *o = (v * a + b).max(lo).min(hi) + r;
        }
    }
}
dispatch!(apply_res_d, apply_res_impl, (x: &[f32], c: usize, scale: &[f32], shift: &[f32], lo: f32, hi: f32, r: &[f32], out: &mut [f32]));

/// The two reductions of the BatchNorm backward, through the clamp: with
/// `dz = dy` where `lo < x * scale + shift < hi` and 0 elsewhere, adds `sum dz` to `sum_dz` and
/// `sum dz * (x - mean)` to `sum_dzx` per channel. `tmp` holds at least `2 * c` values.
#[allow(clippy::too_many_arguments)]
pub fn backward_sums(
    x: &[f32],
    dy: &[f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    lo: f32,
    hi: f32,
    mean: &[f32],
    sum_dz: &mut [f64],
    sum_dzx: &mut [f64],
    tmp: &mut [f32],
) {
    assert!(c > 0 && x.len().is_multiple_of(c) && dy.len() == x.len());
    assert!(scale.len() >= c && shift.len() >= c && mean.len() >= c);
    assert!(sum_dz.len() >= c && sum_dzx.len() >= c && tmp.len() >= 2 * c);
    backward_sums_d(x, dy, c, scale, shift, lo, hi, mean, sum_dz, sum_dzx, tmp)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_sums_impl(
    x: &[f32],
    dy: &[f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    lo: f32,
    hi: f32,
    mean: &[f32],
    sum_dz: &mut [f64],
    sum_dzx: &mut [f64],
    tmp: &mut [f32],
) {
    let (s, q) = tmp[..2 * c].split_at_mut(c);
    let (scale, shift, mean) = (&scale[..c], &shift[..c], &mean[..c]);
    for (bx, bd) in x.chunks(BLOCK * c).zip(dy.chunks(BLOCK * c)) {
        s.fill(0.0);
        q.fill(0.0);
        for (row, drow) in bx.chunks_exact(c).zip(bd.chunks_exact(c)) {
            for j in 0..c {
                let v = row[j];
                let z = v * scale[j] + shift[j];
                let dz = if z > lo && z < hi { drow[j] } else { 0.0 };
                s[j] += dz;
                q[j] += dz * (v - mean[j]);
            }
        }
        for j in 0..c {
            sum_dz[j] += s[j] as f64;
            sum_dzx[j] += q[j] as f64;
        }
    }
}
dispatch!(backward_sums_d, backward_sums_impl, (x: &[f32], dy: &[f32], c: usize, scale: &[f32], shift: &[f32], lo: f32, hi: f32, mean: &[f32], sum_dz: &mut [f64], sum_dzx: &mut [f64], tmp: &mut [f32]));

/// In place, `g` from the gradient of the clamp's output to that of the BatchNorm's input:
/// `g = ka * dz + kb * x + kd` with `dz` masked as in [`backward_sums`].
#[allow(clippy::too_many_arguments)]
pub fn backward_apply(
    x: &[f32],
    g: &mut [f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    lo: f32,
    hi: f32,
    ka: &[f32],
    kb: &[f32],
    kd: &[f32],
) {
    assert!(c > 0 && x.len().is_multiple_of(c) && g.len() == x.len());
    assert!(scale.len() >= c && shift.len() >= c && ka.len() >= c && kb.len() >= c && kd.len() >= c);
    backward_apply_d(x, g, c, scale, shift, lo, hi, ka, kb, kd)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_apply_impl(
    x: &[f32],
    g: &mut [f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    lo: f32,
    hi: f32,
    ka: &[f32],
    kb: &[f32],
    kd: &[f32],
) {
    let (scale, shift, ka, kb, kd) = (&scale[..c], &shift[..c], &ka[..c], &kb[..c], &kd[..c]);
    for (row, grow) in x.chunks_exact(c).zip(g.chunks_exact_mut(c)) {
        for j in 0..c {
            let v = row[j];
            let z = v * scale[j] + shift[j];
            let dz = if z > lo && z < hi { grow[j] } else { 0.0 };
            grow[j] = ka[j] * dz + (kb[j] * v + kd[j]);
        }
    }
}
dispatch!(backward_apply_d, backward_apply_impl, (x: &[f32], g: &mut [f32], c: usize, scale: &[f32], shift: &[f32], lo: f32, hi: f32, ka: &[f32], kb: &[f32], kd: &[f32]));

/// [`backward_sums`] that also leaves the masked gradient `dz` in `g` (in place).
#[allow(clippy::too_many_arguments)]
pub fn backward_sums_mask(
    x: &[f32],
    g: &mut [f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    lo: f32,
    hi: f32,
    mean: &[f32],
    sum_dz: &mut [f64],
    sum_dzx: &mut [f64],
    tmp: &mut [f32],
) {
    assert!(c > 0 && x.len().is_multiple_of(c) && g.len() == x.len());
    assert!(scale.len() >= c && shift.len() >= c && mean.len() >= c);
    assert!(sum_dz.len() >= c && sum_dzx.len() >= c && tmp.len() >= 2 * c);
    backward_sums_mask_d(x, g, c, scale, shift, lo, hi, mean, sum_dz, sum_dzx, tmp)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_sums_mask_impl(
    x: &[f32],
    g: &mut [f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    lo: f32,
    hi: f32,
    mean: &[f32],
    sum_dz: &mut [f64],
    sum_dzx: &mut [f64],
    tmp: &mut [f32],
) {
    let (s, q) = tmp[..2 * c].split_at_mut(c);
    let (scale, shift, mean) = (&scale[..c], &shift[..c], &mean[..c]);
    for (bx, bd) in x.chunks(BLOCK * c).zip(g.chunks_mut(BLOCK * c)) {
        s.fill(0.0);
        q.fill(0.0);
        for (row, drow) in bx.chunks_exact(c).zip(bd.chunks_exact_mut(c)) {
            for j in 0..c {
                let v = row[j];
                let z = v * scale[j] + shift[j];
                let dz = if z > lo && z < hi { drow[j] } else { 0.0 };
                drow[j] = dz;
                s[j] += dz;
                q[j] += dz * (v - mean[j]);
            }
        }
        for j in 0..c {
            sum_dz[j] += s[j] as f64;
            sum_dzx[j] += q[j] as f64;
        }
    }
}
dispatch!(backward_sums_mask_d, backward_sums_mask_impl, (x: &[f32], g: &mut [f32], c: usize, scale: &[f32], shift: &[f32], lo: f32, hi: f32, mean: &[f32], sum_dz: &mut [f64], sum_dzx: &mut [f64], tmp: &mut [f32]));

/// The BatchNorm backward from an already masked gradient: `out = ka * dz + kb * x + kd`
/// (the same arithmetic as [`backward_apply`] inside the clamp).
#[allow(clippy::too_many_arguments)]
pub fn affine_to(dz: &[f32], x: &[f32], c: usize, ka: &[f32], kb: &[f32], kd: &[f32], out: &mut [f32]) {
    assert!(c > 0 && x.len().is_multiple_of(c) && dz.len() == x.len() && out.len() == x.len());
    assert!(ka.len() >= c && kb.len() >= c && kd.len() >= c);
    affine_to_d(dz, x, c, ka, kb, kd, out)
}

#[inline(always)]
fn affine_to_impl(dz: &[f32], x: &[f32], c: usize, ka: &[f32], kb: &[f32], kd: &[f32], out: &mut [f32]) {
    let (ka, kb, kd) = (&ka[..c], &kb[..c], &kd[..c]);
    for ((drow, row), orow) in dz.chunks_exact(c).zip(x.chunks_exact(c)).zip(out.chunks_exact_mut(c)) {
        for j in 0..c {
            orow[j] = ka[j] * drow[j] + (kb[j] * row[j] + kd[j]);
        }
    }
}
dispatch!(affine_to_d, affine_to_impl, (dz: &[f32], x: &[f32], c: usize, ka: &[f32], kb: &[f32], kd: &[f32], out: &mut [f32]));

/// [`backward_apply`] out of place: `out = ka * dz + kb * x + kd` with `dz` the clamp-masked `g`.
#[allow(clippy::too_many_arguments)]
pub fn backward_apply_to(
    x: &[f32],
    g: &[f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    lo: f32,
    hi: f32,
    ka: &[f32],
    kb: &[f32],
    kd: &[f32],
    out: &mut [f32],
) {
    assert!(c > 0 && x.len().is_multiple_of(c) && g.len() == x.len() && out.len() == x.len());
    assert!(scale.len() >= c && shift.len() >= c && ka.len() >= c && kb.len() >= c && kd.len() >= c);
    backward_apply_to_d(x, g, c, scale, shift, lo, hi, ka, kb, kd, out)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_apply_to_impl(
    x: &[f32],
    g: &[f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    lo: f32,
    hi: f32,
    ka: &[f32],
    kb: &[f32],
    kd: &[f32],
    out: &mut [f32],
) {
    let (scale, shift, ka, kb, kd) = (&scale[..c], &shift[..c], &ka[..c], &kb[..c], &kd[..c]);
    for ((row, grow), orow) in x.chunks_exact(c).zip(g.chunks_exact(c)).zip(out.chunks_exact_mut(c)) {
        for j in 0..c {
            let v = row[j];
            let z = v * scale[j] + shift[j];
            let dz = if z > lo && z < hi { grow[j] } else { 0.0 };
            orow[j] = ka[j] * dz + (kb[j] * v + kd[j]);
        }
    }
}
dispatch!(backward_apply_to_d, backward_apply_to_impl, (x: &[f32], g: &[f32], c: usize, scale: &[f32], shift: &[f32], lo: f32, hi: f32, ka: &[f32], kb: &[f32], kd: &[f32], out: &mut [f32]));

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(seed: u64, n: usize) -> Vec<f32> {
        crate::test_vals::uniform(seed, n, -2.0, 8.0)
    }

    #[test]
    fn sums_and_masks_match_naive() {
        let c = 37;
        let rows = 300;
        let x = vals(1, rows * c);
        let dy = vals(2, rows * c);
        let scale = vals(3, c);
        let shift = vals(4, c);
        let mean = vals(5, c);
        let mut tmp = vec![0.0; 2 * c];
        let (mut s, mut q) = (vec![0f64; c], vec![0f64; c]);
        stats(&x, c, &shift, &mut s, &mut q, &mut tmp);
        let (mut a, mut b) = (vec![0f64; c], vec![0f64; c]);
        backward_sums(&x, &dy, c, &scale, &shift, 0.0, 6.0, &mean, &mut a, &mut b, &mut tmp);
        let mut out = vec![0.0; x.len()];
        apply(&x, c, &scale, &shift, 0.0, 6.0, Some(&dy), &mut out);
        let mut g = dy.clone();
        backward_apply(&x, &mut g, c, &scale, &shift, 0.0, 6.0, &scale, &shift, &mean);
        let mut g2 = vec![f32::NAN; x.len()];
        backward_apply_to(&x, &dy, c, &scale, &shift, 0.0, 6.0, &scale, &shift, &mean, &mut g2);
        assert_eq!(g, g2);
        // The same through the masked gradient: sums, then the affine part.
        let mut dz = dy.clone();
        let (mut a2, mut b2) = (vec![0f64; c], vec![0f64; c]);
        backward_sums_mask(&x, &mut dz, c, &scale, &shift, 0.0, 6.0, &mean, &mut a2, &mut b2, &mut tmp);
        assert_eq!((&a, &b), (&a2, &b2));
        affine_to(&dz, &x, c, &scale, &shift, &mean, &mut g2);
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
                let dz = if inside { dy[r * c + j] } else { 0.0 };
                wa += dz as f64;
                wb += dz as f64 * (v - mean[j]) as f64;
                assert_eq!(out[r * c + j], z.clamp(0.0, 6.0) + dy[r * c + j]);
                let want = scale[j] * dz + (shift[j] * v + mean[j]);
                assert_eq!(g[r * c + j], want);
            }
            for (got, want) in [(s[j], ws), (q[j], wq), (a[j], wa), (b[j], wb)] {
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "channel {j}: {got} vs {want}");
            }
        }
    }
}
