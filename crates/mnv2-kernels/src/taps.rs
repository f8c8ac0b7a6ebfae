//! Weights of a convolution whose kernel walks channel tiles of a few taps: the depthwise 3x3
//! (9 taps per channel) and the stem (27 taps: 3x3 over 3 image channels). One packing serves
//! both: `[TAPS][c_pad]` (taps row-major, channels padded to [`CTILE`]) and the bias `[c_pad]`.

use crate::aligned::AlignedVec;

/// Channels per packed tile (the widest vector); narrower ISAs read half tiles.
pub const CTILE: usize = 16;

/// Tap-major weights and bias packed for one kernel `K` of a registry.
#[derive(Clone, Debug)]
pub struct PackedTaps<K: 'static, const TAPS: usize> {
    /// Output channels.
    pub c: usize,
    pub(crate) c_pad: usize,
    pub(crate) weights: AlignedVec,
    pub(crate) bias: AlignedVec,
    /// Packings of integer kernels (the int8 depthwise): per channel, the real value of one
    /// unit of the integer sum (weight scale times input scale), `[c_pad]`; empty otherwise.
    pub(crate) scale: AlignedVec,
    /// The kernel, granted by the tier the weights were packed with.
    pub(crate) kernel: &'static K,
}

impl<K: 'static, const TAPS: usize> PackedTaps<K, TAPS> {
    /// `weights` are `[TAPS][c]`, `bias` is `[c]`.
    pub(crate) fn pack(kernel: &'static K, weights: &[f32], c: usize, bias: &[f32]) -> PackedTaps<K, TAPS> {
        assert_eq!(weights.len(), TAPS * c, "{TAPS} taps of {c} channels");
        assert_eq!(bias.len(), c, "one bias per channel");
        let c_pad = c.next_multiple_of(CTILE);
        let mut w = AlignedVec::zeros(TAPS * c_pad);
        for t in 0..TAPS {
            w[t * c_pad..t * c_pad + c].copy_from_slice(&weights[t * c..(t + 1) * c]);
        }
        let mut b = AlignedVec::zeros(c_pad);
        b[..c].copy_from_slice(bias);
        PackedTaps { c, c_pad, weights: w, bias: b, scale: AlignedVec::zeros(0), kernel }
    }
}
