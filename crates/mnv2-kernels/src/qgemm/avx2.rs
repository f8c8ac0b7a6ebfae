//! AVX2 int8 GEMM: MR rows x 16 columns with `vpmaddwd` (no VNNI, no AVX-512).
//!
//! `vpmaddubsw` (u8 x s8 pairs into i16) would be twice as fast but saturates: two products
//! of 255 and 127 overflow i16. So both operands are widened to i16 and `vpmaddwd` sums each
//! pair of products exactly into an i32 lane: the same integer sums as every other kernel.
//! The weights stay bytes in memory (`PackedQGemm::data`: `[panel][k / 2][16][2]` s8, 32
//! bytes per pair of k values) and are sign-extended as they are loaded (`vpmovsxbw`, two
//! per pair of k, shared by the tile's rows): widened at packing they streamed twice the
//! bytes, and the network was 1-6% slower (stop 26, Zen 3); the activations per chunk of rows,
//! into a thread's staging area (16 KiB), from which each pair (a0, a1) is one 4-byte
//! broadcast load. Per pair of k and row: 2 `vpmaddwd` and 2 `vpaddd` (32 multiply-adds).
//!
//! Tiles as the f32 AVX2 kernel's: a last panel of at most 8 real columns runs a one-vector
//! tile of up to 12 rows, a short remainder of rows is split into two tiles of about equal
//! rows, and the first tile of each panel prefetches the next panel's weights.
//!
//! The epilogue is the scalar twin's, operation for operation (convert, one FMA, clamp,
//! residual FMA, round half to even), with the u8 codes clamped to 0..=255 before rounding
//! (rounding is monotonic: the same codes as saturating after it, and no value leaves the
//! i32 range of the conversion). What it writes (codes, codes with a residual, real values,
//! pooled sums) is a constant of each call's code, so a tile's epilogue is straight-line;
//! the codes of two rows of a whole panel (four of an 8-column one) are packed to bytes
//! together, with one lane-crossing permute. At K = 16-24, where the epilogue is a third of
//! the work, that made the expand convs of blocks 2-4 ~10% faster (Zen 3).

use std::arch::x86_64::*;

use std::cell::RefCell;

use super::{Args, PackedQGemm};
use crate::aligned::{grown_aligned, AlignedVec};
use crate::gemm::tile_rows;

/// Rows per register tile: 6 x 2 accumulators, 2 weight vectors, an activation pair.
pub(super) const MR: usize = 6;
/// Rows of the one-vector tile (a last panel of at most 8 real columns).
const MR1: usize = 12;
/// Columns per panel.
pub(super) const NR: usize = 16;
/// i16 values of A staged at once (16 KiB: L1-resident while every panel reads it).
const CHUNK: usize = 8192;

thread_local! {
    /// A's rows widened to i16, a chunk at a time; grows to the largest chunk.
    static A16: RefCell<AlignedVec<i16>> = RefCell::new(AlignedVec::zeros(0));
}

/// Loop invariants of one panel.
struct Panel {
    /// Pairs of k values.
    pairs: usize,
    /// The panel's weights, in pairs of k values.
    b: *const i8,
    /// Real columns (`NR` but in a layer's last panel).
    cols: usize,
    zcs: [__m256i; 2],
    mul: [__m256; 2],
    bias: [__m256; 2],
    qmul: [__m256; 2],
    qbias: [__m256; 2],
    /// The activation's bounds (real units, f32 outputs) and as codes (u8 outputs).
    lo: __m256,
    hi: __m256,
    qlo: __m256,
    qhi: __m256,
    /// Without a residual: the bounds as codes, clamped to 0..=255 (clamping to `qlo..=qhi`
    /// and then to the codes, in one).
    qlo8: __m256,
    qhi8: __m256,
    qrs: __m256,
    rz: __m256i,
    rs: __m256,
}

