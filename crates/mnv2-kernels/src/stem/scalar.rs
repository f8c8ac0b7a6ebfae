//! Portable twin of the stem kernel.

use super::int8::{image_code, plane_len, PackedStemQ, QArgs};
use super::{bf16_row_len, Args, Dst, PackedStem, StemGeom};
use crate::bf16gemm::{bf16_bit_bounds, bf16_to_f32, f32_to_bf16};
use crate::qgemm::QParams;

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
            unsafe { args.out.put(x * c + co, args.act.apply(*v)) };
        }
    }
}

/// Bytes [`row_bf16`] allocates per call: its rounded window rows, as f32 triples.
pub(crate) fn staging_bytes_bf16(g: StemGeom) -> usize {
    3 * (bf16_row_len(g) / 3) * size_of::<[f32; 3]>()
}

/// Bytes [`row_q`] allocates per call: its nine window planes.
pub(crate) fn staging_bytes_q(g: StemGeom) -> usize {
    9 * plane_len(g)
}

/// The bf16 stem (see `KERNELS_BF16`): the window rows rounded into padded bf16 rows, then per
/// pair of taps the second product and the first added to the f32 sum.
pub(crate) fn row_bf16(args: &Args, p: &PackedStem) {
    let (cs, rs, ps) = args.img.strides();
    let g = args.g;
    let (c, len) = (p.c, bf16_row_len(g));
    let mut rows = vec![[0f32; 3]; 0];
    let mut valid = [false; 3];
    let cols = len / 3;
    for (ky, ok) in valid.iter_mut().enumerate() {
        let iy = (args.oy * g.stride + ky) as isize - g.pad_top as isize;
        *ok = iy >= 0 && (iy as usize) < args.img.h;
        for col in 0..cols {
            let ix = col as isize - g.pad_left as isize;
            let px: [f32; 3] = std::array::from_fn(|ci| {
                if *ok && ix >= 0 && (ix as usize) < args.img.w {
                    bf16_to_f32(f32_to_bf16(args.img.data[ci * cs + iy as usize * rs + ix as usize * ps]))
                } else {
                    0.0
                }
            });
            rows.push(px);
        }
    }
    let weight = |ky: usize, j: usize, co: usize| -> f32 {
        let word = p.weights[(ky * 5 + j / 2) * p.c_pad + co].to_bits();
        bf16_to_f32(if j.is_multiple_of(2) { word as u16 } else { (word >> 16) as u16 })
    };
    let bits = bf16_bit_bounds(args.act);
    for x in 0..g.w_out {
        for co in 0..c {
            let mut acc = p.bias[co];
            for ky in (0..3).filter(|&ky| valid[ky]) {
                let tap = |j: usize| rows[ky * cols + x * g.stride + j / 3][j % 3];
                for q in 0..5 {
                    if 2 * q + 1 < 9 {
                        acc += tap(2 * q + 1) * weight(ky, 2 * q + 1, co);
                    }
                    acc += tap(2 * q) * weight(ky, 2 * q, co);
                }
            }
            // SAFETY: stem_row checked that out holds w_out * c values.
            unsafe {
                match (args.out, bits) {
                    // Rounded, then clamped as bf16 bits (as the vector kernel does).
                    (Dst::Bf16Pairs(..), Some((lo, hi))) => {
                        args.out.put_bits(x * c + co, (f32_to_bf16(acc) as i16).max(lo).min(hi) as u16)
                    }
                    _ => args.out.put(x * c + co, args.act.apply(acc)),
                }
            };
        }
    }
}

/// The int8 stem's twin: the window planes code by code, then per pixel and channel the exact
/// sum of the quads' products from the start, and [`PackedStemQ::code`].
pub(crate) fn row_q(args: &QArgs, p: &PackedStemQ) {
    let g = args.g;
    let len = plane_len(g);
    let planes = fill_planes(args, p.input, len);
    for x in 0..g.w_out {
        for co in 0..p.c {
            let mut acc = p.start[co];
            for (i, plane) in planes.chunks(len).enumerate() {
                let w = p.quads[i * p.c_pad + co].to_le_bytes();
                for (kx, &wb) in w.iter().enumerate() {
                    acc += plane[x * g.stride + kx] as i32 * wb as i8 as i32;
                }
            }
            // SAFETY: stem_row_q checked that out holds w_out * c codes.
            unsafe { *args.out.add(x * p.c + co) = p.code(acc, co) };
        }
    }
}

/// The nine window planes (`[ky][ci][len]`) of output row `args.oy`, code by code.
fn fill_planes(args: &QArgs, q: QParams, len: usize) -> Vec<u8> {
    let (cs, rs, ps) = args.img.strides();
    let inv = 1.0 / q.scale;
    let mut planes = vec![q.zero as u8; 9 * len];
    let (a, b) = args.inside(len);
    for (ky, rows) in planes.chunks_mut(3 * len).enumerate() {
        let Some(iy) = args.image_row(ky) else { continue };
        for (ci, plane) in rows.chunks_mut(len).enumerate() {
            for (j, v) in plane.iter_mut().enumerate().take(b).skip(a) {
                *v = image_code(args.img.data[ci * cs + iy * rs + (j - args.g.pad_left) * ps], inv, q);
            }
        }
    }
    planes
}
