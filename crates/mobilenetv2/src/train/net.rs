//! The network in training form: the plan's parameters in flat vectors, and a forward and
//! backward pass over a batch with BatchNorm on batch statistics.
//!
//! Everything comes from the [`Plan`]: the layers, their shapes and geometry, and (through
//! [`expected`]) the torchvision names and shapes of the tensors. Parameters keep PyTorch's
//! layouts (OIHW convolutions, `[out][in]` classifier), so optimizers, checkpoints and export
//! see the same tensors a torchvision state dict has; the kernels read them through strided
//! views or small per-step repacks.
//!
//! The forward pass keeps, per convolution, its output before BatchNorm (`x`) plus the batch
//! mean and inverse standard deviation, and the (narrow) block outputs. The inputs of the
//! depthwise and projection layers (BatchNorm + ReLU6 of the layer before) are never stored:
//! the consuming layer computes them chunk by chunk in cache, forward and backward (see
//! [`ops`]), so each wide expanded tensor exists once. All buffers live in a [`Tape`]
//! allocated once for the largest batch.

use std::borrow::Cow;

use mnv2_kernels::{Isa, MinMax, Tier};

use super::ops::{self, BnAct, BnBwd, DwBwd, Geom, Grad, InGrad, PwBwd, Src, Work};
use super::prof::span;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::names::{expected, Kind};
use crate::plan::{Conv, ConvKind, Layer, Op, Plan, Role, Tap};
use crate::rng::Rng;

/// BatchNorm's running-statistics momentum (torchvision's default).
pub const BN_MOMENTUM: f64 = 0.1;

/// One tensor of the network, torchvision name and shape, and where its values are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// torchvision name (`features.0.1.running_mean`).
    pub name: String,
    /// Shape in PyTorch layout (OIHW for convolutions).
    pub shape: Vec<usize>,
    /// What the tensor is to its layer (weight, BatchNorm parameter or statistic, bias).
    pub kind: Kind,
    /// Index of the plan layer that owns it.
    pub layer: usize,
    /// Offset into [`Net::params`] (trainable) or [`Net::stats`] (running statistics).
    pub offset: usize,
    /// Number of values.
    pub len: usize,
}

impl TensorInfo {
    /// Whether the tensor lives in [`Net::params`] (true) or [`Net::stats`] (false).
    pub fn trainable(&self) -> bool {
        self.kind.trainable()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ConvIx {
    pub(super) w: usize,
    pub(super) gamma: usize,
    pub(super) beta: usize,
    rmean: usize,
    rvar: usize,
    /// The bias of a convolution without BatchNorm (DeepLab's logits).
    pub(super) bias: usize,
}

#[derive(Clone, Copy, Debug)]
enum Ix {
    Conv(ConvIx),
    Linear { w: usize, b: usize },
    Pass,
}

/// The trainable network: parameters, their gradients and BatchNorm's running statistics,
/// each in one flat vector. A step is [`Net::step`] (forward, loss, backward) on a [`Tape`],
/// then an [`Optimizer`](super::Optimizer) update of `params` from `grads`; [`Net::store`]
/// writes the result back into a [`Model`]. [`train`](super::train) runs the whole loop.
///
/// ```
/// use mobilenetv2::rng::Rng;
/// use mobilenetv2::train::{Method, Net, Optimizer, StepOptions, Tape};
/// use mobilenetv2::{Model, Spec};
///
/// let mut model = Model::init(&Spec { classes: 10, ..Spec::new(0.35, 32) }, 1, false)?;
/// let mut net = Net::new(&model);
/// let mut tape = Tape::new(&net.plan, 4); // room for batches of up to 4 images
/// let mut rng = Rng::new(2);
/// let images: Vec<f32> = (0..4 * 32 * 32 * 3).map(|_| rng.normal() as f32).collect(); // NHWC
/// let labels = [0, 3, 5, 9];
///
/// let method = Method::Sgd { momentum: 0.9, nesterov: false };
/// let mut opt = Optimizer::new(method, 4e-5, false, net.params.len());
/// let mut losses = Vec::new();
/// for _ in 0..6 {
///     let stats = net.step(&mut tape, &images, &labels, StepOptions::default(), None)?;
///     assert!(stats.correct <= 4);
///     losses.push(stats.loss);
///     // Train every tensor at learning rate 0.002.
///     opt.step(&mut net.params, &net.grads, &net.tensors, 0.002, |_| true);
/// }
/// assert!(losses[5] < losses[0], "{losses:?}"); // the four images are being learnt
/// net.store(&mut model);
/// # Ok::<(), mobilenetv2::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Net {
    /// The plan the network was made from.
    pub plan: Plan,
    /// Every tensor of [`expected`], in its order.
    pub tensors: Vec<TensorInfo>,
    /// Trainable values, tensor after tensor.
    pub params: Vec<f32>,
    /// Gradients, laid out as `params`.
    pub grads: Vec<f32>,
    /// Running means and variances.
    pub stats: Vec<f32>,
    ix: Vec<Ix>,
    /// The tier every kernel runs on, resolved once.
    pub(super) isa: Tier,
}

/// How BatchNorm behaves in a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    /// Batch statistics, running statistics updated (PyTorch's `train()`).
    Train,
    /// Running statistics, nothing updated (`eval()`); used while the backbone is frozen.
    Eval,
}

/// What a training step computes.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    /// Batch or running BatchNorm statistics.
    pub bn: BnMode,
    /// Whether gradients flow into the backbone (false: classifier only, as when frozen).
    pub backbone: bool,
    /// Label smoothing in [0, 1): the target gives `1 - s + s / k` to the true class and
    /// `s / k` to the others.
    pub label_smoothing: f32,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions { bn: BnMode::Train, backbone: true, label_smoothing: 0.0 }
    }
}

/// Loss and top-1 hits of one batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the batch (with label smoothing, if any).
    pub loss: f64,
    /// Images whose largest logit is their label's.
    pub correct: usize,
}

