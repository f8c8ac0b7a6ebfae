//! From an image file to the network's input, exactly as torchvision does it on a PIL image.
//!
//! The steps, each matching its Python counterpart:
//!
//! 1. **Decode** JPEG or PNG ([`decode`]) and convert to 8-bit RGB the way PIL's
//!    `Image.open(p).convert("RGB")` does ([`RgbImage::from_dynamic`]): gray is replicated,
//!    alpha is dropped (not composited), 16-bit RGB(A) and gray+alpha keep the high byte, and
//!    16-bit gray is *clipped* to 255 (PIL's `I;16` → `RGB` rule, odd but faithful). EXIF
//!    orientation and ICC profiles are ignored, as PIL and torchvision ignore them.
//! 2. **Resize** ([`resize_bilinear`]): PIL's `Image.resize(size, BILINEAR)`, which is
//!    antialiased. When the image shrinks, the triangle filter is stretched by the scale factor,
//!    so every output pixel averages all the input pixels it covers. The filter weights are
//!    computed in f64, normalised, turned into 22-bit fixed point and applied in two separable
//!    passes (horizontal, then vertical) with a rounded, clamped `u8` result after each pass.
//!    Done the same way, the output is bit-identical to PIL's.
//! 3. **Center crop** ([`center_crop`]) with torchvision's offsets, `int(round((h - ch) / 2))`
//!    (Python rounds halves to even), zero-padding first if the image is smaller than the crop.
//! 4. **Normalise** ([`to_tensor`]): `ToTensor` (`v / 255` in f32) then `Normalize`
//!    (`(x - mean) / std` in f32), written channels-last for [`Batch`].
//!
//! [`Preprocess`] says which resize applies: `Some(s)` is torchvision's
//! `Resize(s)` (shorter side to `s`, the longer to `int(s * long / short)`) followed by
//! `CenterCrop((height, width))`; `None` resizes straight to the input size (Keras).

use std::path::Path;

use crate::error::{Error, Result};
use crate::plan::Shape;
use crate::tensor::Batch;
use serde::{Deserialize, Serialize};

/// How an image becomes the network's input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Shorter side after resizing; `None` resizes straight to the input size (Keras).
    pub resize: Option<usize>,
    /// Per-channel mean and std applied to values in [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// torchvision's ImageNet evaluation transform: resize the shorter side to 256 (for a
    /// 224 crop), center crop, mean/std normalisation.
    pub fn imagenet(crop: usize) -> Self {
        Preprocess {
            resize: Some((crop as f64 * 256.0 / 224.0).round() as usize),
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// Keras `mobilenet_v2.preprocess_input`: resize to the input size, scale to [-1, 1].
    pub fn tf() -> Self {
        Preprocess { resize: None, mean: [0.5; 3], std: [0.5; 3] }
    }
}

/// An 8-bit RGB image: rows top to bottom, pixels interleaved R, G, B.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<RgbImage> {
        if data.len() != width * height * 3 {
            return Err(Error::Input(format!("{} bytes do not make a {width}x{height} RGB image", data.len())));
        }
        Ok(RgbImage { width, height, data })
    }

    /// The pixel at row `y`, column `x`.
    pub fn pixel(&self, y: usize, x: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// PIL's `.convert("RGB")` of the mode PIL would have opened the same file in.
    pub fn from_dynamic(img: image::DynamicImage) -> RgbImage {
        use image::DynamicImage as D;
        let (width, height) = (img.width() as usize, img.height() as usize);
        // Expands `k`-channel pixels to RGB through `f`, which picks R, G, B from one pixel.
        fn expand<T: Copy>(px: &[T], k: usize, f: impl Fn(&[T]) -> [u8; 3]) -> Vec<u8> {
            px.chunks_exact(k).flat_map(f).collect()
        }
        let data = match img {
            D::ImageRgb8(b) => b.into_raw(),
            D::ImageRgba8(b) => expand(b.as_raw(), 4, |p| [p[0], p[1], p[2]]),
            D::ImageLuma8(b) => expand(b.as_raw(), 1, |p| [p[0]; 3]),
            D::ImageLumaA8(b) => expand(b.as_raw(), 2, |p| [p[0]; 3]),
            // PIL reads 16-bit gray PNGs as mode `I;16`, whose conversion to RGB clips values
            // above 255 instead of scaling them.
            D::ImageLuma16(b) => expand(b.as_raw(), 1, |p| [p[0].min(255) as u8; 3]),
            // 16-bit gray+alpha and RGB(A) PNGs PIL unpacks to 8 bits by keeping the high byte.
            D::ImageLumaA16(b) => expand(b.as_raw(), 2, |p| [(p[0] >> 8) as u8; 3]),
            D::ImageRgb16(b) => expand(b.as_raw(), 3, |p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]),
            D::ImageRgba16(b) => expand(b.as_raw(), 4, |p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]),
            // Float images never come out of the JPEG and PNG decoders.
            other => other.to_rgb8().into_raw(),
        };
        RgbImage { width, height, data }
    }
}

