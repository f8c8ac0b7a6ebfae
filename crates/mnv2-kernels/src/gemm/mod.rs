//! Pointwise (1x1) convolution as a matrix product with a fused epilogue:
//! `C[m][n] = clamp(bias[n] + sum_k A[m][k] * W[k][n]) + R[m][n]`.
//!
//! A is activations (pixels x input channels, NHWC rows with a row stride), W is packed once
//! at load time into panels of `nr` output channels (`[n / nr][k][nr]`, zero-padded), so the
//! micro-kernels stream it with aligned loads. The epilogue (bias, clamp for ReLU6, residual
//! add) runs on registers before the only store: no extra pass over the output.
//!
//! Kernels: `gemm_f32_minmaxres_14x32_avx512` (28 accumulators, 2 vectors wide; 24x16 when
//! the layer has <= 16 outputs), `gemm_f32_minmaxres_6x16_avx2`, and a portable scalar twin.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

use crate::aligned::AlignedVec;
use crate::isa::Isa;
use crate::MinMax;

/// 1x1 convolution weights packed for one ISA's kernels.
#[derive(Clone, Debug)]
pub struct PackedGemm {
    pub k: usize,
    pub n: usize,
    /// Output channels per panel.
    pub nr: usize,
    pub isa: Isa,
    /// `[panels][k][nr]`.
    pub(crate) data: AlignedVec,
    /// `[panels * nr]`.
    pub(crate) bias: AlignedVec,
}

impl PackedGemm {
    /// Packs `weights` (`[k][n]`, row-major) and `bias` (`[n]`) for `isa`.
    pub fn new(isa: Isa, weights: &[f32], k: usize, n: usize, bias: &[f32]) -> PackedGemm {
        assert_eq!(weights.len(), k * n, "weights are k x n");
        assert_eq!(bias.len(), n, "one bias per output");
        let nr = match isa {
            Isa::Avx512 if n > 16 => 32,
            _ => 16,
        };
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
        PackedGemm { k, n, nr, isa, data, bias: b }
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(self.nr)
    }

    /// Name of the micro-kernel this packing is for.
    pub fn kernel_name(&self) -> &'static str {
        match (self.isa, self.nr) {
            (Isa::Avx512, 32) => "gemm_f32_minmaxres_14x32_avx512",
            (Isa::Avx512, _) => "gemm_f32_minmaxres_24x16_avx512",
            (Isa::Avx2, _) => "gemm_f32_minmaxres_6x16_avx2",
            (Isa::Scalar, _) => "gemm_f32_minmaxres_4x16_scalar",
        }
    }
}

/// Raw arguments of a GEMM call; built and checked by [`gemm`].
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
/// Panics if a slice is too short for the strides, or if `w` was packed for an ISA this CPU
/// lacks (a bug in the caller; the engine checks both when it compiles a model).
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

/// [`gemm`] restricted to the output columns of `panels` (of `w.nr` columns each): threads
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
    assert!(panels.start <= panels.end && panels.end <= w.panels(), "panels out of range");
    if m == 0 || w.n == 0 || panels.is_empty() {
        return;
    }
    assert!(lda >= w.k && a.len() >= (m - 1) * lda + w.k, "A too short");
    assert!(ldc >= w.n && c.len() >= (m - 1) * ldc + w.n, "C too short");
    let (r, ldr) = match residual {
        Some((r, ldr)) => {
            assert!(ldr >= w.n && r.len() >= (m - 1) * ldr + w.n, "residual too short");
            (r.as_ptr(), ldr)
        }
        None => (std::ptr::null(), 0),
    };
    assert!(w.isa.supported(), "weights packed for {} on a CPU without it", w.isa.name());
    let args = Args { m, a: a.as_ptr(), lda, c: c.as_mut_ptr(), ldc, r, ldr, act, panels };
    // SAFETY: sizes checked above; the ISA is supported by this CPU.
    unsafe {
        match w.isa {
            Isa::Scalar => scalar::gemm(&args, w),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::gemm(&args, w),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::gemm(&args, w),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("non-x86 ISA tier"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::available;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        crate::test_vals::uniform(seed, n, -1.0, 2.0)
    }

    #[allow(clippy::too_many_arguments)]
    fn naive(
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
                let mut s = b[j] as f64;
                for kk in 0..k {
                    s += a[i * lda + kk] as f64 * w[kk * n + j] as f64;
                }
                let mut v = act.apply(s as f32);
                if let Some(r) = r {
                    v += r[i * n + j];
                }
                out[i * n + j] = v;
            }
        }
        out
    }

    #[test]
    fn every_isa_matches_naive_on_odd_and_real_shapes() {
        let isas = available();
        eprintln!("gemm tested on: {:?}", isas);
        let ms = [1, 2, 5, 6, 7, 13, 14, 15, 23, 24, 25, 28, 29, 49, 112];
        let kns = [
            (1, 1),
            (3, 5),
            (16, 96),
            (24, 144),
            (144, 24),
            (32, 16),
            (17, 33),
            (96, 24),
            (7, 47),
            (160, 960),
            (320, 1280),
            (8, 16),
            (16, 8),
        ];
        for isa in isas {
            for &(k, n) in &kns {
                let w = lcg(k as u64 * 31 + n as u64, k * n);
                let b = lcg(7 + n as u64, n);
                let p = PackedGemm::new(isa, &w, k, n, &b);
                for &m in &ms {
                    let lda = k + 3;
                    let a = lcg(m as u64, m * lda);
                    let r = lcg(99, m * n);
                    for (act, res) in [
                        (MinMax::NONE, None),
                        (MinMax::RELU6, Some(r.as_slice())),
                        (MinMax { min: -0.5, max: 0.25 }, None),
                    ] {
                        let want = naive(m, k, n, &a, lda, &w, &b, act, res);
                        let mut c = vec![f32::NAN; m * n];
                        gemm(m, &a, lda, &p, &mut c, n, act, res.map(|r| (r, n)));
                        let err = c.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                        assert!(
                            err <= 1e-5 * (k as f32).sqrt().max(1.0),
                            "{} m={m} k={k} n={n}: err {err}",
                            p.kernel_name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn panel_ranges_compute_only_their_columns() {
        for isa in available() {
            let (m, k, n) = (5, 7, 70);
            let w = lcg(3, k * n);
            let p = PackedGemm::new(isa, &w, k, n, &vec![0.5; n]);
            let a = lcg(4, m * k);
            let mut full = vec![0.0; m * n];
            gemm(m, &a, k, &p, &mut full, n, MinMax::NONE, None);
            let mut parts = vec![f32::NAN; m * n];
            let half = p.panels() / 2;
            gemm_panels(m, &a, k, &p, &mut parts, n, MinMax::NONE, None, 0..half);
            assert!(parts[half * p.nr..n].iter().all(|v| v.is_nan()), "{}", isa.name());
            gemm_panels(m, &a, k, &p, &mut parts, n, MinMax::NONE, None, half..p.panels());
            assert_eq!(parts, full, "{}", isa.name());
        }
    }

    #[test]
    fn strided_output_leaves_gaps_untouched() {
        for isa in available() {
            let (m, k, n) = (9, 5, 20);
            let w = lcg(1, k * n);
            let p = PackedGemm::new(isa, &w, k, n, &vec![0.0; n]);
            let a = lcg(2, m * k);
            let mut c = vec![-7.0; m * 24];
            gemm(m, &a, k, &p, &mut c, 24, MinMax::NONE, None);
            for i in 0..m {
                assert!(c[i * 24 + 20..i * 24 + 24].iter().all(|v| *v == -7.0), "{}", isa.name());
            }
        }
    }
}