fn geom(l: &Layer, c: &Conv) -> Geom {
    Geom {
        in_h: l.input.h,
        in_w: l.input.w,
        out_h: l.output.h,
        out_w: l.output.w,
        stride: c.stride,
        dilation: c.dilation,
        pad_top: c.pad.top,
        pad_left: c.pad.left,
    }
}

fn act_of(c: &Conv) -> MinMax {
    let (min, max) = c.activation.bounds();
    MinMax { min, max }
}

impl Net {
    /// The model's tensors in training form.
    pub fn new(model: &Model) -> Net {
        Net::with_isa(model, mnv2_kernels::isa::best())
    }

    /// [`Net::new`] with every kernel on tier `isa`. Panics if this CPU cannot run it.
    pub fn with_isa(model: &Model, isa: Isa) -> Net {
        let isa = Tier::new(isa).unwrap_or_else(|| panic!("this CPU cannot run {} kernels", isa.name()));
        let plan = model.plan.clone();
        let (mut params, mut stats, mut tensors) = (Vec::new(), Vec::new(), Vec::new());
        let mut ix = vec![Ix::Pass; plan.layers.len()];
        for e in expected(&plan) {
            let v = model.param(&e.name);
            let dst = if e.kind.trainable() { &mut params } else { &mut stats };
            let offset = dst.len();
            dst.extend_from_slice(v);
            match (&mut ix[e.layer], e.kind) {
                (i @ Ix::Pass, Kind::ConvWeight) => *i = Ix::Conv(ConvIx { w: offset, ..Default::default() }),
                (Ix::Conv(c), Kind::BnWeight) => c.gamma = offset,
                (Ix::Conv(c), Kind::BnBias) => c.beta = offset,
                (Ix::Conv(c), Kind::BnMean) => c.rmean = offset,
                (Ix::Conv(c), Kind::BnVar) => c.rvar = offset,
                (Ix::Conv(c), Kind::ConvBias) => c.bias = offset,
                (i @ Ix::Pass, Kind::LinearWeight) => *i = Ix::Linear { w: offset, b: 0 },
                (Ix::Linear { b, .. }, Kind::LinearBias) => *b = offset,
                (_, k) => panic!("tensor {} ({k:?}) out of the expected order", e.name),
            }
            tensors.push(TensorInfo {
                len: v.len(),
                name: e.name,
                shape: e.shape,
                kind: e.kind,
                layer: e.layer,
                offset,
            });
        }
        let grads = vec![0.0; params.len()];
        Net { plan, tensors, params, grads, stats, ix, isa }
    }

    /// Writes the current values back into `model` (same plan).
    pub fn store(&self, model: &mut Model) {
        for t in &self.tensors {
            let src = if t.trainable() { &self.params } else { &self.stats };
            model.params.insert(t.name.clone(), src[t.offset..t.offset + t.len].to_vec());
        }
    }

    /// A tensor's values by name (trainable or running statistic).
    pub fn values(&self, name: &str) -> Option<&[f32]> {
        let t = self.tensors.iter().find(|t| t.name == name)?;
        let src = if t.trainable() { &self.params } else { &self.stats };
        Some(&src[t.offset..t.offset + t.len])
    }

    /// A parameter's gradient by name.
    pub fn grad(&self, name: &str) -> Option<&[f32]> {
        let t = self.tensors.iter().find(|t| t.name == name && t.trainable())?;
        Some(&self.grads[t.offset..t.offset + t.len])
    }

    pub(super) fn conv(&self, l: usize) -> (&Layer, &Conv, ConvIx) {
        let layer = &self.plan.layers[l];
        match (&layer.op, self.ix[l]) {
            (Op::Conv(c), Ix::Conv(ix)) => (layer, c, ix),
            _ => panic!("layer {l} is not a convolution"),
        }
    }

    fn classifier(&self) -> usize {
        self.plan.classifier("training").expect("checked by Net::check_plan").classifier
    }

    fn last_conv(&self) -> usize {
        self.plan.last_conv
    }

    /// BatchNorm coefficients of layer `l` for the batch in `tape.x[l]`: batch statistics
    /// BatchNorm coefficients of layer `l` over `m` values per channel: from the batch's
    /// moments (updating the running statistics), or from the running statistics (`None`).
    pub(super) fn bn_coef(&mut self, tape: &mut Tape, l: usize, m: usize, moments: Option<ops::Moments>) -> Result<()> {
        let (layer, _, ix) = self.conv(l);
        let c = layer.output.c;
        let eps = self.plan.spec.bn_eps as f64;
        let (mean, var): (Vec<f64>, Vec<f64>) = match moments {
            Some(mo) => {
                if m < 2 {
                    return Err(Error::Input(format!(
                        "BatchNorm of `{}` needs more than one value per channel in training (batch {} of {}x{})",
                        layer.name, tape.n, layer.output.h, layer.output.w
                    )));
                }
                let mf = m as f64;
                let unbias = mf / (mf - 1.0);
                for j in 0..c {
                    let rm = &mut self.stats[ix.rmean + j];
                    *rm = ((1.0 - BN_MOMENTUM) * *rm as f64 + BN_MOMENTUM * mo.mean[j]) as f32;
                    let rv = &mut self.stats[ix.rvar + j];
                    *rv = ((1.0 - BN_MOMENTUM) * *rv as f64 + BN_MOMENTUM * mo.var[j] * unbias) as f32;
                }
                (mo.mean, mo.var)
            }
            None => (
                (0..c).map(|j| self.stats[ix.rmean + j] as f64).collect(),
                (0..c).map(|j| self.stats[ix.rvar + j] as f64).collect(),
            ),
        };
        let bn = &mut tape.bn[l];
        bn.clear();
        for j in 0..c {
            let is = 1.0 / (var[j] + eps).sqrt();
            let gamma = self.params[ix.gamma + j] as f64;
            let beta = self.params[ix.beta + j] as f64;
            let scale = gamma * is;
            bn.mean.push(mean[j] as f32);
            bn.invstd.push(is as f32);
            bn.scale.push(scale as f32);
            bn.shift.push((beta - mean[j] * scale) as f32);
        }
        Ok(())
    }

