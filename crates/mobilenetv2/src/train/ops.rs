//! The layers of training over a whole batch: each splits its rows over the rayon pool in
//! fixed-size chunks and adds per-chunk partial sums in chunk order, so a step gives the same
//! bits on every run with the same thread count.

use mnv2_kernels::dwconv::{dwconv_row, DwRow, PackedDw};
use mnv2_kernels::train::{bn, dw, matmul as mm};
use mnv2_kernels::{Isa, MinMax};
use rayon::prelude::*;

/// Rows per task for element-wise work and per-channel reductions.
const ROWS: usize = 512;
/// Rows of `K` per partial product in weight-gradient GEMMs (`dW = dY^T X` sums over pixels).
const WGRAD_ROWS: usize = 8192;

pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Per-channel `(sum (x - shift), sum (x - shift)^2)` in f64 over rows of `c` channels.
pub fn channel_stats(x: &[f32], c: usize, shift: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let parts: Vec<(Vec<f64>, Vec<f64>)> = x
        .par_chunks(ROWS * c)
        .map(|chunk| {
            let (mut s, mut q, mut tmp) = (vec![0f64; c], vec![0f64; c], vec![0f32; 2 * c]);
            bn::stats(chunk, c, shift, &mut s, &mut q, &mut tmp);
            (s, q)
        })
        .collect();
    sum_parts(parts, c)
}

fn sum_parts(parts: Vec<(Vec<f64>, Vec<f64>)>, c: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut s, mut q) = (vec![0f64; c], vec![0f64; c]);
    for (ps, pq) in parts {
        for j in 0..c {
            s[j] += ps[j];
            q[j] += pq[j];
        }
    }
    (s, q)
}

/// `out = clamp(x * scale + shift) (+ residual)`.
pub fn bn_apply(x: &[f32], c: usize, scale: &[f32], shift: &[f32], act: MinMax, res: Option<&[f32]>, out: &mut [f32]) {
    let out = &mut out[..x.len()];
    match res {
        Some(r) => out
            .par_chunks_mut(ROWS * c)
            .zip(x.par_chunks(ROWS * c))
            .zip(r.par_chunks(ROWS * c))
            .for_each(|((o, x), r)| bn::apply(x, c, scale, shift, act.min, act.max, Some(r), o)),
        None => out
            .par_chunks_mut(ROWS * c)
            .zip(x.par_chunks(ROWS * c))
            .for_each(|(o, x)| bn::apply(x, c, scale, shift, act.min, act.max, None, o)),
    }
}

