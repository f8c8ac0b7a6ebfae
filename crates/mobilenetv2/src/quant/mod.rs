//! Post-training static quantisation to int8.
//!
//! The scheme (what the int8 engine runs):
//! - weights: BatchNorm folded, then s8 symmetric per output channel (`w = scale[o] * q`);
//! - activations: u8 with an affine map `real = scale * (q - zero)`, every tensor calibrated
//!   by running the float network on calibration images ([`calibrate`]) with min/max, a
//!   percentile, or the clip range that minimises the quantisation error (MSE). ReLU6 outputs
//!   (the stem, each expand and depthwise conv, the pooled features) keep zero point 0 and a
//!   range within the known [0, 6] (ReLU6 is what makes these ranges small and fixed); the
//!   linear bottleneck outputs (block outputs, residual sums included) are signed;
//! - the image: u8 affine over the smallest and largest calibration value, whatever the
//!   method (preprocessing bounds an image, so no value there is an outlier);
//! - accumulation in i32, requantisation in f32 fused into the kernels.
//!
//! The scheme's data types are in [`crate::qscheme`]; the int8 file format in
//! [`crate::weights::int8`].

use mnv2_kernels::qgemm::QParams;

use crate::engine::{Engine, Mode, Options};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::plan::Activation;
pub use crate::qscheme::{ActQuant, BlockQuant, Method, QuantSpec, RELU6};
use crate::tensor::Batch;

/// Values kept per tensor for percentile and MSE ranges.
const SAMPLES_PER_IMAGE: usize = 4096;

/// Running statistics of one tensor.
#[derive(Clone, Debug, Default)]
struct Stats {
    min: f32,
    max: f32,
    samples: Vec<f32>,
}

