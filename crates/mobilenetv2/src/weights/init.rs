//! Random weights with torchvision's initialisation, from a seed.
//!
//! torchvision: convolutions `kaiming_normal_(mode="fan_out")` (std = sqrt(2 / (out * k * k))),
//! BatchNorm weight 1 and bias 0 with running mean 0 and variance 1, the classifier
//! `normal_(0, 0.01)` with bias 0. The stream of numbers is the project's own ([`Rng`]), so a
//! seed gives the same weights everywhere.
//!
//! With `randomize_bn`, BatchNorm gets non-trivial values (gamma U(0.5, 1.5), beta N(0, 0.1),
//! mean N(0, 0.1), var U(0.5, 2.0)): torchvision's identity BatchNorm would hide folding errors
//! in parity tests.

use std::collections::BTreeMap;

use crate::names::{expected, Kind};
use crate::plan::Plan;
use crate::rng::Rng;

pub fn init(plan: &Plan, seed: u64, randomize_bn: bool) -> BTreeMap<String, Vec<f32>> {
    let mut rng = Rng::new(seed);
    let mut out = BTreeMap::new();
    for e in expected(plan) {
        let n: usize = e.shape.iter().product();
        let mut normal = |std: f64| -> Vec<f32> { (0..n).map(|_| (rng.normal() * std) as f32).collect() };
        let values = match e.kind {
            Kind::ConvWeight => {
                let fan_out = e.shape[0] * e.shape[2] * e.shape[3];
                normal((2.0 / fan_out as f64).sqrt())
            }
            Kind::LinearWeight => normal(0.01),
            Kind::LinearBias | Kind::ConvBias => vec![0.0; n],
            Kind::BnWeight if randomize_bn => (0..n).map(|_| (0.5 + rng.uniform()) as f32).collect(),
            Kind::BnVar if randomize_bn => (0..n).map(|_| (0.5 + 1.5 * rng.uniform()) as f32).collect(),
            Kind::BnBias | Kind::BnMean if randomize_bn => normal(0.1),
            Kind::BnWeight | Kind::BnVar => vec![1.0; n],
            Kind::BnBias | Kind::BnMean => vec![0.0; n],
        };
        out.insert(e.name, values);
    }
    out
}