/// `(sum dz, sum dz * (x - mean))` through the clamp.
pub fn bn_backward_sums(
    x: &[f32],
    dy: &[f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    act: MinMax,
    mean: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let parts: Vec<(Vec<f64>, Vec<f64>)> = x
        .par_chunks(ROWS * c)
        .zip(dy.par_chunks(ROWS * c))
        .map(|(x, dy)| {
            let (mut s, mut q, mut tmp) = (vec![0f64; c], vec![0f64; c], vec![0f32; 2 * c]);
            bn::backward_sums(x, dy, c, scale, shift, act.min, act.max, mean, &mut s, &mut q, &mut tmp);
            (s, q)
        })
        .collect();
    sum_parts(parts, c)
}

#[allow(clippy::too_many_arguments)]
pub fn bn_backward_apply(
    x: &[f32],
    g: &mut [f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    act: MinMax,
    ka: &[f32],
    kb: &[f32],
    kd: &[f32],
) {
    g.par_chunks_mut(ROWS * c)
        .zip(x.par_chunks(ROWS * c))
        .for_each(|(g, x)| bn::backward_apply(x, g, c, scale, shift, act.min, act.max, ka, kb, kd));
}

/// `y[m][o] = sum_i a[m][i] * w[o][i]` (1x1 convolution, PyTorch `[out][in]` weights).
pub fn pw_forward(a: &[f32], m: usize, cin: usize, w: &[f32], cout: usize, y: &mut [f32]) {
    mm::matmul(
        &mut y[..m * cout],
        cout,
        mm::Mat::row_major(&a[..m * cin], m, cin),
        mm::Mat::row_major(w, cout, cin).t(),
        false,
        threads(),
    );
}

/// `da[m][i] = sum_o dy[m][o] * w[o][i]`.
pub fn pw_input_grad(dy: &[f32], m: usize, cout: usize, w: &[f32], cin: usize, da: &mut [f32]) {
    mm::matmul(
        &mut da[..m * cin],
        cin,
        mm::Mat::row_major(&dy[..m * cout], m, cout),
        mm::Mat::row_major(w, cout, cin),
        false,
        threads(),
    );
}

/// `dw[o][i] = sum_m dy[m][o] * a[m][i]`, summed in fixed chunks of rows.
pub fn weight_grad(dy: &[f32], m: usize, cout: usize, a: &[f32], cin: usize, dw: &mut [f32]) {
    let dw = &mut dw[..cout * cin];
    let chunks = m.div_ceil(WGRAD_ROWS).max(1);
    let t = threads();
    let part = |lo: usize, hi: usize, out: &mut [f32], acc: bool, th: usize| {
        mm::matmul(
            out,
            cin,
            mm::Mat::row_major(&dy[lo * cout..hi * cout], hi - lo, cout).t(),
            mm::Mat::row_major(&a[lo * cin..hi * cin], hi - lo, cin),
            acc,
            th,
        )
    };
    if chunks < 2 * t {
        for ci in 0..chunks {
            let (lo, hi) = (ci * WGRAD_ROWS, ((ci + 1) * WGRAD_ROWS).min(m));
            part(lo, hi, dw, ci > 0, t);
        }
    } else {
        let parts: Vec<Vec<f32>> = (0..chunks)
            .into_par_iter()
            .map(|ci| {
                let (lo, hi) = (ci * WGRAD_ROWS, ((ci + 1) * WGRAD_ROWS).min(m));
                let mut out = vec![0f32; cout * cin];
                part(lo, hi, &mut out, false, 1);
                out
            })
            .collect();
        dw.fill(0.0);
        for p in parts {
            for (d, v) in dw.iter_mut().zip(&p) {
                *d += v;
            }
        }
    }
}

/// Geometry of a 3x3 convolution over one image.
#[derive(Clone, Copy, Debug)]
pub struct Geom {
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_top: usize,
    pub pad_left: usize,
}

impl Geom {
    fn row(&self) -> DwRow {
        DwRow {
            w_in: self.in_w,
            w_out: self.out_w,
            stride: self.stride,
            dilation: self.dilation,
            pad_left: self.pad_left,
        }
    }
    /// Input row read by output row `oy` through kernel row `ky`, if inside the image.
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.stride + ky * self.dilation) as isize - self.pad_top as isize;
        (0..self.in_h as isize).contains(&iy).then_some(iy as usize)
    }
    /// Output row that reads input row `iy` through kernel row `ky`, if any.
    fn out_row(&self, iy: usize, ky: usize) -> Option<usize> {
        let t = (iy + self.pad_top) as isize - (ky * self.dilation) as isize;
        if t < 0 || !(t as usize).is_multiple_of(self.stride) {
            return None;
        }
        let oy = t as usize / self.stride;
        (oy < self.out_h).then_some(oy)
    }
}

/// PyTorch depthwise weights `[c][1][3][3]` to `[3][3][c]`.
pub fn dw_weights_hwc(w: &[f32], c: usize) -> Vec<f32> {
    let mut out = vec![0f32; 9 * c];
    for ch in 0..c {
        for t in 0..9 {
            out[t * c + ch] = w[ch * 9 + t];
        }
    }
    out
}

/// Depthwise 3x3 forward over `n` images, no bias, no clamp.
pub fn dw_forward(isa: Isa, a: &[f32], n: usize, c: usize, g: Geom, w_hwc: &[f32], y: &mut [f32]) {
    let packed = PackedDw::new(isa, w_hwc, c, &vec![0.0; c]);
    let (in_img, row_len) = (g.in_h * g.in_w * c, g.out_w * c);
    y[..n * g.out_h * row_len].par_chunks_mut(row_len).enumerate().for_each(|(r, out)| {
        let (b, oy) = (r / g.out_h, r % g.out_h);
        let img = &a[b * in_img..][..in_img];
        let rows: [Option<&[f32]>; 3] =
            std::array::from_fn(|ky| g.in_row(oy, ky).map(|iy| &img[iy * g.in_w * c..][..g.in_w * c]));
        dwconv_row(&packed, rows, g.row(), MinMax::NONE, out);
    });
}

