//! bf16 pointwise (1x1) convolution: bf16 x bf16 products accumulated in f32, with the f32
//! GEMM's fused epilogue: `C[m][n] = clamp(bias[n] + sum_k A[m][k] * W[k][n]) + R[m][n]`.
//!
//! Weights are rounded to bf16 (round to nearest even) and packed once as pairs of
//! consecutive input channels, `[n / nr][k / 2][nr]` 32-bit words (low half channel `2p`,
//! high half `2p + 1`; an odd `k` is padded with a zero channel): the operand layout of
//! `vdpbf16ps`, which multiplies one such pair per lane and adds both products to an f32
//! lane. [`gemm_bf16`] takes f32 A rows and rounds them to bf16 pairs once per call
//! (`vcvtne2ps2bf16`, 32 values per instruction) into a per-thread scratch;
//! [`gemm_bf16_pairs_panels`] takes rows a producer already rounded ([`Bf16`], as the
//! depthwise conv's `dwconv_row_bf16` writes them), with the same result bit for bit. The
//! micro-kernel broadcasts one pair per row and k step. Bias, clamp and residual stay f32;
//! [`gemm_bf16_to_bf16`] rounds its results to bf16 as it stores them, for a consumer of bf16
//! rows (the depthwise conv's `dwconv_rows_bf16_in`), and [`gemm_bf16_to_bf16_pairs`] stores
//! them in pixel pairs (two rows interleaved value by value: `dwconv_rows_bf16_pairs`).
//!
//! Kernels: `gemm_bf16_minmaxres_14x32_avx512bf16` (28 accumulators, two dot products per
//! lane per instruction; 24x16 for layers with <= 16 outputs) and a portable twin,
//! `gemm_bf16_minmaxres_1x16_scalar`, which rounds both operands the same way and
//! accumulates in f32 in `vdpbf16ps` order (per pair: the odd channel's product, then the
//! even one's), so the two agree to f32 rounding.

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512bf16;
mod scalar;

use crate::aligned::AlignedVec;
use crate::isa::{Isa, Needs, Tier};
use crate::MinMax;

/// `v` rounded to bf16 (the high 16 bits of an f32) to nearest, ties to even, as
/// `vcvtne2ps2bf16` does: denormals become a zero of the same sign, NaN stays a (quiet) NaN.
#[inline]
pub fn f32_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    if v.is_subnormal() {
        return ((bits >> 16) as u16) & 0x8000;
    }
    let bias = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(bias) >> 16) as u16
}

/// The f32 value of bf16 bits `h` (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// One bf16 value (its bits: the high 16 bits of the f32 it rounds), the element of
/// activation rows that a producer (the depthwise conv) rounds once for the bf16 GEMM
/// ([`gemm_bf16_pairs_panels`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

/// `buf`'s memory as bf16 values (two per f32): a buffer of f32 activations reused for
/// bf16 rows.
pub fn as_bf16_mut(buf: &mut [f32]) -> &mut [Bf16] {
    // SAFETY: `Bf16` is a `u16`: every bit pattern is valid, its alignment divides f32's,
    // and the length covers exactly the same bytes; the borrow is carried over.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut Bf16, buf.len() * 2) }
}

/// [`as_bf16_mut`] for reading.
pub fn as_bf16(buf: &[f32]) -> &[Bf16] {
    // SAFETY: as in `as_bf16_mut`.
    unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const Bf16, buf.len() * 2) }
}

/// `v` rounded to the nearest bf16 value, as an f32.
#[inline]
pub fn round_bf16(v: f32) -> f32 {
    bf16_to_f32(f32_to_bf16(v))
}

/// One bf16 GEMM micro-kernel: its name (`{op}_{dtype}_{epilogue}_{mr}x{nr}_{isa}`), what it
/// needs, its tile and its code.
#[derive(Debug)]
pub struct Bf16GemmKernel {
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
    /// The packed pairs of a panel are padded with zero pairs to a multiple of this (the AMX
    /// kernel's tiles hold 16 pairs of k; 1 for the others).
    pub pair_block: usize,
    /// # Safety
    /// `args` (and the pairs of `ASrc::Pairs`) describe buffers valid for the packing, C of
    /// the element `Out` says, and the CPU has `needs`.
    run: unsafe fn(&Args, &PackedBf16Gemm, ASrc, Out),
}

