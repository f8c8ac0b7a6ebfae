//! Optimizers, learning-rate schedules and an exponential moving average of the weights.
//!
//! The optimizers work on the flat parameter vector of a [`Net`](super::Net) tensor by tensor:
//! weight decay applies to convolution and classifier weights only (not BatchNorm parameters
//! and biases) unless `decay_all`; frozen tensors are skipped, state included.
//!
//! * SGD as `torch.optim.SGD`: `d = g + wd p`, `buf = momentum buf + d`, then `d = buf` or,
//!   with Nesterov, `d = d + momentum buf`; `p -= lr d`.
//! * RMSProp with TensorFlow's rule (TF1 `RMSPropOptimizer`, the paper's): the mean square
//!   starts at 1, epsilon is added *inside* the square root, the learning rate is applied
//!   inside the momentum buffer, and weight decay is an L2 term added to the gradient:
//!   `g += wd p; ms = rho ms + (1 - rho) g^2; mom = momentum mom + lr g / sqrt(ms + eps);
//!   p -= mom`. (torch's RMSprop adds epsilon outside the root and starts `ms` at 0.)
//! * AdamW as `torch.optim.AdamW`: decoupled decay `p *= 1 - lr wd`, then Adam with bias
//!   correction.
//!
//! Each is tested for three steps against torch (`tests/train_optim.rs`).

use serde::{Deserialize, Serialize};

use super::net::TensorInfo;
use crate::names::Kind;

/// The update rule (see the module documentation for the exact formulas).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Method {
    /// Stochastic gradient descent, as `torch.optim.SGD`.
    Sgd {
        /// Momentum factor (0 for none).
        momentum: f32,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// RMSProp with TensorFlow's rule (the paper's optimizer).
    RmsProp {
        /// Decay of the mean square (`rho`; the paper: 0.9).
        decay: f32,
        /// Momentum factor (the paper: 0.9).
        momentum: f32,
        /// Added inside the square root (TF's default 1e-10; slim uses 1.0).
        eps: f32,
    },
    /// Adam with decoupled weight decay, as `torch.optim.AdamW`.
    AdamW {
        /// Decay of the first moment.
        beta1: f32,
        /// Decay of the second moment.
        beta2: f32,
        /// Added to the denominator.
        eps: f32,
    },
}

impl Method {
    /// How many state values it keeps per parameter.
    pub fn slots(&self) -> usize {
        match self {
            Method::Sgd { momentum, .. } if *momentum == 0.0 => 0,
            Method::Sgd { .. } => 1,
            Method::RmsProp { .. } | Method::AdamW { .. } => 2,
        }
    }
}

/// Whether a tensor gets weight decay by default (weights yes; BatchNorm and biases no).
pub fn decays(kind: Kind) -> bool {
    matches!(kind, Kind::ConvWeight | Kind::LinearWeight)
}

/// An optimizer's settings and state for one flat parameter vector.
#[derive(Clone, Debug)]
pub struct Optimizer {
    /// The update rule.
    pub method: Method,
    /// Weight decay (L2 for SGD and RMSProp, decoupled for AdamW).
    pub weight_decay: f32,
    /// Decay BatchNorm parameters and biases too.
    pub decay_all: bool,
    /// Steps taken (AdamW's bias correction counts from 1).
    pub steps: u64,
    /// `slots` vectors, each laid out as the parameters.
    pub state: Vec<Vec<f32>>,
}

impl Optimizer {
    /// A fresh optimizer for `params` values (RMSProp's mean square starts at 1, the rest at 0).
    pub fn new(method: Method, weight_decay: f32, decay_all: bool, params: usize) -> Optimizer {
        let init = |i: usize| match (method, i) {
            (Method::RmsProp { .. }, 0) => 1.0,
            _ => 0.0,
        };
        let state = (0..method.slots()).map(|i| vec![init(i); params]).collect();
        Optimizer { method, weight_decay, decay_all, steps: 0, state }
    }

