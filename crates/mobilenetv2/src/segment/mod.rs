//! Semantic segmentation with the DeepLabv3 head (the paper's section 6.3): image files in,
//! a class per pixel out, written as a VOC-palette PNG and an overlay on the photo.
//!
//! [`Segmenter`] runs a model whose spec has [`HeadSpec::DeepLab`] on the engine its options
//! name (fast by default: the fused dilated backbone, its last block's output materialised
//! once, the head on the fast kernels; streaming; or the layer-by-layer reference, the oracle)
//! at each image's own size: the plan is made for the input, so any size from 32x32 works,
//! and the head's last layer upsamples the logits to it (bilinear, align_corners, as TF
//! DeepLab). The per-pixel class is the argmax of the logits.
//!
//! [`metric`] scores class maps against ground truth (confusion matrix, IoU, mIoU, pixel
//! accuracy); [`dataset`] reads VOC-style and composed segmentation datasets.
//!
//! ```
//! use mobilenetv2::engine::Options;
//! use mobilenetv2::preprocess::RgbImage;
//! use mobilenetv2::segment::Segmenter;
//! use mobilenetv2::spec::HeadSpec;
//! use mobilenetv2::{Model, Spec};
//!
//! // A small DeepLab with random weights (a trained file loads with `Model::load`).
//! let spec = Spec { classes: 3, output_stride: 16, head: HeadSpec::DeepLab { aspp: false }, ..Spec::new(0.35, 33) };
//! let segmenter = Segmenter::new(Model::init(&spec, 1, true)?, Options::default())?;
//! let photo = RgbImage::new(40, 36, vec![128; 40 * 36 * 3])?;
//! let seg = segmenter.segment_image(&photo)?;
//! assert_eq!((seg.width, seg.height), (40, 36));
//! let total: f64 = seg.fractions().iter().map(|c| c.fraction).sum();
//! assert!((total - 1.0).abs() < 1e-9);
//! let png = seg.to_png()?; // class indices with the VOC palette
//! assert_eq!(&png[1..4], b"PNG");
//! # Ok::<(), mobilenetv2::Error>(())
//! ```

pub mod dataset;
pub mod metric;

use std::path::Path;

use serde::Serialize;

use crate::engine::{Engine, Options};
use mnv2_kernels::reference as k;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::plan::Shape;
use crate::preprocess::{self, RgbImage};
use crate::spec::HeadSpec;
use crate::tensor::Batch;

/// The largest image side segmented at full size: the reference engine materialises every
/// tensor (at 1024x1024 the widest is 512x512x96 floats, 100 MB) and every engine the
/// upsampled logits, so larger images are scaled down to this side for the network and the
/// class map is scaled back.
pub const DEFAULT_MAX_SIDE: usize = 1024;

/// The PASCAL VOC colour of a class index (the devkit's `labelcolormap`: the bits of the
/// index spread over R, G and B from the most significant bit down).
pub fn voc_color(class: u8) -> [u8; 3] {
    let (mut rgb, mut c) = ([0u8; 3], class);
    for bit in 0..8 {
        for (ch, v) in rgb.iter_mut().enumerate() {
            *v |= ((c >> ch) & 1) << (7 - bit);
        }
        c >>= 3;
    }
    rgb
}

/// The class at every pixel of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segmentation {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Classes of the model.
    pub num_classes: usize,
    /// `height * width` class indices, rows top to bottom.
    pub classes: Vec<u8>,
}

/// The share of an image's pixels given to one class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassFraction {
    /// The class index.
    pub class: usize,
    /// The model's name for the class, if it has names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Its share of the pixels, in [0, 1].
    pub fraction: f64,
}

/// Per-pixel argmax of NHWC logits of one image (`hw x classes`); ties go to the lower index.
pub fn argmax(logits: &[f32], classes: usize) -> Vec<u8> {
    logits
        .chunks_exact(classes)
        .map(|px| {
            let mut best = 0;
            for (i, &v) in px.iter().enumerate() {
                if v > px[best] {
                    best = i;
                }
            }
            best as u8
        })
        .collect()
}

/// An NHWC image (`w` columns of `c` values per row) mirrored left to right.
fn mirror(data: &[f32], w: usize, c: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(data.len());
    for row in data.chunks_exact(w * c) {
        for px in row.chunks_exact(c).rev() {
            out.extend_from_slice(px);
        }
    }
    out
}

