//! AVX-512 GEMM micro-kernels: `MR` rows x 32 columns (28 zmm accumulators at MR = 14) or
//! `MR` x 16 (24 at MR = 24) for layers with <= 16 outputs. Per k step: one or two aligned
//! panel loads and MR broadcasts of A, then 2*MR (or MR) FMAs; the two FMA ports stay busy
//! while the load ports have slack. Column tails use masked stores.
//!
//! A panel with padding columns (the last one of a layer whose output count is not a multiple
//! of the panel width) runs a narrower tile over the same packing: <= 16 real columns one zmm
//! ([`tile16`]), <= 8 one ymm ([`tile8`], also for 16-column panels), and 17..=24 either three
//! ymm per row ([`tile24`], 9 rows) or two rows at a time in three zmm ([`tile_pairs`], 16
//! rows). On Zen 4 a 512-bit FMA takes both 256-bit pipes, so a padded lane costs as much as a
//! real one and a ymm FMA half: [`tile24`]. Where a 512-bit FMA is as fast as a ymm one (Zen
//! 5, Intel), the pair tile's 1.5 zmm per row beat three ymm and [`tile32`]'s two zmm (the
//! packing's `split`, from [`crate::isa::split_512`]). Every tile runs the same fused chain
//! per output element (bias, one FMA per k in order, clamp, residual), so the width changes
//! no bit.

use std::arch::x86_64::*;

use crate::lanes::{
    by_rows, halves, mask16, pair_bias, pair_rows, panel_tile, rotate_cols, store_pairs, tiles, upper_half, PAIRS24,
};

use super::{Args, PackedGemm};

/// Loop invariants of one panel of output columns.
struct Panel {
    k: usize,
    lda: usize,
    ldc: usize,
    ldr: usize,
    /// Packed columns per k step (`nr`): the weight stride.
    nr: usize,
    /// Packed weights `[k][nr]` and bias `[nr]` of this panel.
    b: *const f32,
    bias: *const f32,
    m0: u16,
    m1: u16,
    lo: __m512,
    hi: __m512,
}

impl Panel {
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ; `a`, `c` and `r` (null for none) address the tile's rows and the
    /// panel's columns (masked by `mask`) with the strides `gemm` checked.
    #[inline(always)]
    unsafe fn finish(&self, v: __m512, r: *const f32, mask: u16) -> __m512 {
        let v = _mm512_min_ps(_mm512_max_ps(v, self.lo), self.hi);
        if r.is_null() {
            v
        } else {
            _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, r))
        }
    }

    /// [`Panel::finish`] for 8 columns in a ymm register, stored at `c` under `mask`.
    ///
    /// # Safety
    /// As [`Panel::finish`], for the 8 columns at `c` and `r` (masked by `mask`).
    #[inline(always)]
    unsafe fn store8(&self, v: __m256, c: *mut f32, r: *const f32, mask: u8) {
        let (lo, hi) = (_mm512_castps512_ps256(self.lo), _mm512_castps512_ps256(self.hi));
        let mut v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
        if !r.is_null() {
            v = _mm256_add_ps(v, _mm256_maskz_loadu_ps(mask, r));
        }
        _mm256_mask_storeu_ps(c, mask, v);
    }
}

