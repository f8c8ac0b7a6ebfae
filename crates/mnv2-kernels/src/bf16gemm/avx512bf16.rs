//! AVX-512 BF16 GEMM micro-kernels, blocked like the f32 ones (`crate::gemm`): `MR` rows x 32
//! columns (28 zmm accumulators at MR = 14) or `MR` x 16 (24 at MR = 24) for layers with <= 16
//! outputs. Per pair of input channels: one or two aligned panel loads, MR broadcasts of an A
//! pair (32 bits) and 2*MR (or MR) `vdpbf16ps`, each two multiply-adds per lane: twice the
//! f32 kernel's work per instruction. A is first rounded to bf16 pairs, once per call, into a
//! per-thread scratch (`vcvtne2ps2bf16`). Column tails use masked stores; a 32-column panel
//! with <= 16 real columns runs a 16-column tile, and with 17..=24 either three ymm
//! accumulators per row (9 rows, where [`crate::isa::split_512`], as on Zen 4) or two rows at
//! a time in three zmm ([`tile_pairs`], as the f32 GEMM).

use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::aligned::{grown_aligned, AlignedVec};
use crate::lanes::{
    by_rows, each_row, halves, mask16, pair_bias, pair_rows, panel_tile, rotate_cols, store_pairs, tiles, upper_half,
    words_of, MR32, PAIRS24,
};

use super::{bf16_bit_bounds, ASrc, Args, Bf16, Out, PackedBf16Gemm};

thread_local! {
    /// A rounded to bf16 pairs: `[m][pairs]` 32-bit words; grows to the largest call.
    static A16: RefCell<AlignedVec<u32>> = RefCell::new(AlignedVec::zeros(0));
}

/// Loop invariants of one panel of output columns.
pub(super) struct Panel {
    pub(super) pairs: usize,
    /// A row stride, in pairs.
    pub(super) lda: usize,
    /// Packed columns per pair (`nr`): the weight stride of one pair.
    pub(super) nr: usize,
    pub(super) ldc: usize,
    pub(super) ldr: usize,
    /// Packed weight pairs `[pairs][nr]` and bias `[nr]` of this panel.
    pub(super) b: *const u32,
    pub(super) bias: *const f32,
    pub(super) m0: u16,
    pub(super) m1: u16,
    pub(super) lo: __m512,
    pub(super) hi: __m512,
    /// Pixel pairs: the bounds as bf16 bits in every word, where the clamp follows the
    /// rounding in 16-bit integers ([`super::bf16_bit_bounds`]).
    pub(super) bits: Option<(__m512i, __m512i)>,
}

impl Panel {
    /// Panel `pi` of `w` (its packed pairs, bias and column masks) and `args`' epilogue, for
    /// A rows `lda` pairs apart.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW; `pi` is a panel of `w`.
    #[inline(always)]
    pub(super) unsafe fn new(args: &Args, w: &PackedBf16Gemm, pi: usize, lda: usize) -> Panel {
        let n0 = pi * w.nr;
        let cols = w.nr.min(w.n - n0);
        Panel {
            pairs: w.pairs(),
            lda,
            nr: w.nr,
            ldc: args.ldc,
            ldr: args.ldr,
            b: w.data.as_ptr().add(pi * w.packed_pairs() * w.nr),
            bias: w.bias.as_ptr().add(n0),
            m0: mask16(cols),
            m1: mask16(cols.saturating_sub(16)),
            lo: _mm512_set1_ps(args.act.min),
            hi: _mm512_set1_ps(args.act.max),
            bits: bf16_bit_bounds(args.act).map(|(l, h)| (_mm512_set1_epi16(l), _mm512_set1_epi16(h))),
        }
    }

    /// # Safety
    /// The CPU has AVX-512 F; `r` (null for none) addresses the tile row's panel columns
    /// (masked by `mask`).
    #[inline(always)]
    pub(super) unsafe fn finish(&self, v: __m512, r: *const f32, mask: u16) -> __m512 {
        let v = _mm512_min_ps(_mm512_max_ps(v, self.lo), self.hi);
        if r.is_null() {
            v
        } else {
            _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r))
        }
    }
}