impl Panel {
    /// # Safety
    /// The CPU has AVX2 and FMA; `pi` is a panel of `w`, packed for this kernel.
    #[inline(always)]
    unsafe fn new(args: &Args, w: &PackedQGemm, pi: usize) -> Panel {
        let n0 = pi * NR;
        let f = super::fold_out(args);
        let inv = _mm256_set1_ps(f.inv);
        // Loops, not closures: a closure lacks this function's target features, and its
        // intrinsics would be calls (scripts/ci/intrinsics_inlined.sh).
        let mut zcs = [_mm256_setzero_si256(); 2];
        let (mut mul, mut bias, mut qmul, mut qbias) =
            ([_mm256_setzero_ps(); 2], [_mm256_setzero_ps(); 2], [_mm256_setzero_ps(); 2], [_mm256_setzero_ps(); 2]);
        for v in 0..2 {
            let at = n0 + 8 * v;
            zcs[v] = _mm256_loadu_si256(w.zcs.as_ptr().add(at) as *const __m256i);
            mul[v] = _mm256_loadu_ps(w.mul.as_ptr().add(at));
            bias[v] = _mm256_loadu_ps(w.bias.as_ptr().add(at));
            // The operations of `fold_column`, eight columns at a time.
            qmul[v] = _mm256_mul_ps(mul[v], inv);
            let t = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(zcs[v]), mul[v], bias[v]);
            qbias[v] = _mm256_add_ps(_mm256_fmadd_ps(t, inv, _mm256_set1_ps(f.zo)), _mm256_set1_ps(f.rshift));
        }
        Panel {
            pairs: w.k / 2,
            b: w.data.as_ptr().add(pi * w.k * NR),
            cols: NR.min(w.n - n0),
            zcs,
            mul,
            bias,
            qmul,
            qbias,
            lo: _mm256_set1_ps(args.act.min),
            hi: _mm256_set1_ps(args.act.max),
            qlo: _mm256_set1_ps(f.lo),
            qhi: _mm256_set1_ps(f.hi),
            qlo8: _mm256_set1_ps(f.lo.clamp(0.0, 255.0)),
            qhi8: _mm256_set1_ps(f.hi.clamp(0.0, 255.0)),
            qrs: _mm256_set1_ps(f.rs),
            rz: _mm256_set1_epi32(args.res_q.zero),
            rs: _mm256_set1_ps(args.res_q.scale),
        }
    }

    /// The residual's 16 codes of `row` from column `col` (the panel's real columns; zeros
    /// beyond), as two vectors of i32.
    ///
    /// # Safety
    /// The CPU has AVX2; `args.r` is not null and holds the panel's columns of `row`.
    #[inline(always)]
    unsafe fn residual(&self, args: &Args, row: usize, col: usize) -> [__m256i; 2] {
        let src = args.r.add(row * args.ldr + col);
        let bytes = if self.cols == NR {
            _mm_loadu_si128(src as *const __m128i)
        } else if self.cols == 8 {
            _mm_loadl_epi64(src as *const __m128i)
        } else {
            let mut buf = [0u8; NR];
            std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), self.cols);
            _mm_loadu_si128(buf.as_ptr() as *const __m128i)
        };
        [_mm256_cvtepu8_epi32(bytes), _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(bytes))]
    }

    /// The real values of one row's sums (the scalar twin's f32 epilogue).
    ///
    /// # Safety
    /// As [`Panel::residual`] when `args.r` is not null.
    #[inline(always)]
    unsafe fn real(&self, acc: [__m256i; 2], args: &Args, row: usize, col: usize) -> [__m256; 2] {
        let r = if args.r.is_null() { None } else { Some(self.residual(args, row, col)) };
        let mut out = [_mm256_setzero_ps(); 2];
        for v in 0..2 {
            let s = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[v], self.zcs[v]));
            let mut x = _mm256_fmadd_ps(s, self.mul[v], self.bias[v]);
            // `max` first, with the bound second: a NaN becomes the bound, as `f32::max` makes it.
            x = _mm256_min_ps(_mm256_max_ps(x, self.lo), self.hi);
            if let Some(r) = r {
                let rv = _mm256_cvtepi32_ps(_mm256_sub_epi32(r[v], self.rz));
                x = _mm256_fmadd_ps(rv, self.rs, x);
            }
            out[v] = x;
        }
        out
    }

    /// One row's sums of the panel's first `V` vectors as u8 codes in i32 lanes (the scalar
    /// twin's quantised epilogue), with the residual if `res` (a constant once the epilogue
    /// is inlined).
    ///
    /// # Safety
    /// As [`Panel::residual`] if `res`.
    #[inline(always)]
    unsafe fn quantized<const V: usize>(
        &self,
        acc: [__m256i; V],
        args: &Args,
        row: usize,
        col: usize,
        res: bool,
    ) -> [__m256i; V] {
        let r = if res { Some(self.residual(args, row, col)) } else { None };
        let mut q = [_mm256_setzero_si256(); V];
        for v in 0..V {
            let mut x = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[v]), self.qmul[v], self.qbias[v]);
            // Clamped to the codes before rounding: the same codes as saturating after it
            // (and a NaN becomes 0, as the twin's conversion makes it).
            if let Some(r) = r {
                x = _mm256_min_ps(_mm256_max_ps(x, self.qlo), self.qhi);
                x = _mm256_fmadd_ps(_mm256_cvtepi32_ps(r[v]), self.qrs, x);
                x = _mm256_min_ps(_mm256_max_ps(x, _mm256_setzero_ps()), _mm256_set1_ps(255.0));
            } else {
                // Two clamps in one: clamping to `qlo..=qhi` (qlo <= qhi), then to 0..=255, is
                // clamping to their bounds clamped to 0..=255; a NaN becomes `qlo`'s clamp
                // either way (`max` returns its second operand).
                x = _mm256_min_ps(_mm256_max_ps(x, self.qlo8), self.qhi8);
            }
            q[v] = _mm256_cvtps_epi32(x);
        }
        q
    }

    /// One row's sums to u8 codes, packed in column order.
    ///
    /// # Safety
    /// As [`Panel::residual`] if `res`.
    #[inline(always)]
    unsafe fn codes(&self, acc: [__m256i; 2], args: &Args, row: usize, col: usize, res: bool) -> __m128i {
        let q = self.quantized::<2>(acc, args, row, col, res);
        let lo = _mm_packs_epi32(_mm256_castsi256_si128(q[0]), _mm256_extracti128_si256::<1>(q[0]));
        let hi = _mm_packs_epi32(_mm256_castsi256_si128(q[1]), _mm256_extracti128_si256::<1>(q[1]));
        _mm_packus_epi16(lo, hi)
    }

    /// The codes of two rows of a whole panel (16 columns), `i` and `i + 1`, stored with
    /// one pack per step for both and one permute: four vector operations where two
    /// [`Panel::codes`] take ten (the same saturating packs, so the same bytes).
    ///
    /// # Safety
    /// As [`Panel::finish`] for both rows; the panel has `NR` real columns.
    #[inline(always)]
    unsafe fn store_codes2(&self, acc: [[__m256i; 2]; 2], args: &Args, row: usize, col: usize, res: bool) {
        let [a0, a1] = self.quantized::<2>(acc[0], args, row, col, res);
        let [b0, b1] = self.quantized::<2>(acc[1], args, row + 1, col, res);
        // Row a's 16 codes, then row b's.
        let v = codes_to_bytes([a0, a1, b0, b1]);
        let dst = args.c.add(row * args.ldc + col);
        _mm_storeu_si128(dst as *mut __m128i, _mm256_castsi256_si128(v));
        _mm_storeu_si128(dst.add(args.ldc) as *mut __m128i, _mm256_extracti128_si256::<1>(v));
    }

    /// The codes of four rows, `row..row + 4`, of a panel of 8 real columns (the one-vector
    /// tile's): one pack per step for all four and one permute, 8 bytes per row.
    ///
    /// # Safety
    /// As [`Panel::finish`] for each row; the panel has 8 real columns.
    #[inline(always)]
    unsafe fn store_codes4(&self, acc: [__m256i; 4], args: &Args, row: usize, col: usize, res: bool) {
        let mut q = [_mm256_setzero_si256(); 4];
        for (i, x) in q.iter_mut().enumerate() {
            *x = self.quantized::<1>([acc[i]], args, row + i, col, res)[0];
        }
        // The 8 codes of each row in turn.
        let v = codes_to_bytes(q);
        let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let dst = args.c.add(row * args.ldc + col);
        _mm_storel_epi64(dst as *mut __m128i, lo);
        _mm_storeh_pd(dst.add(args.ldc) as *mut f64, _mm_castsi128_pd(lo));
        _mm_storel_epi64(dst.add(2 * args.ldc) as *mut __m128i, hi);
        _mm_storeh_pd(dst.add(3 * args.ldc) as *mut f64, _mm_castsi128_pd(hi));
    }

    /// Stores (or, pooling, adds) the epilogue of one row.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `args` describes the buffers `qgemm` checked, `row` and the
    /// panel's columns from `col` lie within them.
    #[inline(always)]
    unsafe fn finish<const OUT: u8>(&self, acc: [__m256i; 2], args: &Args, row: usize, col: usize) {
        if OUT == OUT_F32 || OUT == OUT_POOL {
            let pool = OUT == OUT_POOL;
            let x = self.real(acc, args, row, col);
            let dst = (args.c as *mut f32).add(if pool { col } else { row * args.ldc + col });
            if self.cols == 8 && !pool {
                _mm256_storeu_ps(dst, x[0]);
            } else if self.cols == NR {
                if pool {
                    _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), x[0]));
                    _mm256_storeu_ps(dst.add(8), _mm256_add_ps(_mm256_loadu_ps(dst.add(8)), x[1]));
                } else {
                    _mm256_storeu_ps(dst, x[0]);
                    _mm256_storeu_ps(dst.add(8), x[1]);
                }
            } else {
                let mut buf = [0f32; NR];
                _mm256_storeu_ps(buf.as_mut_ptr(), x[0]);
                _mm256_storeu_ps(buf.as_mut_ptr().add(8), x[1]);
                for (j, v) in buf.iter().enumerate().take(self.cols) {
                    if pool {
                        *dst.add(j) += *v;
                    } else {
                        *dst.add(j) = *v;
                    }
                }
            }
        } else {
            let q = self.codes(acc, args, row, col, OUT == OUT_U8_RES);
            let dst = args.c.add(row * args.ldc + col);
            if self.cols == NR {
                _mm_storeu_si128(dst as *mut __m128i, q);
            } else if self.cols == 8 {
                _mm_storel_epi64(dst as *mut __m128i, q);
            } else {
                let mut buf = [0u8; NR];
                _mm_storeu_si128(buf.as_mut_ptr() as *mut __m128i, q);
                std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, self.cols);
            }
        }
    }
}

