//! AVX2 stems, for CPUs without AVX-512.
//!
//! f32 (`stem_f32_minmax_3x3s2_avx2`): N output pixels x NV ymm of 8 output channels (NV <= 6:
//! 48 channels) in registers; each of the 27 taps broadcasts one input value per pixel against
//! NV weight vectors from L1. Each sum starts at the bias and adds the taps in the AVX-512
//! kernel's order (window row, column, image channel; taps outside the image skipped), one
//! FMA each: the same bits as `stem_f32_minmax_3x3s2_avx512`.
//!
//! int8 (`stem_u8s8s32_requant_3x3s2_avx2`, see [`super::int8`]): AVX2 has no `vpdpbusd`, and
//! `vpmaddubsw` saturates its i16 sums (255 * 127 * 2 > 32767), so the codes and weights are
//! i16 and `vpmaddwd` sums pairs of products exactly in i32: 14 pairs per output, where the
//! VNNI kernel runs nine quads. Per output row the image's codes are built into 14 planes of
//! pairs, one dword per output pixel holding two i16 codes: planes 0..9, per (window row
//! `ky`, image channel `ci`), the columns `kx` = 0 and 1; planes 9..14 the third columns of
//! those nine (window row, channel) in order, two per plane (the last with a zero). The
//! weights' pairs are `PackedStemQ::pairs`. The dot products broadcast each pixel's dword
//! against NV vectors of 8 output channels (tiles of N pixels x NV vectors of i32
//! accumulators), and the epilogue is the twin's: one FMA, the clamp, rounding half to even,
//! saturation to bytes. The planes are built 8 pixels at a time: 16 columns per window row and
//! channel (NCHW: loads; NHWC: three loads of 8 pixels deinterleaved by blends and
//! permutations), their codes packed to i16 pairs; masked loads at the image's edges read 0.0,
//! whose code is the zero point (the sums' start cancels it). The third columns are the
//! first columns of the next pixel: the pair planes one dword on, blended.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::int8::{PackedStemQ, QArgs};
use super::{Args, Dst, Layout, PackedStem, StemGeom};
use crate::aligned::grown;

/// The first `n` (< 8) of 8 lanes.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn mask8(n: usize) -> __m256i {
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// The 8 lanes of `v` saturated to 0..=255, as 8 bytes in order (signed then unsigned
/// saturation takes every i32 to 0..=255).
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn bytes8(v: __m256i) -> i64 {
    let s = _mm256_packs_epi32(v, v);
    // 128-bit lane l holds lanes 4l..4l + 4 of `v` as bytes in its first dword.
    let b = _mm256_packus_epi16(s, s);
    _mm_cvtsi128_si64(_mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b)))
}

/// Stores the first `n` (<= 8) bytes of `b` at `p`.
///
/// # Safety
/// `p` is valid for `n` bytes.
#[inline(always)]
unsafe fn store_bytes(p: *mut u8, n: usize, b: i64) {
    if n == 8 {
        (p as *mut i64).write_unaligned(b);
    } else {
        std::ptr::copy_nonoverlapping(b.to_le_bytes().as_ptr(), p, n);
    }
}

/// Stores the first `n` (<= 8) lanes of `y` at element `at` of `out`: the values, or their u8
/// codes as `QParams::quantize` gives them (round half to even, the zero point, saturated to
/// 0..=255).
///
/// # Safety
/// The CPU has AVX2; the lanes lie in the row `stem_row` checked.
#[inline(always)]
unsafe fn store(out: Dst, at: usize, n: usize, y: __m256) {
    match out {
        Dst::F32(p) if n == 8 => _mm256_storeu_ps(p.add(at), y),
        Dst::F32(p) => _mm256_maskstore_ps(p.add(at), mask8(n), y),
        Dst::U8(p, q) => {
            let r = _mm256_cvtps_epi32(_mm256_mul_ps(y, _mm256_set1_ps(1.0 / q.scale)));
            store_bytes(p.add(at), n, bytes8(_mm256_add_epi32(r, _mm256_set1_epi32(q.zero))))
        }
        // `stem_row_bf16_pairs` takes bf16 packings only.
        Dst::Bf16Pairs(..) => unreachable!("pixel pairs come from the bf16 kernels"),
    }
}

