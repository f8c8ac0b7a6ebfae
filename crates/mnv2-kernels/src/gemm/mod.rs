//! Pointwise (1x1) convolution as a matrix product with a fused epilogue:
//! `C[m][n] = clamp(bias[n] + sum_k A[m][k] * W[k][n]) + R[m][n]`.
//!
//! A is activations (pixels x input channels, NHWC rows with a row stride), W is packed once
//! at load time into panels of `nr` output channels (`[n / nr][k][nr]`, zero-padded), so the
//! micro-kernels stream it with aligned loads. The epilogue (bias, clamp for ReLU6, residual
//! add) runs on registers before the only store: no extra pass over the output.
//!
//! Kernels: `gemm_f32_minmaxres_14x32_avx512` (28 accumulators, 2 vectors wide; 24x16 when
//! the layer has <= 16 outputs; a panel with padding columns runs a narrower tile, 24, 16 or 8
//! columns, with the same bits), `gemm_f32_minmaxres_6x16_avx2`, and a portable scalar twin.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

use crate::aligned::AlignedVec;
use crate::isa::{Isa, Needs, Tier};
use crate::MinMax;

/// One f32 GEMM micro-kernel: its name (the identity of the code: `{op}_{dtype}_{epilogue}_
/// {mr}x{nr}_{isa}`), what it needs, its panel width and the code itself.
#[derive(Debug)]
pub struct GemmKernel {
    /// The kernel's name, as profiles and `mnv2 bench` print it.
    pub name: &'static str,
    /// What the CPU must have.
    pub needs: Needs,
    /// Rows (pixels) per register tile.
    pub mr: usize,
    /// Output channels per packed panel.
    pub nr: usize,
    /// The kernel is chosen only for layers with more outputs than this (a wide tile wastes
    /// lanes on narrow layers).
    pub min_n: usize,
    /// # Safety
    /// `args` describe buffers valid for the packing, and the CPU has `needs`.
    run: unsafe fn(&Args, &PackedGemm),
}

/// Every f32 GEMM kernel built for this target, best first.
pub static KERNELS: &[GemmKernel] = &[
    #[cfg(target_arch = "x86_64")]
    GemmKernel {
        name: "gemm_f32_minmaxres_14x32_avx512",
        needs: Needs::Avx512,
        mr: 14,
        nr: 32,
        min_n: 16,
        run: avx512::gemm,
    },
    #[cfg(target_arch = "x86_64")]
    GemmKernel {
        name: "gemm_f32_minmaxres_24x16_avx512",
        needs: Needs::Avx512,
        mr: 24,
        nr: 16,
        min_n: 0,
        run: avx512::gemm,
    },
    #[cfg(target_arch = "x86_64")]
    GemmKernel { name: "gemm_f32_minmaxres_6x16_avx2", needs: Needs::Avx2, mr: 6, nr: 16, min_n: 0, run: avx2::gemm },
    GemmKernel {
        name: "gemm_f32_minmaxres_4x16_scalar",
        needs: Needs::Scalar,
        mr: 4,
        nr: 16,
        min_n: 0,
        run: scalar::gemm,
    },
];

/// The best kernel for a layer of `n` outputs on `tier`.
pub fn select(tier: Tier, n: usize) -> &'static GemmKernel {
    KERNELS.iter().find(|k| k.needs.selectable(tier) && n > k.min_n).expect("the scalar kernel serves every layer")
}

/// 1x1 convolution weights packed for one kernel.
#[derive(Clone, Debug)]
pub struct PackedGemm {
    /// Input channels.
    pub k: usize,
    /// Output channels.
    pub n: usize,
    /// Output channels per panel.
    pub nr: usize,
    /// The kernel, granted by the tier it was packed with.
    kernel: &'static GemmKernel,
    /// `[panels][k][nr]`.
    pub(crate) data: AlignedVec,
    /// `[panels * nr]`.
    pub(crate) bias: AlignedVec,
    /// Whether a panel with 17..=24 real columns runs the 24-column tile rather than the pair
    /// tile ([`crate::isa::split_512`], read when packing; every tile gives the same bits).
    pub(crate) split: bool,
}

impl PackedGemm {
    /// Packs `weights` (`[k][n]`, row-major) and `bias` (`[n]`) for the best kernel of `tier`.
    pub fn new(tier: Tier, weights: &[f32], k: usize, n: usize, bias: &[f32]) -> PackedGemm {
        PackedGemm::for_kernel(tier, select(tier, n), weights, k, n, bias)
    }

