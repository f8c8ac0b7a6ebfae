//! Inference: a [`Model`] compiled once (BatchNorm folded, weights laid out for the kernels),
//! then run on batches of NHWC images of any size.

mod fast;
mod reference;

pub use fast::Profile;
pub use mnv2_kernels::isa::amx_requested;
pub use mnv2_kernels::Isa;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::plan::{Head, Op, Plan, Shape, Tap};
use crate::spec::Spec;
use crate::tensor::Batch;

use crate::fold::{FoldedConv, FoldedLayers};

/// The most threads an engine runs on.
pub const MAX_THREADS: usize = 256;

/// How the engine executes the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Fused inverted residual blocks with SIMD kernels: the expanded tensors never exist
    /// whole; only the narrow block outputs are materialised.
    #[default]
    Fast,
    /// Fast, and the leading high-resolution blocks are chained row by row, so even their
    /// narrow outputs never exist whole: the paper's section 5 memory-efficient inference,
    /// for the least activation memory (well under 1 MB at 224x224).
    Streaming,
    /// Layer by layer with the scalar reference kernels, every tensor materialised: slow,
    /// simple, the oracle the other modes are tested against.
    Reference,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "fast" => Ok(Mode::Fast),
            "reference" => Ok(Mode::Reference),
            "streaming" => Ok(Mode::Streaming),
            _ => Err(Error::Input(format!("unknown engine mode `{s}` (expected fast, streaming or reference)"))),
        }
    }
}

/// The number format of the fast engine's convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 everywhere.
    Fp32,
    /// The 1x1 convolutions (expand, project, last conv, classifier, and the 1x1 layers of a
    /// detection or segmentation head) multiply bf16 values (weights and activations rounded
    /// to nearest even) and sum in f32 (`vdpbf16ps` on AVX512-BF16, a slow scalar twin on
    /// other CPUs or when `MNV2_ISA` lowers it: see [`Engine::kernels`]), as do the stem and
    /// the depthwise convolutions of blocks with an expand conv where their rows fit pixel
    /// pairs (docs/precision.md); the other depthwise convolutions, the residual stream,
    /// bias, clamps and residual adds stay f32.
    Bf16,
    /// The int8 kernels of an int8 weights file (`mnv2 quantize`): u8 activations, s8
    /// weights.
    Int8,
}

impl Precision {
    /// The name `--precision` uses: `fp32`, `bf16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Precision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            _ => Err(Error::Input(format!("unknown precision `{s}` (expected fp32, bf16 or int8)"))),
        }
    }
}

/// How an [`Engine`] runs: mode, threads, instruction set and precision. The default is the
/// fast mode on one thread with the best ISA this CPU has, in the weights' own precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Fast (the default), streaming or reference.
    pub mode: Mode,
    /// Threads (>= 1), the caller's included.
    pub threads: usize,
    /// Instruction set for the fast kernels; `None` picks the best this CPU has (capped by
    /// the `MNV2_ISA` environment variable).
    pub isa: Option<Isa>,
    /// Number format of the fast modes; `None` is the weights' own: int8 for an int8 file,
    /// fp32 otherwise. `Fp32` and `Bf16` run an int8 file's dequantised weights; `Int8` needs
    /// an int8 file. The reference mode is always f32.
    pub precision: Option<Precision>,
}

impl Default for Options {
    fn default() -> Self {
        Options { mode: Mode::default(), threads: 1, isa: None, precision: None }
    }
}

/// Per plan layer, what the kernels need.
#[derive(Clone, Debug)]
pub(crate) enum Compiled {
    Conv(FoldedConv),
    Linear(FoldedConv),
    Pass,
}

/// A [`Model`] compiled for inference. Build it once with [`Engine::new`], then [`run`](Engine::run)
/// batches of NHWC images of any size (the plan is re-derived per input size; the weights do
/// not depend on it). The crate documentation has an example.
pub struct Engine {
    spec: Spec,
    options: Options,
    /// What the fast modes run in (`None`: reference mode).
    precision: Option<Precision>,
    /// Reference mode: folded weights per plan layer.
    layers: Vec<Compiled>,
    fast: Option<Box<dyn fast::Runner>>,
}

impl Engine {
    /// Compiles `model` for inference: BatchNorm folded, weights laid out for the kernels of
    /// the chosen ISA and precision (by default int8 kernels for an int8 model). Fails with
    /// [`Error::Threads`] for 0 or more than 256 threads, and [`Error::Unsupported`] for an ISA
    /// this CPU lacks or int8 precision without int8 weights.
    pub fn new(model: &Model, options: Options) -> Result<Engine> {
        Engine::build(model, &mut FoldedLayers::new(&model.plan, &model.params), options)
    }

