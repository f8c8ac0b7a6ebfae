//! int8 pointwise (1x1) convolution: u8 activations x s8 weights -> s32, with a fused float
//! requantisation epilogue.
//!
//! Activations are u8 with an affine map `real = scale * (q - zero)`; weights are s8, symmetric
//! per output channel (`real = w_scale[n] * q`). The product is accumulated exactly in i32,
//! then the epilogue computes the real value
//! `v = (acc - zero_a * colsum[n]) * (scale_a * w_scale[n]) + bias[n]`, clamps it (ReLU6),
//! adds a u8 residual in real units, and either quantises it to u8 with the output's scale and
//! zero point (round to nearest even, saturate) or stores it as f32. This is XNNPACK's "fp32
//! requantisation": one rounding, no fixed-point multipliers to overflow.
//!
//! Kernels: `qgemm_u8s8s32_requant_14x32_avx512vnni` (`vpdpbusd`, 4 multiply-adds per byte
//! lane per instruction; 24x16 for narrow layers; a panel with padding columns runs a 24-, 16-
//! or 8-column tile, with the same bytes), `qgemm_u8s8s32_requant_6x16_avx2` (`vpmaddwd` on
//! operands widened to i16: exact, where `vpmaddubsw` would saturate) and a portable twin
//! that gives identical results. Weights are packed once as `[n / nr][k / 4][nr][4]` bytes,
//! or for the AVX2 kernel as `[n / nr][k / 2][nr][2]` bytes (pairs of k values, widened to
//! i16 as they are loaded).

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512vnni;
mod scalar;

use crate::aligned::AlignedVec;
use crate::isa::{Isa, Needs, Tier};
use crate::MinMax;

/// Affine quantisation of u8 activations: `real = scale * (q - zero)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    /// Real units per step.
    pub scale: f32,
    /// The code of real 0 (0..=255).
    pub zero: i32,
}

impl QParams {
    /// The u8 quantisation of a real interval (widened to contain 0, as an exact zero is
    /// needed for padding and ReLU).
    pub fn from_range(min: f32, max: f32) -> QParams {
        let (min, max) = (min.min(0.0), max.max(0.0));
        let scale = if max > min { (max - min) / 255.0 } else { 1.0 };
        let zero = (-min / scale).round().clamp(0.0, 255.0) as i32;
        QParams { scale, zero }
    }

    /// The nearest code of `v` (ties to even), clamped to 0..=255.
    #[inline(always)]
    pub fn quantize(self, v: f32) -> u8 {
        ((v * (1.0 / self.scale)).round_ties_even() as i32 + self.zero).clamp(0, 255) as u8
    }

    /// The real value of code `q`.
    #[inline(always)]
    pub fn dequantize(self, q: u8) -> f32 {
        self.scale * (q as i32 - self.zero) as f32
    }
}

/// Whether this CPU has the AVX-512 VNNI instructions (`vpdpbusd` on zmm).
pub fn has_avx512vnni() -> bool {
    crate::isa::Avx512Vnni::detect().is_some()
}

/// One int8 GEMM micro-kernel: its name (the identity of the code), what it needs, its tile
/// and its code.
#[derive(Debug)]
pub struct QGemmKernel {
    /// The kernel's name, as profiles and `mnv2 bench` print it.
    pub name: &'static str,
    /// What the CPU must have.
    pub needs: Needs,
    /// Rows (pixels) per register tile.
    pub mr: usize,
    /// Output channels per packed panel.
    pub nr: usize,
    /// The kernel is chosen only for layers with more outputs than this.
    pub min_n: usize,
    /// The packed groups of 4 k values of a panel are padded with zero groups to a multiple
    /// of this (the AMX kernel's tiles hold 16 groups; 1 for the others).
    pub group_block: usize,
    /// The weights are packed in pairs of k values instead of in groups of 4 (see
    /// `PackedQGemm::data`; such a kernel's `group_block` is 1).
    pub k_pairs: bool,
    /// # Safety
    /// `args` describe buffers valid for the packing, and the CPU has `needs`.
    run: unsafe fn(&Args, &PackedQGemm),
}

