//! Kernels for training: matrix products with strided operands (the pointwise convolutions,
//! their two gradients and the classifier), BatchNorm in training mode fused with ReLU6 (forward
//! and backward), and the depthwise convolution's two gradients.
//!
//! Like the inference kernels they take slices and geometry and know nothing of networks or
//! threads: the caller splits rows over threads and reduces per-channel partial sums itself.
//! Element-wise loops are written once as plain Rust over a channel row and compiled for the
//! tier the caller holds (`on_tier`: portable, AVX2 or AVX-512), so the autovectoriser emits
//! that tier's vectors.

pub mod bn;
pub mod dw;
#[cfg(target_arch = "x86_64")]
mod dw_avx512;
pub mod matmul;
pub mod softmax;
pub mod stream;

use crate::isa::Tier;

/// A loop to compile for each tier: its whole body is inlined into [`on_tier`]'s
/// `#[target_feature]` functions.
pub(crate) trait TierOp {
    /// The loop (`#[inline(always)]` in every implementation).
    fn run(self);
}

/// Runs `op` compiled for `tier`'s instructions.
#[inline(always)]
pub(crate) fn on_tier<O: TierOp>(tier: Tier, op: O) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ.
    unsafe fn avx512<O: TierOp>(op: O) {
        op.run()
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    /// # Safety
    /// The CPU has AVX2 and FMA.
    unsafe fn avx2<O: TierOp>(op: O) {
        op.run()
    }
    match tier {
        // SAFETY: the token proves the CPU has AVX-512.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512(_) => unsafe { avx512(op) },
        // SAFETY: the token proves the CPU has AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2(_) => unsafe { avx2(op) },
        _ => op.run(),
    }
}
