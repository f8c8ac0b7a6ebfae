//! SSD training augmentation, as the TF Object Detection API's `ssd_random_crop`,
//! `random_horizontal_flip` and its photometric ops, ending in the detector's own resize and
//! input mapping ([`TfPreprocess`]), deterministic from an [`Rng`].
//!
//! One image's pipeline ([`augment`]):
//! 1. **Random crop** ([`sample_window`], [`crop`]): with probability [`SsdAugment::keep_whole`]
//!    (TF's `random_coef` 0.15) the whole image; otherwise one of the seven
//!    [`MIN_OBJECT_COVERED`] settings at random, and up to [`SsdAugment::max_tries`] windows
//!    with an area of 0.1 to 1 of the image and an aspect ratio (width / height) of 0.5 to 2
//!    (log-uniform), the first one that covers at least that fraction of some box's area and
//!    holds some box's centre (an image without boxes counts as one box, the whole image, as
//!    `tf.image.sample_distorted_bounding_box` does). No window found: the whole image. Boxes
//!    are kept when their centre lies in the window (the SSD paper's rule), moved into its
//!    frame and clipped to it. Windows are whole pixels, so a box's pixels move exactly.
//! 2. **Horizontal flip** ([`flip`]) with probability 1/2: pixels mirrored, `x -> 1 - x`.
//! 3. **Photometric jitter** ([`photometric`]) in TF's ranges, each op clipping to [0, 1]:
//!    brightness `+ U(-0.2, 0.2)`, contrast `(x - mean) U(0.8, 1.25) + mean` per channel,
//!    saturation `s U(0.8, 1.25)` and hue `h + U(-0.02, 0.02)` (in HSV).
//! 4. **Resize** to the network input with TF1's legacy bilinear resize and `x * scale - offset`
//!    ([`TfPreprocess`]), exactly as the detector maps an image at inference.
//!
//! Boxes are the loss's [`LabeledBox`]es: normalised `(ymin, xmin, ymax, xmax)`.

use serde::{Deserialize, Serialize};

use super::loss::LabeledBox;
use super::resize::{resize_bilinear_legacy, TfPreprocess};
use crate::preprocess::RgbImage;
use crate::rng::Rng;

/// `ssd_random_crop`'s `min_object_covered` settings (one is drawn per image).
pub const MIN_OBJECT_COVERED: [f32; 7] = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0];
/// Window area as a fraction of the image's.
pub const AREA_RANGE: (f64, f64) = (0.1, 1.0);
/// Window aspect ratio (width / height).
pub const ASPECT_RANGE: (f64, f64) = (0.5, 2.0);

/// Which augmentations run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SsdAugment {
    /// `ssd_random_crop`.
    pub crop: bool,
    /// Random horizontal flip.
    pub flip: bool,
    /// Brightness, contrast, saturation and hue jitter.
    pub photometric: bool,
    /// Windows tried per image before the whole image is taken (TF: 100).
    pub max_tries: usize,
    /// Probability of taking the whole image without trying (TF's `random_coef`: 0.15).
    pub keep_whole: f64,
}

impl Default for SsdAugment {
    /// All on, TF's settings.
    fn default() -> Self {
        SsdAugment { crop: true, flip: true, photometric: true, max_tries: 100, keep_whole: 0.15 }
    }
}

impl SsdAugment {
    /// No augmentation: the whole image, resized.
    pub fn none() -> Self {
        SsdAugment { crop: false, flip: false, photometric: false, ..SsdAugment::default() }
    }
}

/// A crop window in whole pixels: top-left corner and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Width in pixels (>= 1).
    pub w: usize,
    /// Height in pixels (>= 1).
    pub h: usize,
}

impl Window {
    /// The whole `width x height` image.
    pub fn whole(width: usize, height: usize) -> Window {
        Window { x: 0, y: 0, w: width, h: height }
    }

