//! The int8 stem: the image quantised to u8 codes, the weights to s8 per output channel, the
//! 27 products of each output summed exactly in i32 (`vpdpbusd`; `vpmaddwd` on AVX2), one
//! rounding to the output's u8 codes. The int8 network runs it when its quantisation records
//! the image's (`QuantSpec::input`); it then holds no f32 activation at all before the pooled
//! features.
//!
//! Per output row a kernel quantises the three image rows it reads, per (window row, image
//! channel): columns outside the image take the input's zero point, whose products the sums'
//! start cancels, so every pixel is an interior one. The three taps `kx` of one window row and
//! channel are three consecutive columns: one quad of codes (the fourth byte meets a zero
//! weight) against a vector of weight quads, nine `vpdpbusd` per 16 output channels and
//! pixel, where the f32 stem runs 27 FMAs. The twin keeps nine padded planes of codes and
//! reads each pixel's quads from them; the VNNI kernel builds the quads themselves, one dword
//! per output pixel. The AVX2 kernel, without `vpdpbusd` (and `vpmaddubsw` saturates), builds
//! pairs of i16 codes instead, one dword per output pixel, and sums 14 `vpmaddwd` per 8
//! output channels and pixel against the weights' pairs (`PackedStemQ::pairs`).
//!
//! Codes: `code(v) = round_half_even(clamp(v / s, -z, 255 - z)) + z` with `v / s` computed as
//! `v * (1 / s)`: [`QParams::quantize`] for every finite `v`; NaN gives code 0.

use crate::aligned::AlignedVec;
use crate::dwconv::Requant;
use crate::isa::{Isa, Needs, Tier};
use crate::qgemm::{quantize_weights, QParams};
use crate::MinMax;

use super::{Image, StemGeom};

/// One int8 stem kernel: its name, what it needs, the widest layer it serves, its code.
#[derive(Debug)]
pub struct StemQKernel {
    /// The kernel's name, as profiles and `mnv2 bench` print it.
    pub name: &'static str,
    /// What the CPU must have.
    pub needs: Needs,
    /// Most output channels the kernel holds in registers.
    pub max_c: usize,
    /// # Safety
    /// The arguments are valid for the packing, and the CPU has `needs`.
    run: unsafe fn(&QArgs, &PackedStemQ),
    /// Bytes the kernel stages per thread for one output row of a geometry (see
    /// [`PackedStemQ::staging_bytes`]).
    staging: fn(StemGeom) -> usize,
}

/// Every int8 stem kernel, best first.
pub static KERNELS_INT8: &[StemQKernel] = &[
    #[cfg(target_arch = "x86_64")]
    StemQKernel {
        name: "stem_u8s8s32_requant_3x3s2_avx512vnni",
        needs: Needs::Avx512Vnni,
        max_c: 48,
        run: super::avx512vnni::row,
        staging: super::avx512vnni::staging_bytes,
    },
    #[cfg(target_arch = "x86_64")]
    StemQKernel {
        name: "stem_u8s8s32_requant_3x3s2_avx2",
        needs: Needs::Avx2,
        max_c: 48,
        run: super::avx2::row_q,
        staging: super::avx2::staging_bytes_q,
    },
    StemQKernel {
        name: "stem_u8s8s32_requant_3x3s2_scalar",
        needs: Needs::Scalar,
        max_c: usize::MAX,
        run: super::scalar::row_q,
        staging: super::scalar::staging_bytes_q,
    },
];