/// N pixels from output column `x0`, the NV vectors of 8 channels from vector `v0`, from an
/// NHWC image (`NHWC`) or an NCHW one: the strides as constants where they are.
///
/// # Safety
/// The CPU has AVX2 and FMA; `args` describes an image and output row `stem_row` checked;
/// the pixels lie within the output row, and their taps inside the image unless `checked`;
/// `(v0 + NV) * 8 <= p.c_pad`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pixels<const NV: usize, const N: usize, const NHWC: bool>(
    args: &Args,
    p: &PackedStem,
    x0: usize,
    v0: usize,
    checked: bool,
    lo: __m256,
    hi: __m256,
) {
    let (cs, rs, ps) = if NHWC { (1, 3 * args.img.w, 3) } else { (args.img.h * args.img.w, args.img.w, 1) };
    let g = args.g;
    let data = args.img.data.as_ptr();
    let w = p.weights.as_ptr().add(v0 * 8);
    let mut acc = [[_mm256_setzero_ps(); NV]; N];
    for a in acc.iter_mut() {
        for (v, x) in a.iter_mut().enumerate() {
            *x = _mm256_load_ps(p.bias.as_ptr().add((v0 + v) * 8));
        }
    }
    for ky in 0..3 {
        let iy = (args.oy * g.stride + ky) as isize - g.pad_top as isize;
        if iy < 0 || iy as usize >= args.img.h {
            continue;
        }
        let row = data.add(iy as usize * rs);
        for kx in 0..3 {
            for ci in 0..3 {
                let wt = w.add(((ky * 3 + kx) * 3 + ci) * p.c_pad);
                for (j, a) in acc.iter_mut().enumerate() {
                    let ix = ((x0 + j) * g.stride + kx) as isize - g.pad_left as isize;
                    if checked && (ix < 0 || ix as usize >= args.img.w) {
                        continue;
                    }
                    let val = _mm256_broadcast_ss(&*row.add(ci * cs + ix as usize * ps));
                    for (v, x) in a.iter_mut().enumerate() {
                        *x = _mm256_fmadd_ps(val, _mm256_load_ps(wt.add(v * 8)), *x);
                    }
                }
            }
        }
    }
    let c = p.c;
    for (j, a) in acc.iter().enumerate() {
        for (v, x) in a.iter().enumerate() {
            let at = (x0 + j) * c + (v0 + v) * 8;
            let n = c.saturating_sub((v0 + v) * 8).min(8);
            store(args.out, at, n, _mm256_min_ps(_mm256_max_ps(*x, lo), hi));
        }
    }
}

/// The whole output row, for the NV vectors of channels from `v0`.
///
/// # Safety
/// As [`pixels`], for the whole output row.
#[inline(always)]
unsafe fn run<const NV: usize, const N: usize, const NHWC: bool>(args: &Args, p: &PackedStem, v0: usize) {
    let g = args.g;
    let lo = _mm256_set1_ps(args.act.min);
    let hi = _mm256_set1_ps(args.act.max);
    // Interior: every tap of the pixel lies inside the image.
    let x_lo = g.pad_left.div_ceil(g.stride);
    let x_hi =
        if args.img.w + g.pad_left >= 3 { ((args.img.w + g.pad_left - 3) / g.stride + 1).min(g.w_out) } else { 0 };
    let x_lo = x_lo.min(x_hi);
    for x in 0..x_lo {
        pixels::<NV, 1, NHWC>(args, p, x, v0, true, lo, hi);
    }
    let mut x = x_lo;
    while x + N <= x_hi {
        pixels::<NV, N, NHWC>(args, p, x, v0, false, lo, hi);
        x += N;
    }
    while x < g.w_out {
        pixels::<NV, 1, NHWC>(args, p, x, v0, x >= x_hi, lo, hi);
        x += 1;
    }
}

/// Tiles of at most 12 accumulators with the weight vectors and a broadcast in the 16 ymm
/// (measured on Zen 3 at 16, 32 and 48 channels): 4 vectors x 2 pixels, else groups of 3
/// vectors x 3 pixels, 2 x 6 and 1 x 8.
///
/// # Safety
/// As [`row`].
#[inline(always)]
unsafe fn tiles<const NHWC: bool>(args: &Args, p: &PackedStem) {
    let nv = p.c.div_ceil(8);
    if nv == 4 {
        return run::<4, 2, NHWC>(args, p, 0);
    }
    let mut v = 0;
    while v + 3 <= nv {
        run::<3, 3, NHWC>(args, p, v);
        v += 3;
    }
    match nv - v {
        2 => run::<2, 6, NHWC>(args, p, v),
        1 => run::<1, 8, NHWC>(args, p, v),
        _ => {}
    }
}

