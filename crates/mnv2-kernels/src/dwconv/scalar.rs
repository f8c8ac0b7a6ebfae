//! Portable twin of the depthwise kernels (f32 and u8 rows), with the taps summed in the same
//! order as the vector kernels (fused multiply-adds, row by row), so results match them.

use super::{Args, Elem, PackedDw};

/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row`).
pub(crate) unsafe fn row<I: Elem, O: Elem>(args: &Args<I, O>, w: &PackedDw) {
    let g = args.g;
    let c = w.c;
    let mut acc = vec![0f32; c];
    for x in 0..g.w_out {
        acc.copy_from_slice(&w.bias[..c]);
        for (ky, &row) in args.rows.iter().enumerate() {
            if row.is_null() {
                continue;
            }
            for kx in 0..3 {
                let ix = (x * g.stride + kx * g.dilation) as isize - g.pad_left as isize;
                if ix < 0 || ix as usize >= g.w_in {
                    continue;
                }
                let px = row.add(ix as usize * c);
                let wt = &w.weights[(ky * 3 + kx) * w.c_pad..][..c];
                for ch in 0..c {
                    acc[ch] = (*px.add(ch)).to_f32().mul_add(wt[ch], acc[ch]);
                }
            }
        }
        let o = args.out.add(x * c);
        for (ch, v) in acc.iter().enumerate() {
            *o.add(ch) = O::from_f32(args.act.apply(*v), args.out_q);
        }
    }
}
