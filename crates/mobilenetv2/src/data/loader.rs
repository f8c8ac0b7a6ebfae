//! Batches made on worker threads, ahead of the training step, delivered in order.
//!
//! Worker `k` of `W` makes batches `k, k + W, ...` of the epoch's order; a bounded channel
//! holds at most `prefetch` finished batches. Each sample's random choices come from an
//! [`Rng`] seeded by (seed, epoch, position in the epoch), so the batches are the same
//! whatever the number of workers and whatever their timing.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::augment::{self, Augment};
use super::{Dataset, OnBad};
use crate::error::{Error, Result};
use crate::model::Preprocess;
use crate::preprocess;
use crate::rng::Rng;

/// One batch: NHWC inputs and labels.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Position of the batch in the epoch.
    pub index: usize,
    /// The inputs, NHWC, image after image.
    pub images: Vec<f32>,
    /// Class index of each image.
    pub labels: Vec<usize>,
    /// Samples left out because they could not be decoded.
    pub skipped: usize,
}

/// How samples become inputs.
#[derive(Clone, Debug)]
pub struct Transform {
    /// The augmentation (and, in evaluation, the resize rule) of the dataset.
    pub augment: Augment,
    /// Random augmentation (training) or the evaluation transform.
    pub train: bool,
    /// The model's normalisation (and evaluation resize).
    pub preprocess: Preprocess,
    /// Network input height in pixels.
    pub height: usize,
    /// Network input width in pixels.
    pub width: usize,
    /// The run's seed; each sample's random choices derive from (seed, epoch, position).
    pub seed: u64,
    /// The epoch, for the per-sample seeds.
    pub epoch: u64,
    /// What to do with an image that cannot be decoded.
    pub on_bad: OnBad,
}

impl Transform {
    /// The evaluation transform for `model`'s input size and preprocessing (no randomness).
    pub fn eval(model: &crate::Model, augment: Augment, on_bad: OnBad) -> Transform {
        Transform {
            augment,
            train: false,
            preprocess: model.preprocess.clone(),
            height: model.spec().height,
            width: model.spec().width_px,
            seed: 0,
            epoch: 0,
            on_bad,
        }
    }
}

/// The seed of one sample's random choices.
pub fn sample_seed(seed: u64, epoch: u64, position: u64) -> u64 {
    let mut r =
        Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ position.wrapping_mul(0xD1B5_4A32_D192_ED03));
    r.next_u64()
}

fn make(ds: &Dataset, order: &[usize], index: usize, batch: usize, t: &Transform) -> Result<Batch> {
    let lo = index * batch;
    let hi = (lo + batch).min(order.len());
    let (h, w) = (t.height, t.width);
    let mut out = Batch { index, images: Vec::with_capacity((hi - lo) * h * w * 3), labels: Vec::new(), skipped: 0 };
    for (pos, &i) in order.iter().enumerate().take(hi).skip(lo) {
        let img = match ds.image(i) {
            Ok(img) => img,
            Err(e) if t.on_bad == OnBad::Skip => {
                eprintln!("warning: {}: skipped: {e}", ds.describe(i));
                out.skipped += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let x = if t.train {
            let mut rng = Rng::new(sample_seed(t.seed, t.epoch, pos as u64));
            augment::train(&img, t.augment, h, w, &mut rng)
        } else {
            augment::eval(&img, t.augment, &t.preprocess, h, w)?
        };
        out.images.extend(preprocess::to_tensor(&x, &t.preprocess));
        out.labels.push(ds.labels[i]);
    }
    Ok(out)
}

/// Batches made on worker threads, handed out in order (an iterator of `Result<Batch>`).
pub struct Loader {
    rx: Option<Receiver<(usize, Result<Batch>)>>,
    workers: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, Result<Batch>>,
    next: usize,
    end: usize,
}

impl Loader {
    /// Batches `start..` of `order` split into batches of `batch`.
    pub fn new(
        ds: Arc<Dataset>,
        order: Arc<Vec<usize>>,
        batch: usize,
        start: usize,
        t: Transform,
        workers: usize,
        prefetch: usize,
    ) -> Loader {
        let end = order.len().div_ceil(batch.max(1));
        let workers = workers.max(1);
        let (tx, rx) = sync_channel(prefetch.max(1));
        let handles = (0..workers)
            .map(|k| {
                let (ds, order, t, tx) = (ds.clone(), order.clone(), t.clone(), tx.clone());
                std::thread::Builder::new()
                    .name(format!("mnv2-loader-{k}"))
                    .spawn(move || {
                        let mut b = start + k;
                        while b < end {
                            let r = make(&ds, &order, b, batch, &t);
                            let stop = r.is_err();
                            if tx.send((b, r)).is_err() || stop {
                                return;
                            }
                            b += workers;
                        }
                    })
                    .expect("spawn a loader thread")
            })
            .collect();
        Loader { rx: Some(rx), workers: handles, pending: BTreeMap::new(), next: start, end }
    }

    /// Batches per epoch for `n` samples.
    pub fn batches(n: usize, batch: usize) -> usize {
        n.div_ceil(batch.max(1))
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.end {
            return None;
        }
        loop {
            if let Some(b) = self.pending.remove(&self.next) {
                self.next += 1;
                return Some(b);
            }
            match self.rx.as_ref()?.recv() {
                Ok((i, b)) => {
                    self.pending.insert(i, b);
                }
                Err(_) => {
                    self.next = self.end;
                    return Some(Err(Error::Input("the data loader stopped early".into())));
                }
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.rx = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
