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

pub mod accounting;
pub mod classify;
pub mod data;
pub mod engine;
pub mod error;
pub mod export;
pub(crate) mod fold;
pub mod fsutil;
pub mod labels;
pub mod model;
pub mod names;
pub mod npy;
pub mod plan;
pub mod preprocess;
pub mod qscheme;
pub mod quant;
pub mod rng;
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
