//! AVX-512 depthwise 3x3. Per 16-channel tile the 9 weight vectors and the bias stay in
//! registers while the row is walked. Interior pixels go XB at a time, fully unrolled with
//! stride and dilation as constants, so taps shared by neighbouring pixels are loaded once.
//! A missing (padding) input row is replaced by a present row with zero weights, which keeps
//! the inner loop free of branches. Edge pixels go one at a time with bounds checks; channel
//! tails use masked loads and stores.
//!
//! u8 rows: each input value is read by up to 9 taps, so widening it to f32 at every tap
//! would cost more than the multiply-adds. Instead the tile's three input rows are widened
//! once into a small f32 staging area (16 channels per pixel, contiguous), and the f32 loop
//! runs on that with the weights' integers: every partial sum is an integer below 2^24, so
//! exact, and [`Epi::store_codes`] requantises it to u8 as it stores. Hosts with VNNI run
//! `avx512vnni`'s integer kernel on u8 rows instead (the same bytes).

use std::arch::x86_64::*;

use crate::lanes::{load16, mask16};
use std::cell::RefCell;

use super::{padding_reads_present, Args, DwRow, Elem, PackedDw, Requant};
use crate::aligned::grown;
use crate::bf16gemm::Bf16;

/// The epilogue of one 16-channel tile: the activation's bounds (f32 outputs), or the int8
/// requantisation of exact sums ([`super::Requant`], lane by lane).
pub(super) struct Epi {
    /// Lanes of the tile's channels (tails are masked).
    pub mask: u16,
    pub lo: __m512,
    pub hi: __m512,
    /// Per channel multiplier and addend into output codes.
    pub m: __m512,
    pub b: __m512,
    pub q_lo: __m512i,
    pub q_hi: __m512i,
    /// The upper bound is the code 255, which the store's unsigned saturation applies.
    pub saturates: bool,
}

impl Epi {
    /// For the channels `ct..ct + 16` of `w` (`mask` of them real).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ; `ct` is a tile of `w`'s packing.
    #[inline(always)]
    pub unsafe fn new<I, O>(args: &Args<I, O>, w: &PackedDw, ct: usize, mask: u16) -> Epi {
        let (mut m, mut b, mut q_lo, mut q_hi) = (_mm512_setzero_ps(), _mm512_setzero_ps(), 0, 255);
        if !w.scale.is_empty() {
            let rq = Requant::new(args.act, args.out_q);
            (m, b) = channels(&rq, w.scale.as_ptr().add(ct), w.bias.as_ptr().add(ct));
            (q_lo, q_hi) = (rq.lo, rq.hi);
        }
        Epi {
            mask,
            lo: _mm512_set1_ps(args.act.min),
            hi: _mm512_set1_ps(args.act.max),
            m,
            b,
            q_lo: _mm512_set1_epi32(q_lo),
            q_hi: _mm512_set1_epi32(q_hi),
            saturates: q_hi == 255,
        }
    }

    /// Stores the output codes of exact sums `acc` (held as f32) at `p`: the tile's lanes.
    /// With `SAT` ([`Epi::saturates`]) the store clamps to 255 itself.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ; `p` holds the tile's channels.
    #[inline(always)]
    pub unsafe fn store_codes<const FULL: bool, const SAT: bool>(&self, p: *mut u8, acc: __m512) {
        // Capped first: from 2^31 on the conversion gives i32::MIN.
        let x = _mm512_min_ps(_mm512_fmadd_ps(acc, self.m, self.b), _mm512_set1_ps(1e9));
        let q = _mm512_max_epi32(_mm512_cvtps_epi32(x), self.q_lo);
        let mask = if FULL { 0xffff } else { self.mask };
        if SAT {
            _mm512_mask_cvtusepi32_storeu_epi8(p as *mut i8, mask, q);
        } else {
            _mm512_mask_cvtepi32_storeu_epi8(p as *mut i8, mask, _mm512_min_epi32(q, self.q_hi));
        }
    }
}

/// [`Requant::channel`] of 16 channels: their multipliers and addends from the scales and
/// biases at `scale` and `bias` (64-byte aligned), lane by lane the same operations.
///
/// # Safety
/// The CPU has AVX-512 F; both pointers are readable for 16 aligned f32.
#[inline(always)]
pub(super) unsafe fn channels(rq: &Requant, scale: *const f32, bias: *const f32) -> (__m512, __m512) {
    let inv = _mm512_set1_ps(rq.inv);
    (_mm512_mul_ps(_mm512_load_ps(scale), inv), _mm512_fmadd_ps(_mm512_load_ps(bias), inv, _mm512_set1_ps(rq.zero)))
}

