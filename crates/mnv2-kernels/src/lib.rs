//! Compute kernels for MobileNetV2.
//!
//! This crate knows nothing of networks or files: it takes slices and geometry. Each kernel
//! family lists its kernels in a registry, best first (`gemm::KERNELS`, `dwconv::KERNELS`,
//! `dwconv::KERNELS_U8`, `stem::KERNELS`, `qgemm::KERNELS`): an entry's name is the identity
//! of its code, and its [`isa::Needs`] says when it may run. Callers resolve an [`isa::Tier`]
//! once (a proof that the CPU runs it) and pass it to every kernel they call. The tests run
//! every registry entry the host can run against a slow twin ([`reference`], or the scalar
//! kernel), and print `SKIPPED <kernel> (host lacks <isa>)` for the others.
//!
//! It is also the one crate of the project with `unsafe` code: besides the kernels, the
//! execution primitives of the engine ([`exec`]: the spin pool, and buffers that threads
//! write in disjoint rows between barriers) live here, behind safe APIs.

pub mod aligned;
pub mod dwconv;
pub mod exec;
pub mod gemm;
pub mod isa;
#[cfg(target_arch = "x86_64")]
mod lanes;
pub mod qgemm;
pub mod reference;
pub mod stem;
mod taps;
#[cfg(test)]
mod test_vals;
pub mod train;

pub use aligned::AlignedVec;
pub use isa::{Isa, Tier};
pub use taps::PackedTaps;

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
