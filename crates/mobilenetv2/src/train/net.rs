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
//! mean and inverse standard deviation; the inputs of the expansion and projection layers
//! (BatchNorm + ReLU6 of the layer before) are recomputed from `x` when the backward needs
//! them, so the wide expanded tensors are stored once, not twice. Block outputs (narrow) are
//! kept. All buffers live in a [`Tape`] allocated once for the largest batch.

use mnv2_kernels::{Isa, MinMax};

use super::ops::{self, Geom};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::plan::{Conv, ConvKind, Layer, Op, Plan, Role};
use crate::rng::Rng;
use crate::weights::names::{expected, Kind};

/// BatchNorm's running-statistics momentum (torchvision's default).
pub const BN_MOMENTUM: f64 = 0.1;

/// One tensor of the network, torchvision name and shape, and where its values are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: Kind,
    /// Index of the plan layer that owns it.
    pub layer: usize,
    /// Offset into [`Net::params`] (trainable) or [`Net::stats`] (running statistics).
    pub offset: usize,
    pub len: usize,
}

impl TensorInfo {
    pub fn trainable(&self) -> bool {
        self.kind.trainable()
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct ConvIx {
    w: usize,
    gamma: usize,
    beta: usize,
    rmean: usize,
    rvar: usize,
}

#[derive(Clone, Copy, Debug)]
enum Ix {
    Conv(ConvIx),
    Linear { w: usize, b: usize },
    Pass,
}

/// The trainable network: parameters, their gradients and BatchNorm's running statistics.
#[derive(Clone, Debug)]
pub struct Net {
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
    isa: Isa,
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
    pub bn: BnMode,
    /// Whether gradients flow into the backbone (false: classifier only, as when frozen).
    pub backbone: bool,
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
    pub loss: f64,
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

    pub fn with_isa(model: &Model, isa: Isa) -> Net {
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

    fn conv(&self, l: usize) -> (&Layer, &Conv, ConvIx) {
        let layer = &self.plan.layers[l];
        match (&layer.op, self.ix[l]) {
            (Op::Conv(c), Ix::Conv(ix)) => (layer, c, ix),
            _ => panic!("layer {l} is not a convolution"),
        }
    }

    fn classifier(&self) -> usize {
        self.plan.layers.iter().rposition(|l| l.role == Role::Classifier).expect("a plan has a classifier")
    }

    fn last_conv(&self) -> usize {
        self.plan.layers.iter().position(|l| l.role == Role::LastConv).expect("a plan has a last conv")
    }

    /// BatchNorm coefficients of layer `l` for the batch in `tape.x[l]`: batch statistics
    /// (updating the running ones) or the running ones.
    fn bn_forward(&mut self, tape: &mut Tape, l: usize, m: usize, mode: BnMode) -> Result<()> {
        let (layer, _, ix) = self.conv(l);
        let c = layer.output.c;
        let eps = self.plan.spec.bn_eps as f64;
        let (mean, var): (Vec<f64>, Vec<f64>) = match mode {
            BnMode::Train => {
                if m < 2 {
                    return Err(Error::Input(format!(
                        "BatchNorm of `{}` needs more than one value per channel in training (batch {} of {}x{})",
                        layer.name, tape.n, layer.output.h, layer.output.w
                    )));
                }
                let x = &tape.x[l][..m * c];
                let shift = &x[..c];
                let (s, q) = ops::channel_stats(x, c, shift);
                let mf = m as f64;
                let mean: Vec<f64> = (0..c).map(|j| shift[j] as f64 + s[j] / mf).collect();
                let var: Vec<f64> = (0..c).map(|j| (q[j] / mf - (s[j] / mf).powi(2)).max(0.0)).collect();
                let unbias = mf / (mf - 1.0);
                for j in 0..c {
                    let rm = &mut self.stats[ix.rmean + j];
                    *rm = ((1.0 - BN_MOMENTUM) * *rm as f64 + BN_MOMENTUM * mean[j]) as f32;
                    let rv = &mut self.stats[ix.rvar + j];
                    *rv = ((1.0 - BN_MOMENTUM) * *rv as f64 + BN_MOMENTUM * var[j] * unbias) as f32;
                }
                (mean, var)
            }
            BnMode::Eval => (
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

    /// `out = act(BN(x_l)) (+ residual)` over `m` rows.
    fn bn_act(&self, tape: &Tape, l: usize, m: usize, res: Option<&[f32]>, out: &mut [f32]) {
        let (layer, c, _) = self.conv(l);
        let ch = layer.output.c;
        let bn = &tape.bn[l];
        ops::bn_apply(&tape.x[l][..m * ch], ch, &bn.scale, &bn.shift, act_of(c), res, out);
    }

    /// BatchNorm + clamp backward of layer `l`, in place on `g` (gradient of the clamp's
    /// output in, of the convolution's output out); writes gamma's and beta's gradients.
    fn bn_backward(&mut self, tape: &Tape, l: usize, m: usize, g: &mut [f32]) {
        let (layer, conv, ix) = self.conv(l);
        let c = layer.output.c;
        let act = act_of(conv);
        let bn = &tape.bn[l];
        let x = &tape.x[l][..m * c];
        let g = &mut g[..m * c];
        let (sdz, sdzx) = ops::bn_backward_sums(x, g, c, &bn.scale, &bn.shift, act, &bn.mean);
        let mf = m as f64;
        let (mut ka, mut kb, mut kd) = (vec![0f32; c], vec![0f32; c], vec![0f32; c]);
        for j in 0..c {
            let is = bn.invstd[j] as f64;
            let gamma = self.params[ix.gamma + j] as f64;
            let dbeta = sdz[j];
            let dgamma = sdzx[j] * is;
            self.grads[ix.gamma + j] = dgamma as f32;
            self.grads[ix.beta + j] = dbeta as f32;
            let a = gamma * is;
            let b = -gamma * is * is * dgamma / mf;
            ka[j] = a as f32;
            kb[j] = b as f32;
            kd[j] = (-a * dbeta / mf - b * bn.mean[j] as f64) as f32;
        }
        ops::bn_backward_apply(x, g, c, &bn.scale, &bn.shift, act, &ka, &kb, &kd);
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
        let input = self.plan.input();
        if n == 0 || n > tape.nmax {
            return Err(Error::Input(format!("batch of {n} images; this tape holds 1 to {}", tape.nmax)));
        }
        if images.len() != n * input.len() {
            return Err(Error::Input(format!("{} values do not make {n} images of {input}", images.len())));
        }
        tape.n = n;
        // Stem: patches, then a GEMM.
        let (l0, c0, ix0) = self.conv(0);
        let (g0, cout0, m0) = (geom(l0, c0), l0.output.c, n * l0.output.h * l0.output.w);
        ops::im2col3(images, n, g0, &mut tape.cols);
        let wc = ops::stem_weights_to_cols(&self.params[ix0.w..ix0.w + cout0 * 27], cout0);
        let mut x = std::mem::take(&mut tape.x[0]);
        ops::pw_forward(&tape.cols, m0, 27, &wc, cout0, &mut x);
        tape.x[0] = x;
        self.bn_forward(tape, 0, m0, bn)?;
        let mut stem_act = std::mem::take(&mut tape.stem_act);
        self.bn_act(tape, 0, m0, None, &mut stem_act);
        tape.stem_act = stem_act;

        let blocks = self.plan.blocks.clone();
        for (bi, blk) in blocks.iter().enumerate() {
            let inp =
                if bi == 0 { std::mem::take(&mut tape.stem_act) } else { std::mem::take(&mut tape.block_out[bi - 1]) };
            let m_in = n * blk.input.h * blk.input.w;
            let m_out = n * blk.output.h * blk.output.w;
            let mut s1 = std::mem::take(&mut tape.s1);
            if let Some(e) = blk.expand {
                let (le, _, ixe) = self.conv(e);
                let (cin, hid) = (le.input.c, le.output.c);
                let mut x = std::mem::take(&mut tape.x[e]);
                ops::pw_forward(&inp, m_in, cin, &self.params[ixe.w..ixe.w + hid * cin], hid, &mut x);
                tape.x[e] = x;
                self.bn_forward(tape, e, m_in, bn)?;
                self.bn_act(tape, e, m_in, None, &mut s1);
            }
            let d = blk.depthwise;
            let (ld, cd, ixd) = self.conv(d);
            let hid = ld.output.c;
            let w_hwc = ops::dw_weights_hwc(&self.params[ixd.w..ixd.w + 9 * hid], hid);
            let mut x = std::mem::take(&mut tape.x[d]);
            let dw_in: &[f32] = if blk.expand.is_some() { &s1 } else { &inp };
            ops::dw_forward(self.isa, dw_in, n, hid, geom(ld, cd), &w_hwc, &mut x);
            tape.x[d] = x;
            self.bn_forward(tape, d, m_out, bn)?;
            self.bn_act(tape, d, m_out, None, &mut s1);
            let p = blk.project;
            let (lp, _, ixp) = self.conv(p);
            let cout = lp.output.c;
            let mut x = std::mem::take(&mut tape.x[p]);
            ops::pw_forward(&s1, m_out, hid, &self.params[ixp.w..ixp.w + cout * hid], cout, &mut x);
            tape.x[p] = x;
            self.bn_forward(tape, p, m_out, bn)?;
            let mut out = std::mem::take(&mut tape.block_out[bi]);
            self.bn_act(tape, p, m_out, blk.residual.then(|| &inp[..m_out * cout]), &mut out);
            tape.block_out[bi] = out;
            tape.s1 = s1;
            if bi == 0 {
                tape.stem_act = inp;
            } else {
                tape.block_out[bi - 1] = inp;
            }
        }

        // Last 1x1 convolution, then the mean over pixels.
        let lc = self.last_conv();
        let (ll, _, ixl) = self.conv(lc);
        let (cin, cl, hw) = (ll.input.c, ll.output.c, ll.output.h * ll.output.w);
        let ml = n * hw;
        let mut x = std::mem::take(&mut tape.x[lc]);
        let last_in = tape.block_out.last().expect("a plan has blocks");
        ops::pw_forward(last_in, ml, cin, &self.params[ixl.w..ixl.w + cl * cin], cl, &mut x);
        tape.x[lc] = x;
        self.bn_forward(tape, lc, ml, bn)?;
        let mut s1 = std::mem::take(&mut tape.s1);
        self.bn_act(tape, lc, ml, None, &mut s1);
        for b in 0..n {
            let pooled = &mut tape.pooled[b * cl..(b + 1) * cl];
            pooled.fill(0.0);
            for px in s1[b * hw * cl..(b + 1) * hw * cl].chunks_exact(cl) {
                for (p, v) in pooled.iter_mut().zip(px) {
                    *p += v;
                }
            }
            for p in pooled.iter_mut() {
                *p /= hw as f32;
            }
        }
        tape.s1 = s1;

        // Dropout and the classifier.
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

    /// Softmax cross-entropy (mean over the batch, optional label smoothing) of the logits in
    /// the tape; leaves its gradient in `tape.dlogits`.
    pub fn loss(&self, tape: &mut Tape, labels: &[usize], smoothing: f32) -> Result<StepStats> {
        let (n, k) = (tape.n, self.plan.output().c);
        if labels.len() != n {
            return Err(Error::Input(format!("{} labels for {n} images", labels.len())));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= k) {
            return Err(Error::Input(format!("label {bad} is out of range for {k} classes")));
        }
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
    /// are zero when `backbone` is false).
    pub fn backward(&mut self, tape: &mut Tape, images: &[f32], backbone: bool) {
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
            return;
        }
        let mut dh = std::mem::take(&mut tape.dhidden);
        ops::pw_input_grad(&tape.dlogits, n, k, &self.params[w..w + k * cl], cl, &mut dh);
        // Dropout, then the mean over pixels: every pixel gets 1/hw of its image's gradient.
        let ll = &self.plan.layers[lc];
        let hw = ll.output.h * ll.output.w;
        let mut g1 = std::mem::take(&mut tape.g1);
        let mut g2 = std::mem::take(&mut tape.g2);
        let mut s1 = std::mem::take(&mut tape.s1);
        let mut gskip = std::mem::take(&mut tape.gskip);
        for bi in 0..n {
            for ch in 0..cl {
                let v = dh[bi * cl + ch] * tape.mask[bi * cl + ch] / hw as f32;
                for p in 0..hw {
                    g1[(bi * hw + p) * cl + ch] = v;
                }
            }
        }
        tape.dhidden = dh;
        let ml = n * hw;
        self.bn_backward(tape, lc, ml, &mut g1);
        let (_, _, ixl) = self.conv(lc);
        let cin = self.plan.layers[lc].input.c;
        let last_in = tape.block_out.last().expect("a plan has blocks");
        ops::weight_grad(&g1, ml, cl, last_in, cin, &mut self.grads[ixl.w..ixl.w + cl * cin]);
        ops::pw_input_grad(&g1, ml, cl, &self.params[ixl.w..ixl.w + cl * cin], cin, &mut g2);

        let blocks = self.plan.blocks.clone();
        for (bi, blk) in blocks.iter().enumerate().rev() {
            let m_in = n * blk.input.h * blk.input.w;
            let m_out = n * blk.output.h * blk.output.w;
            let (cin, cout, hid) = (blk.input.c, blk.output.c, blk.hidden);
            // g2: gradient of the block's output.
            if blk.residual {
                gskip[..m_out * cout].copy_from_slice(&g2[..m_out * cout]);
            }
            let p = blk.project;
            self.bn_backward(tape, p, m_out, &mut g2);
            let d = blk.depthwise;
            self.bn_act(tape, d, m_out, None, &mut s1);
            let (_, _, ixp) = self.conv(p);
            ops::weight_grad(&g2, m_out, cout, &s1, hid, &mut self.grads[ixp.w..ixp.w + cout * hid]);
            ops::pw_input_grad(&g2, m_out, cout, &self.params[ixp.w..ixp.w + cout * hid], hid, &mut g1);
            // g1: gradient of the depthwise layer's activation.
            self.bn_backward(tape, d, m_out, &mut g1);
            let (ld, cd, ixd) = self.conv(d);
            let gd = geom(ld, cd);
            let inp: &[f32] = if bi == 0 { &tape.stem_act } else { &tape.block_out[bi - 1] };
            if let Some(e) = blk.expand {
                self.bn_act(tape, e, m_in, None, &mut s1);
            }
            let dw_in: &[f32] = if blk.expand.is_some() { &s1 } else { inp };
            let dwg = ops::dw_weight_grad(&g1, dw_in, n, hid, gd);
            for ch in 0..hid {
                for t in 0..9 {
                    self.grads[ixd.w + ch * 9 + t] = dwg[t * hid + ch];
                }
            }
            let w_hwc = ops::dw_weights_hwc(&self.params[ixd.w..ixd.w + 9 * hid], hid);
            ops::dw_input_grad(&g1, n, hid, gd, &w_hwc, &mut g2);
            // g2: gradient of the depthwise input.
            if let Some(e) = blk.expand {
                self.bn_backward(tape, e, m_in, &mut g2);
                let (_, _, ixe) = self.conv(e);
                let inp: &[f32] = if bi == 0 { &tape.stem_act } else { &tape.block_out[bi - 1] };
                ops::weight_grad(&g2, m_in, hid, inp, cin, &mut self.grads[ixe.w..ixe.w + hid * cin]);
                ops::pw_input_grad(&g2, m_in, hid, &self.params[ixe.w..ixe.w + hid * cin], cin, &mut g1);
                std::mem::swap(&mut g1, &mut g2);
            }
            // g2: gradient of the block's input.
            if blk.residual {
                for (a, b) in g2[..m_in * cin].iter_mut().zip(&gskip[..m_in * cin]) {
                    *a += b;
                }
            }
        }

        // Stem.
        let (l0, _, ix0) = self.conv(0);
        let (cout0, m0) = (l0.output.c, n * l0.output.h * l0.output.w);
        self.bn_backward(tape, 0, m0, &mut g2);
        let _ = images; // the patches are still in tape.cols from the forward pass
        let mut wc = vec![0f32; cout0 * 27];
        ops::weight_grad(&g2, m0, cout0, &tape.cols, 27, &mut wc);
        ops::stem_cols_to_weights(&wc, cout0, &mut self.grads[ix0.w..ix0.w + cout0 * 27]);
        tape.g1 = g1;
        tape.g2 = g2;
        tape.s1 = s1;
        tape.gskip = gskip;
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
    /// they do not cover.
    pub fn check_plan(plan: &Plan) -> Result<()> {
        for l in &plan.layers {
            if let Op::Conv(c) = &l.op {
                let ok = match c.kind {
                    ConvKind::Full => l.input.c == 3 && c.kernel == 3,
                    ConvKind::Pointwise => c.kernel == 1 && c.stride == 1,
                    ConvKind::Depthwise => c.kernel == 3,
                };
                if !ok {
                    return Err(Error::Unsupported(format!("training layer `{}` of this shape", l.name)));
                }
            }
        }
        Ok(())
    }
}

/// BatchNorm coefficients of one layer for the current batch.
#[derive(Clone, Debug, Default)]
pub struct BnCoef {
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

impl BnCoef {
    fn clear(&mut self) {
        self.mean.clear();
        self.invstd.clear();
        self.scale.clear();
        self.shift.clear();
    }
}

/// Every buffer of a training step, allocated once for batches of up to `nmax` images.
pub struct Tape {
    nmax: usize,
    n: usize,
    x: Vec<Vec<f32>>,
    bn: Vec<BnCoef>,
    stem_act: Vec<f32>,
    block_out: Vec<Vec<f32>>,
    cols: Vec<f32>,
    s1: Vec<f32>,
    g1: Vec<f32>,
    g2: Vec<f32>,
    gskip: Vec<f32>,
    pooled: Vec<f32>,
    mask: Vec<f32>,
    hidden: Vec<f32>,
    dhidden: Vec<f32>,
    pub logits: Vec<f32>,
    pub dlogits: Vec<f32>,
}

impl Tape {
    pub fn new(plan: &Plan, nmax: usize) -> Tape {
        let n = nmax;
        let mut x = vec![Vec::new(); plan.layers.len()];
        let mut widest = 0;
        for (i, l) in plan.layers.iter().enumerate() {
            if let Op::Conv(_) = l.op {
                x[i] = vec![0.0; n * l.output.len()];
                widest = widest.max(l.output.len()).max(if l.role == Role::Stem { 0 } else { l.input.len() });
            }
        }
        let narrow = plan.blocks.iter().map(|b| b.input.len().max(b.output.len())).max().unwrap_or(0);
        let stem = &plan.layers[0];
        let cl = plan.layers.iter().find(|l| l.role == Role::Classifier).map_or(0, |l| l.input.c);
        let k = plan.output().c;
        Tape {
            nmax,
            n: 0,
            x,
            bn: vec![BnCoef::default(); plan.layers.len()],
            stem_act: vec![0.0; n * stem.output.len()],
            block_out: plan.blocks.iter().map(|b| vec![0.0; n * b.output.len()]).collect(),
            cols: vec![0.0; n * stem.output.h * stem.output.w * 27],
            s1: vec![0.0; n * widest],
            g1: vec![0.0; n * widest],
            g2: vec![0.0; n * widest],
            gskip: vec![0.0; n * narrow],
            pooled: vec![0.0; n * cl],
            mask: vec![0.0; n * cl],
            hidden: vec![0.0; n * cl],
            dhidden: vec![0.0; n * cl],
            logits: vec![0.0; n * k],
            dlogits: vec![0.0; n * k],
        }
    }

    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        let v = |b: &Vec<f32>| b.len() * 4;
        self.x.iter().map(v).sum::<usize>()
            + self.block_out.iter().map(v).sum::<usize>()
            + [&self.stem_act, &self.cols, &self.s1, &self.g1, &self.g2, &self.gskip]
                .iter()
                .map(|b| v(b))
                .sum::<usize>()
    }

    pub fn batch(&self) -> usize {
        self.n
    }

    /// Logits of the last forward pass, `n x classes`.
    pub fn logits(&self, classes: usize) -> &[f32] {
        &self.logits[..self.n * classes]
    }
}
