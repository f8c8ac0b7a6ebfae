//! Gradients of the depthwise 3x3 convolution, one row at a time (NHWC rows, any stride,
//! dilation and padding, as [`crate::dwconv`]'s forward).
//!
//! Weights are `[3][3][c]` (tap-major, channels contiguous). Both gradients are written in
//! *gather* form, so a row of results is produced whole in registers and stored once:
//!
//! * input gradient: `din[ix] = sum_{ky,kx} dout_ky[ox] * w[ky][kx]` over the taps with
//!   `ox * s + kx * d - pad = ix`, where `dout_ky` is the output-gradient row that read input
//!   row `iy` through kernel row `ky` (`None` if none did);
//! * weight gradient: `acc[ky][kx] += sum_ox dout[ox] * in_ky[ox * s + kx * d - pad]` for one
//!   output row and the three input rows it read.
//!
//! Kernels: `dwconv_f32_igrad_3x3c16_avx512` and `dwconv_f32_wgrad_3x3c16_avx512` (a 16-channel
//! tile's 9 weights or 9 accumulators held in registers while the row is walked, interior
//! pixels unrolled, masked channel tails), and portable twins compiled for AVX2 and for any CPU.

use crate::dwconv::DwRow;
use crate::isa::{Needs, Tier};

/// Output columns `ox` with `0 <= ox * stride + kx * dilation - pad_left < w_in`, as a range.
fn columns(g: &DwRow, kx: usize) -> (usize, usize) {
    let off = kx * g.dilation;
    // ix = ox * s + off - pad >= 0  <=>  ox >= ceil((pad - off) / s)
    let lo = if off >= g.pad_left { 0 } else { (g.pad_left - off).div_ceil(g.stride) };
    // ix < w_in  <=>  ox * s < w_in + pad - off
    let lim = (g.w_in + g.pad_left).saturating_sub(off);
    let hi = if lim == 0 { 0 } else { ((lim - 1) / g.stride + 1).min(g.w_out) };
    (lo.min(hi), hi)
}

/// The output column that reads input column `ix` through kernel column `kx`, if any.
#[inline(always)]
fn tap_column(g: &DwRow, ix: usize, kx: usize) -> Option<usize> {
    let t = (ix + g.pad_left).checked_sub(kx * g.dilation)?;
    (t % g.stride == 0 && t / g.stride < g.w_out).then_some(t / g.stride)
}

/// The output row that reads input row `iy` through kernel row `ky`, if any
/// (`oy * stride + ky * dilation - pad_top = iy`, `oy < out_h`).
pub fn tap_row(iy: usize, ky: usize, stride: usize, dilation: usize, pad_top: usize, out_h: usize) -> Option<usize> {
    let t = (iy + pad_top).checked_sub(ky * dilation)?;
    (t % stride == 0 && t / stride < out_h).then_some(t / stride)
}

/// The arguments of one gradient row, checked by [`input_grad_row`] / [`weight_grad_row`].
pub(crate) struct GradRow<'a> {
    /// The three rows the kernel reads (`None`: padding or no tap).
    rows: [Option<&'a [f32]>; 3],
    /// The weights (input gradient) or the output-gradient row (weight gradient).
    other: &'a [f32],
    c: usize,
    g: DwRow,
    /// The input-gradient row, or the weight-gradient accumulators.
    out: &'a mut [f32],
}

/// One depthwise-gradient kernel: its name (the identity of the code), what it needs, its code.
#[derive(Debug)]
pub struct DwGradKernel {
    /// The kernel's name, as profiles print it.
    pub name: &'static str,
    /// What the CPU must have.
    pub needs: Needs,
    /// # Safety
    /// The arguments were checked by the public function, and the CPU has `needs`.
    run: unsafe fn(GradRow),
}

/// Every input-gradient kernel built for this target, best first.
pub static IGRAD_KERNELS: &[DwGradKernel] = &[
    #[cfg(target_arch = "x86_64")]
    DwGradKernel { name: "dwconv_f32_igrad_3x3c16_avx512", needs: Needs::Avx512, run: igrad_avx512 },
    #[cfg(target_arch = "x86_64")]
    DwGradKernel { name: "dwconv_f32_igrad_3x3_avx2", needs: Needs::Avx2, run: igrad_avx2 },
    DwGradKernel { name: "dwconv_f32_igrad_3x3_scalar", needs: Needs::Scalar, run: igrad_scalar },
];

