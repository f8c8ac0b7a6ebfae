//! Gradients of the depthwise 3x3 convolution, one row at a time (NHWC rows, any stride,
//! dilation and padding, as [`crate::dwconv`]'s forward).
//!
//! Weights are `[3][3][c]` (tap-major, channels contiguous).

use super::dispatch;
use crate::dwconv::DwRow;

/// Output columns `ox` with `0 <= ox * stride + kx * dilation - pad_left < w_in`, as a range.
fn columns(g: &DwRow, kx: usize) -> (usize, usize) {
    let off = kx * g.dilation;
    // ix = ox * s + off - pad >= 0  <=>  ox >= ceil((pad - off) / s)
    let lo = if off >= g.pad_left { 0 } else { (g.pad_left - off).div_ceil(g.stride) };
    // ix < w_in  <=>  ox * s < w_in + pad - off
    let lim = (g.w_in + g.pad_left).saturating_sub(off);
    let hi = if lim == 0 { 0 } else { ((lim - 1) / g.stride + 1).min(g.w_out) };
    (lo.min(hi), hi)
}

/// Scatters one output-gradient row into the input-gradient row it came from:
/// for the kernel row `ky`, `din[ix] += dout[ox] * w[ky][kx]` where `ix = ox * s + kx * d - pad`.
/// `din` holds `g.w_in * c` values, `dout` `g.w_out * c`.
pub fn input_grad_row(dout: &[f32], w: &[f32], ky: usize, c: usize, g: DwRow, din: &mut [f32]) {
    assert!(ky < 3 && g.stride >= 1 && g.dilation >= 1);
    assert!(w.len() >= 9 * c && dout.len() >= g.w_out * c && din.len() >= g.w_in * c);
    input_grad_row_d(dout, w, ky, c, g, din)
}

#[inline(always)]
fn input_grad_row_impl(dout: &[f32], w: &[f32], ky: usize, c: usize, g: DwRow, din: &mut [f32]) {
    for kx in 0..3 {
        let (lo, hi) = columns(&g, kx);
        let wt = &w[(ky * 3 + kx) * c..][..c];
        for ox in lo..hi {
            let ix = ox * g.stride + kx * g.dilation - g.pad_left;
            let d = &dout[ox * c..][..c];
            let o = &mut din[ix * c..][..c];
            for ((o, &d), &w) in o.iter_mut().zip(d).zip(wt) {
                *o += d * w;
            }
        }
    }
}
dispatch!(input_grad_row_d, input_grad_row_impl, (dout: &[f32], w: &[f32], ky: usize, c: usize, g: DwRow, din: &mut [f32]));

/// Adds one output row's contribution to the weight gradient:
/// `acc[ky][kx] += dout[ox] * input_row[ky][ox * s + kx * d - pad]` for the kernel rows whose
/// input row exists (`None` is padding). `acc` holds `9 * c` values.
pub fn weight_grad_row(dout: &[f32], rows: [Option<&[f32]>; 3], c: usize, g: DwRow, acc: &mut [f32]) {
    assert!(g.stride >= 1 && g.dilation >= 1);
    assert!(acc.len() >= 9 * c && dout.len() >= g.w_out * c);
    for r in rows.iter().flatten() {
        assert!(r.len() >= g.w_in * c, "input row too short");
    }
    weight_grad_row_d(dout, rows, c, g, acc)
}

#[inline(always)]
fn weight_grad_row_impl(dout: &[f32], rows: [Option<&[f32]>; 3], c: usize, g: DwRow, acc: &mut [f32]) {
    for (ky, row) in rows.iter().enumerate() {
        let Some(row) = row else { continue };
        for kx in 0..3 {
            let (lo, hi) = columns(&g, kx);
            let a = &mut acc[(ky * 3 + kx) * c..][..c];
            for ox in lo..hi {
                let ix = ox * g.stride + kx * g.dilation - g.pad_left;
                let d = &dout[ox * c..][..c];
                let v = &row[ix * c..][..c];
                for ((a, &d), &v) in a.iter_mut().zip(d).zip(v) {
                    *a += d * v;
                }
            }
        }
    }
}
dispatch!(weight_grad_row_d, weight_grad_row_impl, (dout: &[f32], rows: [Option<&[f32]>; 3], c: usize, g: DwRow, acc: &mut [f32]));

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Both gradients against the definition `out[oy][ox] = sum in[iy][ix] * w[ky][kx]`.
    #[test]
    fn gradients_match_the_definition() {
        for (h, wi, c, s, d, pt, pl, pb, pr) in [
            (5, 7, 3, 1, 1, 1, 1, 1, 1),
            (6, 6, 5, 2, 1, 1, 1, 1, 1),
            (6, 8, 17, 2, 1, 0, 0, 1, 1),
            (9, 9, 4, 1, 2, 2, 2, 2, 2),
            (7, 5, 16, 2, 1, 1, 1, 1, 1),
        ] {
            let oh = (h + pt + pb - 2 * d - 1) / s + 1;
            let ow = (wi + pl + pr - 2 * d - 1) / s + 1;
            let input = vals(1, h * wi * c);
            let w = vals(2, 9 * c);
            let dout = vals(3, oh * ow * c);
            let g = DwRow { w_in: wi, w_out: ow, stride: s, dilation: d, pad_left: pl };
            let mut din = vec![0.0; h * wi * c];
            let mut dw = vec![0.0; 9 * c];
            for oy in 0..oh {
                let drow = &dout[oy * ow * c..][..ow * c];
                let rows: [Option<&[f32]>; 3] = std::array::from_fn(|ky| {
                    let iy = (oy * s + ky * d) as isize - pt as isize;
                    (0..h as isize).contains(&iy).then(|| &input[iy as usize * wi * c..][..wi * c])
                });
                weight_grad_row(drow, rows, c, g, &mut dw);
                for ky in 0..3 {
                    let iy = (oy * s + ky * d) as isize - pt as isize;
                    if (0..h as isize).contains(&iy) {
                        input_grad_row(drow, &w, ky, c, g, &mut din[iy as usize * wi * c..][..wi * c]);
                    }
                }
            }
            let mut want_din = vec![0f64; h * wi * c];
            let mut want_dw = vec![0f64; 9 * c];
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let iy = (oy * s + ky * d) as isize - pt as isize;
                            let ix = (ox * s + kx * d) as isize - pl as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= wi as isize {
                                continue;
                            }
                            for ch in 0..c {
                                let go = dout[(oy * ow + ox) * c + ch] as f64;
                                let ii = (iy as usize * wi + ix as usize) * c + ch;
                                want_din[ii] += go * w[(ky * 3 + kx) * c + ch] as f64;
                                want_dw[(ky * 3 + kx) * c + ch] += go * input[ii] as f64;
                            }
                        }
                    }
                }
            }
            for (a, b) in din.iter().zip(&want_din).chain(dw.iter().zip(&want_dw)) {
                assert!((*a as f64 - b).abs() < 1e-5, "h={h} w={wi} c={c} s={s} d={d}: {a} vs {b}");
            }
        }
    }
}