/// The A pair at `p` broadcast to every lane.
///
/// # Safety
/// `p` is readable; the CPU has AVX-512 F.
#[inline(always)]
unsafe fn pair(p: *const u32) -> __m512bh {
    // SAFETY: both are 512-bit vectors of plain bits.
    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*p as i32))
}

/// The 16 weight pairs at `p` (64-byte aligned).
///
/// # Safety
/// `p` is readable for 64 aligned bytes; the CPU has AVX-512 F.
#[inline(always)]
unsafe fn wpairs(p: *const u32) -> __m512bh {
    // SAFETY: both are 512-bit vectors of plain bits.
    std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(p as *const __m512i))
}

/// The 8 weight pairs at `p` (32-byte aligned).
///
/// # Safety
/// `p` is readable for 32 aligned bytes; the CPU has AVX.
#[inline(always)]
unsafe fn wpairs8(p: *const u32) -> __m256bh {
    // SAFETY: both are 256-bit vectors of plain bits.
    std::mem::transmute::<__m256i, __m256bh>(_mm256_load_si256(p as *const __m256i))
}

/// An output element: f32, or bf16 (the sums rounded to nearest even as they are stored),
/// in plain rows or in pixel pairs ([`PairBf16`]).
pub(super) trait Dst: Copy {
    /// f32: every tile serves it; bf16 outputs run no 24-column or one-row tile.
    const F32: bool;

    /// Rows per unit of a tile split: pixel pairs are never split between tiles.
    const STEP: usize;

    /// Column `j` of row `i`, from `c` at row 0, column 0 (`ldc` the values per row).
    ///
    /// # Safety
    /// The address lies in the C that `gemm_bf16` checked.
    #[inline(always)]
    unsafe fn at(c: *mut Self, i: usize, ldc: usize, j: usize) -> *mut Self {
        c.add(i * ldc + j)
    }

    /// The 16 values `v` at `p`, the lanes of `mask`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL and BF16; `p` is writable for the lanes of `mask`.
    unsafe fn store16(p: *mut Self, v: __m512, mask: u16);

    /// Rows `i` (even) and `i + 1` of the 16 columns from `j`, the lanes of `mask`, from
    /// their sums `s0` and `s1` and residual rows `r0` and `r1` (null for none): the panel's
    /// epilogue ([`Panel::finish`]) and the stores.
    ///
    /// # Safety
    /// As [`Dst::at`] and [`Dst::store16`] for both rows, and [`Panel::finish`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn store16x2(
        p: &Panel,
        c: *mut Self,
        (i, j): (usize, usize),
        s0: __m512,
        s1: __m512,
        (r0, r1): (*const f32, *const f32),
        mask: u16,
    ) {
        Self::store16(Self::at(c, i, p.ldc, j), p.finish(s0, r0, mask), mask);
        Self::store16(Self::at(c, i + 1, p.ldc, j), p.finish(s1, r1, mask), mask);
    }
}

impl Dst for f32 {
    const F32: bool = true;
    const STEP: usize = 1;

    #[inline(always)]
    unsafe fn store16(p: *mut f32, v: __m512, mask: u16) {
        _mm512_mask_storeu_ps(p, mask, v)
    }
}

impl Dst for Bf16 {
    const F32: bool = false;
    const STEP: usize = 1;

    #[inline(always)]
    unsafe fn store16(p: *mut Bf16, v: __m512, mask: u16) {
        // SAFETY: both are 256-bit vectors of plain bits.
        let h = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
        _mm256_mask_storeu_epi16(p as *mut i16, mask, h)
    }
}

/// A bf16 output in pixel pairs (`gemm_bf16_to_bf16_pairs`): column `j` of rows `2q` and
/// `2q + 1` at `2q * ldc + 2j` and `2q * ldc + 2j + 1`.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct PairBf16(#[allow(dead_code)] u16);

impl Dst for PairBf16 {
    const F32: bool = false;
    const STEP: usize = 2;

