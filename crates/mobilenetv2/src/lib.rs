//! MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov, Chen, CVPR 2018), in Rust.
//!
//! The network is described once, as data: a [`Spec`] (the paper's Table 2 plus width,
//! resolution and ablation switches) expands into a [`Plan`] of layers with shapes. Accounting,
//! inference, weight import and export all read the plan.
//!
//! ```
//! use mobilenetv2::{accounting, Plan, Spec};
//! let plan = Plan::new(&Spec::new(1.0, 224)).unwrap();
//! let a = accounting::account(&plan);
//! assert_eq!(a.params, 3_504_872);
//! assert_eq!(a.madds, 300_774_272);
//! ```
//!
//! # The five-minute tour
//!
//! - [`Spec`] → [`Plan`]: the network as data; [`accounting`] counts it.
//! - [`Model`]: a plan with weights. [`Model::load`] reads safetensors, PyTorch `.pth`, ONNX,
//!   TFLite and Keras files (see [`weights`]); [`Model::init`] makes random ones;
//!   [`Model::save`] writes the project's format.
//! - [`Engine`]: a model compiled for inference, run on a [`Batch`] of NHWC images (or NCHW
//!   values with [`Engine::run_nchw`]). [`classify::Classifier`] adds preprocessing
//!   ([`preprocess`]) and top-k labels.
//! - [`quant`]: int8 post-training quantisation; [`export`]: ONNX; [`train`]: training and
//!   fine-tuning; [`data`]: labelled datasets.
//! - Every failure is an [`Error`] whose message names the file or request and the problem.
//!
//! Layouts: activations are NHWC per image ([`plan::Shape`] is height x width x channels);
//! weights keep PyTorch's layout and torchvision's names (OIHW convolutions, `[out, in]`
//! classifier), whatever the file format they came from.
//!
//! ```
//! use mobilenetv2::engine::{Engine, Options};
//! use mobilenetv2::plan::Shape;
//! use mobilenetv2::{Batch, Model, Spec};
//!
//! // A width-0.35 network at 64x64 with random weights (no download needed).
//! let model = Model::init(&Spec::new(0.35, 64), 0, false)?;
//! let engine = Engine::new(&model, Options { threads: 2, ..Options::default() })?;
//! let images = Batch::zeros(3, Shape::new(64, 64, 3)); // 3 images, NHWC
//! let logits = engine.run(&images)?;
//! assert_eq!((logits.n, logits.shape), (3, Shape::new(1, 1, 1000)));
//! // The engine accepts other input sizes too: the plan is re-derived for them.
//! let bigger = engine.run(&Batch::zeros(1, Shape::new(96, 80, 3)))?;
//! assert_eq!(bigger.shape, Shape::new(1, 1, 1000));
//! # Ok::<(), mobilenetv2::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accounting;
pub mod classify;
pub mod data;
pub mod detect;
pub mod draw;
pub mod engine;
pub mod error;
pub mod export;
pub(crate) mod fold;
pub mod fsutil;
pub mod labels;
pub mod layout;
pub mod limits;
pub mod model;
pub mod names;
pub mod npy;
pub mod paper;
pub mod plan;
pub mod preprocess;
pub mod qscheme;
pub mod quant;
pub mod rng;
pub mod segment;
pub mod spec;
pub mod tensor;
pub mod train;
pub mod weights;

pub use engine::Engine;
pub use error::{Error, Result};
pub use model::Model;
pub use plan::Plan;
pub use spec::Spec;
pub use tensor::Batch;
