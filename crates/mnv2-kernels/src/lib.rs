//! Compute kernels for MobileNetV2.
//!
//! This crate knows nothing of networks or files: it takes slices and geometry. Each kernel
//! family lists its kernels in a registry, best first (`gemm::KERNELS`, `dwconv::KERNELS`,
//! `dwconv::KERNELS_U8`, `dwconv::KERNELS_BF16`, `stem::KERNELS`, `stem::KERNELS_BF16`,
//! `qgemm::KERNELS`, `bf16gemm::KERNELS`): an entry's name is the identity
//! of its code, and its [`isa::Needs`] says when it may run. Callers resolve an [`isa::Tier`]
//! once (a proof that the CPU runs it) and pass it to every kernel they call. The tests run
//! every registry entry the host can run against a slow twin ([`mod@reference`], or the scalar
//! kernel), and print `SKIPPED <kernel> (host lacks <isa>)` for the others.
//!
//! It is also the one crate of the project with `unsafe` code: besides the kernels, the
//! execution primitives of the engine ([`exec`]: the spin pool, and buffers that threads
//! write in disjoint rows between barriers) live here, behind safe APIs.

#![warn(missing_docs)]

pub mod aligned;
#[cfg(target_arch = "x86_64")]
mod amx;
pub mod bf16gemm;
pub mod dwconv;
pub mod exec;
pub mod gemm;
pub mod isa;
#[cfg(target_arch = "x86_64")]
mod lanes;
pub mod qgemm;
pub mod reference;
pub mod resize;
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
    /// Lower bound.
    pub min: f32,
    /// Upper bound.
    pub max: f32,
}

impl MinMax {
    /// No clamp (a linear layer).
    pub const NONE: MinMax = MinMax { min: f32::NEG_INFINITY, max: f32::INFINITY };
    /// ReLU6.
    pub const RELU6: MinMax = MinMax { min: 0.0, max: 6.0 };

    /// `v` clamped to `[min, max]`.
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        v.max(self.min).min(self.max)
    }
}

/// Geometry of a 2-D convolution over one NHWC image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Input channels.
    pub in_c: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Output channels.
    pub out_c: usize,
    /// Kernel size (square).
    pub kernel: usize,
    /// Stride along both axes.
    pub stride: usize,
    /// Dilation along both axes.
    pub dilation: usize,
    /// Zero rows above the input (those below follow from the output size).
    pub pad_top: usize,
    /// Zero columns left of the input.
    pub pad_left: usize,
    /// Channel groups (`in_c` for a depthwise convolution).
    pub groups: usize,
}
