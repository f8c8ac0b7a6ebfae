//! AVX2 depthwise 3x3: 8-channel tiles, weights in registers, bounds checks only at the edges.
//! Channel tails go through `maskload`/`maskstore`.

use std::arch::x86_64::*;

use super::{Args, PackedDw};

/// Loop invariants of one 8-channel tile.
struct Tile {
    rows: [*const f32; 3],
    out: *mut f32,
    c: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    w_in: usize,
    w: [__m256; 9],
    bias: __m256,
    mask: __m256i,
    lo: __m256,
    hi: __m256,
}

impl Tile {
    /// # Safety
    /// The CPU has AVX2 and FMA; the pointers this reads and writes are the rows `dwconv_row` checked, and
    /// `x` is an output column of the row (taps outside the input row only when `checked`).
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
                let v = _mm256_maskload_ps(row.add(ix as usize * self.c), self.mask);
                a = _mm256_fmadd_ps(v, self.w[ky * 3 + kx], a);
            }
        }
        _mm256_maskstore_ps(self.out.add(x * self.c), self.mask, _mm256_min_ps(_mm256_max_ps(a, self.lo), self.hi));
    }
}

/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row`); the CPU must have AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn row(args: &[Args<f32, f32>], w: &PackedDw) {
    for a in args {
        row1(a, w);
    }
}

/// One output row.
///
/// # Safety
/// As [`row`].
#[target_feature(enable = "avx2,fma")]
unsafe fn row1(args: &Args<f32, f32>, w: &PackedDw) {
    let g = args.g;
    let c = w.c;
    let (lo_x, hi_x) = g.interior();
    for ct in (0..c).step_by(8) {
        let cols = (c - ct).min(8) as i32;
        let t = Tile {
            rows: std::array::from_fn(|i| if args.rows[i].is_null() { args.rows[i] } else { args.rows[i].add(ct) }),
            out: args.out.add(ct),
            c,
            stride: g.stride,
            dilation: g.dilation,
            pad: g.pad_left,
            w_in: g.w_in,
            w: std::array::from_fn(|k| _mm256_loadu_ps(w.weights.as_ptr().add(k * w.c_pad + ct))),
            bias: _mm256_loadu_ps(w.bias.as_ptr().add(ct)),
            mask: _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
            lo: _mm256_set1_ps(args.act.min),
            hi: _mm256_set1_ps(args.act.max),
        };
        for x in 0..g.w_out {
            t.pixel(x, x < lo_x || x >= hi_x);
        }
    }
}