/// The 32 codes (in 0..=255) of `q`, vector after vector, as bytes in that order: two
/// `vpackssdw`, one `vpackuswb` (saturating, as [`Panel::codes`]'s packs) and one `vpermd`.
/// In-lane packs leave the bytes of each vector's 128-bit halves in separate lanes (dwords
/// 0-3: the low halves of `q[0]`..`q[3]`, 4-7: the high halves); the permute puts each
/// vector's two halves together.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn codes_to_bytes(q: [__m256i; 4]) -> __m256i {
    let (ab, cd) = (_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `R` rows of `V` vectors of one panel (one: the panel's first 8 columns, all it has):
/// staged rows `a` (`k` i16 each), output rows from `i0`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `R` staged rows of the panel's `k`; rows
/// `i0..i0 + R` lie within the rows `qgemm` checked; `PF`: the weights of one more panel
/// follow.
#[inline(always)]
unsafe fn tile<const R: usize, const V: usize, const PF: bool, const OUT: u8>(
    p: &Panel,
    a: *const i16,
    args: &Args,
    i0: usize,
    n0: usize,
) {
    let mut acc = [[_mm256_setzero_si256(); V]; R];
    let k = 2 * p.pairs;
    let mut bp = p.b;
    for pp in 0..p.pairs {
        let mut w = [_mm256_setzero_si256(); V];
        for (v, x) in w.iter_mut().enumerate() {
            *x = _mm256_cvtepi8_epi16(_mm_load_si128(bp.add(16 * v) as *const __m128i));
        }
        if PF && pp % 2 == 0 {
            // A 64-byte line of the next panel per two pairs: all of it over the pairs.
            _mm_prefetch::<_MM_HINT_T0>(bp.add(k * NR));
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let pair = _mm256_set1_epi32((a.add(i * k + 2 * pp) as *const i32).read_unaligned());
            for v in 0..V {
                row[v] = _mm256_add_epi32(row[v], _mm256_madd_epi16(pair, w[v]));
            }
        }
        bp = bp.add(32);
    }
    let mut i = 0;
    let res = OUT == OUT_U8_RES;
    let codes = OUT == OUT_U8 || res;
    if codes && V == 2 && p.cols == NR {
        while i + 2 <= R {
            let pair = [[acc[i][0], acc[i][V - 1]], [acc[i + 1][0], acc[i + 1][V - 1]]];
            p.store_codes2(pair, args, i0 + i, n0, res);
            i += 2;
        }
    } else if codes && V == 1 && p.cols == 8 {
        while i + 4 <= R {
            p.store_codes4([acc[i][0], acc[i + 1][0], acc[i + 2][0], acc[i + 3][0]], args, i0 + i, n0, res);
            i += 4;
        }
    }
    // Rows in order: pooled sums add them in the twin's order.
    for (j, row) in acc.iter().enumerate().skip(i) {
        let hi = if V == 2 { row[V - 1] } else { _mm256_setzero_si256() };
        p.finish::<OUT>([row[0], hi], args, i0 + j, n0);
    }
}

/// Rows `0..m` of `a` (`lda` apart, `k` bytes each) zero-extended to i16 at `dst`, `k` apart.
///
/// # Safety
/// The CPU has AVX2; the rows are readable and `dst` writable for `m * k` values.
#[inline(always)]
unsafe fn widen(a: *const u8, lda: usize, m: usize, k: usize, dst: *mut i16) {
    for i in 0..m {
        let (src, out) = (a.add(i * lda), dst.add(i * k));
        let mut j = 0;
        while j + 16 <= k {
            let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(src.add(j) as *const __m128i));
            _mm256_storeu_si256(out.add(j) as *mut __m256i, v);
            j += 16;
        }
        while j < k {
            *out.add(j) = *src.add(j) as i16;
            j += 1;
        }
    }
}

/// What the epilogue makes of the sums, fixed per call ([`run`]'s parameter), so that each
/// tile's epilogue is straight-line code: u8 codes, u8 codes with a residual, real values
/// (with or without one), pooled sums.
const OUT_U8: u8 = 0;
const OUT_U8_RES: u8 = 1;
const OUT_F32: u8 = 2;
const OUT_POOL: u8 = 3;

/// # Safety
/// `args` must describe valid buffers for `w` (checked by `qgemm`), packed for this kernel;
/// the CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn qgemm(args: &Args, w: &PackedQGemm) {
    match (args.f32_out, args.pool, args.r.is_null()) {
        (false, _, true) => run::<OUT_U8>(args, w),
        (false, _, false) => run::<OUT_U8_RES>(args, w),
        (true, false, _) => run::<OUT_F32>(args, w),
        (true, true, _) => run::<OUT_POOL>(args, w),
    }
}