/// Storing 16 channels of an output element type from the f32 sums of a tile.
pub(super) trait Out: Elem {
    /// The sums' starting value: the bias (f32 outputs), or zero (int8: [`Epi::store_codes`]
    /// adds it).
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    unsafe fn init(bias: __m512) -> __m512;

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
    /// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
    /// masks passed stay within them.
    unsafe fn store<const FULL: bool>(p: *mut Self, v: __m512, e: &Epi);
}

impl Out for f32 {
    #[inline(always)]
    unsafe fn init(bias: __m512) -> __m512 {
        bias
    }

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
    /// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
    /// masks passed stay within them.
    #[inline(always)]
    unsafe fn store<const FULL: bool>(p: *mut f32, v: __m512, e: &Epi) {
        let v = _mm512_min_ps(_mm512_max_ps(v, e.lo), e.hi);
        if FULL {
            _mm512_storeu_ps(p, v)
        } else {
            _mm512_mask_storeu_ps(p, e.mask, v)
        }
    }
}

impl Out for Bf16 {
    #[inline(always)]
    unsafe fn init(bias: __m512) -> __m512 {
        bias
    }

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ and BF16 (callers are [`row_bf16`]); the pointers this
    /// writes lie in the row `dwconv_row_bf16` checked, and the masks passed stay within it.
    #[inline(always)]
    unsafe fn store<const FULL: bool>(p: *mut Bf16, v: __m512, e: &Epi) {
        let v = _mm512_min_ps(_mm512_max_ps(v, e.lo), e.hi);
        // SAFETY: both are 256-bit vectors of plain bits.
        let h = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
        if FULL {
            _mm256_storeu_si256(p as *mut __m256i, h)
        } else {
            _mm256_mask_storeu_epi16(p as *mut i16, e.mask, h)
        }
    }
}

impl Out for u8 {
    #[inline(always)]
    unsafe fn init(_: __m512) -> __m512 {
        _mm512_setzero_ps()
    }

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
    /// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
    /// masks passed stay within them.
    #[inline(always)]
    unsafe fn store<const FULL: bool>(p: *mut u8, v: __m512, e: &Epi) {
        if e.saturates {
            e.store_codes::<FULL, true>(p, v)
        } else {
            e.store_codes::<FULL, false>(p, v)
        }
    }
}

/// Loading 16 channels of an input element type as f32 (exact).
trait In {
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL; `p` is readable for the lanes of `mask` (all 16 if `FULL`).
    unsafe fn load<const FULL: bool>(p: *const Self, mask: u16) -> __m512;
}

impl In for f32 {
    #[inline(always)]
    unsafe fn load<const FULL: bool>(p: *const f32, mask: u16) -> __m512 {
        load16::<FULL>(p, mask)
    }
}

impl In for Bf16 {
    /// Widened to f32 exactly (zero-extended to 32 bits, shifted into the upper half): two more
    /// operations per load than f32 rows, for half the bytes.
    #[inline(always)]
    unsafe fn load<const FULL: bool>(p: *const Bf16, mask: u16) -> __m512 {
        let h = if FULL {
            _mm256_loadu_si256(p as *const __m256i)
        } else {
            _mm256_maskz_loadu_epi16(mask, p as *const i16)
        };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
}

/// Loop invariants of one 16-channel tile: input rows of `I` with pixel stride `in_stride`,
/// output of type `O` with pixel stride `out_stride`.
struct Tile<I, O> {
    rows: [*const I; 3],
    out: *mut O,
    in_stride: usize,
    out_stride: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    w_in: usize,
    w: [__m512; 9],
    /// The sums' starting value ([`Out::init`]).
    init: __m512,
    epi: Epi,
}

impl<I: In, O: Out> Tile<I, O> {
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
    /// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
    /// masks passed stay within them.
    #[inline(always)]
    unsafe fn load<const FULL: bool>(&self, p: *const I) -> __m512 {
        I::load::<FULL>(p, self.epi.mask)
    }

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
    /// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
    /// masks passed stay within them.
    #[inline(always)]
    unsafe fn store<const FULL: bool>(&self, x: usize, v: __m512) {
        O::store::<FULL>(self.out.add(x * self.out_stride), v, &self.epi);
    }