    /// From the two reductions of layer `l`'s BatchNorm backward over `m` values per channel:
    /// gamma's and beta's gradients, and the coefficients of the input gradient.
    pub(super) fn bn_grads(&mut self, tape: &mut Tape, l: usize, m: usize, (sdz, sdzx): ops::BnSums) {
        let (layer, _, ix) = self.conv(l);
        let c = layer.output.c;
        let bn = &mut tape.bn[l];
        let mf = m as f64;
        bn.ka.clear();
        bn.kb.clear();
        bn.kd.clear();
        for j in 0..c {
            let is = bn.invstd[j] as f64;
            let gamma = self.params[ix.gamma + j] as f64;
            let dbeta = sdz[j];
            let dgamma = sdzx[j] * is;
            self.grads[ix.gamma + j] = dgamma as f32;
            self.grads[ix.beta + j] = dbeta as f32;
            let a = gamma * is;
            let b = -gamma * is * is * dgamma / mf;
            bn.ka.push(a as f32);
            bn.kb.push(b as f32);
            bn.kd.push((-a * dbeta / mf - b * bn.mean[j] as f64) as f32);
        }
    }

    pub(super) fn act(&self, l: usize) -> MinMax {
        act_of(self.conv(l).1)
    }

    /// Forward pass over `n` NHWC images; leaves the logits in `tape.logits`.
    pub fn forward(
        &mut self,
        tape: &mut Tape,
        images: &[f32],
        n: usize,
        bn: BnMode,
        dropout: Option<&mut Rng>,
    ) -> Result<()> {
        self.forward_backbone(tape, images, n, bn)?;
        let _sp = span(4);
        let lc = self.last_conv();
        let (ll, hw) = (&self.plan.layers[lc], self.plan.layers[lc].output.h * self.plan.layers[lc].output.w);
        let mut pooled = std::mem::take(&mut tape.pooled);
        ops::pool_forward(self.isa, &tape.x[lc], n, hw, ll.output.c, tape.bnact(lc, self.act(lc)), &mut pooled);
        tape.pooled = pooled;
        // Dropout and the classifier.
        let cl = self.plan.layers[self.last_conv()].output.c;
        let p = self.plan.spec.dropout;
        let hidden = &mut tape.hidden[..n * cl];
        match dropout {
            Some(rng) if p > 0.0 => {
                let keep = 1.0 / (1.0 - p);
                for (m, (h, v)) in tape.mask[..n * cl].iter_mut().zip(hidden.iter_mut().zip(&tape.pooled)) {
                    *m = if rng.uniform() < p as f64 { 0.0 } else { keep };
                    *h = v * *m;
                }
            }
            _ => {
                tape.mask[..n * cl].fill(1.0);
                hidden.copy_from_slice(&tape.pooled[..n * cl]);
            }
        }
        let k = self.plan.output().c;
        let Ix::Linear { w, b } = self.ix[self.classifier()] else { unreachable!("classifier indices") };
        ops::pw_forward(&tape.hidden, n, cl, &self.params[w..w + k * cl], k, &mut tape.logits);
        for row in tape.logits[..n * k].chunks_exact_mut(k) {
            for (v, bias) in row.iter_mut().zip(&self.params[b..b + k]) {
                *v += bias;
            }
        }
        Ok(())
    }

    /// Forward pass of the backbone only (stem, blocks, and the last 1x1 conv if the plan has
    /// one) over `n` NHWC images: what a head reads through [`Net::tap_value`]. A head's own
    /// layers are the caller's; [`Net::backward_from_taps`] then takes the gradients the head
    /// sends back to the taps.
    pub fn forward_backbone(&mut self, tape: &mut Tape, images: &[f32], n: usize, bn: BnMode) -> Result<()> {
        let input = self.plan.input();
        if n == 0 || n > tape.nmax {
            return Err(Error::Input(format!("batch of {n} images; this tape holds 1 to {}", tape.nmax)));
        }
        if images.len() != n * input.len() {
            return Err(Error::BatchLen { values: images.len(), images: n, shape: input.into() });
        }
        tape.n = n;
        let mut work = std::mem::take(&mut tape.work);
        let r = self.forward_layers(tape, images, n, bn == BnMode::Train, &mut work);
        tape.work = work;
        r
    }

    /// The plan layer whose post-activation output is `tap`, checked against what training
    /// supports: block outputs, block expansions and the last conv ([`Tap::Stem`] is
    /// [`Error::Unsupported`]).
    pub fn tap_layer(&self, tap: Tap) -> Result<usize> {
        if tap == Tap::Stem {
            return Err(Error::Unsupported("training with a head on the stem's output".into()));
        }
        self.plan.tap_layer(tap)
    }

