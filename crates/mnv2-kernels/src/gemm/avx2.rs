//! AVX2 + FMA GEMM micro-kernel: `MR` rows x 16 columns (12 ymm accumulators at MR = 6).
//! Column tails go through a small stack buffer; whole panels add the residual in registers.

use std::arch::x86_64::*;

use super::{Args, PackedGemm};

const MR: usize = 6;

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

/// # Safety
/// The CPU has AVX2 and FMA; `a`, `c` and `r` (null for none) address `R` rows of the panel's
/// columns with the strides `gemm` checked.
#[inline(always)]
unsafe fn tile<const R: usize>(p: &Panel, a: *const f32, c: *mut f32, r: *const f32) {
    let mut acc0 = [_mm256_loadu_ps(p.bias); R];
    let mut acc1 = [_mm256_loadu_ps(p.bias.add(8)); R];
    let mut bp = p.b;
    let mut ap = a;
    for _ in 0..p.k {
        let b0 = _mm256_load_ps(bp);
        let b1 = _mm256_load_ps(bp.add(8));
        for i in 0..R {
            let av = _mm256_broadcast_ss(&*ap.add(i * p.lda));
            acc0[i] = _mm256_fmadd_ps(av, b0, acc0[i]);
            acc1[i] = _mm256_fmadd_ps(av, b1, acc1[i]);
        }
        bp = bp.add(16);
        ap = ap.add(1);
    }
    for i in 0..R {
        let mut v0 = _mm256_min_ps(_mm256_max_ps(acc0[i], p.lo), p.hi);
        let mut v1 = _mm256_min_ps(_mm256_max_ps(acc1[i], p.lo), p.hi);
        let cp = c.add(i * p.ldc);
        if p.cols == 16 {
            if !r.is_null() {
                let rp = r.add(i * p.ldr);
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(rp));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(rp.add(8)));
            }
            _mm256_storeu_ps(cp, v0);
            _mm256_storeu_ps(cp.add(8), v1);
        } else {
            let mut buf = [0f32; 16];
            _mm256_storeu_ps(buf.as_mut_ptr(), v0);
            _mm256_storeu_ps(buf.as_mut_ptr().add(8), v1);
            for (j, v) in buf.iter().enumerate().take(p.cols) {
                *cp.add(j) = if r.is_null() { *v } else { *v + *r.add(i * p.ldr + j) };
            }
        }
    }
}

/// # Safety
/// `args` must describe valid buffers for `w` (checked by `gemm`); the CPU must have AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemm(args: &Args, w: &PackedGemm) {
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
        let mut i = 0;
        while i < args.m {
            let rows = MR.min(args.m - i);
            let a = args.a.add(i * args.lda);
            let c = args.c.add(i * args.ldc + n0);
            let r = if args.r.is_null() { args.r } else { args.r.add(i * args.ldr + n0) };
            match rows {
                6 => tile::<6>(&p, a, c, r),
                5 => tile::<5>(&p, a, c, r),
                4 => tile::<4>(&p, a, c, r),
                3 => tile::<3>(&p, a, c, r),
                2 => tile::<2>(&p, a, c, r),
                _ => tile::<1>(&p, a, c, r),
            }
            i += rows;
        }
    }
}
