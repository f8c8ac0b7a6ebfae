//! The stem: a dense 3x3 stride-2 convolution from the 3 image channels, one output row per
//! call, reading the image in NCHW (as PyTorch and `.npy` inputs hold it) or NHWC without a
//! transposing pass. Fused epilogue: bias, clamp.
//!
//! Kernels: `stem_f32_minmax_3x3s2_avx512` (4 pixels x up to 48 output channels in
//! registers; weights `[27][c_pad]` from L1) and a portable twin (also used for AVX2: the
//! stem is 3.6% of the network's multiply-adds).

#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

use crate::aligned::AlignedVec;
use crate::isa::Isa;
use crate::MinMax;

/// Memory layout of a 3-channel image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// One image: `3 * h * w` values.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    pub data: &'a [f32],
    pub h: usize,
    pub w: usize,
    pub layout: Layout,
}

impl Image<'_> {
    /// (channel stride, row stride, pixel stride).
    pub(crate) fn strides(&self) -> (usize, usize, usize) {
        match self.layout {
            Layout::Nchw => (self.h * self.w, self.w, 1),
            Layout::Nhwc => (1, self.w * 3, 3),
        }
    }
}

/// Stem weights `[ky][kx][ci][co]` packed as `[27][c_pad]` with bias.
#[derive(Clone, Debug)]
pub struct PackedStem {
    pub c: usize,
    pub isa: Isa,
    pub(crate) c_pad: usize,
    pub(crate) weights: AlignedVec,
    pub(crate) bias: AlignedVec,
}

impl PackedStem {
    /// `weights` are HWIO `[3][3][3][c]`.
    pub fn new(isa: Isa, weights: &[f32], c: usize, bias: &[f32]) -> PackedStem {
        assert_eq!(weights.len(), 27 * c);
        assert_eq!(bias.len(), c);
        // The AVX-512 kernel holds up to 3 vectors of outputs per pixel.
        let isa = if isa == Isa::Avx512 && c > 48 { Isa::Scalar } else { isa };
        let c_pad = c.next_multiple_of(16);
        let mut w = AlignedVec::zeros(27 * c_pad);
        for t in 0..27 {
            w[t * c_pad..t * c_pad + c].copy_from_slice(&weights[t * c..(t + 1) * c]);
        }
        let mut b = AlignedVec::zeros(c_pad);
        b[..c].copy_from_slice(bias);
        PackedStem { c, isa, c_pad, weights: w, bias: b }
    }

    pub fn kernel_name(&self) -> &'static str {
        match self.isa {
            Isa::Avx512 => "stem_f32_minmax_3x3s2_avx512",
            _ => "stem_f32_minmax_3x3s2_scalar",
        }
    }
}

/// Geometry of the stem's output rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StemGeom {
    pub w_out: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
}

pub(crate) struct Args<'a> {
    pub img: Image<'a>,
    pub oy: usize,
    pub g: StemGeom,
    pub act: MinMax,
    pub out: *mut f32,
}

/// Output row `oy` (`g.w_out * p.c` values, NHWC).
pub fn stem_row(p: &PackedStem, img: Image, oy: usize, g: StemGeom, act: MinMax, out: &mut [f32]) {
    assert_eq!(img.data.len(), 3 * img.h * img.w, "image size");
    assert!(out.len() >= g.w_out * p.c, "output row too short");
    assert!(g.w_out == 0 || (g.w_out - 1) * g.stride < img.w + g.pad_left, "output wider than the image allows");
    assert!(oy * g.stride < img.h + g.pad_top, "row below the image");
    let args = Args { img, oy, g, act, out: out.as_mut_ptr() };
    match p.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(Isa::Avx512.supported());
            // SAFETY: sizes checked above; AVX-512 present.
            unsafe { avx512::row(&args, p) }
        }
        _ => scalar::row(&args, p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::available;
    use crate::{reference, ConvGeom};

    #[test]
    fn every_isa_and_layout_matches_reference() {
        for isa in available() {
            for (h, w, c, pt, pl, pb, pr) in [
                (9, 11, 32, 1, 1, 1, 1),
                (8, 8, 16, 0, 0, 1, 1),
                (7, 33, 48, 1, 1, 1, 1),
                (12, 10, 24, 1, 1, 1, 1),
                (5, 5, 8, 1, 1, 1, 1),
                (6, 6, 56, 1, 1, 1, 1),
            ] {
                let out_h = (h + pt + pb - 3) / 2 + 1;
                let w_out = (w + pl + pr - 3) / 2 + 1;
                let nhwc: Vec<f32> = (0..h * w * 3).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
                let mut nchw = vec![0.0; nhwc.len()];
                for p in 0..h * w {
                    for ch in 0..3 {
                        nchw[ch * h * w + p] = nhwc[p * 3 + ch];
                    }
                }
                let wts: Vec<f32> = (0..27 * c).map(|i| ((i * 13 % 29) as f32 - 14.0) / 10.0).collect();
                let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.1 - 1.0).collect();
                let act = MinMax::RELU6;
                let g = ConvGeom {
                    in_h: h,
                    in_w: w,
                    in_c: 3,
                    out_h,
                    out_w: w_out,
                    out_c: c,
                    kernel: 3,
                    stride: 2,
                    dilation: 1,
                    pad_top: pt,
                    pad_left: pl,
                    groups: 1,
                };
                let mut want = vec![0.0; out_h * w_out * c];
                reference::conv2d_f32(&g, &nhwc, &wts, &bias, act, None, &mut want);
                let p = PackedStem::new(isa, &wts, c, &bias);
                for (data, layout) in [(&nchw, Layout::Nchw), (&nhwc, Layout::Nhwc)] {
                    let img = Image { data, h, w, layout };
                    let mut got = vec![f32::NAN; want.len()];
                    for oy in 0..out_h {
                        let sg = StemGeom { w_out, stride: 2, pad_top: pt, pad_left: pl };
                        stem_row(&p, img, oy, sg, act, &mut got[oy * w_out * c..(oy + 1) * w_out * c]);
                    }
                    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(err < 1e-5, "{} {layout:?} {h}x{w}x{c}: {err}", p.kernel_name());
                }
            }
        }
    }
}
