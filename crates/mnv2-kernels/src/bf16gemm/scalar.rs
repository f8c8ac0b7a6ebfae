//! Portable twin of the bf16 GEMM kernels: one row x 16 columns, operands rounded to bf16,
//! f32 sums in `vdpbf16ps` order (per pair of channels: the odd one's product, then the even
//! one's; both products are exact in f32).

use super::{bf16_bit_bounds, bf16_to_f32, f32_to_bf16, ASrc, Args, Out, PackedBf16Gemm};

/// # Safety
/// `args` (and `src`'s pairs) must describe valid, non-overlapping buffers for `w` (checked
/// by `gemm_bf16_panels` / `gemm_bf16_pairs_panels`).
pub(crate) unsafe fn gemm(args: &Args, w: &PackedBf16Gemm, src: ASrc, out: Out) {
    let (k, n, nr, pairs, stride) = (w.k, w.n, w.nr, w.pairs(), w.packed_pairs());
    let mut a16 = vec![0f32; 2 * pairs];
    let bits = bf16_bit_bounds(args.act);
    for i in 0..args.m {
        match src {
            ASrc::F32 => {
                let a = args.a.add(i * args.lda);
                for (kk, v) in a16.iter_mut().enumerate().take(k) {
                    *v = bf16_to_f32(f32_to_bf16(*a.add(kk)));
                }
            }
            ASrc::Pairs(p, ld) => {
                for q in 0..k / 2 {
                    let pair = *p.add(i * ld + q);
                    a16[2 * q] = bf16_to_f32(pair as u16);
                    a16[2 * q + 1] = bf16_to_f32((pair >> 16) as u16);
                }
            }
        }
        for p in args.panels.clone() {
            let n0 = p * nr;
            let panel = &w.data[p * stride * nr..(p * stride + pairs) * nr];
            let mut acc = [0f32; 16];
            acc[..nr].copy_from_slice(&w.bias[n0..n0 + nr]);
            for q in 0..pairs {
                let (lo, hi) = (a16[2 * q], a16[2 * q + 1]);
                for (o, pair) in acc.iter_mut().zip(&panel[q * nr..(q + 1) * nr]) {
                    *o += hi * bf16_to_f32((pair >> 16) as u16);
                    *o += lo * bf16_to_f32(*pair as u16);
                }
            }
            for (j, v) in acc.iter().enumerate().take(nr.min(n - n0)) {
                if let (Out::Bf16Pairs, Some((lo, hi))) = (out, bits) {
                    // Rounded, then clamped as bf16 bits (as the vector kernels do).
                    let y = (f32_to_bf16(*v) as i16).max(lo).min(hi);
                    *(args.c as *mut u16).add((i & !1) * args.ldc + 2 * (n0 + j) + (i & 1)) = y as u16;
                    continue;
                }
                let mut y = args.act.apply(*v);
                if !args.r.is_null() {
                    y += *args.r.add(i * args.ldr + n0 + j);
                }
                let at = i * args.ldc + n0 + j;
                match out {
                    Out::F32 => *args.c.add(at) = y,
                    Out::Bf16 => *(args.c as *mut u16).add(at) = f32_to_bf16(y),
                    Out::Bf16Pairs => {
                        let at = (i & !1) * args.ldc + 2 * (n0 + j) + (i & 1);
                        *(args.c as *mut u16).add(at) = f32_to_bf16(y)
                    }
                }
            }
        }
    }
}