/// Every int8 GEMM kernel built for this target, best first. There is no AVX-VNNI kernel:
/// such CPUs run the AVX2 one (the same bytes).
pub static KERNELS: &[QGemmKernel] = &[
    #[cfg(target_arch = "x86_64")]
    amx::KERNEL,
    #[cfg(target_arch = "x86_64")]
    QGemmKernel {
        name: "qgemm_u8s8s32_requant_14x32_avx512vnni",
        needs: Needs::Avx512Vnni,
        mr: 14,
        nr: 32,
        min_n: 16,
        group_block: 1,
        k_pairs: false,
        run: avx512vnni::qgemm,
    },
    #[cfg(target_arch = "x86_64")]
    QGemmKernel {
        name: "qgemm_u8s8s32_requant_24x16_avx512vnni",
        needs: Needs::Avx512Vnni,
        mr: 24,
        nr: 16,
        min_n: 0,
        group_block: 1,
        k_pairs: false,
        run: avx512vnni::qgemm,
    },
    #[cfg(target_arch = "x86_64")]
    QGemmKernel {
        name: "qgemm_u8s8s32_requant_6x16_avx2",
        needs: Needs::Avx2,
        mr: avx2::MR,
        nr: avx2::NR,
        min_n: 0,
        group_block: 1,
        k_pairs: true,
        run: avx2::qgemm,
    },
    QGemmKernel {
        name: "qgemm_u8s8s32_requant_1x32_scalar",
        needs: Needs::Scalar,
        mr: 1,
        nr: 32,
        min_n: 0,
        group_block: 1,
        k_pairs: false,
        run: scalar::qgemm,
    },
];

/// The best kernel for a layer of `n` outputs on `tier`; the AMX one only while
/// [`crate::isa::amx_int8_enabled`] (`MNV2_ISA=amx`: opt-in until it has been run on an AMX
/// CPU).
pub fn select(tier: Tier, n: usize) -> &'static QGemmKernel {
    KERNELS.iter().find(|k| k.needs.selectable(tier) && n > k.min_n).expect("the scalar kernel serves every layer")
}

/// A 1x1 convolution quantised and packed for the int8 kernels of one ISA.
#[derive(Clone, Debug)]
pub struct PackedQGemm {
    /// Input channels (the reduction).
    pub k: usize,
    /// Output channels.
    pub n: usize,
    /// Columns per packed panel (the kernel's register tile width).
    pub nr: usize,
    /// The kernel, granted by the tier it was packed with.
    kernel: &'static QGemmKernel,
    /// Per output channel weight scales.
    pub w_scale: Vec<f32>,
    /// The input's quantisation, folded into `zcs` and `mul`.
    pub input: QParams,
    /// `[panels][packed_groups()][nr][4]` (zero groups after `k / 4`); for a kernel with
    /// `k_pairs`, `[panels][k / 2][nr][2]` (the same length: its groups are not padded).
    pub(crate) data: AlignedVec<i8>,
    /// `zero_a * colsum[n]`, `[panels * nr]`.
    pub(crate) zcs: AlignedVec<i32>,
    /// `scale_a * w_scale[n]`, `[panels * nr]`.
    pub(crate) mul: AlignedVec<f32>,
    pub(crate) bias: AlignedVec<f32>,
    /// Whether a panel with padding columns runs the 24-column tile ([`crate::isa::split_512`],
    /// read when packing; every tile gives the same bits).
    pub(crate) split: bool,
}

/// Per output channel symmetric quantisation of `[k][n]` weights: (q `[k][n]`, scales `[n]`).
pub fn quantize_weights(weights: &[f32], k: usize, n: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(weights.len(), k * n);
    let scales: Vec<f32> = (0..n)
        .map(|j| {
            let m = (0..k).map(|i| weights[i * n + j].abs()).fold(0f32, f32::max);
            if m > 0.0 {
                m / 127.0
            } else {
                1.0
            }
        })
        .collect();
    let q = (0..k * n).map(|i| (weights[i] / scales[i % n]).round().clamp(-127.0, 127.0) as i8).collect();
    (q, scales)
}

impl PackedQGemm {
    /// Quantises `weights` (`[k][n]` real) per output channel and packs them; `input` is the
    /// quantisation of the activations this layer reads. `k` must be a multiple of 4.
    pub fn new(tier: Tier, weights: &[f32], k: usize, n: usize, bias: &[f32], input: QParams) -> PackedQGemm {
        let (q, s) = quantize_weights(weights, k, n);
        PackedQGemm::from_quantized(select(tier, n), tier, &q, &s, k, n, bias, input)
    }