/// The int8 stem's weights, packed for one kernel, with the quantisations it was packed for.
#[derive(Clone, Debug)]
pub struct PackedStemQ {
    /// Output channels.
    pub c: usize,
    pub(crate) c_pad: usize,
    /// `[ky][ci][c_pad]` words of four s8 weights: taps `kx` = 0, 1, 2 of window row `ky` and
    /// image channel `ci`, then a zero.
    pub(crate) quads: AlignedVec<i32>,
    /// The same weights as `[14][c_pad]` words of two i16 (the first in the low half), for
    /// `vpmaddwd` (the AVX2 kernel): pairs 0..9 taps `kx` = 0 and 1 of window row `ky` and
    /// image channel `ci` (`ky * 3 + ci`), pairs 9..14 the taps `kx` = 2 of those nine in
    /// order, two per pair (the last with a zero).
    pub(crate) pairs: AlignedVec<i32>,
    /// Per channel, the sum's start: `-input.zero * (sum of the channel's 27 weights)`.
    pub(crate) start: AlignedVec<i32>,
    /// Per channel, the sum's multiplier and addend in output codes (one FMA).
    pub(crate) mul: AlignedVec<f32>,
    pub(crate) add: AlignedVec<f32>,
    /// The activation as output codes.
    pub(crate) lo: f32,
    pub(crate) hi: f32,
    /// The image's quantisation.
    pub input: QParams,
    pub(crate) kernel: &'static StemQKernel,
}

impl PackedStemQ {
    /// `weights` are HWIO `[3][3][3][c]` reals, quantised here per output channel; `input` is
    /// the image's quantisation, `act` the activation and `output` the codes the row holds.
    pub fn new(
        tier: Tier,
        weights: &[f32],
        c: usize,
        bias: &[f32],
        input: QParams,
        act: MinMax,
        output: QParams,
    ) -> PackedStemQ {
        let k = KERNELS_INT8
            .iter()
            .find(|k| k.needs.selectable(tier) && c <= k.max_c)
            .expect("the scalar kernel serves every width");
        PackedStemQ::for_kernel(tier, k, weights, c, bias, input, act, output)
    }

    /// Packs for `kernel`, which `tier` must grant and which must hold `c` outputs.
    #[allow(clippy::too_many_arguments)]
    pub fn for_kernel(
        tier: Tier,
        kernel: &'static StemQKernel,
        weights: &[f32],
        c: usize,
        bias: &[f32],
        input: QParams,
        act: MinMax,
        output: QParams,
    ) -> PackedStemQ {
        kernel.needs.assert_granted(kernel.name, tier);
        assert!(c <= kernel.max_c, "{} holds at most {} outputs, not {c}", kernel.name, kernel.max_c);
        assert_eq!(weights.len(), 27 * c, "27 taps of {c} channels");
        assert_eq!(bias.len(), c, "one bias per channel");
        assert!((0..=255).contains(&input.zero) && input.scale > 0.0, "input quantisation {input:?}");
        let (q, w_scale) = quantize_weights(weights, 27, c);
        let c_pad = c.next_multiple_of(16);
        let mut quads = AlignedVec::<i32>::zeros(9 * c_pad);
        let mut pairs = AlignedVec::<i32>::zeros(14 * c_pad);
        let mut start = AlignedVec::<i32>::zeros(c_pad);
        let mut mul = AlignedVec::<f32>::zeros(c_pad);
        let mut add = AlignedVec::<f32>::zeros(c_pad);
        let rq = Requant::new(act, output);
        for co in 0..c {
            let tap = |ky: usize, kx: usize, ci: usize| q[((ky * 3 + kx) * 3 + ci) * c + co];
            let pair = |a: i8, b: i8| (a as i16 as u16 as u32 | (b as i16 as u16 as u32) << 16) as i32;
            let mut sum = 0i32;
            let mut third = [0i8; 10];
            for ky in 0..3 {
                for ci in 0..3 {
                    let b = [tap(ky, 0, ci), tap(ky, 1, ci), tap(ky, 2, ci), 0];
                    sum += b.iter().map(|&v| v as i32).sum::<i32>();
                    quads[(ky * 3 + ci) * c_pad + co] = i32::from_le_bytes(b.map(|v| v as u8));
                    pairs[(ky * 3 + ci) * c_pad + co] = pair(b[0], b[1]);
                    third[ky * 3 + ci] = b[2];
                }
            }
            for m in 0..5 {
                pairs[(9 + m) * c_pad + co] = pair(third[2 * m], third[2 * m + 1]);
            }
            start[co] = -input.zero * sum;
            mul[co] = input.scale * w_scale[co] * rq.inv;
            add[co] = bias[co].mul_add(rq.inv, rq.zero);
        }
        PackedStemQ { c, c_pad, quads, pairs, start, mul, add, lo: rq.lo as f32, hi: rq.hi as f32, input, kernel }
    }

