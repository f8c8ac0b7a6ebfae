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
    /// Per-channel standard deviation: `x = (v / 255 - mean) / std`.
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

    /// Checks values read from a file: a resize of 1..=`limits::MAX_RESIZE`, finite means,
    /// finite positive stds (`std: 0` divided by zero; a resize of 2^62 overflowed).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let max = crate::limits::MAX_RESIZE;
        if let Some(r) = self.resize.filter(|&r| r == 0 || r > max) {
            return Err(format!("resize {r} is outside 1..={max}"));
        }
        if !self.mean.iter().all(|m| m.is_finite()) || !self.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err("mean must be finite and std finite and positive".into());
        }
        Ok(())
    }
}

/// An 8-bit RGB image: rows top to bottom, pixels interleaved R, G, B.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// An image from `height * width * 3` bytes (rows top to bottom, RGB interleaved);
    /// [`Error::Input`] if the length differs.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<RgbImage> {
        if width.checked_mul(height).and_then(|n| n.checked_mul(3)) != Some(data.len()) {
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
    let bytes = crate::limits::read_file(path, crate::limits::MAX_IMAGE_FILE_BYTES).map_err(|e| match e {
        Error::Io { source, .. } => image_err(path, source),
        other => other,
    })?;
    decode_bytes(&bytes, path)
}

