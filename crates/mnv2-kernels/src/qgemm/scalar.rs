//! Portable twin of the int8 GEMM kernels, operation for operation the same epilogue (fused
//! multiply-adds, round half to even), so every ISA gives the same bytes.

use super::{Args, PackedQGemm};

/// # Safety
/// `args` must describe valid buffers for `w` (checked by `qgemm`).
pub(crate) unsafe fn qgemm(args: &Args, w: &PackedQGemm) {
    let (k, n, nr) = (w.k, w.n, w.nr);
    let f = super::fold_out(args);
    let mut acc = vec![0i32; nr];
    for i in 0..args.m {
        let a = args.a.add(i * args.lda);
        for p in args.panels.clone() {
            acc.fill(0);
            let stride = w.packed_groups() * 4 * nr;
            let panel = &w.data[p * stride..p * stride + k * nr];
            for g in 0..k / 4 {
                let av = [*a.add(4 * g), *a.add(4 * g + 1), *a.add(4 * g + 2), *a.add(4 * g + 3)];
                let wg = &panel[g * nr * 4..(g + 1) * nr * 4];
                for (j, s) in acc.iter_mut().enumerate() {
                    let b = &wg[j * 4..j * 4 + 4];
                    *s += (0..4).map(|t| av[t] as i32 * b[t] as i32).sum::<i32>();
                }
            }
            for (jj, &s) in acc.iter().enumerate().take(nr.min(n - p * nr)) {
                let j = p * nr + jj;
                if !args.f32_out {
                    // Quantised units (see `OutFold`).
                    let (qmul, qbias) = super::fold_column(w, j, &f);
                    let mut x = (s as f32).mul_add(qmul, qbias).max(f.lo).min(f.hi);
                    if !args.r.is_null() {
                        x = (*args.r.add(i * args.ldr + j) as f32).mul_add(f.rs, x);
                    }
                    let q = (x.round_ties_even() as i32).clamp(0, 255) as u8;
                    *args.c.add(i * args.ldc + j) = q;
                    continue;
                }
                let mut v = ((s - w.zcs[j]) as f32).mul_add(w.mul[j], w.bias[j]);
                v = v.max(args.act.min).min(args.act.max);
                if !args.r.is_null() {
                    let r = *args.r.add(i * args.ldr + j) as i32;
                    v = ((r - args.res_q.zero) as f32).mul_add(args.res_q.scale, v);
                }
                if args.pool {
                    *(args.c as *mut f32).add(j) += v;
                } else {
                    *(args.c as *mut f32).add(i * args.ldc + j) = v;
                }
            }
        }
    }
}