/// One tile of MR rows x 32 columns.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/DQ; `a`, `c` and `r` (null for none) address the tile's rows and the
/// panel's columns (masked by `mask`) with the strides `gemm` checked.
#[inline(always)]
unsafe fn tile32<const MR: usize>(p: &Panel, a: *const f32, c: *mut f32, r: *const f32) {
    let mut acc0 = [_mm512_load_ps(p.bias); MR];
    let mut acc1 = [_mm512_load_ps(p.bias.add(16)); MR];
    let mut bp = p.b;
    let mut ap = a;
    for _ in 0..p.k {
        let b0 = _mm512_load_ps(bp);
        let b1 = _mm512_load_ps(bp.add(16));
        for i in 0..MR {
            let av = _mm512_set1_ps(*ap.add(i * p.lda));
            acc0[i] = _mm512_fmadd_ps(av, b0, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(av, b1, acc1[i]);
        }
        bp = bp.add(32);
        ap = ap.add(1);
    }
    for i in 0..MR {
        let rp = if r.is_null() { r } else { r.add(i * p.ldr) };
        let cp = c.add(i * p.ldc);
        _mm512_mask_storeu_ps(cp, p.m0, p.finish(acc0[i], rp, p.m0));
        let rp = if r.is_null() { r } else { rp.add(16) };
        _mm512_mask_storeu_ps(cp.add(16), p.m1, p.finish(acc1[i], rp, p.m1));
    }
}

/// One tile of MR rows x 24 columns of a 32-column panel whose last 8 columns are padding, in
/// three ymm accumulators per row (half the cost of zmm on Zen 4): 3/4 of [`tile32`]'s FMA
/// work. Not one zmm and one ymm: LLVM then broadcasts A from memory into a ymm and widens it
/// to the zmm with a shuffle per row, which took the FMA pipes' time back (no gain measured).
/// Per lane the same FMA chain as [`tile32`], so the same bits.
///
/// # Safety
/// As [`tile32`].
#[inline(always)]
unsafe fn tile24<const MR: usize>(p: &Panel, a: *const f32, c: *mut f32, r: *const f32) {
    let mut acc0 = [_mm256_load_ps(p.bias); MR];
    let mut acc1 = [_mm256_load_ps(p.bias.add(8)); MR];
    let mut acc2 = [_mm256_load_ps(p.bias.add(16)); MR];
    let mut bp = p.b;
    let mut ap = a;
    for _ in 0..p.k {
        let b0 = _mm256_load_ps(bp);
        let b1 = _mm256_load_ps(bp.add(8));
        let b2 = _mm256_load_ps(bp.add(16));
        for i in 0..MR {
            let av = _mm256_set1_ps(*ap.add(i * p.lda));
            acc0[i] = _mm256_fmadd_ps(av, b0, acc0[i]);
            acc1[i] = _mm256_fmadd_ps(av, b1, acc1[i]);
            acc2[i] = _mm256_fmadd_ps(av, b2, acc2[i]);
        }
        bp = bp.add(32);
        ap = ap.add(1);
    }
    for i in 0..MR {
        let rp = if r.is_null() { r } else { r.add(i * p.ldr) };
        let cp = c.add(i * p.ldc);
        let v = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(acc0[i]), acc1[i]);
        _mm512_mask_storeu_ps(cp, p.m0, p.finish(v, rp, p.m0));
        let rp = if r.is_null() { r } else { rp.add(16) };
        p.store8(acc2[i], cp.add(16), rp, p.m1 as u8);
    }
}

/// One tile of up to `2 * P` rows of a 32-column panel with 17..=24 real columns, two rows
/// at a time ([`PAIRS24`]). `rows` (odd or even) are real; with an odd count the last row is
/// its own partner. Per lane the same FMA chain as [`tile32`], so the same bits.
///
/// # Safety
/// As [`tile32`], for `rows` rows.
#[inline(always)]
unsafe fn tile_pairs<const P: usize>(p: &Panel, rows: usize, a: *const f32, c: *mut f32, r: *const f32) {
    let mut acc = [pair_bias(p.bias); P];
    let upper = upper_half();
    let mut bp = p.b;
    let mut ap = a;
    for _ in 0..p.k {
        // Columns 0..16 and 8..24 (the packing's zeros beyond the real ones).
        let b0 = _mm512_load_ps(bp);
        let b2 = _mm512_loadu_ps(bp.add(8));
        let b1 = rotate_cols(b0, b2);
        for (j, v) in acc.iter_mut().enumerate() {
            let (i0, i1) = pair_rows(j, rows);
            let x0 = _mm512_set1_ps(*ap.add(i0 * p.lda));
            let x1 = _mm512_set1_ps(*ap.add(i1 * p.lda));
            v[0] = _mm512_fmadd_ps(x0, b0, v[0]);
            v[1] = _mm512_fmadd_ps(halves(x0, x1, upper), b1, v[1]);
            v[2] = _mm512_fmadd_ps(x1, b2, v[2]);
        }
        bp = bp.add(32);
        ap = ap.add(1);
    }
    let cols = 16 + p.m1.count_ones() as usize;
    store_pairs(&acc, rows, cols, (c, p.ldc), (r, p.ldr), p.lo, p.hi);
}