    /// Packs weights that are already quantised (`q` is `[k][n]`, `w_scale` is `[n]`) for
    /// `kernel`, which `tier` must grant.
    #[allow(clippy::too_many_arguments)]
    pub fn from_quantized(
        kernel: &'static QGemmKernel,
        tier: Tier,
        q: &[i8],
        w_scale: &[f32],
        k: usize,
        n: usize,
        bias: &[f32],
        input: QParams,
    ) -> PackedQGemm {
        kernel.needs.assert_granted(kernel.name, tier);
        assert!(k.is_multiple_of(4), "int8 GEMM needs k % 4 == 0, got {k}");
        assert_eq!(q.len(), k * n);
        assert_eq!(w_scale.len(), n);
        assert_eq!(bias.len(), n);
        let nr = kernel.nr;
        let panels = n.div_ceil(nr);
        // Groups of 4 k per panel: `k / 4`, padded with zero groups to the kernel's block.
        let groups = (k / 4).next_multiple_of(kernel.group_block);
        assert!(!kernel.k_pairs || kernel.group_block == 1, "{}: pairs of k are not padded", kernel.name);
        let mut data = AlignedVec::<i8>::zeros(panels * groups * 4 * nr);
        let mut zcs = AlignedVec::<i32>::zeros(panels * nr);
        let mut mul = AlignedVec::<f32>::zeros(panels * nr);
        let mut b = AlignedVec::<f32>::zeros(panels * nr);
        for j in 0..n {
            let (p, jj) = (j / nr, j % nr);
            let mut colsum = 0i32;
            for kk in 0..k {
                let v = q[kk * n + j];
                colsum += v as i32;
                let at = if kernel.k_pairs {
                    ((p * k / 2 + kk / 2) * nr + jj) * 2 + kk % 2
                } else {
                    ((p * groups + kk / 4) * nr + jj) * 4 + kk % 4
                };
                data[at] = v;
            }
            zcs[j] = input.zero * colsum;
            mul[j] = input.scale * w_scale[j];
            b[j] = bias[j];
        }
        let split = crate::isa::split_512();
        PackedQGemm { k, n, nr, kernel, w_scale: w_scale.to_vec(), input, data, zcs, mul, bias: b, split }
    }

    /// Panels of `nr` output channels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(self.nr)
    }

    /// Groups of 4 input channels packed per panel: `k / 4`, padded to the kernel's
    /// `group_block` (the panel stride of `data`, in rows of `nr` groups).
    pub fn packed_groups(&self) -> usize {
        (self.k / 4).next_multiple_of(self.kernel.group_block)
    }

    /// Name of the micro-kernel this packing is for.
    pub fn kernel_name(&self) -> &'static str {
        self.kernel.name
    }

    /// The tier of the kernel this packing is for.
    pub fn isa(&self) -> Isa {
        self.kernel.needs.tier()
    }
}

/// Where the epilogue puts its results.
pub enum QOut<'a> {
    /// Quantised to u8 with `q`, row stride `ldc`.
    U8 {
        /// Output rows.
        c: &'a mut [u8],
        /// Row stride of `c`.
        ldc: usize,
        /// The output's quantisation.
        q: QParams,
    },
    /// Real values, row stride `ldc`.
    F32 {
        /// Output rows.
        c: &'a mut [f32],
        /// Row stride of `c`.
        ldc: usize,
    },
    /// Real values added, row after row, into `sums` (`n` values): global average pooling
    /// without materialising the layer's output.
    Pool {
        /// One running sum per output channel.
        sums: &'a mut [f32],
    },
}

/// A u8 tensor added (in real units) after the clamp.
#[derive(Clone, Copy)]
pub struct QResidual<'a> {
    /// The residual's rows.
    pub r: &'a [u8],
    /// Row stride of `r`.
    pub ldr: usize,
    /// The residual's quantisation.
    pub q: QParams,
}

/// The u8 epilogue in the output's quantised units. With `inv = 1 / out.scale`, per column
/// `qmul = mul * inv` and `qbias = (bias - zcs * mul) * inv + out.zero + rshift`, where
/// `rshift = -res.zero * res.scale * inv` (0 without residual); the clamp bounds become
/// `lo * inv + out.zero + rshift` (likewise `hi`); the residual adds `r * res.scale * inv`.
/// Then `q = round_half_even(x)` saturated to 0..=255. Both kernels compute exactly this.
pub(crate) struct OutFold {
    pub inv: f32,
    pub zo: f32,
    pub rshift: f32,
    pub lo: f32,
    pub hi: f32,
    pub rs: f32,
}

