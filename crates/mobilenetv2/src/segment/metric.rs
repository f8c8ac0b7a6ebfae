//! The semantic segmentation metric: a confusion matrix over pixels, and from it per-class IoU,
//! mean IoU and pixel accuracy, as PASCAL VOC and TF DeepLab report them.
//!
//! Conventions:
//! * rows are the ground-truth class, columns the predicted class; pixels whose ground truth
//!   is [`IGNORE`] (255) are not counted at all, whatever was predicted;
//! * IoU of class c = TP / (TP + FP + FN) = `m[c][c] / (row_c + col_c - m[c][c])`;
//! * a class absent from both the ground truth and the prediction (TP + FP + FN = 0) has no IoU
//!   (`None`) and is **left out of the mean**; every other class counts, an IoU of 0 included;
//! * pixel accuracy = trace / total counted pixels.
//!
//! ```
//! use mobilenetv2::segment::metric::ConfusionMatrix;
//! let mut m = ConfusionMatrix::new(3);
//! m.add(&[0, 0, 1, 255, 1], &[0, 1, 1, 2, 1]).unwrap(); // the 255 pixel is ignored
//! let s = m.scores();
//! assert_eq!(s.pixel_accuracy, 0.75);
//! assert_eq!(s.iou, [Some(0.5), Some(2.0 / 3.0), None]); // class 2 is absent from both
//! assert!((s.mean_iou - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
//! ```

use serde::Serialize;

use crate::error::{Error, Result};

/// The ground-truth label of pixels that are not scored (VOC's object borders, padding).
pub const IGNORE: u8 = 255;

/// Pixel counts by (ground truth, prediction) class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
}

/// The numbers of a [`ConfusionMatrix`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scores {
    /// Mean of the IoUs that exist (NaN if no class has one: nothing was counted).
    pub mean_iou: f64,
    /// Per class, TP / (TP + FP + FN), or `None` when the class is absent from both sides.
    pub iou: Vec<Option<f64>>,
    /// Correct pixels over counted pixels (NaN if none was counted).
    pub pixel_accuracy: f64,
    /// Pixels counted (ground truth not [`IGNORE`]).
    pub pixels: u64,
}

impl ConfusionMatrix {
    /// An empty matrix for `classes` classes (at most 255: labels are bytes and 255 is [`IGNORE`]).
    pub fn new(classes: usize) -> ConfusionMatrix {
        let classes = classes.min(255);
        ConfusionMatrix { classes, counts: vec![0; classes * classes] }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The count of pixels of ground truth `truth` predicted as `pred`.
    pub fn get(&self, truth: usize, pred: usize) -> u64 {
        self.counts[truth * self.classes + pred]
    }

    /// The matrix as rows (ground truth) of columns (prediction).
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts.chunks_exact(self.classes.max(1)).map(<[u64]>::to_vec).collect()
    }

    /// Counts one image's pixels: `truth` and `pred` hold a class per pixel in the same order.
    /// Errors (nothing counted) if the lengths differ, or a label is not below the number of
    /// classes (a ground truth of [`IGNORE`] excepted).
    pub fn add(&mut self, truth: &[u8], pred: &[u8]) -> Result<()> {
        if truth.len() != pred.len() {
            return Err(Error::Input(format!("ground truth has {} pixels, prediction {}", truth.len(), pred.len())));
        }
        let k = self.classes;
        if let Some(&t) = truth.iter().find(|&&t| t != IGNORE && t as usize >= k) {
            return Err(Error::Input(format!("ground-truth label {t} is not below the {k} classes (nor 255, ignore)")));
        }
        if let Some(&p) = pred.iter().find(|&&p| p as usize >= k) {
            return Err(Error::Input(format!("predicted label {p} is not below the {k} classes")));
        }
        for (&t, &p) in truth.iter().zip(pred) {
            if t != IGNORE {
                self.counts[t as usize * k + p as usize] += 1;
            }
        }
        Ok(())
    }

    /// Adds another matrix of the same classes (e.g. from another thread).
    pub fn merge(&mut self, other: &ConfusionMatrix) -> Result<()> {
        if other.classes != self.classes {
            return Err(Error::Input(format!(
                "merging confusion matrices of {} and {} classes",
                self.classes, other.classes
            )));
        }
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// IoU per class, mean IoU and pixel accuracy (see the module documentation).
    pub fn scores(&self) -> Scores {
        let k = self.classes;
        let mut iou = Vec::with_capacity(k);
        let (mut trace, mut total) = (0u64, 0u64);
        for c in 0..k {
            let tp = self.get(c, c);
            let row: u64 = (0..k).map(|j| self.get(c, j)).sum();
            let col: u64 = (0..k).map(|i| self.get(i, c)).sum();
            let union = row + col - tp;
            iou.push((union > 0).then(|| tp as f64 / union as f64));
            trace += tp;
            total += row;
        }
        let present: Vec<f64> = iou.iter().flatten().copied().collect();
        let mean_iou = if present.is_empty() { f64::NAN } else { present.iter().sum::<f64>() / present.len() as f64 };
        let pixel_accuracy = if total == 0 { f64::NAN } else { trace as f64 / total as f64 };
        Scores { mean_iou, iou, pixel_accuracy, pixels: total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_labels_and_lengths_are_errors_and_count_nothing() {
        let mut m = ConfusionMatrix::new(2);
        assert!(m.add(&[0, 1], &[0]).unwrap_err().to_string().contains("2 pixels, prediction 1"));
        assert!(m.add(&[0, 2], &[0, 1]).unwrap_err().to_string().contains("label 2"));
        assert!(m.add(&[0, 1], &[0, 3]).unwrap_err().to_string().contains("predicted label 3"));
        assert_eq!(m.scores().pixels, 0);
        assert!(m.scores().mean_iou.is_nan());
        m.add(&[255, 255], &[1, 1]).unwrap();
        assert_eq!(m.scores().pixels, 0);
    }

    #[test]
    fn merge_adds() {
        let (mut a, mut b) = (ConfusionMatrix::new(2), ConfusionMatrix::new(2));
        a.add(&[0, 1], &[0, 0]).unwrap();
        b.add(&[1], &[1]).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.rows(), [[1, 0], [1, 1]]);
        assert!(a.merge(&ConfusionMatrix::new(3)).is_err());
    }
}