    /// The value of a tap after [`Net::forward_backbone`] (or [`Net::forward`]): the tap
    /// layer's output after BatchNorm, activation and residual, `n x h x w x c` NHWC for the
    /// batch's `n` images. Block outputs are borrowed from the tape; an expansion's or the last
    /// conv's activation is computed from the stored pre-BatchNorm values.
    pub fn tap_value<'t>(&self, tape: &'t Tape, tap: Tap) -> Result<Cow<'t, [f32]>> {
        let l = self.tap_layer(tap)?;
        let layer = &self.plan.layers[l];
        let len = tape.n * layer.output.len();
        if let Tap::Block(i) = tap {
            let bi = self.plan.blocks.iter().position(|b| b.index == i).expect("tap_layer found it");
            return Ok(Cow::Borrowed(&tape.block_out[bi][..len]));
        }
        let mut out = vec![0f32; len];
        ops::bn_apply(self.isa, &tape.x[l][..len], layer.output.c, tape.bnact(l, self.act(l)), None, &mut out);
        Ok(Cow::Owned(out))
    }

    /// Backward pass of the backbone from gradients injected at taps (each `n x h x w x c`,
    /// the gradient of the loss with respect to [`Net::tap_value`]), after
    /// [`Net::forward_backbone`] on `images` in [`BnMode::Train`]. Fills the gradients of
    /// every backbone tensor (the layers up to [`Plan::last_conv`]; zero for layers above the
    /// deepest tap) and leaves the head's entries of [`Net::grads`] as they are. Gradients at
    /// the same tap add up.
    pub fn backward_from_taps(&mut self, tape: &mut Tape, images: &[f32], grads: &[(Tap, &[f32])]) -> Result<()> {
        let n = tape.n;
        let mut top: Option<usize> = None; // deepest block (position in plan.blocks) reached
        let mut last = None;
        for &(tap, g) in grads {
            let l = self.tap_layer(tap)?;
            let want = n * self.plan.layers[l].output.len();
            if g.len() != want {
                return Err(Error::Input(format!("gradient of tap {tap:?}: {} values, expected {want}", g.len())));
            }
            let bi = match tap {
                Tap::LastConv => {
                    last = Some(g);
                    self.plan.blocks.len() - 1
                }
                Tap::Block(i) | Tap::Expansion(i) => {
                    self.plan.blocks.iter().position(|b| b.index == i).expect("tap_layer found it")
                }
                Tap::Stem => unreachable!("refused by tap_layer"),
            };
            top = Some(top.map_or(bi, |t: usize| t.max(bi)));
        }
        let Some(top) = top else { return Err(Error::Input("backward from no tap".into())) };
        // Layers above the deepest tap (and the last conv unless tapped) get no gradient.
        let first_zero = if last.is_some() { self.last_conv() + 1 } else { self.plan.blocks[top].project + 1 };
        let lc = self.last_conv();
        for t in self.tensors.iter().filter(|t| t.trainable() && t.layer >= first_zero && t.layer <= lc) {
            self.grads[t.offset..t.offset + t.len].fill(0.0);
        }
        let mut g = GradBufs::take(tape);
        match last {
            Some(dl) => self.last_conv_backward(tape, Grad::Rows(dl), &mut g),
            None => g.out[..n * self.plan.blocks[top].output.len()].fill(0.0),
        }
        let mut stem_sums_done = false;
        for bi in (0..=top).rev() {
            let index = self.plan.blocks[bi].index;
            let m = n * self.plan.blocks[bi].output.len();
            for &(_, d) in grads.iter().filter(|(t, _)| *t == Tap::Block(index)) {
                for (o, v) in g.out[..m].iter_mut().zip(d) {
                    *o += v;
                }
            }
            let exp: Vec<&[f32]> = grads.iter().filter(|(t, _)| *t == Tap::Expansion(index)).map(|&(_, d)| d).collect();
            stem_sums_done |= self.block_backward(tape, bi, &mut g, &exp);
        }
        self.stem_backward(tape, images, stem_sums_done, &mut g);
        g.put_back(tape);
        Ok(())
    }

    /// The convolutions of the backbone's forward pass: one step per layer kind, driven by the
    /// plan's blocks.
    fn forward_layers(
        &mut self,
        tape: &mut Tape,
        images: &[f32],
        n: usize,
        train: bool,
        work: &mut Work,
    ) -> Result<()> {
        self.stem_forward(tape, images, n, train, work)?;
        for bi in 0..self.plan.blocks.len() {
            self.block_forward(tape, bi, n, train, work)?;
        }
        if self.plan.layers[self.last_conv()].role == Role::LastConv {
            self.last_conv_forward(tape, n, train, work)?;
        }
        Ok(())
    }

    /// Stem: patches times weights, chunk by chunk; its activation is materialised only when
    /// the first block does not read it on the fly.
    fn stem_forward(&mut self, tape: &mut Tape, images: &[f32], n: usize, train: bool, work: &mut Work) -> Result<()> {
        let _sp = span(0);
        let (l0, c0, ix0) = self.conv(0);
        let (g0, cout0, m0) = (geom(l0, c0), l0.output.c, n * l0.output.h * l0.output.w);
        let wc = ops::stem_weights_to_cols(&self.params[ix0.w..ix0.w + cout0 * 27], cout0);
        let mut x = std::mem::take(&mut tape.x[0]);
        let mo = ops::conv_forward(self.isa, Src::Patches(images, g0), m0, 27, &wc, cout0, &mut x, train, work);
        tape.x[0] = x;
        self.bn_coef(tape, 0, m0, mo)?;
        if !self.plan.stem_feeds_first_block() {
            let mut out = std::mem::take(&mut tape.stem_act);
            ops::bn_apply(self.isa, &tape.x[0][..m0 * cout0], cout0, tape.bnact(0, self.act(0)), None, &mut out);
            tape.stem_act = out;
        }
        Ok(())
    }

    /// The layer whose BatchNorm + clamp feeds block `bi`'s depthwise convolution on the fly:
    /// its expand conv, or the stem for a first block that reads it directly.
    fn feeder(&self, bi: usize) -> Option<usize> {
        let blk = &self.plan.blocks[bi];
        match blk.expand {
            Some(e) => Some(e),
            None if bi == 0 && self.plan.stem_feeds_first_block() => Some(self.plan.stem()),
            None => None,
        }
    }

    /// One inverted residual block: expand, depthwise, project, residual.
    fn block_forward(&mut self, tape: &mut Tape, bi: usize, n: usize, train: bool, work: &mut Work) -> Result<()> {
        let blk = self.plan.blocks[bi].clone();
        let inp =
            if bi == 0 { std::mem::take(&mut tape.stem_act) } else { std::mem::take(&mut tape.block_out[bi - 1]) };
        let m_in = n * blk.input.h * blk.input.w;
        let m_out = n * blk.output.h * blk.output.w;
        let (cin, hid, cout) = (blk.input.c, blk.hidden, blk.output.c);
        if let Some(e) = blk.expand {
            let _sp = span(1);
            let ixe = self.conv(e).2;
            let mut x = std::mem::take(&mut tape.x[e]);
            let w = &self.params[ixe.w..ixe.w + hid * cin];
            let mo = ops::conv_forward(self.isa, Src::Rows(&inp), m_in, cin, w, hid, &mut x, train, work);
            tape.x[e] = x;
            self.bn_coef(tape, e, m_in, mo)?;
        }
        let feeder = self.feeder(bi);
        let sp = span(3);
        let d = blk.depthwise;
        let (ld, cd, ixd) = self.conv(d);
        let gd = geom(ld, cd);
        let w_hwc = ops::dw_weights_hwc(&self.params[ixd.w..ixd.w + 9 * hid], hid);
        let mut x = std::mem::take(&mut tape.x[d]);
        let src = match feeder {
            Some(f) => Src::Bn(&tape.x[f], tape.bnact(f, self.act(f))),
            None => Src::Rows(&inp),
        };
        let mo = ops::dw_forward(self.isa, src, n, hid, gd, &w_hwc, &mut x, train, work);
        tape.x[d] = x;
        self.bn_coef(tape, d, m_out, mo)?;
        drop(sp);
        let sp = span(1);
        let p = blk.project;
        let ixp = self.conv(p).2;
        let mut x = std::mem::take(&mut tape.x[p]);
        let src = Src::Bn(&tape.x[d], tape.bnact(d, self.act(d)));
        let w = &self.params[ixp.w..ixp.w + cout * hid];
        let mo = ops::conv_forward(self.isa, src, m_out, hid, w, cout, &mut x, train, work);
        tape.x[p] = x;
        self.bn_coef(tape, p, m_out, mo)?;
        drop(sp);
        let _sp = span(2);
        let mut out = std::mem::take(&mut tape.block_out[bi]);
        let res = blk.residual.then(|| &inp[..m_out * cout]);
        ops::bn_apply(self.isa, &tape.x[p][..m_out * cout], cout, tape.bnact(p, self.act(p)), res, &mut out);
        tape.block_out[bi] = out;
        if bi == 0 {
            tape.stem_act = inp;
        } else {
            tape.block_out[bi - 1] = inp;
        }
        Ok(())
    }

    /// The last 1x1 convolution.
    fn last_conv_forward(&mut self, tape: &mut Tape, n: usize, train: bool, work: &mut Work) -> Result<()> {
        let _sp = span(1);
        let lc = self.last_conv();
        let (ll, _, ixl) = self.conv(lc);
        let (cin, cl) = (ll.input.c, ll.output.c);
        let ml = n * ll.output.h * ll.output.w;
        let mut x = std::mem::take(&mut tape.x[lc]);
        let last_in = tape.block_out.last().expect("a plan has blocks");
        let w = &self.params[ixl.w..ixl.w + cl * cin];
        let mo = ops::conv_forward(self.isa, Src::Rows(last_in), ml, cin, w, cl, &mut x, train, work);
        tape.x[lc] = x;
        self.bn_coef(tape, lc, ml, mo)
    }

    /// Softmax cross-entropy (mean over the batch, optional label smoothing) of the logits in
    /// the tape; leaves its gradient in `tape.dlogits`.
    pub fn loss(&self, tape: &mut Tape, labels: &[usize], smoothing: f32) -> Result<StepStats> {
        let (n, k) = (tape.n, self.plan.output().c);
        if labels.len() != n {
            return Err(Error::Input(format!("{} labels for {n} images", labels.len())));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= k) {
            return Err(Error::LabelOutOfRange { label: bad, classes: k });
        }
        let _sp = span(4);
        let eps = smoothing as f64;
        let (mut total, mut correct) = (0f64, 0usize);
        for (i, &label) in labels.iter().enumerate() {
            let z = &tape.logits[i * k..(i + 1) * k];
            let mx = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let se: f64 = z.iter().map(|&v| (v as f64 - mx).exp()).sum();
            let lse = mx + se.ln();
            let argmax = z.iter().enumerate().fold(0, |best, (j, &v)| if v > z[best] { j } else { best });
            correct += (argmax == label) as usize;
            let g = &mut tape.dlogits[i * k..(i + 1) * k];
            for j in 0..k {
                let q = eps / k as f64 + if j == label { 1.0 - eps } else { 0.0 };
                total -= q * (z[j] as f64 - lse);
                g[j] = ((((z[j] as f64) - lse).exp() - q) / n as f64) as f32;
            }
        }
        Ok(StepStats { loss: total / n as f64, correct })
    }

    /// Backward pass from `tape.dlogits`: fills [`Net::grads`] (all of them; the backbone's
    /// are zero when `backbone` is false). `images` are the forward pass's. One step per
    /// layer kind, from the head down through the plan's blocks to the stem.
    pub fn backward(&mut self, tape: &mut Tape, images: &[f32], backbone: bool) {
        let Some(dh) = self.head_backward(tape, backbone) else { return };
        let mut g = GradBufs::take(tape);
        let hw = {
            let ll = &self.plan.layers[self.last_conv()];
            ll.output.h * ll.output.w
        };
        self.last_conv_backward(tape, Grad::Pooled(&dh, hw), &mut g);
        tape.dhidden = dh;
        // `g.out` holds the gradient of each block's output, from the last block down.
        let mut stem_sums_done = false;
        for bi in (0..self.plan.blocks.len()).rev() {
            stem_sums_done |= self.block_backward(tape, bi, &mut g, &[]);
        }
        self.stem_backward(tape, images, stem_sums_done, &mut g);
        g.put_back(tape);
    }

    /// The classifier's gradients, then (for the backbone) the gradient of the pooled features
    /// through dropout, spread over the pixels: every pixel of an image gets 1/hw of it.
    fn head_backward(&mut self, tape: &mut Tape, backbone: bool) -> Option<Vec<f32>> {
        let _sp = span(4);
        let n = tape.n;
        let cls = self.classifier();
        let lc = self.last_conv();
        let (cl, k) = (self.plan.layers[cls].input.c, self.plan.output().c);
        let Ix::Linear { w, b } = self.ix[cls] else { unreachable!("classifier indices") };
        ops::weight_grad(&tape.dlogits, n, k, &tape.hidden, cl, &mut self.grads[w..w + k * cl]);
        for j in 0..k {
            self.grads[b + j] = (0..n).map(|i| tape.dlogits[i * k + j] as f64).sum::<f64>() as f32;
        }
        if !backbone {
            self.grads[..w].fill(0.0);
            return None;
        }
        let mut dh = std::mem::take(&mut tape.dhidden);
        ops::pw_input_grad(&tape.dlogits, n, k, &self.params[w..w + k * cl], cl, &mut dh);
        let ll = &self.plan.layers[lc];
        let hw = ll.output.h * ll.output.w;
        for (d, m) in dh[..n * cl].iter_mut().zip(&tape.mask) {
            *d = *d * m / hw as f32;
        }
        Some(dh)
    }

    /// The last 1x1 convolution, from the gradient of its activation (pooled, or per pixel);
    /// leaves the gradient of the last block's output in `g.out`.
    fn last_conv_backward(&mut self, tape: &mut Tape, grad: Grad, g: &mut GradBufs) {
        let n = tape.n;
        let lc = self.last_conv();
        let ll = &self.plan.layers[lc];
        let (cl, hw) = (ll.output.c, ll.output.h * ll.output.w);
        let sp = span(6);
        let ml = n * hw;
        let (ixl, cin) = (self.conv(lc).2, ll.input.c);
        let sums = ops::bn_backward_sums(
            self.isa,
            &tape.x[lc][..ml * cl],
            grad,
            cl,
            tape.bnact(lc, self.act(lc)),
            &tape.bn[lc].mean,
            &mut g.work,
        );
        self.bn_grads(tape, lc, ml, sums);
        drop(sp);
        let _sp = span(5);
        let p = PwBwd {
            grad,
            bwd: tape.bnbwd(lc, self.act(lc)),
            src: Src::Rows(tape.block_out.last().expect("a plan has blocks")),
            w: &self.params[ixl.w..ixl.w + cl * cin],
            m: ml,
            cin,
            cout: cl,
        };
        let din = InGrad { out: &mut g.out, residual: None, sums: None, masked: false };
        ops::pw_backward(self.isa, p, &mut self.grads[ixl.w..ixl.w + cl * cin], Some(din), &mut g.work);
    }

    /// Block `bi`, from the gradient of its output in `g.out` to the gradient of its input in
    /// `g.out` (or, for a first block that reads the stem on the fly, the gradient of the stem's
    /// activation in `g.dw_in`, with the stem's BatchNorm sums done: then it returns true).
    /// `expansion` are gradients injected at the expansion's activation ([`Tap::Expansion`]).
    fn block_backward(&mut self, tape: &mut Tape, bi: usize, g: &mut GradBufs, expansion: &[&[f32]]) -> bool {
        let blk = self.plan.blocks[bi].clone();
        let n = tape.n;
        let m_in = n * blk.input.h * blk.input.w;
        let m_out = n * blk.output.h * blk.output.w;
        let (cin, cout, hid) = (blk.input.c, blk.output.c, blk.hidden);
        let (p, d) = (blk.project, blk.depthwise);
        let sp = span(6);
        let sums = ops::bn_backward_sums(
            self.isa,
            &tape.x[p][..m_out * cout],
            Grad::Rows(&g.out),
            cout,
            tape.bnact(p, self.act(p)),
            &tape.bn[p].mean,
            &mut g.work,
        );
        self.bn_grads(tape, p, m_out, sums);
        drop(sp);
        // Projection: the gradient of the depthwise activation, and its BatchNorm's reductions.
        let sp = span(5);
        let ixp = self.conv(p).2;
        let bnd = tape.bnact(d, self.act(d));
        let pb = PwBwd {
            grad: Grad::Rows(&g.out),
            bwd: tape.bnbwd(p, self.act(p)),
            src: Src::Bn(&tape.x[d], bnd),
            w: &self.params[ixp.w..ixp.w + cout * hid],
            m: m_out,
            cin: hid,
            cout,
        };
        let sums = Some((&tape.x[d][..], bnd, &tape.bn[d].mean[..]));
        let din = InGrad { out: &mut g.dw_out, residual: None, sums, masked: true };
        let sums = ops::pw_backward(self.isa, pb, &mut self.grads[ixp.w..ixp.w + cout * hid], Some(din), &mut g.work);
        self.bn_grads(tape, d, m_out, sums.expect("asked for"));
        drop(sp);
        // Depthwise: the gradient of its input, and the reductions of the feeding BatchNorm.
        let sp = span(7);
        let (ld, cd, ixd) = self.conv(d);
        let gd = geom(ld, cd);
        let feeder = self.feeder(bi);
        let inp: &[f32] = if bi == 0 { &tape.stem_act } else { &tape.block_out[bi - 1] };
        let w_hwc = ops::dw_weights_hwc(&self.params[ixd.w..ixd.w + 9 * hid], hid);
        let (src, sums) = match feeder {
            Some(f) => {
                let bnf = tape.bnact(f, self.act(f));
                (Src::Bn(&tape.x[f], bnf), Some((&tape.x[f][..], bnf, &tape.bn[f].mean[..])))
            }
            None => (Src::Rows(inp), None),
        };
        let db = DwBwd { dz: &g.dw_out, bwd: tape.bnbwd(d, self.act(d)), src, w_hwc: &w_hwc, n, c: hid, g: gd };
        // With a gradient injected at the expansion, the feeder's reductions come after adding it.
        let injected = !expansion.is_empty();
        let din = InGrad { out: &mut g.dw_in, residual: None, sums: if injected { None } else { sums }, masked: false };
        let (dwg, mut sums) = ops::dw_backward(self.isa, db, din, &mut g.work);
        if let (true, Some(f)) = (injected, feeder) {
            for d in expansion {
                for (o, v) in g.dw_in[..m_in * hid].iter_mut().zip(d.iter()) {
                    *o += v;
                }
            }
            let bnf = tape.bnact(f, self.act(f));
            let x = &tape.x[f][..m_in * hid];
            sums =
                Some(ops::bn_backward_sums(self.isa, x, Grad::Rows(&g.dw_in), hid, bnf, &tape.bn[f].mean, &mut g.work));
        }
        for ch in 0..hid {
            for t in 0..9 {
                self.grads[ixd.w + ch * 9 + t] = dwg[t * hid + ch];
            }
        }
        drop(sp);
        // g.dw_in: gradient of the depthwise input.
        match (blk.expand, feeder) {
            (Some(e), _) => {
                let sp = span(6);
                self.bn_grads(tape, e, m_in, sums.expect("asked for"));
                drop(sp);
                let _sp = span(5);
                let ixe = self.conv(e).2;
                let inp: &[f32] = if bi == 0 { &tape.stem_act } else { &tape.block_out[bi - 1] };
                let pb = PwBwd {
                    grad: Grad::Rows(&g.dw_in),
                    bwd: tape.bnbwd(e, self.act(e)),
                    src: Src::Rows(inp),
                    w: &self.params[ixe.w..ixe.w + hid * cin],
                    m: m_in,
                    cin,
                    cout: hid,
                };
                let din = InGrad {
                    out: &mut g.input,
                    residual: blk.residual.then_some(&g.out[..]),
                    sums: None,
                    masked: false,
                };
                ops::pw_backward(self.isa, pb, &mut self.grads[ixe.w..ixe.w + hid * cin], Some(din), &mut g.work);
                std::mem::swap(&mut g.input, &mut g.out);
                false
            }
            (None, Some(f)) => {
                // The first block reads the stem's activation on the fly: g.dw_in is its gradient.
                debug_assert!(bi == 0 && f == 0 && !blk.residual);
                self.bn_grads(tape, f, m_in, sums.expect("asked for"));
                true
            }
            (None, None) => {
                for (i, v) in g.input[..m_in * cin].iter_mut().enumerate() {
                    *v = g.dw_in[i] + if blk.residual { g.out[i] } else { 0.0 };
                }
                std::mem::swap(&mut g.input, &mut g.out);
                false
            }
        }
    }

    /// Stem: its activation's gradient is in `g.dw_in` (read on the fly by the first block,
    /// BatchNorm sums already done) or `g.out`.
    fn stem_backward(&mut self, tape: &mut Tape, images: &[f32], stem_sums_done: bool, g: &mut GradBufs) {
        let _sp = span(8);
        let n = tape.n;
        let (l0, c0, ix0) = self.conv(0);
        let (g0, cout0, m0) = (geom(l0, c0), l0.output.c, n * l0.output.h * l0.output.w);
        let g_stem: &[f32] = if stem_sums_done { &g.dw_in } else { &g.out };
        if !stem_sums_done {
            let sums = ops::bn_backward_sums(
                self.isa,
                &tape.x[0][..m0 * cout0],
                Grad::Rows(g_stem),
                cout0,
                tape.bnact(0, self.act(0)),
                &tape.bn[0].mean,
                &mut g.work,
            );
            self.bn_grads(tape, 0, m0, sums);
        }
        let mut wc = vec![0f32; cout0 * 27];
        let pb = PwBwd {
            grad: Grad::Rows(g_stem),
            bwd: tape.bnbwd(0, self.act(0)),
            src: Src::Patches(images, g0),
            w: &self.params[ix0.w..ix0.w + cout0 * 27],
            m: m0,
            cin: 27,
            cout: cout0,
        };
        ops::pw_backward(self.isa, pb, &mut wc, None, &mut g.work);
        ops::stem_cols_to_weights(&wc, cout0, &mut self.grads[ix0.w..ix0.w + cout0 * 27]);
    }

    /// Forward, loss and backward of one batch.
    pub fn step(
        &mut self,
        tape: &mut Tape,
        images: &[f32],
        labels: &[usize],
        opts: StepOptions,
        dropout: Option<&mut Rng>,
    ) -> Result<StepStats> {
        self.forward(tape, images, labels.len(), opts.bn, dropout)?;
        let stats = self.loss(tape, labels, opts.label_smoothing)?;
        self.backward(tape, images, opts.backbone);
        Ok(stats)
    }

    /// Only the kind of convolution matters to the kernels; this checks the plan has none
    /// they do not cover, and a classification head ([`Net::step`] trains classifiers).
    pub fn check_plan(plan: &Plan) -> Result<()> {
        plan.classifier("training")?;
        Net::check_backbone(plan)
    }

    /// [`Net::check_plan`] for the backbone alone (the layers up to [`Plan::last_conv`]), for
    /// a head trained by its own code through [`Net::forward_backbone`] and
    /// [`Net::backward_from_taps`].
    pub fn check_backbone(plan: &Plan) -> Result<()> {
        for l in &plan.layers[..=plan.last_conv] {
            if let Op::Conv(c) = &l.op {
                let ok = match c.kind {
                    ConvKind::Full => l.input.c == 3 && c.kernel == 3,
                    ConvKind::Pointwise => c.kernel == 1 && c.stride == 1,
                    ConvKind::Depthwise => c.kernel == 3 && 2 * c.dilation < 16,
                };
                if !ok {
                    return Err(Error::Unsupported(format!("training layer `{}` of this shape", l.name)));
                }
            }
        }
        Ok(())
    }
}

