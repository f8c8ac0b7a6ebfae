//! Portable twin of the stem kernel.

use super::{Args, PackedStem};

pub(crate) fn row(args: &Args, p: &PackedStem) {
    let (cs, rs, ps) = args.img.strides();
    let g = args.g;
    let c = p.c;
    let data = args.img.data;
    let mut acc = vec![0f32; c];
    for x in 0..g.w_out {
        acc.copy_from_slice(&p.bias[..c]);
        for ky in 0..3 {
            let iy = (args.oy * g.stride + ky) as isize - g.pad_top as isize;
            if iy < 0 || iy as usize >= args.img.h {
                continue;
            }
            for kx in 0..3 {
                let ix = (x * g.stride + kx) as isize - g.pad_left as isize;
                if ix < 0 || ix as usize >= args.img.w {
                    continue;
                }
                for ci in 0..3 {
                    let v = data[ci * cs + iy as usize * rs + ix as usize * ps];
                    let wt = &p.weights[((ky * 3 + kx) * 3 + ci) * p.c_pad..][..c];
                    for (a, w) in acc.iter_mut().zip(wt) {
                        *a += v * w;
                    }
                }
            }
        }
        for (co, v) in acc.iter().enumerate() {
            // SAFETY: stem_row checked that out holds w_out * c values.
            unsafe { *args.out.add(x * c + co) = args.act.apply(*v) };
        }
    }
}