pub(crate) fn fold_out(args: &Args) -> OutFold {
    let inv = 1.0 / args.out_q.scale;
    let zo = args.out_q.zero as f32;
    let rs = args.res_q.scale * inv;
    let rshift = if args.r.is_null() { 0.0 } else { -(args.res_q.zero as f32) * rs };
    OutFold {
        inv,
        zo,
        rshift,
        lo: args.act.min.mul_add(inv, zo) + rshift,
        hi: args.act.max.mul_add(inv, zo) + rshift,
        rs,
    }
}

/// `(qmul, qbias)` of column `j`: see [`OutFold`].
pub(crate) fn fold_column(w: &PackedQGemm, j: usize, f: &OutFold) -> (f32, f32) {
    let t = (-(w.zcs[j] as f32)).mul_add(w.mul[j], w.bias[j]);
    (w.mul[j] * f.inv, t.mul_add(f.inv, f.zo) + f.rshift)
}

#[derive(Clone)]
pub(crate) struct Args {
    pub m: usize,
    pub a: *const u8,
    pub lda: usize,
    pub c: *mut u8,
    pub ldc: usize,
    /// f32 output (else u8).
    pub f32_out: bool,
    /// Sum the rows into the f32 `c` (`n` values) instead of storing them.
    pub pool: bool,
    pub out_q: QParams,
    pub r: *const u8,
    pub ldr: usize,
    pub res_q: QParams,
    pub act: MinMax,
    /// The panels of output columns to compute.
    pub panels: std::ops::Range<usize>,
}

/// Rows `0..m` of `a` (u8, row stride `lda`, quantised as `w.input`) times `w`, through the
/// epilogue into `out`.
pub fn qgemm(m: usize, a: &[u8], lda: usize, w: &PackedQGemm, out: QOut, act: MinMax, residual: Option<QResidual>) {
    qgemm_panels(m, a, lda, w, out, act, residual, 0..w.panels())
}

/// [`qgemm`] restricted to the output columns of `panels` (of `w.nr` columns each).
#[allow(clippy::too_many_arguments)]
pub fn qgemm_panels(
    m: usize,
    a: &[u8],
    lda: usize,
    w: &PackedQGemm,
    out: QOut,
    act: MinMax,
    residual: Option<QResidual>,
    panels: std::ops::Range<usize>,
) {
    assert!(panels.start <= panels.end && panels.end <= w.panels(), "panels out of range");
    if m == 0 || w.n == 0 || panels.is_empty() {
        return;
    }
    assert!(lda >= w.k && a.len() >= (m - 1) * lda + w.k, "A too short");
    let unit = QParams { scale: 1.0, zero: 0 };
    let (c, ldc, f32_out, pool, out_q) = match out {
        QOut::U8 { c, ldc, q } => {
            assert!(ldc >= w.n && c.len() >= (m - 1) * ldc + w.n, "C too short");
            (c.as_mut_ptr(), ldc, false, false, q)
        }
        QOut::F32 { c, ldc } => {
            assert!(ldc >= w.n && c.len() >= (m - 1) * ldc + w.n, "C too short");
            (c.as_mut_ptr() as *mut u8, ldc, true, false, unit)
        }
        QOut::Pool { sums } => {
            assert!(sums.len() >= w.n, "sums too short");
            (sums.as_mut_ptr() as *mut u8, 0, true, true, unit)
        }
    };
    let (r, ldr, res_q) = match residual {
        Some(res) => {
            assert!(res.ldr >= w.n && res.r.len() >= (m - 1) * res.ldr + w.n, "residual too short");
            (res.r.as_ptr(), res.ldr, res.q)
        }
        None => (std::ptr::null(), 0, QParams { scale: 0.0, zero: 0 }),
    };
    let args = Args { m, a: a.as_ptr(), lda, c, ldc, f32_out, pool, out_q, r, ldr, res_q, act, panels };
    // SAFETY: sizes checked above; the packing's kernel was granted by a `Tier`, the proof
    // that this CPU runs it.
    unsafe { (w.kernel.run)(&args, w) }
}

/// Name of the kernel [`quantize_row`] runs on `tier`.
pub fn quantize_kernel_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Avx512(_) => "quantize_f32_u8_avx512",
        Tier::Avx2(_) => "quantize_f32_u8_avx2",
        Tier::Scalar => "quantize_f32_u8_scalar",
    }
}