/// One tile of MR rows x 16 columns (a 16-column panel, or the first 16 of a 32-column one).
///
/// # Safety
/// As [`tile32`].
#[inline(always)]
unsafe fn tile16<const MR: usize>(p: &Panel, a: *const f32, c: *mut f32, r: *const f32) {
    let mut acc = [_mm512_load_ps(p.bias); MR];
    let mut bp = p.b;
    let mut ap = a;
    for _ in 0..p.k {
        let b0 = _mm512_load_ps(bp);
        for (i, x) in acc.iter_mut().enumerate() {
            *x = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(i * p.lda)), b0, *x);
        }
        bp = bp.add(p.nr);
        ap = ap.add(1);
    }
    for (i, x) in acc.iter().enumerate() {
        let rp = if r.is_null() { r } else { r.add(i * p.ldr) };
        _mm512_mask_storeu_ps(c.add(i * p.ldc), p.m0, p.finish(*x, rp, p.m0));
    }
}

/// One tile of MR rows x 8 columns (the first 8 of a panel), in ymm registers.
///
/// # Safety
/// As [`tile32`].
#[inline(always)]
unsafe fn tile8<const MR: usize>(p: &Panel, a: *const f32, c: *mut f32, r: *const f32) {
    let mut acc = [_mm256_load_ps(p.bias); MR];
    let mut bp = p.b;
    let mut ap = a;
    for _ in 0..p.k {
        let b0 = _mm256_load_ps(bp);
        for (i, x) in acc.iter_mut().enumerate() {
            *x = _mm256_fmadd_ps(_mm256_set1_ps(*ap.add(i * p.lda)), b0, *x);
        }
        bp = bp.add(p.nr);
        ap = ap.add(1);
    }
    for (i, x) in acc.iter().enumerate() {
        let rp = if r.is_null() { r } else { r.add(i * p.ldr) };
        p.store8(*x, c.add(i * p.ldc), rp, p.m0 as u8);
    }
}

/// # Safety
/// `args` must describe valid buffers for `w` (checked by `gemm`); the CPU must have AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) unsafe fn gemm(args: &Args, w: &PackedGemm) {
    let (k, n, nr) = (w.k, w.n, w.nr);
    for pi in args.panels.clone() {
        let n0 = pi * nr;
        let cols = nr.min(n - n0);
        let p = Panel {
            k,
            lda: args.lda,
            ldc: args.ldc,
            ldr: args.ldr,
            nr,
            b: w.data.as_ptr().add(pi * k * nr),
            bias: w.bias.as_ptr().add(n0),
            m0: mask16(cols),
            m1: mask16(cols.saturating_sub(16)),
            lo: _mm512_set1_ps(args.act.min),
            hi: _mm512_set1_ps(args.act.max),
        };
        // A panel with padding columns (the N = 24 projections, the last panel of the
        // N = 144 expansions) runs the narrowest tile that covers its real ones.
        let (width, mr) = panel_tile(cols, nr, w.split);
        let (count, base, extra) = tiles(args.m, mr);
        let mut i = 0;
        for t in 0..count {
            let rows = base + usize::from(t < extra);
            let a = args.a.add(i * args.lda);
            let c = args.c.add(i * args.ldc + n0);
            let r = if args.r.is_null() { args.r } else { args.r.add(i * args.ldr + n0) };
            match width {
                PAIRS24 => by_rows!(pairs, rows, |P| tile_pairs::<P>(&p, rows, a, c, r)),
                32 => by_rows!(32, rows, |R| tile32::<R>(&p, a, c, r)),
                24 => by_rows!(24, rows, |R| tile24::<R>(&p, a, c, r)),
                16 => by_rows!(16, rows, |R| tile16::<R>(&p, a, c, r)),
                _ => by_rows!(8, rows, |R| tile8::<R>(&p, a, c, r)),
            }
            i += rows;
        }
    }
}
