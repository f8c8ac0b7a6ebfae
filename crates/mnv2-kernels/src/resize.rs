//! Bilinear resizing of an NHWC tensor, by output rows: DeepLab's last layer, which upsamples
//! the logits from the feature size to the input size (at 512x512 with 21 classes, 5.5M
//! output values: the largest tensor of the segmenter).
//!
//! Separable: per output row, the two source rows are blended once into a row of the input's
//! width (`in_w * c` values, vectorised by the compiler), and each output pixel then blends two
//! pixels of that row. This is about half the arithmetic of blending four pixels per output
//! value ([`crate::reference::resize_bilinear_f32`], the slow twin) and it reads each source
//! row once per output row. The results differ from the twin's only by float rounding
//! (the two blends are applied in the other order).
//!
//! No ISA is needed (the compiler vectorises the blends), so there is no registry. The one
//! `unsafe` line is [`Bilinear::resize`]'s: it writes the whole output into fresh capacity
//! instead of zeroing it first (at 512x512 the zeroing was 2.4% of a segmenter's inference).

use crate::exec::{split_rows, Pool};
use std::mem::MaybeUninit;
use std::ops::Range;

/// (first index, second index, weight of the second) per output coordinate, as TF's
/// `resize_bilinear` computes it (`align_corners`: `o * (n_in - 1) / (n_out - 1)`; otherwise
/// half-pixel centres clamped at 0).
pub fn taps(n_in: usize, n_out: usize, align_corners: bool) -> Vec<(usize, usize, f32)> {
    (0..n_out)
        .map(|o| {
            let src = if align_corners {
                if n_out > 1 {
                    o as f32 * ((n_in - 1) as f32 / (n_out - 1) as f32)
                } else {
                    0.0
                }
            } else {
                ((o as f32 + 0.5) * (n_in as f32 / n_out as f32) - 0.5).max(0.0)
            };
            let i0 = (src as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// A bilinear resize from `in_h x in_w x c` to `out_h x out_w x c` (NHWC), its coordinate
/// tables computed once ([`Bilinear::rows`] may then be called from several threads).
#[derive(Clone, Debug)]
pub struct Bilinear {
    in_h: usize,
    in_w: usize,
    c: usize,
    ty: Vec<(usize, usize, f32)>,
    tx: Vec<(usize, usize, f32)>,
}

impl Bilinear {
    /// The tables for one geometry.
    pub fn new(in_h: usize, in_w: usize, c: usize, out_h: usize, out_w: usize, align_corners: bool) -> Bilinear {
        assert!(in_h > 0 && in_w > 0 && c > 0, "an empty input cannot be resized");
        Bilinear { in_h, in_w, c, ty: taps(in_h, out_h, align_corners), tx: taps(in_w, out_w, align_corners) }
    }

    /// Output rows `rows` into `out` (`rows.len() * out_w * c` values) from the whole input
    /// (`in_h * in_w * c` values).
    pub fn rows(&self, input: &[f32], rows: Range<usize>, out: &mut [f32]) {
        // SAFETY: `[f32]` and `[MaybeUninit<f32>]` have the same layout, and `write_rows` only
        // stores initialised values, so `out` stays initialised.
        let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
        self.write_rows(input, rows, out)
    }

    /// The whole output (`out_h * out_w * c` values) in a new vector, its rows split across
    /// `pool`'s threads when there are at least `min_rows` of them. The vector's memory is
    /// written once, never zeroed first.
    pub fn resize(&self, input: &[f32], pool: Option<&Pool>, min_rows: usize) -> Vec<f32> {
        let (h, row_out) = (self.ty.len(), self.tx.len() * self.c);
        let len = h * row_out;
        let mut out = Vec::with_capacity(len);
        let dst = &mut out.spare_capacity_mut()[..len];
        split_rows(pool, h, row_out, dst, min_rows, &|rows, part| self.write_rows(input, rows, part));
        // SAFETY: `split_rows` hands out rows 0..h once each, and `write_rows` writes every
        // value of the rows it is given (it asserts the slice is exactly their size); a panic
        // in a thread reaches here through `Pool::run` before this line.
        unsafe { out.set_len(len) };
        out
    }

    /// Writes every value of output rows `rows` into `out` (exactly their size).
    fn write_rows(&self, input: &[f32], rows: Range<usize>, out: &mut [MaybeUninit<f32>]) {
        let (c, row_in) = (self.c, self.in_w * self.c);
        let row_out = self.tx.len() * c;
        assert_eq!(input.len(), self.in_h * row_in, "input size");
        assert_eq!(out.len(), rows.len() * row_out, "output size");
        assert!(rows.end <= self.ty.len(), "rows beyond the output");
        let mut blend = vec![0f32; row_in];
        let mut last: Option<(usize, usize, f32)> = None;
        for (oy, dst) in rows.zip(out.chunks_exact_mut(row_out)) {
            let (y0, y1, fy) = self.ty[oy];
            if last != Some((y0, y1, fy)) {
                let (a, b) = (&input[y0 * row_in..][..row_in], &input[y1 * row_in..][..row_in]);
                for ((v, &p), &q) in blend.iter_mut().zip(a).zip(b) {
                    *v = p * (1.0 - fy) + q * fy;
                }
                last = Some((y0, y1, fy));
            }
            for (&(x0, x1, fx), o) in self.tx.iter().zip(dst.chunks_exact_mut(c)) {
                let (p, q) = (&blend[x0 * c..][..c], &blend[x1 * c..][..c]);
                for ((v, &p), &q) in o.iter_mut().zip(p).zip(q) {
                    v.write(p * (1.0 - fx) + q * fx);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::resize_bilinear_f32;
    use crate::test_vals::uniform;

    /// Every geometry DeepLab and the detector use, up- and downscaling, both conventions,
    /// against the twin: the largest difference relative to the values' range (rounding only).
    #[test]
    fn matches_the_twin() {
        let cases = [
            (33, 33, 21, 513, 513, true),
            (32, 32, 21, 512, 512, true),
            (9, 11, 3, 129, 161, true),
            (20, 20, 5, 7, 9, true),
            (17, 13, 4, 40, 26, false),
            (1, 1, 2, 5, 5, true),
            (4, 6, 8, 1, 1, true),
        ];
        let pool = Pool::new(2);
        for (seed, &(ih, iw, c, oh, ow, ac)) in cases.iter().enumerate() {
            let input = uniform(seed as u64 + 3, ih * iw * c, -8.0, 16.0);
            let mut want = vec![0f32; oh * ow * c];
            resize_bilinear_f32(&input, ih, iw, c, oh, ow, ac, &mut want);
            let r = Bilinear::new(ih, iw, c, oh, ow, ac);
            // Whole, and in three uneven row ranges (as threads split it).
            let mut whole = vec![0f32; oh * ow * c];
            r.rows(&input, 0..oh, &mut whole);
            let mut parts = vec![0f32; oh * ow * c];
            let cut = [0, oh / 3, oh / 3 + oh.div_ceil(2), oh];
            let mut rest = &mut parts[..];
            for k in 0..3 {
                let (mine, tail) = rest.split_at_mut((cut[k + 1] - cut[k]) * ow * c);
                r.rows(&input, cut[k]..cut[k + 1], mine);
                rest = tail;
            }
            assert_eq!(whole, parts, "split rows differ from the whole ({ih}x{iw}x{c} -> {oh}x{ow})");
            // The fresh-vector form, on one thread and split across two.
            assert_eq!(r.resize(&input, None, 1), whole, "resize() on one thread ({ih}x{iw}x{c} -> {oh}x{ow})");
            assert_eq!(r.resize(&input, Some(&pool), 1), whole, "resize() on two threads ({ih}x{iw}x{c} -> {oh}x{ow})");
            let worst = want.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            // Values span 16: rounding of a few operations is ~1e-5 of that.
            assert!(worst <= 16.0 * 4e-7, "{ih}x{iw}x{c} -> {oh}x{ow}: max difference {worst}");
        }
    }
}