    #[inline(always)]
    unsafe fn at(c: *mut Self, i: usize, ldc: usize, j: usize) -> *mut Self {
        c.add((i & !1) * ldc + (i & 1) + 2 * j)
    }

    /// One row alone: only a tile of an odd height stores one, and pixel pairs run tiles of
    /// even heights (`panels` splits M into whole pairs); the tiles' odd heights are compiled
    /// for every output type but never run for this one.
    #[inline(always)]
    unsafe fn store16(_: *mut PairBf16, _: __m512, _: u16) {
        unreachable!("pixel pairs run tiles of even heights")
    }

    /// Both rows rounded by one `vcvtne2ps2bf16` and interleaved by one `vpermw`, then
    /// clamped as 32 bf16 values at once where the bounds allow ([`super::bf16_bit_bounds`]:
    /// two 16-bit integer ops where the f32 clamp takes four), else clamped in f32 first: one
    /// store of 32 values. (No residual: expand convs write pairs.)
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn store16x2(
        p: &Panel,
        c: *mut PairBf16,
        (i, j): (usize, usize),
        s0: __m512,
        s1: __m512,
        _: (*const f32, *const f32),
        mask: u16,
    ) {
        let v = match p.bits {
            Some((lo, hi)) => _mm512_min_epi16(_mm512_max_epi16(pair_words(s0, s1), lo), hi),
            None => pair_words(p.finish(s0, std::ptr::null(), mask), p.finish(s1, std::ptr::null(), mask)),
        };
        let dst = Self::at(c, i, p.ldc, j) as *mut i16;
        if mask == u16::MAX {
            _mm512_storeu_si512(dst as *mut __m512i, v)
        } else {
            _mm512_mask_storeu_epi16(dst, words_of(mask), v)
        }
    }
}

/// The 16 values of `v0` (pixel `2q`) and `v1` (pixel `2q + 1`) rounded to bf16 (to
/// nearest even) and interleaved value by value: the 32 words of 16 channels of a pixel pair.
/// One `vcvtne2ps2bf16` and one `vpermw`; the bf16 stem's pair rows use it too.
///
/// # Safety
/// The CPU has AVX-512 F/BW and BF16.
#[inline(always)]
pub(crate) unsafe fn pair_words(v0: __m512, v1: __m512) -> __m512i {
    const INTERLEAVE: [i16; 32] = {
        let mut idx = [0i16; 32];
        let mut w = 0;
        while w < 32 {
            idx[w] = (w / 2 + 16 * (w % 2)) as i16;
            w += 1;
        }
        idx
    };
    // SAFETY: both are 512-bit vectors of plain bits; the index array is 64 bytes.
    let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(v1, v0));
    let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr() as *const __m512i);
    _mm512_permutexvar_epi16(idx, both)
}

/// One tile of MR rows x 32 columns.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/DQ and BF16; `a` addresses the tile's rows of bf16 pairs
/// (stride `p.pairs`), `c` and `r` (null for none) its rows and the panel's columns with the
/// strides `gemm_bf16` checked.
#[inline(always)]
unsafe fn tile32<const MR: usize, D: Dst>(p: &Panel, a: *const u32, c: *mut D, r: *const f32) {
    let mut acc0 = [_mm512_load_ps(p.bias); MR];
    let mut acc1 = [_mm512_load_ps(p.bias.add(16)); MR];
    let mut bp = p.b;
    let mut ap = a;
    for _ in 0..p.pairs {
        let b0 = wpairs(bp);
        let b1 = wpairs(bp.add(16));
        for i in 0..MR {
            let av = pair(ap.add(i * p.lda));
            acc0[i] = _mm512_dpbf16_ps(acc0[i], av, b0);
            acc1[i] = _mm512_dpbf16_ps(acc1[i], av, b1);
        }
        bp = bp.add(32);
        ap = ap.add(1);
    }
    let rrow = |i: usize, j: usize| if r.is_null() { r } else { r.add(i * p.ldr + j) };
    each_row!(MR, |i| {
        if D::STEP == 2 && i.is_multiple_of(2) && i + 1 < MR {
            D::store16x2(p, c, (i, 0), acc0[i], acc0[i + 1], (rrow(i, 0), rrow(i + 1, 0)), p.m0);
            D::store16x2(p, c, (i, 16), acc1[i], acc1[i + 1], (rrow(i, 16), rrow(i + 1, 16)), p.m1);
        } else if D::STEP == 1 || i.is_multiple_of(2) {
            D::store16(D::at(c, i, p.ldc, 0), p.finish(acc0[i], rrow(i, 0), p.m0), p.m0);
            D::store16(D::at(c, i, p.ldc, 16), p.finish(acc1[i], rrow(i, 16), p.m1), p.m1);
        }
    });
}

