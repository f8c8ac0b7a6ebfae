//! From a decoded image to a network input, with or without random augmentation.
//!
//! * `Standard` (ImageNet training): random resized crop (area 8%-100%, aspect 3/4-4/3, ten
//!   tries then a center crop, as torchvision) to the input size, random horizontal flip.
//! * `CropFlip` (the Fashion-MNIST recipe): resize to the input size, pad by an eighth of it with
//!   zeros, random crop back to the input size, random horizontal flip.
//! * `None`: resize straight to the input size (an image already that size is used as is).
//!
//! Evaluation uses [`eval`]: `Standard` data get torchvision's resize + center crop (the model's
//! [`Preprocess`]), the others the plain resize. Every random choice comes from an [`Rng`] the
//! caller seeds per sample, so a run is reproducible whatever the thread timing.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::Preprocess;
use crate::preprocess::{self, RgbImage};
use crate::rng::Rng;

/// Which augmentation training uses (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    /// ImageNet's random resized crop and horizontal flip.
    #[default]
    Standard,
    /// Resize, zero-pad by an eighth, random crop and flip (small images).
    CropFlip,
    /// Resize only.
    None,
}

impl std::str::FromStr for Augment {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Augment, String> {
        match s {
            "standard" => Ok(Augment::Standard),
            "crop-flip" => Ok(Augment::CropFlip),
            "none" => Ok(Augment::None),
            _ => Err(format!("unknown augmentation `{s}` (expected standard, crop-flip or none)")),
        }
    }
}

fn resize_to(img: &RgbImage, h: usize, w: usize) -> RgbImage {
    if (img.height, img.width) == (h, w) {
        img.clone()
    } else {
        preprocess::resize_bilinear(img, w, h)
    }
}

fn crop(img: &RgbImage, top: isize, left: isize, h: usize, w: usize) -> RgbImage {
    let mut data = vec![0u8; h * w * 3];
    for y in 0..h {
        let sy = top + y as isize;
        if sy < 0 || sy >= img.height as isize {
            continue;
        }
        for x in 0..w {
            let sx = left + x as isize;
            if sx < 0 || sx >= img.width as isize {
                continue;
            }
            let s = (sy as usize * img.width + sx as usize) * 3;
            data[(y * w + x) * 3..][..3].copy_from_slice(&img.data[s..s + 3]);
        }
    }
    RgbImage { width: w, height: h, data }
}

fn flip(img: &mut RgbImage) {
    let w = img.width;
    for row in img.data.chunks_exact_mut(w * 3) {
        for x in 0..w / 2 {
            for c in 0..3 {
                row.swap(x * 3 + c, (w - 1 - x) * 3 + c);
            }
        }
    }
}

/// A training input of `h x w`.
pub fn train(img: &RgbImage, how: Augment, h: usize, w: usize, rng: &mut Rng) -> RgbImage {
    match how {
        Augment::None => resize_to(img, h, w),
        Augment::CropFlip => {
            let r = resize_to(img, h, w);
            let (ph, pw) = (h.div_ceil(8), w.div_ceil(8));
            let top = rng.below(2 * ph + 1) as isize - ph as isize;
            let left = rng.below(2 * pw + 1) as isize - pw as isize;
            let mut out = crop(&r, top, left, h, w);
            if rng.uniform() < 0.5 {
                flip(&mut out);
            }
            out
        }
        Augment::Standard => {
            let (ih, iw) = (img.height as f64, img.width as f64);
            let area = ih * iw;
            let mut pick = None;
            for _ in 0..10 {
                let target = area * (0.08 + 0.92 * rng.uniform());
                let (lo, hi) = ((3f64 / 4.0).ln(), (4f64 / 3.0).ln());
                let ratio = (lo + (hi - lo) * rng.uniform()).exp();
                let cw = (target * ratio).sqrt().round() as usize;
                let ch = (target / ratio).sqrt().round() as usize;
                if cw >= 1 && ch >= 1 && cw <= img.width && ch <= img.height {
                    let top = rng.below(img.height - ch + 1);
                    let left = rng.below(img.width - cw + 1);
                    pick = Some((top, left, ch, cw));
                    break;
                }
            }
            let (top, left, ch, cw) = pick.unwrap_or_else(|| {
                let s = img.height.min(img.width);
                ((img.height - s) / 2, (img.width - s) / 2, s, s)
            });
            let mut out = resize_to(&crop(img, top as isize, left as isize, ch, cw), h, w);
            if rng.uniform() < 0.5 {
                flip(&mut out);
            }
            out
        }
    }
}

/// An evaluation input of `h x w`.
pub fn eval(img: &RgbImage, how: Augment, pre: &Preprocess, h: usize, w: usize) -> Result<RgbImage> {
    match how {
        Augment::Standard => preprocess::transform(img, pre, h, w),
        Augment::CropFlip | Augment::None => Ok(resize_to(img, h, w)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_flip_keeps_size_and_is_deterministic() {
        let img = RgbImage::new(4, 4, (0..48).collect()).unwrap();
        let a = train(&img, Augment::CropFlip, 8, 8, &mut Rng::new(3));
        let b = train(&img, Augment::CropFlip, 8, 8, &mut Rng::new(3));
        assert_eq!((a.width, a.height), (8, 8));
        assert_eq!(a, b);
        let same = train(&img, Augment::None, 4, 4, &mut Rng::new(3));
        assert_eq!(same, img, "an image of the input size is used as is");
        let mut f = img.clone();
        flip(&mut f);
        assert_eq!(f.pixel(0, 0), img.pixel(0, 3));
    }
}
