//! AVX2 + FMA GEMM micro-kernel: `MR` rows x 16 columns (12 ymm accumulators at MR = 6).
//! A last panel of at most 8 real columns (24 outputs: 16 + 8) runs a one-vector tile of up
//! to 12 rows instead of computing 8 padding columns. A row count that would leave a short
//! last tile is split into two tiles of about equal rows (13 = 7 + 6, 7 = 4 + 3): a tile of
//! one or two rows has too few accumulators to hide the FMA latency. The first tile of each
//! panel prefetches the next panel's weights, a line per k, while the panel's own arrive.
//! Column tails go through a small stack buffer; whole panels add the residual in registers.
//! Whether there is a residual is a constant of each copy of the tile loops, so a whole
//! panel's epilogue is straight-line code: as a loop over the rows, the accumulators spilled
//! and the residual tested per row, it held a fifth of a K = 16 layer's samples (isolated on
//! Zen 3: 560x16x96 25.8 -> 20.2 us, 560x24x144 50.9 -> 43.4 us, 196x64x384 106 -> 98.5 us).
//! Every row is summed in k order whatever its tile: the same bits from every tiling.

use std::arch::x86_64::*;

use super::{tile_rows, Args, PackedGemm};

/// Rows of the two-vector tile.
const MR: usize = 6;
/// Rows of the one-vector tile.
const MR1: usize = 12;

/// Loop invariants of one panel of 16 output columns.
struct Panel {
    k: usize,
    lda: usize,
    ldc: usize,
    ldr: usize,
    b: *const f32,
    bias: *const f32,
    cols: usize,
    lo: __m256,
    hi: __m256,
}

/// `R` rows of `V` vectors (one: the panel's first 8 columns, all it has).
///
/// # Safety
/// The CPU has AVX2 and FMA; `a`, `c` and `r` (null for none) address `R` rows of the panel's
/// columns with the strides `gemm` checked; `PF`: the weights of one more panel follow.
#[inline(always)]
unsafe fn tile<const R: usize, const V: usize, const PF: bool, const RES: bool>(
    p: &Panel,
    a: *const f32,
    c: *mut f32,
    r: *const f32,
) {
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    for row in acc.iter_mut() {
        for (v, x) in row.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(p.bias.add(8 * v));
        }
    }
    let mut bp = p.b;
    let mut ap = a;
    for _ in 0..p.k {
        let mut b = [_mm256_setzero_ps(); V];
        for (v, x) in b.iter_mut().enumerate() {
            *x = _mm256_load_ps(bp.add(8 * v));
        }
        if PF {
            _mm_prefetch::<_MM_HINT_T0>(bp.add(p.k * 16) as *const i8);
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*ap.add(i * p.lda));
            for v in 0..V {
                row[v] = _mm256_fmadd_ps(av, b[v], row[v]);
            }
        }
        bp = bp.add(16);
        ap = ap.add(1);
    }
    if p.cols == 8 * V {
        // Straight-line: every row's stores, with the residual if `RES`.
        for (i, row) in acc.iter().enumerate() {
            let cp = c.add(i * p.ldc);
            for (v, x) in row.iter().enumerate() {
                let mut x = _mm256_min_ps(_mm256_max_ps(*x, p.lo), p.hi);
                if RES {
                    x = _mm256_add_ps(x, _mm256_loadu_ps(r.add(i * p.ldr + 8 * v)));
                }
                _mm256_storeu_ps(cp.add(8 * v), x);
            }
        }
        return;
    }
    for (i, row) in acc.iter().enumerate() {
        let mut buf = [0f32; 16];
        for (v, x) in row.iter().enumerate() {
            _mm256_storeu_ps(buf.as_mut_ptr().add(8 * v), _mm256_min_ps(_mm256_max_ps(*x, p.lo), p.hi));
        }
        let cp = c.add(i * p.ldc);
        for (j, v) in buf.iter().enumerate().take(p.cols) {
            *cp.add(j) = if RES { *v + *r.add(i * p.ldr + j) } else { *v };
        }
    }
}

/// # Safety
/// `args` must describe valid buffers for `w` (checked by `gemm`); the CPU must have AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemm(args: &Args, w: &PackedGemm) {
    if args.r.is_null() {
        run::<false>(args, w)
    } else {
        run::<true>(args, w)
    }
}

/// [`gemm`], with a residual if `RES` (a constant of each copy, so that a tile's epilogue is
/// straight-line code).
///
/// # Safety
/// As [`gemm`].
#[inline(always)]
unsafe fn run<const RES: bool>(args: &Args, w: &PackedGemm) {
    let (k, n, nr) = (w.k, w.n, w.nr);
    for pi in args.panels.clone() {
        let n0 = pi * nr;
        let p = Panel {
            k,
            lda: args.lda,
            ldc: args.ldc,
            ldr: args.ldr,
            b: w.data.as_ptr().add(pi * k * nr),
            bias: w.bias.as_ptr().add(n0),
            cols: nr.min(n - n0),
            lo: _mm256_set1_ps(args.act.min),
            hi: _mm256_set1_ps(args.act.max),
        };
        // The one-vector tile for a panel with at most 8 real columns.
        let one = p.cols <= 8;
        let last = pi + 1 == w.panels();
        let mut i = 0;
        while i < args.m {
            let rows = tile_rows(args.m - i, if one { MR1 } else { MR });
            let a = args.a.add(i * args.lda);
            let c = args.c.add(i * args.ldc + n0);
            let r = if args.r.is_null() { args.r } else { args.r.add(i * args.ldr + n0) };
            // The next panel exists unless this is the layer's last.
            let pf = i == 0 && !last;
            if one {
                match rows {
                    12 => tile::<12, 1, false, RES>(&p, a, c, r),
                    11 => tile::<11, 1, false, RES>(&p, a, c, r),
                    10 => tile::<10, 1, false, RES>(&p, a, c, r),
                    9 => tile::<9, 1, false, RES>(&p, a, c, r),
                    8 => tile::<8, 1, false, RES>(&p, a, c, r),
                    7 => tile::<7, 1, false, RES>(&p, a, c, r),
                    6 => tile::<6, 1, false, RES>(&p, a, c, r),
                    5 => tile::<5, 1, false, RES>(&p, a, c, r),
                    4 => tile::<4, 1, false, RES>(&p, a, c, r),
                    3 => tile::<3, 1, false, RES>(&p, a, c, r),
                    2 => tile::<2, 1, false, RES>(&p, a, c, r),
                    _ => tile::<1, 1, false, RES>(&p, a, c, r),
                }
            } else {
                match (rows, pf) {
                    (6, true) => tile::<6, 2, true, RES>(&p, a, c, r),
                    (6, false) => tile::<6, 2, false, RES>(&p, a, c, r),
                    (5, true) => tile::<5, 2, true, RES>(&p, a, c, r),
                    (5, false) => tile::<5, 2, false, RES>(&p, a, c, r),
                    (4, true) => tile::<4, 2, true, RES>(&p, a, c, r),
                    (4, false) => tile::<4, 2, false, RES>(&p, a, c, r),
                    (3, _) => tile::<3, 2, false, RES>(&p, a, c, r),
                    (2, _) => tile::<2, 2, false, RES>(&p, a, c, r),
                    (_, true) => tile::<1, 2, true, RES>(&p, a, c, r),
                    (_, false) => tile::<1, 2, false, RES>(&p, a, c, r),
                }
            }
            i += rows;
        }
    }
}
