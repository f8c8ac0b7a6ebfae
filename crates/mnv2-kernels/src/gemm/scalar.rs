//! Portable twin of the GEMM kernels: 4 rows x 16 columns of accumulators in arrays, which
//! compilers vectorise for whatever the target has.

use super::{Args, PackedGemm};

const MR: usize = 4;

/// # Safety
/// `args` must describe valid, non-overlapping buffers for `w` (checked by `gemm`).
pub(crate) unsafe fn gemm(args: &Args, w: &PackedGemm) {
    let (k, n, nr) = (w.k, w.n, w.nr);
    for p in args.panels.clone() {
        let n0 = p * nr;
        let cols = nr.min(n - n0);
        let panel = &w.data[p * k * nr..(p + 1) * k * nr];
        let bias = &w.bias[n0..n0 + nr];
        let mut i = 0;
        while i < args.m {
            let rows = MR.min(args.m - i);
            let mut acc = [[0f32; 16]; MR];
            for (r, row) in acc.iter_mut().enumerate().take(rows) {
                row[..nr.min(16)].copy_from_slice(&bias[..nr.min(16)]);
                let a = args.a.add((i + r) * args.lda);
                for kk in 0..k {
                    let av = *a.add(kk);
                    let wrow = &panel[kk * nr..kk * nr + 16];
                    for (o, wv) in row.iter_mut().zip(wrow) {
                        *o += av * wv;
                    }
                }
            }
            for (r, row) in acc.iter().enumerate().take(rows) {
                let c = args.c.add((i + r) * args.ldc + n0);
                for (j, v) in row.iter().enumerate().take(cols) {
                    let mut y = args.act.apply(*v);
                    if !args.r.is_null() {
                        y += *args.r.add((i + r) * args.ldr + n0 + j);
                    }
                    *c.add(j) = y;
                }
            }
            i += rows;
        }
    }
}
