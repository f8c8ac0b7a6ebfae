//! AVX-512 BF16 stem: the three input rows an output row reads are rounded once into a padded
//! NHWC bf16 scratch (`vcvtne2ps2bf16`; NCHW planes interleaved by `vpermt2w`), where the 9
//! taps of one row of the 3x3 window are 9 consecutive values. Each output pixel then takes
//! 5 pairs of taps per window row, a 32-bit broadcast against NV vectors of weight pairs in
//! `vdpbf16ps` (the 9th tap paired with a zero): 15 instructions per 16 channels where the
//! f32 kernel runs 27 FMAs. XB = 8 pixels at once. Stores f32 rows, u8 codes, or bf16 pixel
//! pairs (one `vcvtne2ps2bf16` and one `vpermw` per two pixels and 16 channels, clamped as the
//! GEMM's pairs: in bf16 bits after the rounding where the bounds allow).

use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::bf16gemm::avx512bf16::pair_words;
use crate::bf16gemm::bf16_bit_bounds;
use crate::lanes::{mask16, words_of};

use super::avx512::store;
use super::{bf16_row_len, Args, Dst, Layout, PackedStem, StemGeom};

const XB: usize = 8;

/// Values of the three rounded rows: 32 of slack, as the rounding stores whole vectors under
/// masks and the 9th tap's pair reads one value past the window.
fn rows_len(g: StemGeom) -> usize {
    3 * bf16_row_len(g) + 32
}

/// Bytes of the thread's rounded rows for geometry `g` (`StemKernel::staging`).
pub(crate) fn staging_bytes(g: StemGeom) -> usize {
    2 * rows_len(g)
}

/// Bytes this thread's rounded rows hold now.
#[cfg(test)]
pub(crate) fn held_bytes() -> usize {
    ROWS.with_borrow(|r| 2 * r.len())
}

thread_local! {
    /// The three padded bf16 rows of the current output row; grows to the widest call.
    static ROWS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// The `vpermt2w` indices that interleave 16 pixels of three planes: word k of 48 (pixel
/// k / 3, channel k % 3) takes r and g from the first source (g in its upper half), b from the
/// second.
const INTERLEAVE: [i16; 48] = {
    let mut idx = [0i16; 48];
    let mut k = 0;
    while k < 48 {
        let p = (k / 3) as i16;
        idx[k] = p + 16 * (k % 3) as i16;
        k += 1;
    }
    idx
};

/// `w_in` image columns of row `iy` rounded to bf16 into `dst`, interleaved (NHWC), starting
/// at image column 0.
///
/// # Safety
/// The CPU has AVX-512 F/BW/BF16; `args.img` holds row `iy`; `dst` has room for `3 * w_in`
/// values plus 32.
#[inline(always)]
unsafe fn round_row(args: &Args, iy: usize, w_in: usize, dst: *mut u16) {
    let img = args.img;
    let data = img.data.as_ptr();
    match img.layout {
        Layout::Nhwc => {
            let src = data.add(iy * img.w * 3);
            let n = 3 * w_in;
            let mut i = 0;
            while i < n {
                let left = n - i;
                let (m0, m1) = (mask16(left.min(16)), mask16(left.saturating_sub(16).min(16)));
                let lo = _mm512_maskz_loadu_ps(m0, src.add(i));
                let hi = _mm512_maskz_loadu_ps(m1, src.add(i + 16));
                let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_mask_storeu_epi16(dst.add(i) as *mut i16, mask32(left.min(32)), v);
                i += 32;
            }
        }
        Layout::Nchw => {
            let plane = img.h * img.w;
            let (r, g, b) = (data.add(iy * img.w), data.add(plane + iy * img.w), data.add(2 * plane + iy * img.w));
            let idx_lo = _mm512_loadu_si512(INTERLEAVE.as_ptr() as *const __m512i);
            let idx_hi = _mm512_castsi256_si512(_mm256_loadu_si256(INTERLEAVE.as_ptr().add(32) as *const __m256i));
            let mut x = 0;
            while x < w_in {
                let n = (w_in - x).min(16);
                let m = mask16(n);
                let rg = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(cvt16(r.add(x), m)), cvt16(g.add(x), m));
                let bb = _mm512_castsi256_si512(cvt16(b.add(x), m));
                let lo = _mm512_permutex2var_epi16(rg, idx_lo, bb);
                let hi = _mm512_permutex2var_epi16(rg, idx_hi, bb);
                let out = dst.add(3 * x) as *mut i16;
                _mm512_mask_storeu_epi16(out, mask32((3 * n).min(32)), lo);
                _mm512_mask_storeu_epi16(out.add(32), mask32((3 * n).saturating_sub(32)), hi);
                x += 16;
            }
        }
    }
}