/// Depthwise input gradient: `da` (overwritten) from `dy`.
pub fn dw_input_grad(dy: &[f32], n: usize, c: usize, g: Geom, w_hwc: &[f32], da: &mut [f32]) {
    let (out_img, row_in) = (g.out_h * g.out_w * c, g.in_w * c);
    da[..n * g.in_h * row_in].par_chunks_mut(row_in).enumerate().for_each(|(r, din)| {
        let (b, iy) = (r / g.in_h, r % g.in_h);
        din.fill(0.0);
        let img = &dy[b * out_img..][..out_img];
        for ky in 0..3 {
            if let Some(oy) = g.out_row(iy, ky) {
                dw::input_grad_row(&img[oy * g.out_w * c..][..g.out_w * c], w_hwc, ky, c, g.row(), din);
            }
        }
    });
}

/// Depthwise weight gradient `[3][3][c]`, per image in f32 then summed in f64.
pub fn dw_weight_grad(dy: &[f32], a: &[f32], n: usize, c: usize, g: Geom) -> Vec<f32> {
    let (in_img, out_img) = (g.in_h * g.in_w * c, g.out_h * g.out_w * c);
    let parts: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map(|b| {
            let mut acc = vec![0f32; 9 * c];
            let img = &a[b * in_img..][..in_img];
            for oy in 0..g.out_h {
                let rows: [Option<&[f32]>; 3] =
                    std::array::from_fn(|ky| g.in_row(oy, ky).map(|iy| &img[iy * g.in_w * c..][..g.in_w * c]));
                let drow = &dy[b * out_img + oy * g.out_w * c..][..g.out_w * c];
                dw::weight_grad_row(drow, rows, c, g.row(), &mut acc);
            }
            acc
        })
        .collect();
    let mut sum = vec![0f64; 9 * c];
    for p in parts {
        for (s, v) in sum.iter_mut().zip(&p) {
            *s += *v as f64;
        }
    }
    sum.into_iter().map(|v| v as f32).collect()
}

/// The stem's patches: `cols[pixel][(ky * 3 + kx) * 3 + ci]`, zero where the kernel hangs over
/// the border.
pub fn im2col3(img: &[f32], n: usize, g: Geom, cols: &mut [f32]) {
    let in_img = g.in_h * g.in_w * 3;
    cols[..n * g.out_h * g.out_w * 27].par_chunks_mut(g.out_w * 27).enumerate().for_each(|(r, row)| {
        let (b, oy) = (r / g.out_h, r % g.out_h);
        let im = &img[b * in_img..][..in_img];
        for ox in 0..g.out_w {
            for ky in 0..3 {
                let iy = g.in_row(oy, ky);
                for kx in 0..3 {
                    let ix = (ox * g.stride + kx * g.dilation) as isize - g.pad_left as isize;
                    let dst = &mut row[ox * 27 + (ky * 3 + kx) * 3..][..3];
                    match iy {
                        Some(iy) if (0..g.in_w as isize).contains(&ix) => {
                            dst.copy_from_slice(&im[(iy * g.in_w + ix as usize) * 3..][..3])
                        }
                        _ => dst.fill(0.0),
                    }
                }
            }
        }
    });
}

/// PyTorch stem weights `[o][ci][ky][kx]` to the patch order `[o][(ky * 3 + kx) * 3 + ci]`.
pub fn stem_weights_to_cols(w: &[f32], cout: usize) -> Vec<f32> {
    let mut out = vec![0f32; cout * 27];
    for o in 0..cout {
        for ci in 0..3 {
            for t in 0..9 {
                out[o * 27 + t * 3 + ci] = w[(o * 3 + ci) * 9 + t];
            }
        }
    }
    out
}

/// The inverse of [`stem_weights_to_cols`].
pub fn stem_cols_to_weights(wc: &[f32], cout: usize, w: &mut [f32]) {
    for o in 0..cout {
        for ci in 0..3 {
            for t in 0..9 {
                w[(o * 3 + ci) * 9 + t] = wc[o * 27 + t * 3 + ci];
            }
        }
    }
}
