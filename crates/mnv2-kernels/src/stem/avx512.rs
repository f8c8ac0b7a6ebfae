//! AVX-512 stem: NV vectors of output channels (NV <= 3) for XB = 4 pixels at once; each of
//! the 27 taps broadcasts one input value per pixel against NV weight vectors.

use std::arch::x86_64::*;

use crate::lanes::mask16;

use super::{Args, Dst, PackedStem};

const XB: usize = 8;

/// Stores the `mask` lanes of `y` at element `at` of `out`: the values, or their u8 codes as
/// `QParams::quantize` gives them (round half to even, the zero point, saturated to 0..=255).
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL; the lanes lie in the row `stem_row` checked.
#[inline(always)]
pub(super) unsafe fn store(out: Dst, at: usize, mask: u16, y: __m512) {
    match out {
        Dst::F32(p) => _mm512_mask_storeu_ps(p.add(at), mask, y),
        Dst::U8(p, q) => {
            let r = _mm512_cvtps_epi32(_mm512_mul_ps(y, _mm512_set1_ps(1.0 / q.scale)));
            let r = _mm512_max_epi32(_mm512_add_epi32(r, _mm512_set1_epi32(q.zero)), _mm512_setzero_si512());
            _mm512_mask_cvtusepi32_storeu_epi8(p.add(at) as *mut i8, mask, r)
        }
        // `stem_row_bf16_pairs` takes bf16 packings only, and the bf16 kernel stores pairs
        // itself.
        Dst::Bf16Pairs(..) => unreachable!("pixel pairs come from the bf16 kernels"),
    }
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL/DQ; `args` describes an image and output row `stem_row` checked, and
/// the pixels computed lie within the output row.
#[inline(always)]
unsafe fn pixels<const NV: usize, const N: usize>(
    args: &Args,
    p: &PackedStem,
    x0: usize,
    checked: bool,
    lo: __m512,
    hi: __m512,
) {
    let (cs, rs, ps) = args.img.strides();
    let g = args.g;
    let data = args.img.data.as_ptr();
    let w = p.weights.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); NV]; N];
    for a in acc.iter_mut() {
        for (v, x) in a.iter_mut().enumerate() {
            *x = _mm512_load_ps(p.bias.as_ptr().add(v * 16));
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
                let t = (ky * 3 + kx) * 3 + ci;
                // A loop, not array::from_fn: closures do not get the target features.
                let mut wv = [_mm512_setzero_ps(); NV];
                for (v, x) in wv.iter_mut().enumerate() {
                    *x = _mm512_load_ps(w.add(t * p.c_pad + v * 16));
                }
                for (j, a) in acc.iter_mut().enumerate() {
                    let ix = ((x0 + j) * g.stride + kx) as isize - g.pad_left as isize;
                    if checked && (ix < 0 || ix as usize >= args.img.w) {
                        continue;
                    }
                    let val = _mm512_set1_ps(*row.add(ci * cs + ix as usize * ps));
                    for v in 0..NV {
                        a[v] = _mm512_fmadd_ps(val, wv[v], a[v]);
                    }
                }
            }
        }
    }
    let c = p.c;
    for (j, a) in acc.iter().enumerate() {
        for (v, x) in a.iter().enumerate() {
            let mask = mask16(c.saturating_sub(v * 16).min(16));
            store(args.out, (x0 + j) * c + v * 16, mask, _mm512_min_ps(_mm512_max_ps(*x, lo), hi));
        }
    }
}

/// # Safety
/// The CPU has AVX-512 F/BW/VL/DQ; `args` describes an image and output row `stem_row` checked, and
/// the pixels computed lie within the output row.
#[inline(always)]
unsafe fn run<const NV: usize>(args: &Args, p: &PackedStem) {
    let g = args.g;
    let lo = _mm512_set1_ps(args.act.min);
    let hi = _mm512_set1_ps(args.act.max);
    // Interior: every tap of the pixel lies inside the image.
    let x_lo = g.pad_left.div_ceil(g.stride);
    let x_hi =
        if args.img.w + g.pad_left >= 3 { ((args.img.w + g.pad_left - 3) / g.stride + 1).min(g.w_out) } else { 0 };
    let x_lo = x_lo.min(x_hi);
    for x in 0..x_lo {
        pixels::<NV, 1>(args, p, x, true, lo, hi);
    }
    let mut x = x_lo;
    while x + XB <= x_hi {
        pixels::<NV, XB>(args, p, x, false, lo, hi);
        x += XB;
    }
    while x < g.w_out {
        pixels::<NV, 1>(args, p, x, x >= x_hi, lo, hi);
        x += 1;
    }
}

/// # Safety
/// Sizes checked by `stem_row`; the CPU must have AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) unsafe fn row(args: &Args, p: &PackedStem) {
    match p.c_pad / 16 {
        1 => run::<1>(args, p),
        2 => run::<2>(args, p),
        _ => run::<3>(args, p),
    }
}