/// The `mask` lanes of the 16 values at `p` rounded to bf16 (the others 0).
///
/// # Safety
/// The CPU has AVX-512 F/BF16; the `mask` lanes at `p` are readable.
#[inline(always)]
unsafe fn cvt16(p: *const f32, mask: u16) -> __m256i {
    std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, p)))
}

/// The low `n` bits set (n <= 32).
#[inline(always)]
fn mask32(n: usize) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// The padded bf16 window rows of one output row (`len` values each; only the `valid` ones
/// were written) and the output clamp.
#[derive(Clone, Copy)]
struct Window {
    rows: *const u16,
    len: usize,
    valid: [bool; 3],
    lo: __m512,
    hi: __m512,
    /// The bounds as bf16 bits in every word, where pixel pairs clamp after the rounding
    /// ([`bf16_bit_bounds`]).
    bits: Option<(__m512i, __m512i)>,
}

/// # Safety
/// The CPU has AVX-512 F/BW/BF16; `win` holds the padded rows of its valid window rows; the
/// pixels computed lie within the output row.
#[inline(always)]
unsafe fn pixels<const NV: usize, const N: usize>(args: &Args, p: &PackedStem, win: &Window, x0: usize) {
    let Window { rows, len, valid, lo, hi, .. } = *win;
    let step = 3 * args.g.stride;
    // Weight pairs `[3 rows][5 pairs][c_pad]`, stored as the f32 bit patterns of the words.
    let w = p.weights.as_ptr() as *const u32;
    let mut acc = [[_mm512_setzero_ps(); NV]; N];
    for a in acc.iter_mut() {
        for (v, x) in a.iter_mut().enumerate() {
            *x = _mm512_load_ps(p.bias.as_ptr().add(v * 16));
        }
    }
    let last = _mm512_set1_epi32(0xffff);
    for (ky, _) in valid.iter().enumerate().filter(|v| *v.1) {
        let row = rows.add(ky * len);
        for q in 0..5 {
            let mut wv = [_mm512_setzero_si512(); NV];
            for (v, x) in wv.iter_mut().enumerate() {
                *x = _mm512_load_si512(w.add((ky * 5 + q) * p.c_pad + v * 16) as *const __m512i);
            }
            for (j, a) in acc.iter_mut().enumerate() {
                let word = (row.add((x0 + j) * step + 2 * q) as *const u32).read_unaligned();
                let mut pair = _mm512_set1_epi32(word as i32);
                if q == 4 {
                    // The 9th tap alone: its neighbour (the next pixel's) must not meet the zero
                    // weight (an infinity would make a NaN).
                    pair = _mm512_and_si512(pair, last);
                }
                let pair = std::mem::transmute::<__m512i, __m512bh>(pair);
                for v in 0..NV {
                    a[v] = _mm512_dpbf16_ps(a[v], pair, std::mem::transmute::<__m512i, __m512bh>(wv[v]));
                }
            }
        }
    }
    let c = p.c;
    if let Dst::Bf16Pairs(out, _) = args.out {
        // `x0` and N are even: pixels x0 + j and x0 + j + 1 are pair (x0 + j) / 2, whose 16
        // channels from 16v are the 32 words from (x0 + j) * c + 32v. Clamped as the GEMM's
        // pairs are: in bf16 bits after the rounding where the bounds allow.
        for j in (0..N - N % 2).step_by(2) {
            for (v, (a0, a1)) in acc[j].iter().zip(&acc[j + 1]).enumerate() {
                let mask = words_of(mask16(c.saturating_sub(v * 16).min(16)));
                let words = match win.bits {
                    Some((b_lo, b_hi)) => _mm512_min_epi16(_mm512_max_epi16(pair_words(*a0, *a1), b_lo), b_hi),
                    None => {
                        let y0 = _mm512_min_ps(_mm512_max_ps(*a0, lo), hi);
                        let y1 = _mm512_min_ps(_mm512_max_ps(*a1, lo), hi);
                        pair_words(y0, y1)
                    }
                };
                let dst = out.add((x0 + j) * c + 32 * v) as *mut i16;
                _mm512_mask_storeu_epi16(dst, mask, words);
            }
        }
        return;
    }
    for (j, a) in acc.iter().enumerate() {
        for (v, x) in a.iter().enumerate() {
            let mask = mask16(c.saturating_sub(v * 16).min(16));
            store(args.out, (x0 + j) * c + v * 16, mask, _mm512_min_ps(_mm512_max_ps(*x, lo), hi));
        }
    }
}