/// BatchNorm coefficients of one layer for the current batch, and of its backward.
#[derive(Clone, Debug, Default)]
pub(crate) struct BnCoef {
    /// Per channel: the batch (or running) mean.
    pub mean: Vec<f32>,
    /// Per channel: `1 / sqrt(var + eps)`.
    pub invstd: Vec<f32>,
    /// Per channel: `gamma * invstd`, so BatchNorm is `x * scale + shift`.
    pub scale: Vec<f32>,
    /// Per channel: `beta - mean * scale`.
    pub shift: Vec<f32>,
    /// Backward coefficients: `dx = ka * dy + kb * x + kd`.
    pub ka: Vec<f32>,
    /// See `ka`.
    pub kb: Vec<f32>,
    /// See `ka`.
    pub kd: Vec<f32>,
}

impl BnCoef {
    fn clear(&mut self) {
        self.mean.clear();
        self.invstd.clear();
        self.scale.clear();
        self.shift.clear();
    }
}

/// The gradient buffers of the backward pass, taken out of the tape for its duration so the
/// steps can borrow them beside the tape's activations.
struct GradBufs {
    /// Gradient of the current block's output (narrow).
    out: Vec<f32>,
    /// Gradient of the current block's input (narrow); swapped with `out` after each block.
    input: Vec<f32>,
    /// Gradient of the depthwise conv's output (wide).
    dw_out: Vec<f32>,
    /// Gradient of the depthwise conv's input (wide).
    dw_in: Vec<f32>,
    /// Kernel scratch.
    work: Work,
}

