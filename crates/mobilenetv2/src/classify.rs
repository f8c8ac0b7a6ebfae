//! Image classification: image files in, the most probable classes out.
//!
//! [`Classifier`] ties the pieces together: [`crate::preprocess`] (torchvision's evaluation
//! transform, bit-exact), [`Engine::run`] on a batch, [`softmax`] and [`top_k`]. The results
//! serialise to the JSON that `mnv2 classify --json` prints.

use std::path::Path;

use serde::Serialize;

use crate::engine::{Engine, Options};
use crate::error::Result;
use crate::model::Model;
use crate::preprocess::{self, RgbImage};
use crate::tensor::Batch;

/// One class and its probability.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// Index in the classifier's output.
    pub index: usize,
    /// Class name, when the model has names (ImageNet's for 1000 classes).
    pub label: Option<String>,
    /// Softmax probability, in [0, 1].
    pub prob: f32,
}

/// The top classes of one image, most probable first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Classification {
    /// The image's path as given.
    pub image: String,
    /// The `k` most probable classes, most probable first.
    pub top: Vec<Prediction>,
}

/// Probabilities from logits: `exp(x - max) / sum`, accumulated in f64 so that 1000 small
/// terms lose nothing.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|&v| (v / sum) as f32).collect()
}

/// The `k` largest values as `(index, value)`, largest first; ties go to the lower index, and
/// NaN ranks below everything.
pub fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    // Descending by value, NaN last, then ascending by index: a total order, so the sort is
    // deterministic.
    idx.sort_by(|a, b| {
        let (va, vb) = (values[*a], values[*b]);
        match (va.is_nan(), vb.is_nan()) {
            (true, true) => a.cmp(b),
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => vb.partial_cmp(&va).unwrap().then(a.cmp(b)),
        }
    });
    idx.truncate(k);
    idx.into_iter().map(|i| (i, values[i])).collect()
}

/// Top-`k` predictions (with labels) from one image's logits.
pub fn predictions(model: &Model, logits: &[f32], k: usize) -> Vec<Prediction> {
    top_k(&softmax(logits), k)
        .into_iter()
        .map(|(index, prob)| Prediction { index, label: model.label(index).map(str::to_owned), prob })
        .collect()
}

/// Images run through the engine this many at a time: enough to amortise the per-layer
/// overheads, few enough to keep memory small for long file lists.
const CHUNK: usize = 8;

/// A model compiled for inference plus its preprocessing: the library's entry point for
/// "which classes are in this photo".
///
/// ```
/// use mobilenetv2::classify::Classifier;
/// use mobilenetv2::engine::Options;
/// use mobilenetv2::preprocess::RgbImage;
/// use mobilenetv2::{Model, Spec};
///
/// // Random weights, so no download is needed; `Model::load("weights.safetensors")` for real ones.
/// let model = Model::init(&Spec::new(0.35, 64), 7, false)?;
/// let classifier = Classifier::new(model, Options::default())?;
/// assert_eq!(classifier.input_size(), (64, 64));
///
/// // A 100x80 grey image (width, height, RGB bytes row by row); files go through
/// // `classify_files`.
/// let image = RgbImage::new(100, 80, vec![128; 100 * 80 * 3])?;
/// let top = &classifier.classify_images(&[image], 5)?[0];
/// assert_eq!(top.len(), 5);
/// assert!(top.windows(2).all(|p| p[0].prob >= p[1].prob));
/// assert!(top[0].label.is_some()); // ImageNet's names, for 1000 classes
/// # Ok::<(), mobilenetv2::Error>(())
/// ```
pub struct Classifier {
    model: Model,
    engine: Engine,
}

impl Classifier {
    /// Builds the engine from the model's weights, which it consumes (they are folded and
    /// packed, never held twice); the model kept for labels and preprocessing has no
    /// parameters left.
    pub fn new(model: Model, options: Options) -> Result<Classifier> {
        let (engine, model) = Engine::new_owned(model, options)?;
        Ok(Classifier { model, engine })
    }

    /// The model's plan, labels and preprocessing (its parameters are in the engine).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The engine it runs (its options, precision and kernels).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The network input size, `(height, width)`.
    pub fn input_size(&self) -> (usize, usize) {
        let s = self.model.spec();
        (s.height, s.width_px)
    }

    /// Logits (`n x 1 x 1 x classes`) of already decoded images.
    pub fn logits(&self, images: &[RgbImage]) -> Result<Batch> {
        let (h, w) = self.input_size();
        let pre = &self.model.preprocess;
        let mut data = Vec::with_capacity(images.len() * h * w * 3);
        for img in images {
            data.extend(preprocess::to_tensor(&preprocess::transform(img, pre, h, w)?, pre));
        }
        let batch = Batch::new(images.len(), crate::plan::Shape::new(h, w, 3), data)?;
        self.engine.run(&batch)
    }

    /// The top `k` classes of each decoded image.
    pub fn classify_images(&self, images: &[RgbImage], k: usize) -> Result<Vec<Vec<Prediction>>> {
        let logits = self.logits(images)?;
        Ok((0..logits.n).map(|i| predictions(&self.model, logits.image(i), k)).collect())
    }

    /// The top `k` classes of each image file, in order. The first file that cannot be read
    /// or decoded ends the run with an error naming it.
    pub fn classify_files<P: AsRef<Path>>(&self, paths: &[P], k: usize) -> Result<Vec<Classification>> {
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(CHUNK) {
            let images = chunk.iter().map(|p| preprocess::decode(p.as_ref())).collect::<Result<Vec<_>>>()?;
            for (p, top) in chunk.iter().zip(self.classify_images(&images, k)?) {
                out.push(Classification { image: p.as_ref().display().to_string(), top });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0, 998.0]);
        let s: f32 = p.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!((p[0] - p[1]).abs() < 1e-7);
        assert!((p[0] / p[2] - 2f32.exp()).abs() < 1e-4);
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let v = [0.1, 0.5, f32::NAN, 0.5, 0.9, -1.0];
        assert_eq!(top_k(&v, 3), vec![(4, 0.9), (1, 0.5), (3, 0.5)]);
        assert_eq!(top_k(&v, 100).len(), 6);
        assert_eq!(top_k(&v, 100)[5].0, 2);
        assert!(top_k(&v, 0).is_empty());
    }
}