/// Per-pixel probabilities of one pixel's logits, `exp(x - max) / sum`.
fn softmax(logits: &[f32]) -> impl Iterator<Item = f32> + '_ {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&x| (x - max).exp()).sum();
    logits.iter().map(move |&x| (x - max).exp() / sum)
}

impl Segmentation {
    /// The fraction of pixels of each class present, by class index.
    pub fn fractions(&self) -> Vec<ClassFraction> {
        let mut counts = vec![0u64; self.num_classes.max(1)];
        for &c in &self.classes {
            counts[c as usize] += 1;
        }
        let total = self.classes.len().max(1) as f64;
        counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(class, &n)| ClassFraction { class, label: None, fraction: n as f64 / total })
            .collect()
    }

    /// An 8-bit palette PNG whose pixel values are the class indices and whose palette is
    /// VOC's (how PASCAL VOC stores `SegmentationClass` masks).
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let err = |e: png::EncodingError| Error::Input(format!("cannot encode the class map as PNG: {e}"));
        {
            let mut enc = png::Encoder::new(&mut bytes, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_palette((0..=255u8).flat_map(voc_color).collect::<Vec<u8>>());
            let mut w = enc.write_header().map_err(err)?;
            w.write_image_data(&self.classes).map_err(err)?;
            w.finish().map_err(err)?;
        }
        Ok(bytes)
    }

    /// The photo with every pixel not of class 0 (VOC's background) blended half and half
    /// with its class colour. `photo` must have the segmentation's size.
    pub fn overlay(&self, photo: &RgbImage) -> Result<RgbImage> {
        if (photo.width, photo.height) != (self.width, self.height) {
            return Err(Error::Input(format!(
                "overlay: photo is {}x{}, segmentation {}x{}",
                photo.width, photo.height, self.width, self.height
            )));
        }
        let mut data = photo.data.clone();
        for (px, &c) in data.chunks_exact_mut(3).zip(&self.classes) {
            if c != 0 {
                for (v, k) in px.iter_mut().zip(voc_color(c)) {
                    *v = (*v as u16 + k as u16).div_ceil(2) as u8;
                }
            }
        }
        RgbImage::new(self.width, self.height, data)
    }

    /// The overlay as an RGB PNG.
    pub fn overlay_png(&self, photo: &RgbImage) -> Result<Vec<u8>> {
        let img = self.overlay(photo)?;
        let mut bytes = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data)
            .expect("RgbImage holds width * height * 3 bytes")
            .write_to(&mut bytes, image::ImageFormat::Png)
            .map_err(|e| Error::Input(format!("cannot encode the overlay as PNG: {e}")))?;
        Ok(bytes.into_inner())
    }
}

/// A DeepLab model compiled for inference plus its input normalisation.
pub struct Segmenter {
    model: Model,
    engine: Engine,
    max_side: usize,
}

impl Segmenter {
    /// Builds the engine from a model with a DeepLab head (an error names what is missing
    /// otherwise) in `options.mode`; `options.threads` shares a batch's images out, or splits
    /// one image by rows (fast and streaming modes).
    pub fn new(model: Model, options: Options) -> Result<Segmenter> {
        model.plan.deeplab("segmentation")?;
        if model.spec().classes > 256 {
            return Err(Error::Unsupported(format!(
                "segmentation with {} classes (class maps are 8-bit, at most 256)",
                model.spec().classes
            )));
        }
        let (engine, model) = Engine::new_owned(model, options)?;
        Ok(Segmenter { model, engine, max_side: DEFAULT_MAX_SIDE })
    }

    /// Images whose longer side exceeds `max_side` are scaled down to it for the network.
    pub fn with_max_side(mut self, max_side: usize) -> Segmenter {
        self.max_side = max_side.max(32);
        self
    }

    /// The model's plan, labels and normalisation (its parameters are in the engine).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The engine it runs (its options, precision and kernels).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether the head has ASPP.
    pub fn aspp(&self) -> bool {
        matches!(self.model.spec().head, HeadSpec::DeepLab { aspp: true })
    }

    /// Logits at the input's size (`n x h x w x classes`) of an already normalised NHWC batch.
    pub fn logits(&self, batch: &Batch) -> Result<Batch> {
        self.engine.run(batch)
    }