/// One tile of up to `2 * P` rows of a 32-column panel with 17..=24 real columns, two rows
/// at a time ([`PAIRS24`]): 1.5 `vdpbf16ps` per row and pair of k where [`tile32`] runs 2.
/// With an odd row count the last row is its own partner. Per lane the same `vdpbf16ps`
/// chain as [`tile32`], so the same bits.
///
/// # Safety
/// As [`tile32`], for `rows` rows.
#[inline(always)]
unsafe fn tile_pairs<const P: usize>(p: &Panel, rows: usize, a: *const u32, c: *mut f32, r: *const f32) {
    let bh = |v: __m512| std::mem::transmute::<__m512, __m512bh>(v);
    let mut acc = [pair_bias(p.bias); P];
    let upper = upper_half();
    let mut bp = p.b;
    let mut ap = a;
    for _ in 0..p.pairs {
        // Weight pairs of columns 0..16 and 8..24 (the packing's zeros beyond the real ones).
        let b0 = _mm512_load_ps(bp as *const f32);
        let b2 = _mm512_loadu_ps(bp.add(8) as *const f32);
        let b1 = rotate_cols(b0, b2);
        for (j, v) in acc.iter_mut().enumerate() {
            let (i0, i1) = pair_rows(j, rows);
            let x0 = _mm512_castsi512_ps(_mm512_set1_epi32(*ap.add(i0 * p.lda) as i32));
            let x1 = _mm512_castsi512_ps(_mm512_set1_epi32(*ap.add(i1 * p.lda) as i32));
            v[0] = _mm512_dpbf16_ps(v[0], bh(x0), bh(b0));
            v[1] = _mm512_dpbf16_ps(v[1], bh(halves(x0, x1, upper)), bh(b1));
            v[2] = _mm512_dpbf16_ps(v[2], bh(x1), bh(b2));
        }
        bp = bp.add(32);
        ap = ap.add(1);
    }
    let cols = 16 + p.m1.count_ones() as usize;
    store_pairs(&acc, rows, cols, (c, p.ldc), (r, p.ldr), p.lo, p.hi);
}

