//! Depthwise 3x3 convolution, output row by output row, with a fused epilogue (bias, clamp).
//!
//! The caller hands the three input rows each output row reads (`None` for a padding row);
//! so the kernel serves any source of rows: a whole tensor, or the ring of expanded rows of
//! the fused inverted residual, where the wide tensor never exists whole. A call may take
//! several output rows ([`dwconv_rows`]): the AVX-512 kernels (and the AVX2 ones, by
//! 8-channel tiles) then run each channel tile across all of them before the next, so the
//! input rows they share are read from L2 once per tile instead of once per output row (the
//! expanded rows of a 56-wide block are 32 KB each; three of them do not fit L1). Rows are
//! NHWC (pixel stride = channels). Stride 1 or 2, any dilation (atrous, for segmentation), any
//! left padding; the right padding follows from the widths.
//!
//! int8 rows: u8 activations (zero point 0, as every depthwise input is a ReLU6 output) times
//! int8 weights (per channel, [`PackedDw::quantized`]), summed exactly as integers; the
//! epilogue (`Requant`) scales each sum to the output's codes. Exact sums make every int8
//! kernel give the same bytes whatever its order of summation.
//!
//! Kernels: `dwconv_u8_minmax_3x3c64_avx512vnni` (64 channels at a time, the three rows of a
//! pixel interleaved into byte quads by in-lane unpacks, three `vpdpbusd` per 16 channels of
//! an output pixel), `dwconv_{f32,u8}_minmax_3x3c16_avx512`
//! (weights of a 16-channel tile held in registers, 8 or 4 output pixels per step, masked
//! channel tails; u8 rows widened to f32, whose sums of integer products are exact), the same
//! walker with bf16 outputs (`dwconv_f32_bf16_minmax_3x3c16_avx512bf16`) and with bf16 input
//! rows too (`dwconv_bf16_minmax_3x3c16_avx512bf16`, each load widened exactly),
//! `dwconv_{f32,u8}_minmax_3x3c8_avx2` (8-channel tiles; the u8 rows widened to f32 as on
//! AVX-512, staged with their padding columns as zeros), and a portable scalar twin.
//!
//! bf16 rows in pixel pairs ([`dwconv_rows_bf16_pairs`]): the expanded rows as the bf16
//! GEMM's `gemm_bf16_to_bf16_pairs` writes them, two horizontal neighbours interleaved channel
//! by channel, so `vdpbf16ps` adds two taps per lane: six instructions per output pixel and 16
//! channels instead of nine FMAs, on bf16 weights (`dwconv_bf16pairs_minmax_3x3c16_avx512bf16`,
//! and its twin, which sums in the same order).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512bf16;
#[cfg(target_arch = "x86_64")]
mod avx512vnni;
mod scalar;

use crate::aligned::AlignedVec;
use crate::bf16gemm::{bf16_to_f32, f32_to_bf16, Bf16};
use crate::isa::{Isa, Needs, Tier};
use crate::qgemm::{quantize_weights, QParams};
use crate::taps::PackedTaps;
use crate::MinMax;

/// Pair weights per kernel row of the pixel-pair kernels, in their packing's order
/// ([`PackedDw::bf16_pairs_for`]): `(w1, w2)`, `(0, w0)`, `(w0, w1)`, `(w2, 0)`, the even
/// pixel's weight first (low half).
const PAIR_WEIGHTS: usize = 4;

pub use crate::taps::CTILE;

/// Element type of depthwise rows: f32, or u8 quantised with zero point 0.
pub trait Elem: Copy + Send + Sync + 'static {
    /// The value as f32 (u8: the raw code).
    fn to_f32(self) -> f32;
    /// `v` as this type (u8: quantised with `q`).
    fn from_f32(v: f32, q: QParams) -> Self;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32, _: QParams) -> f32 {
        v
    }
}

impl Elem for u8 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline(always)]
    fn from_f32(v: f32, q: QParams) -> u8 {
        q.quantize(v)
    }
}

impl Elem for Bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16_to_f32(self.0)
    }
    #[inline(always)]
    fn from_f32(v: f32, _: QParams) -> Bf16 {
        Bf16(f32_to_bf16(v))
    }
}

/// The code of a depthwise kernel, by the element types it reads and writes: it computes
/// the output rows of a slice of [`Args`] (at most [`MAX_ROWS`]), in any order.
#[derive(Debug)]
pub(crate) enum DwCode {
    /// f32 rows to f32 rows.
    F32(unsafe fn(&[Args<f32, f32>], &PackedDw)),
    /// u8 rows to u8 rows.
    U8(unsafe fn(&[Args<u8, u8>], &PackedDw)),
    /// f32 rows to bf16 rows (rounded to nearest even, as `vcvtneps2bf16`).
    Bf16(unsafe fn(&[Args<f32, Bf16>], &PackedDw)),
    /// bf16 rows to bf16 rows (widened exactly, summed in f32, rounded as `Bf16`).
    Bf16In(unsafe fn(&[Args<Bf16, Bf16>], &PackedDw)),
    /// bf16 rows in pixel pairs to bf16 rows (bf16 weights, `vdpbf16ps` sums).
    Bf16Pairs(unsafe fn(&[Args<Bf16, Bf16>], &PackedDw)),
}

/// Output rows per kernel call: [`dwconv_rows`] hands a longer list to the kernel in several
/// calls (a caller gathering rows for it need gather no more at once).
pub const MAX_ROWS: usize = 8;

/// One depthwise 3x3 kernel: its name (the identity of the code), what it needs, its code.
#[derive(Debug)]
pub struct DwKernel {
    /// The kernel's name, as profiles and `mnv2 bench` print it.
    pub name: &'static str,
    /// What the CPU must have.
    pub needs: Needs,
    /// # Safety (of the functions)
    /// The arguments describe rows valid for the packing, and the CPU has `needs`.
    code: DwCode,
    /// Bytes the kernel stages per thread, outside the caller's buffers, for rows of a
    /// geometry and channel count (see [`PackedDw::staging_bytes`]).
    staging: fn(DwRow, usize) -> usize,
}

/// Every f32 depthwise kernel built for this target, best first.
pub static KERNELS: &[DwKernel] = &[
    #[cfg(target_arch = "x86_64")]
    DwKernel {
        name: "dwconv_f32_minmax_3x3c16_avx512",
        needs: Needs::Avx512,
        code: DwCode::F32(avx512::row),
        staging: no_staging,
    },
    #[cfg(target_arch = "x86_64")]
    DwKernel {
        name: "dwconv_f32_minmax_3x3c8_avx2",
        needs: Needs::Avx2,
        code: DwCode::F32(avx2::row),
        staging: no_staging,
    },
    DwKernel {
        name: "dwconv_f32_minmax_3x3_scalar",
        needs: Needs::Scalar,
        code: DwCode::F32(scalar::row::<f32, f32>),
        staging: scalar::staging_bytes,
    },
];

/// Every int8 (u8 output) depthwise kernel built for this target, best first; all give the
/// same bytes.
pub static KERNELS_U8: &[DwKernel] = &[
    #[cfg(target_arch = "x86_64")]
    DwKernel {
        name: "dwconv_u8_minmax_3x3c64_avx512vnni",
        needs: Needs::Avx512Vnni,
        code: DwCode::U8(avx512vnni::row),
        staging: avx512vnni::staging_bytes,
    },
    #[cfg(target_arch = "x86_64")]
    DwKernel {
        name: "dwconv_u8_minmax_3x3c16_avx512",
        needs: Needs::Avx512,
        code: DwCode::U8(avx512::row_u8),
        staging: avx512::staging_bytes_u8,
    },
    #[cfg(target_arch = "x86_64")]
    DwKernel {
        name: "dwconv_u8_minmax_3x3c8_avx2",
        needs: Needs::Avx2,
        code: DwCode::U8(avx2::row_u8),
        staging: avx2::staging_bytes_u8,
    },
    DwKernel {
        name: "dwconv_u8_minmax_3x3_scalar",
        needs: Needs::Scalar,
        code: DwCode::U8(scalar::row_q),
        staging: scalar::staging_bytes,
    },
];

