//! Which tensors a weight file must hold for a plan, with torchvision's names and shapes.
//!
//! The order is torchvision's `state_dict()` order, so error messages name the first tensor
//! that a reader of the file would meet.

use crate::plan::{Op, Plan};

/// What a tensor is to the layer that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ConvWeight,
    BnWeight,
    BnBias,
    BnMean,
    BnVar,
    LinearWeight,
    LinearBias,
}

impl Kind {
    /// Trained by gradient descent (as opposed to BatchNorm's running statistics).
    pub fn trainable(self) -> bool {
        !matches!(self, Kind::BnMean | Kind::BnVar)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub name: String,
    /// PyTorch shape (OIHW for convolutions, `[out, in]` for the classifier).
    pub shape: Vec<usize>,
    pub kind: Kind,
    /// Index of the plan layer that uses it.
    pub layer: usize,
}

/// BatchNorm's step counter: present in torchvision state dicts, not needed for inference.
pub fn is_bn_counter(name: &str) -> bool {
    name.ends_with(".num_batches_tracked")
}

pub fn expected(plan: &Plan) -> Vec<Expected> {
    let mut out = Vec::new();
    for (i, layer) in plan.layers.iter().enumerate() {
        let mut push = |name: String, shape: Vec<usize>, kind| out.push(Expected { name, shape, kind, layer: i });
        match &layer.op {
            Op::Conv(c) => {
                let o = layer.output.c;
                push(
                    format!("{}.weight", layer.name),
                    vec![o, layer.input.c / c.groups, c.kernel, c.kernel],
                    Kind::ConvWeight,
                );
                push(format!("{}.weight", c.bn), vec![o], Kind::BnWeight);
                push(format!("{}.bias", c.bn), vec![o], Kind::BnBias);
                push(format!("{}.running_mean", c.bn), vec![o], Kind::BnMean);
                push(format!("{}.running_var", c.bn), vec![o], Kind::BnVar);
            }
            Op::Linear => {
                push(format!("{}.weight", layer.name), vec![layer.output.c, layer.input.c], Kind::LinearWeight);
                push(format!("{}.bias", layer.name), vec![layer.output.c], Kind::LinearBias);
            }
            Op::GlobalAvgPool | Op::Dropout { .. } => {}
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
