//! The names of the network's tensors: which tensors a weight file must hold for a plan,
//! with torchvision's names and shapes, and the lookup every other module uses to name a
//! layer's weight, bias or BatchNorm statistic. Nothing outside this module spells a suffix
//! such as `.running_mean`.
//!
//! The order of [`expected`] is torchvision's `state_dict()` order, so error messages name the
//! first tensor that a reader of the file would meet.

use std::collections::BTreeMap;

use crate::plan::{Conv, Layer, Op, Plan};

/// A network's parameters and BatchNorm statistics by torchvision name, in PyTorch layout
/// (OIHW convolution weights, `[out, in]` classifier).
pub type Params = BTreeMap<String, Vec<f32>>;

/// One of the four BatchNorm tensors of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnParam {
    /// gamma (`.weight`).
    Weight,
    /// beta (`.bias`).
    Bias,
    /// `.running_mean`.
    Mean,
    /// `.running_var`.
    Var,
}

impl BnParam {
    /// The four, in torchvision's state-dict order.
    pub const ALL: [BnParam; 4] = [BnParam::Weight, BnParam::Bias, BnParam::Mean, BnParam::Var];
}

/// The weight of a convolution or linear layer (`features.0.0.weight`).
pub fn weight(layer: &Layer) -> String {
    format!("{}.weight", layer.name)
}

/// The bias of a linear layer, of a convolution without BatchNorm (DeepLab's logits, SSD's predictors), or of
/// an int8 file's convolution (BatchNorm folded).
pub fn bias(layer: &Layer) -> String {
    format!("{}.bias", layer.name)
}

/// The per-output-channel scale of an int8 file's weight.
pub fn weight_scale(layer: &Layer) -> String {
    format!("{}.weight_scale", layer.name)
}

/// A BatchNorm tensor of a convolution (`features.0.1.running_mean`). Panics for a
/// convolution without BatchNorm (`conv.bn` is `None`): asking is a bug.
pub fn bn(conv: &Conv, param: BnParam) -> String {
    let suffix = match param {
        BnParam::Weight => "weight",
        BnParam::Bias => "bias",
        BnParam::Mean => "running_mean",
        BnParam::Var => "running_var",
    };
    let module = conv.bn.as_deref().expect("names::bn on a convolution without BatchNorm");
    format!("{module}.{suffix}")
}

/// The names of every tensor a layer owns in a float file (weight, BatchNorm or bias).
pub fn of_layer(layer: &Layer) -> Vec<String> {
    match &layer.op {
        Op::Conv(c) if c.bn.is_none() => vec![weight(layer), bias(layer)],
        Op::Conv(c) => std::iter::once(weight(layer)).chain(BnParam::ALL.map(|p| bn(c, p))).collect(),
        Op::Linear => vec![weight(layer), bias(layer)],
        Op::GlobalAvgPool | Op::Dropout { .. } | Op::Concat { .. } | Op::Upsample { .. } => Vec::new(),
    }
}

/// A parameter by name. Panics if it is missing: a plan and its parameters disagreeing is a
/// bug (every loader checks files against [`expected`]), not an input error.
pub fn param<'a>(params: &'a Params, name: &str) -> &'a [f32] {
    params.get(name).unwrap_or_else(|| panic!("no parameter `{name}`: plan and params disagree"))
}

/// What a tensor is to the layer that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A convolution's weight (OIHW).
    ConvWeight,
    /// BatchNorm's gamma.
    BnWeight,
    /// BatchNorm's beta.
    BnBias,
    /// BatchNorm's running mean.
    BnMean,
    /// BatchNorm's running variance.
    BnVar,
    /// The classifier's weight, `[out, in]`.
    LinearWeight,
    /// The classifier's bias.
    LinearBias,
    /// The bias of a convolution without BatchNorm (DeepLab's logits, SSD's predictors).
    ConvBias,
}

impl Kind {
    /// Trained by gradient descent (as opposed to BatchNorm's running statistics).
    pub fn trainable(self) -> bool {
        !matches!(self, Kind::BnMean | Kind::BnVar)
    }
}

/// One tensor a float weight file must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// torchvision name.
    pub name: String,
    /// PyTorch shape (OIHW for convolutions, `[out, in]` for the classifier).
    pub shape: Vec<usize>,
    /// What it is to its layer.
    pub kind: Kind,
    /// Index of the plan layer that uses it.
    pub layer: usize,
}

/// BatchNorm's step counter: present in torchvision state dicts, not needed for inference.
pub fn is_bn_counter(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
}

/// Every tensor a float weight file must hold for `plan`, in state-dict order.
pub fn expected(plan: &Plan) -> Vec<Expected> {
    let mut out = Vec::new();
    for (i, layer) in plan.layers.iter().enumerate() {
        let mut push = |name: String, shape: Vec<usize>, kind| out.push(Expected { name, shape, kind, layer: i });
        match &layer.op {
            Op::Conv(c) => {
                let o = layer.output.c;
                push(weight(layer), vec![o, layer.input.c / c.groups, c.kernel, c.kernel], Kind::ConvWeight);
                if c.bn.is_none() {
                    push(bias(layer), vec![o], Kind::ConvBias);
                    continue;
                }
                push(bn(c, BnParam::Weight), vec![o], Kind::BnWeight);
                push(bn(c, BnParam::Bias), vec![o], Kind::BnBias);
                push(bn(c, BnParam::Mean), vec![o], Kind::BnMean);
                push(bn(c, BnParam::Var), vec![o], Kind::BnVar);
            }
            Op::Linear => {
                push(weight(layer), vec![layer.output.c, layer.input.c], Kind::LinearWeight);
                push(bias(layer), vec![layer.output.c], Kind::LinearBias);
            }
            Op::GlobalAvgPool | Op::Dropout { .. } | Op::Concat { .. } | Op::Upsample { .. } => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;

    #[test]
    fn torchvision_state_dict_size() {
        // 314 tensors in torchvision's state dict = 262 here + 52 num_batches_tracked.
        let e = expected(&Plan::new(&Spec::default()).unwrap());
        assert_eq!(e.len(), 262);
        assert_eq!(e[0].name, "features.0.0.weight");
        assert_eq!(e[0].shape, vec![32, 3, 3, 3]);
        let values: usize = e.iter().map(|x| x.shape.iter().product::<usize>()).sum();
        assert_eq!(values, 3_538_984);
        assert_eq!(e.last().unwrap().name, "classifier.1.bias");
    }
}