/// One tile of MR rows x 24 columns of a 32-column panel (its last 8 columns are padding), in
/// three 256-bit accumulators per row, which Zen 4 runs at half the cost of 512-bit ones, so
/// layers of 24 outputs do 3/4 of the full tile's work. Not one zmm and one ymm: LLVM then
/// loaded each A pair into a general register and broadcast it from there (a shuffle per row,
/// on the vector pipes). Per lane the same `vdpbf16ps` chain as [`tile32`], so the same bits.
///
/// # Safety
/// As [`tile32`].
#[inline(always)]
unsafe fn tile24<const MR: usize>(p: &Panel, a: *const u32, c: *mut f32, r: *const f32) {
    let mut acc0 = [_mm256_load_ps(p.bias); MR];
    let mut acc1 = [_mm256_load_ps(p.bias.add(8)); MR];
    let mut acc2 = [_mm256_load_ps(p.bias.add(16)); MR];
    let mut bp = p.b;
    let mut ap = a;
    for _ in 0..p.pairs {
        let (b0, b1, b2) = (wpairs8(bp), wpairs8(bp.add(8)), wpairs8(bp.add(16)));
        for i in 0..MR {
            // SAFETY: both are 256-bit vectors of plain bits.
            let av = std::mem::transmute::<__m256i, __m256bh>(_mm256_set1_epi32(*ap.add(i * p.lda) as i32));
            acc0[i] = _mm256_dpbf16_ps(acc0[i], av, b0);
            acc1[i] = _mm256_dpbf16_ps(acc1[i], av, b1);
            acc2[i] = _mm256_dpbf16_ps(acc2[i], av, b2);
        }
        bp = bp.add(32);
        ap = ap.add(1);
    }
    let (lo, hi) = (_mm512_castps512_ps256(p.lo), _mm512_castps512_ps256(p.hi));
    let m1 = p.m1 as u8;
    for i in 0..MR {
        let rp = if r.is_null() { r } else { r.add(i * p.ldr) };
        let cp = c.add(i * p.ldc);
        let v = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(acc0[i]), acc1[i]);
        _mm512_mask_storeu_ps(cp, p.m0, p.finish(v, rp, p.m0));
        let mut v = _mm256_min_ps(_mm256_max_ps(acc2[i], lo), hi);
        if !rp.is_null() {
            v = _mm256_add_ps(v, _mm256_maskz_loadu_ps(m1, rp.add(16)));
        }
        _mm256_mask_storeu_ps(cp.add(16), m1, v);
    }
}

/// One tile of MR rows x 16 columns.
///
/// # Safety
/// As [`tile32`].
#[inline(always)]
unsafe fn tile16<const MR: usize, D: Dst>(p: &Panel, a: *const u32, c: *mut D, r: *const f32) {
    let mut acc = [_mm512_load_ps(p.bias); MR];
    let mut bp = p.b;
    let mut ap = a;
    for _ in 0..p.pairs {
        let b0 = wpairs(bp);
        for (i, x) in acc.iter_mut().enumerate() {
            *x = _mm512_dpbf16_ps(*x, pair(ap.add(i * p.lda)), b0);
        }
        bp = bp.add(p.nr);
        ap = ap.add(1);
    }
    let rrow = |i: usize| if r.is_null() { r } else { r.add(i * p.ldr) };
    each_row!(MR, |i| {
        if D::STEP == 2 && i.is_multiple_of(2) && i + 1 < MR {
            D::store16x2(p, c, (i, 0), acc[i], acc[i + 1], (rrow(i), rrow(i + 1)), p.m0);
        } else if D::STEP == 1 || i.is_multiple_of(2) {
            D::store16(D::at(c, i, p.ldc, 0), p.finish(acc[i], rrow(i), p.m0), p.m0);
        }
    });
}

/// One row (the classifier's pooled features) x four full 32-column panels from panel `p0`:
/// eight independent sums instead of [`tile32`]'s two, whose `vdpbf16ps` latency (not the
/// weight stream) bounded a one-row product. Per lane the same chain as `tile32::<1>`.
///
/// # Safety
/// As [`tile32`], with panels `p0..p0 + 4` full and within `args.panels`, and `a` one row of
/// `w.pairs()` pairs.
#[inline(always)]
unsafe fn row4(args: &Args, w: &PackedBf16Gemm, a: *const u32, p0: usize) {
    let pairs = w.pairs();
    let stride = w.packed_pairs();
    let b: [*const u32; 4] = std::array::from_fn(|j| w.data.as_ptr().add((p0 + j) * stride * 32));
    let bias = w.bias.as_ptr().add(p0 * 32);
    let mut acc: [__m512; 8] = std::array::from_fn(|j| _mm512_load_ps(bias.add(16 * j)));
    for q in 0..pairs {
        let av = pair(a.add(q));
        for j in 0..4 {
            acc[2 * j] = _mm512_dpbf16_ps(acc[2 * j], av, wpairs(b[j].add(q * 32)));
            acc[2 * j + 1] = _mm512_dpbf16_ps(acc[2 * j + 1], av, wpairs(b[j].add(q * 32 + 16)));
        }
    }
    let (lo, hi) = (_mm512_set1_ps(args.act.min), _mm512_set1_ps(args.act.max));
    for (j, v) in acc.iter().enumerate() {
        let col = p0 * 32 + 16 * j;
        let mut v = _mm512_min_ps(_mm512_max_ps(*v, lo), hi);
        if !args.r.is_null() {
            v = _mm512_add_ps(v, _mm512_loadu_ps(args.r.add(col)));
        }
        _mm512_storeu_ps(args.c.add(col), v);
    }
}