/// Every depthwise kernel with bf16 output rows (f32 sums, rounded once on store: the input
/// of the bf16 GEMM, which then skips its rounding pass), best first. The AVX-512 one runs
/// only while [`crate::isa::bf16_enabled`] (as the bf16 GEMM kernels); the scalar twin
/// rounds the f32 twin's sums.
pub static KERNELS_BF16: &[DwKernel] = &[
    #[cfg(target_arch = "x86_64")]
    DwKernel {
        name: "dwconv_f32_bf16_minmax_3x3c16_avx512bf16",
        needs: Needs::Avx512Bf16,
        code: DwCode::Bf16(avx512::row_bf16),
        staging: no_staging,
    },
    DwKernel {
        name: "dwconv_f32_bf16_minmax_3x3_scalar",
        needs: Needs::Scalar,
        code: DwCode::Bf16(scalar::row::<f32, Bf16>),
        staging: scalar::staging_bytes,
    },
];

/// Every depthwise kernel reading and writing bf16 rows (the expanded rows of the bf16
/// network, as the bf16 GEMM's expand conv writes them: half the bytes of f32 rows through
/// the L2-bound depthwise), best first; sums in f32 as [`KERNELS_BF16`], rounded once. The
/// AVX-512 one runs only while [`crate::isa::bf16_enabled`].
pub static KERNELS_BF16_IN: &[DwKernel] = &[
    #[cfg(target_arch = "x86_64")]
    DwKernel {
        name: "dwconv_bf16_minmax_3x3c16_avx512bf16",
        needs: Needs::Avx512Bf16,
        code: DwCode::Bf16In(avx512::row_bf16_in),
        staging: no_staging,
    },
    DwKernel {
        name: "dwconv_bf16_minmax_3x3_scalar",
        needs: Needs::Scalar,
        code: DwCode::Bf16In(scalar::row::<Bf16, Bf16>),
        staging: scalar::staging_bytes,
    },
];

/// Every depthwise kernel reading bf16 rows in pixel pairs (see [`dwconv_rows_bf16_pairs`]),
/// best first. The AVX-512 one runs only while [`crate::isa::bf16_enabled`].
pub static KERNELS_BF16_PAIRS: &[DwKernel] = &[
    #[cfg(target_arch = "x86_64")]
    DwKernel {
        name: "dwconv_bf16pairs_minmax_3x3c16_avx512bf16",
        needs: Needs::Avx512Bf16,
        code: DwCode::Bf16Pairs(avx512bf16::row_pairs),
        staging: no_staging,
    },
    DwKernel {
        name: "dwconv_bf16pairs_minmax_3x3_scalar",
        needs: Needs::Scalar,
        code: DwCode::Bf16Pairs(scalar::row_pairs),
        staging: scalar::staging_bytes,
    },
];

fn no_staging(_: DwRow, _: usize) -> usize {
    0
}

/// Depthwise 3x3 weights with bias, packed `[9][c_pad]` (taps row-major) for one kernel.
pub type PackedDw = PackedTaps<DwKernel, 9>;

impl PackedDw {
    /// `weights` are `[3][3][c]` (HWIO with one input channel per group), `bias` is `[c]`:
    /// for the best f32 kernel of `tier`.
    pub fn new(tier: Tier, weights: &[f32], c: usize, bias: &[f32]) -> PackedDw {
        let k = best(KERNELS, tier);
        PackedDw::for_kernel(tier, k, weights, c, bias)
    }

    /// Packs for `kernel` (of [`KERNELS`] or [`KERNELS_U8`]), which `tier` must grant.
    pub fn for_kernel(tier: Tier, kernel: &'static DwKernel, weights: &[f32], c: usize, bias: &[f32]) -> PackedDw {
        kernel.needs.assert_granted(kernel.name, tier);
        PackedTaps::pack(kernel, weights, c, bias)
    }

    /// For bf16 output rows ([`dwconv_row_bf16`]), on the best kernel of [`KERNELS_BF16`]
    /// for `tier` (the AVX-512 BF16 one only while [`crate::isa::bf16_enabled`]).
    pub fn bf16_out(tier: Tier, weights: &[f32], c: usize, bias: &[f32]) -> PackedDw {
        PackedDw::for_kernel(tier, best(KERNELS_BF16, tier), weights, c, bias)
    }

    /// For bf16 input and output rows ([`dwconv_rows_bf16_in`]), on the best kernel of
    /// [`KERNELS_BF16_IN`] for `tier` (the AVX-512 BF16 one only while
    /// [`crate::isa::bf16_enabled`]).
    pub fn bf16_rows(tier: Tier, weights: &[f32], c: usize, bias: &[f32]) -> PackedDw {
        PackedDw::for_kernel(tier, best(KERNELS_BF16_IN, tier), weights, c, bias)
    }

    /// For bf16 input rows in pixel pairs ([`dwconv_rows_bf16_pairs`]), on the best kernel of
    /// [`KERNELS_BF16_PAIRS`] for `tier` (the AVX-512 BF16 one only while
    /// [`crate::isa::bf16_enabled`]).
    pub fn bf16_pairs(tier: Tier, weights: &[f32], c: usize, bias: &[f32]) -> PackedDw {
        PackedDw::bf16_pairs_for(tier, best(KERNELS_BF16_PAIRS, tier), weights, c, bias)
    }

    /// [`PackedDw::bf16_pairs`] for `kernel` (of [`KERNELS_BF16_PAIRS`]), which `tier` must
    /// grant. Per kernel row its four weight pairs `(w1, w2)`, `(0, w0)`, `(w0, w1)`,
    /// `(w2, 0)` rounded to bf16, `[3][4][c_pad]` 32-bit words (as f32 bit patterns; the even
    /// pixel's weight in the low half), in place of the f32 taps, which no pair kernel reads.
    pub fn bf16_pairs_for(tier: Tier, kernel: &'static DwKernel, weights: &[f32], c: usize, bias: &[f32]) -> PackedDw {
        assert!(matches!(kernel.code, DwCode::Bf16Pairs(..)), "{} does not read pixel pairs", kernel.name);
        let mut p = PackedDw::for_kernel(tier, kernel, weights, c, bias);
        let c_pad = p.c_pad;
        let mut w = AlignedVec::zeros(3 * PAIR_WEIGHTS * c_pad);
        for ky in 0..3 {
            for ch in 0..c {
                let tap = |kx: usize| f32_to_bf16(weights[(ky * 3 + kx) * c + ch]) as u32;
                let word = |lo: u32, hi: u32| f32::from_bits(lo | hi << 16);
                let pairs = [word(tap(1), tap(2)), word(0, tap(0)), word(tap(0), tap(1)), word(tap(2), 0)];
                for (t, v) in pairs.into_iter().enumerate() {
                    w[(ky * PAIR_WEIGHTS + t) * c_pad + ch] = v;
                }
            }
        }
        p.weights = w;
        p
    }

    /// For u8 input rows quantised with `input` (zero point 0), on the best int8 kernel of
    /// `tier`: `weights` (real, `[3][3][c]`) are quantised per channel to int8 as the GEMMs'
    /// are ([`quantize_weights`]).
    pub fn quantized(tier: Tier, weights: &[f32], c: usize, bias: &[f32], input: QParams) -> PackedDw {
        let k = best(KERNELS_U8, tier);
        PackedDw::quantized_for(tier, k, weights, c, bias, input)
    }

    /// [`PackedDw::quantized`] for `kernel` (of [`KERNELS_U8`]), which `tier` must grant.
    ///
    /// Every int8 kernel reads one packing: the weights' integers as f32 `[9][c_pad]` (exact),
    /// then, for the VNNI kernel, `[3][c_quad]` quads of the three vertical taps of each
    /// horizontal tap (bytes: row 0 lowest, the fourth zero; as f32 bit patterns) in
    /// [`quad_channel`] order; the real bias; and in `scale` each channel's weight scale times
    /// the input scale, `[c_pad]`, then the scales and the biases again in quad order,
    /// `[c_quad]` each (`c_quad`: `c` rounded up to [`QUAD_GROUP`]).
    pub fn quantized_for(
        tier: Tier,
        kernel: &'static DwKernel,
        weights: &[f32],
        c: usize,
        bias: &[f32],
        input: QParams,
    ) -> PackedDw {
        assert_eq!(input.zero, 0, "depthwise int8 input must have zero point 0");
        assert!(matches!(kernel.code, DwCode::U8(..)), "{} is not an int8 kernel", kernel.name);
        let (q, w_scale) = quantize_weights(weights, 9, c);
        let codes: Vec<f32> = q.iter().map(|&v| v as f32).collect();
        let mut p = PackedDw::for_kernel(tier, kernel, &codes, c, bias);
        let (c_pad, c_quad) = (p.c_pad, c.next_multiple_of(QUAD_GROUP));
        let mut w = AlignedVec::zeros(9 * c_pad + 3 * c_quad);
        w[..9 * c_pad].copy_from_slice(&p.weights);
        let mut sc = AlignedVec::zeros(c_pad + 2 * c_quad);
        for ch in 0..c {
            sc[ch] = w_scale[ch] * input.scale;
        }
        for pos in 0..c_quad {
            let ch = quad_channel(pos);
            if ch >= c {
                continue;
            }
            for kx in 0..3 {
                let tap = |ky: usize| q[(ky * 3 + kx) * c + ch] as u8 as u32;
                w[9 * c_pad + kx * c_quad + pos] = f32::from_bits(tap(0) | tap(1) << 8 | tap(2) << 16);
            }
            sc[c_pad + pos] = sc[ch];
            sc[c_pad + c_quad + pos] = bias[ch];
        }
        p.weights = w;
        p.scale = sc;
        p
    }