/// `dst[i] = q.quantize(src[i])` (round half to even, saturate), on the kernel of `tier`.
pub fn quantize_row(tier: Tier, src: &[f32], dst: &mut [u8], q: QParams) {
    assert!(dst.len() >= src.len());
    match tier {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the token proves AVX-512; lengths checked.
        Tier::Avx512(_) => unsafe { avx512::quantize_row(src, dst, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the token proves AVX2; lengths checked.
        Tier::Avx2(_) => unsafe { avx2::quantize_row(src, dst, q) },
        _ => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = q.quantize(*s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel of the registry the host runs, with the host's best tier; the others
    /// print `SKIPPED`.
    fn host_kernels() -> Vec<(Tier, &'static QGemmKernel)> {
        let tier = *Tier::host().last().expect("scalar");
        // The AMX kernel also runs on a model of the tile unit, wherever its epilogue runs.
        #[cfg(target_arch = "x86_64")]
        let all = KERNELS.iter().chain([&amx::MODEL]);
        #[cfg(not(target_arch = "x86_64"))]
        let all = KERNELS.iter();
        all.filter(|k| crate::isa::runs_or_skips(k.name, k.needs)).map(|k| (tier, k)).collect()
    }

    fn vals(seed: u64, n: usize) -> Vec<f32> {
        crate::test_vals::uniform(seed, n, -1.0, 2.0)
    }

    #[test]
    fn every_kernel_matches_the_definition() {
        let kernels = host_kernels();
        eprintln!("qgemm kernels tested: {:?}", kernels.iter().map(|k| k.1.name).collect::<Vec<_>>());
        let input = QParams { scale: 0.02, zero: 100 };
        let out_q = QParams { scale: 0.05, zero: 120 };
        let res_q = QParams { scale: 0.03, zero: 90 };
        let shapes = [
            (4, 1),
            (4, 15),
            (8, 16),
            (12, 17),
            (4, 31),
            (8, 32),
            (4, 33),
            (16, 96),
            (24, 144),
            (144, 24),
            (32, 16),
            (96, 33),
            (960, 160),
            (320, 1280),
        ];
        // The definition is computed once per case for every kernel: it is most of the work
        // (scripts/emu runs this test on an emulated CPU a hundred times slower).
        for &(k, n) in &shapes {
            let w = vals(k as u64 * 7 + n as u64, k * n);
            let bias = vals(3, n);
            let (q, s) = quantize_weights(&w, k, n);
            let packs: Vec<PackedQGemm> = kernels
                .iter()
                .map(|&(tier, kern)| PackedQGemm::from_quantized(kern, tier, &q, &s, k, n, &bias, input))
                .collect();
            for &m in &[0, 1, 5, 7, 9, 11, 13, 14, 15, 23, 24, 25, 49, 112] {
                let a: Vec<u8> = (0..m * k).map(|i| (i * 37 % 256) as u8).collect();
                let r: Vec<u8> = (0..m * n).map(|i| (i * 11 % 256) as u8).collect();
                // Bounds inside the codes, none (cut to 0..=255), and a residual.
                for (act, res) in [
                    (MinMax::RELU6, None),
                    (MinMax::NONE, None),
                    (MinMax::NONE, Some(QResidual { r: &r, ldr: n, q: res_q })),
                ] {
                    let res_ref = res.map(|x| (x.r, x.q));
                    let want = crate::reference::qgemm_u8s8s32(m, k, n, &a, input, &q, &s, &bias, act, res_ref);
                    let mut first: Option<Vec<u8>> = None;
                    for p in &packs {
                        let mut c = vec![0u8; m * n];
                        qgemm(m, &a, k, p, QOut::U8 { c: &mut c, ldc: n, q: out_q }, act, res);
                        for (i, (g, w)) in c.iter().zip(&want).enumerate() {
                            // Half a step of the output grid (plus float slack), after saturation.
                            let w = out_q.dequantize(0).max(w.min(out_q.dequantize(255)));
                            let err = (out_q.dequantize(*g) - w).abs();
                            assert!(
                                err <= out_q.scale * 0.501 + 1e-5,
                                "{} m={m} k={k} n={n} at {i}: {} vs {w}",
                                p.kernel_name(),
                                out_q.dequantize(*g)
                            );
                        }
                        // Every kernel gives the same bytes.
                        match &first {
                            None => first = Some(c),
                            Some(f) => assert!(
                                f == &c,
                                "{} disagrees with {} at m={m} k={k} n={n}",
                                p.kernel_name(),
                                packs[0].kernel_name()
                            ),
                        }
                        let mut f = vec![0f32; m * n];
                        qgemm(m, &a, k, p, QOut::F32 { c: &mut f, ldc: n }, act, res);
                        for (g, w) in f.iter().zip(&want) {
                            assert!(
                                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                                "{} f32 out m={m} k={k} n={n}: {g} vs {w}",
                                p.kernel_name()
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_give_the_scalar_bytes_for_every_last_panel_width() {
        // Every width of the last panel (1..=32 real columns: the narrow tiles of a 32-column
        // panel with <= 24, <= 16, <= 8 columns), one to three panels, row counts around the
        // tile heights, u8 and f32 outputs with and without residual, whole and panel by
        // panel: the scalar twin's bytes and bits.
        let kernels = host_kernels();
        let scalar = kernels.iter().find(|(_, k)| k.needs == Needs::Scalar).expect("the scalar twin runs everywhere");
        let input = QParams { scale: 0.02, zero: 100 };
        let out_q = QParams { scale: 0.05, zero: 120 };
        let res_q = QParams { scale: 0.03, zero: 90 };
        for n in (1..=72).chain([144]) {
            let k = if n % 2 == 0 { 24 } else { 8 };
            let w = vals(k as u64 * 5 + n as u64, k * n);
            let bias = vals(6, n);
            let (q, s) = quantize_weights(&w, k, n);
            for m in [1, 7, 9, 13, 14, 15, 23, 25, 31] {
                let a: Vec<u8> = (0..m * k).map(|i| (i * 41 % 256) as u8).collect();
                let r: Vec<u8> = (0..m * n).map(|i| (i * 23 % 256) as u8).collect();
                let run = |tier: Tier, kern: &'static QGemmKernel, by_panel: bool, split: bool| {
                    let mut p = PackedQGemm::from_quantized(kern, tier, &q, &s, k, n, &bias, input);
                    p.split = split;
                    let ranges: Vec<std::ops::Range<usize>> = match by_panel {
                        true => (0..p.panels()).map(|i| i..i + 1).collect(),
                        false => std::iter::once(0..p.panels()).collect(),
                    };
                    let mut bytes = Vec::new();
                    let mut reals = Vec::new();
                    // Bounds inside the codes, none (cut to 0..=255), and a residual.
                    for (act, res) in [
                        (MinMax::RELU6, None),
                        (MinMax::NONE, None),
                        (MinMax::NONE, Some(QResidual { r: &r, ldr: n, q: res_q })),
                    ] {
                        let mut c = vec![0u8; m * n];
                        let mut f = vec![f32::NAN; m * n];
                        for pr in &ranges {
                            qgemm_panels(m, &a, k, &p, QOut::U8 { c: &mut c, ldc: n, q: out_q }, act, res, pr.clone());
                            qgemm_panels(m, &a, k, &p, QOut::F32 { c: &mut f, ldc: n }, act, res, pr.clone());
                        }
                        bytes.push(c);
                        reals.extend(f.iter().map(|v| v.to_bits()));
                    }
                    (bytes, reals)
                };
                let want = run(scalar.0, scalar.1, false, false);
                for &(tier, kern) in &kernels {
                    // With the 24-column tile and without, whatever this CPU is.
                    for (by_panel, split) in [(false, false), (true, false), (false, true), (true, true)] {
                        let got = run(tier, kern, by_panel, split);
                        assert!(
                            got == want,
                            "{} m={m} k={k} n={n} by panel {by_panel} split {split}: not the scalar twin's",
                            kern.name
                        );
                    }
                }
            }
        }
    }

    /// Output codes far above 255 (and far below 0) before saturation, up to the i32 range the
    /// packing epilogue accepts, on every tile width: 255 (and 0), as the twin gives them. Codes
    /// between 32768 and 65535 are where a two-step unsigned pack (i32 -> u16 -> u8) would
    /// read its 16-bit value as negative.
    #[test]
    fn huge_codes_saturate() {
        let kernels = host_kernels();
        let (k, m) = (8, 15);
        let a: Vec<u8> = (0..m * k).map(|i| [255, 0, 200, 7][i % 4]).collect();
        let input = QParams { scale: 1.0, zero: 0 };
        for n in [16, 24, 32, 40] {
            let w: Vec<f32> = (0..k * n).map(|i| if (i % n) % 3 == 0 { -1.0 } else { 1.0 }).collect();
            let bias = vec![0.0; n];
            let (q, s) = quantize_weights(&w, k, n);
            let mut outs = Vec::new();
            for (tier, kern) in &kernels {
                let p = PackedQGemm::from_quantized(kern, *tier, &q, &s, k, n, &bias, input);
                // Real sums of +-924: codes 128 + 924 / 0.02 = 46328 (in the 16-bit trap) and,
                // at scale 0.001, 924128.
                // With a residual too (another epilogue), at 1e-7: codes near 9.2e9, beyond i32.
                let r: Vec<u8> = (0..m * n).map(|i| (i * 29 % 256) as u8).collect();
                let res = QResidual { r: &r, ldr: n, q: QParams { scale: 0.5, zero: 10 } };
                for (scale, res) in [(0.02, None), (0.001, None), (0.02, Some(res)), (1e-7, Some(res))] {
                    let mut c = vec![1u8; m * n];
                    let out = QOut::U8 { c: &mut c, ldc: n, q: QParams { scale, zero: 128 } };
                    qgemm(m, &a, k, &p, out, MinMax::NONE, res);
                    outs.push((kern.name, scale, c));
                }
            }
            let twin: Vec<&Vec<u8>> = outs.iter().filter(|o| o.0.ends_with("scalar")).map(|o| &o.2).collect();
            for (i, (name, scale, c)) in outs.iter().enumerate() {
                let want = twin[i % twin.len()];
                assert!(want.contains(&255) && want.contains(&0), "n={n}");
                assert_eq!(c, want, "{name} n={n} scale {scale} (case {})", i % twin.len());
            }
        }
    }

    #[test]
    fn pool_output_sums_rows_identically_on_every_isa() {
        let (m, k, n) = (23, 32, 40);
        let w = vals(9, k * n);
        let bias = vals(4, n);
        let input = QParams { scale: 0.02, zero: 30 };
        let a: Vec<u8> = (0..m * k).map(|i| (i * 13 % 256) as u8).collect();
        let mut outs = Vec::new();
        let (q, s) = quantize_weights(&w, k, n);
        for (tier, kern) in host_kernels() {
            let p = PackedQGemm::from_quantized(kern, tier, &q, &s, k, n, &bias, input);
            let mut rows = vec![0f32; m * n];
            qgemm(m, &a, k, &p, QOut::F32 { c: &mut rows, ldc: n }, MinMax::RELU6, None);
            let mut want = vec![0.5f32; n];
            for r in rows.chunks(n) {
                for (s, v) in want.iter_mut().zip(r) {
                    *s += v;
                }
            }
            let mut sums = vec![0.5f32; n];
            qgemm(m, &a, k, &p, QOut::Pool { sums: &mut sums }, MinMax::RELU6, None);
            assert_eq!(sums, want, "{}", p.kernel_name());
            outs.push(sums);
        }
        assert!(outs.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn quantize_row_matches_scalar_on_every_tier() {
        let q = QParams { scale: 0.037, zero: 17 };
        for tier in Tier::host() {
            for len in [0, 1, 15, 16, 17, 1000] {
                let src: Vec<f32> = (0..len).map(|i| (i as f32 - 300.0) * 0.011).collect();
                let mut d = vec![0u8; len];
                quantize_row(tier, &src, &mut d, q);
                for (s, d) in src.iter().zip(&d) {
                    assert_eq!(*d, q.quantize(*s), "{} at {s}", quantize_kernel_name(tier));
                }
            }
        }
        if Tier::new(Isa::Avx512).is_none() {
            println!("SKIPPED quantize_f32_u8_avx512 (host lacks avx512)");
        }
        if Tier::new(Isa::Avx2).is_none() {
            println!("SKIPPED quantize_f32_u8_avx2 (host lacks avx2)");
        }
    }

    #[test]
    fn qparams_round_trip() {
        let q = QParams::from_range(-1.0, 3.0);
        assert_eq!(q.zero, 64);
        assert_eq!(q.quantize(0.0), 64);
        assert!((q.dequantize(q.quantize(1.234)) - 1.234).abs() <= q.scale / 2.0);
        assert_eq!(q.quantize(100.0), 255);
        assert_eq!(q.quantize(-100.0), 0);
        assert_eq!(QParams::from_range(0.0, 6.0).zero, 0);
    }
}