/// The element of C at `Args::c` (its strides count elements).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Out {
    F32,
    /// bf16: the f32 results rounded to nearest even.
    Bf16,
    /// bf16 as `Bf16`, in pixel pairs: row `i`, column `j` at `(i & !1) * ldc + 2 * j + (i & 1)`
    /// (an even number of rows).
    Bf16Pairs,
}

/// Where a kernel reads its A rows.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ASrc {
    /// f32 rows at `Args::a`, rounded to bf16 by the kernel.
    F32,
    /// Rows already rounded: bf16 pairs (channel `2p` low), `.1` pairs apart.
    Pairs(*const u32, usize),
}

/// Every bf16 GEMM kernel built for this target, best first. There is no AVX2 or plain
/// AVX-512 kernel: other CPUs run the scalar twin (the same numbers, slowly), and its name
/// says so.
pub static KERNELS: &[Bf16GemmKernel] = &[
    #[cfg(target_arch = "x86_64")]
    amx::KERNEL,
    #[cfg(target_arch = "x86_64")]
    Bf16GemmKernel {
        name: "gemm_bf16_minmaxres_14x32_avx512bf16",
        needs: Needs::Avx512Bf16,
        mr: 14,
        nr: 32,
        min_n: 16,
        pair_block: 1,
        run: avx512bf16::gemm,
    },
    #[cfg(target_arch = "x86_64")]
    Bf16GemmKernel {
        name: "gemm_bf16_minmaxres_24x16_avx512bf16",
        needs: Needs::Avx512Bf16,
        mr: 24,
        nr: 16,
        min_n: 0,
        pair_block: 1,
        run: avx512bf16::gemm,
    },
    Bf16GemmKernel {
        name: "gemm_bf16_minmaxres_1x16_scalar",
        needs: Needs::Scalar,
        mr: 1,
        nr: 16,
        min_n: 0,
        pair_block: 1,
        run: scalar::gemm,
    },
];

/// The best kernel for a layer of `n` outputs on `tier`; the AVX-512 BF16 kernels only while
/// [`crate::isa::bf16_enabled`] (`MNV2_ISA` can lower them to the scalar twin), the AMX one
/// only while [`crate::isa::amx_enabled`] (`MNV2_ISA=amx`: opt-in until it has been run on
/// an AMX CPU).
pub fn select(tier: Tier, n: usize) -> &'static Bf16GemmKernel {
    KERNELS.iter().find(|k| k.needs.selectable(tier) && n > k.min_n).expect("the scalar kernel serves every layer")
}

/// 1x1 convolution weights rounded to bf16 and packed for one kernel.
#[derive(Clone, Debug)]
pub struct PackedBf16Gemm {
    /// Input channels.
    pub k: usize,
    /// Output channels.
    pub n: usize,
    /// Output channels per panel.
    pub nr: usize,
    /// The kernel, granted by the tier it was packed with.
    kernel: &'static Bf16GemmKernel,
    /// `[panels][packed_pairs()][nr]` pairs of bf16 (channel `2p` low, `2p + 1` high; zero
    /// pairs after `pairs()`).
    pub(crate) data: AlignedVec<u32>,
    /// `[panels * nr]`, f32.
    pub(crate) bias: AlignedVec<f32>,
    /// Whether a panel with padding columns runs the 24-column tile ([`crate::isa::split_512`],
    /// read when packing; every tile gives the same bits).
    pub(crate) split: bool,
}

impl PackedBf16Gemm {
    /// Rounds `weights` (`[k][n]`, row-major f32) to bf16 and packs them with `bias` (`[n]`,
    /// kept f32) for the best kernel of `tier`.
    pub fn new(tier: Tier, weights: &[f32], k: usize, n: usize, bias: &[f32]) -> PackedBf16Gemm {
        PackedBf16Gemm::for_kernel(tier, select(tier, n), weights, k, n, bias)
    }

