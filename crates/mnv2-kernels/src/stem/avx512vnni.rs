//! AVX-512 VNNI int8 stem (see [`super::int8`]). Per output row and (window row, image
//! channel), the image's codes are built straight into a plane of quads, one dword per output
//! pixel holding the codes of its three columns `kx` (and a zero): 16 pixels at a time, the
//! even, odd and next-even columns of 33 image values deinterleaved by permutations,
//! quantised, shifted and or-ed. The dot products then read aligned dwords that lie inside
//! the planes' 64-byte stores (a 4-byte load across two fresh stores would wait for them to
//! retire) and broadcast each against 16 output channels: 16 pixels x one vector of channels
//! in i32 accumulators, nine `vpdpbusd` per pixel.

use std::arch::x86_64::*;

use crate::lanes::{mask16, saturate_bytes};

use super::int8::{PackedStemQ, QArgs};
use super::{Layout, StemGeom};
use crate::aligned::grown;
use std::cell::RefCell;

const XB: usize = 16;

/// The 16 lanes of `v`, each within 0..=255, as bytes in order: two saturating packs and a
/// dword permutation. (The narrowing moves, `vpmovdb` and `vpmovusdb`, cost several times as
/// much on Zen, most of all as masked stores to memory.)
///
/// # Safety
/// The CPU has AVX-512 F/BW.
#[inline(always)]
unsafe fn bytes16(v: __m512i) -> __m128i {
    let z = _mm512_setzero_si512();
    // Lane l holds lanes 4l..4l + 4 of `v` as bytes in its first dword.
    let b = saturate_bytes([v, z, z, z]);
    let order = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castsi512_si128(_mm512_permutexvar_epi32(order, b))
}

/// Stores the first `n` (<= 16) bytes of `b` at `p`.
///
/// # Safety
/// The CPU has AVX-512 BW/VL; `p` is valid for `n` bytes.
#[inline(always)]
unsafe fn store16(p: *mut u8, n: usize, b: __m128i) {
    if n == 16 {
        _mm_storeu_si128(p as *mut __m128i, b);
    } else {
        _mm_mask_storeu_epi8(p as *mut i8, mask16(n), b);
    }
}

/// The image codes of 16 values (see `image_code`).
struct Coder {
    inv: __m512,
    lo: __m512,
    hi: __m512,
    zero: __m512i,
}

impl Coder {
    /// # Safety
    /// The CPU has AVX-512 F.
    #[inline(always)]
    unsafe fn codes(&self, v: __m512) -> __m512i {
        // NaN: `max` returns its second operand, the lower bound.
        let y = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, self.inv), self.lo), self.hi);
        _mm512_add_epi32(_mm512_cvtps_epi32(y), self.zero)
    }
}

/// One image row of one channel, read 16 columns at a time.
struct Columns {
    row: *const f32,
    /// Pixel stride (1 for NCHW, 3 for NHWC).
    ps: usize,
    /// Image width.
    w: isize,
    layout: Layout,
    every_third: __m512i,
}

impl Columns {
    /// Columns `c0..c0 + lanes` (lanes <= 16); those outside the image read 0.0.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; the columns inside the image lie in the row.
    #[inline(always)]
    unsafe fn load(&self, c0: isize, lanes: usize) -> __m512 {
        if c0 >= 0 && c0 + 16 <= self.w {
            let at = self.row.add(c0 as usize * self.ps);
            return match self.layout {
                Layout::Nchw => _mm512_loadu_ps(at),
                Layout::Nhwc => _mm512_i32gather_ps::<4>(self.every_third, at),
            };
        }
        let lo_k = (-c0).clamp(0, 16) as u32;
        let hi_k = (self.w - c0).clamp(0, lanes as isize) as u32;
        let mask = if hi_k > lo_k { (((1u32 << hi_k) - 1) & !((1u32 << lo_k) - 1)) as u16 } else { 0 };
        let at = self.row.wrapping_offset(c0 * self.ps as isize);
        match self.layout {
            Layout::Nchw => _mm512_maskz_loadu_ps(mask, at),
            Layout::Nhwc => _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, self.every_third, at),
        }
    }
}

/// Quads per plane: the output pixels, rounded up to whole vectors.
fn quads_len(w_out: usize) -> usize {
    w_out.next_multiple_of(XB)
}