    /// [`Engine::new`] that consumes the model: each layer's parameters are freed as soon as
    /// they are folded, so the weights never exist twice (the least peak memory; what the CLI
    /// uses). The model's plan, labels and preprocessing come back with empty parameters.
    pub fn new_owned(mut model: Model, options: Options) -> Result<(Engine, Model)> {
        let mut folded = FoldedLayers::from_owned(&model.plan.clone(), &mut model.params);
        Ok((Engine::build(&model, &mut folded, options)?, model))
    }

    fn build(model: &Model, folded: &mut FoldedLayers, options: Options) -> Result<Engine> {
        if options.threads == 0 {
            return Err(Error::Threads { got: 0, max: MAX_THREADS });
        }
        if options.threads > MAX_THREADS {
            return Err(Error::Threads { got: options.threads, max: MAX_THREADS });
        }
        let plan = &model.plan;
        if matches!(options.mode, Mode::Fast | Mode::Streaming) {
            let isa = options.isa.unwrap_or_else(mnv2_kernels::isa::best);
            if !isa.supported() {
                return Err(Error::Unsupported(format!("this CPU cannot run {} kernels", isa.name())));
            }
            let streaming = options.mode == Mode::Streaming;
            let threads = options.threads;
            let precision = Engine::precision_for(model, options)?;
            let bf16 = precision == Precision::Bf16;
            // An int8 model runs on the int8 kernels unless asked otherwise; everything else
            // in f32 or bf16.
            let quant = model.quant.as_ref().filter(|_| precision == Precision::Int8);
            let fast: Box<dyn fast::Runner> = match quant {
                Some(q) => {
                    let net = fast::QNet::new(plan, folded, q, isa)?;
                    let head = Engine::head(plan, folded, isa, false)?;
                    Box::new(fast::FastEngine::new(net, head, threads, streaming))
                }
                None => {
                    let net = fast::F32Net::new(plan, folded, isa, bf16)?;
                    let head = Engine::head(plan, folded, isa, bf16)?;
                    Box::new(fast::FastEngine::new(net, head, threads, streaming))
                }
            };
            let precision = Some(precision);
            return Ok(Engine { spec: model.spec().clone(), options, precision, layers: Vec::new(), fast: Some(fast) });
        }
        let layers = plan
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| match l.op {
                Op::Conv(_) => Compiled::Conv(folded.take(i)),
                Op::Linear => Compiled::Linear(folded.take(i)),
                Op::GlobalAvgPool | Op::Dropout { .. } | Op::Concat { .. } | Op::Upsample { .. } => Compiled::Pass,
            })
            .collect();
        Ok(Engine { spec: model.spec().clone(), options, precision: None, layers, fast: None })
    }

    /// The precision the fast modes run `model` in with `options`.
    fn precision_for(model: &Model, options: Options) -> Result<Precision> {
        match (options.precision, &model.quant) {
            (None, Some(_)) => Ok(Precision::Int8),
            (None, None) => Ok(Precision::Fp32),
            (Some(Precision::Int8), None) => Err(Error::Unsupported(format!(
                "int8 precision needs int8 weights, and {} holds float ones (make them with `mnv2 quantize`)",
                model.source.display()
            ))),
            (Some(p), _) => Ok(p),
        }
    }

    /// The precision the engine runs in (`None` in reference mode, which is f32).
    pub fn precision(&self) -> Option<Precision> {
        self.precision
    }

    /// The head layers of a detection or segmentation plan packed for the fast kernels (after
    /// the backbone took its layers out of `folded`); `None` for a classifier.
    fn head(plan: &Plan, folded: &mut FoldedLayers, isa: Isa, bf16: bool) -> Result<Option<fast::HeadNet>> {
        if matches!(plan.head, Head::Classifier(_)) {
            return Ok(None);
        }
        let tier = mnv2_kernels::Tier::new(isa)
            .ok_or_else(|| Error::Unsupported(format!("this CPU cannot run {} kernels", isa.name())))?;
        Ok(Some(fast::HeadNet::new(plan, folded, tier, bf16)?))
    }

    /// The options the engine was built with.
    pub fn options(&self) -> Options {
        self.options
    }

    /// The instruction set and the kernels the fast mode picked (empty in reference mode).
    pub fn kernels(&self) -> (Option<Isa>, Vec<&'static str>) {
        match &self.fast {
            Some(f) => (Some(f.isa()), f.kernel_names()),
            None => (None, Vec::new()),
        }
    }

    /// Activation bytes the engine allocates for one image of this size (all buffers the
    /// forward pass writes, weights excluded).
    pub fn activation_bytes(&self, shape: Shape) -> Result<usize> {
        let plan = self.plan_for(shape)?;
        Ok(match &self.fast {
            Some(f) => f.activation_bytes(&plan),
            // The reference keeps the current tensor, the block input and the output.
            None => plan.layers.iter().map(|l| 4 * (2 * l.input.len() + l.output.len())).max().unwrap_or(0),
        })
    }

    /// Logits from NCHW values (PyTorch's layout), without a transposing pass in fast mode.
    pub fn run_nchw(&self, dims: &[usize], values: &[f32]) -> Result<Batch> {
        match (&self.fast, dims) {
            (Some(f), [n, 3, h, w])
                if values.len() == n * 3 * h * w && matches!(self.spec.head, crate::spec::HeadSpec::Classifier) =>
            {
                let plan = self.plan_for(Shape::new(*h, *w, 3))?;
                if let Some(i) = crate::tensor::first_non_finite(values) {
                    return Err(Error::Input(format!(
                        "input value {} at flat NCHW index {i} is not finite",
                        values[i]
                    )));
                }
                let logits = f.run(&plan, values, *n, mnv2_kernels::stem::Layout::Nchw, None);
                Batch::new(*n, plan.output(), logits)
            }
            _ => self.run(&Batch::from_nchw(dims, values)?),
        }
    }

    /// Time per stage of one forward pass on one thread (fast mode only).
    pub fn profile(&self, input: &Batch) -> Result<Profile> {
        let f = self.fast.as_ref().ok_or_else(|| Error::Unsupported("profiling the reference mode".into()))?;
        let plan = self.plan_for(input.shape)?;
        plan.classifier("profiling")?;
        input.check_finite()?;
        let mut p = Profile::default();
        f.run(&plan, &input.data, input.n, mnv2_kernels::stem::Layout::Nhwc, Some(&mut p));
        Ok(p)
    }

    /// The spec of the model the engine was built from (at the model's input size).
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The plan for an input size (the weights do not depend on it).
    pub fn plan_for(&self, shape: Shape) -> Result<Plan> {
        if shape.c != 3 {
            return Err(Error::Input(format!("images must have 3 channels, got {}", shape.c)));
        }
        Plan::new(&Spec { height: shape.h, width_px: shape.w, ..self.spec.clone() })
            .map_err(|e| Error::Input(format!("input {}x{}: {e}", shape.h, shape.w)))
    }

    /// The output of the plan's last layer: logits `n x 1 x 1 x classes` for a classifier,
    /// the last layer of another head (DeepLab's upsampled logits, SSD's last predictor).
    pub fn run(&self, input: &Batch) -> Result<Batch> {
        let plan = self.plan_for(input.shape)?;
        if let (Some(f), Head::Classifier(_)) = (&self.fast, &plan.head) {
            if input.shape != plan.input() {
                return Err(Error::BatchShape { expected: plan.input().into(), got: input.shape.into() });
            }
            input.check_finite()?;
            let logits = f.run(&plan, &input.data, input.n, mnv2_kernels::stem::Layout::Nhwc, None);
            return Batch::new(input.n, plan.output(), logits);
        }
        let last = plan.layers.len() - 1;
        Ok(self.run_taps(input, &plan, &[last])?.remove(0))
    }

    /// Outputs of the given plan layers (see [`Plan::tap_layer`]). The reference mode returns
    /// any layer's; the fast and streaming modes the head layers of a detection or segmentation
    /// plan (they never materialise most backbone tensors: [`Error::Unsupported`] otherwise).
    pub fn run_taps(&self, input: &Batch, plan: &Plan, layers: &[usize]) -> Result<Vec<Batch>> {
        if input.shape != plan.input() {
            return Err(Error::BatchShape { expected: plan.input().into(), got: input.shape.into() });
        }
        input.check_finite()?;
        match &self.fast {
            None => reference::run(&self.layers, plan, input, layers, self.options.threads),
            Some(f) => {
                if matches!(plan.head, Head::Classifier(_)) || layers.iter().any(|&l| l <= plan.last_conv) {
                    return Err(Error::Unsupported(
                        "backbone taps in fast mode (the fast engine returns head layers; use the reference mode)"
                            .into(),
                    ));
                }
                let layout = mnv2_kernels::stem::Layout::Nhwc;
                let outs = f.run_layers(plan, &input.data, input.n, layout, layers);
                layers.iter().zip(outs).map(|(&l, data)| Batch::new(input.n, plan.layers[l].output, data)).collect()
            }
        }
    }

    /// Feature maps at named places, for detection and segmentation heads.
    pub fn features(&self, input: &Batch, taps: &[Tap]) -> Result<Vec<Batch>> {
        let plan = self.plan_for(input.shape)?;
        let layers = taps.iter().map(|&t| plan.tap_layer(t)).collect::<Result<Vec<_>>>()?;
        self.run_taps(input, &plan, &layers)
    }
}