/// The f32 stem (`stem_f32_minmax_3x3s2_avx2`).
///
/// # Safety
/// Sizes checked by `stem_row`; the CPU must have AVX2 and FMA; `p.c <= 48`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn row(args: &Args, p: &PackedStem) {
    match args.img.layout {
        Layout::Nchw => tiles::<false>(args, p),
        Layout::Nhwc => tiles::<true>(args, p),
    }
}

/// Dwords per vector: the int8 kernel fills its pair planes 8 output pixels at a time.
const XB: usize = 8;

/// Pair planes of the int8 kernel.
const PLANES: usize = 14;

/// Dwords per pair plane: the output pixels in whole vectors, and one vector more (the pixel
/// after the last, whose first column is the last pixel's third, read by shifted loads).
fn plane_len(w_out: usize) -> usize {
    w_out.next_multiple_of(XB) + XB
}

thread_local! {
    /// The pair planes of the current output row.
    static PAIR_PLANES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Bytes this thread's pair planes hold now.
#[cfg(test)]
pub(crate) fn held_bytes() -> usize {
    PAIR_PLANES.with_borrow(|p| p.len())
}

/// Bytes of the thread's pair planes for geometry `g` (`StemQKernel::staging`): 14 planes of
/// dwords, and room to align them to 32 bytes.
pub(crate) fn staging_bytes_q(g: StemGeom) -> usize {
    4 * PLANES * plane_len(g.w_out) + 32
}

/// The image codes of 8 values (see `image_code`), as i32 lanes.
struct Coder {
    inv: __m256,
    lo: __m256,
    hi: __m256,
    zero: __m256i,
}

impl Coder {
    /// # Safety
    /// The CPU has AVX2.
    #[inline(always)]
    unsafe fn codes(&self, v: __m256) -> __m256i {
        // NaN: `max` returns its second operand, the lower bound (as `f32::max` in the twin).
        let y = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, self.inv), self.lo), self.hi);
        _mm256_add_epi32(_mm256_cvtps_epi32(y), self.zero)
    }

    /// The pairs of 16 consecutive columns `a` (the first 8) and `b`: dword `j` holds the codes
    /// of columns `2j` and `2j + 1` as i16.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[inline(always)]
    unsafe fn pairs(&self, a: __m256, b: __m256) -> __m256i {
        // Codes are 0..=255: the signed pack keeps them. Its 64-bit blocks are columns 0..4,
        // 8..12, 4..8, 12..16.
        _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(self.codes(a), self.codes(b)))
    }
}

/// Eight NHWC pixels (`a`, `b`, `c`: 24 consecutive values) as their three channels.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn deinterleave(a: __m256, b: __m256, c: __m256) -> [__m256; 3] {
    // Channel 0 lies at a0 a3 a6 b1 b4 b7 c2 c5: blended in place (a0 b1 c2 a3 b4 c5 a6 b7),
    // then permuted; likewise the others.
    let c0 = _mm256_blend_ps::<0x24>(_mm256_blend_ps::<0x92>(a, b), c);
    let c1 = _mm256_blend_ps::<0x49>(_mm256_blend_ps::<0x24>(a, b), c);
    let c2 = _mm256_blend_ps::<0x92>(_mm256_blend_ps::<0x49>(a, b), c);
    [
        _mm256_permutevar8x32_ps(c0, _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5)),
        _mm256_permutevar8x32_ps(c1, _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6)),
        _mm256_permutevar8x32_ps(c2, _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7)),
    ]
}

/// The lanes whose column `c0 + k` lies in an image `w` wide.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn in_image(c0: isize, w: isize, k: __m256i) -> __m256i {
    let col = _mm256_add_epi32(_mm256_set1_epi32(c0 as i32), k);
    _mm256_and_si256(
        _mm256_cmpgt_epi32(col, _mm256_set1_epi32(-1)),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(w as i32), col),
    )
}

