//! Kernels for training: matrix products with strided operands (the pointwise convolutions,
//! their two gradients and the classifier), BatchNorm in training mode fused with ReLU6 (forward
//! and backward), and the depthwise convolution's two gradients.
//!
//! Like the inference kernels they take slices and geometry and know nothing of networks or
//! threads: the caller splits rows over threads and reduces per-channel partial sums itself.
//! Element-wise loops are written once as plain Rust over a channel row and compiled three
//! times (portable, AVX2 and AVX-512, see [`dispatch!`]), so the autovectoriser emits the widest
//! vectors the CPU has; [`crate::isa::best`] picks one at run time.

pub mod bn;
pub mod dw;
#[cfg(target_arch = "x86_64")]
mod dw_avx512;
pub mod matmul;
pub mod stream;

/// Compiles an `#[inline(always)]` body three times and picks the widest the CPU allows.
///
/// `dispatch!(impl_fn(args...))` calls `impl_fn` inside a `#[target_feature]` wrapper for
/// AVX-512 or AVX2 when [`crate::isa::best`] allows it, else directly.
macro_rules! dispatch {
    ($name:ident, $imp:ident, ($($arg:ident : $ty:ty),* $(,)?)) => {
        #[allow(clippy::too_many_arguments)]
        #[inline]
        pub(crate) fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                $imp($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                $imp($($arg),*)
            }
            match $crate::isa::best() {
                // SAFETY: `best` only returns tiers this CPU supports.
                #[cfg(target_arch = "x86_64")]
                $crate::Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => $imp($($arg),*),
            }
        }
    };
}
pub(crate) use dispatch;
