//! Portable twin of the depthwise kernels (f32 and u8 rows), with the taps summed in the same
//! order as the vector kernels (fused multiply-adds, row by row), so results match them.

use super::{Args, DwRow, Elem, PackedDw, Requant, PAIR_WEIGHTS};
use crate::bf16gemm::{bf16_to_f32, f32_to_bf16, Bf16};

/// Calls `f(pixel, weights)` for each tap of output pixel `x` inside the input: the input
/// pixel's `w.c` values and the tap's weights, row by row.
///
/// Bytes the twins allocate per call for `c` channels: one row of sums (`DwKernel::staging`).
pub(crate) fn staging_bytes(_: DwRow, c: usize) -> usize {
    4 * c
}

/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row_any`).
#[inline(always)]
unsafe fn taps<I, O>(args: &Args<I, O>, w: &PackedDw, x: usize, mut f: impl FnMut(*const I, &[f32])) {
    let (g, c) = (args.g, w.c);
    for (ky, &row) in args.rows.iter().enumerate() {
        if row.is_null() {
            continue;
        }
        for kx in 0..3 {
            let ix = (x * g.stride + kx * g.dilation) as isize - g.pad_left as isize;
            if ix < 0 || ix as usize >= g.w_in {
                continue;
            }
            f(row.add(ix as usize * c), &w.weights[(ky * 3 + kx) * w.c_pad..][..c]);
        }
    }
}

/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row`).
pub(crate) unsafe fn row<I: Elem, O: Elem>(args: &[Args<I, O>], w: &PackedDw) {
    for a in args {
        row1(a, w);
    }
}

/// One output row of [`row`].
///
/// # Safety
/// As [`row`].
unsafe fn row1<I: Elem, O: Elem>(args: &Args<I, O>, w: &PackedDw) {
    let c = w.c;
    let mut acc = vec![0f32; c];
    for x in 0..args.g.w_out {
        acc.copy_from_slice(&w.bias[..c]);
        taps(args, w, x, |px, wt| {
            for ch in 0..c {
                acc[ch] = (*px.add(ch)).to_f32().mul_add(wt[ch], acc[ch]);
            }
        });
        let o = args.out.add(x * c);
        for (ch, v) in acc.iter().enumerate() {
            *o.add(ch) = O::from_f32(args.act.apply(*v), args.out_q);
        }
    }
}

/// The int8 twin: u8 values times the weights' integers, summed exactly in i32, then
/// [`Requant`].
///
/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row_u8`), packed by
/// [`PackedDw::quantized_for`].
pub(crate) unsafe fn row_q(args: &[Args<u8, u8>], w: &PackedDw) {
    for a in args {
        row_q1(a, w);
    }
}

/// One output row of [`row_q`].
///
/// # Safety
/// As [`row_q`].
unsafe fn row_q1(args: &Args<u8, u8>, w: &PackedDw) {
    let c = w.c;
    let rq = Requant::new(args.act, args.out_q);
    let mut acc = vec![0i32; c];
    for x in 0..args.g.w_out {
        acc.fill(0);
        taps(args, w, x, |px, wt| {
            for ch in 0..c {
                acc[ch] += *px.add(ch) as i32 * wt[ch] as i32;
            }
        });
        let o = args.out.add(x * c);
        for (ch, &a) in acc.iter().enumerate() {
            *o.add(ch) = rq.code(a as f32, rq.channel(w, ch));
        }
    }
}

/// The twin of the pixel-pair kernel (`dwconv_rows_bf16_pairs`): per output pixel and kernel
/// row, the two pairs it reads (the one left of the row's first, and right of its last, are
/// left out), each multiplied by its weight pair as `vdpbf16ps` does (the odd pixel's
/// product, then the even one's, each added to the f32 sum).
///
/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_rows_bf16_pairs`), packed by
/// [`PackedDw::bf16_pairs_for`].
pub(crate) unsafe fn row_pairs(args: &[Args<Bf16, Bf16>], w: &PackedDw) {
    let c = w.c;
    let half = |v: f32, hi: bool| bf16_to_f32((v.to_bits() >> if hi { 16 } else { 0 }) as u16);
    let mut acc = vec![0f32; c];
    for a in args {
        let (g, pairs) = (a.g, a.g.w_in as isize / 2);
        for x in 0..g.w_out {
            // (pair, weight pair t) in the kernel's order.
            let terms: [(isize, usize); 2] = match (g.stride, x % 2) {
                (1, 0) => [(x as isize / 2, 0), (x as isize / 2 - 1, 1)],
                (1, _) => [(x as isize / 2, 2), (x as isize / 2 + 1, 3)],
                _ => [(x as isize, 0), (x as isize - 1, 1)],
            };
            acc.copy_from_slice(&w.bias[..c]);
            for (ky, &row) in a.rows.iter().enumerate() {
                if row.is_null() {
                    continue;
                }
                for (q, t) in terms {
                    if q < 0 || q >= pairs {
                        continue;
                    }
                    let px = row.add(q as usize * 2 * c);
                    let wt = &w.weights[(ky * PAIR_WEIGHTS + t) * w.c_pad..];
                    for (ch, s) in acc.iter_mut().enumerate() {
                        let (even, odd) = (bf16_to_f32((*px.add(2 * ch)).0), bf16_to_f32((*px.add(2 * ch + 1)).0));
                        *s += odd * half(wt[ch], true);
                        *s += even * half(wt[ch], false);
                    }
                }
            }
            let o = a.out.add(x * c);
            for (ch, v) in acc.iter().enumerate() {
                *o.add(ch) = Bf16(f32_to_bf16(a.act.apply(*v)));
            }
        }
    }
}
