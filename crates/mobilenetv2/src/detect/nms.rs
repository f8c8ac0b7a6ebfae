//! Non-maximum suppression as TF Object Detection API's `multiclass_non_max_suppression` runs it
//! on an SSD's output (one box per anchor shared by all classes):
//!
//! 1. per class, TF's `NonMaxSuppressionV3`: the boxes scoring strictly above the score
//!    threshold, best first (ties: lower anchor index first), are kept greedily unless their IoU
//!    with a box already kept is strictly above the IoU threshold, up to `max_per_class`;
//! 2. the classes' survivors are concatenated in class order and stably sorted by score;
//! 3. each box is clipped to the window and dropped if its clipped area is not positive;
//! 4. the first `max_total` remain.
//!
//! IoU is TF's: corners ordered per axis first, 0 when either box has no area.

/// One detection: a box in normalised (ymin, xmin, ymax, xmax), its score and its class
/// (0-based among the foreground classes; TF's `detection_classes` is this + 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// The box, normalised (ymin, xmin, ymax, xmax).
    pub bbox: [f32; 4],
    /// Its score for `class`.
    pub score: f32,
    /// Foreground class, 0-based.
    pub class: usize,
}

/// The NMS settings (TF's `batch_non_max_suppression` message).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nms {
    /// Boxes of a class overlapping a kept one by more than this IoU are dropped.
    pub iou_threshold: f32,
    /// Scores at or below this are dropped first (`-inf` for `NonMaxSuppressionV2`, which has
    /// none; stored as the string `"-inf"` in JSON, which has no infinities).
    #[serde(with = "non_finite")]
    pub score_threshold: f32,
    /// Most detections kept per class.
    pub max_per_class: usize,
    /// Most detections kept in all.
    pub max_total: usize,
}

/// serde for an f32 that may be infinite: finite values as numbers, `"inf"`/`"-inf"` as strings.
mod non_finite {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            f32::INFINITY => s.serialize_str("inf"),
            f32::NEG_INFINITY => s.serialize_str("-inf"),
            v => s.serialize_f32(v),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum F {
            N(f32),
            S(String),
        }
        match F::deserialize(d)? {
            F::N(v) => Ok(v),
            F::S(s) if s == "inf" => Ok(f32::INFINITY),
            F::S(s) if s == "-inf" => Ok(f32::NEG_INFINITY),
            F::S(s) => Err(serde::de::Error::custom(format!("`{s}` is not a number, `inf` or `-inf`"))),
        }
    }
}

impl Default for Nms {
    /// `ssdlite_mobilenet_v2_coco.config`: IoU 0.6, score 1e-8, 100 per class, 100 in all.
    fn default() -> Self {
        Nms { iou_threshold: 0.6, score_threshold: 1e-8, max_per_class: 100, max_total: 100 }
    }
}

/// TF's intersection over union of two boxes.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let order = |b: [f32; 4]| [b[0].min(b[2]), b[1].min(b[3]), b[0].max(b[2]), b[1].max(b[3])];
    let (a, b) = (order(a), order(b));
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    if area_a <= 0.0 || area_b <= 0.0 {
        return 0.0;
    }
    let ih = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iw = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ih * iw;
    inter / (area_a + area_b - inter)
}

/// Greedy NMS over one class: the indices kept, best first.
pub fn nms_indices(
    boxes: &[[f32; 4]],
    scores: &[f32],
    iou_threshold: f32,
    score_threshold: f32,
    max: usize,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] > score_threshold).collect();
    // Stable: equal scores keep the lower index first.
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    let mut kept: Vec<usize> = Vec::with_capacity(max.min(order.len()));
    for i in order {
        if kept.len() >= max {
            break;
        }
        // Newest first: overlapping boxes tend to have close scores.
        if kept.iter().rev().all(|&k| iou(boxes[i], boxes[k]) <= iou_threshold) {
            kept.push(i);
        }
    }
    kept
}

/// Clips a box to `window` (ymin, xmin, ymax, xmax).
pub fn clip(b: [f32; 4], window: [f32; 4]) -> [f32; 4] {
    let c = |v: f32, lo: f32, hi: f32| v.min(hi).max(lo);
    [
        c(b[0], window[0], window[2]),
        c(b[1], window[1], window[3]),
        c(b[2], window[0], window[2]),
        c(b[3], window[1], window[3]),
    ]
}

