//! AVX-512 VNNI int8 GEMM: MR rows x 32 columns (28 zmm accumulators at MR = 14) or MR x 16
//! (24 at MR = 24). Per 4 values of k: one or two 64-byte panel loads, MR broadcasts of 4
//! activation bytes, and `vpdpbusd` per accumulator (64 multiply-adds each). The epilogue
//! runs on registers. For u8 outputs it works in the output's quantised units (scale, bias,
//! zero points and clamp bounds folded per call, see `mod.rs`): convert, one FMA, clamp,
//! residual (one FMA), round, saturate, masked store. For f32 outputs it computes real values.

use std::arch::x86_64::*;

use crate::lanes::mask16;

use super::{Args, PackedQGemm};

const MR32: usize = 14;
const MR16: usize = 24;

/// Loop invariants of one panel.
struct Panel {
    groups: usize,
    lda: usize,
    b: *const i8,
    /// Per column vectors (one or two of each).
    zcs: [__m512i; 2],
    mul: [__m512; 2],
    bias: [__m512; 2],
    mask: [u16; 2],
    lo: __m512,
    hi: __m512,
    rz: __m512i,
    rs: __m512,
    /// u8 outputs, in quantised units: `x = acc * qmul + qbias`, clamped to `qlo..qhi`, plus
    /// `r * qrs`, rounded.
    qmul: [__m512; 2],
    qbias: [__m512; 2],
    qlo: __m512,
    qhi: __m512,
    qrs: __m512,
}

impl Panel {
    /// Epilogue of one accumulator vector (columns `v * 16..`): the real values.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL and VNNI; `args` and the panel describe buffers `qgemm` checked, and
    /// the rows and columns passed lie within them (column tails masked).
    #[inline(always)]
    unsafe fn real(&self, acc: __m512i, v: usize, args: &Args, row: usize, col: usize) -> __m512 {
        let mut x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, self.zcs[v])), self.mul[v], self.bias[v]);
        x = _mm512_min_ps(_mm512_max_ps(x, self.lo), self.hi);
        let mask = self.mask[v];
        if !args.r.is_null() {
            let r = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, args.r.add(row * args.ldr + col) as *const i8));
            x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(r, self.rz)), self.rs, x);
        }
        x
    }

    /// Epilogue of one accumulator vector, stored at `c` (u8 or f32).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL and VNNI; `args` and the panel describe buffers `qgemm` checked, and
    /// the rows and columns passed lie within them (column tails masked).
    #[inline(always)]
    unsafe fn finish(&self, acc: __m512i, v: usize, args: &Args, row: usize, col: usize) {
        let mask = self.mask[v];
        if args.f32_out {
            let x = self.real(acc, v, args, row, col);
            _mm512_mask_storeu_ps((args.c as *mut f32).add(row * args.ldc + col), mask, x);
        } else {
            let mut x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), self.qmul[v], self.qbias[v]);
            x = _mm512_min_ps(_mm512_max_ps(x, self.qlo), self.qhi);
            if !args.r.is_null() {
                let r = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, args.r.add(row * args.ldr + col) as *const i8));
                x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r), self.qrs, x);
            }
            let q = _mm512_max_epi32(_mm512_cvtps_epi32(x), _mm512_setzero_si512());
            if args.grid_f32 {
                let q = _mm512_min_epi32(q, _mm512_set1_epi32(255));
                _mm512_mask_storeu_ps((args.c as *mut f32).add(row * args.ldc + col), mask, _mm512_cvtepi32_ps(q));
            } else {
                _mm512_mask_cvtusepi32_storeu_epi8(args.c.add(row * args.ldc + col) as *mut i8, mask, q);
            }
        }
    }
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL and VNNI; `args` and the panel describe buffers `qgemm` checked, and
/// the rows and columns passed lie within them (column tails masked).
#[inline(always)]
unsafe fn tile<const MR: usize, const NV: usize>(p: &Panel, args: &Args, i0: usize, n0: usize) {
    // Two flat accumulator arrays (not [[_; NV]; MR]): LLVM keeps these in registers; the
    // nested array was spilled to the stack and its broadcasts repeated per vector.
    let mut acc0 = [_mm512_setzero_si512(); MR];
    let mut acc1 = [_mm512_setzero_si512(); MR];
    let mut bp = p.b;
    let mut ap = args.a.add(i0 * p.lda);
    for _ in 0..p.groups {
        let b0 = _mm512_load_si512(bp as *const _);
        let b1 = if NV == 2 { _mm512_load_si512(bp.add(64) as *const _) } else { b0 };
        for i in 0..MR {
            let a = _mm512_set1_epi32((ap.add(i * p.lda) as *const i32).read_unaligned());
            acc0[i] = _mm512_dpbusd_epi32(acc0[i], a, b0);
            if NV == 2 {
                acc1[i] = _mm512_dpbusd_epi32(acc1[i], a, b1);
            }
        }
        bp = bp.add(64 * NV);
        ap = ap.add(4);
    }
    if args.pool {
        // Row after row into the sums, in the scalar twin's order.
        for v in 0..NV {
            let acc = if v == 0 { &acc0 } else { &acc1 };
            let sums = (args.c as *mut f32).add(n0 + 16 * v);
            let mut s = _mm512_maskz_loadu_ps(p.mask[v], sums);
            for (i, x) in acc.iter().enumerate() {
                s = _mm512_add_ps(s, p.real(*x, v, args, i0 + i, n0 + 16 * v));
            }
            _mm512_mask_storeu_ps(sums, p.mask[v], s);
        }
        return;
    }
    for i in 0..MR {
        p.finish(acc0[i], 0, args, i0 + i, n0);
        if NV == 2 {
            p.finish(acc1[i], 1, args, i0 + i, n0 + 16);
        }
    }
}