impl GradBufs {
    fn take(tape: &mut Tape) -> GradBufs {
        GradBufs {
            out: std::mem::take(&mut tape.gn_a),
            input: std::mem::take(&mut tape.gn_b),
            dw_out: std::mem::take(&mut tape.g1),
            dw_in: std::mem::take(&mut tape.g2),
            work: std::mem::take(&mut tape.work),
        }
    }

    fn put_back(self, tape: &mut Tape) {
        tape.gn_a = self.out;
        tape.gn_b = self.input;
        tape.g1 = self.dw_out;
        tape.g2 = self.dw_in;
        tape.work = self.work;
    }
}

/// Every buffer of a training step, allocated once for batches of up to `nmax` images.
pub struct Tape {
    pub(super) nmax: usize,
    pub(super) n: usize,
    /// Per convolution, its output before BatchNorm.
    pub(super) x: Vec<Vec<f32>>,
    pub(super) bn: Vec<BnCoef>,
    /// The stem's activation, stored only when the first block needs it whole (an expansion
    /// or a residual); otherwise the first block computes it on the fly.
    stem_act: Vec<f32>,
    pub(super) block_out: Vec<Vec<f32>>,
    /// Gradients of wide tensors: the depthwise output's and its input's.
    g1: Vec<f32>,
    g2: Vec<f32>,
    /// Gradients of narrow tensors: a block's output's and its input's.
    gn_a: Vec<f32>,
    gn_b: Vec<f32>,
    pooled: Vec<f32>,
    mask: Vec<f32>,
    hidden: Vec<f32>,
    dhidden: Vec<f32>,
    /// Logits of the last forward pass, `nmax x classes` (the first `n` rows valid).
    pub logits: Vec<f32>,
    /// Gradient of the loss with respect to `logits`, set by [`Net::loss`].
    pub dlogits: Vec<f32>,
    pub(super) work: Work,
}