    /// Name of the kernel this packing is for.
    pub fn kernel_name(&self) -> &'static str {
        self.kernel.name
    }

    /// Bytes the kernel keeps per thread, outside the caller's buffers, to compute rows of
    /// geometry `g` (the int8 kernels' staged input rows or quads; the twins' per-call sums;
    /// 0 for the vector f32 kernels), for the engine's activation accounting.
    pub fn staging_bytes(&self, g: DwRow) -> usize {
        (self.kernel.staging)(g, self.c)
    }

    /// The tier of the kernel this packing is for.
    pub fn isa(&self) -> Isa {
        self.kernel.needs.tier()
    }
}

/// The best kernel of `registry` for `tier` ([`Needs::selectable`]: the AVX-512 BF16 ones
/// only while [`crate::isa::bf16_enabled`]).
fn best(registry: &'static [DwKernel], tier: Tier) -> &'static DwKernel {
    registry.iter().find(|k| k.needs.selectable(tier)).expect("the scalar kernel")
}

/// Channels per group of the VNNI int8 kernel: four vectors of 16 quads.
pub const QUAD_GROUP: usize = 64;

/// Output pixels per staging pass of the VNNI int8 kernel.
pub(crate) const QUAD_CHUNK: usize = 32;

/// The channel at position `pos` of the quad order: within each group of [`QUAD_GROUP`]
/// channels, vector `j` (of four) holds in its 128-bit lane `l` the channels
/// `16 l + 4 j .. 16 l + 4 j + 4`, the order in which interleaving three rows of 64 bytes with
/// in-lane unpacks leaves them (and packing four vectors of codes with in-lane packs undoes).
pub fn quad_channel(pos: usize) -> usize {
    let (g, r) = (pos / QUAD_GROUP, pos % QUAD_GROUP);
    let (j, d) = (r / 16, r % 16);
    g * QUAD_GROUP + 16 * (d / 4) + 4 * j + d % 4
}

/// Geometry of one output row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DwRow {
    /// Input width.
    pub w_in: usize,
    /// Output width.
    pub w_out: usize,
    /// Horizontal stride.
    pub stride: usize,
    /// Horizontal dilation.
    pub dilation: usize,
    /// Zero columns left of the input.
    pub pad_left: usize,
}

impl DwRow {
    /// Whether [`dwconv_rows_bf16_pairs`] computes this geometry: an even input width,
    /// dilation 1, one column of padding on the left, and stride 1 (as wide as the input) or
    /// 2 (half as wide).
    pub fn reads_pairs(&self) -> bool {
        self.w_in.is_multiple_of(2)
            && self.w_in > 0
            && self.dilation == 1
            && self.pad_left == 1
            && ((self.stride == 1 && self.w_out == self.w_in) || (self.stride == 2 && self.w_out == self.w_in / 2))
    }