macro_rules! by_rows {
    ($rows:expr, $nv:literal, $($arg:expr),*) => {
        match $rows {
            1 => tile::<1, $nv>($($arg),*), 2 => tile::<2, $nv>($($arg),*), 3 => tile::<3, $nv>($($arg),*),
            4 => tile::<4, $nv>($($arg),*), 5 => tile::<5, $nv>($($arg),*), 6 => tile::<6, $nv>($($arg),*),
            7 => tile::<7, $nv>($($arg),*), 8 => tile::<8, $nv>($($arg),*), 9 => tile::<9, $nv>($($arg),*),
            10 => tile::<10, $nv>($($arg),*), 11 => tile::<11, $nv>($($arg),*), 12 => tile::<12, $nv>($($arg),*),
            13 => tile::<13, $nv>($($arg),*), 14 => tile::<14, $nv>($($arg),*), 15 => tile::<15, $nv>($($arg),*),
            16 => tile::<16, $nv>($($arg),*), 17 => tile::<17, $nv>($($arg),*), 18 => tile::<18, $nv>($($arg),*),
            19 => tile::<19, $nv>($($arg),*), 20 => tile::<20, $nv>($($arg),*), 21 => tile::<21, $nv>($($arg),*),
            22 => tile::<22, $nv>($($arg),*), 23 => tile::<23, $nv>($($arg),*), 24 => tile::<24, $nv>($($arg),*),
            _ => unreachable!("tile rows"),
        }
    };
}

/// # Safety
/// `args` must describe valid buffers for `w` (checked by `qgemm`); the CPU must have
/// AVX-512 F/BW/VL and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
pub(crate) unsafe fn qgemm(args: &Args, w: &PackedQGemm) {
    let (k, n, nr) = (w.k, w.n, w.nr);
    let mr = if nr == 32 { MR32 } else { MR16 };
    let count = args.m.div_ceil(mr);
    let (base, extra) = (args.m / count, args.m % count);
    for pi in args.panels.clone() {
        let n0 = pi * nr;
        let cols = nr.min(n - n0);
        let vec = |v: usize| n0 + 16 * v.min(nr / 16 - 1);
        let mut zcs = [_mm512_setzero_si512(); 2];
        let mut mul = [_mm512_setzero_ps(); 2];
        let mut bias = [_mm512_setzero_ps(); 2];
        let mut qmul = [_mm512_setzero_ps(); 2];
        let mut qbias = [_mm512_setzero_ps(); 2];
        let f = super::fold_out(args);
        for v in 0..2 {
            zcs[v] = _mm512_loadu_si512(w.zcs.as_ptr().add(vec(v)) as *const _);
            mul[v] = _mm512_loadu_ps(w.mul.as_ptr().add(vec(v)));
            bias[v] = _mm512_loadu_ps(w.bias.as_ptr().add(vec(v)));
            // The same operations as `fold_column`, sixteen columns at a time.
            qmul[v] = _mm512_mul_ps(mul[v], _mm512_set1_ps(f.inv));
            let t = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(zcs[v]), mul[v], bias[v]);
            qbias[v] = _mm512_add_ps(
                _mm512_fmadd_ps(t, _mm512_set1_ps(f.inv), _mm512_set1_ps(f.zo)),
                _mm512_set1_ps(f.rshift),
            );
        }
        let p = Panel {
            groups: k / 4,
            lda: args.lda,
            b: w.data.as_ptr().add(pi * k * nr),
            zcs,
            mul,
            bias,
            mask: [mask16(cols), mask16(cols.saturating_sub(16))],
            lo: _mm512_set1_ps(args.act.min),
            hi: _mm512_set1_ps(args.act.max),
            rz: _mm512_set1_epi32(args.res_q.zero),
            rs: _mm512_set1_ps(args.res_q.scale),
            qmul,
            qbias,
            qlo: _mm512_set1_ps(f.lo),
            qhi: _mm512_set1_ps(f.hi),
            qrs: _mm512_set1_ps(f.rs),
        };
        let mut i = 0;
        for t in 0..count {
            let rows = base + usize::from(t < extra);
            if nr == 32 {
                by_rows!(rows, 2, &p, args, i, n0);
            } else {
                by_rows!(rows, 1, &p, args, i, n0);
            }
            i += rows;
        }
    }
}
