//! Weight layouts and the transposes between them, in one place.
//!
//! Files hold PyTorch's layouts: convolutions `OIHW` (`[out][in / groups][kh][kw]`), the
//! classifier `[out][in]`. The NHWC kernels read `HWIO` (`[kh][kw][in / groups][out]`, so the
//! output channels of one tap are contiguous), which for a depthwise conv (`in / groups` = 1) is
//! `[tap][channel]`, and for the classifier `[in][out]`. Every transpose is exact (a permutation),
//! so each pair round-trips bit for bit.

/// The dimensions of a convolution weight: `o` outputs, `i` inputs per group, `k` x `k` taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDims {
    /// Output channels.
    pub o: usize,
    /// Input channels per group (1 for a depthwise conv).
    pub i: usize,
    /// Kernel size (square).
    pub k: usize,
}

impl ConvDims {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.o * self.i * self.k * self.k
    }

    /// Whether the weight holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn oihw(&self, o: usize, i: usize, tap: usize) -> usize {
        (o * self.i + i) * self.k * self.k + tap
    }

    fn hwio(&self, o: usize, i: usize, tap: usize) -> usize {
        (tap * self.i + i) * self.o + o
    }
}

/// `OIHW` (PyTorch) to `HWIO` (the NHWC kernels). With `k` = 1 and `i` = inputs this is also
/// `[out][in]` to `[in][out]`, the classifier's transpose.
pub fn oihw_to_hwio<T: Copy + Default>(w: &[T], d: ConvDims) -> Vec<T> {
    assert_eq!(w.len(), d.len(), "weights of {d:?}");
    let mut out = vec![T::default(); w.len()];
    for o in 0..d.o {
        for i in 0..d.i {
            for t in 0..d.k * d.k {
                out[d.hwio(o, i, t)] = w[d.oihw(o, i, t)];
            }
        }
    }
    out
}

/// `HWIO` to `OIHW`: the inverse of [`oihw_to_hwio`].
pub fn hwio_to_oihw<T: Copy + Default>(w: &[T], d: ConvDims) -> Vec<T> {
    assert_eq!(w.len(), d.len(), "weights of {d:?}");
    let mut out = vec![T::default(); w.len()];
    for o in 0..d.o {
        for i in 0..d.i {
            for t in 0..d.k * d.k {
                out[d.oihw(o, i, t)] = w[d.hwio(o, i, t)];
            }
        }
    }
    out
}

/// `OHWI` (TFLite's convolution filters) to `OIHW`.
pub fn ohwi_to_oihw<T: Copy + Default>(w: &[T], d: ConvDims) -> Vec<T> {
    assert_eq!(w.len(), d.len(), "weights of {d:?}");
    let mut out = vec![T::default(); w.len()];
    for o in 0..d.o {
        for i in 0..d.i {
            for t in 0..d.k * d.k {
                out[d.oihw(o, i, t)] = w[(o * d.k * d.k + t) * d.i + i];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_round_trip_and_put_each_value_where_the_layout_says() {
        for d in [ConvDims { o: 5, i: 3, k: 3 }, ConvDims { o: 7, i: 1, k: 3 }, ConvDims { o: 4, i: 6, k: 1 }] {
            let w: Vec<u32> = (0..d.len() as u32).collect();
            let h = oihw_to_hwio(&w, d);
            assert_eq!(hwio_to_oihw(&h, d), w);
            // OIHW value (o, i, ky, kx) lands at HWIO (ky, kx, i, o).
            let (o, i, ky, kx) = (d.o - 1, d.i - 1, d.k - 1, 0);
            let src = ((o * d.i + i) * d.k + ky) * d.k + kx;
            let dst = ((ky * d.k + kx) * d.i + i) * d.o + o;
            assert_eq!(h[dst], w[src]);
            // OHWI value (o, ky, kx, i) lands at OIHW (o, i, ky, kx).
            let ohwi_src = ((o * d.k + ky) * d.k + kx) * d.i + i;
            assert_eq!(ohwi_to_oihw(&w, d)[src], w[ohwi_src]);
        }
    }
}
