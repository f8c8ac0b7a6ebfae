//! Training and fine-tuning: backward passes for every layer of the plan, optimizers and
//! schedules, checkpoints, and the loop that ties them to a dataset.
//!
//! Gradients match PyTorch autograd (train mode) to a relative error of 1e-4 per tensor; see
//! `tests/train_grads.rs` and `scripts/fixtures/train_grads.py`.

pub mod net;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod prof;
pub mod run;

pub use net::{BnMode, Net, StepOptions, StepStats, Tape};
pub use optim::{Ema, Method, Optimizer, Schedule};
pub use run::{evaluate, train, Config, EvalReport, Event, Metrics};