    /// Packs for `kernel`, which `tier` must grant (panics otherwise).
    pub fn for_kernel(
        tier: Tier,
        kernel: &'static GemmKernel,
        weights: &[f32],
        k: usize,
        n: usize,
        bias: &[f32],
    ) -> PackedGemm {
        kernel.needs.assert_granted(kernel.name, tier);
        assert_eq!(weights.len(), k * n, "weights are k x n");
        assert_eq!(bias.len(), n, "one bias per output");
        let nr = kernel.nr;
        let panels = n.div_ceil(nr);
        let mut data = AlignedVec::zeros(panels * k * nr);
        let mut b = AlignedVec::zeros(panels * nr);
        for p in 0..panels {
            for kk in 0..k {
                for j in 0..nr.min(n - p * nr) {
                    data[(p * k + kk) * nr + j] = weights[kk * n + p * nr + j];
                }
            }
        }
        b[..n].copy_from_slice(bias);
        PackedGemm { k, n, nr, kernel, data, bias: b, split: crate::isa::split_512() }
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

/// Rows of the register tile that starts with `left` rows to go, at most `mr` per tile:
/// `mr`, but half (rounded up) of a remainder that one more full tile would leave short (13
/// rows at 6 per tile: 7 + 6, not 6 + 6 + 1). The AVX2 GEMMs (f32 and int8) tile so: a tile of
/// one or two rows has too few accumulators to hide the FMA or multiply latency.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn tile_rows(left: usize, mr: usize) -> usize {
    if left > mr && left < 2 * mr {
        left.div_ceil(2)
    } else {
        left.min(mr)
    }
}

/// Raw arguments of a GEMM call (f32 or bf16); built and checked by [`Args::checked`].
#[derive(Clone)]
pub(crate) struct Args {
    pub m: usize,
    pub a: *const f32,
    pub lda: usize,
    pub c: *mut f32,
    pub ldc: usize,
    /// Null for no residual.
    pub r: *const f32,
    pub ldr: usize,
    pub act: MinMax,
    /// The panels of output columns to compute.
    pub panels: std::ops::Range<usize>,
}

/// `c[i * ldc + j] = act(bias[j] + sum_k a[i * lda + k] * w[k][j]) (+ residual[i * ldr + j])`
/// for `i < m`, `j < w.n`.
///
/// Panics if a slice is too short for the strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    a: &[f32],
    lda: usize,
    w: &PackedGemm,
    c: &mut [f32],
    ldc: usize,
    act: MinMax,
    residual: Option<(&[f32], usize)>,
) {
    gemm_panels(m, a, lda, w, c, ldc, act, residual, 0..w.panels())
}

/// [`gemm()`] restricted to the output columns of `panels` (of `w.nr` columns each): threads
/// can share one product by columns.
#[allow(clippy::too_many_arguments)]
pub fn gemm_panels(
    m: usize,
    a: &[f32],
    lda: usize,
    w: &PackedGemm,
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
    unsafe { (w.kernel.run)(&args, w) }
}