    /// XB interior pixels from output column `x0`; S and D are stride and dilation.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
    /// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
    /// masks passed stay within them.
    #[inline(always)]
    unsafe fn interior<const S: usize, const D: usize, const XB: usize, const FULL: bool>(&self, x0: usize) {
        let mut acc = [self.init; XB];
        for ky in 0..3 {
            let base = self.rows[ky].add((x0 * S - self.pad) * self.in_stride);
            for kx in 0..3 {
                let w = self.w[ky * 3 + kx];
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(self.load::<FULL>(base.add((j * S + kx * D) * self.in_stride)), w, *a);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            self.store::<FULL>(x0 + j, *a);
        }
    }

    /// One pixel; with `checked`, taps outside the row are skipped.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
    /// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
    /// masks passed stay within them.
    #[inline(always)]
    unsafe fn pixel(&self, x: usize, checked: bool) {
        let mut a = self.init;
        for ky in 0..3 {
            for kx in 0..3 {
                let ix = (x * self.stride + kx * self.dilation) as isize - self.pad as isize;
                if checked && (ix < 0 || ix as usize >= self.w_in) {
                    continue;
                }
                let v = self.load::<false>(self.rows[ky].add(ix as usize * self.in_stride));
                a = _mm512_fmadd_ps(v, self.w[ky * 3 + kx], a);
            }
        }
        self.store::<false>(x, a);
    }

    /// Interior pixels `x..hi` in blocks of XB; returns where it stopped.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
    /// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
    /// masks passed stay within them.
    #[inline(always)]
    unsafe fn run<const S: usize, const D: usize, const XB: usize, const FULL: bool>(
        &self,
        mut x: usize,
        hi: usize,
    ) -> usize {
        while x + XB <= hi {
            self.interior::<S, D, XB, FULL>(x);
            x += XB;
        }
        x
    }

    /// One pixel whose taps `kx` in `K0..K1` lie inside the row (the others are padding):
    /// the left and right edge of dilation-1 rows, unrolled with no bounds checks.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
    /// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
    /// masks passed stay within them.
    #[inline(always)]
    unsafe fn edge<const K0: usize, const K1: usize>(&self, x: usize) {
        let mut a = self.init;
        for ky in 0..3 {
            for kx in K0..K1 {
                let ix = x * self.stride + kx - self.pad;
                a = _mm512_fmadd_ps(self.load::<false>(self.rows[ky].add(ix * self.in_stride)), self.w[ky * 3 + kx], a);
            }
        }
        self.store::<false>(x, a);
    }

    /// An edge pixel: the unrolled forms where they apply, else checked taps.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
    /// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
    /// masks passed stay within them.
    #[inline(always)]
    unsafe fn edge_pixel(&self, x: usize) {
        let first = (x * self.stride) as isize - self.pad as isize;
        if self.dilation == 1 && first == -1 && first + 2 < self.w_in as isize {
            self.edge::<1, 3>(x);
        } else if self.dilation == 1 && first >= 0 && first + 1 < self.w_in as isize && first + 2 == self.w_in as isize
        {
            self.edge::<0, 2>(x);
        } else {
            self.pixel(x, true);
        }
    }

    /// Interior pixels `x..hi`: blocks of 8 (stride 1; no gain measured at stride 2), 4, 2, then 1.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
    /// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
    /// masks passed stay within them.
    #[inline(always)]
    unsafe fn cascade<const S: usize, const D: usize, const FULL: bool>(&self, x: usize, hi: usize) -> usize {
        let x = if S == 1 { self.run::<S, D, 8, FULL>(x, hi) } else { x };
        let x = self.run::<S, D, 4, FULL>(x, hi);
        let x = self.run::<S, D, 2, FULL>(x, hi);
        self.run::<S, D, 1, FULL>(x, hi)
    }

    /// The whole output row of this tile.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
    /// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
    /// masks passed stay within them.
    #[inline(always)]
    unsafe fn walk(&self, w_out: usize, (lo_x, hi_x): (usize, usize), full: bool) {
        for x in 0..lo_x {
            self.edge_pixel(x);
        }
        // Blocks of 8 (stride 1) or 4 pixels, then smaller blocks for the rest: at 7 and 14
        // pixels wide most of a row would otherwise go one pixel at a time.
        let x = match (self.stride, self.dilation, full) {
            (1, 1, true) => self.cascade::<1, 1, true>(lo_x, hi_x),
            (1, 1, false) => self.cascade::<1, 1, false>(lo_x, hi_x),
            (2, 1, true) => self.cascade::<2, 1, true>(lo_x, hi_x),
            (2, 1, false) => self.cascade::<2, 1, false>(lo_x, hi_x),
            (1, 2, true) => self.cascade::<1, 2, true>(lo_x, hi_x),
            (1, 4, true) => self.cascade::<1, 4, true>(lo_x, hi_x),
            _ => lo_x,
        };
        for x in x..hi_x {
            self.pixel(x, false);
        }
        for x in hi_x.max(lo_x)..w_out {
            self.edge_pixel(x);
        }
    }
}

thread_local! {
    /// f32 staging of the three u8 input rows of one 16-channel tile.
    static STAGING: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row`); the CPU must have AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) unsafe fn row(args: &[Args<f32, f32>], w: &PackedDw) {
    row_in_place(args, w)
}

/// f32 rows to bf16 rows: the f32 kernel, its results rounded on store.
///
/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row_bf16`); the CPU must have
/// AVX-512 and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
pub(crate) unsafe fn row_bf16(args: &[Args<f32, Bf16>], w: &PackedDw) {
    row_in_place(args, w)
}

/// bf16 rows to bf16 rows: each loaded value widened to f32 exactly, the f32 kernel's sums,
/// rounded on store.
///
/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_rows_bf16_in`); the CPU must
/// have AVX-512 and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
pub(crate) unsafe fn row_bf16_in(args: &[Args<Bf16, Bf16>], w: &PackedDw) {
    row_in_place(args, w)
}

/// Input rows of `I` read in place, output `O`.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
/// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
/// masks passed stay within them.
#[inline(always)]
unsafe fn row_in_place<I: In, O: Out>(args: &[Args<I, O>], w: &PackedDw) {
    let rows = |a: &Args<I, O>, ct: usize, _: usize| -> [*const I; 3] {
        let mut rows = a.rows;
        for r in rows.iter_mut().filter(|r| !r.is_null()) {
            *r = r.add(ct);
        }
        rows
    };
    row_tiles(args, w, rows, w.c);
}

/// Bytes of the staging area [`row_u8`] uses for rows of `g`: three input rows of one
/// 16-channel tile, widened to f32 (`DwKernel::staging`).
pub(crate) fn staging_bytes_u8(g: DwRow, _c: usize) -> usize {
    3 * g.w_in * 16 * size_of::<f32>()
}

/// Bytes this thread's staging area holds now.
#[cfg(test)]
pub(crate) fn held_bytes() -> usize {
    STAGING.with_borrow(|s| s.len() * size_of::<f32>())
}

/// u8 rows to u8 rows, widened into the staging area.
///
/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row_u8`), packed by
/// `PackedDw::quantized_for`; the CPU must have AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) unsafe fn row_u8(args: &[Args<u8, u8>], w: &PackedDw) {
    let Some(first) = args.first() else { return };
    let g = first.g;
    let c = w.c;
    // Valid until this thread next asks for a larger staging area; nothing else uses it. Each
    // tile of each row is widened into it just before it is walked.
    let stage = grown(&STAGING, staging_bytes_u8(g, c) / size_of::<f32>(), 0.0);
    let widen = |a: &Args<u8, u8>, ct: usize, cols: usize| -> [*const f32; 3] {
        let mask = mask16(cols);
        std::array::from_fn(|i| {
            let r = a.rows[i];
            if r.is_null() {
                return std::ptr::null();
            }
            let dst = stage.add(i * g.w_in * 16);
            for x in 0..g.w_in {
                let b = _mm_maskz_loadu_epi8(mask, r.add(x * c + ct) as *const i8);
                _mm512_storeu_ps(dst.add(x * 16), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)));
            }
            dst as *const f32
        })
    };
    row_tiles(args, w, widen, 16);
}