    /// The image the network sees: the photo, or scaled down to [`Segmenter::with_max_side`].
    fn network_input(&self, photo: &RgbImage) -> Result<RgbImage> {
        if photo.width < 32 || photo.height < 32 {
            return Err(Error::Input(format!(
                "image is {}x{}, smaller than the network's minimum 32x32",
                photo.width, photo.height
            )));
        }
        let longer = photo.width.max(photo.height);
        Ok(if longer > self.max_side {
            let scale = self.max_side as f64 / longer as f64;
            let (w, h) =
                ((photo.width as f64 * scale).round() as usize, (photo.height as f64 * scale).round() as usize);
            preprocess::resize_bilinear(photo, w.max(32), h.max(32))
        } else {
            photo.clone()
        })
    }

    /// A class map of the network input at the photo's size (nearest neighbour).
    fn back_to_photo(&self, photo: &RgbImage, input: &RgbImage, map: Vec<u8>) -> Segmentation {
        let map = if (input.width, input.height) == (photo.width, photo.height) {
            map
        } else {
            let mut out = Vec::with_capacity(photo.width * photo.height);
            for y in 0..photo.height {
                let sy = (y * input.height / photo.height).min(input.height - 1);
                for x in 0..photo.width {
                    let sx = (x * input.width / photo.width).min(input.width - 1);
                    out.push(map[sy * input.width + sx]);
                }
            }
            out
        };
        let num_classes = self.model.spec().classes;
        Segmentation { width: photo.width, height: photo.height, num_classes, classes: map }
    }

    /// The class of every pixel of a decoded photo, normalised with the model's mean and std
    /// at its own size (or scaled down to the longest side allowed, see
    /// [`Segmenter::with_max_side`]).
    pub fn segment_image(&self, photo: &RgbImage) -> Result<Segmentation> {
        let input = self.network_input(photo)?;
        let data = preprocess::to_tensor(&input, &self.model.preprocess);
        let batch = Batch::new(1, Shape::new(input.height, input.width, 3), data)?;
        let logits = self.logits(&batch)?;
        Ok(self.back_to_photo(photo, &input, argmax(&logits.data, self.model.spec().classes)))
    }

    /// TF DeepLab's multi-scale + left-right-flip inference (Table 7's "MF" rows,
    /// `predict_labels_multi_scale`) of one normalised NHWC image: the image is resized
    /// (bilinear, align_corners) to each of [`HeadSpec::MULTI_SCALES`] at TF's
    /// `scale_dimension` size, run as is and mirrored; each pass's logits at the feature size
    /// (`head.logits`, mirrored back) are resized straight to the image size
    /// (align_corners) and turned into per-pixel probabilities (softmax). Returns their mean
    /// (`1 x h x w x classes`). Scales that would make a side smaller than 32 pixels are left
    /// out. Costs 12 passes.
    pub fn multi_scale_probabilities(&self, image: &Batch) -> Result<Batch> {
        if image.n != 1 || image.shape.c != 3 {
            return Err(Error::Input(format!(
                "multi-scale inference takes one RGB image, not {} of {}",
                image.n, image.shape
            )));
        }
        image.check_finite()?;
        let (h, w) = (image.shape.h, image.shape.w);
        let classes = self.model.spec().classes;
        let mut sum = vec![0f32; h * w * classes];
        let mut resized = vec![0f32; h * w * classes];
        let mut passes = 0;
        for &scale in HeadSpec::MULTI_SCALES.iter() {
            let (sh, sw) = (HeadSpec::scale_dimension(h, scale), HeadSpec::scale_dimension(w, scale));
            if sh < 32 || sw < 32 {
                continue;
            }
            let mut scaled = vec![0f32; sh * sw * 3];
            k::resize_bilinear_f32(&image.data, h, w, 3, sh, sw, true, &mut scaled);
            for flip in [false, true] {
                let data = if flip { mirror(&scaled, sw, 3) } else { scaled.clone() };
                let batch = Batch::new(1, Shape::new(sh, sw, 3), data)?;
                let plan = self.engine.plan_for(batch.shape)?;
                let head = plan.deeplab("segmentation")?;
                let logits = self.engine.run_taps(&batch, &plan, &[head.logits])?.remove(0);
                let f = logits.shape;
                let feat = if flip { mirror(&logits.data, f.w, classes) } else { logits.data };
                k::resize_bilinear_f32(&feat, f.h, f.w, classes, h, w, true, &mut resized);
                for (acc, px) in sum.chunks_exact_mut(classes).zip(resized.chunks_exact(classes)) {
                    for (a, p) in acc.iter_mut().zip(softmax(px)) {
                        *a += p;
                    }
                }
                passes += 1;
            }
        }
        if passes == 0 {
            return Err(Error::Input(format!(
                "image is {h}x{w}: every scale of the multi-scale inference is below 32x32"
            )));
        }
        let inv = 1.0 / passes as f32;
        sum.iter_mut().for_each(|v| *v *= inv);
        Batch::new(1, Shape::new(h, w, classes), sum)
    }

