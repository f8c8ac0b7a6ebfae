//! From an SSD's raw outputs to detections: scores from the class logits, boxes decoded
//! against the anchors, then multi-class NMS (see [`super::nms`]).

use super::boxcoder::BoxCoder;
use super::nms::{self, Detection, Nms};

/// How logits become scores (TF's `score_converter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ScoreFn {
    /// `1 / (1 + exp(-x))` per logit (SSDLite's).
    Sigmoid,
    /// Softmax over each anchor's logits.
    Softmax,
    /// The logits themselves.
    Identity,
}

/// The post-processing of a TF Object Detection API SSD.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostProcess {
    /// Decodes box encodings against the anchors.
    pub coder: BoxCoder,
    /// How logits become scores.
    pub score_fn: ScoreFn,
    /// Logits are divided by this first (`logit_scale`).
    pub logit_scale: f32,
    /// Logit column 0 is the background class (dropped after scoring).
    pub background: bool,
    /// The multi-class non-maximum suppression.
    pub nms: Nms,
    /// Boxes are clipped to this (normalised ymin, xmin, ymax, xmax).
    pub window: [f32; 4],
}

impl Default for PostProcess {
    /// `ssdlite_mobilenet_v2_coco.config`.
    fn default() -> Self {
        PostProcess {
            coder: BoxCoder::default(),
            score_fn: ScoreFn::Sigmoid,
            logit_scale: 1.0,
            background: true,
            nms: Nms::default(),
            window: [0.0, 0.0, 1.0, 1.0],
        }
    }
}

/// The logistic function, computed in f64 and rounded once.
pub fn sigmoid(x: f32) -> f32 {
    (1.0 / (1.0 + (-f64::from(x)).exp())) as f32
}

impl PostProcess {
    /// Foreground scores, `anchors x (logits_per_anchor - background)`, anchor-major.
    pub fn scores(&self, logits: &[f32], logits_per_anchor: usize) -> Vec<f32> {
        assert!(logits_per_anchor > usize::from(self.background) && logits.len().is_multiple_of(logits_per_anchor));
        let skip = usize::from(self.background);
        let mut out = Vec::with_capacity(logits.len() / logits_per_anchor * (logits_per_anchor - skip));
        let mut row = vec![0f32; logits_per_anchor];
        for l in logits.chunks_exact(logits_per_anchor) {
            for (r, &v) in row.iter_mut().zip(l) {
                *r = v / self.logit_scale;
            }
            match self.score_fn {
                ScoreFn::Sigmoid => row.iter_mut().for_each(|v| *v = sigmoid(*v)),
                ScoreFn::Identity => {}
                ScoreFn::Softmax => {
                    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let e: Vec<f64> = row.iter().map(|&v| f64::from(v - m).exp()).collect();
                    let s: f64 = e.iter().sum();
                    row.iter_mut().zip(&e).for_each(|(v, &e)| *v = (e / s) as f32);
                }
            }
            out.extend_from_slice(&row[skip..]);
        }
        out
    }

    /// Detections from the raw outputs of all anchors: `codes` (ty, tx, th, tw) per anchor and
    /// `logits` (`logits_per_anchor` per anchor), both anchor-major.
    pub fn run(&self, anchors: &[[f32; 4]], codes: &[f32], logits: &[f32], logits_per_anchor: usize) -> Vec<Detection> {
        assert_eq!(logits.len(), anchors.len() * logits_per_anchor, "logits for every anchor");
        let boxes = self.coder.decode_all(anchors, codes);
        let scores = self.scores(logits, logits_per_anchor);
        let classes = logits_per_anchor - usize::from(self.background);
        nms::multiclass(&boxes, &scores, classes, &self.nms, self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_drop_the_background() {
        let p = PostProcess::default();
        let s = p.scores(&[0.0, 0.0, 3.0, -2.0], 2);
        assert_eq!(s, vec![0.5, sigmoid(-2.0)]);
        let soft = PostProcess { score_fn: ScoreFn::Softmax, ..p.clone() }.scores(&[0.0, 0.0], 2);
        assert_eq!(soft, vec![0.5]);
        let scaled = PostProcess { logit_scale: 2.0, ..p }.scores(&[0.0, 4.0], 2);
        assert_eq!(scaled, vec![sigmoid(2.0)]);
    }
}