/// Runs every 16-channel tile of every output row of `args`, tile by tile (each across all
/// the rows, so the input rows they share stay in L1): `rows_of(row, ct, cols)` gives the
/// tile's input rows (null for padding rows) whose pixel stride is `in_stride`.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/DQ (callers are this module's `#[target_feature]` row function); the
/// pointers this reads and writes lie in the rows `dwconv_row` checked, and the columns, tiles and
/// masks passed stay within them.
#[inline(always)]
unsafe fn row_tiles<A, I: In, O: Out>(
    all: &[Args<A, O>],
    w: &PackedDw,
    rows_of: impl Fn(&Args<A, O>, usize, usize) -> [*const I; 3],
    in_stride: usize,
) {
    let Some(first) = all.first() else { return };
    let g = first.g;
    let c = w.c;
    let interior = g.interior();
    for ct in (0..c).step_by(16) {
        let cols = (c - ct).min(16);
        for args in all {
            let rows = rows_of(args, ct, cols);
            let t = Tile {
                rows: padding_reads_present(rows),
                out: args.out.add(ct),
                in_stride,
                out_stride: c,
                stride: g.stride,
                dilation: g.dilation,
                pad: g.pad_left,
                w_in: g.w_in,
                w: std::array::from_fn(|k| {
                    if rows[k / 3].is_null() {
                        _mm512_setzero_ps()
                    } else {
                        _mm512_load_ps(w.weights.as_ptr().add(k * w.c_pad + ct))
                    }
                }),
                init: O::init(_mm512_load_ps(w.bias.as_ptr().add(ct))),
                epi: Epi::new(args, w, ct, mask16(cols)),
            };
            t.walk(g.w_out, interior, cols == 16);
        }
    }
}
