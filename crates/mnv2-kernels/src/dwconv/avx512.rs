//! AVX-512 depthwise 3x3. Per 16-channel tile the 9 weight vectors and the bias stay in
//! registers while the row is walked. Interior pixels go XB at a time, fully unrolled with
//! stride and dilation as constants, so taps shared by neighbouring pixels are loaded once.
//! A missing (padding) input row is replaced by a present row with zero weights, which keeps
//! the inner loop free of branches. Edge pixels go one at a time with bounds checks; channel
//! tails use masked loads and stores.

use std::arch::x86_64::*;

use super::{Args, Elem, PackedDw};

/// Loading and storing 16 channels of a row element type as f32 vectors.
trait Io: Elem {
    unsafe fn load<const FULL: bool>(p: *const Self, mask: u16) -> __m512;
    unsafe fn store<const FULL: bool>(p: *mut Self, v: __m512, mask: u16, inv: __m512, zero: __m512i);
}

impl Io for f32 {
    #[inline(always)]
    unsafe fn load<const FULL: bool>(p: *const f32, mask: u16) -> __m512 {
        if FULL {
            _mm512_loadu_ps(p)
        } else {
            _mm512_maskz_loadu_ps(mask, p)
        }
    }
    #[inline(always)]
    unsafe fn store<const FULL: bool>(p: *mut f32, v: __m512, mask: u16, _: __m512, _: __m512i) {
        if FULL {
            _mm512_storeu_ps(p, v)
        } else {
            _mm512_mask_storeu_ps(p, mask, v)
        }
    }
}

impl Io for u8 {
    #[inline(always)]
    unsafe fn load<const FULL: bool>(p: *const u8, mask: u16) -> __m512 {
        let b = if FULL { _mm_loadu_si128(p as *const __m128i) } else { _mm_maskz_loadu_epi8(mask, p as *const i8) };
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b))
    }
    #[inline(always)]
    unsafe fn store<const FULL: bool>(p: *mut u8, v: __m512, mask: u16, inv: __m512, zero: __m512i) {
        let q =
            _mm512_max_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), zero), _mm512_setzero_si512());
        _mm512_mask_cvtusepi32_storeu_epi8(p as *mut i8, if FULL { 0xffff } else { mask }, q);
    }
}

/// Loop invariants of one 16-channel tile.
struct Tile<T> {
    rows: [*const T; 3],
    out: *mut T,
    c: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    w_in: usize,
    w: [__m512; 9],
    bias: __m512,
    mask: u16,
    lo: __m512,
    hi: __m512,
    inv: __m512,
    zero: __m512i,
}

impl<T: Io> Tile<T> {
    #[inline(always)]
    unsafe fn load<const FULL: bool>(&self, p: *const T) -> __m512 {
        T::load::<FULL>(p, self.mask)
    }

    #[inline(always)]
    unsafe fn store<const FULL: bool>(&self, x: usize, v: __m512) {
        let v = _mm512_min_ps(_mm512_max_ps(v, self.lo), self.hi);
        T::store::<FULL>(self.out.add(x * self.c), v, self.mask, self.inv, self.zero);
    }

    /// XB interior pixels from output column `x0`; S and D are stride and dilation.
    #[inline(always)]
    unsafe fn interior<const S: usize, const D: usize, const XB: usize, const FULL: bool>(&self, x0: usize) {
        let mut acc = [self.bias; XB];
        for ky in 0..3 {
            let base = self.rows[ky].add((x0 * S - self.pad) * self.c);
            for kx in 0..3 {
                let w = self.w[ky * 3 + kx];
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(self.load::<FULL>(base.add((j * S + kx * D) * self.c)), w, *a);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            self.store::<FULL>(x0 + j, *a);
        }
    }

    /// One pixel; with `checked`, taps outside the row are skipped.
    #[inline(always)]
    unsafe fn pixel(&self, x: usize, checked: bool) {
        let mut a = self.bias;
        for ky in 0..3 {
            for kx in 0..3 {
                let ix = (x * self.stride + kx * self.dilation) as isize - self.pad as isize;
                if checked && (ix < 0 || ix as usize >= self.w_in) {
                    continue;
                }
                let v = self.load::<false>(self.rows[ky].add(ix as usize * self.c));
                a = _mm512_fmadd_ps(v, self.w[ky * 3 + kx], a);
            }
        }
        self.store::<false>(x, a);
    }

    /// Interior pixels `x..hi` in blocks of XB, then singly.
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
}

/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row`); the CPU must have AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) unsafe fn row<T: Elem>(args: &Args<T>, w: &PackedDw) {
    // Only f32 and u8 rows exist (`dwconv_row`, `dwconv_row_u8`).
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<u8>() {
        row_io::<u8>(&*(args as *const Args<T> as *const Args<u8>), w)
    } else {
        row_io::<f32>(&*(args as *const Args<T> as *const Args<f32>), w)
    }
}

#[inline(always)]
unsafe fn row_io<T: Io>(args: &Args<T>, w: &PackedDw) {
    let g = args.g;
    let c = w.c;
    let (lo_x, hi_x) = g.interior();
    // A padding row reads a present row with zero weights (there is always one present).
    let present = args.rows.iter().position(|r| !r.is_null()).expect("at least one input row");
    for ct in (0..c).step_by(16) {
        let cols = (c - ct).min(16);
        let t = Tile {
            rows: std::array::from_fn(|i| {
                let r = if args.rows[i].is_null() { args.rows[present] } else { args.rows[i] };
                r.add(ct)
            }),
            out: args.out.add(ct),
            c,
            stride: g.stride,
            dilation: g.dilation,
            pad: g.pad_left,
            w_in: g.w_in,
            w: std::array::from_fn(|k| {
                if args.rows[k / 3].is_null() {
                    _mm512_setzero_ps()
                } else {
                    _mm512_load_ps(w.weights.as_ptr().add(k * w.c_pad + ct))
                }
            }),
            bias: _mm512_load_ps(w.bias.as_ptr().add(ct)),
            mask: if cols == 16 { 0xffff } else { ((1u32 << cols) - 1) as u16 },
            lo: _mm512_set1_ps(args.act.min),
            hi: _mm512_set1_ps(args.act.max),
            inv: _mm512_set1_ps(1.0 / args.out_q.scale),
            zero: _mm512_set1_epi32(args.out_q.zero),
        };
        for x in 0..lo_x {
            t.pixel(x, true);
        }
        let full = cols == 16;
        let x = match (g.stride, g.dilation, full) {
            (1, 1, true) => t.run::<1, 1, 8, true>(lo_x, hi_x),
            (1, 1, false) => t.run::<1, 1, 8, false>(lo_x, hi_x),
            (2, 1, true) => t.run::<2, 1, 4, true>(lo_x, hi_x),
            (2, 1, false) => t.run::<2, 1, 4, false>(lo_x, hi_x),
            (1, 2, true) => t.run::<1, 2, 4, true>(lo_x, hi_x),
            (1, 4, true) => t.run::<1, 4, 4, true>(lo_x, hi_x),
            _ => lo_x,
        };
        for x in x..hi_x {
            t.pixel(x, false);
        }
        for x in hi_x.max(lo_x)..g.w_out {
            t.pixel(x, true);
        }
    }
}