/// Rounds `m` rows of `k` f32 (stride `lda`) to bf16 pairs, rows of `pairs` words in `dst`
/// (`pairs >= k.div_ceil(2)`; the words after the first `k.div_ceil(2)` are left as they
/// are), a zero channel after an odd `k`.
///
/// Contiguous rows of an even `k` (`lda == k`: every caller in the engine) packed without a
/// gap (`2 * pairs == k`) are one flat run
/// of `m * k` values, rounded 64 at a time without per-row masks: the per-row loop cost as
/// much as the products in the small-K layers (K = 16..32 rounds one or two vectors a row).
///
/// # Safety
/// The CPU has AVX-512 F/BW and BF16; `a` is readable for the rows, `dst` holds `m * pairs`.
#[inline(always)]
pub(super) unsafe fn round_rows(m: usize, k: usize, a: *const f32, lda: usize, dst: *mut u32, pairs: usize) {
    if lda == k && 2 * pairs == k {
        return round_flat(m * k, a, dst);
    }
    for i in 0..m {
        let (src, out) = (a.add(i * lda), dst.add(i * pairs));
        let mut c = 0;
        while c < k {
            let left = k - c;
            let lo = _mm512_maskz_loadu_ps(mask16(left), src.add(c));
            let hi = _mm512_maskz_loadu_ps(mask16(left.saturating_sub(16)), src.add(c + 16));
            // SAFETY: both are 512-bit vectors of plain bits.
            let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi32(out.add(c / 2) as *mut i32, mask16(left.div_ceil(2)), v);
            c += 32;
        }
    }
}

/// 32 f32 at `src` rounded to 16 bf16 pairs at `dst`.
///
/// # Safety
/// The CPU has AVX-512 F and BF16; `src` is readable for 32 f32, `dst` writable for 16 u32.
#[inline(always)]
unsafe fn round32(src: *const f32, dst: *mut u32) {
    let (lo, hi) = (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16)));
    // SAFETY: both are 512-bit vectors of plain bits.
    let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
    _mm512_storeu_si512(dst as *mut __m512i, v);
}

/// `len` (even) contiguous f32 at `a` rounded to `len / 2` bf16 pairs at `dst`.
///
/// # Safety
/// The CPU has AVX-512 F/BW and BF16; `a` is readable for `len` f32, `dst` writable for
/// `len / 2` u32.
#[inline(always)]
unsafe fn round_flat(len: usize, a: *const f32, dst: *mut u32) {
    let mut c = 0;
    while c + 64 <= len {
        round32(a.add(c), dst.add(c / 2));
        round32(a.add(c + 32), dst.add(c / 2 + 16));
        c += 64;
    }
    while c < len {
        let left = len - c;
        let lo = _mm512_maskz_loadu_ps(mask16(left), a.add(c));
        let hi = _mm512_maskz_loadu_ps(mask16(left.saturating_sub(16)), a.add(c + 16));
        // SAFETY: both are 512-bit vectors of plain bits.
        let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_mask_storeu_epi32(dst.add(c / 2) as *mut i32, mask16(left.div_ceil(2)), v);
        c += 32;
    }
}