impl Tape {
    /// Buffers for `plan` and batches of 1 to `nmax` images.
    pub fn new(plan: &Plan, nmax: usize) -> Tape {
        let n = nmax;
        let mut x = vec![Vec::new(); plan.layers.len()];
        let mut widest = 0;
        for (i, l) in plan.layers.iter().enumerate() {
            if let Op::Conv(_) = l.op {
                x[i] = vec![0.0; n * l.output.len()];
                if l.role == Role::Depthwise {
                    widest = widest.max(l.output.len()).max(l.input.len());
                }
            }
        }
        let narrow = plan.blocks.iter().map(|b| b.input.len().max(b.output.len())).max().unwrap_or(0);
        let stem = &plan.layers[0];
        let first = plan.blocks.first();
        let keep_stem = first.is_some() && !plan.stem_feeds_first_block();
        let cl = plan.classifier("training").map_or(0, |h| plan.layers[h.classifier].input.c);
        let k = plan.output().c;
        Tape {
            nmax,
            n: 0,
            x,
            bn: vec![BnCoef::default(); plan.layers.len()],
            stem_act: if keep_stem { vec![0.0; n * stem.output.len()] } else { Vec::new() },
            block_out: plan.blocks.iter().map(|b| vec![0.0; n * b.output.len()]).collect(),
            g1: vec![0.0; n * widest],
            g2: vec![0.0; n * widest],
            gn_a: vec![0.0; n * narrow],
            gn_b: vec![0.0; n * narrow],
            pooled: vec![0.0; n * cl],
            mask: vec![0.0; n * cl],
            hidden: vec![0.0; n * cl],
            dhidden: vec![0.0; n * cl],
            logits: vec![0.0; n * k],
            dlogits: vec![0.0; n * k],
            work: Work::default(),
        }
    }

    pub(super) fn bnact(&self, l: usize, act: MinMax) -> BnAct<'_> {
        BnAct { scale: &self.bn[l].scale, shift: &self.bn[l].shift, act }
    }

    pub(super) fn bnbwd(&self, l: usize, act: MinMax) -> BnBwd<'_> {
        let bn = &self.bn[l];
        BnBwd { x: &self.x[l], fwd: self.bnact(l, act), ka: &bn.ka, kb: &bn.kb, kd: &bn.kd }
    }

    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        let v = |b: &Vec<f32>| b.len() * 4;
        self.x.iter().map(v).sum::<usize>()
            + self.block_out.iter().map(v).sum::<usize>()
            + [&self.stem_act, &self.g1, &self.g2, &self.gn_a, &self.gn_b].iter().map(|b| v(b)).sum::<usize>()
    }

    /// The number of images of the last forward pass.
    pub fn batch(&self) -> usize {
        self.n
    }

    /// Logits of the last forward pass, `n x classes`.
    pub fn logits(&self, classes: usize) -> &[f32] {
        &self.logits[..self.n * classes]
    }
}
