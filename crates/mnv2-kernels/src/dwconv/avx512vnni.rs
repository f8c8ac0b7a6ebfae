//! AVX-512 VNNI depthwise 3x3 on u8 rows: exact integer sums, three taps per `vpdpbusd`.
//!
//! Per 16-channel tile, the three input rows of one pixel are interleaved into a vector of 16
//! quads, one per channel: its bytes in rows 0, 1 and 2, then a zero. Each row's 16 bytes are
//! broadcast to the four 128-bit lanes, and one in-lane byte shuffle, masked to bytes 0, 1 or
//! 2 of each quad, moves channel `4 * lane + i` into quad `i` of its lane. An output pixel is
//! then one `vpdpbusd` per horizontal tap against the packed weight quads (the vertical taps'
//! int8 weights; the fourth byte zero), instead of nine f32 multiply-adds on widened values.
//! Interior pixels go XB at a time with stride and dilation as constants, so the quads that
//! neighbouring pixels share are built once; edge pixels build a zero quad for padding. A
//! padding row is a present row whose weight bytes are zeroed. The sums are exact, and
//! [`Epi::codes`] (shared with the f32 kernel) requantises them.

use std::arch::x86_64::*;

use super::avx512::Epi;
use super::{Args, PackedDw};
use crate::lanes::mask16;

/// The byte shuffle that moves byte `4 * lane + i` of each 128-bit lane to quad `i`.
#[repr(align(64))]
struct Idx([u8; 64]);

static QUAD_IDX: Idx = {
    let mut v = [0u8; 64];
    let mut p = 0;
    while p < 64 {
        v[p] = (4 * (p / 16) + (p % 16) / 4) as u8;
        p += 1;
    }
    Idx(v)
};

/// The bytes of each 32-bit lane that input row `r` fills.
const ROW_BYTES: [u64; 3] = [0x1111_1111_1111_1111, 0x2222_2222_2222_2222, 0x4444_4444_4444_4444];

/// Loop invariants of one 16-channel tile.
struct Tile {
    rows: [*const u8; 3],
    out: *mut u8,
    /// Pixel stride of the input and output rows (the channels).
    c: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    w_in: usize,
    /// Weight quads of the three horizontal taps.
    w: [__m512i; 3],
    idx: __m512i,
    epi: Epi,
}

impl Tile {
    /// The quads of input pixel `ix`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ and VNNI (callers are [`row`]); `ix` lies in the rows
    /// `dwconv_row_u8` checked.
    #[inline(always)]
    unsafe fn quad<const FULL: bool>(&self, ix: usize) -> __m512i {
        let load = |r: *const u8| {
            let p = r.add(ix * self.c);
            let v = if FULL {
                _mm_loadu_si128(p as *const __m128i)
            } else {
                _mm_maskz_loadu_epi8(self.epi.mask, p as *const i8)
            };
            _mm512_broadcast_i32x4(v)
        };
        let q = _mm512_maskz_shuffle_epi8(ROW_BYTES[0], load(self.rows[0]), self.idx);
        let q = _mm512_mask_shuffle_epi8(q, ROW_BYTES[1], load(self.rows[1]), self.idx);
        _mm512_mask_shuffle_epi8(q, ROW_BYTES[2], load(self.rows[2]), self.idx)
    }

    /// # Safety
    /// As [`Tile::quad`]; `x` is an output pixel of the row.
    #[inline(always)]
    unsafe fn store<const FULL: bool, const SAT: bool>(&self, x: usize, acc: __m512i) {
        self.epi.store_codes::<FULL, SAT>(self.out.add(x * self.c), _mm512_cvtepi32_ps(acc));
    }