    /// Packs for `kernel`, which `tier` must grant (panics otherwise).
    pub fn for_kernel(
        tier: Tier,
        kernel: &'static Bf16GemmKernel,
        weights: &[f32],
        k: usize,
        n: usize,
        bias: &[f32],
    ) -> PackedBf16Gemm {
        kernel.needs.assert_granted(kernel.name, tier);
        assert_eq!(weights.len(), k * n, "weights are k x n");
        assert_eq!(bias.len(), n, "one bias per output");
        let nr = kernel.nr;
        let (panels, pairs) = (n.div_ceil(nr), k.div_ceil(2));
        // Pairs per panel: `pairs`, padded with zero pairs to the kernel's block.
        let stride = pairs.next_multiple_of(kernel.pair_block);
        let mut data = AlignedVec::<u32>::zeros(panels * stride * nr);
        let mut b = AlignedVec::zeros(panels * nr);
        let w = |kk: usize, j: usize| if kk < k { f32_to_bf16(weights[kk * n + j]) as u32 } else { 0 };
        for j in 0..n {
            let (p, jj) = (j / nr, j % nr);
            for q in 0..pairs {
                data[(p * stride + q) * nr + jj] = w(2 * q, j) | (w(2 * q + 1, j) << 16);
            }
        }
        b[..n].copy_from_slice(bias);
        PackedBf16Gemm { k, n, nr, kernel, data, bias: b, split: crate::isa::split_512() }
    }

    /// Pairs of input channels (`k` rounded up to even, halved).
    pub fn pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    /// Pairs packed per panel: [`PackedBf16Gemm::pairs`] padded to the kernel's
    /// `pair_block` (the panel stride of `data`, in rows of `nr` pairs).
    pub fn packed_pairs(&self) -> usize {
        self.pairs().next_multiple_of(self.kernel.pair_block)
    }

    /// Replaces the bias (`[n]`): a layer whose bias changes per call (DeepLab's projection,
    /// which folds the image-pooling branch into it) keeps one packing of its weights.
    pub fn set_bias(&mut self, bias: &[f32]) {
        assert_eq!(bias.len(), self.n, "one bias per output");
        self.bias[..self.n].copy_from_slice(bias);
    }

    /// Panels of `nr` output channels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(self.nr)
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

pub(crate) use crate::gemm::Args;

/// `c[i * ldc + j] = act(bias[j] + sum_k bf16(a[i * lda + k]) * bf16(w[k][j])) (+
/// residual[i * ldr + j])` for `i < m`, `j < w.n`, summed in f32.
///
/// Panics if a slice is too short for the strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    m: usize,
    a: &[f32],
    lda: usize,
    w: &PackedBf16Gemm,
    c: &mut [f32],
    ldc: usize,
    act: MinMax,
    residual: Option<(&[f32], usize)>,
) {
    gemm_bf16_panels(m, a, lda, w, c, ldc, act, residual, 0..w.panels())
}

/// [`gemm_bf16()`] restricted to the output columns of `panels` (of `w.nr` columns each).
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_panels(
    m: usize,
    a: &[f32],
    lda: usize,
    w: &PackedBf16Gemm,
    c: &mut [f32],
    ldc: usize,
    act: MinMax,
    residual: Option<(&[f32], usize)>,
    panels: std::ops::Range<usize>,
) {
    let Some(args) = Args::checked(m, a, lda, (w.k, w.n, w.panels()), c, ldc, act, residual, panels) else {
        return;
    };
    // SAFETY: sizes checked by `Args::checked`; the packing's kernel was granted by a `Tier`,
    // the proof that this CPU runs it.
    unsafe { (w.kernel.run)(&args, w, ASrc::F32, Out::F32) }
}

/// `act`'s bounds as bf16 bits (rounded to nearest even), where a clamp after the rounding,
/// in 16-bit integers, gives the bits of the rounded clamp: both bounds non-negative (sign
/// bit clear) and ordered. Rounding is monotonic, and the bits of bf16 values with a clear
/// sign bit order as integers as the values do; any value with its sign bit set (negative,
/// -0, -inf or a negative NaN) is a negative integer, below the lower bound, as it is as a
/// number. Only a positive NaN sum differs: it ends at the upper bound where the f32 clamp
/// (`vmaxps` and `vminps` return their second operand) ends at the lower one.
pub(crate) fn bf16_bit_bounds(act: MinMax) -> Option<(i16, i16)> {
    (act.min.is_sign_positive() && act.min <= act.max)
        .then(|| (f32_to_bf16(act.min) as i16, f32_to_bf16(act.max) as i16))
}