thread_local! {
    /// The nine quad planes of the current output row.
    static PLANES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Bytes this thread's quad planes hold now.
#[cfg(test)]
pub(crate) fn held_bytes() -> usize {
    PLANES.with_borrow(|p| p.len())
}

/// Bytes of the thread's quad planes for geometry `g` (`StemQKernel::staging`): nine planes
/// of dwords, and room to align them to 64 bytes.
pub(crate) fn staging_bytes(g: StemGeom) -> usize {
    4 * 9 * quads_len(g.w_out) + 64
}

/// Fills the nine quad planes (`[ky][ci][quads_len]` dwords) of `args.oy` at `dst`.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL; `dst` holds `9 * quads_len(w_out)` dwords, 64-byte aligned;
/// `args` was checked by `stem_row_q` (stride 2).
#[inline(always)]
unsafe fn fill(args: &QArgs, p: &PackedStemQ, dst: *mut i32) {
    let (g, q) = (args.g, p.input);
    let n = quads_len(g.w_out);
    let z = q.zero as u32;
    let zero_quad = _mm512_set1_epi32((z | z << 8 | z << 16) as i32);
    let (cs, rs, ps) = args.img.strides();
    let inv = _mm512_set1_ps(1.0 / q.scale);
    let (lo, hi) = (_mm512_set1_ps(-(q.zero as f32)), _mm512_set1_ps(255.0 - q.zero as f32));
    let zero = _mm512_set1_epi32(q.zero);
    let code = Coder { inv, lo, hi, zero };
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let next = _mm512_setr_epi32(2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 0);
    let every_third = _mm512_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45);
    let (w, pad) = (args.img.w as isize, g.pad_left as isize);
    for ky in 0..3 {
        let Some(iy) = args.image_row(ky) else {
            for x in (0..3 * n).step_by(16) {
                _mm512_store_si512(dst.add(ky * 3 * n + x) as *mut __m512i, zero_quad);
            }
            continue;
        };
        for ci in 0..3 {
            let row = args.img.data.as_ptr().add(ci * cs + iy * rs);
            let plane = dst.add((ky * 3 + ci) * n);
            let src = Columns { row, ps, w, layout: args.img.layout, every_third };
            for x0 in (0..n).step_by(16) {
                // Image columns `first + k` for k in 0..48; outside the image they read 0.0,
                // whose code is the zero point.
                let first = (2 * x0) as isize - pad;
                let (v0, v1, v2) = (src.load(first, 16), src.load(first + 16, 16), src.load(first + 32, 1));
                let e = code.codes(_mm512_permutex2var_ps(v0, even, v1));
                let o = code.codes(_mm512_permutex2var_ps(v0, odd, v1));
                // Columns 2x + 2: lane 15 is the first of the next 16 values.
                let n2 = _mm512_mask_permutexvar_ps(
                    _mm512_permutex2var_ps(v0, next, v1),
                    0x8000,
                    _mm512_setzero_si512(),
                    v2,
                );
                let e2 = code.codes(n2);
                let quad = _mm512_or_si512(e, _mm512_or_si512(_mm512_slli_epi32(o, 8), _mm512_slli_epi32(e2, 16)));
                _mm512_store_si512(plane.add(x0) as *mut __m512i, quad);
            }
        }
    }
}

/// N pixels from output column `x0`, one vector of 16 output channels at a time (its
/// epilogue's stores come before the next vector's broadcasts, which keeps the compiler from
/// hoisting and spilling every broadcast of the block).
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and VNNI; the quad planes at `quads` are filled; the pixels
/// lie in the output row `stem_row_q` checked.
#[inline(always)]
unsafe fn pixels<const N: usize>(args: &QArgs, p: &PackedStemQ, quads: *const i32, x0: usize) {
    let n_q = quads_len(args.g.w_out);
    let (lo, hi) = (_mm512_set1_ps(p.lo), _mm512_set1_ps(p.hi));
    for v in 0..p.c_pad / 16 {
        let mut acc = [_mm512_load_si512(p.start.as_ptr().add(v * 16) as *const __m512i); N];
        for i in 0..9 {
            let plane = quads.add(i * n_q + x0);
            let w = _mm512_load_si512(p.quads.as_ptr().add(i * p.c_pad + v * 16) as *const __m512i);
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_dpbusd_epi32(*a, _mm512_set1_epi32(*plane.add(j)), w);
            }
        }
        let mul = _mm512_load_ps(p.mul.as_ptr().add(v * 16));
        let add = _mm512_load_ps(p.add.as_ptr().add(v * 16));
        let n = p.c.saturating_sub(v * 16).min(16);
        for (j, a) in acc.iter().enumerate() {
            let y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*a), mul, add);
            let y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
            store16(args.out.add((x0 + j) * p.c + v * 16), n, bytes16(_mm512_cvtps_epi32(y)));
        }
    }
}

/// # Safety
/// Sizes checked by `stem_row_q`; the CPU must have AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
pub(crate) unsafe fn row(args: &QArgs, p: &PackedStemQ) {
    let w_out = args.g.w_out;
    // 64-byte aligned dwords; valid until this thread next asks for larger planes.
    let buf = grown(&PLANES, staging_bytes(args.g), 0);
    let quads = buf.add(buf.align_offset(64)) as *mut i32;
    fill(args, p, quads);
    let mut x = 0;
    while x + XB <= w_out {
        pixels::<XB>(args, p, quads, x);
        x += XB;
    }
    while x < w_out {
        pixels::<1>(args, p, quads, x);
        x += 1;
    }
}
