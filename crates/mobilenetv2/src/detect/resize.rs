//! The image side of a TF Object Detection API SSD: TF1's legacy `ResizeBilinear`
//! (`align_corners=False`, no `half_pixel_centers`) then `x * scale - offset`
//! (`(2/255) x - 1`), in f32 in TF's operation order.
//!
//! The legacy resize maps output pixel `i` to input coordinate `i * (in / out)` (no half-pixel
//! shift, so the image is sampled from its top-left corner and the last rows and columns may
//! be skipped when shrinking), interpolates between `floor` and `min(ceil, in - 1)`, first
//! along x (`top = tl + (tr - tl) dx`, `bottom` the same), then along y
//! (`top + (bottom - top) dy`). No antialiasing, no rounding; any aspect ratio is stretched to
//! the output size.

use crate::preprocess::RgbImage;

/// For each output index: lower and upper input index and the weight of the upper one.
fn weights(out: usize, input: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / out as f32;
    (0..out)
        .map(|i| {
            let x = i as f32 * scale;
            let f = x.floor();
            let lo = (f as usize).min(input - 1);
            let hi = (x.ceil() as usize).min(input - 1);
            (lo, hi, x - f)
        })
        .collect()
}

/// Resizes `c`-channel `in_h x in_w` f32 pixels (row-major, channels last) to `out_h x out_w`.
pub fn resize_bilinear_legacy(src: &[f32], in_h: usize, in_w: usize, c: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    assert_eq!(src.len(), in_h * in_w * c, "pixels for {in_h}x{in_w}x{c}");
    assert!(in_h > 0 && in_w > 0, "an empty image cannot be resized");
    let ys = weights(out_h, in_h);
    let xs = weights(out_w, in_w);
    let mut out = Vec::with_capacity(out_h * out_w * c);
    for &(y0, y1, dy) in &ys {
        let (r0, r1) = (&src[y0 * in_w * c..(y0 + 1) * in_w * c], &src[y1 * in_w * c..(y1 + 1) * in_w * c]);
        for &(x0, x1, dx) in &xs {
            for ch in 0..c {
                let (tl, tr) = (r0[x0 * c + ch], r0[x1 * c + ch]);
                let (bl, br) = (r1[x0 * c + ch], r1[x1 * c + ch]);
                let top = tl + (tr - tl) * dx;
                let bottom = bl + (br - bl) * dx;
                out.push(top + (bottom - top) * dy);
            }
        }
    }
    out
}

/// The network input of an SSD exported by the TF Object Detection API: the image resized to
/// `height x width` and mapped by `x * scale - offset`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TfPreprocess {
    /// Network input height in pixels.
    pub height: usize,
    /// Network input width in pixels.
    pub width: usize,
    /// Multiplies each 0..=255 value (2/255 for the OD API's [-1, 1]).
    pub scale: f32,
    /// Subtracted after scaling (1 for [-1, 1]).
    pub offset: f32,
}

impl Default for TfPreprocess {
    /// 300 x 300, `(2/255) x - 1`.
    fn default() -> Self {
        TfPreprocess { height: 300, width: 300, scale: 2.0 / 255.0, offset: 1.0 }
    }
}

impl TfPreprocess {
    /// `height x width x 3` floats, channels last.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let src: Vec<f32> = img.data.iter().map(|&v| f32::from(v)).collect();
        let mut x = resize_bilinear_legacy(&src, img.height, img.width, 3, self.height, self.width);
        for v in &mut x {
            *v = *v * self.scale - self.offset;
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_sampling_starts_at_the_corner() {
        // 4 -> 2 takes columns 0 and 2 exactly (no averaging, no half-pixel shift).
        let src = [0.0, 10.0, 20.0, 30.0];
        assert_eq!(resize_bilinear_legacy(&src, 1, 4, 1, 1, 2), vec![0.0, 20.0]);
        // 2 -> 4: 0, 0.5, 1, 1.5 -> the last clamps to the edge.
        assert_eq!(resize_bilinear_legacy(&[0.0, 10.0], 1, 2, 1, 1, 4), vec![0.0, 5.0, 10.0, 10.0]);
        // Same size is the identity.
        let img: Vec<f32> = (0..24).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear_legacy(&img, 2, 4, 3, 2, 4), img);
    }

    #[test]
    fn preprocess_maps_to_minus_one_one() {
        let img = RgbImage::new(2, 1, vec![0, 255, 0, 255, 0, 255]).unwrap();
        let x = TfPreprocess { height: 1, width: 2, ..Default::default() }.apply(&img);
        assert_eq!(x, vec![-1.0, 1.0, -1.0, 1.0, -1.0, 1.0]);
    }
}