impl Stats {
    fn add(&mut self, v: &[f32]) {
        for &x in v {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        let step = (v.len() / SAMPLES_PER_IMAGE).max(1);
        self.samples.extend(v.iter().step_by(step));
    }

    fn range(&mut self, method: Method) -> (f32, f32) {
        match method {
            Method::MinMax | Method::Imported => (self.min, self.max),
            Method::Percentile { percent } => {
                self.samples.sort_by(f32::total_cmp);
                let n = self.samples.len();
                let tail = ((1.0 - percent / 100.0) * n as f64).floor() as usize;
                (self.samples[tail.min(n - 1)], self.samples[(n - 1).saturating_sub(tail)])
            }
            Method::Mse => {
                let mut best = (f64::INFINITY, (self.min, self.max));
                for i in 0..=20 {
                    let f = 1.0 - 0.025 * i as f32;
                    let (lo, hi) = (self.min * f, self.max * f);
                    let q = QParams::from_range(lo, hi);
                    let err: f64 =
                        self.samples.iter().map(|&x| (q.dequantize(q.quantize(x)) - x) as f64).map(|e| e * e).sum();
                    if err < best.0 {
                        best = (err, (lo, hi));
                    }
                }
                best.1
            }
        }
    }
}

/// Calibrates every activation on `images` (NHWC batches in the model's preprocessing),
/// running the float reference network. The model needs a classification head;
/// [`Error::Input`] if `images` is empty.
///
/// ```
/// use mobilenetv2::engine::{Engine, Options};
/// use mobilenetv2::plan::Shape;
/// use mobilenetv2::quant::{self, Method};
/// use mobilenetv2::rng::Rng;
/// use mobilenetv2::{Batch, Model, Spec};
///
/// let model = Model::init(&Spec::new(0.35, 64), 3, true)?;
/// // Calibration images as the model's preprocessing makes them (here: random values).
/// let mut rng = Rng::new(5);
/// let data: Vec<f32> = (0..2 * 64 * 64 * 3).map(|_| rng.normal() as f32).collect();
/// let images = [Batch::new(2, Shape::new(64, 64, 3), data)?];
/// let q = quant::calibrate(&model, &images, Method::Percentile { percent: 99.9 })?;
/// assert_eq!((q.images, q.blocks.len()), (2, 17));
/// assert!(q.blocks.iter().all(|b| b.dw.zero == 0)); // ReLU6 outputs: zero point 0
///
/// // An int8 model file; loading it gives a model the engine runs on the int8 kernels.
/// let path = std::env::temp_dir().join(format!("mnv2-doctest-int8-{}.safetensors", std::process::id()));
/// quant::save(&model, &q, &path)?;
/// let int8 = Model::load(&path)?;
/// # std::fs::remove_file(&path).ok();
/// assert_eq!(int8.quant.as_ref(), Some(&q));
/// let logits = Engine::new(&int8, Options::default())?.run(&images[0])?;
/// assert_eq!((logits.n, logits.shape), (2, Shape::new(1, 1, 1000)));
/// # Ok::<(), mobilenetv2::Error>(())
/// ```
pub fn calibrate(model: &Model, images: &[Batch], method: Method) -> Result<QuantSpec> {
    if images.is_empty() {
        return Err(Error::Input("calibration needs at least one image".into()));
    }
    let engine = Engine::new(model, Options { mode: Mode::Reference, threads: 2, isa: None, precision: None })?;
    let plan = &model.plan;
    // Per block: hidden, depthwise, output; then the pooled features.
    let mut taps = Vec::new();
    for b in &plan.blocks {
        taps.extend([b.expand.unwrap_or(b.first_layer().saturating_sub(1)), b.depthwise, b.project]);
    }
    // The classifier's pooled features; for a detection head the last conv's output, which it
    // reads (a segmentation head's backbone ends with the last block, already calibrated).
    let pooled_tap = match plan.classifier("int8 calibration") {
        Ok(h) => h.pool,
        Err(_) => plan.last_conv,
    };
    taps.push(pooled_tap);
    let mut stats: Vec<Stats> =
        vec![Stats { min: f32::INFINITY, max: f32::NEG_INFINITY, samples: Vec::new() }; taps.len()];
    let mut count = 0;
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for batch in images {
        for &v in &batch.data {
            (lo, hi) = (lo.min(v), hi.max(v));
        }
        let plan = engine.plan_for(batch.shape)?;
        let outs = engine.run_taps(batch, &plan, &taps)?;
        // Per image, so the sampled values do not depend on how images are batched.
        for (s, o) in stats.iter_mut().zip(&outs) {
            for i in 0..o.n {
                s.add(o.image(i));
            }
        }
        count += batch.n;
    }
    let mut range = |i: usize, relu6: bool| -> ActQuant {
        let (lo, hi) = stats[i].range(method);
        let q = if relu6 { QParams::from_range(0.0, hi.min(6.0)) } else { QParams::from_range(lo, hi) };
        q.into()
    };
    let blocks = (0..plan.blocks.len())
        .map(|k| BlockQuant { hidden: range(3 * k, true), dw: range(3 * k + 1, true), output: range(3 * k + 2, false) })
        .collect();
    // The classifier's pooled ReLU6 features, SSD's ReLU6 last conv; DeepLab's last block
    // output is signed (only a classifier uses this range).
    let relu6 = plan.layers[pooled_tap].conv().is_none_or(|c| c.activation == Activation::Relu6);
    let pooled = range(taps.len() - 1, relu6);
    // An infinite pixel (or no image at all) gives no finite range: the float stem then stays.
    // (`min` and `max` pass over NaN pixels.)
    let input = (lo.is_finite() && hi.is_finite()).then(|| QParams::from_range(lo, hi).into());
    Ok(QuantSpec { scheme: "int8".into(), method, images: count, blocks, pooled, input })
}

/// Writes a quantised model file (atomically) in the int8 format of [`crate::weights::int8`].
pub fn save(model: &Model, spec: &QuantSpec, path: &std::path::Path) -> Result<()> {
    crate::weights::int8::write(path, &model.plan, &model.params, spec, &model.metadata())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_ranges() {
        assert_eq!("minmax".parse::<Method>().unwrap(), Method::MinMax);
        assert_eq!("percentile:99.9".parse::<Method>().unwrap(), Method::Percentile { percent: 99.9 });
        assert_eq!("percentile".parse::<Method>().unwrap(), Method::Percentile { percent: 99.9 });
        assert!("percentile:20".parse::<Method>().is_err());
        assert!("magic".parse::<Method>().is_err());
        let mut s = Stats { min: f32::INFINITY, max: f32::NEG_INFINITY, samples: Vec::new() };
        let mut v: Vec<f32> = (0..10000).map(|i| (i as f32 / 10000.0) - 0.5).collect();
        v.push(50.0);
        s.add(&v);
        assert_eq!(s.range(Method::MinMax), (-0.5, 50.0));
        let (_, hi) = s.range(Method::Percentile { percent: 99.9 });
        assert!(hi < 1.0, "{hi}");
        // MSE picks the clip range with the least squared error on the samples: never worse
        // than min/max. (At 8 bits one far outlier costs more clipped than it saves.)
        let err = |s: &Stats, (lo, hi): (f32, f32)| -> f64 {
            let q = QParams::from_range(lo, hi);
            s.samples.iter().map(|&x| ((q.dequantize(q.quantize(x)) - x) as f64).powi(2)).sum()
        };
        let mse = s.range(Method::Mse);
        assert!(err(&s, mse) <= err(&s, (-0.5, 50.0)));
        // And with many moderate outliers.
        let mut t = Stats { min: f32::INFINITY, max: f32::NEG_INFINITY, samples: Vec::new() };
        let heavy: Vec<f32> = (0..4000).map(|i| if i % 400 == 0 { 8.0 } else { (i % 7) as f32 * 0.01 }).collect();
        t.add(&heavy);
        let clipped = t.range(Method::Mse);
        assert!(err(&t, clipped) <= err(&t, (t.min, t.max)));
    }
}