/// # Safety
/// As [`row`].
#[inline(always)]
unsafe fn run<const NV: usize>(args: &Args, p: &PackedStem, rows: *const u16, len: usize, valid: [bool; 3]) {
    let win = Window {
        rows,
        len,
        valid,
        lo: _mm512_set1_ps(args.act.min),
        hi: _mm512_set1_ps(args.act.max),
        bits: bf16_bit_bounds(args.act).map(|(l, h)| (_mm512_set1_epi16(l), _mm512_set1_epi16(h))),
    };
    let mut x = 0;
    while x + XB <= args.g.w_out {
        pixels::<NV, XB>(args, p, &win, x);
        x += XB;
    }
    if let Dst::Bf16Pairs(..) = args.out {
        // An even width (`stem_row_bf16_pairs`): the last pixels two at a time.
        while x < args.g.w_out {
            pixels::<NV, 2>(args, p, &win, x);
            x += 2;
        }
    }
    while x < args.g.w_out {
        pixels::<NV, 1>(args, p, &win, x);
        x += 1;
    }
}

/// # Safety
/// Sizes checked by `stem_row`; `p` packed for this kernel; the CPU has AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
pub(crate) unsafe fn row(args: &Args, p: &PackedStem) {
    let g = args.g;
    let len = bf16_row_len(g);
    ROWS.with_borrow_mut(|rows| {
        rows.resize(rows_len(g), 0);
        let mut valid = [false; 3];
        for (ky, ok) in valid.iter_mut().enumerate() {
            let iy = (args.oy * g.stride + ky) as isize - g.pad_top as isize;
            if iy < 0 || iy as usize >= args.img.h {
                continue;
            }
            *ok = true;
            let dst = &mut rows[ky * len..(ky + 1) * len];
            // Columns -pad_left.. of the window: zeros, the image, zeros.
            let cols = len / 3;
            let w_in = args.img.w.min(cols.saturating_sub(g.pad_left));
            let lead = 3 * g.pad_left.min(cols);
            dst[..lead].fill(0);
            round_row(args, iy as usize, w_in, dst.as_mut_ptr().add(lead));
            dst[lead + 3 * w_in..].fill(0);
        }
        let rows = rows.as_ptr();
        match p.c_pad / 16 {
            1 => run::<1>(args, p, rows, len, valid),
            2 => run::<2>(args, p, rows, len, valid),
            _ => run::<3>(args, p, rows, len, valid),
        }
    });
}