    /// One update of every tensor for which `train` is true, at learning rate `lr`.
    pub fn step(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        tensors: &[TensorInfo],
        lr: f32,
        train: impl Fn(&TensorInfo) -> bool,
    ) {
        self.steps += 1;
        let t = self.steps as i32;
        for info in tensors.iter().filter(|t| t.trainable() && train(t)) {
            let r = info.offset..info.offset + info.len;
            let wd = if self.decay_all || decays(info.kind) { self.weight_decay } else { 0.0 };
            let p = &mut params[r.clone()];
            let g = &grads[r.clone()];
            match self.method {
                Method::Sgd { momentum, nesterov } => {
                    if momentum == 0.0 {
                        for (p, &g) in p.iter_mut().zip(g) {
                            *p -= lr * (g + wd * *p);
                        }
                    } else {
                        let buf = &mut self.state[0][r];
                        for ((p, &g), b) in p.iter_mut().zip(g).zip(buf) {
                            let d = g + wd * *p;
                            *b = momentum * *b + d;
                            let step = if nesterov { d + momentum * *b } else { *b };
                            *p -= lr * step;
                        }
                    }
                }
                Method::RmsProp { decay, momentum, eps } => {
                    let (ms, mom) = self.state.split_at_mut(1);
                    let (ms, mom) = (&mut ms[0][r.clone()], &mut mom[0][r]);
                    for (((p, &g), s), m) in p.iter_mut().zip(g).zip(ms).zip(mom) {
                        let g = g + wd * *p;
                        *s = decay * *s + (1.0 - decay) * g * g;
                        *m = momentum * *m + lr * g / (*s + eps).sqrt();
                        *p -= *m;
                    }
                }
                Method::AdamW { beta1, beta2, eps } => {
                    let bc1 = 1.0 - beta1.powi(t);
                    let bc2 = 1.0 - beta2.powi(t);
                    let (m1, m2) = self.state.split_at_mut(1);
                    let (m1, m2) = (&mut m1[0][r.clone()], &mut m2[0][r]);
                    for (((p, &g), a), v) in p.iter_mut().zip(g).zip(m1).zip(m2) {
                        *p *= 1.0 - lr * wd;
                        *a = beta1 * *a + (1.0 - beta1) * g;
                        *v = beta2 * *v + (1.0 - beta2) * g * g;
                        let denom = v.sqrt() / bc2.sqrt() + eps;
                        *p -= lr / bc1 * *a / denom;
                    }
                }
            }
        }
    }
}

/// Learning rate as a function of the step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// `lr * gamma^epoch` (the paper: 0.98 per epoch).
    Step {
        /// Factor per epoch.
        gamma: f64,
    },
    /// Linear warm-up over `warmup` epochs (`lr * (step + 1) / warmup_steps`), then a cosine
    /// from `lr` to 0 over the remaining steps.
    Cosine {
        /// Warm-up length in epochs (may be fractional).
        warmup: f64,
    },
    /// DeepLab's poly schedule: `lr * (1 - step / total)^power` (power 0.9).
    Poly {
        /// The exponent.
        power: f64,
    },
}

impl Schedule {
    /// The rate at `step` (0-based) of `total` steps, `per_epoch` steps per epoch.
    pub fn lr(&self, base: f64, step: u64, per_epoch: u64, total: u64) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Poly { power } => base * (1.0 - (step as f64 / total.max(1) as f64).min(1.0)).powf(power),
            Schedule::Step { gamma } => base * gamma.powi((step / per_epoch.max(1)) as i32),
            Schedule::Cosine { warmup } => {
                let w = (warmup * per_epoch as f64).round() as u64;
                if step < w {
                    base * (step + 1) as f64 / w as f64
                } else {
                    let span = total.saturating_sub(w).max(1) as f64;
                    let t = ((step - w) as f64 / span).min(1.0);
                    base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
                }
            }
        }
    }
}

/// Exponential moving average of the parameters (and a copy of the running statistics).
#[derive(Clone, Debug, PartialEq)]
pub struct Ema {
    /// Weight of the old average per update (e.g. 0.9999).
    pub decay: f32,
    /// The averaged values, laid out as the parameters.
    pub params: Vec<f32>,
}

impl Ema {
    /// An average that starts at `params`.
    pub fn new(decay: f32, params: &[f32]) -> Ema {
        Ema { decay, params: params.to_vec() }
    }

    /// `avg = decay * avg + (1 - decay) * params`.
    pub fn update(&mut self, params: &[f32]) {
        let d = self.decay;
        for (e, p) in self.params.iter_mut().zip(params) {
            *e = d * *e + (1.0 - d) * p;
        }
    }
}
