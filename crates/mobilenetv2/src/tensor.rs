//! A batch of activations, stored NHWC (channels last).
//!
//! ```
//! use mobilenetv2::plan::Shape;
//! use mobilenetv2::Batch;
//! // Two 1x2 RGB images given in PyTorch's NCHW order...
//! let nchw: Vec<f32> = (0..12).map(|v| v as f32).collect();
//! let b = Batch::from_nchw(&[2, 3, 1, 2], &nchw).unwrap();
//! assert_eq!((b.n, b.shape), (2, Shape::new(1, 2, 3)));
//! // ...are stored channels last: pixel (0, 0) of image 0 holds R, G, B = 0, 2, 4.
//! assert_eq!(&b.image(0)[..3], &[0.0, 2.0, 4.0]);
//! assert_eq!(b.to_nchw(), (vec![2, 3, 1, 2], nchw));
//! ```

use crate::error::{Error, Result};
use crate::plan::Shape;

/// `n` images (or activations) of one shape, NHWC: the engines' input and output type.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Number of images.
    pub n: usize,
    /// The shape of one image: height, width and channels.
    pub shape: Shape,
    /// `n * h * w * c` values, image after image, each NHWC.
    pub data: Vec<f32>,
}

impl Batch {
    /// `n` images of `shape`, all zero.
    pub fn zeros(n: usize, shape: Shape) -> Batch {
        Batch { n, shape, data: vec![0.0; n * shape.len()] }
    }

    /// `n` images of `shape` from NHWC values; fails with [`Error::BatchLen`] unless
    /// `data.len() == n * shape.len()`.
    pub fn new(n: usize, shape: Shape, data: Vec<f32>) -> Result<Batch> {
        if data.len() != n * shape.len() {
            return Err(Error::BatchLen { values: data.len(), images: n, shape: shape.into() });
        }
        Ok(Batch { n, shape, data })
    }

    /// From NCHW values (PyTorch's layout, `.npy` inputs) with dims `[n, c, h, w]`; fails with
    /// [`Error::Input`] unless `dims` has four entries whose product is `values.len()`.
    pub fn from_nchw(dims: &[usize], values: &[f32]) -> Result<Batch> {
        let [n, c, h, w] = match dims {
            [n, c, h, w] => [*n, *c, *h, *w],
            _ => return Err(Error::Input(format!("expected a 4-D NCHW array, got shape {dims:?}"))),
        };
        if values.len() != n * c * h * w {
            return Err(Error::Input(format!("shape {dims:?} needs {} values, got {}", n * c * h * w, values.len())));
        }
        let mut data = vec![0.0; values.len()];
        for b in 0..n {
            for ch in 0..c {
                for p in 0..h * w {
                    data[(b * h * w + p) * c + ch] = values[(b * c + ch) * h * w + p];
                }
            }
        }
        Ok(Batch { n, shape: Shape::new(h, w, c), data })
    }

    /// To NCHW values and their dims `[n, c, h, w]` (the inverse of [`Batch::from_nchw`]).
    pub fn to_nchw(&self) -> (Vec<usize>, Vec<f32>) {
        let Shape { h, w, c } = self.shape;
        let mut out = vec![0.0; self.data.len()];
        for b in 0..self.n {
            for p in 0..h * w {
                for ch in 0..c {
                    out[(b * c + ch) * h * w + p] = self.data[(b * h * w + p) * c + ch];
                }
            }
        }
        (vec![self.n, c, h, w], out)
    }

    /// The values of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.data[i * self.shape.len()..][..self.shape.len()]
    }

    /// Fails on NaN or infinity, naming the first offending position.
    pub fn check_finite(&self) -> Result<()> {
        if let Some(i) = first_non_finite(&self.data) {
            let per = self.shape.len();
            let (b, r) = (i / per, i % per);
            let (y, x, c) = (r / (self.shape.w * self.shape.c), (r / self.shape.c) % self.shape.w, r % self.shape.c);
            return Err(Error::Input(format!(
                "value {} at image {b}, channel {c}, row {y}, column {x} is not finite",
                self.data[i]
            )));
        }
        Ok(())
    }
}

/// Index of the first NaN or infinity. A value is not finite exactly when its exponent bits
/// are all ones; OR-ing that test over a chunk is integer work the compiler vectorises (an
/// early exit per value would not be), and only a failing chunk is searched.
pub fn first_non_finite(v: &[f32]) -> Option<usize> {
    const CHUNK: usize = 256;
    v.chunks(CHUNK).enumerate().find_map(|(c, chunk)| {
        let bad = chunk.iter().fold(0u32, |a, x| a | u32::from(x.to_bits() & 0x7f80_0000 == 0x7f80_0000));
        if bad == 0 {
            None
        } else {
            chunk.iter().position(|x| !x.is_finite()).map(|i| c * CHUNK + i)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchw_round_trip() {
        let v: Vec<f32> = (0..2 * 3 * 4 * 5).map(|x| x as f32).collect();
        let b = Batch::from_nchw(&[2, 3, 4, 5], &v).unwrap();
        assert_eq!(b.shape, Shape::new(4, 5, 3));
        // image 0, channel 1, row 0, col 0 is value 20 in NCHW.
        assert_eq!(b.data[1], 20.0);
        let (d, back) = b.to_nchw();
        assert_eq!(d, vec![2, 3, 4, 5]);
        assert_eq!(back, v);
        assert!(Batch::from_nchw(&[2, 3, 4], &v).is_err());
    }

    #[test]
    fn non_finite_search() {
        let mut v = vec![1.5f32; 1000];
        assert_eq!(first_non_finite(&v), None);
        v[777] = f32::NEG_INFINITY;
        v[900] = f32::NAN;
        assert_eq!(first_non_finite(&v), Some(777));
        assert_eq!(first_non_finite(&[f32::MAX, -f32::MAX]), None);
    }

    #[test]
    fn nan_is_reported_with_position() {
        let mut b = Batch::zeros(1, Shape::new(2, 2, 3));
        b.data[5] = f32::NAN;
        let e = b.check_finite().unwrap_err().to_string();
        assert!(e.contains("channel 2, row 0, column 1"), "{e}");
    }
}