impl Args {
    /// The raw arguments of a product of `m` rows of `a` (f32 values, or bf16 pairs for the
    /// bf16 GEMM's pre-rounded rows: `lda` and `k` count elements of `T`) with packed `k x n`
    /// weights of `total` panels, into C of `C` (f32, or bf16 for the bf16 GEMM's rounded
    /// outputs: `ldc` counts elements of `C`), once every slice is checked long enough for its strides
    /// (panics otherwise); `None` when there is nothing to compute. Shared by the f32 and bf16
    /// GEMMs.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn checked<T, C>(
        m: usize,
        a: &[T],
        lda: usize,
        (k, n, total): (usize, usize, usize),
        c: &mut [C],
        ldc: usize,
        act: MinMax,
        residual: Option<(&[f32], usize)>,
        panels: std::ops::Range<usize>,
    ) -> Option<Args> {
        assert!(panels.start <= panels.end && panels.end <= total, "panels out of range");
        if m == 0 || n == 0 || panels.is_empty() {
            return None;
        }
        assert!(lda >= k && a.len() >= (m - 1) * lda + k, "A too short");
        assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "C too short");
        let (r, ldr) = match residual {
            Some((r, ldr)) => {
                assert!(ldr >= n && r.len() >= (m - 1) * ldr + n, "residual too short");
                (r.as_ptr(), ldr)
            }
            None => (std::ptr::null(), 0),
        };
        Some(Args { m, a: a.as_ptr().cast(), lda, c: c.as_mut_ptr().cast(), ldc, r, ldr, act, panels })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        crate::test_vals::uniform(seed, n, -1.0, 2.0)
    }

    /// Every kernel of the registry the host runs, with the host's best tier (which grants it);
    /// the others print `SKIPPED`.
    fn host_kernels() -> Vec<(Tier, &'static GemmKernel)> {
        let tier = *Tier::host().last().expect("scalar");
        KERNELS.iter().filter(|k| crate::isa::runs_or_skips(k.name, k.needs)).map(|k| (tier, k)).collect()
    }

    #[test]
    fn every_kernel_matches_the_reference_on_edge_and_real_shapes() {
        let kernels = host_kernels();
        eprintln!("gemm kernels tested: {:?}", kernels.iter().map(|k| k.1.name).collect::<Vec<_>>());
        // Each kernel's cases: row counts and shapes around its own tile, and every distinct
        // pointwise shape class of MobileNetV2 224/1.0 (k, n). Short remainders (split into
        // two tiles by the AVX2 kernel) and the rows of its 12-row one-vector tile (13, 23,
        // 25) too.
        let cases = |mr: usize, nr: usize| {
            let mut ms = vec![0, 1, mr - 1, mr, mr + 1, mr + 3, 2 * mr - 1, 2 * mr + 1, 13, 23, 25, 49, 112];
            ms.sort_unstable();
            ms.dedup();
            let mut kns = vec![(1, 1), (3, nr - 1), (7, nr), (5, nr + 1), (17, 2 * nr + 1)];
            kns.extend([(16, 96), (24, 144), (144, 24), (32, 16), (96, 24), (160, 960), (320, 1280), (8, 16)]);
            (ms, kns)
        };
        let mut shapes: Vec<(usize, usize)> = kernels.iter().flat_map(|(_, kern)| cases(kern.mr, kern.nr).1).collect();
        shapes.sort_unstable();
        shapes.dedup();
        // Shape by shape, so that the definition of a case is computed once for every kernel
        // that runs it: it is most of the work (scripts/emu runs this test on an emulated CPU
        // a hundred times slower).
        for (k, n) in shapes {
            let w = lcg(k as u64 * 31 + n as u64, k * n);
            let b = lcg(7 + n as u64, n);
            let mut wants: HashMap<(usize, usize), Vec<f32>> = HashMap::new();
            for &(tier, kern) in &kernels {
                let (ms, kns) = cases(kern.mr, kern.nr);
                if !kns.contains(&(k, n)) {
                    continue;
                }
                let p = PackedGemm::for_kernel(tier, kern, &w, k, n, &b);
                assert_eq!(p.kernel_name(), kern.name);
                for m in ms {
                    let lda = k + 3;
                    let a = lcg(m as u64, m * lda);
                    let r = lcg(99, m * n);
                    for (clamp, (act, res)) in [
                        (MinMax::NONE, None),
                        (MinMax::RELU6, Some(r.as_slice())),
                        (MinMax { min: -0.5, max: 0.25 }, None),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let want = wants
                            .entry((m, clamp))
                            .or_insert_with(|| crate::reference::gemm_f32(m, k, n, &a, lda, &w, &b, act, res));
                        let mut c = vec![f32::NAN; m * n];
                        gemm(m, &a, lda, &p, &mut c, n, act, res.map(|r| (r, n)));
                        let err = c.iter().zip(want.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                        assert!(err <= 1e-5 * (k as f32).sqrt().max(1.0), "{} m={m} k={k} n={n}: err {err}", kern.name);
                    }
                }
            }
        }
    }

    /// Per output element: the bias, then one fused multiply-add per input channel in channel
    /// order, the clamp, the residual: the chain every vector kernel runs in each lane.
    #[allow(clippy::too_many_arguments)]
    fn fma_chain(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        lda: usize,
        w: &[f32],
        b: &[f32],
        act: MinMax,
        r: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let s = (0..k).fold(b[j], |s, kk| a[i * lda + kk].mul_add(w[kk * n + j], s));
                out[i * n + j] = act.apply(s) + r.map_or(0.0, |r| r[i * n + j]);
            }
        }
        out
    }

    #[test]
    fn vector_kernels_are_bit_exact_for_every_last_panel_width() {
        // Every width of the last panel (1..=nr real columns, so the narrow tiles of a
        // 32-column panel with <= 24, <= 16, <= 8 columns), one to three panels, row counts
        // around the tile height, with and without residual, whole and panel by panel, with
        // the 24-column tile and the pair tile (`split`, whatever this CPU is): the same bits as the
        // fused chain (so as every earlier version of the kernels).
        let vector = host_kernels().into_iter().filter(|(_, k)| k.needs != Needs::Scalar);
        for ((tier, kern), split) in vector.flat_map(|tk| [(tk, false), (tk, true)]) {
            let (mr, nr) = (kern.mr, kern.nr);
            let ms = [1, mr - 1, mr, mr + 1, 2 * mr + 3, 49];
            for n in (1..=2 * nr + 8).chain([144, 24 + 2 * nr]) {
                let k = if n % 2 == 0 { 24 } else { 7 };
                let w = lcg(k as u64 * 31 + n as u64, k * n);
                let b = lcg(7 + n as u64, n);
                let mut p = PackedGemm::for_kernel(tier, kern, &w, k, n, &b);
                p.split = split;
                for &m in &ms {
                    let lda = k + 1;
                    let a = lcg(m as u64 + 5, m * lda);
                    let r = lcg(98, m * n);
                    for (act, res) in [(MinMax::RELU6, Some(r.as_slice())), (MinMax { min: -0.5, max: 0.25 }, None)] {
                        let want = fma_chain(m, k, n, &a, lda, &w, &b, act, res);
                        let mut c = vec![f32::NAN; m * n];
                        gemm(m, &a, lda, &p, &mut c, n, act, res.map(|r| (r, n)));
                        let same = c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{} m={m} k={k} n={n} split {split}: not the fused chain's bits", kern.name);
                        let mut parts = vec![f32::NAN; m * n];
                        for q in 0..p.panels() {
                            gemm_panels(m, &a, lda, &p, &mut parts, n, act, res.map(|r| (r, n)), q..q + 1);
                        }
                        assert!(
                            parts.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{} panels n={n}",
                            kern.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn selection_follows_the_tier_and_the_width() {
        assert_eq!(select(Tier::Scalar, 100).name, "gemm_f32_minmaxres_4x16_scalar");
        for tier in Tier::host() {
            for n in [1, 16, 17, 1280] {
                let k = select(tier, n);
                assert!(k.needs.granted(tier) && n > k.min_n, "{} for n={n} on {tier:?}", k.name);
                // Best first: no earlier entry would have served.
                let first = KERNELS.iter().position(|e| e.name == k.name).unwrap();
                assert!(KERNELS[..first].iter().all(|e| !e.needs.granted(tier) || n <= e.min_n));
            }
        }
    }

    #[test]
    fn panel_ranges_compute_only_their_columns() {
        for (tier, kern) in host_kernels() {
            let (m, k, n) = (5, 7, 70);
            let w = lcg(3, k * n);
            let p = PackedGemm::for_kernel(tier, kern, &w, k, n, &vec![0.5; n]);
            let a = lcg(4, m * k);
            let mut full = vec![0.0; m * n];
            gemm(m, &a, k, &p, &mut full, n, MinMax::NONE, None);
            let mut parts = vec![f32::NAN; m * n];
            let half = p.panels() / 2;
            gemm_panels(m, &a, k, &p, &mut parts, n, MinMax::NONE, None, 0..half);
            assert!(parts[half * p.nr..n].iter().all(|v| v.is_nan()), "{}", kern.name);
            gemm_panels(m, &a, k, &p, &mut parts, n, MinMax::NONE, None, half..p.panels());
            assert_eq!(parts, full, "{}", kern.name);
        }
    }

    #[test]
    fn strided_output_leaves_gaps_untouched() {
        for (tier, kern) in host_kernels() {
            let (m, k, n) = (9, 5, 20);
            let w = lcg(1, k * n);
            let p = PackedGemm::for_kernel(tier, kern, &w, k, n, &vec![0.0; n]);
            let a = lcg(2, m * k);
            let mut c = vec![-7.0; m * 24];
            gemm(m, &a, k, &p, &mut c, 24, MinMax::NONE, None);
            for i in 0..m {
                assert!(c[i * 24 + 20..i * 24 + 24].iter().all(|v| *v == -7.0), "{}", kern.name);
            }
        }
    }
}