fn image_err(path: &Path, detail: impl std::fmt::Display) -> Error {
    // The CLI prints errors on one line; decoder messages sometimes span several.
    let detail = detail.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    Error::Image { path: path.to_path_buf(), detail }
}

/// Reads and decodes a JPEG or PNG file. Every failure (missing, unreadable, not an image,
/// corrupt, truncated) is an [`Error::Image`] naming the file.
pub fn decode(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| image_err(path, e))?;
    decode_bytes(&bytes, path)
}

/// Decodes an in-memory JPEG or PNG; `path` is only used in error messages.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let format = image::guess_format(bytes).map_err(|_| {
        image_err(path, format!("not a JPEG or PNG file ({} bytes, unrecognised signature)", bytes.len()))
    })?;
    if !matches!(format, image::ImageFormat::Jpeg | image::ImageFormat::Png) {
        return Err(image_err(path, format!("{format:?} images are not supported (only JPEG and PNG)")));
    }
    if format == image::ImageFormat::Jpeg {
        jpeg_complete(bytes).map_err(|d| image_err(path, d))?;
    }
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| image_err(path, e))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(image_err(path, "the image is empty (0 pixels)"));
    }
    Ok(RgbImage::from_dynamic(img))
}

/// Checks that a JPEG's marker structure runs to its end-of-image marker.
///
/// The JPEG decoder (zune-jpeg, through `image`) is lenient: it decodes a truncated file
/// without complaint, filling the missing blocks. PIL refuses such files ("image file is
/// truncated"), and a half-grey photo would be classified as if it were fine, so truncation is
/// caught here: walk the segments (each carries its length), skip entropy-coded data (where
/// 0xFF is always followed by a stuffed 0x00 or a restart marker), and require an EOI before
/// the bytes run out.
fn jpeg_complete(b: &[u8]) -> std::result::Result<(), String> {
    let truncated = |at: usize| {
        Err(format!("the JPEG data is truncated: the file ends after {at} bytes, before the end-of-image marker"))
    };
    let mut pos = 2; // after SOI, which the format guess has already seen
    loop {
        // The next marker: 0xFF (any number of fill bytes) then a code.
        match b[pos.min(b.len())..].iter().position(|&x| x == 0xFF) {
            Some(i) => pos += i,
            None => return truncated(b.len()),
        }
        while pos < b.len() && b[pos] == 0xFF {
            pos += 1;
        }
        let Some(&code) = b.get(pos) else {
            return truncated(b.len());
        };
        pos += 1;
        match code {
            0xD9 => return Ok(()),
            // Codes without a length: restart markers, TEM, and 0x00 (not a marker).
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b.get(pos..pos + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
            return truncated(b.len());
        };
        if len < 2 || pos + len > b.len() {
            return truncated(b.len());
        }
        pos += len;
        if code == 0xDA {
            // Start of scan: skip the entropy-coded data up to the next real marker.
            loop {
                match b[pos..].iter().position(|&x| x == 0xFF) {
                    Some(i) => pos += i,
                    None => return truncated(b.len()),
                }
                match b.get(pos + 1) {
                    None => return truncated(b.len()),
                    Some(0x00 | 0xD0..=0xD7) => pos += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Fixed-point precision of PIL's 8-bit resampling: 32 bits minus 8 for the pixel value and
/// 2 of headroom for filter weights that sum to slightly more than one after rounding.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's BILINEAR filter: a triangle of support 1.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// For one axis: the first input index, the count and the fixed-point weights of each output
/// pixel (`ksize` weights per output, unused ones zero).
struct Weights {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
}

/// PIL's weights for resampling `in_size` pixels to `out_size`.
fn weights(in_size: usize, out_size: usize) -> Weights {
    let scale = in_size as f64 / out_size as f64;
    // Shrinking stretches the filter so it covers every input pixel (antialiasing);
    // enlarging keeps it at its natural width.
    let filterscale = scale.max(1.0);
    let support = 1.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        // The same expressions, in the same order, as PIL, so every f64 rounds the same way.
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // `as` truncates toward zero, as C's (int) cast does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        let mut total = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = triangle((((x as i64 + xmin) as f64) - center + 0.5) * ss);
            total += *wx;
        }
        let row = &mut k[xx * ksize..][..ksize];
        for (kx, &wx) in row.iter_mut().zip(&w).take(n) {
            let v = if total != 0.0 { wx / total } else { wx };
            // Round half away from zero, then truncate, as PIL does.
            let f = v * (1u32 << PRECISION_BITS) as f64;
            *kx = if f < 0.0 { (f - 0.5) as i32 } else { (f + 0.5) as i32 };
        }
        bounds.push((xmin as usize, n));
    }
    Weights { ksize, bounds, k }
}

/// A weighted sum in fixed point to `u8`: PIL starts the sum at one half (rounding), then
/// shifts and clamps.
#[inline]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes like PIL's `Image.resize((out_w, out_h), Image.BILINEAR)` on an RGB image:
/// bit-identical output.
///
/// # Panics
/// If an output dimension is 0.
pub fn resize_bilinear(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    assert!(out_w > 0 && out_h > 0, "resize to {out_w}x{out_h}");
    const C: usize = 3;
    let (in_w, in_h) = (img.width, img.height);
    // PIL skips a pass whose size does not change (its weights would be the identity anyway).
    let horizontal = if out_w != in_w {
        let wt = weights(in_w, out_w);
        let mut out = vec![0u8; in_h * out_w * C];
        for y in 0..in_h {
            let src = &img.data[y * in_w * C..][..in_w * C];
            let dst = &mut out[y * out_w * C..][..out_w * C];
            for (xx, &(xmin, n)) in wt.bounds.iter().enumerate() {
                let k = &wt.k[xx * wt.ksize..][..n];
                let mut s = [HALF; C];
                for (x, &kx) in k.iter().enumerate() {
                    let p = &src[(xmin + x) * C..][..C];
                    for c in 0..C {
                        s[c] += p[c] as i32 * kx;
                    }
                }
                for c in 0..C {
                    dst[xx * C + c] = clip8(s[c]);
                }
            }
        }
        RgbImage { width: out_w, height: in_h, data: out }
    } else {
        img.clone()
    };
    if out_h == in_h {
        return horizontal;
    }
    let wt = weights(in_h, out_h);
    let stride = out_w * C;
    let mut out = vec![0u8; out_h * stride];
    let mut s = vec![0i32; stride];
    for (yy, &(ymin, n)) in wt.bounds.iter().enumerate() {
        let k = &wt.k[yy * wt.ksize..][..n];
        s.fill(HALF);
        for (y, &ky) in k.iter().enumerate() {
            let src = &horizontal.data[(ymin + y) * stride..][..stride];
            for (acc, &p) in s.iter_mut().zip(src) {
                *acc += p as i32 * ky;
            }
        }
        for (d, &acc) in out[yy * stride..][..stride].iter_mut().zip(&s) {
            *d = clip8(acc);
        }
    }
    RgbImage { width: out_w, height: out_h, data: out }
}

/// torchvision's `Resize(size)` output for an `h x w` image, as `(h, w)`: the shorter side
/// becomes `size`, the longer `int(size * long / short)` (truncated).
pub fn resized_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Python's `size * long / short`: an exact integer product, then one correctly rounded
    // division, as here in f64.
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if w <= h {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// Python's `int(round(d / 2))` for an integer `d >= 0`: halves go to the even neighbour.
fn half_round_even(d: usize) -> usize {
    let q = d / 2;
    if d % 2 == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// torchvision's `CenterCrop((height, width))`: pads with black first (left/top get the
/// smaller half) if the image is smaller than the crop, then crops at
/// `int(round((h - height) / 2))`, `int(round((w - width) / 2))`.
pub fn center_crop(img: &RgbImage, height: usize, width: usize) -> RgbImage {
    let img = if height > img.height || width > img.width {
        let (pl, pt) = (width.saturating_sub(img.width) / 2, height.saturating_sub(img.height) / 2);
        let (nw, nh) = (img.width.max(width), img.height.max(height));
        let mut data = vec![0u8; nw * nh * 3];
        for y in 0..img.height {
            data[((y + pt) * nw + pl) * 3..][..img.width * 3]
                .copy_from_slice(&img.data[y * img.width * 3..][..img.width * 3]);
        }
        std::borrow::Cow::Owned(RgbImage { width: nw, height: nh, data })
    } else {
        std::borrow::Cow::Borrowed(img)
    };
    let top = half_round_even(img.height - height);
    let left = half_round_even(img.width - width);
    let mut data = Vec::with_capacity(height * width * 3);
    for y in top..top + height {
        data.extend_from_slice(&img.data[(y * img.width + left) * 3..][..width * 3]);
    }
    RgbImage { width, height, data }
}

/// Resize and crop to `height x width` as `pre` says, in `u8`: the image the network sees,
/// before normalisation.
pub fn transform(img: &RgbImage, pre: &Preprocess, height: usize, width: usize) -> Result<RgbImage> {
    if height == 0 || width == 0 {
        return Err(Error::Input(format!("cannot make a {height}x{width} network input")));
    }
    match pre.resize {
        None => Ok(if (img.height, img.width) == (height, width) {
            img.clone()
        } else {
            resize_bilinear(img, width, height)
        }),
        Some(0) => Err(Error::Input("preprocess resize must be at least 1".into())),
        Some(size) => {
            let (rh, rw) = resized_size(img.height, img.width, size);
            let resized = if (rh, rw) == (img.height, img.width) { img.clone() } else { resize_bilinear(img, rw, rh) };
            Ok(center_crop(&resized, height, width))
        }
    }
}

/// `ToTensor` then `Normalize(mean, std)`, both in f32 as torch computes them, channels last.
pub fn to_tensor(img: &RgbImage, pre: &Preprocess) -> Vec<f32> {
    img.data
        .chunks_exact(3)
        .flat_map(|p| std::array::from_fn::<f32, 3, _>(|c| (p[c] as f32 / 255.0 - pre.mean[c]) / pre.std[c]))
        .collect()
}

/// One image file to the network input of `height x width`: NHWC values, `height * width * 3`.
pub fn load(path: &Path, pre: &Preprocess, height: usize, width: usize) -> Result<Vec<f32>> {
    let img = decode(path)?;
    Ok(to_tensor(&transform(&img, pre, height, width)?, pre))
}

/// Several image files as one batch for a network taking `height x width` inputs. The first
/// file that fails ends the load with its error, which names it.
pub fn load_batch<P: AsRef<Path>>(paths: &[P], pre: &Preprocess, height: usize, width: usize) -> Result<Batch> {
    let shape = Shape::new(height, width, 3);
    let mut data = Vec::with_capacity(paths.len() * shape.len());
    for p in paths {
        data.extend(load(p.as_ref(), pre, height, width)?);
    }
    Batch::new(paths.len(), shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let data = (0..h * w * 3).map(|i| ((i * 37 + i / 7) % 256) as u8).collect();
        RgbImage::new(w, h, data).unwrap()
    }

    #[test]
    fn torchvision_resize_sizes() {
        // 451x300 (w x h) → shorter side 256, longer int(256 * 451 / 300) = 384.
        assert_eq!(resized_size(300, 451, 256), (256, 384));
        assert_eq!(resized_size(600, 512, 256), (300, 256));
        assert_eq!(resized_size(427, 640, 256), (256, 383));
        assert_eq!(resized_size(512, 512, 256), (256, 256));
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        // Python: round(0.5) = 0, round(1.5) = 2, round(2.5) = 2.
        assert_eq!([0, 1, 2, 3, 4, 5, 6].map(half_round_even), [0, 0, 1, 2, 2, 2, 3]);
        let img = gradient(7, 3);
        let c = center_crop(&img, 2, 4);
        // (7 - 4) / 2 = 1.5 → 2; (3 - 2) / 2 = 0.5 → 0.
        assert_eq!(c.pixel(0, 0), img.pixel(0, 2));
        assert_eq!(c.pixel(1, 3), img.pixel(1, 5));
    }

    #[test]
    fn crop_pads_with_black() {
        let img = gradient(2, 3);
        let c = center_crop(&img, 5, 5);
        // Left pad (5 - 2) / 2 = 1, top pad (5 - 3) / 2 = 1.
        assert_eq!(c.pixel(0, 0), [0; 3]);
        assert_eq!(c.pixel(1, 1), img.pixel(0, 0));
        assert_eq!(c.pixel(3, 2), img.pixel(2, 1));
        assert_eq!(c.pixel(4, 4), [0; 3]);
    }

    #[test]
    fn resize_keeps_flat_images_flat_and_identity_is_exact() {
        let flat = RgbImage::new(13, 9, [10u8, 200, 77].repeat(13 * 9)).unwrap();
        for (w, h) in [(5, 4), (26, 17), (1, 1), (13, 3)] {
            let r = resize_bilinear(&flat, w, h);
            assert!(r.data.chunks(3).all(|p| p == [10, 200, 77]), "{w}x{h}");
        }
        let g = gradient(11, 6);
        assert_eq!(resize_bilinear(&g, 11, 6), g);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(640, 383), (300, 256), (7, 19), (1000, 3)] {
            let w = weights(i, o);
            for (xx, &(_, n)) in w.bounds.iter().enumerate() {
                let s: i32 = w.k[xx * w.ksize..][..n].iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= n as i32, "{i}->{o} at {xx}: {s}");
            }
        }
    }

    #[test]
    fn normalisation() {
        let img = RgbImage::new(1, 1, vec![0, 255, 128]).unwrap();
        let pre = Preprocess::tf();
        assert_eq!(to_tensor(&img, &pre), vec![-1.0, 1.0, (128.0 / 255.0 - 0.5) / 0.5]);
    }

    #[test]
    fn garbage_is_an_image_error() {
        let p = Path::new("x.png");
        for bytes in [&b""[..], b"hello", b"\x89PNG\r\n\x1a\n\0\0", b"\xff\xd8\xff\xe0"] {
            let e = decode_bytes(bytes, p).unwrap_err();
            assert!(matches!(e, Error::Image { .. }), "{e}");
            assert!(e.to_string().starts_with("x.png: "), "{e}");
            assert_eq!(e.to_string().lines().count(), 1);
        }
    }
}
