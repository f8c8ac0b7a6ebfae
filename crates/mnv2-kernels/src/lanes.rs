//! Lane masks of the AVX-512 kernels.

/// The mask of the first `n` of 16 lanes (all of them for `n >= 16`): tails of channel rows.
#[inline(always)]
pub(crate) fn mask16(n: usize) -> u16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as u16
    }
}
