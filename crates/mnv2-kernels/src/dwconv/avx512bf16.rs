//! AVX-512 BF16 depthwise 3x3 on expanded rows in pixel pairs (`dwconv_rows_bf16_pairs`):
//! the two pixels of a pair interleaved channel by channel, so one 512-bit load holds 16
//! channels of two horizontal neighbours, and one `vdpbf16ps` adds two taps per lane.
//!
//! With `Q[k]` the pair of pixels `2k` and `2k + 1` and the weights of one kernel row
//! `(w0, w1, w2)` paired per lane as (even pixel's weight, odd pixel's weight), an output
//! pixel reads, per kernel row:
//! - stride 1, `x = 2k`: `Q[k] . (w1, w2) + Q[k - 1] . (0, w0)`;
//! - stride 1, `x = 2k + 1`: `Q[k] . (w0, w1) + Q[k + 1] . (w2, 0)`;
//! - stride 2, `x`: `Q[x] . (w1, w2) + Q[x - 1] . (0, w0)` (pixels `2x - 1 .. 2x + 1`).
//!
//! Six `vdpbf16ps` per output pixel and 16 channels where the f32 kernel runs nine FMAs,
//! and half the bytes read. The pair at `-1` (and at the right end at stride 1) is the zero
//! padding: its term is left out, which is what adding its zero products would give.
//! Weights and inputs are bf16; the sums are f32, from the bias, in the instruction's order.

use std::arch::x86_64::*;

use crate::lanes::{mask16, words_of};

use super::avx512::{Epi, Out};
use super::{padding_reads_present, Args, PackedDw, PAIR_WEIGHTS};
use crate::bf16gemm::Bf16;

/// Loop invariants of one 16-channel tile.
struct Tile<O> {
    /// The three input rows at this tile's channels (padding rows replaced, with zero
    /// weights), as bf16 words.
    rows: [*const u16; 3],
    out: *mut O,
    /// Words per pixel pair (twice the channels).
    pair_stride: usize,
    out_stride: usize,
    /// `[ky * 4 + t]`: the pair weights `t` of kernel row `ky`.
    w: [__m512bh; 12],
    init: __m512,
    /// The tile's words (two per channel lane).
    words: u32,
    epi: Epi,
}

impl<O: Out> Tile<O> {
    /// Pair `k` of kernel row `ky`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW; pair `k` lies in the row (`dwconv_rows_bf16_pairs` checked).
    #[inline(always)]
    unsafe fn pair<const FULL: bool>(&self, ky: usize, k: usize) -> __m512bh {
        let p = self.rows[ky].add(k * self.pair_stride);
        let v = if FULL {
            _mm512_loadu_si512(p as *const __m512i)
        } else {
            _mm512_maskz_loadu_epi16(self.words, p as *const i16)
        };
        // SAFETY: both are 512-bit vectors of plain bits.
        std::mem::transmute::<__m512i, __m512bh>(v)
    }

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL and BF16; output pixel `x` lies in the row.
    #[inline(always)]
    unsafe fn store<const FULL: bool>(&self, x: usize, v: __m512) {
        O::store::<FULL>(self.out.add(x * self.out_stride), v, &self.epi);
    }

    /// Stride 1: the NB pairs of output pixels from pair `k0`. `LEFT`: `k0` is the first pair
    /// (no pair before it); `RIGHT`: the block ends the row (no pair after it).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL and BF16; the pairs `k0 - 1 ..= k0 + NB` that the flags
    /// leave in lie in the rows.
    #[inline(always)]
    unsafe fn pairs1<const NB: usize, const LEFT: bool, const RIGHT: bool, const FULL: bool>(&self, k0: usize) {
        let mut even = [self.init; NB];
        let mut odd = [self.init; NB];
        for ky in 0..3 {
            let w = |t: usize| self.w[ky * 4 + t];
            for j in 0..NB {
                let k = k0 + j;
                let cur = self.pair::<FULL>(ky, k);
                even[j] = _mm512_dpbf16_ps(even[j], cur, w(0));
                if !(LEFT && j == 0) {
                    even[j] = _mm512_dpbf16_ps(even[j], self.pair::<FULL>(ky, k - 1), w(1));
                }
                odd[j] = _mm512_dpbf16_ps(odd[j], cur, w(2));
                if !(RIGHT && j == NB - 1) {
                    odd[j] = _mm512_dpbf16_ps(odd[j], self.pair::<FULL>(ky, k + 1), w(3));
                }
            }
        }
        for j in 0..NB {
            self.store::<FULL>(2 * (k0 + j), even[j]);
            self.store::<FULL>(2 * (k0 + j) + 1, odd[j]);
        }
    }