/// Decodes with the decoder's own limits set (side, allocation) after checking the pixel
/// count the header declares against [`crate::limits::MAX_DECODED_PIXELS`].
fn decode_limited(bytes: &[u8], format: image::ImageFormat, path: &Path) -> Result<image::DynamicImage> {
    use crate::limits::{MAX_DECODED_PIXELS, MAX_DECODER_ALLOC, MAX_IMAGE_SIDE};
    let reader = || image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (w, h) = reader().into_dimensions().map_err(|e| image_err(path, e))?;
    let pixels = w as u64 * h as u64;
    if pixels > MAX_DECODED_PIXELS || w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
        return Err(image_err(
            path,
            format!(
                "the image is {w}x{h}: more than the {MAX_DECODED_PIXELS} pixels or {MAX_IMAGE_SIDE} per side this reader decodes"
            ),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODER_ALLOC);
    let mut r = reader();
    r.limits(limits);
    r.decode().map_err(|e| image_err(path, e))
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
    let img = decode_limited(bytes, format, path)?;
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

/// For one axis and a window of output pixels: each output's first input index, count and
/// offset of its fixed-point weights in `k`.
struct Weights {
    bounds: Vec<(usize, usize, usize)>,
    k: Vec<i32>,
}

/// PIL's weights for resampling `in_size` pixels to `out_size`, for the outputs in `window`
/// only. Each output's weights depend only on its own index, so a window's weights are those
/// of the full axis, bit for bit; storing just the nonzero ones keeps memory proportional to
/// the input pixels the window covers.
fn weights(in_size: usize, out_size: usize, window: std::ops::Range<usize>) -> Weights {
    let scale = in_size as f64 / out_size as f64;
    // Shrinking stretches the filter so it covers every input pixel (antialiasing);
    // enlarging keeps it at its natural width.
    let filterscale = scale.max(1.0);
    let support = 1.0 * filterscale;
    let mut bounds = Vec::with_capacity(window.len());
    let mut k = Vec::new();
    let mut w = Vec::new();
    for xx in window {
        // The same expressions, in the same order, as PIL, so every f64 rounds the same way.
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // `as` truncates toward zero, as C's (int) cast does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        w.clear();
        let mut total = 0.0;
        for x in 0..n {
            let wx = triangle((((x as i64 + xmin) as f64) - center + 0.5) * ss);
            w.push(wx);
            total += wx;
        }
        bounds.push((xmin as usize, n, k.len()));
        for &wx in &w {
            let v = if total != 0.0 { wx / total } else { wx };
            // Round half away from zero, then truncate, as PIL does.
            let f = v * (1u32 << PRECISION_BITS) as f64;
            k.push(if f < 0.0 { (f - 0.5) as i32 } else { (f + 0.5) as i32 });
        }
    }
    Weights { bounds, k }
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
    resize_window(img, out_w, out_h, 0..out_w, 0..out_h)
}

/// The window `cols x rows` of `resize_bilinear(img, out_w, out_h)`, computed without the rest
/// of the resized image: the horizontal pass runs only on the input rows the window's vertical
/// filters read, and only for the window's columns. Every output pixel goes through exactly the
/// arithmetic of the full resize, so the window is bit-identical to cropping the full result,
/// while memory and time scale with the window (a 1x100000 image resized to 256 x 25,600,000
/// then cropped to 224x224 needs only its 224x224 window).
pub fn resize_window(
    img: &RgbImage,
    out_w: usize,
    out_h: usize,
    cols: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
) -> RgbImage {
    const C: usize = 3;
    let (in_w, in_h) = (img.width, img.height);
    let nx = cols.len();
    // The vertical filters of the window's rows, and the input rows they read.
    let vertical = (out_h != in_h).then(|| weights(in_h, out_h, rows.clone()));
    let (r0, r1) = match &vertical {
        Some(wt) => {
            let lo = wt.bounds.iter().map(|b| b.0).min().unwrap_or(0);
            let hi = wt.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
            (lo, hi.max(lo))
        }
        None => (rows.start, rows.end),
    };
    // Horizontal pass over input rows r0..r1, window columns only. PIL skips a pass whose size
    // does not change (its weights would be the identity anyway).
    let mut horizontal = vec![0u8; (r1 - r0) * nx * C];
    if out_w != in_w {
        let wt = weights(in_w, out_w, cols.clone());
        for y in r0..r1 {
            let src = &img.data[y * in_w * C..][..in_w * C];
            let dst = &mut horizontal[(y - r0) * nx * C..][..nx * C];
            for (xx, &(xmin, n, off)) in wt.bounds.iter().enumerate() {
                let mut s = [HALF; C];
                for (x, &kx) in wt.k[off..off + n].iter().enumerate() {
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
    } else {
        for y in r0..r1 {
            horizontal[(y - r0) * nx * C..][..nx * C]
                .copy_from_slice(&img.data[(y * in_w + cols.start) * C..][..nx * C]);
        }
    }
    let Some(wt) = vertical else {
        return RgbImage { width: nx, height: rows.len(), data: horizontal };
    };
    let stride = nx * C;
    let mut out = vec![0u8; rows.len() * stride];
    let mut s = vec![0i32; stride];
    for (yy, &(ymin, n, off)) in wt.bounds.iter().enumerate() {
        s.fill(HALF);
        for (y, &ky) in wt.k[off..off + n].iter().enumerate() {
            let src = &horizontal[(ymin + y - r0) * stride..][..stride];
            for (acc, &p) in s.iter_mut().zip(src) {
                *acc += p as i32 * ky;
            }
        }
        for (d, &acc) in out[yy * stride..][..stride].iter_mut().zip(&s) {
            *d = clip8(acc);
        }
    }
    RgbImage { width: nx, height: rows.len(), data: out }
}

/// torchvision's `Resize(size)` output for an `h x w` image, as `(h, w)`: the shorter side
/// becomes `size`, the longer `int(size * long / short)` (truncated).
pub fn resized_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Python's `size * long / short`: an exact integer product, then one correctly rounded
    // division, as here in f64 (the product in u128 so that no size overflows; `as` saturates).
    let new_long = ((size as u128 * long as u128) as f64 / short as f64) as usize;
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

/// One axis of [`center_crop`] for an axis of `len` pixels cropped to `crop`: the first kept
/// pixel, how many are kept, and the black padding before them.
fn crop_axis(len: usize, crop: usize) -> (usize, usize, usize) {
    if crop > len {
        (0, len, (crop - len) / 2)
    } else {
        (half_round_even(len - crop), crop, 0)
    }
}

/// `center_crop(&resize_bilinear(img, out_w, out_h), height, width)`, bit for bit, computing
/// only the part of the resize the crop keeps.
pub fn resize_center_crop(img: &RgbImage, out_w: usize, out_h: usize, height: usize, width: usize) -> RgbImage {
    let (y0, ny, top) = crop_axis(out_h, height);
    let (x0, nx, left) = crop_axis(out_w, width);
    let win = resize_window(img, out_w, out_h, x0..x0 + nx, y0..y0 + ny);
    if (ny, nx) == (height, width) {
        return win;
    }
    let mut data = vec![0u8; height * width * 3];
    for y in 0..ny {
        data[((y + top) * width + left) * 3..][..nx * 3].copy_from_slice(&win.data[y * nx * 3..][..nx * 3]);
    }
    RgbImage { width, height, data }
}

/// Resize and crop to `height x width` as `pre` says, in `u8`: the image the network sees,
/// before normalisation.
pub fn transform(img: &RgbImage, pre: &Preprocess, height: usize, width: usize) -> Result<RgbImage> {
    if height == 0 || width == 0 {
        return Err(Error::Input(format!("cannot make a {height}x{width} network input")));
    }
    let max = crate::limits::MAX_RESIZED_PIXELS;
    if height as u64 * width as u64 > max {
        return Err(Error::Input(format!("a {height}x{width} network input is more than {max} pixels")));
    }
    if img.width == 0 || img.height == 0 || img.data.len() != img.width * img.height * 3 {
        return Err(Error::Input(format!("a {}x{} image with {} bytes", img.width, img.height, img.data.len())));
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
            if rh == 0 || rw == 0 {
                return Err(Error::Input(format!(
                    "resizing a {}x{} image to shorter side {size} leaves no pixels",
                    img.width, img.height
                )));
            }
            Ok(resize_center_crop(img, rw, rh, height, width))
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
            let w = weights(i, o, 0..o);
            for (xx, &(_, n, off)) in w.bounds.iter().enumerate() {
                let s: i32 = w.k[off..off + n].iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= n as i32, "{i}->{o} at {xx}: {s}");
            }
        }
    }

    /// The resize as it was before the crop-window version (full fixed-stride weight table,
    /// both passes over the whole image), kept verbatim as the reference the new code must
    /// match bit for bit.
    fn old_resize(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
        const C: usize = 3;
        fn old_weights(in_size: usize, out_size: usize) -> (usize, Vec<(usize, usize)>, Vec<i32>) {
            let scale = in_size as f64 / out_size as f64;
            let filterscale = scale.max(1.0);
            let support = 1.0 * filterscale;
            let ksize = support.ceil() as usize * 2 + 1;
            let mut bounds = Vec::with_capacity(out_size);
            let mut k = vec![0i32; out_size * ksize];
            let mut w = vec![0f64; ksize];
            for xx in 0..out_size {
                let center = (xx as f64 + 0.5) * scale;
                let ss = 1.0 / filterscale;
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
                    let f = v * (1u32 << PRECISION_BITS) as f64;
                    *kx = if f < 0.0 { (f - 0.5) as i32 } else { (f + 0.5) as i32 };
                }
                bounds.push((xmin as usize, n));
            }
            (ksize, bounds, k)
        }
        let (in_w, in_h) = (img.width, img.height);
        let horizontal = if out_w != in_w {
            let (ksize, bounds, kk) = old_weights(in_w, out_w);
            let mut out = vec![0u8; in_h * out_w * C];
            for y in 0..in_h {
                let src = &img.data[y * in_w * C..][..in_w * C];
                let dst = &mut out[y * out_w * C..][..out_w * C];
                for (xx, &(xmin, n)) in bounds.iter().enumerate() {
                    let k = &kk[xx * ksize..][..n];
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
        let (ksize, bounds, kk) = old_weights(in_h, out_h);
        let stride = out_w * C;
        let mut out = vec![0u8; out_h * stride];
        let mut s = vec![0i32; stride];
        for (yy, &(ymin, n)) in bounds.iter().enumerate() {
            let k = &kk[yy * ksize..][..n];
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

    /// The transform before the crop-window resize: resize everything, then crop.
    fn old_transform(img: &RgbImage, size: usize, height: usize, width: usize) -> RgbImage {
        let (rh, rw) = resized_size(img.height, img.width, size);
        let resized = if (rh, rw) == (img.height, img.width) { img.clone() } else { old_resize(img, rw, rh) };
        center_crop(&resized, height, width)
    }

    fn photos() -> Vec<(String, RgbImage)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/images");
        let mut out = Vec::new();
        for name in ["camera.png", "chelsea.png", "coffee.png", "grace_hopper.jpg", "rocket.jpg"] {
            out.push((name.to_string(), decode(&dir.join(name)).unwrap()));
        }
        out
    }

    /// Defect 1: the crop-window resize is bit-identical to resize-then-crop on the test photos
    /// (at the sizes torchvision's evaluation uses and others) and on random images of random
    /// sizes and aspect ratios, including crops larger than the resized image (padding).
    #[test]
    fn crop_window_resize_is_bit_identical_to_resize_then_crop() {
        let mut cases = 0;
        for (name, img) in photos() {
            for (size, h, w) in [(256, 224, 224), (160, 128, 128), (224, 224, 224), (300, 224, 192), (100, 224, 224)] {
                let pre = Preprocess { resize: Some(size), mean: [0.0; 3], std: [1.0; 3] };
                let new = transform(&img, &pre, h, w).unwrap();
                assert_eq!(new, old_transform(&img, size, h, w), "{name} resize {size} crop {h}x{w}");
                cases += 1;
            }
        }
        let mut rng = crate::rng::Rng::new(17);
        let mut pick = |lo: usize, hi: usize| lo + (rng.next_u64() as usize) % (hi - lo + 1);
        for _ in 0..300 {
            let (w, h) = (pick(1, 90), pick(1, 90));
            let data = (0..w * h * 3).map(|i| ((i * 131 + w * 7 + h) % 251) as u8 ^ (i as u8).rotate_left(3)).collect();
            let img = RgbImage::new(w, h, data).unwrap();
            let (size, ch, cw) = (pick(1, 80), pick(1, 64), pick(1, 64));
            let pre = Preprocess { resize: Some(size), mean: [0.0; 3], std: [1.0; 3] };
            let new = transform(&img, &pre, ch, cw).unwrap();
            assert_eq!(new, old_transform(&img, size, ch, cw), "{w}x{h} resize {size} crop {ch}x{cw}");
            // The full resize (now a window covering everything) matches the old code too.
            let (ow, oh) = (pick(1, 70), pick(1, 70));
            assert_eq!(resize_bilinear(&img, ow, oh), old_resize(&img, ow, oh), "{w}x{h} -> {ow}x{oh}");
            cases += 1;
        }
        assert_eq!(cases, 325);
    }

    /// Defect 1: a 1x100000 image (a 177-byte PNG) used to be resized to 256 x 25,600,000
    /// (19.6 GB) before its center crop, which aborted the process. Now only the 224x224 window
    /// is computed, in bounded memory, and it equals the image's one column stretched.
    #[test]
    fn extreme_aspect_ratios_resize_only_their_crop() {
        let pre = Preprocess { resize: Some(256), mean: [0.0; 3], std: [1.0; 3] };
        for (w, h) in [(1usize, 100_000usize), (65_500, 1), (100_000, 2)] {
            let data = (0..w * h * 3).map(|i| (i % 253) as u8).collect();
            let img = RgbImage::new(w, h, data).unwrap();
            let out = transform(&img, &pre, 224, 224).unwrap();
            assert_eq!((out.width, out.height, out.data.len()), (224, 224, 224 * 224 * 3));
        }
        // The same through a real PNG file's bytes (decoded within the pixel budget).
        let mut png = Vec::new();
        let buf = image::RgbImage::from_fn(1, 100_000, |_, y| image::Rgb([(y % 256) as u8, 7, 9]));
        image::DynamicImage::ImageRgb8(buf)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let img = decode_bytes(&png, Path::new("tall.png")).unwrap();
        let out = transform(&img, &pre, 224, 224).unwrap();
        assert_eq!((out.width, out.height), (224, 224));
    }

    /// The decoded-pixel budget: an image header declaring more pixels than the budget is
    /// refused before anything of that size is allocated, naming the file.
    #[test]
    fn images_over_the_pixel_budget_are_refused_before_decoding() {
        // A PNG header (IHDR) claiming 60000 x 60000 pixels, with no data behind it.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(60_000u32.to_be_bytes());
        ihdr.extend(60_000u32.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        for chunk in [ihdr, b"IDAT".to_vec(), b"IEND".to_vec()] {
            png.extend((chunk.len() as u32 - 4).to_be_bytes());
            png.extend(&chunk);
            png.extend(crc32(&chunk).to_be_bytes());
        }
        let e = decode_bytes(&png, Path::new("huge.png")).unwrap_err().to_string();
        assert!(e.starts_with("huge.png: ") && e.contains("60000x60000"), "{e}");
        // A network input over the resize budget is refused, not allocated.
        let img = RgbImage::new(1, 1, vec![1, 2, 3]).unwrap();
        let e = transform(&img, &Preprocess::tf(), 1 << 14, 1 << 13).unwrap_err().to_string();
        assert!(e.contains("pixels"), "{e}");
    }

    fn crc32(b: &[u8]) -> u32 {
        let mut c = flate2::Crc::new();
        c.update(b);
        c.sum()
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