    /// Normalised `(ymin, xmin, ymax, xmax)` of the window in a `width x height` image.
    pub fn normalised(&self, width: usize, height: usize) -> [f32; 4] {
        let (fw, fh) = (width as f32, height as f32);
        [self.y as f32 / fh, self.x as f32 / fw, (self.y + self.h) as f32 / fh, (self.x + self.w) as f32 / fw]
    }
}

/// The fraction of box `b`'s area inside window `w` (both normalised `(ymin, xmin, ymax,
/// xmax)`); 0 for an empty box.
pub fn coverage(b: [f32; 4], w: [f32; 4]) -> f32 {
    let ih = (b[2].min(w[2]) - b[0].max(w[0])).max(0.0);
    let iw = (b[3].min(w[3]) - b[1].max(w[1])).max(0.0);
    let area = (b[2] - b[0]) * (b[3] - b[1]);
    if area <= 0.0 {
        0.0
    } else {
        ih * iw / area
    }
}

fn centre_inside(b: [f32; 4], w: [f32; 4]) -> bool {
    let (cy, cx) = ((b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5);
    cy >= w[0] && cy < w[2] && cx >= w[1] && cx < w[3]
}

/// A random crop window of a `width x height` image for `ssd_random_crop`'s setting
/// `min_covered` (see the module documentation); the whole image when `tries` windows fail.
pub fn sample_window(
    width: usize,
    height: usize,
    boxes: &[LabeledBox],
    min_covered: f32,
    tries: usize,
    rng: &mut Rng,
) -> Window {
    let whole = [[0.0, 0.0, 1.0, 1.0]];
    let targets: Vec<[f32; 4]> = if boxes.is_empty() { whole.to_vec() } else { boxes.iter().map(|b| b.bbox).collect() };
    let (lo, hi) = (ASPECT_RANGE.0.ln(), ASPECT_RANGE.1.ln());
    for _ in 0..tries {
        let area = (AREA_RANGE.0 + (AREA_RANGE.1 - AREA_RANGE.0) * rng.uniform()) * (width * height) as f64;
        let aspect = (lo + (hi - lo) * rng.uniform()).exp();
        let w = (area * aspect).sqrt().round() as usize;
        let h = (area / aspect).sqrt().round() as usize;
        if w == 0 || h == 0 || w > width || h > height {
            continue;
        }
        let (x, y) = (rng.below(width - w + 1), rng.below(height - h + 1));
        let win = Window { x, y, w, h };
        let nw = win.normalised(width, height);
        if targets.iter().any(|&b| coverage(b, nw) >= min_covered && centre_inside(b, nw)) {
            return win;
        }
    }
    Window::whole(width, height)
}

/// The pixels of `win` and the boxes whose centre lies in it, in the window's normalised frame,
/// clipped to it.
pub fn crop(img: &RgbImage, boxes: &[LabeledBox], win: Window) -> (RgbImage, Vec<LabeledBox>) {
    let mut data = Vec::with_capacity(win.w * win.h * 3);
    for r in win.y..win.y + win.h {
        let row = (r * img.width + win.x) * 3;
        data.extend_from_slice(&img.data[row..row + win.w * 3]);
    }
    let nw = win.normalised(img.width, img.height);
    let (sh, sw) = (nw[2] - nw[0], nw[3] - nw[1]);
    let kept = boxes
        .iter()
        .filter(|b| centre_inside(b.bbox, nw))
        .map(|b| {
            let [y0, x0, y1, x1] = b.bbox;
            LabeledBox {
                bbox: [
                    ((y0 - nw[0]) / sh).clamp(0.0, 1.0),
                    ((x0 - nw[1]) / sw).clamp(0.0, 1.0),
                    ((y1 - nw[0]) / sh).clamp(0.0, 1.0),
                    ((x1 - nw[1]) / sw).clamp(0.0, 1.0),
                ],
                class: b.class,
            }
        })
        .filter(|b| b.bbox[2] > b.bbox[0] && b.bbox[3] > b.bbox[1])
        .collect();
    (RgbImage { width: win.w, height: win.h, data }, kept)
}

/// The image mirrored left to right, and its boxes with it.
pub fn flip(img: &RgbImage, boxes: &[LabeledBox]) -> (RgbImage, Vec<LabeledBox>) {
    let mut data = Vec::with_capacity(img.data.len());
    for r in 0..img.height {
        for q in (0..img.width).rev() {
            data.extend_from_slice(&img.data[(r * img.width + q) * 3..][..3]);
        }
    }
    let boxes = boxes
        .iter()
        .map(|b| {
            let [y0, x0, y1, x1] = b.bbox;
            LabeledBox { bbox: [y0, 1.0 - x1, y1, 1.0 - x0], class: b.class }
        })
        .collect();
    (RgbImage { width: img.width, height: img.height, data }, boxes)
}

/// RGB in [0, 1] to HSV with hue in [0, 1).
fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let mx = r.max(g).max(b);
    let mn = r.min(g).min(b);
    let d = mx - mn;
    let s = if mx > 0.0 { d / mx } else { 0.0 };
    let h = if d <= 0.0 {
        0.0
    } else if mx == r {
        ((g - b) / d).rem_euclid(6.0) / 6.0
    } else if mx == g {
        ((b - r) / d + 2.0) / 6.0
    } else {
        ((r - g) / d + 4.0) / 6.0
    };
    (h, s, mx)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let i = (h6.floor() as usize).min(5);
    let f = h6 - i as f32;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// TF's photometric ops on RGB values in [0, 1] (`h x w x 3`, channels last), in order
/// brightness, contrast, saturation, hue, each followed by a clip to [0, 1].
pub fn photometric(px: &mut [f32], rng: &mut Rng) {
    let delta = (rng.uniform() * 0.4 - 0.2) as f32;
    let contrast = (0.8 + rng.uniform() * 0.45) as f32;
    let saturation = (0.8 + rng.uniform() * 0.45) as f32;
    let hue = (rng.uniform() * 0.04 - 0.02) as f32;
    for v in px.iter_mut() {
        *v = (*v + delta).clamp(0.0, 1.0);
    }
    let n = (px.len() / 3).max(1) as f64;
    let mut mean = [0f64; 3];
    for p in px.chunks_exact(3) {
        for c in 0..3 {
            mean[c] += p[c] as f64;
        }
    }
    let mean = mean.map(|m| (m / n) as f32);
    for p in px.chunks_exact_mut(3) {
        for c in 0..3 {
            p[c] = ((p[c] - mean[c]) * contrast + mean[c]).clamp(0.0, 1.0);
        }
        let (h, s, v) = rgb_to_hsv(p[0], p[1], p[2]);
        let (r, g, b) = hsv_to_rgb(h + hue, (s * saturation).clamp(0.0, 1.0), v);
        p[0] = r.clamp(0.0, 1.0);
        p[1] = g.clamp(0.0, 1.0);
        p[2] = b.clamp(0.0, 1.0);
    }
}

/// One training sample: `img` and its `boxes` through the augmentations `cfg` enables, then
/// resized and mapped by `pre` (`pre.height x pre.width x 3` floats) with the boxes that
/// remain.
pub fn augment(
    img: &RgbImage,
    boxes: &[LabeledBox],
    cfg: &SsdAugment,
    pre: &TfPreprocess,
    rng: &mut Rng,
) -> (Vec<f32>, Vec<LabeledBox>) {
    let (mut im, mut bx) = (None, boxes.to_vec());
    if cfg.crop && rng.uniform() >= cfg.keep_whole {
        let min_cov = MIN_OBJECT_COVERED[rng.below(MIN_OBJECT_COVERED.len())];
        let win = sample_window(img.width, img.height, &bx, min_cov, cfg.max_tries, rng);
        let (c, b) = crop(img, &bx, win);
        im = Some(c);
        bx = b;
    }
    if cfg.flip && rng.uniform() < 0.5 {
        let (f, b) = flip(im.as_ref().unwrap_or(img), &bx);
        im = Some(f);
        bx = b;
    }
    let src = im.as_ref().unwrap_or(img);
    let mut px: Vec<f32> = src.data.iter().map(|&v| f32::from(v) / 255.0).collect();
    if cfg.photometric {
        photometric(&mut px, rng);
    }
    let mut x = resize_bilinear_legacy(&px, src.height, src.width, 3, pre.height, pre.width);
    let scale = pre.scale * 255.0;
    for v in &mut x {
        *v = *v * scale - pre.offset;
    }
    (x, bx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w x h` image whose pixel (y, x) is (x, y, (x + y) % 256).
    fn ramp(w: usize, h: usize) -> RgbImage {
        let data = (0..h).flat_map(|y| (0..w).flat_map(move |x| [x as u8, y as u8, ((x + y) % 256) as u8])).collect();
        RgbImage::new(w, h, data).unwrap()
    }

    fn lb(y0: f32, x0: f32, y1: f32, x1: f32) -> LabeledBox {
        LabeledBox { bbox: [y0, x0, y1, x1], class: 2 }
    }

    #[test]
    fn crop_moves_boxes_exactly_and_keeps_their_pixels() {
        let img = ramp(100, 50);
        // A box over pixels x 20..40, y 10..30 and one whose centre is outside the window.
        let inside = lb(10.0 / 50.0, 20.0 / 100.0, 30.0 / 50.0, 40.0 / 100.0);
        let outside = lb(0.0, 0.9, 0.2, 1.0);
        // A box whose centre is inside but which sticks out to the left: clipped.
        let partial = lb(20.0 / 50.0, 5.0 / 100.0, 40.0 / 50.0, 25.0 / 100.0);
        let win = Window { x: 10, y: 5, w: 50, h: 40 };
        let (c, b) = crop(&img, &[inside, outside, partial], win);
        assert_eq!((c.width, c.height), (50, 40));
        assert_eq!(b.len(), 2);
        let e = 1e-6;
        let want = [5.0 / 40.0, 10.0 / 50.0, 25.0 / 40.0, 30.0 / 50.0];
        assert!(b[0].bbox.iter().zip(want).all(|(a, w)| (a - w).abs() < e), "{:?}", b[0]);
        assert_eq!(b[0].class, 2);
        let want = [15.0 / 40.0, 0.0, 35.0 / 40.0, 15.0 / 50.0];
        assert!(b[1].bbox.iter().zip(want).all(|(a, w)| (a - w).abs() < e), "{:?}", b[1]);
        // The box's pixels in the crop are the original's.
        let [y0, x0, y1, x1] = b[0].bbox;
        let (cy0, cx0) = ((y0 * 40.0).round() as usize, (x0 * 50.0).round() as usize);
        let (cy1, cx1) = ((y1 * 40.0).round() as usize, (x1 * 50.0).round() as usize);
        for y in cy0..cy1 {
            for x in cx0..cx1 {
                assert_eq!(c.pixel(y, x), img.pixel(y + 5, x + 10));
            }
        }
        assert_eq!((cy0, cx0, cy1, cx1), (5, 10, 25, 30));
    }

    #[test]
    fn flip_mirrors_pixels_and_boxes() {
        let img = ramp(8, 3);
        let (f, b) = flip(&img, &[lb(0.0, 0.25, 1.0, 0.5)]);
        for y in 0..3 {
            for x in 0..8 {
                assert_eq!(f.pixel(y, x), img.pixel(y, 7 - x));
            }
        }
        assert_eq!(b[0].bbox, [0.0, 0.5, 1.0, 0.75]);
        // Twice is the identity.
        let (g, c) = flip(&f, &b);
        assert_eq!(g.data, img.data);
        assert_eq!(c[0].bbox, [0.0, 0.25, 1.0, 0.5]);
    }

    #[test]
    fn windows_follow_the_schedule() {
        let mut rng = Rng::new(5);
        let boxes = [lb(0.1, 0.1, 0.3, 0.3), lb(0.5, 0.6, 0.9, 0.95)];
        for &m in &MIN_OBJECT_COVERED {
            for _ in 0..50 {
                let w = sample_window(200, 100, &boxes, m, 100, &mut rng);
                assert!(w.x + w.w <= 200 && w.y + w.h <= 100 && w.w > 0 && w.h > 0);
                let nw = w.normalised(200, 100);
                if w != Window::whole(200, 100) {
                    let area = (w.w * w.h) as f64 / 20000.0;
                    assert!((0.09..=1.0).contains(&area), "{w:?}");
                    let aspect = w.w as f64 / w.h as f64;
                    assert!((0.45..=2.2).contains(&aspect), "{w:?}");
                }
                assert!(boxes.iter().any(|b| coverage(b.bbox, nw) >= m && centre_inside(b.bbox, nw)), "{m} {w:?}");
            }
        }
        // Full coverage of a box is reachable: not always the whole image.
        let full: usize =
            (0..50).filter(|_| sample_window(200, 100, &boxes, 1.0, 100, &mut rng) != Window::whole(200, 100)).count();
        assert!(full > 10, "{full}");
    }

    #[test]
    fn images_without_boxes_survive_and_runs_repeat() {
        let img = ramp(64, 48);
        let pre = TfPreprocess { height: 32, width: 32, ..TfPreprocess::default() };
        let cfg = SsdAugment::default();
        for seed in 0..20 {
            let (x, b) = augment(&img, &[], &cfg, &pre, &mut Rng::new(seed));
            assert!(b.is_empty());
            assert_eq!(x.len(), 32 * 32 * 3);
            assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
            let boxes = [lb(0.2, 0.2, 0.6, 0.7)];
            let (x1, b1) = augment(&img, &boxes, &cfg, &pre, &mut Rng::new(seed));
            let (x2, b2) = augment(&img, &boxes, &cfg, &pre, &mut Rng::new(seed));
            assert_eq!((x1, b1.clone()), (x2, b2));
            for b in &b1 {
                assert!(b.bbox[0] < b.bbox[2] && b.bbox[1] < b.bbox[3]);
                assert!(b.bbox.iter().all(|v| (0.0..=1.0).contains(v)));
            }
        }
    }

    #[test]
    fn no_augmentation_is_the_detector_mapping() {
        let img = ramp(40, 30);
        let pre = TfPreprocess { height: 20, width: 20, ..TfPreprocess::default() };
        let (x, b) = augment(&img, &[lb(0.1, 0.2, 0.3, 0.4)], &SsdAugment::none(), &pre, &mut Rng::new(1));
        let want = pre.apply(&img);
        assert!(x.iter().zip(&want).all(|(a, w)| (a - w).abs() < 1e-5));
        assert_eq!(b[0].bbox, [0.1, 0.2, 0.3, 0.4]);
    }

    #[test]
    fn photometric_stays_in_range_and_hsv_round_trips() {
        for &(r, g, b) in &[(0.2f32, 0.5f32, 0.9f32), (1.0, 0.0, 0.0), (0.3, 0.3, 0.3), (0.0, 0.7, 0.1)] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r2, g2, b2) = hsv_to_rgb(h, s, v);
            assert!((r - r2).abs() < 1e-6 && (g - g2).abs() < 1e-6 && (b - b2).abs() < 1e-6, "{r} {g} {b}");
        }
        let mut rng = Rng::new(9);
        let mut px: Vec<f32> = (0..300).map(|i| (i % 101) as f32 / 100.0).collect();
        let before = px.clone();
        photometric(&mut px, &mut rng);
        assert!(px.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_ne!(px, before);
    }
}