    /// XB interior pixels from output column `x0`; S and D are stride and dilation. Each quad
    /// is built once and goes at once to the pixels that read it.
    ///
    /// # Safety
    /// As [`Tile::quad`]; every tap of the block lies inside the row.
    #[inline(always)]
    unsafe fn interior<const S: usize, const D: usize, const XB: usize, const FULL: bool, const SAT: bool>(
        &self,
        x0: usize,
    ) {
        let base = x0 * S - self.pad;
        let mut acc = [_mm512_setzero_si512(); XB];
        for o in 0..(XB - 1) * S + 2 * D + 1 {
            let q = self.quad::<FULL>(base + o);
            for kx in 0..3 {
                if o >= kx * D && (o - kx * D).is_multiple_of(S) && (o - kx * D) / S < XB {
                    let j = (o - kx * D) / S;
                    acc[j] = _mm512_dpbusd_epi32(acc[j], q, self.w[kx]);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            self.store::<FULL, SAT>(x0 + j, *a);
        }
    }

    /// One pixel, its taps outside the row read as zero.
    ///
    /// # Safety
    /// As [`Tile::quad`].
    #[inline(always)]
    unsafe fn pixel<const SAT: bool>(&self, x: usize) {
        let mut acc = _mm512_setzero_si512();
        for kx in 0..3 {
            let ix = (x * self.stride + kx * self.dilation) as isize - self.pad as isize;
            if ix >= 0 && (ix as usize) < self.w_in {
                acc = _mm512_dpbusd_epi32(acc, self.quad::<false>(ix as usize), self.w[kx]);
            }
        }
        self.store::<false, SAT>(x, acc);
    }

    /// Interior pixels `x..hi` in blocks of XB; returns where it stopped.
    ///
    /// # Safety
    /// As [`Tile::interior`].
    #[inline(always)]
    unsafe fn run<const S: usize, const D: usize, const XB: usize, const FULL: bool, const SAT: bool>(
        &self,
        mut x: usize,
        hi: usize,
    ) -> usize {
        while x + XB <= hi {
            self.interior::<S, D, XB, FULL, SAT>(x);
            x += XB;
        }
        x
    }

    /// Interior pixels `x..hi`: blocks of XB, 4, 2, then 1.
    ///
    /// # Safety
    /// As [`Tile::interior`].
    #[inline(always)]
    unsafe fn cascade<const S: usize, const D: usize, const XB: usize, const FULL: bool, const SAT: bool>(
        &self,
        x: usize,
        hi: usize,
    ) -> usize {
        let x = self.run::<S, D, XB, FULL, SAT>(x, hi);
        let x = self.run::<S, D, 4, FULL, SAT>(x, hi);
        let x = self.run::<S, D, 2, FULL, SAT>(x, hi);
        self.run::<S, D, 1, FULL, SAT>(x, hi)
    }

    /// The whole output row of this tile.
    ///
    /// # Safety
    /// As [`Tile::quad`].
    #[inline(always)]
    unsafe fn walk<const SAT: bool>(&self, w_out: usize, (lo_x, hi_x): (usize, usize), full: bool) {
        for x in 0..lo_x {
            self.pixel::<SAT>(x);
        }
        let x = match (self.stride, self.dilation, full) {
            (1, 1, true) => self.cascade::<1, 1, XB1, true, SAT>(lo_x, hi_x),
            (1, 1, false) => self.cascade::<1, 1, XB1, false, SAT>(lo_x, hi_x),
            (2, 1, true) => self.cascade::<2, 1, 8, true, SAT>(lo_x, hi_x),
            (2, 1, false) => self.cascade::<2, 1, 8, false, SAT>(lo_x, hi_x),
            (1, 2, true) => self.cascade::<1, 2, 8, true, SAT>(lo_x, hi_x),
            (1, 4, true) => self.cascade::<1, 4, 8, true, SAT>(lo_x, hi_x),
            _ => lo_x,
        };
        for x in x..w_out {
            self.pixel::<SAT>(x);
        }
    }
}

/// Pixels per block at stride 1 and dilation 1.
const XB1: usize = 16;

/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row_u8`), packed by
/// [`PackedDw::quantized_for`]; the CPU must have AVX-512 and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
pub(crate) unsafe fn row(args: &Args<u8, u8>, w: &PackedDw) {
    let g = args.g;
    let c = w.c;
    let interior = g.interior();
    // A padding row reads a present row with its weight bytes zeroed (one is always present).
    let present = args.rows.iter().copied().find(|r| !r.is_null()).expect("at least one input row");
    let rows: [*const u8; 3] = std::array::from_fn(|i| if args.rows[i].is_null() { present } else { args.rows[i] });
    let keep = (0..3).filter(|&i| !args.rows[i].is_null()).fold(0u64, |k, i| k | ROW_BYTES[i]);
    let idx = _mm512_load_si512(QUAD_IDX.0.as_ptr() as *const _);
    for ct in (0..c).step_by(16) {
        let cols = (c - ct).min(16);
        let t = Tile {
            rows: rows.map(|r| r.add(ct)),
            out: args.out.add(ct),
            c,
            stride: g.stride,
            dilation: g.dilation,
            pad: g.pad_left,
            w_in: g.w_in,
            w: std::array::from_fn(|kx| {
                _mm512_maskz_mov_epi8(
                    keep,
                    _mm512_load_si512(w.weights.as_ptr().add((9 + kx) * w.c_pad + ct) as *const _),
                )
            }),
            idx,
            epi: Epi::new(args, w, ct, mask16(cols)),
        };
        if t.epi.saturates {
            t.walk::<true>(g.w_out, interior, cols == 16)
        } else {
            t.walk::<false>(g.w_out, interior, cols == 16)
        }
    }
}
