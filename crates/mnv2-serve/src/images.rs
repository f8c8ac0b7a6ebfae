//! Encoded images from requests to the network's input, with the size checked from the
//! header before anything is decoded.

use std::io::Cursor;
use std::path::Path;

use mobilenetv2::preprocess::{self, RgbImage};
use mobilenetv2::Model;

use crate::error::ApiError;

/// Width and height from the image header (no pixel is decoded).
pub fn dimensions(bytes: &[u8], what: &str) -> Result<(u32, u32), ApiError> {
    let format = image::guess_format(bytes).map_err(|_| {
        ApiError::bad_request(format!(
            "{what}: not a JPEG or PNG image ({} bytes, unrecognised signature)",
            bytes.len()
        ))
    })?;
    if !matches!(format, image::ImageFormat::Jpeg | image::ImageFormat::Png) {
        return Err(ApiError::unsupported_media(format!(
            "{what}: {format:?} images are not supported (only JPEG and PNG)"
        )));
    }
    image::ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().map_err(|e| {
        ApiError::bad_request(format!("{what}: cannot read the image header: {}", one_line(&e.to_string())))
    })
}

/// Decodes `bytes` to RGB, refusing more than `max_pixels` (read from the header) before
/// decoding anything.
pub fn decode(bytes: &[u8], what: &str, max_pixels: u64) -> Result<RgbImage, ApiError> {
    let (w, h) = dimensions(bytes, what)?;
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(ApiError::too_large(format!(
            "{what}: the image is {w}x{h} = {pixels} pixels, more than the limit of {max_pixels} (--max-pixels)"
        )));
    }
    preprocess::decode_bytes(bytes, Path::new(what)).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Decodes `bytes` (see [`decode`]) and applies the model's evaluation transform: NHWC values
/// of the network's input size.
pub fn load(bytes: &[u8], what: &str, model: &Model, max_pixels: u64) -> Result<Vec<f32>, ApiError> {
    let img = decode(bytes, what, max_pixels)?;
    let spec = model.spec();
    let pre = &model.preprocess;
    let t = preprocess::transform(&img, pre, spec.height, spec.width_px)
        .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))?;
    Ok(preprocess::to_tensor(&t, pre))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