/// [`gemm_bf16`] with its results rounded to bf16 as they are stored (`c[i * ldc + j]`, no
/// residual): rows for a consumer of bf16 rows (the expanded rows that the depthwise conv's
/// `dwconv_rows_bf16_in` reads), half the bytes of f32 ones. The same values as
/// [`gemm_bf16`]'s, rounded to nearest even.
///
/// Panics if a slice is too short for the strides.
pub fn gemm_bf16_to_bf16(m: usize, a: &[f32], lda: usize, w: &PackedBf16Gemm, c: &mut [Bf16], ldc: usize, act: MinMax) {
    let Some(args) = Args::checked(m, a, lda, (w.k, w.n, w.panels()), c, ldc, act, None, 0..w.panels()) else {
        return;
    };
    // SAFETY: sizes checked by `Args::checked` (in elements of C, which `Out::Bf16` says); the
    // packing's kernel was granted by a `Tier`, the proof that this CPU runs it.
    unsafe { (w.kernel.run)(&args, w, ASrc::F32, Out::Bf16) }
}

/// [`gemm_bf16_to_bf16`] into rows of pixel pairs: column `j` of rows `2q` and `2q + 1` at
/// `c[2q * ldc + 2j]` and `c[2q * ldc + 2j + 1]`, the layout in which the depthwise conv's
/// `dwconv_rows_bf16_pairs` multiplies two horizontal taps per lane and instruction. The
/// same values as [`gemm_bf16_to_bf16`]'s, moved; where the clamp's bounds are non-negative
/// (`bf16_bit_bounds`: ReLU6 and ReLU) it follows the rounding, which gives the same bits
/// for every sum but a NaN (which becomes the upper bound, not the lower one).
///
/// Panics if a slice is too short for the strides, or on an odd `m`.
pub fn gemm_bf16_to_bf16_pairs(
    m: usize,
    a: &[f32],
    lda: usize,
    w: &PackedBf16Gemm,
    c: &mut [Bf16],
    ldc: usize,
    act: MinMax,
) {
    assert!(m.is_multiple_of(2), "pixel pairs need an even row count");
    assert!(c.len() >= m * ldc, "C too short");
    let Some(args) = Args::checked(m, a, lda, (w.k, w.n, w.panels()), c, ldc, act, None, 0..w.panels()) else {
        return;
    };
    // SAFETY: sizes checked by `Args::checked` and above (`ldc >= n`, so row `m - 1`'s last
    // value, at `(m - 2) * ldc + 2n - 1`, lies in `m * ldc`); the packing's kernel was granted
    // by a `Tier`, the proof that this CPU runs it.
    unsafe { (w.kernel.run)(&args, w, ASrc::F32, Out::Bf16Pairs) }
}

