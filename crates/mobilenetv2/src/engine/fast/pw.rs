//! A pointwise (1x1) convolution packed for the f32 or the bf16 GEMM kernels: what the f32
//! network and the heads hold for each 1x1 layer, so one executor serves both precisions.

use std::ops::Range;

use mnv2_kernels::bf16gemm::{
    gemm_bf16_pairs_panels, gemm_bf16_panels, gemm_bf16_to_bf16, gemm_bf16_to_bf16_pairs, Bf16, PackedBf16Gemm,
};
use mnv2_kernels::gemm::{gemm_panels, PackedGemm};
use mnv2_kernels::{MinMax, Tier};

/// Weights of one 1x1 convolution, packed for one kernel family.
pub(crate) enum PackedPw {
    /// f32 products.
    F32(PackedGemm),
    /// bf16 products, f32 sums (activations rounded to bf16 on entry).
    Bf16(PackedBf16Gemm),
}

impl PackedPw {
    /// Packs `weights` (`[k][n]`) and `bias` (`[n]`) for the best kernel of `tier`, in bf16
    /// when `bf16`.
    pub fn new(tier: Tier, bf16: bool, weights: &[f32], k: usize, n: usize, bias: &[f32]) -> PackedPw {
        if bf16 {
            PackedPw::Bf16(PackedBf16Gemm::new(tier, weights, k, n, bias))
        } else {
            PackedPw::F32(PackedGemm::new(tier, weights, k, n, bias))
        }
    }

    /// A copy with `bias` (`[n]`) in place of the packed bias.
    pub fn with_bias(&self, bias: &[f32]) -> PackedPw {
        match self {
            PackedPw::F32(w) => {
                let mut w = w.clone();
                w.set_bias(bias);
                PackedPw::F32(w)
            }
            PackedPw::Bf16(w) => {
                let mut w = w.clone();
                w.set_bias(bias);
                PackedPw::Bf16(w)
            }
        }
    }

    /// Output channels.
    pub fn n(&self) -> usize {
        match self {
            PackedPw::F32(w) => w.n,
            PackedPw::Bf16(w) => w.n,
        }
    }

    /// Output channels per panel.
    pub fn nr(&self) -> usize {
        match self {
            PackedPw::F32(w) => w.nr,
            PackedPw::Bf16(w) => w.nr,
        }
    }

    /// Panels of [`PackedPw::nr`] output channels.
    pub fn panels(&self) -> usize {
        match self {
            PackedPw::F32(w) => w.panels(),
            PackedPw::Bf16(w) => w.panels(),
        }
    }

    /// The micro-kernel's name.
    pub fn kernel_name(&self) -> &'static str {
        match self {
            PackedPw::F32(w) => w.kernel_name(),
            PackedPw::Bf16(w) => w.kernel_name(),
        }
    }

    /// `c = act(a w + bias) (+ residual)` for `m` rows (see `mnv2_kernels::gemm::gemm`).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        m: usize,
        a: &[f32],
        lda: usize,
        c: &mut [f32],
        ldc: usize,
        act: MinMax,
        residual: Option<(&[f32], usize)>,
    ) {
        self.gemm_panels(m, a, lda, c, ldc, act, residual, 0..self.panels())
    }

    /// [`PackedPw::gemm`] on A rows already rounded to bf16 (bf16 packings only; even `k`
    /// and `lda`).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_rows(
        &self,
        m: usize,
        a: &[Bf16],
        lda: usize,
        c: &mut [f32],
        ldc: usize,
        act: MinMax,
        residual: Option<(&[f32], usize)>,
    ) {
        match self {
            PackedPw::F32(_) => unreachable!("bf16 rows go to bf16 packings only"),
            PackedPw::Bf16(w) => gemm_bf16_pairs_panels(m, a, lda, w, c, ldc, act, residual, 0..w.panels()),
        }
    }

    /// [`PackedPw::gemm`] (no residual) with its results rounded to bf16 (bf16 packings only),
    /// in plain rows or, with `pairs`, in pixel pairs (`gemm_bf16_to_bf16_pairs`).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_to_bf16(&self, m: usize, a: &[f32], lda: usize, c: &mut [Bf16], ldc: usize, act: MinMax, pairs: bool) {
        match self {
            PackedPw::F32(_) => unreachable!("bf16 outputs come from bf16 packings only"),
            PackedPw::Bf16(w) if pairs => gemm_bf16_to_bf16_pairs(m, a, lda, w, c, ldc, act),
            PackedPw::Bf16(w) => gemm_bf16_to_bf16(m, a, lda, w, c, ldc, act),
        }
    }

    /// [`PackedPw::gemm`] for the output columns of `panels` only.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_panels(
        &self,
        m: usize,
        a: &[f32],
        lda: usize,
        c: &mut [f32],
        ldc: usize,
        act: MinMax,
        residual: Option<(&[f32], usize)>,
        panels: Range<usize>,
    ) {
        match self {
            PackedPw::F32(w) => gemm_panels(m, a, lda, w, c, ldc, act, residual, panels),
            PackedPw::Bf16(w) => gemm_bf16_panels(m, a, lda, w, c, ldc, act, residual, panels),
        }
    }
}