/// # Safety
/// `args` must describe valid buffers for `w` (checked by `gemm_bf16`); the CPU must have
/// AVX-512 F/BW/VL/DQ and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
pub(crate) unsafe fn gemm(args: &Args, w: &PackedBf16Gemm, src: ASrc, out: Out) {
    let (a16, lda) = match src {
        ASrc::Pairs(a16, lda) => (a16, lda),
        ASrc::F32 => {
            let pairs = w.pairs();
            // Valid until this thread next grows the area; nothing else uses it.
            let a16 = grown_aligned(&A16, args.m * pairs);
            round_rows(args.m, w.k, args.a, args.lda, a16, pairs);
            (a16 as *const u32, pairs)
        }
    };
    match out {
        Out::F32 => panels_f32(args, w, a16, lda),
        Out::Bf16 => panels_bf16(args, w, a16, lda),
        Out::Bf16Pairs => panels_bf16_pairs(args, w, a16, lda),
    }
}

/// [`panels`] into f32 C: one copy of the tiles for both sources of A (rounded here, or
/// already rounded), in a function of its own as [`panels_bf16`].
///
/// # Safety
/// As [`panels`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
#[inline(never)]
unsafe fn panels_f32(args: &Args, w: &PackedBf16Gemm, a16: *const u32, lda: usize) {
    panels::<f32>(args, w, a16, lda)
}

/// [`panels`] into bf16 C (see [`panels_f32`]).
///
/// # Safety
/// As [`panels`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
#[inline(never)]
unsafe fn panels_bf16(args: &Args, w: &PackedBf16Gemm, a16: *const u32, lda: usize) {
    panels::<Bf16>(args, w, a16, lda)
}

/// [`panels`] into bf16 C in pixel pairs (see [`panels_f32`]).
///
/// # Safety
/// As [`panels`], with `args.m` even.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
#[inline(never)]
unsafe fn panels_bf16_pairs(args: &Args, w: &PackedBf16Gemm, a16: *const u32, lda: usize) {
    panels::<PairBf16>(args, w, a16, lda)
}

/// The panels of `args` from A rounded to bf16 pairs at `a16` (rows `lda` pairs apart), into
/// C of `D` at `args.c`.
///
/// # Safety
/// As [`gemm`], with `a16` readable for `args.m` rows of `w.pairs()` pairs.
#[inline(always)]
unsafe fn panels<D: Dst>(args: &Args, w: &PackedBf16Gemm, a16: *const u32, lda: usize) {
    let (n, nr) = (w.n, w.nr);
    {
        let mut first = args.panels.start;
        if args.m == 1 && nr == 32 && D::F32 {
            while first + 4 <= args.panels.end && (first + 4) * nr <= n {
                row4(args, w, a16, first);
                first += 4;
            }
        }
        for pi in first..args.panels.end {
            let n0 = pi * nr;
            let cols = nr.min(n - n0);
            let p = Panel::new(args, w, pi, lda);
            // A 32-column panel of <= 24 (or <= 16) real columns, as the N = 24 projections and
            // the last panel of N = 144 expansions, skips its padding (no 8-column tile here).
            // bf16 outputs (the expand convs' rows) run the 32-column tile on 17..=24 columns.
            let (width, mr) = match panel_tile(cols, nr, w.split) {
                (24 | PAIRS24, _) if !D::F32 => (32, MR32),
                t => t,
            };
            // Pixel pairs: tiles of whole pairs (a 13-row tile would start the next at an odd row).
            let (count, base, extra) = tiles(args.m / D::STEP, mr / D::STEP);
            let mut i = 0;
            for t in 0..count {
                let rows = D::STEP * (base + usize::from(t < extra));
                let a = a16.add(i * lda);
                let c = D::at(args.c as *mut D, i, args.ldc, n0);
                let r = if args.r.is_null() { args.r } else { args.r.add(i * args.ldr + n0) };
                match width {
                    32 => by_rows!(32, rows, |R| tile32::<R, D>(&p, a, c, r)),
                    // f32 C only (the width above).
                    PAIRS24 => by_rows!(pairs, rows, |P| tile_pairs::<P>(&p, rows, a, c.cast(), r)),
                    24 => by_rows!(24, rows, |R| tile24::<R>(&p, a, c.cast(), r)),
                    _ => by_rows!(16, rows, |R| tile16::<R, D>(&p, a, c, r)),
                }
                i += rows;
            }
        }
    }
}
