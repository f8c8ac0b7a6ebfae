//! Inference: a [`Model`] compiled once (BatchNorm folded, weights laid out for the kernels),
//! then run on batches of NHWC images of any size.

pub mod fold;
mod reference;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::plan::{Op, Plan, Shape, Tap};
use crate::spec::Spec;
use crate::tensor::Batch;

pub use fold::FoldedConv;

/// How the engine executes the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Layer by layer with the scalar reference kernels: slow, simple, the oracle.
    #[default]
    Reference,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "reference" => Ok(Mode::Reference),
            "fast" | "streaming" => Err(Error::Unsupported(format!(
                "engine mode `{s}` is not built yet"
            ))),
            _ => Err(Error::Input(format!(
                "unknown engine mode `{s}` (expected reference)"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    /// Worker threads (>= 1).
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: Mode::default(),
            threads: 1,
        }
    }
}

/// Per plan layer, what the kernels need.
#[derive(Clone, Debug)]
pub(crate) enum Compiled {
    Conv(FoldedConv),
    Linear(FoldedConv),
    Pass,
}

pub struct Engine {
    spec: Spec,
    options: Options,
    layers: Vec<Compiled>,
}

impl Engine {
    pub fn new(model: &Model, options: Options) -> Result<Engine> {
        if options.threads == 0 {
            return Err(Error::Input("threads must be at least 1".into()));
        }
        let layers = model
            .plan
            .layers
            .iter()
            .map(|l| match l.op {
                Op::Conv(_) => Compiled::Conv(fold::fold_conv(model, l)),
                Op::Linear => Compiled::Linear(fold::linear(model, l)),
                Op::GlobalAvgPool | Op::Dropout { .. } => Compiled::Pass,
            })
            .collect();
        Ok(Engine {
            spec: model.spec().clone(),
            options,
            layers,
        })
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The plan for an input size (the weights do not depend on it).
    pub fn plan_for(&self, shape: Shape) -> Result<Plan> {
        if shape.c != 3 {
            return Err(Error::Input(format!(
                "images must have 3 channels, got {}",
                shape.c
            )));
        }
        Plan::new(&Spec {
            height: shape.h,
            width_px: shape.w,
            ..self.spec.clone()
        })
        .map_err(|e| Error::Input(format!("input {}x{}: {e}", shape.h, shape.w)))
    }

    /// Logits, `n x 1 x 1 x classes`.
    pub fn run(&self, input: &Batch) -> Result<Batch> {
        let plan = self.plan_for(input.shape)?;
        let last = plan.layers.len() - 1;
        Ok(self.run_taps(input, &plan, &[last])?.remove(0))
    }

    /// Outputs of the given plan layers (see [`Plan::tap_layer`]).
    pub fn run_taps(&self, input: &Batch, plan: &Plan, layers: &[usize]) -> Result<Vec<Batch>> {
        if input.shape != plan.input() {
            return Err(Error::Input(format!(
                "input is {}, the plan expects {}",
                input.shape,
                plan.input()
            )));
        }
        input.check_finite()?;
        match self.options.mode {
            Mode::Reference => {
                reference::run(&self.layers, plan, input, layers, self.options.threads)
            }
        }
    }

    /// Feature maps at named places, for detection and segmentation heads.
    pub fn features(&self, input: &Batch, taps: &[Tap]) -> Result<Vec<Batch>> {
        let plan = self.plan_for(input.shape)?;
        let layers = taps
            .iter()
            .map(|&t| plan.tap_layer(t))
            .collect::<Result<Vec<_>>>()?;
        self.run_taps(input, &plan, &layers)
    }
}
