//! Naive scalar twins of every kernel family: the oracle that fast kernels are tested against.
//!
//! Written for clarity, not speed. Activations are NHWC, one image at a time; convolution
//! weights are `[kh][kw][cin / groups][cout]` (HWIO), so one layout serves the stem, pointwise
//! and depthwise layers.

use crate::{ConvGeom, MinMax};

/// Convolution with folded bias, clamp, and an optional residual added after the clamp.
///
/// `input` is `in_h x in_w x in_c`, `output` is `out_h x out_w x out_c`, `residual` (if any)
/// has the output's shape.
pub fn conv2d_f32(
    g: &ConvGeom,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: MinMax,
    residual: Option<&[f32]>,
    output: &mut [f32],
) {
    assert_eq!(input.len(), g.in_h * g.in_w * g.in_c, "input size");
    assert_eq!(output.len(), g.out_h * g.out_w * g.out_c, "output size");
    assert_eq!(weights.len(), g.kernel * g.kernel * g.in_c / g.groups * g.out_c, "weights size");
    assert_eq!(bias.len(), g.out_c, "bias size");
    let cin_g = g.in_c / g.groups;
    let cout_g = g.out_c / g.groups;
    let mut acc = vec![0f32; g.out_c];
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            acc.copy_from_slice(bias);
            for ky in 0..g.kernel {
                let iy = (oy * g.stride + ky * g.dilation) as isize - g.pad_top as isize;
                if iy < 0 || iy >= g.in_h as isize {
                    continue;
                }
                for kx in 0..g.kernel {
                    let ix = (ox * g.stride + kx * g.dilation) as isize - g.pad_left as isize;
                    if ix < 0 || ix >= g.in_w as isize {
                        continue;
                    }
                    let px = &input[(iy as usize * g.in_w + ix as usize) * g.in_c..][..g.in_c];
                    let wt = &weights[(ky * g.kernel + kx) * cin_g * g.out_c..][..cin_g * g.out_c];
                    for grp in 0..g.groups {
                        for ci in 0..cin_g {
                            let a = px[grp * cin_g + ci];
                            let wrow = &wt[ci * g.out_c + grp * cout_g..][..cout_g];
                            let arow = &mut acc[grp * cout_g..][..cout_g];
                            for (o, w) in arow.iter_mut().zip(wrow) {
                                *o += a * w;
                            }
                        }
                    }
                }
            }
            let o = (oy * g.out_w + ox) * g.out_c;
            for (co, v) in acc.iter().enumerate() {
                let mut y = act.apply(*v);
                if let Some(r) = residual {
                    y += r[o + co];
                }
                output[o + co] = y;
            }
        }
    }
}

/// Mean over the spatial extent: `hw x c` -> `c`.
pub fn global_avg_pool_f32(input: &[f32], hw: usize, c: usize, output: &mut [f32]) {
    assert_eq!(input.len(), hw * c);
    assert_eq!(output.len(), c);
    output.fill(0.0);
    for px in input.chunks_exact(c) {
        for (o, v) in output.iter_mut().zip(px) {
            *o += v;
        }
    }
    let inv = 1.0 / hw as f32;
    for o in output.iter_mut() {
        *o *= inv;
    }
}

/// Fully connected layer: `output[o] = bias[o] + sum_i input[i] * weights[i][o]`
/// (weights `[in][out]`).
pub fn linear_f32(input: &[f32], weights: &[f32], bias: &[f32], output: &mut [f32]) {
    let (n_in, n_out) = (input.len(), output.len());
    assert_eq!(weights.len(), n_in * n_out);
    assert_eq!(bias.len(), n_out);
    output.copy_from_slice(bias);
    for (i, a) in input.iter().enumerate() {
        for (o, w) in output.iter_mut().zip(&weights[i * n_out..][..n_out]) {
            *o += a * w;
        }
    }
}

/// Bilinear resize of one `in_h x in_w x c` image (NHWC) to `out_h x out_w x c`.
///
/// With `align_corners` (TF's `resize_bilinear(align_corners=True)`, PyTorch's
/// `interpolate(mode="bilinear", align_corners=True)`) output pixel `o` samples the input at
/// `o * (in - 1) / (out - 1)` (0 when `out` is 1); without, at half-pixel centres
/// `(o + 0.5) * in / out - 0.5` clamped at 0 (PyTorch's default). The two nearest input
/// rows and columns are blended, the far one clamped to the edge.
#[allow(clippy::too_many_arguments)]
pub fn resize_bilinear_f32(
    input: &[f32],
    in_h: usize,
    in_w: usize,
    c: usize,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
    output: &mut [f32],
) {
    assert_eq!(input.len(), in_h * in_w * c, "input size");
    assert_eq!(output.len(), out_h * out_w * c, "output size");
    // The coordinate convention is shared with the fast kernel; the blending is not.
    let (ty, tx) = (crate::resize::taps(in_h, out_h, align_corners), crate::resize::taps(in_w, out_w, align_corners));
    for (oy, &(y0, y1, fy)) in ty.iter().enumerate() {
        for (ox, &(x0, x1, fx)) in tx.iter().enumerate() {
            let px = |y: usize, x: usize| &input[(y * in_w + x) * c..][..c];
            let (a, b, d, e) = (px(y0, x0), px(y0, x1), px(y1, x0), px(y1, x1));
            let out = &mut output[(oy * out_w + ox) * c..][..c];
            for ch in 0..c {
                let top = a[ch] * (1.0 - fx) + b[ch] * fx;
                let bottom = d[ch] * (1.0 - fx) + e[ch] * fx;
                out[ch] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
}

/// The pointwise GEMM straight from its definition (f64 sums):
/// `out[i][j] = act(b[j] + sum_k a[i * lda + k] * w[k][j]) (+ r[i][j])`, `m x n`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    w: &[f32],
    b: &[f32],
    act: MinMax,
    r: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b[j] as f64;
            for kk in 0..k {
                s += a[i * lda + kk] as f64 * w[kk * n + j] as f64;
            }
            let mut v = act.apply(s as f32);
            if let Some(r) = r {
                v += r[i * n + j];
            }
            out[i * n + j] = v;
        }
    }
    out
}