    /// [`Segmenter::segment_image`] with [`Segmenter::multi_scale_probabilities`]: the class
    /// of each pixel is the argmax of the mean probabilities.
    pub fn segment_image_multi_scale(&self, photo: &RgbImage) -> Result<Segmentation> {
        let input = self.network_input(photo)?;
        let data = preprocess::to_tensor(&input, &self.model.preprocess);
        let probs = self.multi_scale_probabilities(&Batch::new(1, Shape::new(input.height, input.width, 3), data)?)?;
        Ok(self.back_to_photo(photo, &input, argmax(&probs.data, self.model.spec().classes)))
    }

    /// [`Segmentation::fractions`] with the model's class names.
    pub fn fractions(&self, seg: &Segmentation) -> Vec<ClassFraction> {
        seg.fractions()
            .into_iter()
            .map(|f| ClassFraction { label: self.model.label(f.class).map(str::to_owned), ..f })
            .collect()
    }

    /// Decodes and segments an image file (with [`Segmenter::segment_image_multi_scale`]
    /// when `multi_scale`); errors name the file.
    pub fn segment_file(&self, path: &Path, multi_scale: bool) -> Result<(RgbImage, Segmentation)> {
        let photo = preprocess::decode(path)?;
        let seg = if multi_scale { self.segment_image_multi_scale(&photo) } else { self.segment_image(&photo) };
        let seg = seg.map_err(|e| match e {
            Error::Input(detail) => Error::Image { path: path.to_path_buf(), detail },
            other => other,
        })?;
        Ok((photo, seg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voc_palette() {
        assert_eq!(voc_color(0), [0, 0, 0]);
        assert_eq!(voc_color(1), [128, 0, 0]);
        assert_eq!(voc_color(2), [0, 128, 0]);
        assert_eq!(voc_color(15), [192, 128, 128]); // person
        assert_eq!(voc_color(20), [0, 64, 128]); // tv/monitor
        assert_eq!(voc_color(255), [224, 224, 192]); // the ignore label's colour
    }

    #[test]
    fn argmax_and_fractions() {
        let logits = [0.0, 1.0, 0.5, 2.0, 2.0, -1.0, -3.0, -2.0, -1.0, 0.0, 0.0, 0.0];
        let classes = argmax(&logits, 3);
        assert_eq!(classes, [1, 0, 2, 0]);
        let seg = Segmentation { width: 2, height: 2, num_classes: 3, classes };
        let f = seg.fractions();
        assert_eq!(f.iter().map(|c| (c.class, c.fraction)).collect::<Vec<_>>(), [(0, 0.5), (1, 0.25), (2, 0.25)]);
    }

    #[test]
    fn png_round_trips_indices_and_palette() {
        let seg = Segmentation { width: 3, height: 2, num_classes: 21, classes: vec![0, 1, 15, 20, 0, 7] };
        let png = seg.to_png().unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(png));
        let mut r = dec.read_info().unwrap();
        assert_eq!(r.info().color_type, png::ColorType::Indexed);
        assert_eq!(r.info().palette.as_ref().unwrap()[15 * 3..16 * 3], [192, 128, 128]);
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        r.next_frame(&mut buf).unwrap();
        assert_eq!(&buf[..6], &seg.classes[..]);
        let photo = RgbImage::new(3, 2, vec![100; 18]).unwrap();
        let o = seg.overlay(&photo).unwrap();
        assert_eq!(o.pixel(0, 0), [100, 100, 100]);
        assert_eq!(o.pixel(0, 1), [114, 50, 50]);
    }
}