/// Every weight-gradient kernel built for this target, best first.
pub static WGRAD_KERNELS: &[DwGradKernel] = &[
    #[cfg(target_arch = "x86_64")]
    DwGradKernel { name: "dwconv_f32_wgrad_3x3c16_avx512", needs: Needs::Avx512, run: wgrad_avx512 },
    #[cfg(target_arch = "x86_64")]
    DwGradKernel { name: "dwconv_f32_wgrad_3x3_avx2", needs: Needs::Avx2, run: wgrad_avx2 },
    DwGradKernel { name: "dwconv_f32_wgrad_3x3_scalar", needs: Needs::Scalar, run: wgrad_scalar },
];

/// The best kernel of `registry` that `tier` grants ([`crate::isa::Needs::selectable`]).
pub fn select(registry: &'static [DwGradKernel], tier: Tier) -> &'static DwGradKernel {
    registry.iter().find(|k| k.needs.selectable(tier)).expect("the scalar kernel")
}

/// # Safety
/// The arguments were checked by [`input_grad_row`]; the CPU has AVX-512 F/BW/VL/DQ.
#[cfg(target_arch = "x86_64")]
unsafe fn igrad_avx512(a: GradRow) {
    let ptrs = a.rows.map(|r| r.map_or(std::ptr::null(), |r| r.as_ptr()));
    super::dw_avx512::input_grad_row(ptrs, a.other.as_ptr(), a.c, a.g, a.out.as_mut_ptr())
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn igrad_avx2(a: GradRow) {
    input_grad_portable(a.rows, a.other, a.c, a.g, a.out)
}

fn igrad_scalar(a: GradRow) {
    input_grad_portable(a.rows, a.other, a.c, a.g, a.out)
}

/// # Safety
/// The arguments were checked by [`weight_grad_row`]; the CPU has AVX-512 F/BW/VL/DQ.
#[cfg(target_arch = "x86_64")]
unsafe fn wgrad_avx512(a: GradRow) {
    let ptrs = a.rows.map(|r| r.map_or(std::ptr::null(), |r| r.as_ptr()));
    super::dw_avx512::weight_grad_row(a.other.as_ptr(), ptrs, a.c, a.g, a.out.as_mut_ptr())
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wgrad_avx2(a: GradRow) {
    weight_grad_portable(a.other, a.rows, a.c, a.g, a.out)
}

fn wgrad_scalar(a: GradRow) {
    weight_grad_portable(a.other, a.rows, a.c, a.g, a.out)
}

/// Name of the input-gradient kernel `tier` runs.
pub fn input_grad_kernel(tier: Tier) -> &'static str {
    select(IGRAD_KERNELS, tier).name
}

/// Name of the weight-gradient kernel `tier` runs.
pub fn weight_grad_kernel(tier: Tier) -> &'static str {
    select(WGRAD_KERNELS, tier).name
}

/// One input-gradient row (overwritten): `rows[ky]` is the output-gradient row that read this
/// input row through kernel row `ky` ([`tap_row`]), `None` if none did. `din` holds
/// `g.w_in * c` values, each present row `g.w_out * c`.
pub fn input_grad_row(tier: Tier, rows: [Option<&[f32]>; 3], w: &[f32], c: usize, g: DwRow, din: &mut [f32]) {
    input_grad_row_on(select(IGRAD_KERNELS, tier), tier, rows, w, c, g, din)
}

/// [`input_grad_row`] on `kernel`, which `tier` must grant.
pub fn input_grad_row_on(
    kernel: &'static DwGradKernel,
    tier: Tier,
    rows: [Option<&[f32]>; 3],
    w: &[f32],
    c: usize,
    g: DwRow,
    din: &mut [f32],
) {
    kernel.needs.assert_granted(kernel.name, tier);
    assert!(g.stride >= 1 && g.dilation >= 1);
    assert!(w.len() >= 9 * c && din.len() >= g.w_in * c);
    for r in rows.iter().flatten() {
        assert!(r.len() >= g.w_out * c, "output-gradient row too short");
    }
    // SAFETY: lengths checked above; `tier` (a proof of the CPU's features) grants the kernel.
    unsafe { (kernel.run)(GradRow { rows, other: w, c, g, out: din }) }
}

#[inline(always)]
fn input_grad_portable(rows: [Option<&[f32]>; 3], w: &[f32], c: usize, g: DwRow, din: &mut [f32]) {
    for ix in 0..g.w_in {
        let o = &mut din[ix * c..][..c];
        o.fill(0.0);
        for kx in 0..3 {
            let Some(ox) = tap_column(&g, ix, kx) else { continue };
            for (ky, row) in rows.iter().enumerate() {
                let Some(row) = row else { continue };
                let d = &row[ox * c..][..c];
                let wt = &w[(ky * 3 + kx) * c..][..c];
                for ((o, &d), &w) in o.iter_mut().zip(d).zip(wt) {
                    *o = d.mul_add(w, *o);
                }
            }
        }
    }
}

/// Adds one output row's contribution to the weight gradient:
/// `acc[ky][kx] += dout[ox] * rows[ky][ox * s + kx * d - pad]` for the kernel rows whose
/// input row exists (`None` is padding). `acc` holds `9 * c` values.
pub fn weight_grad_row(tier: Tier, dout: &[f32], rows: [Option<&[f32]>; 3], c: usize, g: DwRow, acc: &mut [f32]) {
    weight_grad_row_on(select(WGRAD_KERNELS, tier), tier, dout, rows, c, g, acc)
}

/// [`weight_grad_row`] on `kernel`, which `tier` must grant.
pub fn weight_grad_row_on(
    kernel: &'static DwGradKernel,
    tier: Tier,
    dout: &[f32],
    rows: [Option<&[f32]>; 3],
    c: usize,
    g: DwRow,
    acc: &mut [f32],
) {
    kernel.needs.assert_granted(kernel.name, tier);
    assert!(g.stride >= 1 && g.dilation >= 1);
    assert!(acc.len() >= 9 * c && dout.len() >= g.w_out * c);
    for r in rows.iter().flatten() {
        assert!(r.len() >= g.w_in * c, "input row too short");
    }
    // SAFETY: lengths checked above; `tier` (a proof of the CPU's features) grants the kernel.
    unsafe { (kernel.run)(GradRow { rows, other: dout, c, g, out: acc }) }
}

#[inline(always)]
fn weight_grad_portable(dout: &[f32], rows: [Option<&[f32]>; 3], c: usize, g: DwRow, acc: &mut [f32]) {
    for (ky, row) in rows.iter().enumerate() {
        let Some(row) = row else { continue };
        for kx in 0..3 {
            let (lo, hi) = columns(&g, kx);
            let a = &mut acc[(ky * 3 + kx) * c..][..c];
            for ox in lo..hi {
                let ix = ox * g.stride + kx * g.dilation - g.pad_left;
                let d = &dout[ox * c..][..c];
                let v = &row[ix * c..][..c];
                for ((a, &d), &v) in a.iter_mut().zip(d).zip(v) {
                    *a = d.mul_add(v, *a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input-gradient and a weight-gradient kernel, and a tier that grants both.
    type Pair = (Tier, &'static DwGradKernel, &'static DwGradKernel);

    /// The kernel pairs (same needs) of the registries the host runs; the others print
    /// `SKIPPED`.
    fn host_pairs() -> Vec<Pair> {
        let tier = *Tier::host().last().expect("scalar");
        IGRAD_KERNELS
            .iter()
            .zip(WGRAD_KERNELS)
            .filter(|(i, w)| {
                assert_eq!(i.needs, w.needs);
                crate::isa::runs_or_skips(i.name, i.needs) & crate::isa::runs_or_skips(w.name, w.needs)
            })
            .map(|(i, w)| (tier, i, w))
            .collect()
    }

    fn vals(seed: u64, n: usize) -> Vec<f32> {
        crate::test_vals::uniform(seed, n, -1.0, 2.0)
    }

    /// Both gradients over whole images against the definition
    /// `out[oy][ox] = sum in[oy * s + ky * d - pt][ox * s + kx * d - pl] * w[ky][kx]`.
    #[allow(clippy::too_many_arguments)]
    fn check(
        (tier, ig, wg): Pair,
        h: usize,
        wi: usize,
        c: usize,
        s: usize,
        d: usize,
        pt: usize,
        pl: usize,
        pb: usize,
        pr: usize,
    ) {
        let oh = (h + pt + pb - 2 * d - 1) / s + 1;
        let ow = (wi + pl + pr - 2 * d - 1) / s + 1;
        let input = vals(1 + c as u64, h * wi * c);
        let w = vals(2, 9 * c);
        let dout = vals(3 + wi as u64, oh * ow * c);
        let g = DwRow { w_in: wi, w_out: ow, stride: s, dilation: d, pad_left: pl };
        let mut din = vec![f32::NAN; h * wi * c];
        let mut dw = vals(4, 9 * c);
        let dw0 = dw.clone();
        for oy in 0..oh {
            let drow = &dout[oy * ow * c..][..ow * c];
            let rows: [Option<&[f32]>; 3] = std::array::from_fn(|ky| {
                let iy = (oy * s + ky * d) as isize - pt as isize;
                (0..h as isize).contains(&iy).then(|| &input[iy as usize * wi * c..][..wi * c])
            });
            weight_grad_row_on(wg, tier, drow, rows, c, g, &mut dw);
        }
        for iy in 0..h {
            let rows: [Option<&[f32]>; 3] =
                std::array::from_fn(|ky| tap_row(iy, ky, s, d, pt, oh).map(|oy| &dout[oy * ow * c..][..ow * c]));
            input_grad_row_on(ig, tier, rows, &w, c, g, &mut din[iy * wi * c..][..wi * c]);
        }
        let mut want_din = vec![0f64; h * wi * c];
        let mut want_dw: Vec<f64> = dw0.iter().map(|&v| v as f64).collect();
        for oy in 0..oh {
            for ox in 0..ow {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let iy = (oy * s + ky * d) as isize - pt as isize;
                        let ix = (ox * s + kx * d) as isize - pl as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= wi as isize {
                            continue;
                        }
                        for ch in 0..c {
                            let go = dout[(oy * ow + ox) * c + ch] as f64;
                            let ii = (iy as usize * wi + ix as usize) * c + ch;
                            want_din[ii] += go * w[(ky * 3 + kx) * c + ch] as f64;
                            want_dw[(ky * 3 + kx) * c + ch] += go * input[ii] as f64;
                        }
                    }
                }
            }
        }
        let what = format!("{}/{} h={h} w={wi} c={c} s={s} d={d} pads {pt},{pl},{pb},{pr}", ig.name, wg.name);
        for (a, b) in din.iter().zip(&want_din) {
            assert!((*a as f64 - b).abs() < 1e-5, "{what}: input grad {a} vs {b}");
        }
        for (a, b) in dw.iter().zip(&want_dw) {
            assert!((*a as f64 - b).abs() < 1e-4 * b.abs().max(1.0), "{what}: weight grad {a} vs {b}");
        }
    }

    #[test]
    fn gradients_match_the_definition_on_every_kernel() {
        let pairs = host_pairs();
        eprintln!("depthwise gradients tested on: {:?}", pairs.iter().map(|p| p.1.name).collect::<Vec<_>>());
        for isa in pairs {
            for c in [1, 3, 16, 17, 40] {
                for w in [1, 2, 3, 5, 8, 11, 13] {
                    check(isa, 5, w, c, 1, 1, 1, 1, 1, 1); // torch stride 1
                    if w >= 2 {
                        check(isa, 6, w, c, 2, 1, 1, 1, 1, 1); // torch stride 2, even
                        check(isa, 7, w, c, 2, 1, 1, 1, 1, 1); // odd sizes
                        check(isa, 6, w, c, 2, 1, 0, 0, 1, 1); // TF 'SAME' on even sizes
                    }
                    if w >= 5 {
                        check(isa, 9, w, c, 1, 2, 2, 2, 2, 2); // atrous rate 2
                        check(isa, 9, w, c, 1, 4, 4, 4, 4, 4); // atrous rate 4
                    }
                }
            }
            check(isa, 4, 32, 96, 1, 1, 1, 1, 1, 1);
            check(isa, 4, 33, 144, 2, 1, 1, 1, 1, 1);
        }
    }

    #[test]
    fn rows_nobody_reads_get_zero() {
        // TF 'SAME', stride 2 on an even size without top padding: ... no output row reads
        // beyond the last input row, and a row with no taps must come out zero.
        for (tier, ig, _) in host_pairs() {
            let g = DwRow { w_in: 4, w_out: 2, stride: 2, dilation: 1, pad_left: 0 };
            let mut din = vec![f32::NAN; 4 * 5];
            input_grad_row_on(ig, tier, [None, None, None], &[1.0; 45], 5, g, &mut din);
            assert!(din.iter().all(|&v| v == 0.0));
        }
    }
}