    /// Output columns whose every tap lies inside the input row: `[lo, hi)`.
    pub fn interior(&self) -> (usize, usize) {
        let lo = self.pad_left.div_ceil(self.stride);
        let span = 2 * self.dilation;
        let hi = if self.w_in + self.pad_left > span {
            ((self.w_in + self.pad_left - span - 1) / self.stride + 1).min(self.w_out)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// The largest |sum| of an int8 depthwise pixel: 9 taps of u8 inputs and weights within
/// -127..=127.
pub(crate) const MAX_ABS_SUM: f32 = 9.0 * 255.0 * 127.0;

/// Codes below this need no cap before their conversion to i32 (which gives `i32::MIN` from
/// 2^31 on): a vector kernel whose channels cannot reach it skips the cap.
pub(crate) const UNCAPPED_CODES: f32 = (1u32 << 30) as f32;

/// The int8 epilogue: an exact integer sum `acc` of channel `ch` to its output code,
/// `clamp(round(acc * m[ch] + b[ch]), lo, hi)` with `m = scale / s_out` and
/// `b = bias / s_out + zero` (one fused multiply-add in f32) and the activation's bounds as
/// codes. The vector kernels compute the same operations lane by lane, so every kernel writes
/// the same bytes. (Sums stay far below 2^31 codes: a conversion out of range would differ.)
#[derive(Clone, Copy, Debug)]
pub(crate) struct Requant {
    /// `1 / s_out`.
    pub inv: f32,
    /// The output zero point, as f32 (exact).
    pub zero: f32,
    /// The activation's bounds as codes, within 0..=255.
    pub lo: i32,
    pub hi: i32,
}

impl Requant {
    pub fn new(act: MinMax, q: QParams) -> Requant {
        let inv = 1.0 / q.scale;
        // Infinite bounds (no activation) saturate to the u8 range.
        let code = |v: f32| ((v * inv).round_ties_even().clamp(-1e9, 1e9) as i32 + q.zero).clamp(0, 255);
        Requant { inv, zero: q.zero as f32, lo: code(act.min), hi: code(act.max) }
    }

    /// The multiplier and addend of channel `ch` of `w`, in output codes.
    #[inline(always)]
    pub fn channel(&self, w: &PackedDw, ch: usize) -> (f32, f32) {
        (w.scale[ch] * self.inv, w.bias[ch].mul_add(self.inv, self.zero))
    }

    /// The code of sum `acc` (exact in f32: below 2^24) with [`Requant::channel`]'s `(m, b)`.
    #[inline(always)]
    pub fn code(&self, acc: f32, (m, b): (f32, f32)) -> u8 {
        (acc.mul_add(m, b).round_ties_even() as i32).clamp(self.lo, self.hi) as u8
    }
}

/// `rows` with each padding row (null) replaced by a present one, which the vector kernels
/// read with zero weights so that their inner loops need no branch (`dwconv_rows` checked
/// that one row is present).
pub(crate) fn padding_reads_present<T>(rows: [*const T; 3]) -> [*const T; 3] {
    let present = rows.iter().copied().find(|r| !r.is_null()).expect("at least one input row");
    rows.map(|r| if r.is_null() { present } else { r })
}

/// Raw arguments of one row: input rows of `I`, output of `O`.
#[derive(Clone, Copy)]
pub(crate) struct Args<I, O> {
    pub rows: [*const I; 3],
    pub out: *mut O,
    pub g: DwRow,
    pub act: MinMax,
    /// Output quantisation (u8 rows only).
    pub out_q: QParams,
}

/// One output row: `out[x][ch] = act(bias[ch] + sum_{ky,kx} rows[ky][x*s + kx*d - pad][ch] * w[ky][kx][ch])`.
/// Each present row must hold `g.w_in * w.c` values; `out` holds `g.w_out * w.c`. Panics if
/// `w` was packed for an int8 kernel.
pub fn dwconv_row(w: &PackedDw, rows: [Option<&[f32]>; 3], g: DwRow, act: MinMax, out: &mut [f32]) {
    dwconv_rows(w, &[rows], g, act, out)
}

/// Several output rows of one layer, `out` holding them one after the other (`rows.len()`
/// rows of `g.w_out * w.c` values), output row `i` from the input rows `rows[i]`: the same
/// values as [`dwconv_row`] on each. The AVX-512 kernels run each 16-channel tile across all
/// the rows before the next tile, so an input row that several output rows read (all but
/// one of three at stride 1) comes from L1 rather than L2 after its first use.
pub fn dwconv_rows(w: &PackedDw, rows: &[[Option<&[f32]>; 3]], g: DwRow, act: MinMax, out: &mut [f32]) {
    let DwCode::F32(run) = w.kernel.code else { panic!("{} does not write f32 rows", w.kernel.name) };
    dwconv_rows_any(w, rows, g, act, out, QParams { scale: 1.0, zero: 0 }, run)
}

/// [`dwconv_row`] with its outputs rounded to bf16 (weights packed by
/// [`PackedDw::bf16_out`]): the same values as [`dwconv_row`]'s, rounded.
pub fn dwconv_row_bf16(w: &PackedDw, rows: [Option<&[f32]>; 3], g: DwRow, act: MinMax, out: &mut [Bf16]) {
    dwconv_rows_bf16(w, &[rows], g, act, out)
}

/// [`dwconv_rows`] with its outputs rounded to bf16, as [`dwconv_row_bf16`].
pub fn dwconv_rows_bf16(w: &PackedDw, rows: &[[Option<&[f32]>; 3]], g: DwRow, act: MinMax, out: &mut [Bf16]) {
    let DwCode::Bf16(run) = w.kernel.code else { panic!("{} does not write bf16 rows", w.kernel.name) };
    dwconv_rows_any(w, rows, g, act, out, QParams { scale: 1.0, zero: 0 }, run)
}

/// [`dwconv_rows_bf16`] on bf16 input rows (weights packed by [`PackedDw::bf16_rows`]): the
/// same values as [`dwconv_rows_bf16`] on the f32 values of those rows.
pub fn dwconv_rows_bf16_in(w: &PackedDw, rows: &[[Option<&[Bf16]>; 3]], g: DwRow, act: MinMax, out: &mut [Bf16]) {
    let DwCode::Bf16In(run) = w.kernel.code else { panic!("{} does not read bf16 rows", w.kernel.name) };
    dwconv_rows_any(w, rows, g, act, out, QParams { scale: 1.0, zero: 0 }, run)
}

/// [`dwconv_rows_bf16_in`] on input rows in pixel pairs, as `gemm_bf16_to_bf16_pairs` writes
/// them (pixel `2q + p`, channel `ch` at `2q * c + 2ch + p`), with bf16 weights (packed by
/// [`PackedDw::bf16_pairs`]): `vdpbf16ps` sums, in the order of its twin. Geometries of
/// [`DwRow::reads_pairs`] only; panics on others.
pub fn dwconv_rows_bf16_pairs(w: &PackedDw, rows: &[[Option<&[Bf16]>; 3]], g: DwRow, act: MinMax, out: &mut [Bf16]) {
    let DwCode::Bf16Pairs(run) = w.kernel.code else { panic!("{} does not read pixel pairs", w.kernel.name) };
    assert!(g.reads_pairs(), "pixel pairs need stride 1 or 2, dilation 1, padding 1 and an even width: {g:?}");
    dwconv_rows_any(w, rows, g, act, out, QParams { scale: 1.0, zero: 0 }, run)
}

/// [`dwconv_row`] on u8 rows (weights packed by [`PackedDw::quantized`]), the result
/// quantised with `out_q`.
pub fn dwconv_row_u8(w: &PackedDw, rows: [Option<&[u8]>; 3], g: DwRow, act: MinMax, out: &mut [u8], out_q: QParams) {
    dwconv_rows_u8(w, &[rows], g, act, out, out_q)
}

/// [`dwconv_rows`] on u8 rows, as [`dwconv_row_u8`].
pub fn dwconv_rows_u8(
    w: &PackedDw,
    rows: &[[Option<&[u8]>; 3]],
    g: DwRow,
    act: MinMax,
    out: &mut [u8],
    out_q: QParams,
) {
    let DwCode::U8(run) = w.kernel.code else { panic!("{} does not write u8 rows", w.kernel.name) };
    dwconv_rows_any(w, rows, g, act, out, out_q, run)
}

fn dwconv_rows_any<I: Elem, O: Elem>(
    w: &PackedDw,
    rows: &[[Option<&[I]>; 3]],
    g: DwRow,
    act: MinMax,
    out: &mut [O],
    out_q: QParams,
    run: unsafe fn(&[Args<I, O>], &PackedDw),
) {
    assert!(g.stride >= 1 && g.dilation >= 1);
    let row_len = g.w_out * w.c;
    assert!(out.len() >= rows.len() * row_len, "output rows too short");
    assert!(g.w_out == 0 || (g.w_out - 1) * g.stride < g.w_in + g.pad_left, "output wider than the input allows");
    let none = Args { rows: [std::ptr::null(); 3], out: std::ptr::null_mut(), g, act, out_q };
    for (chunk, outs) in rows.chunks(MAX_ROWS).zip(out.chunks_mut(MAX_ROWS * row_len.max(1))) {
        let mut args = [none; MAX_ROWS];
        for (i, (a, r)) in args.iter_mut().zip(chunk).enumerate() {
            for (p, r) in a.rows.iter_mut().zip(r) {
                if let Some(r) = r {
                    assert!(r.len() >= g.w_in * w.c, "input row too short");
                    *p = r.as_ptr();
                }
            }
            assert!(a.rows.iter().any(|p| !p.is_null()), "an output row reads at least one input row");
            a.out = outs[i * row_len..].as_mut_ptr();
        }
        // SAFETY: sizes checked above; the packing's kernel was granted by a `Tier`, the proof
        // that this CPU runs it.
        unsafe { run(&args[..chunk.len()], w) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{reference, ConvGeom};
    use std::ops::Range;

    /// The kernels of `registry` the host runs, with the host's best tier; the others print
    /// `SKIPPED`.
    fn host_kernels(registry: &'static [DwKernel]) -> Vec<(Tier, &'static DwKernel)> {
        let tier = *Tier::host().last().expect("scalar");
        registry.iter().filter(|k| crate::isa::runs_or_skips(k.name, k.needs)).map(|k| (tier, k)).collect()
    }

    fn vals(seed: u64, n: usize) -> Vec<f32> {
        crate::test_vals::uniform(seed, n, -2.0, 4.0)
    }

    /// Whole-image depthwise through `dwconv_row` against the reference convolution.
    #[allow(clippy::too_many_arguments)]
    fn check(
        (tier, kern): (Tier, &'static DwKernel),
        h: usize,
        w_in: usize,
        c: usize,
        stride: usize,
        dilation: usize,
        pad_top: usize,
        pad_left: usize,
        pad_b: usize,
        pad_r: usize,
    ) {
        let eff = 2 * dilation + 1;
        let out_h = (h + pad_top + pad_b - eff) / stride + 1;
        let w_out = (w_in + pad_left + pad_r - eff) / stride + 1;
        let input = vals(h as u64 * 7 + c as u64, h * w_in * c);
        let wts = vals(c as u64, 9 * c);
        let bias = vals(3, c);
        let act = MinMax { min: -1.0, max: 1.5 };
        let g = ConvGeom {
            in_h: h,
            in_w: w_in,
            in_c: c,
            out_h,
            out_w: w_out,
            out_c: c,
            kernel: 3,
            stride,
            dilation,
            pad_top,
            pad_left,
            groups: c,
        };
        let mut want = vec![0.0; out_h * w_out * c];
        reference::conv2d_f32(&g, &input, &wts, &bias, act, None, &mut want);
        let p = PackedDw::for_kernel(tier, kern, &wts, c, &bias);
        let row = DwRow { w_in, w_out, stride, dilation, pad_left };
        let mut got = vec![f32::NAN; out_h * w_out * c];
        for oy in 0..out_h {
            let rows: [Option<&[f32]>; 3] = std::array::from_fn(|ky| {
                let iy = (oy * stride + ky * dilation) as isize - pad_top as isize;
                (0..h as isize).contains(&iy).then(|| &input[iy as usize * w_in * c..(iy as usize + 1) * w_in * c])
            });
            dwconv_row(&p, rows, row, act, &mut got[oy * w_out * c..(oy + 1) * w_out * c]);
        }
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(
            err < 1e-5,
            "{} h={h} w={w_in} c={c} s={stride} d={dilation} pads {pad_top},{pad_left},{pad_b},{pad_r}: err {err}",
            p.kernel_name()
        );
    }

    #[test]
    fn every_kernel_matches_reference() {
        for isa in host_kernels(KERNELS) {
            // Channel edges of the 16- and 8-wide tiles, and the depthwise widths of MobileNetV2.
            for c in [1, 7, 8, 9, 15, 16, 17, 24, 32, 40, 96, 144] {
                for w in [1, 2, 3, 4, 5, 7, 9, 14, 17] {
                    check(isa, 5, w, c, 1, 1, 1, 1, 1, 1); // torch stride 1
                    if w >= 2 {
                        check(isa, 6, w, c, 2, 1, 1, 1, 1, 1); // torch stride 2
                        check(isa, 6, w, c, 2, 1, 0, 0, 1, 1); // tf 'SAME' on even sizes
                    }
                    if w >= 5 {
                        check(isa, 7, w, c, 1, 2, 2, 2, 2, 2); // atrous rate 2
                        check(isa, 9, w, c, 1, 4, 4, 4, 4, 4); // atrous rate 4
                    }
                }
            }
            // Real MobileNetV2 224 depthwise layers (a few rows of each).
            for (w, c, s) in [(112, 32, 1), (112, 96, 2), (56, 144, 1), (56, 144, 2), (28, 192, 2), (14, 384, 1)] {
                check(isa, 4, w, c, s, 1, 1, 1, 1, 1);
            }
            check(isa, 4, 7, 960, 1, 1, 1, 1, 1, 1);
        }
    }

    /// The output rows `0..h_out` of an image of `h` rows of `row` values, each as the input
    /// rows it reads (None: a padding row) at stride `s`, dilation `d` and top padding `pad`.
    fn image_rows<T>(
        x: &[T],
        h: usize,
        row: usize,
        s: usize,
        d: usize,
        pad: usize,
        h_out: usize,
    ) -> Vec<[Option<&[T]>; 3]> {
        (0..h_out)
            .map(|oy| {
                std::array::from_fn(|ky| {
                    let iy = (oy * s + ky * d) as isize - pad as isize;
                    (0..h as isize).contains(&iy).then(|| &x[iy as usize * row..(iy as usize + 1) * row])
                })
            })
            .collect()
    }

    /// The f32 vector kernels sum each pixel in the twin's order (the bias, then the taps
    /// inside the image, ky then kx, one fused multiply-add each), so they give its bits:
    /// whole images, several rows per call (more than one call takes), padding rows at both
    /// ends, strides 1 and 2 with torch and TF 'SAME' padding, dilations 2 and 4 (and 2 at
    /// stride 2, which no vector kernel unrolls), widths from one pixel (rows with no
    /// interior pixel), channel tails of the 8- and 16-wide tiles, and the network's layers;
    /// activations with and without bounds; nothing written past the rows.
    #[test]
    fn f32_kernels_are_the_twin_bit_for_bit() {
        let kernels = host_kernels(KERNELS);
        let twin = KERNELS.iter().find(|k| k.needs == Needs::Scalar).expect("the twin");
        // (h, w, c, stride, dilation, pad top/left, pad bottom/right)
        let mut shapes = Vec::new();
        for c in [1, 7, 8, 9, 15, 16, 17, 24, 40] {
            for w in [1, 2, 3, 4, 5, 7, 9, 14, 17] {
                shapes.push((11, w, c, 1, 1, 1, 1));
                shapes.push((7, w, c, 1, 2, 2, 2));
                shapes.push((9, w, c, 1, 4, 4, 4));
                shapes.push((10, w, c, 2, 2, 2, 2));
                if w >= 2 {
                    shapes.push((19, w, c, 2, 1, 1, 1));
                    shapes.push((6, w, c, 2, 1, 0, 1));
                }
            }
        }
        for (w, c, s) in [
            (112, 32, 1),
            (112, 96, 2),
            (56, 144, 1),
            (56, 144, 2),
            (28, 192, 1),
            (28, 192, 2),
            (14, 384, 1),
            (14, 576, 2),
            (7, 960, 1),
            (7, 960, 2),
        ] {
            shapes.push((4, w, c, s, 1, 1, 1));
        }
        shapes.push((10, 33, 136, 1, 2, 2, 2));
        shapes.push((10, 29, 72, 1, 4, 4, 4));
        for (h, w_in, c, s, d, pad, pad_end) in shapes {
            let eff = 2 * d + 1;
            let h_out = (h + pad + pad_end - eff) / s + 1;
            let w_out = (w_in + pad + pad_end - eff) / s + 1;
            let g = DwRow { w_in, w_out, stride: s, dilation: d, pad_left: pad };
            let (row, len) = (w_in * c, w_out * c);
            let x = vals(h as u64 * 5 + c as u64, h * row);
            let rows = image_rows(&x, h, row, s, d, pad, h_out);
            let (wts, bias) = (vals(c as u64 + 2, 9 * c), vals(13, c));
            for act in [MinMax::RELU6, MinMax::NONE, MinMax { min: -1.0, max: 1.5 }] {
                let mut want = vec![0f32; h_out * len];
                dwconv_rows(&PackedDw::for_kernel(Tier::Scalar, twin, &wts, c, &bias), &rows, g, act, &mut want);
                for &(tier, kern) in &kernels {
                    let p = PackedDw::for_kernel(tier, kern, &wts, c, &bias);
                    let mut got = vec![f32::NAN; h_out * len + 1];
                    dwconv_rows(&p, &rows, g, act, &mut got);
                    let what = format!("{} h={h} w={w_in} c={c} s={s} d={d} pads {pad},{pad_end} {act:?}", kern.name);
                    assert!(got.pop().is_some_and(f32::is_nan), "{what}: wrote past the rows");
                    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits()) {
                        panic!(
                            "{what}: at {i} (pixel {}, channel {}): {} vs the twin's {}",
                            i / c,
                            i % c,
                            got[i],
                            want[i]
                        );
                    }
                }
            }
        }
    }

    /// Kernels that read a padding row as a present one with zero weights (the AVX-512 one,
    /// [`padding_reads_present`]): their sums differ from the twin's where a zero product
    /// changes them (an infinite input, a -0.0 sum).
    const ZERO_WEIGHTED_PADDING_ROWS: &[&str] = &["dwconv_f32_minmax_3x3c16_avx512"];

    /// Taps in padding rows and columns are skipped, as the twin skips them, not multiplied
    /// by zero: with every weight and the bias -0.0 and positive inputs each sum is -0.0 (a
    /// zero-weighted tap's +0.0 product would make it +0.0); with infinite inputs the sums
    /// are infinite (a zero-weighted tap would make them NaN, clamped to the lower bound).
    /// Bit for bit the twin's, on every f32 kernel but [`ZERO_WEIGHTED_PADDING_ROWS`].
    #[test]
    fn f32_padding_taps_are_skipped() {
        let kernels: Vec<_> =
            host_kernels(KERNELS).into_iter().filter(|k| !ZERO_WEIGHTED_PADDING_ROWS.contains(&k.1.name)).collect();
        let twin = KERNELS.iter().find(|k| k.needs == Needs::Scalar).expect("the twin");
        for c in [1, 8, 9, 17, 24] {
            for w_in in [1, 2, 3, 5, 14] {
                for (h, s, d) in [(3, 1, 1), (4, 2, 1), (5, 1, 2)] {
                    let (h_out, w_out) = ((h - 1) / s + 1, (w_in - 1) / s + 1);
                    let g = DwRow { w_in, w_out, stride: s, dilation: d, pad_left: d };
                    let (row, len) = (w_in * c, w_out * c);
                    let positive: Vec<f32> = vals(c as u64 + 7, h * row).iter().map(|v| v.abs() + 0.5).collect();
                    let infinite: Vec<f32> =
                        positive.iter().enumerate().map(|(i, v)| if i % 5 == 2 { f32::INFINITY } else { *v }).collect();
                    let cases = [
                        ("-0.0", positive, vec![-0.0; 9 * c], vec![-0.0; c]),
                        (
                            "inf",
                            infinite,
                            vals(c as u64 + 3, 9 * c).iter().map(|v| v.abs() + 0.25).collect(),
                            vals(4, c),
                        ),
                    ];
                    for (case, x, wts, bias) in cases {
                        let rows = image_rows(&x, h, row, s, d, d, h_out);
                        let mut want = vec![0f32; h_out * len];
                        let tp = PackedDw::for_kernel(Tier::Scalar, twin, &wts, c, &bias);
                        dwconv_rows(&tp, &rows, g, MinMax::NONE, &mut want);
                        if case == "-0.0" {
                            assert!(want.iter().all(|v| v.to_bits() == (-0.0f32).to_bits()), "the twin's sums");
                        } else {
                            assert!(
                                want.contains(&f32::INFINITY) && !want.iter().any(|v| v.is_nan()),
                                "the twin's sums"
                            );
                        }
                        for &(tier, kern) in &kernels {
                            let p = PackedDw::for_kernel(tier, kern, &wts, c, &bias);
                            let mut got = vec![0f32; h_out * len];
                            dwconv_rows(&p, &rows, g, MinMax::NONE, &mut got);
                            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits()) {
                                panic!(
                                    "{} {case} h={h} w={w_in} c={c} s={s} d={d}: at {i}: {} vs the twin's {}",
                                    kern.name, got[i], want[i]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// `w` (`[9][c]`) on its int8 grid: what the int8 kernels multiply by.
    fn on_grid(w: &[f32], c: usize) -> Vec<f32> {
        let (q, s) = quantize_weights(w, 9, c);
        q.iter().enumerate().map(|(i, &v)| v as f32 * s[i % c]).collect()
    }

    #[test]
    fn u8_rows_match_f32_and_every_kernel_agrees() {
        let kernels = host_kernels(KERNELS_U8);
        eprintln!("int8 depthwise kernels tested: {:?}", kernels.iter().map(|k| k.1.name).collect::<Vec<_>>());
        let input_q = QParams { scale: 6.0 / 255.0, zero: 0 };
        let out_q = QParams { scale: 0.03, zero: 0 };
        let shapes = [
            (9, 40, 1, 1),
            (14, 96, 2, 1),
            (17, 16, 1, 1),
            (12, 24, 1, 2),
            (112, 32, 1, 1),
            (23, 8, 1, 4),
            (7, 9, 2, 1),
            (2, 144, 1, 1),
            (1, 24, 2, 1),
            (29, 56, 1, 1),
        ];
        for (w_in, c, s, d) in shapes {
            let w_out = (w_in - 1) / s + 1;
            let g = DwRow { w_in, w_out, stride: s, dilation: d, pad_left: d };
            let rows_u8: Vec<Vec<u8>> =
                (0..3).map(|r| (0..w_in * c).map(|i| ((i * 7 + r * 13) % 256) as u8).collect()).collect();
            let rows_f: Vec<Vec<f32>> =
                rows_u8.iter().map(|r| r.iter().map(|&q| input_q.dequantize(q)).collect()).collect();
            let wts = vals(c as u64 + 1, 9 * c);
            let bias = vals(5, c);
            for (missing, act) in [(None, MinMax::RELU6), (Some(0), MinMax::RELU6), (Some(2), MinMax::NONE)] {
                let pick = |i: usize| missing != Some(i);
                let fp = PackedDw::new(Tier::Scalar, &on_grid(&wts, c), c, &bias);
                let mut want = vec![0f32; w_out * c];
                let rf: [Option<&[f32]>; 3] = std::array::from_fn(|i| pick(i).then(|| rows_f[i].as_slice()));
                dwconv_row(&fp, rf, g, act, &mut want);
                let mut outs = Vec::new();
                for &(tier, kern) in &kernels {
                    let qp = PackedDw::quantized_for(tier, kern, &wts, c, &bias, input_q);
                    let ru: [Option<&[u8]>; 3] = std::array::from_fn(|i| pick(i).then(|| rows_u8[i].as_slice()));
                    let mut got = vec![0xa5u8; w_out * c + 1];
                    dwconv_row_u8(&qp, ru, g, act, &mut got, out_q);
                    assert_eq!(got.pop(), Some(0xa5), "{}: wrote past the row", kern.name);
                    // Rounded to the nearest code of the f32 result, clamped to the codes.
                    for (i, (q, w)) in got.iter().zip(&want).enumerate() {
                        let w = w.clamp(0.0, out_q.dequantize(255));
                        let err = (out_q.dequantize(*q) - w).abs();
                        assert!(
                            err <= out_q.scale * 0.5 + 1e-5,
                            "{} {w_in}x{c} s{s} d{d} at {i}: {q} vs {w}",
                            kern.name
                        );
                    }
                    outs.push((kern.name, got));
                }
                for pair in outs.windows(2) {
                    assert!(pair[0].1 == pair[1].1, "{} and {} differ", pair[0].0, pair[1].0);
                }
            }
        }
    }

    /// Codes far beyond 255 before saturation (in 32768..=65535, where two unsigned packs would
    /// read a negative 16-bit value, and beyond 2^31, where the conversion would give i32::MIN):
    /// 255 (and 0) on every kernel, as the twin gives them.
    #[test]
    fn huge_codes_saturate() {
        let kernels = host_kernels(KERNELS_U8);
        let (w_in, c) = (20, 72);
        let g = DwRow { w_in, w_out: w_in, stride: 1, dilation: 1, pad_left: 1 };
        let rows: Vec<Vec<u8>> = (0..3).map(|r| (0..w_in * c).map(|i| [255, 200, 0][(i + r) % 3]).collect()).collect();
        let wts: Vec<f32> = (0..9 * c).map(|i| if (i % c) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let bias = vec![0.0; c];
        let input_q = QParams { scale: 1.0, zero: 0 };
        // Sums of up to about +-1800: codes near 45000 at scale 0.04, near 1.8e12 at 1e-9.
        for out_q in [QParams { scale: 0.04, zero: 3 }, QParams { scale: 1e-9, zero: 3 }] {
            let mut outs = Vec::new();
            for &(tier, kern) in &kernels {
                let qp = PackedDw::quantized_for(tier, kern, &wts, c, &bias, input_q);
                let rr = [Some(rows[0].as_slice()), Some(rows[1].as_slice()), Some(rows[2].as_slice())];
                let mut got = vec![7u8; w_in * c];
                dwconv_row_u8(&qp, rr, g, MinMax::NONE, &mut got, out_q);
                outs.push((kern.name, got));
            }
            let want = &outs.iter().find(|o| o.0.ends_with("scalar")).expect("the twin").1;
            assert!(want.contains(&255) && want.contains(&0), "{out_q:?}");
            for (name, got) in &outs {
                assert!(got == want, "{name} {out_q:?}: not the twin's codes");
            }
        }
    }

    /// Whole images through every int8 kernel give the twin's bytes: the geometries of the
    /// f32 test (strides 1 and 2, torch and TF 'SAME' padding, dilations 2 and 4, widths from
    /// one pixel, channel tails of the 8-, 16- and 64-wide tiles) and real MobileNetV2 layers,
    /// several rows per call (more than one call takes), padding rows at both ends, activations
    /// with and without bounds, an output zero point; nothing written past the rows.
    #[test]
    fn int8_kernels_are_the_twin_on_every_geometry() {
        let kernels = host_kernels(KERNELS_U8);
        eprintln!(
            "int8 depthwise kernels tested on every geometry: {:?}",
            kernels.iter().map(|k| k.1.name).collect::<Vec<_>>()
        );
        let twin = KERNELS_U8.iter().find(|k| k.needs == Needs::Scalar).expect("the twin");
        let input_q = QParams { scale: 6.0 / 255.0, zero: 0 };
        // (h, w, c, stride, dilation, pad top/left, pad bottom/right)
        let mut shapes = Vec::new();
        for c in [1, 7, 8, 9, 15, 16, 17, 24, 40, 72] {
            for w in [1, 2, 3, 4, 5, 7, 9, 14, 17] {
                shapes.push((5, w, c, 1, 1, 1, 1));
                if w >= 2 {
                    shapes.push((6, w, c, 2, 1, 1, 1));
                    shapes.push((6, w, c, 2, 1, 0, 1));
                }
                if w >= 5 {
                    shapes.push((7, w, c, 1, 2, 2, 2));
                    shapes.push((9, w, c, 1, 4, 4, 4));
                }
            }
        }
        for (w, c, s) in [(112, 32, 1), (112, 96, 2), (56, 144, 1), (56, 144, 2), (28, 192, 1), (14, 384, 1)] {
            shapes.push((4, w, c, s, 1, 1, 1));
        }
        shapes.push((4, 7, 960, 1, 1, 1, 1));
        shapes.push((11, 33, 136, 1, 2, 2, 2));
        for (h, w_in, c, s, d, pad, pad_end) in shapes {
            let eff = 2 * d + 1;
            let h_out = (h + pad + pad_end - eff) / s + 1;
            let w_out = (w_in + pad + pad_end - eff) / s + 1;
            let g = DwRow { w_in, w_out, stride: s, dilation: d, pad_left: pad };
            let (row, len) = (w_in * c, w_out * c);
            let x: Vec<u8> = (0..h * row).map(|i| ((i * 37 + i / 7 + c) % 256) as u8).collect();
            let rows = image_rows(&x, h, row, s, d, pad, h_out);
            let (wts, bias) = (vals(c as u64 + 3, 9 * c), vals(11, c));
            for (act, out_q) in [
                (MinMax::RELU6, QParams { scale: 6.0 / 255.0, zero: 0 }),
                (MinMax::NONE, QParams { scale: 0.05, zero: 100 }),
            ] {
                let mut want = vec![0u8; h_out * len];
                let tp = PackedDw::quantized_for(Tier::Scalar, twin, &wts, c, &bias, input_q);
                dwconv_rows_u8(&tp, &rows, g, act, &mut want, out_q);
                for &(tier, kern) in &kernels {
                    let p = PackedDw::quantized_for(tier, kern, &wts, c, &bias, input_q);
                    let mut got = vec![0xa5u8; h_out * len + 1];
                    dwconv_rows_u8(&p, &rows, g, act, &mut got, out_q);
                    let what = format!("{} h={h} w={w_in} c={c} s={s} d={d} pads {pad},{pad_end} {act:?}", kern.name);
                    assert_eq!(got.pop(), Some(0xa5), "{what}: wrote past the rows");
                    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                        panic!(
                            "{what}: at {i} (pixel {}, channel {}): {} vs the twin's {}",
                            i / c,
                            i % c,
                            got[i],
                            want[i]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_rows_are_the_f32_rows_rounded() {
        let kernels = host_kernels(KERNELS_BF16);
        eprintln!("bf16-output depthwise kernels tested: {:?}", kernels.iter().map(|k| k.1.name).collect::<Vec<_>>());
        for (tier, kern) in kernels {
            for (w_in, c, s, d) in
                [(9, 40, 1, 1), (14, 96, 2, 1), (17, 16, 1, 1), (12, 24, 1, 2), (112, 32, 1, 1), (7, 9, 1, 1)]
            {
                let w_out = (w_in - 1) / s + 1;
                let g = DwRow { w_in, w_out, stride: s, dilation: d, pad_left: d };
                let rows: Vec<Vec<f32>> = (0..3).map(|r| vals(r as u64 + c as u64, w_in * c)).collect();
                let (wts, bias) = (vals(c as u64 + 1, 9 * c), vals(5, c));
                for (missing, act) in [(None, MinMax::RELU6), (Some(0), MinMax::NONE), (Some(2), MinMax::RELU6)] {
                    let r: [Option<&[f32]>; 3] =
                        std::array::from_fn(|i| (missing != Some(i)).then(|| rows[i].as_slice()));
                    let mut want = vec![0f32; w_out * c];
                    dwconv_row(&PackedDw::new(Tier::Scalar, &wts, c, &bias), r, g, act, &mut want);
                    let p = PackedDw::for_kernel(tier, kern, &wts, c, &bias);
                    let mut got = vec![Bf16(0x7fc0); w_out * c + 1];
                    dwconv_row_bf16(&p, r, g, act, &mut got);
                    assert_eq!(got[w_out * c], Bf16(0x7fc0), "{}: wrote past the row", kern.name);
                    for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(x.0, f32_to_bf16(*y), "{} w={w_in} c={c} s={s} d={d} at {i}: {y}", kern.name);
                    }
                }
            }
        }
    }

    /// bf16 input rows give, bit for bit, what the f32-input bf16 kernel's twin gives on their
    /// f32 values: every kernel, whole images (several rows per call, more than one call
    /// takes) at strides 1 and 2 and a dilation, padding rows at both ends, channel tails;
    /// nothing written past the rows.
    #[test]
    fn bf16_input_rows_are_their_f32_values() {
        let kernels = host_kernels(KERNELS_BF16_IN);
        eprintln!("bf16-input depthwise kernels tested: {:?}", kernels.iter().map(|k| k.1.name).collect::<Vec<_>>());
        let twin = |wts: &[f32], c: usize, bias: &[f32]| {
            let k = KERNELS_BF16.iter().find(|k| k.needs == Needs::Scalar).expect("the twin");
            PackedDw::for_kernel(Tier::Scalar, k, wts, c, bias)
        };
        for (h, w_in, c, s, d) in [
            (12, 9, 40, 1, 1),
            (21, 14, 24, 2, 1),
            (11, 17, 16, 1, 2),
            (3, 5, 9, 1, 1),
            (4, 112, 32, 1, 1),
            (5, 56, 144, 2, 1),
        ] {
            let eff = 2 * d + 1;
            let (h_out, w_out) = ((h + 2 * d - eff) / s + 1, (w_in + 2 * d - eff) / s + 1);
            let g = DwRow { w_in, w_out, stride: s, dilation: d, pad_left: d };
            let (row, len) = (w_in * c, w_out * c);
            let x16: Vec<Bf16> = vals(h as u64 + c as u64, h * row).iter().map(|v| Bf16(f32_to_bf16(*v))).collect();
            let x32: Vec<f32> = x16.iter().map(|v| bf16_to_f32(v.0)).collect();
            let (wts, bias) = (vals(c as u64 + 1, 9 * c), vals(5, c));
            let rows = |oy: usize| -> [Option<Range<usize>>; 3] {
                std::array::from_fn(|ky| {
                    let iy = (oy * s + ky * d) as isize - d as isize;
                    (0..h as isize).contains(&iy).then(|| iy as usize * row..(iy as usize + 1) * row)
                })
            };
            let r32: Vec<[Option<&[f32]>; 3]> = (0..h_out).map(|oy| rows(oy).map(|r| r.map(|r| &x32[r]))).collect();
            let r16: Vec<[Option<&[Bf16]>; 3]> = (0..h_out).map(|oy| rows(oy).map(|r| r.map(|r| &x16[r]))).collect();
            for act in [MinMax::RELU6, MinMax::NONE] {
                let mut want = vec![Bf16(0); h_out * len];
                dwconv_rows_bf16(&twin(&wts, c, &bias), &r32, g, act, &mut want);
                for &(tier, kern) in &kernels {
                    let p = PackedDw::for_kernel(tier, kern, &wts, c, &bias);
                    let mut got = vec![Bf16(0x7fc0); h_out * len + 1];
                    dwconv_rows_bf16_in(&p, &r16, g, act, &mut got);
                    let what = format!("{} h={h} w={w_in} c={c} s={s} d={d}", kern.name);
                    assert_eq!(got.pop(), Some(Bf16(0x7fc0)), "{what}: wrote past the rows");
                    assert!(got == want, "{what}: not the f32 rows' values");
                }
            }
        }
    }

    /// Rows in pixel pairs: every kernel (and the twin) against the reference convolution of
    /// the bf16-rounded inputs and weights, to one bf16 step of the output (its rounding, after
    /// f32 sums in another order), at strides 1 and 2, widths from one pair up, padding rows
    /// at both ends, more rows than one kernel call takes, channel tails; the vector kernels
    /// against the twin to one bf16 step too; nothing written past the rows.
    #[test]
    fn pixel_pair_rows_match_the_reference() {
        use crate::bf16gemm::round_bf16;
        let kernels = host_kernels(KERNELS_BF16_PAIRS);
        eprintln!("pixel-pair depthwise kernels tested: {:?}", kernels.iter().map(|k| k.1.name).collect::<Vec<_>>());
        let step = |v: f32| (v.abs().max(1e-3)).to_bits() & 0x7f80_0000;
        let ulp = |v: f32| f32::from_bits(step(v)) / 128.0;
        for (h, w_in, c, s) in [
            (12, 2, 16, 1),
            (10, 4, 40, 1),
            (9, 10, 24, 1),
            (5, 14, 144, 1),
            (3, 112, 32, 1),
            (20, 12, 8, 1),
            (4, 56, 144, 2),
            (13, 2, 16, 2),
            (9, 6, 40, 2),
            (19, 18, 24, 2),
            (5, 28, 9, 2),
        ] {
            let (h_out, w_out) = ((h - 1) / s + 1, w_in / s);
            let g = DwRow { w_in, w_out, stride: s, dilation: 1, pad_left: 1 };
            assert!(g.reads_pairs());
            let (row, len) = (w_in * c, w_out * c);
            let x: Vec<f32> = vals(h as u64 * 3 + c as u64, h * row).iter().map(|v| round_bf16(*v)).collect();
            // Pixel 2q + p, channel ch at 2q * c + 2ch + p.
            let mut pairs = vec![Bf16(0); h * row];
            for (i, v) in x.iter().enumerate() {
                let (px, ch) = (i / c, i % c);
                pairs[(px & !1) * c + 2 * ch + (px & 1)] = Bf16(f32_to_bf16(*v));
            }
            let (wts, bias) = (vals(c as u64 + 7, 9 * c), vals(9, c));
            let w16: Vec<f32> = wts.iter().map(|v| round_bf16(*v)).collect();
            let rows: Vec<[Option<&[Bf16]>; 3]> = (0..h_out)
                .map(|oy| {
                    std::array::from_fn(|ky| {
                        let iy = (oy * s + ky) as isize - 1;
                        (0..h as isize).contains(&iy).then(|| &pairs[iy as usize * row..(iy as usize + 1) * row])
                    })
                })
                .collect();
            for act in [MinMax::RELU6, MinMax::NONE] {
                let geom = ConvGeom {
                    in_h: h,
                    in_w: w_in,
                    in_c: c,
                    out_h: h_out,
                    out_w: w_out,
                    out_c: c,
                    kernel: 3,
                    stride: s,
                    dilation: 1,
                    pad_top: 1,
                    pad_left: 1,
                    groups: c,
                };
                let mut want = vec![0.0; h_out * len];
                reference::conv2d_f32(&geom, &x, &w16, &bias, act, None, &mut want);
                let mut outs = Vec::new();
                for &(tier, kern) in &kernels {
                    let p = PackedDw::bf16_pairs_for(tier, kern, &wts, c, &bias);
                    let mut got = vec![Bf16(0x7fc0); h_out * len + 1];
                    dwconv_rows_bf16_pairs(&p, &rows, g, act, &mut got);
                    let what = format!("{} h={h} w={w_in} c={c} s={s}", kern.name);
                    assert_eq!(got.pop(), Some(Bf16(0x7fc0)), "{what}: wrote past the rows");
                    let got: Vec<f32> = got.iter().map(|v| bf16_to_f32(v.0)).collect();
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!((a - b).abs() <= ulp(*b) + 1e-4, "{what} at {i}: {a} vs reference {b}");
                    }
                    outs.push((what, got));
                }
                let (twin, rest) = outs.split_last().expect("the twin runs everywhere");
                for (what, got) in rest {
                    for (i, (a, b)) in got.iter().zip(&twin.1).enumerate() {
                        assert!((a - b).abs() <= ulp(*b), "{what} at {i}: {a} vs twin {b}");
                    }
                }
            }
        }
    }

    /// Several output rows in one call (the tile-by-tile order of the AVX-512 kernels) give
    /// each row's values of one row per call, bit for bit, in f32, bf16 and u8: every
    /// kernel, a whole image at strides 1 and 2 with padding rows at both ends, more rows than
    /// one kernel call takes ([`MAX_ROWS`]), channel tails; nothing written past the rows.
    #[test]
    fn rows_in_one_call_are_the_rows_one_by_one() {
        for (h, w_in, c, s, d) in [(12, 9, 40, 1, 1), (21, 14, 24, 2, 1), (11, 17, 16, 1, 2), (3, 5, 9, 1, 1)] {
            let eff = 2 * d + 1;
            let (h_out, w_out) = ((h + 2 * d - eff) / s + 1, (w_in + 2 * d - eff) / s + 1);
            let g = DwRow { w_in, w_out, stride: s, dilation: d, pad_left: d };
            let len = w_out * c;
            let input = vals(h as u64 + c as u64, h * w_in * c);
            let codes: Vec<u8> = input.iter().map(|v| (v.abs() * 60.0) as u8).collect();
            let (wts, bias) = (vals(c as u64 + 1, 9 * c), vals(5, c));
            fn rows_of<T>(x: &[T], h: usize, row: usize, s: usize, d: usize, oy: usize) -> [Option<&[T]>; 3] {
                std::array::from_fn(|ky| {
                    let iy = (oy * s + ky * d) as isize - d as isize;
                    (0..h as isize).contains(&iy).then(|| &x[iy as usize * row..(iy as usize + 1) * row])
                })
            }
            let f: Vec<[Option<&[f32]>; 3]> = (0..h_out).map(|oy| rows_of(&input, h, w_in * c, s, d, oy)).collect();
            let q: Vec<[Option<&[u8]>; 3]> = (0..h_out).map(|oy| rows_of(&codes, h, w_in * c, s, d, oy)).collect();
            let what = |name: &str| format!("{name} h={h} w={w_in} c={c} s={s} d={d}");
            for (tier, kern) in host_kernels(KERNELS) {
                let p = PackedDw::for_kernel(tier, kern, &wts, c, &bias);
                let mut one = vec![f32::NAN; h_out * len];
                for (oy, r) in f.iter().enumerate() {
                    dwconv_row(&p, *r, g, MinMax::RELU6, &mut one[oy * len..(oy + 1) * len]);
                }
                let mut all = vec![f32::NAN; h_out * len + 1];
                dwconv_rows(&p, &f, g, MinMax::RELU6, &mut all);
                assert!(all[h_out * len].is_nan(), "{}: wrote past the rows", what(kern.name));
                assert!(one.iter().zip(&all).all(|(x, y)| x.to_bits() == y.to_bits()), "{}", what(kern.name));
            }
            for (tier, kern) in host_kernels(KERNELS_BF16) {
                let p = PackedDw::for_kernel(tier, kern, &wts, c, &bias);
                let mut one = vec![Bf16(0); h_out * len];
                for (oy, r) in f.iter().enumerate() {
                    dwconv_row_bf16(&p, *r, g, MinMax::NONE, &mut one[oy * len..(oy + 1) * len]);
                }
                let mut all = vec![Bf16(0x7fc0); h_out * len + 1];
                dwconv_rows_bf16(&p, &f, g, MinMax::NONE, &mut all);
                assert_eq!(all[h_out * len], Bf16(0x7fc0), "{}: wrote past the rows", what(kern.name));
                assert!(one.iter().zip(&all).all(|(x, y)| x.0 == y.0), "{}", what(kern.name));
            }
            let (in_q, out_q) = (QParams { scale: 1.0 / 60.0, zero: 0 }, QParams { scale: 0.05, zero: 3 });
            for (tier, kern) in host_kernels(KERNELS_U8) {
                let p = PackedDw::quantized_for(tier, kern, &wts, c, &bias, in_q);
                let mut one = vec![0u8; h_out * len];
                for (oy, r) in q.iter().enumerate() {
                    dwconv_row_u8(&p, *r, g, MinMax::RELU6, &mut one[oy * len..(oy + 1) * len], out_q);
                }
                let mut all = vec![0xa5u8; h_out * len + 1];
                dwconv_rows_u8(&p, &q, g, MinMax::RELU6, &mut all, out_q);
                assert_eq!(all[h_out * len], 0xa5, "{}: wrote past the rows", what(kern.name));
                assert!(one == all[..h_out * len], "{}", what(kern.name));
            }
        }
    }

    /// The int8 vector kernels' thread-local staging (which the engine counts as activation
    /// memory, the most any block of the network declares) holds no more than the most they
    /// declared for the geometries run so far (the areas only grow): strides 1 and 2, a
    /// dilation, narrow and wide rows.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn int8_kernels_stage_what_they_declare() {
        // What the vector kernel holds now (None: a twin, which allocates per call).
        let held = |name: &str| match name {
            "dwconv_u8_minmax_3x3c64_avx512vnni" => Some(avx512vnni::held_bytes()),
            "dwconv_u8_minmax_3x3c16_avx512" => Some(avx512::held_bytes()),
            "dwconv_u8_minmax_3x3c8_avx2" => Some(avx2::held_bytes()),
            _ => None,
        };
        let q = QParams { scale: 0.05, zero: 0 };
        for (tier, kern) in host_kernels(KERNELS_U8) {
            if held(kern.name).is_none() {
                continue;
            }
            let mut most = 0;
            for (w_in, s, d) in [(7, 2, 1), (14, 1, 1), (28, 1, 2), (56, 2, 1), (112, 1, 1)] {
                let c = 40;
                let g = DwRow { w_in, w_out: (w_in - 1) / s + 1, stride: s, dilation: d, pad_left: d };
                let row: Vec<u8> = (0..w_in * c).map(|i| (i % 200) as u8).collect();
                let p = PackedDw::quantized_for(tier, kern, &vals(1, 9 * c), c, &vals(2, c), q);
                let mut out = vec![0u8; g.w_out * c];
                dwconv_row_u8(&p, [Some(&row), Some(&row), None], g, MinMax::RELU6, &mut out, q);
                most = most.max(p.staging_bytes(g));
                let has = held(kern.name).expect("a vector kernel");
                assert!(has > 0 && has <= most, "{} w={w_in} s={s}: holds {has} bytes, declared {most}", kern.name);
            }
        }
    }

    #[test]
    fn interior_range() {
        let g = DwRow { w_in: 10, w_out: 10, stride: 1, dilation: 1, pad_left: 1 };
        assert_eq!(g.interior(), (1, 9));
        let g = DwRow { w_in: 10, w_out: 5, stride: 2, dilation: 1, pad_left: 1 };
        assert_eq!(g.interior(), (1, 5));
        let g = DwRow { w_in: 10, w_out: 5, stride: 2, dilation: 1, pad_left: 0 };
        assert_eq!(g.interior(), (0, 4));
        let g = DwRow { w_in: 2, w_out: 2, stride: 1, dilation: 2, pad_left: 2 };
        assert_eq!(g.interior(), (0, 0));
    }
}