    /// Stride 2: the NB output pixels from `x0` (`LEFT`: `x0` is 0, no pair before it).
    ///
    /// # Safety
    /// As [`Tile::pairs1`], for the pairs `x0 - 1 .. x0 + NB`.
    #[inline(always)]
    unsafe fn pixels2<const NB: usize, const LEFT: bool, const FULL: bool>(&self, x0: usize) {
        let mut acc = [self.init; NB];
        for ky in 0..3 {
            let w = |t: usize| self.w[ky * 4 + t];
            for (j, a) in acc.iter_mut().enumerate() {
                let x = x0 + j;
                *a = _mm512_dpbf16_ps(*a, self.pair::<FULL>(ky, x), w(0));
                if !(LEFT && j == 0) {
                    *a = _mm512_dpbf16_ps(*a, self.pair::<FULL>(ky, x - 1), w(1));
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            self.store::<FULL>(x0 + j, *a);
        }
    }

    /// The whole output row of this tile: `pairs` input pairs, stride 1 or 2. Interior
    /// pixels go in blocks of 12 (6 pairs) at stride 1 and 16 at stride 2, then smaller: each
    /// output is a chain of six dependent `vdpbf16ps`, and blocks of 8 left too few chains in
    /// flight to hide their latency (Zen 5, stage profile of 5 alternating runs: the 112 -> 56
    /// block's depthwise conv 29.2 -> 26.5 us, the stride-1 ones 1-3% faster).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL and BF16; the rows hold `pairs` pairs, the output
    /// `pairs * 2 / stride` pixels.
    #[inline(always)]
    unsafe fn walk<const FULL: bool>(&self, pairs: usize, stride: usize) {
        if stride == 1 {
            if pairs == 1 {
                return self.pairs1::<1, true, true, FULL>(0);
            }
            self.pairs1::<1, true, false, FULL>(0);
            let mut k = 1;
            while k + 6 < pairs {
                self.pairs1::<6, false, false, FULL>(k);
                k += 6;
            }
            while k + 4 < pairs {
                self.pairs1::<4, false, false, FULL>(k);
                k += 4;
            }
            while k + 1 < pairs {
                self.pairs1::<1, false, false, FULL>(k);
                k += 1;
            }
            self.pairs1::<1, false, true, FULL>(pairs - 1);
        } else {
            self.pixels2::<1, true, FULL>(0);
            let mut x = 1;
            while x + 16 <= pairs {
                self.pixels2::<16, false, FULL>(x);
                x += 16;
            }
            while x + 8 <= pairs {
                self.pixels2::<8, false, FULL>(x);
                x += 8;
            }
            while x + 2 <= pairs {
                self.pixels2::<2, false, FULL>(x);
                x += 2;
            }
            while x < pairs {
                self.pixels2::<1, false, FULL>(x);
                x += 1;
            }
        }
    }
}

/// bf16 rows in pixel pairs to plain bf16 rows, every 16-channel tile of every output row
/// of `args`, tile by tile (each across all the rows, so the input rows they share stay in
/// L1).
///
/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_rows_bf16_pairs`), packed by
/// `PackedDw::bf16_pairs`; the CPU must have AVX-512 and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
pub(crate) unsafe fn row_pairs(args: &[Args<Bf16, Bf16>], w: &PackedDw) {
    let Some(first) = args.first() else { return };
    let g = first.g;
    let c = w.c;
    let pairs = g.w_in / 2;
    let pw = w.weights.as_ptr() as *const u32;
    for ct in (0..c).step_by(16) {
        let cols = (c - ct).min(16);
        for a in args {
            let present = a.rows.map(|r| !r.is_null());
            let rows = padding_reads_present(a.rows).map(|r| (r as *const u16).add(2 * ct));
            let t = Tile {
                rows,
                out: a.out.add(ct),
                pair_stride: 2 * c,
                out_stride: c,
                w: std::array::from_fn(|i| {
                    let v = if present[i / PAIR_WEIGHTS] {
                        _mm512_load_si512(pw.add(i * w.c_pad + ct) as *const __m512i)
                    } else {
                        _mm512_setzero_si512()
                    };
                    // SAFETY: both are 512-bit vectors of plain bits.
                    std::mem::transmute::<__m512i, __m512bh>(v)
                }),
                init: _mm512_load_ps(w.bias.as_ptr().add(ct)),
                words: words_of(mask16(cols)),
                epi: Epi::new(a, w, ct, mask16(cols)),
            };
            if cols == 16 {
                t.walk::<true>(pairs, g.stride)
            } else {
                t.walk::<false>(pairs, g.stride)
            }
        }
    }
}