/// The bf16 pointwise GEMM straight from its definition: both operands rounded to bf16 (to
/// nearest even), products summed in f32 from the bias in `vdpbf16ps` order (per pair of
/// channels `2p, 2p + 1`: the odd one's product, then the even one's), then
/// `act(..) (+ r[i][j])`, `m x n`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    w: &[f32],
    b: &[f32],
    act: MinMax,
    r: Option<&[f32]>,
) -> Vec<f32> {
    use crate::bf16gemm::round_bf16;
    // Each operand rounded once, up front.
    let a: Vec<f32> = a.iter().map(|&v| round_bf16(v)).collect();
    let w: Vec<f32> = w.iter().map(|&v| round_bf16(v)).collect();
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b[j];
            for p in (0..k).step_by(2) {
                if p + 1 < k {
                    s += a[i * lda + p + 1] * w[(p + 1) * n + j];
                }
                s += a[i * lda + p] * w[p * n + j];
            }
            let mut v = act.apply(s);
            if let Some(r) = r {
                v += r[i * n + j];
            }
            out[i * n + j] = v;
        }
    }
    out
}

/// The int8 pointwise GEMM in real units, straight from its definition (exact i64 sums):
/// `act((sum_k (a[i][k] - zero_a) * q[k][j]) * scale_a * w_scale[j] + bias[j])` plus the
/// dequantised residual, `m x n` (`a` is `m x k` u8, `q` is `[k][n]` s8).
#[allow(clippy::too_many_arguments)]
pub fn qgemm_u8s8s32(
    m: usize,
    k: usize,
    n: usize,
    a: &[u8],
    input: crate::qgemm::QParams,
    q: &[i8],
    w_scale: &[f32],
    bias: &[f32],
    act: MinMax,
    res: Option<(&[u8], crate::qgemm::QParams)>,
) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0i64;
            for kk in 0..k {
                acc += (a[i * k + kk] as i64 - input.zero as i64) * q[kk * n + j] as i64;
            }
            let mut v = act.apply(acc as f32 * input.scale * w_scale[j] + bias[j]);
            if let Some((r, rq)) = res {
                v += rq.dequantize(r[i * n + j]);
            }
            out[i * n + j] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_matches_hand_computation() {
        // 3x3 input, 1 channel, 3x3 kernel of ones, pad 1: each output is the sum of its
        // neighbourhood.
        let g = ConvGeom {
            in_h: 3,
            in_w: 3,
            in_c: 1,
            out_h: 3,
            out_w: 3,
            out_c: 1,
            kernel: 3,
            stride: 1,
            dilation: 1,
            pad_top: 1,
            pad_left: 1,
            groups: 1,
        };
        let input: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut out = vec![0.0; 9];
        conv2d_f32(&g, &input, &[1.0; 9], &[0.5], MinMax::NONE, None, &mut out);
        assert_eq!(out, vec![12.5, 21.5, 16.5, 27.5, 45.5, 33.5, 24.5, 39.5, 28.5]);
        conv2d_f32(&g, &input, &[1.0; 9], &[0.5], MinMax::RELU6, Some(&input), &mut out);
        assert_eq!(out[0], 7.0);
    }

    #[test]
    fn pool_and_linear() {
        let mut p = [0.0; 2];
        global_avg_pool_f32(&[1.0, 2.0, 3.0, 6.0], 2, 2, &mut p);
        assert_eq!(p, [2.0, 4.0]);
        let mut o = [0.0; 3];
        linear_f32(&p, &[1.0, 0.0, 1.0, 0.0, 1.0, 1.0], &[0.0, 1.0, -1.0], &mut o);
        assert_eq!(o, [2.0, 5.0, 5.0]);
    }

    #[test]
    fn bilinear_align_corners() {
        // 2x2 -> 3x3 with corners aligned: the centre is the mean, edges the pair means.
        let mut o = [0.0; 9];
        resize_bilinear_f32(&[0.0, 2.0, 4.0, 6.0], 2, 2, 1, 3, 3, true, &mut o);
        assert_eq!(o, [0.0, 1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0, 6.0]);
        // 1x1 -> 2x2 broadcasts (DeepLab's image pooling).
        let mut b = [0.0; 8];
        resize_bilinear_f32(&[1.5, -2.0], 1, 1, 2, 2, 2, true, &mut b);
        assert_eq!(b, [1.5, -2.0, 1.5, -2.0, 1.5, -2.0, 1.5, -2.0]);
        // Half-pixel centres: 2 -> 4 samples at -0.25 (clamped), 0.25, 0.75, 1.25.
        let mut h = [0.0; 4];
        resize_bilinear_f32(&[0.0, 4.0], 1, 2, 1, 1, 4, false, &mut h);
        assert_eq!(h, [0.0, 1.0, 3.0, 4.0]);
    }
}
