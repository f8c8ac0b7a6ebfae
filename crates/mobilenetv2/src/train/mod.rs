//! Training and fine-tuning: backward passes for every layer of the plan, optimizers and
//! schedules, checkpoints, and the loop that ties them to a dataset.
//!
//! Gradients match PyTorch autograd (train mode) to a relative error of 1e-4 per tensor; see
//! `tests/train_grads.rs` and `scripts/fixtures/train_grads.py`.
//!
//! Two levels: [`train`] runs a whole configured run (what `mnv2 train` does: data, epochs,
//! evaluation, checkpoints, plots, all in [`Config::out`]); [`Net`] takes single steps for
//! callers with their own loop (see its example).
//!
//! Heads other than the classifier train on the backbone's tap API: [`Net::forward_backbone`],
//! [`Net::tap_value`] (a plan layer's output after BatchNorm and activation: a block's output,
//! a block's expansion, the last 1x1 conv) and [`Net::backward_from_taps`] (gradients injected
//! at those taps). [`deeplab`] is the DeepLabv3 head on it ([`Net::seg_step`]), and
//! [`train_segmentation`] the segmentation loop (`mnv2 train --task segmentation`, see
//! docs/segmentation.md); its parity with PyTorch is `tests/deeplab_train.rs`.
//!
//! ```
//! use mobilenetv2::data::augment::Augment;
//! use mobilenetv2::spec::{BottleneckActivation, Shortcut};
//! use mobilenetv2::train::{self, Config, Event, Method, Schedule};
//!
//! // A tiny MNIST-style dataset: 16 gray 32x32 images in IDX files, labels 0 to 3.
//! let dir = std::env::temp_dir().join(format!("mnv2-doctest-train-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let (n, side) = (16u32, 32u32);
//! let mut images = [0x0803u32, n, side, side].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>();
//! images.extend((0..n * side * side).map(|i| (i * 7 % 251) as u8));
//! let mut labels = [0x0801u32, n].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<u8>>();
//! labels.extend((0..n).map(|i| (i % 4) as u8));
//! std::fs::write(dir.join("train-images-idx3-ubyte"), images).unwrap();
//! std::fs::write(dir.join("train-labels-idx1-ubyte"), labels).unwrap();
//!
//! let cfg = Config {
//!     data: dir.clone(),
//!     val: None,
//!     val_split: 0.25,
//!     init: None, // or Some(path to pretrained weights) to fine-tune
//!     width: 0.35,
//!     resolution: 32,
//!     epochs: 1,
//!     batch: 4,
//!     method: Method::RmsProp { decay: 0.9, momentum: 0.9, eps: 1.0 },
//!     lr: 0.01,
//!     weight_decay: 4e-5,
//!     decay_all: false,
//!     schedule: Schedule::Step { gamma: 0.98 },
//!     dropout: 0.2,
//!     label_smoothing: 0.0,
//!     augment: Augment::None,
//!     shuffle: true,
//!     seed: 1,
//!     freeze_backbone: 0,
//!     ema: None,
//!     bottleneck: BottleneckActivation::Linear,
//!     shortcut: Shortcut::Bottleneck,
//!     eval_every: 0,
//!     checkpoint_every: 0,
//!     skip_bad_images: false,
//!     max_steps: Some(2),
//!     out: dir.join("run"),
//! };
//! let mut steps = 0;
//! let weights = train::train(&cfg, false, &mut |e| if let Event::Step { .. } = e { steps += 1 })?;
//! assert_eq!(steps, 2);
//! let model = mobilenetv2::Model::load(&weights)?;
//! assert_eq!(model.spec().classes, 4);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), mobilenetv2::Error>(())
//! ```

mod ckpt;
pub mod deeplab;
pub mod detrun;
pub mod net;
#[doc(hidden)]
pub mod ops;
pub mod optim;
pub mod plot;
#[doc(hidden)]
pub mod prof;
pub mod run;
pub mod segrun;
pub mod ssd;

pub use deeplab::{SegStats, SegTape};
pub use detrun::{evaluate_detection, train_detection, DetConfig, DetEval, DetInit};
pub use net::{BnMode, Net, StepOptions, StepStats, Tape};
pub use optim::{Ema, Method, Optimizer, Schedule};
pub use run::{evaluate, train, Config, EvalReport, Event, Metrics};
pub use segrun::{evaluate_segmentation, train_segmentation, SegConfig, SegEval};
pub use ssd::{HeadTape, SsdHeadTrainer};