/// Multi-class NMS over `boxes` (one per anchor) and `scores` (`boxes.len() x classes`,
/// anchor-major), clipped to `window`.
pub fn multiclass(boxes: &[[f32; 4]], scores: &[f32], classes: usize, nms: &Nms, window: [f32; 4]) -> Vec<Detection> {
    assert_eq!(scores.len(), boxes.len() * classes, "one score per anchor and class");
    let mut all = Vec::new();
    let mut column = vec![0f32; boxes.len()];
    for class in 0..classes {
        for (i, s) in column.iter_mut().enumerate() {
            *s = scores[i * classes + class];
        }
        let kept = nms_indices(boxes, &column, nms.iou_threshold, nms.score_threshold, nms.max_per_class);
        all.extend(kept.into_iter().map(|i| Detection { bbox: boxes[i], score: column[i], class }));
    }
    all.sort_by(|a, b| b.score.total_cmp(&a.score));
    all.into_iter()
        .map(|d| Detection { bbox: clip(d.bbox, window), ..d })
        .filter(|d| (d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1]) > 0.0)
        .take(nms.max_total)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_cases() {
        let a = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(iou(a, a), 1.0);
        assert_eq!(iou(a, [0.0, 0.5, 1.0, 1.5]), 1.0 / 3.0);
        assert_eq!(iou(a, [2.0, 2.0, 3.0, 3.0]), 0.0);
        // Flipped corners are reordered; empty boxes overlap nothing.
        assert_eq!(iou(a, [1.0, 1.0, 0.0, 0.0]), 1.0);
        assert_eq!(iou(a, [0.5, 0.5, 0.5, 0.9]), 0.0);
    }

    #[test]
    fn greedy_suppression_thresholds_and_ties() {
        let boxes = [[0.0, 0.0, 1.0, 1.0], [0.0, 0.1, 1.0, 1.1], [0.0, 0.5, 1.0, 1.5], [0.0, 2.0, 1.0, 3.0]];
        // Box 1 overlaps box 0 by 0.818 (suppressed at 0.6); box 2 overlaps box 0 by 1/3 and box 1 by 0.43.
        let scores = [0.9, 0.8, 0.7, 0.7];
        assert_eq!(nms_indices(&boxes, &scores, 0.6, 0.0, 10), vec![0, 2, 3]);
        assert_eq!(nms_indices(&boxes, &scores, 0.6, 0.0, 2), vec![0, 2]);
        assert_eq!(nms_indices(&boxes, &scores, 0.9, 0.0, 10), vec![0, 1, 2, 3]);
        // Strictly above the score threshold.
        assert_eq!(nms_indices(&boxes, &scores, 0.6, 0.7, 10), vec![0]);
        // IoU exactly at the threshold is kept (suppression is strictly above).
        let pair = [boxes[0], boxes[2]];
        assert_eq!(nms_indices(&pair, &[0.9, 0.8], 1.0 / 3.0, 0.0, 10), vec![0, 1]);
        assert_eq!(nms_indices(&pair, &[0.9, 0.8], 0.33, 0.0, 10), vec![0]);
    }

    #[test]
    fn multiclass_merges_sorts_clips_and_drops_empty() {
        let boxes = [[-0.5, -0.5, 0.5, 0.5], [2.0, 2.0, 3.0, 3.0], [0.2, 0.2, 0.4, 0.4]];
        // Two classes: class 1's best is box 2.
        let scores = [0.5, 0.1, 0.9, 0.9, 0.3, 0.6];
        let n = Nms { iou_threshold: 0.5, score_threshold: 0.05, max_per_class: 10, max_total: 3 };
        let d = multiclass(&boxes, &scores, 2, &n, [0.0, 0.0, 1.0, 1.0]);
        // Box 1 clips to an empty box and is dropped; then the top 3 by score.
        let got: Vec<(usize, f32)> = d.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, vec![(1, 0.6), (0, 0.5), (0, 0.3)]);
        assert_eq!(d[1].bbox, [0.0, 0.0, 0.5, 0.5]);
    }
}
