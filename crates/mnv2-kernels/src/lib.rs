//! Compute kernels for MobileNetV2.
//!
//! This crate knows nothing of networks, files or threads: it takes slices and geometry.
//! Every fast kernel has a slow twin in [`reference`] that tests compare it against, and is
//! tested on every instruction set the host has ([`isa::available`]).

pub mod aligned;
pub mod dwconv;
pub mod gemm;
pub mod isa;
#[cfg(target_arch = "x86_64")]
mod lanes;
pub mod qgemm;
pub mod reference;
pub mod stem;
#[cfg(test)]
mod test_vals;
pub mod train;

pub use aligned::AlignedVec;
pub use isa::Isa;

/// Clamp applied in a kernel's epilogue: ReLU6 is `[0, 6]`, a linear layer is unbounded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MinMax {
    pub min: f32,
    pub max: f32,
}

impl MinMax {
    pub const NONE: MinMax = MinMax { min: f32::NEG_INFINITY, max: f32::INFINITY };
    pub const RELU6: MinMax = MinMax { min: 0.0, max: 6.0 };

    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        v.max(self.min).min(self.max)
    }
}

/// Geometry of a 2-D convolution over one NHWC image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub in_h: usize,
    pub in_w: usize,
    pub in_c: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub out_c: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub groups: usize,
}