/// Columns `c0..c0 + 8` of the three channels of an image row (`row`: its column 0 of
/// channel 0; `cs`: the channel stride, `w`: the width); columns outside the image read 0.0,
/// whose code is the zero point.
///
/// # Safety
/// The CPU has AVX2; the columns inside the image lie in the row; if `inside`, all of them
/// do.
#[inline(always)]
unsafe fn columns(row: *const f32, layout: Layout, cs: usize, w: isize, c0: isize, inside: bool) -> [__m256; 3] {
    match layout {
        Layout::Nchw => {
            let at = row.wrapping_offset(c0);
            let mut v = [_mm256_setzero_ps(); 3];
            if inside {
                for (ci, x) in v.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(at.add(ci * cs));
                }
            } else {
                let mask = in_image(c0, w, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                for (ci, x) in v.iter_mut().enumerate() {
                    *x = _mm256_maskload_ps(at.wrapping_add(ci * cs), mask);
                }
            }
            v
        }
        Layout::Nhwc => {
            let at = row.wrapping_offset(3 * c0);
            if inside {
                return deinterleave(_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8)), _mm256_loadu_ps(at.add(16)));
            }
            // Value `8m + l` of the 24 is one of column `c0 + (8m + l) / 3`.
            let a = _mm256_maskload_ps(at, in_image(c0, w, _mm256_setr_epi32(0, 0, 0, 1, 1, 1, 2, 2)));
            let b = _mm256_maskload_ps(at.wrapping_add(8), in_image(c0, w, _mm256_setr_epi32(2, 3, 3, 3, 4, 4, 4, 5)));
            let c = _mm256_maskload_ps(at.wrapping_add(16), in_image(c0, w, _mm256_setr_epi32(5, 5, 6, 6, 6, 7, 7, 7)));
            deinterleave(a, b, c)
        }
    }
}

/// Fills the 14 pair planes (`[PLANES][n]` dwords, `n = plane_len(w_out)`) of `args.oy` at
/// `dst`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `dst` holds `PLANES * n` dwords, 32-byte aligned; `args` was
/// checked by `stem_row_q` (stride 2).
#[inline(always)]
unsafe fn fill(args: &QArgs, p: &PackedStemQ, dst: *mut i32) {
    let (g, q) = (args.g, p.input);
    let n = plane_len(g.w_out);
    let z = q.zero as u32;
    let zero_pair = (z | z << 16) as i32;
    let (cs, rs, _) = args.img.strides();
    let code = Coder {
        inv: _mm256_set1_ps(1.0 / q.scale),
        lo: _mm256_set1_ps(-(q.zero as f32)),
        hi: _mm256_set1_ps(255.0 - q.zero as f32),
        zero: _mm256_set1_epi32(q.zero),
    };
    let (w, pad) = (args.img.w as isize, g.pad_left as isize);
    for ky in 0..3 {
        let planes = dst.add(ky * 3 * n);
        let Some(iy) = args.image_row(ky) else {
            for x in (0..3 * n).step_by(XB) {
                _mm256_store_si256(planes.add(x) as *mut __m256i, _mm256_set1_epi32(zero_pair));
            }
            continue;
        };
        let row = args.img.data.as_ptr().add(iy * rs);
        for x0 in (0..n).step_by(XB) {
            // Image columns `first + k` for k in 0..16.
            let first = (2 * x0) as isize - pad;
            let inside = first >= 0 && first + 16 <= w;
            let lo = columns(row, args.img.layout, cs, w, first, inside);
            let hi = columns(row, args.img.layout, cs, w, first + 8, inside);
            for ci in 0..3 {
                _mm256_store_si256(planes.add(ci * n + x0) as *mut __m256i, code.pairs(lo[ci], hi[ci]));
            }
        }
    }
    // The third columns: the first column of the next pixel's pair, the low half of the pair
    // planes one dword on.
    let keep_low = _mm256_set1_epi32(0xffff);
    for x0 in (0..g.w_out).step_by(XB) {
        for m in 0..5 {
            let first = _mm256_loadu_si256(dst.add(2 * m * n + x0 + 1) as *const __m256i);
            let pair = if m < 4 {
                let second = _mm256_loadu_si256(dst.add((2 * m + 1) * n + x0 + 1) as *const __m256i);
                _mm256_blend_epi16::<0xaa>(first, _mm256_slli_epi32::<16>(second))
            } else {
                _mm256_and_si256(first, keep_low)
            };
            _mm256_store_si256(dst.add((9 + m) * n + x0) as *mut __m256i, pair);
        }
    }
}

