//! AVX-512 depthwise 3x3: per 16-channel tile, the 9 weight vectors and the bias stay in
//! registers while the row is walked; interior pixels go 4 at a time with no bounds checks
//! (stride and dilation as constants, so overlapping taps are loaded once), edge pixels one
//! at a time with checks. Channel tails are masked.

use std::arch::x86_64::*;

use super::{Args, PackedDw};

const XB: usize = 4;

/// Loop invariants of one 16-channel tile.
struct Tile {
    rows: [*const f32; 3],
    out: *mut f32,
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
}

impl Tile {
    #[inline(always)]
    unsafe fn store(&self, x: usize, v: __m512) {
        _mm512_mask_storeu_ps(self.out.add(x * self.c), self.mask, _mm512_min_ps(_mm512_max_ps(v, self.lo), self.hi));
    }

    #[inline(always)]
    unsafe fn tap(&self, p: *const f32, t: usize, acc: __m512) -> __m512 {
        _mm512_fmadd_ps(_mm512_maskz_loadu_ps(self.mask, p), self.w[t], acc)
    }

    /// XB interior pixels from output column `x0`; S and D are stride and dilation.
    #[inline(always)]
    unsafe fn interior<const S: usize, const D: usize>(&self, x0: usize) {
        let mut acc = [self.bias; XB];
        for (ky, &row) in self.rows.iter().enumerate() {
            if row.is_null() {
                continue;
            }
            let base = row.add((x0 * S - self.pad) * self.c);
            for kx in 0..3 {
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = self.tap(base.add((j * S + kx * D) * self.c), ky * 3 + kx, *a);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            self.store(x0 + j, *a);
        }
    }

    /// One pixel; with `checked`, taps outside the row are skipped.
    #[inline(always)]
    unsafe fn pixel(&self, x: usize, checked: bool) {
        let mut a = self.bias;
        for (ky, &row) in self.rows.iter().enumerate() {
            if row.is_null() {
                continue;
            }
            for kx in 0..3 {
                let ix = (x * self.stride + kx * self.dilation) as isize - self.pad as isize;
                if checked && (ix < 0 || ix as usize >= self.w_in) {
                    continue;
                }
                a = self.tap(row.add(ix as usize * self.c), ky * 3 + kx, a);
            }
        }
        self.store(x, a);
    }
}

/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row`); the CPU must have AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) unsafe fn row(args: &Args, w: &PackedDw) {
    let g = args.g;
    let c = w.c;
    let (lo_x, hi_x) = g.interior();
    for ct in (0..c).step_by(16) {
        let cols = (c - ct).min(16);
        let t = Tile {
            rows: std::array::from_fn(|i| if args.rows[i].is_null() { args.rows[i] } else { args.rows[i].add(ct) }),
            out: args.out.add(ct),
            c,
            stride: g.stride,
            dilation: g.dilation,
            pad: g.pad_left,
            w_in: g.w_in,
            w: std::array::from_fn(|k| _mm512_load_ps(w.weights.as_ptr().add(k * w.c_pad + ct))),
            bias: _mm512_load_ps(w.bias.as_ptr().add(ct)),
            mask: if cols == 16 { 0xffff } else { ((1u32 << cols) - 1) as u16 },
            lo: _mm512_set1_ps(args.act.min),
            hi: _mm512_set1_ps(args.act.max),
        };
        for x in 0..lo_x {
            t.pixel(x, true);
        }
        let mut x = lo_x;
        match (g.stride, g.dilation) {
            (1, 1) => {
                while x + XB <= hi_x {
                    t.interior::<1, 1>(x);
                    x += XB;
                }
            }
            (2, 1) => {
                while x + XB <= hi_x {
                    t.interior::<2, 1>(x);
                    x += XB;
                }
            }
            _ => {}
        }
        while x < hi_x {
            t.pixel(x, false);
            x += 1;
        }
        for x in hi_x.max(lo_x)..g.w_out {
            t.pixel(x, true);
        }
    }
}