/// [`gemm_bf16_panels`] on A rows already rounded to bf16 (`a[i * lda + k]`): no rounding
/// pass, and half the bytes read. `w.k` and `lda` must be even and `a` 4-byte aligned (its
/// values are read as pairs). Bit for bit the same as [`gemm_bf16_panels`] on the f32 values
/// these were rounded from.
///
/// Panics if a slice is too short for the strides, or on odd `k`, `lda` or a misaligned `a`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_pairs_panels(
    m: usize,
    a: &[Bf16],
    lda: usize,
    w: &PackedBf16Gemm,
    c: &mut [f32],
    ldc: usize,
    act: MinMax,
    residual: Option<(&[f32], usize)>,
    panels: std::ops::Range<usize>,
) {
    let Some(args) = Args::checked(m, a, lda, (w.k, w.n, w.panels()), c, ldc, act, residual, panels) else {
        return;
    };
    assert!(w.k.is_multiple_of(2) && lda.is_multiple_of(2), "bf16 pair rows need an even k and stride");
    assert!((a.as_ptr() as usize).is_multiple_of(4), "bf16 pair rows must be 4-byte aligned");
    // The pairs travel in `ASrc::Pairs`, not as f32 rows.
    let args = Args { a: std::ptr::null(), lda: 0, ..args };
    // SAFETY: sizes checked by `Args::checked`, evenness and alignment above; the packing's kernel was granted by a
    // `Tier`, the proof that this CPU runs it.
    unsafe { (w.kernel.run)(&args, w, ASrc::Pairs(a.as_ptr() as *const u32, lda / 2), Out::F32) }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vals(seed: u64, n: usize) -> Vec<f32> {
        crate::test_vals::uniform(seed, n, -1.0, 2.0)
    }

    /// Every kernel of the registry the host runs, with the host's best tier (which grants it);
    /// the others print `SKIPPED`.
    fn host_kernels() -> Vec<(Tier, &'static Bf16GemmKernel)> {
        let tier = *Tier::host().last().expect("scalar");
        // The AMX kernel also runs on a model of the tile unit, wherever its epilogue runs.
        #[cfg(target_arch = "x86_64")]
        let all = KERNELS.iter().chain([&amx::MODEL]);
        #[cfg(not(target_arch = "x86_64"))]
        let all = KERNELS.iter();
        all.filter(|k| crate::isa::runs_or_skips(k.name, k.needs)).map(|k| (tier, k)).collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.0.
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: to the even one.
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16(-2.5), 0xc020);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80, "overflow rounds to infinity");
        assert_eq!(f32_to_bf16(-1e-40), 0x8000, "denormals flush to signed zero");
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(round_bf16(3.0), 3.0);
    }

    #[test]
    fn every_kernel_matches_the_twin_on_edge_and_real_shapes() {
        let kernels = host_kernels();
        eprintln!("bf16 gemm kernels tested: {:?}", kernels.iter().map(|k| k.1.name).collect::<Vec<_>>());
        // Each kernel's cases: row counts and shapes around its own tile, and every distinct
        // pointwise shape class of MobileNetV2 224/1.0 (k, n).
        let cases = |mr: usize, nr: usize| {
            let mut ms = vec![0, 1, mr - 1, mr, mr + 1, 2 * mr + 1, 49, 112];
            ms.dedup();
            let mut kns = vec![(1, 1), (2, 3), (3, nr - 1), (7, nr), (5, nr + 1), (17, 2 * nr + 1), (33, 40), (9, 20)];
            kns.extend([(16, 96), (24, 144), (144, 24), (32, 16), (96, 24), (160, 960), (320, 1280), (1280, 40)]);
            (ms, kns)
        };
        let mut shapes: Vec<(usize, usize)> = kernels.iter().flat_map(|(_, kern)| cases(kern.mr, kern.nr).1).collect();
        shapes.sort_unstable();
        shapes.dedup();
        let mut worst = 0f32;
        // Shape by shape, so that the twin's result for a case (and the magnitudes the AMX
        // bound needs) is computed once for every kernel that runs it: it is most of the work
        // (scripts/emu runs this test on an emulated CPU a hundred times slower).
        for (k, n) in shapes {
            let w = vals(k as u64 * 31 + n as u64, k * n);
            let b = vals(7 + n as u64, n);
            let mut wants: HashMap<(usize, usize, usize), Vec<f32>> = HashMap::new();
            let mut mags: HashMap<(usize, usize), Vec<f32>> = HashMap::new();
            for &(tier, kern) in &kernels {
                let (ms, kns) = cases(kern.mr, kern.nr);
                if !kns.contains(&(k, n)) {
                    continue;
                }
                // Kernels that reduce blocks of pairs (the AMX tiles, on the CPU or the model)
                // sum in another order than the twin.
                let tiles = kern.pair_block > 1;
                let mut p = PackedBf16Gemm::for_kernel(tier, kern, &w, k, n, &b);
                assert_eq!(p.kernel_name(), kern.name);
                // Strided rows (rounded row by row) and contiguous ones (rounded as one run),
                // with the 24-column tile and without, whatever this CPU is.
                let runs = ms.iter().flat_map(|m| [(m, k + 3), (m, k)]).flat_map(|c| [(c, false), (c, true)]);
                for ((&m, lda), split) in runs {
                    p.split = split;
                    let a = vals(m as u64, m * lda);
                    let r = vals(99, m * n);
                    let mag = tiles.then(|| {
                        &*mags.entry((m, lda)).or_insert_with(|| {
                            let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
                            let (aa, wa, ba) = (abs(&a), abs(&w), abs(&b));
                            crate::reference::gemm_bf16(m, k, n, &aa, lda, &wa, &ba, MinMax::NONE, None)
                        })
                    });
                    for (clamp, (act, res)) in [
                        (MinMax::NONE, None),
                        (MinMax::RELU6, Some(r.as_slice())),
                        (MinMax { min: -0.5, max: 0.25 }, None),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let want = wants
                            .entry((m, lda, clamp))
                            .or_insert_with(|| crate::reference::gemm_bf16(m, k, n, &a, lda, &w, &b, act, res));
                        let mut c = vec![f32::NAN; m * n];
                        gemm_bf16(m, &a, lda, &p, &mut c, n, act, res.map(|r| (r, n)));
                        // Same rounded operands, exact products, f32 sums in the same order: the
                        // ISA defines the result (0 difference measured on AMD Zen 4); allow
                        // only f32 accumulation-order rounding. The AMX tiles sum in another
                        // order (even and odd channels apart, 16 pairs at a time): allow that
                        // order's rounding, relative to the sum of the terms' magnitudes.
                        for (i, (x, y)) in c.iter().zip(want.iter()).enumerate() {
                            let err = (x - y).abs();
                            let bound = match mag {
                                None => f32::EPSILON * (k as f32).sqrt() * y.abs().max(1.0),
                                Some(mag) => f32::EPSILON * ((k as f32).sqrt() * mag[i].max(1.0) + y.abs()),
                            };
                            worst = worst.max(err / bound);
                            assert!(err <= bound, "{} m={m} k={k} n={n} split {split}: {x} vs twin {y}", kern.name);
                        }
                    }
                }
            }
        }
        println!("bf16 gemm: max difference to the twin, as a fraction of the bound, {worst:.3}");
    }

    /// Pixel-pair outputs are the bf16 outputs moved, bit for bit: every kernel, even row
    /// counts whose balanced tiles would be odd (40 rows: 14 + 13 + 13), panels of 32, 17..=24
    /// and 16 or fewer real columns, strided C; nothing written between or beyond the columns.
    /// Clamps whose bounds allow the clamp after rounding (ReLU6, ReLU, bounds between bf16
    /// values) and clamps that do not (none, a negative lower bound).
    #[test]
    fn pair_outputs_are_the_bf16_outputs_moved() {
        let acts = [
            MinMax::RELU6,
            MinMax { min: 0.0, max: f32::INFINITY },
            MinMax { min: 0.1, max: 0.3 },
            MinMax::NONE,
            MinMax { min: -0.2, max: 0.5 },
        ];
        assert_eq!(acts.map(|a| bf16_bit_bounds(a).is_some()), [true, true, true, false, false]);
        for (tier, kern) in host_kernels() {
            for (k, n) in [(16, 96), (24, 144), (32, 24), (3, 20), (8, 9), (160, 960)] {
                let w = vals(k as u64 * 5 + n as u64, k * n);
                let b = vals(n as u64 + 1, n);
                let p = PackedBf16Gemm::for_kernel(tier, kern, &w, k, n, &b);
                for m in [2, 40, 2 * kern.mr + 4, 112] {
                    let ldc = n + 3;
                    let a = vals(m as u64 + 23, m * k);
                    for act in acts {
                        let mut want = vec![Bf16(0); m * ldc];
                        gemm_bf16_to_bf16(m, &a, k, &p, &mut want, ldc, act);
                        let mut got = vec![Bf16(0x7fc1); m * ldc];
                        gemm_bf16_to_bf16_pairs(m, &a, k, &p, &mut got, ldc, act);
                        let mut expect = vec![0x7fc1; m * ldc];
                        for i in 0..m {
                            for j in 0..n {
                                expect[(i & !1) * ldc + 2 * j + (i & 1)] = want[i * ldc + j].0;
                            }
                        }
                        let got: Vec<u16> = got.iter().map(|v| v.0).collect();
                        assert_eq!(got, expect, "{} m={m} k={k} n={n} {act:?}", kern.name);
                    }
                }
            }
        }
    }

    /// Where pixel pairs clamp after rounding, a row of NaN sums (a NaN input) ends at the
    /// upper bound on every kernel, the twin included; elsewhere at the lower one, as the f32
    /// clamp leaves it. The rows around it are untouched by it.
    #[test]
    fn pair_outputs_of_nan_sums() {
        let (k, n, m) = (16, 40, 6);
        let w = vals(3, k * n);
        let b = vals(4, n);
        let mut a = vals(5, m * k);
        a[3 * k + 7] = f32::NAN;
        for (tier, kern) in host_kernels() {
            let p = PackedBf16Gemm::for_kernel(tier, kern, &w, k, n, &b);
            for (act, nan_to) in [(MinMax::RELU6, 6.0), (MinMax { min: -1.0, max: 1.0 }, -1.0)] {
                let mut got = vec![Bf16(0); m * n];
                gemm_bf16_to_bf16_pairs(m, &a, k, &p, &mut got, n, act);
                for j in 0..n {
                    let at = |i: usize| got[(i & !1) * n + 2 * j + (i & 1)].0;
                    assert_eq!(at(3), f32_to_bf16(nan_to), "{} {act:?} column {j}", kern.name);
                    assert!(bf16_to_f32(at(2)).is_finite(), "{} {act:?} column {j}", kern.name);
                }
            }
        }
    }

    #[test]
    fn rounded_rows_give_the_same_bits_as_f32_rows() {
        for (tier, kern) in host_kernels() {
            for (m, k, n, lda) in
                [(1, 2, 3, 2), (15, 32, 16, 32), (30, 144, 24, 148), (49, 96, 40, 96), (3, 320, 1280, 322)]
            {
                let w = vals(k as u64 + 3, k * n);
                let b = vals(n as u64, n);
                let p = PackedBf16Gemm::for_kernel(tier, kern, &w, k, n, &b);
                let a = vals(m as u64 * 5, m * lda);
                let a16: Vec<Bf16> = a.iter().map(|v| Bf16(f32_to_bf16(*v))).collect();
                let r = vals(11, m * n);
                for (act, res) in [(MinMax::RELU6, None), (MinMax::NONE, Some((r.as_slice(), n)))] {
                    let mut want = vec![0.0; m * n];
                    gemm_bf16(m, &a, lda, &p, &mut want, n, act, res);
                    let mut got = vec![f32::NAN; m * n];
                    gemm_bf16_pairs_panels(m, &a16, lda, &p, &mut got, n, act, res, 0..p.panels());
                    let same = got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{} m={m} k={k} n={n} lda={lda}", kern.name);
                }
            }
        }
    }

    /// bf16 outputs are the f32 outputs rounded, bit for bit: every kernel, row counts around
    /// its tile height, and panels of 32, 17..=24, 16 and fewer real columns (each of which
    /// the f32 outputs run on its own tile), strided C; nothing written beyond the columns.
    #[test]
    fn bf16_outputs_are_the_f32_outputs_rounded() {
        for (tier, kern) in host_kernels() {
            for (k, n) in [(16, 96), (24, 144), (32, 24), (3, 20), (8, 9), (17, 40), (160, 960), (2, 1)] {
                let w = vals(k as u64 * 3 + n as u64, k * n);
                let b = vals(n as u64, n);
                let mut p = PackedBf16Gemm::for_kernel(tier, kern, &w, k, n, &b);
                for (m, split) in [(1, false), (kern.mr - 1, false), (2 * kern.mr + 3, true), (2 * kern.mr + 3, false)]
                {
                    p.split = split;
                    let ldc = n + 5;
                    let a = vals(m as u64 + 17, m * k);
                    for act in [MinMax::RELU6, MinMax::NONE] {
                        let mut want = vec![0f32; m * ldc];
                        gemm_bf16(m, &a, k, &p, &mut want, ldc, act, None);
                        let mut got = vec![Bf16(0x7fc1); m * ldc];
                        gemm_bf16_to_bf16(m, &a, k, &p, &mut got, ldc, act);
                        for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                            let expect = if i % ldc < n { f32_to_bf16(*y) } else { 0x7fc1 };
                            assert_eq!(x.0, expect, "{} m={m} k={k} n={n} split {split} at {i}", kern.name);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_views_share_the_bytes() {
        let mut buf = [1.0f32, -2.0];
        as_bf16_mut(&mut buf)[1] = Bf16(0x4040);
        assert_eq!(buf[0], 3.0, "the high half of a little-endian f32");
        assert_eq!(as_bf16(&buf), &[Bf16(0), Bf16(0x4040), Bf16(0), Bf16(0xc000)]);
    }

    #[test]
    fn the_twin_is_bf16_not_f32() {
        // Operands that bf16 cannot hold: the twin's sum must be that of the rounded values.
        let (k, n) = (4, 1);
        let w = [1.0 + 1.0 / 512.0, 3.0, 1.0 / 3.0, 7.0];
        let a = [1.0 / 3.0, 1.0 + 1.0 / 1024.0, 2.0, 0.1];
        let got = crate::reference::gemm_bf16(1, k, n, &a, k, &w, &[0.0], MinMax::NONE, None)[0];
        let want: f32 = a.iter().zip(&w).map(|(x, y)| round_bf16(*x) * round_bf16(*y)).sum();
        assert!((got - want).abs() <= 1e-6, "{got} vs {want}");
        let exact: f32 = a.iter().zip(&w).map(|(x, y)| x * y).sum();
        assert!((got - exact).abs() > 1e-4, "rounding must show: {got} vs {exact}");
    }

    #[test]
    fn selection_follows_the_tier_and_the_width() {
        assert_eq!(select(Tier::Scalar, 100).name, "gemm_bf16_minmaxres_1x16_scalar");
        for tier in Tier::host() {
            for n in [1, 16, 17, 1280] {
                let k = select(tier, n);
                assert!(k.needs.granted(tier) && n > k.min_n, "{} for n={n} on {tier:?}", k.name);
                let fast = tier.bf16().is_some() && crate::isa::bf16_enabled();
                let vector = matches!(k.needs, Needs::Avx512Bf16 | Needs::AmxBf16);
                assert_eq!(vector, fast, "{} on {tier:?}", k.name);
                let amx = tier.amx().is_some() && crate::isa::amx_enabled();
                assert_eq!(k.needs == Needs::AmxBf16, amx, "{} on {tier:?}", k.name);
            }
        }
    }

    #[test]
    fn panel_ranges_compute_only_their_columns() {
        for (tier, kern) in host_kernels() {
            let (m, k, n) = (5, 7, 70);
            let w = vals(3, k * n);
            let p = PackedBf16Gemm::for_kernel(tier, kern, &w, k, n, &vec![0.5; n]);
            let a = vals(4, m * k);
            let mut full = vec![0.0; m * n];
            gemm_bf16(m, &a, k, &p, &mut full, n, MinMax::NONE, None);
            let mut parts = vec![f32::NAN; m * n];
            let half = p.panels() / 2;
            gemm_bf16_panels(m, &a, k, &p, &mut parts, n, MinMax::NONE, None, 0..half);
            assert!(parts[half * p.nr..n].iter().all(|v| v.is_nan()), "{}", kern.name);
            gemm_bf16_panels(m, &a, k, &p, &mut parts, n, MinMax::NONE, None, half..p.panels());
            assert_eq!(parts, full, "{}", kern.name);
        }
    }

    #[test]
    fn strided_output_leaves_gaps_untouched() {
        for (tier, kern) in host_kernels() {
            let (m, k, n) = (9, 5, 20);
            let w = vals(1, k * n);
            let p = PackedBf16Gemm::for_kernel(tier, kern, &w, k, n, &vec![0.0; n]);
            let a = vals(2, m * k);
            let mut c = vec![-7.0; m * 24];
            gemm_bf16(m, &a, k, &p, &mut c, 24, MinMax::NONE, None);
            for i in 0..m {
                assert!(c[i * 24 + 20..i * 24 + 24].iter().all(|v| *v == -7.0), "{}", kern.name);
            }
        }
    }
}