/// N pixels from output column `x0`, the NV vectors of 8 output channels from vector `v0`:
/// per pair plane, NV weight vectors against each pixel's broadcast pair.
///
/// # Safety
/// The CPU has AVX2 and FMA; the pair planes at `planes` are filled; the pixels lie in the
/// output row `stem_row_q` checked; `(v0 + NV) * 8 <= p.c_pad`.
#[inline(always)]
unsafe fn pixels_q<const NV: usize, const N: usize>(
    args: &QArgs,
    p: &PackedStemQ,
    planes: *const i32,
    x0: usize,
    v0: usize,
) {
    let n_p = plane_len(args.g.w_out);
    let mut acc = [[_mm256_setzero_si256(); NV]; N];
    for a in acc.iter_mut() {
        for (v, x) in a.iter_mut().enumerate() {
            *x = _mm256_load_si256(p.start.as_ptr().add((v0 + v) * 8) as *const __m256i);
        }
    }
    for i in 0..PLANES {
        let plane = planes.add(i * n_p + x0);
        let w = p.pairs.as_ptr().add(i * p.c_pad + v0 * 8);
        for (j, a) in acc.iter_mut().enumerate() {
            let pair = _mm256_set1_epi32(*plane.add(j));
            for (v, x) in a.iter_mut().enumerate() {
                let wv = _mm256_load_si256(w.add(v * 8) as *const __m256i);
                *x = _mm256_add_epi32(*x, _mm256_madd_epi16(pair, wv));
            }
        }
    }
    let (lo, hi) = (_mm256_set1_ps(p.lo), _mm256_set1_ps(p.hi));
    for (j, a) in acc.iter().enumerate() {
        for (v, x) in a.iter().enumerate() {
            let ch = (v0 + v) * 8;
            let (mul, add) = (_mm256_load_ps(p.mul.as_ptr().add(ch)), _mm256_load_ps(p.add.as_ptr().add(ch)));
            let y = _mm256_min_ps(_mm256_max_ps(_mm256_fmadd_ps(_mm256_cvtepi32_ps(*x), mul, add), lo), hi);
            let n = p.c.saturating_sub(ch).min(8);
            store_bytes(args.out.add((x0 + j) * p.c + ch), n, bytes8(_mm256_cvtps_epi32(y)));
        }
    }
}

/// The whole output row, for the NV vectors of channels from `v0`.
///
/// # Safety
/// As [`pixels_q`], for the whole output row.
#[inline(always)]
unsafe fn run_q<const NV: usize, const N: usize>(args: &QArgs, p: &PackedStemQ, planes: *const i32, v0: usize) {
    let mut x = 0;
    while x + N <= args.g.w_out {
        pixels_q::<NV, N>(args, p, planes, x, v0);
        x += N;
    }
    while x < args.g.w_out {
        pixels_q::<NV, 1>(args, p, planes, x, v0);
        x += 1;
    }
}

/// The int8 stem (`stem_u8s8s32_requant_3x3s2_avx2`): the pair planes, then tiles of 8 or 9
/// accumulators (4 vectors x 2 pixels, else groups of 3 vectors x 3 pixels, 2 x 4, 1 x 8).
///
/// # Safety
/// Sizes checked by `stem_row_q`; the CPU must have AVX2 and FMA; `p.c <= 48`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn row_q(args: &QArgs, p: &PackedStemQ) {
    // 32-byte aligned dwords; valid until this thread next asks for larger planes.
    let buf = grown(&PAIR_PLANES, staging_bytes_q(args.g), 0);
    let planes = buf.add(buf.align_offset(32)) as *mut i32;
    fill(args, p, planes);
    let nv = p.c.div_ceil(8);
    if nv == 4 {
        return run_q::<4, 2>(args, p, planes, 0);
    }
    let mut v = 0;
    while v + 3 <= nv {
        run_q::<3, 3>(args, p, planes, v);
        v += 3;
    }
    match nv - v {
        2 => run_q::<2, 4>(args, p, planes, v),
        1 => run_q::<1, 8>(args, p, planes, v),
        _ => {}
    }
}