/// [`qgemm`] with the epilogue `OUT` (one of the `OUT_*`, as `args` asks). Inlined into
/// [`qgemm`]: as a function of its own (with the target features) the same tile loops ran
/// 4-7% slower on K = 96-384 (Zen 3; the hot loop's instructions identical).
///
/// # Safety
/// As [`qgemm`].
#[inline(always)]
unsafe fn run<const OUT: u8>(args: &Args, w: &PackedQGemm) {
    let k = w.k;
    // A multiple of the tile's rows; one tile at least, however long the rows.
    let rows = ((CHUNK / k.max(1)) / MR * MR).max(MR);
    // Valid until this thread next grows the area; nothing else uses it.
    let a16 = grown_aligned(&A16, rows * k);
    let mut c0 = 0;
    while c0 < args.m {
        let chunk = rows.min(args.m - c0);
        widen(args.a.add(c0 * args.lda), args.lda, chunk, k, a16);
        for pi in args.panels.clone() {
            let p = Panel::new(args, w, pi);
            let n0 = pi * NR;
            // The one-vector tile for a panel with at most 8 real columns.
            let one = p.cols <= 8;
            let last = pi + 1 == w.panels();
            let mut i = 0;
            while i < chunk {
                let r = tile_rows(chunk - i, if one { MR1 } else { MR });
                let a = a16.add(i * k);
                let pf = i == 0 && c0 == 0 && !last;
                if one {
                    match r {
                        12 => tile::<12, 1, false, OUT>(&p, a, args, c0 + i, n0),
                        11 => tile::<11, 1, false, OUT>(&p, a, args, c0 + i, n0),
                        10 => tile::<10, 1, false, OUT>(&p, a, args, c0 + i, n0),
                        9 => tile::<9, 1, false, OUT>(&p, a, args, c0 + i, n0),
                        8 => tile::<8, 1, false, OUT>(&p, a, args, c0 + i, n0),
                        7 => tile::<7, 1, false, OUT>(&p, a, args, c0 + i, n0),
                        6 => tile::<6, 1, false, OUT>(&p, a, args, c0 + i, n0),
                        5 => tile::<5, 1, false, OUT>(&p, a, args, c0 + i, n0),
                        4 => tile::<4, 1, false, OUT>(&p, a, args, c0 + i, n0),
                        3 => tile::<3, 1, false, OUT>(&p, a, args, c0 + i, n0),
                        2 => tile::<2, 1, false, OUT>(&p, a, args, c0 + i, n0),
                        _ => tile::<1, 1, false, OUT>(&p, a, args, c0 + i, n0),
                    }
                } else {
                    match (r, pf) {
                        (6, true) => tile::<6, 2, true, OUT>(&p, a, args, c0 + i, n0),
                        (6, false) => tile::<6, 2, false, OUT>(&p, a, args, c0 + i, n0),
                        (5, true) => tile::<5, 2, true, OUT>(&p, a, args, c0 + i, n0),
                        (5, false) => tile::<5, 2, false, OUT>(&p, a, args, c0 + i, n0),
                        (4, true) => tile::<4, 2, true, OUT>(&p, a, args, c0 + i, n0),
                        (4, false) => tile::<4, 2, false, OUT>(&p, a, args, c0 + i, n0),
                        (3, _) => tile::<3, 2, false, OUT>(&p, a, args, c0 + i, n0),
                        (2, _) => tile::<2, 2, false, OUT>(&p, a, args, c0 + i, n0),
                        (_, true) => tile::<1, 2, true, OUT>(&p, a, args, c0 + i, n0),
                        (_, false) => tile::<1, 2, false, OUT>(&p, a, args, c0 + i, n0),
                    }
                }
                i += r;
            }
        }
        c0 += chunk;
    }
}

/// `src` quantised to u8 codes: round half to even, then the AVX-512 kernel's saturation
/// (a conversion out of range gives i32::MIN, which the clamp at 0 takes to code 0).
///
/// # Safety
/// The CPU has AVX2; `dst` at least as long as `src`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_row(src: &[f32], dst: &mut [u8], q: super::QParams) {
    let inv = _mm256_set1_ps(1.0 / q.scale);
    let zo = _mm256_set1_epi32(q.zero);
    let whole = src.len() / 8 * 8;
    for i in (0..whole).step_by(8) {
        let v = _mm256_loadu_ps(src.as_ptr().add(i));
        let r =
            _mm256_max_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, inv)), zo), _mm256_setzero_si256());
        let w = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
        _mm_storel_epi64(dst.as_mut_ptr().add(i) as *mut __m128i, _mm_packus_epi16(w, w));
    }
    for (d, s) in dst[whole..].iter_mut().zip(&src[whole..]) {
        *d = q.quantize(*s);
    }
}