    /// Name of the kernel this packing is for.
    pub fn kernel_name(&self) -> &'static str {
        self.kernel.name
    }

    /// Bytes the kernel keeps per thread, outside the caller's buffers, to compute rows of
    /// geometry `g` (its window planes), for the engine's activation accounting.
    pub fn staging_bytes(&self, g: StemGeom) -> usize {
        (self.kernel.staging)(g)
    }

    /// The tier of the kernel this packing is for.
    pub fn isa(&self) -> Isa {
        self.kernel.needs.tier()
    }

    /// The code of sum `acc` of channel `co` (the scalar form of the kernels' epilogue).
    #[inline(always)]
    pub(crate) fn code(&self, acc: i32, co: usize) -> u8 {
        (acc as f32).mul_add(self.mul[co], self.add[co]).max(self.lo).min(self.hi).round_ties_even() as u8
    }
}

/// The image code of `v` under `q` (see the module docs), with `inv = 1 / q.scale`.
#[inline(always)]
pub(crate) fn image_code(v: f32, inv: f32, q: QParams) -> u8 {
    let z = q.zero as f32;
    ((v * inv).max(-z).min(255.0 - z).round_ties_even() as i32 + q.zero) as u8
}

/// Bytes of one window plane: the columns an output row reads, and the slack byte of the
/// last pixel's broadcast.
pub(crate) fn plane_len(g: StemGeom) -> usize {
    g.w_out.saturating_sub(1) * g.stride + 4
}

pub(crate) struct QArgs<'a> {
    pub img: Image<'a>,
    pub oy: usize,
    pub g: StemGeom,
    pub out: *mut u8,
}

impl QArgs<'_> {
    /// The image row window row `ky` reads, if inside the image.
    pub fn image_row(&self, ky: usize) -> Option<usize> {
        let iy = (self.oy * self.g.stride + ky) as isize - self.g.pad_top as isize;
        (iy >= 0 && (iy as usize) < self.img.h).then_some(iy as usize)
    }

    /// The columns `a..b` of a plane that lie inside the image.
    pub fn inside(&self, len: usize) -> (usize, usize) {
        let a = self.g.pad_left.min(len);
        (a, (self.g.pad_left + self.img.w).min(len).max(a))
    }
}

/// Output row `oy` of the int8 stem: `g.w_out * p.c` u8 codes, NHWC. The stride must be 2
/// (MobileNetV2's stem; the kernels build their quads for it).
pub fn stem_row_q(p: &PackedStemQ, img: Image, oy: usize, g: StemGeom, out: &mut [u8]) {
    assert_eq!(g.stride, 2, "the int8 stem is stride 2");
    assert!(out.len() >= g.w_out * p.c, "output row too short");
    super::check_row(&img, oy, g);
    let args = QArgs { img, oy, g, out: out.as_mut_ptr() };
    // SAFETY: sizes checked above; the packing's kernel was granted by a `Tier`.
    unsafe { (p.kernel.run)(&args, p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_codes_are_quantize() {
        let q = QParams { scale: 0.03, zero: 77 };
        for v in [-1e9f32, -3.0, -2.31, -0.015, 0.0, 0.015, 0.045, 1.0, 5.4, 1e9, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(image_code(v, 1.0 / q.scale, q), q.quantize(v.clamp(-1e6, 1e6)), "{v}");
        }
        assert_eq!(image_code(f32::NAN, 1.0 / q.scale, q), 0);
    }
}
