//! The SSD training loss of TF Object Detection API's `ssdlite_mobilenet_v2_coco.config`, with
//! its gradient with respect to the raw class logits and box encodings.
//!
//! Per image, TF's `ssd_meta_arch.loss` with that config's settings:
//!
//! 1. **Matching** (`argmax_matcher`, IoU similarity): each anchor takes the ground-truth box of
//!    highest IoU (the first on ties); it is matched when that IoU is >= `matched_threshold`
//!    (0.5), a negative when below `unmatched_threshold` (0.5), and ignored in between (nothing,
//!    with both at 0.5). With `force_match_for_each_row: true` each box's best anchor (the first
//!    on ties) is then matched to it whatever the IoU, the lowest-numbered box winning an anchor
//!    that is the best of several. An image without boxes has only negatives.
//! 2. **Targets**: a matched anchor's box is encoded against it with the Faster R-CNN coder
//!    (10, 10, 5, 5; TF adds 1e-8 to both sizes before dividing and taking logs); its class
//!    target is one-hot over the `classes + 1` logits at its class + 1 (column 0 is background).
//!    A negative's class target is the background column.
//! 3. **Losses per anchor**: weighted sigmoid cross-entropy summed over all `classes + 1` logits
//!    (weight 1 for matched and negative anchors, 0 for ignored ones), and smooth L1 (Huber,
//!    delta 1) summed over the four codes of matched anchors.
//! 4. **Hard example mining** (`loss_type: CLASSIFICATION`): TF's miner runs greedy NMS on the
//!    *decoded predicted* boxes scored by the classification loss (IoU > 0.99 suppresses, at most
//!    `num_hard_examples` = 3000 kept, equal losses in anchor order), then, walking that list in
//!    order, keeps every matched anchor and the first `max(min_negatives_per_image,
//!    max_negatives_per_positive x positives kept)` negatives (3 and 3). Both losses are summed
//!    over the kept anchors only (a matched anchor suppressed by the NMS loses its box loss too,
//!    as in TF). We do TF's NMS-based selection, not a plain top-k: it costs one NMS per image
//!    (about a millisecond at 1917 anchors) and keeps the selection TF's; setting
//!    [`LossConfig::mining_iou`] to 1 or more turns it into top-k by loss.
//! 5. **Normalisation** (`normalize_loss_by_num_matches: true`): both sums over the batch are
//!    divided by `max(1, matched anchors in the batch)` (all matches, mined or not), times the
//!    weights (`classification_weight` and `localization_weight`, both 1).
//!
//! The mining's selection is a constant of the step, so the gradient is that of the kept sums:
//! `(sigmoid(x) - z) / N` per logit of a kept anchor and `clamp(code - target, -1, 1) / N` per
//! code of a kept matched anchor, each times its weight. Losses are accumulated in f64 from the
//! f32 inputs; targets are encoded in f32 as TF does. Tested against finite differences here and
//! against PyTorch autograd in `tests/ssd_loss.rs` (`scripts/fixtures/ssd_loss.py`).

use super::boxcoder::BoxCoder;
use super::nms::{iou, nms_indices};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// The loss settings (TF's `matcher`, `hard_example_miner` and `loss` messages).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossConfig {
    /// IoU at or above which an anchor is matched.
    pub matched_threshold: f32,
    /// IoU below which an anchor is a negative (between the two: ignored).
    pub unmatched_threshold: f32,
    /// Match each box's best anchor whatever the IoU (`force_match_for_each_row`).
    pub force_match: bool,
    /// The coder of the regression targets.
    pub coder: BoxCoder,
    /// The miner's NMS keeps at most this many anchors per image.
    pub num_hard_examples: usize,
    /// The miner's NMS suppresses a box whose IoU with a kept one is above this (1 or more: no
    /// suppression, a plain top-k by loss).
    pub mining_iou: f32,
    /// At most this many negatives per kept positive...
    pub max_negatives_per_positive: usize,
    /// ...but at least this many per image.
    pub min_negatives_per_image: usize,
    /// Weight of the classification loss.
    pub classification_weight: f32,
    /// Weight of the localisation loss.
    pub localization_weight: f32,
}

impl Default for LossConfig {
    /// `ssdlite_mobilenet_v2_coco.config`.
    fn default() -> Self {
        LossConfig {
            matched_threshold: 0.5,
            unmatched_threshold: 0.5,
            force_match: true,
            coder: BoxCoder::default(),
            num_hard_examples: 3000,
            mining_iou: 0.99,
            max_negatives_per_positive: 3,
            min_negatives_per_image: 3,
            classification_weight: 1.0,
            localization_weight: 1.0,
        }
    }
}

/// A ground-truth box of one image: normalised `(ymin, xmin, ymax, xmax)` and its foreground
/// class (0-based; its logit is column `class + 1`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LabeledBox {
    /// Normalised corners `(ymin, xmin, ymax, xmax)`.
    pub bbox: [f32; 4],
    /// Foreground class, `0..classes`.
    pub class: usize,
}

/// What an anchor is to the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// Matched to this ground-truth box.
    Box(usize),
    /// A negative (background target).
    Negative,
    /// Between the thresholds: no loss.
    Ignored,
}

/// TF's argmax matcher: what each anchor is, from the IoU of every anchor with every box.
pub fn assign(cfg: &LossConfig, anchors: &[[f32; 4]], boxes: &[LabeledBox]) -> Vec<Match> {
    if boxes.is_empty() {
        return vec![Match::Negative; anchors.len()];
    }
    // Per anchor: the best box (first on ties) and its IoU.
    let mut out = Vec::with_capacity(anchors.len());
    // Per box: its best anchor (first on ties).
    let mut best_anchor = vec![(0usize, f32::NEG_INFINITY); boxes.len()];
    for (a, &anchor) in anchors.iter().enumerate() {
        let (mut bi, mut bv) = (0usize, f32::NEG_INFINITY);
        for (g, b) in boxes.iter().enumerate() {
            let v = iou(b.bbox, anchor);
            if v > bv {
                (bi, bv) = (g, v);
            }
            if v > best_anchor[g].1 {
                best_anchor[g] = (a, v);
            }
        }
        out.push(if bv >= cfg.matched_threshold {
            Match::Box(bi)
        } else if bv < cfg.unmatched_threshold {
            Match::Negative
        } else {
            Match::Ignored
        });
    }
    if cfg.force_match {
        // The lowest-numbered box wins an anchor that is the best of several.
        for (g, &(a, _)) in best_anchor.iter().enumerate().rev() {
            out[a] = Match::Box(g);
        }
    }
    out
}

/// TF's Faster R-CNN encoding of `b` against `anchor`, in TF's f32 operation order.
pub fn encode(coder: &BoxCoder, anchor: [f32; 4], b: [f32; 4]) -> [f32; 4] {
    const EPS: f32 = 1e-8;
    let centre = |r: [f32; 4]| {
        let (h, w) = (r[2] - r[0], r[3] - r[1]);
        (r[0] + h / 2.0, r[1] + w / 2.0, h, w)
    };
    let (yca, xca, ha, wa) = centre(anchor);
    let (yc, xc, h, w) = centre(b);
    let (ha, wa, h, w) = (ha + EPS, wa + EPS, h + EPS, w + EPS);
    let tx = (xc - xca) / wa;
    let ty = (yc - yca) / ha;
    let tw = (w / wa).ln();
    let th = (h / ha).ln();
    let [sy, sx, sh, sw] = coder.scales;
    [ty * sy, tx * sx, th * sh, tw * sw]
}

/// `max(x, 0) - x z + log(1 + exp(-|x|))`, TF's `sigmoid_cross_entropy_with_logits`.
fn sigmoid_ce(x: f64, z: f64) -> f64 {
    x.max(0.0) - x * z + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Huber loss at delta 1 and its derivative.
fn huber(d: f64) -> (f64, f64) {
    if d.abs() <= 1.0 {
        (0.5 * d * d, d)
    } else {
        (d.abs() - 0.5, d.signum())
    }
}

/// A batch's loss, its parts and its gradient.
#[derive(Clone, Debug, PartialEq)]
pub struct SsdLoss {
    /// `classification + localization`.
    pub total: f64,
    /// Weighted, normalised classification loss.
    pub classification: f64,
    /// Weighted, normalised localisation loss.
    pub localization: f64,
    /// Matched anchors in the batch (the normaliser, before `max(1, .)`).
    pub matches: usize,
    /// Negatives the miner kept, over the batch.
    pub negatives: usize,
    /// Gradient with respect to the logits, laid out as them.
    pub dlogits: Vec<f32>,
    /// Gradient with respect to the box encodings, laid out as them.
    pub dcodes: Vec<f32>,
}

/// The loss of a batch of `boxes.len()` images: `logits` is `images x anchors x (classes + 1)`
/// (background first), `codes` is `images x anchors x 4` (ty, tx, th, tw), both as the
/// predictors emit them.
pub fn ssd_loss(
    cfg: &LossConfig,
    anchors: &[[f32; 4]],
    classes: usize,
    logits: &[f32],
    codes: &[f32],
    boxes: &[Vec<LabeledBox>],
) -> Result<SsdLoss> {
    let (n, na, k) = (boxes.len(), anchors.len(), classes + 1);
    if logits.len() != n * na * k || codes.len() != n * na * 4 {
        return Err(Error::Input(format!(
            "SSD loss: {} logits and {} box codes for {n} images x {na} anchors x {k} logits",
            logits.len(),
            codes.len()
        )));
    }
    if let Some(b) = boxes.iter().flatten().find(|b| b.class >= classes) {
        return Err(Error::LabelOutOfRange { label: b.class, classes });
    }
    let mut dlogits = vec![0f32; logits.len()];
    let mut dcodes = vec![0f32; codes.len()];
    // Images in parallel (each writes its own gradient rows); the sums are added in image
    // order, so the result does not depend on the thread count.
    let parts: Vec<ImageSums> = dlogits
        .par_chunks_mut(na * k)
        .zip(dcodes.par_chunks_mut(na * 4))
        .zip(boxes.par_iter())
        .enumerate()
        .map(|(i, ((dl, dc), gts))| {
            let lg = &logits[i * na * k..(i + 1) * na * k];
            let cd = &codes[i * na * 4..(i + 1) * na * 4];
            image_loss(cfg, anchors, k, lg, cd, gts, dl, dc)
        })
        .collect();
    let (mut cls_sum, mut loc_sum, mut matches, mut negatives) = (0f64, 0f64, 0usize, 0usize);
    for p in &parts {
        cls_sum += p.cls;
        loc_sum += p.loc;
        matches += p.matches;
        negatives += p.negatives;
    }
    let norm = (matches as f64).max(1.0);
    let wc = cfg.classification_weight as f64 / norm;
    let wl = cfg.localization_weight as f64 / norm;
    dlogits.iter_mut().for_each(|g| *g = (*g as f64 * wc) as f32);
    dcodes.iter_mut().for_each(|g| *g = (*g as f64 * wl) as f32);
    let (classification, localization) = (cls_sum * wc, loc_sum * wl);
    Ok(SsdLoss {
        total: classification + localization,
        classification,
        localization,
        matches,
        negatives,
        dlogits,
        dcodes,
    })
}

/// One image's share of [`ssd_loss`]: its summed (unnormalised) classification and
/// localisation losses over the kept anchors, its matches and kept negatives.
struct ImageSums {
    cls: f64,
    loc: f64,
    matches: usize,
    negatives: usize,
}

/// The matching, the losses, the hard example miner and the unnormalised gradient (into `dl`
/// and `dc`, this image's rows) of one image.
#[allow(clippy::too_many_arguments)]
fn image_loss(
    cfg: &LossConfig,
    anchors: &[[f32; 4]],
    k: usize,
    lg: &[f32],
    cd: &[f32],
    gts: &[LabeledBox],
    dl: &mut [f32],
    dc: &mut [f32],
) -> ImageSums {
    let na = anchors.len();
    let (mut cls_sum, mut loc_sum) = (0f64, 0f64);
    let mut cls_loss = vec![0f64; na];
    let mut loc_loss = vec![0f64; na];
    {
        let m = assign(cfg, anchors, gts);
        let matches = m.iter().filter(|x| matches!(x, Match::Box(_))).count();
        let mut targets = vec![[0f32; 4]; na];
        for a in 0..na {
            let x = &lg[a * k..(a + 1) * k];
            let hot = match m[a] {
                Match::Box(g) => Some(gts[g].class + 1),
                Match::Negative => Some(0),
                Match::Ignored => None,
            };
            cls_loss[a] = match hot {
                Some(h) => x.iter().enumerate().map(|(j, &v)| sigmoid_ce(v as f64, (j == h) as u8 as f64)).sum(),
                None => 0.0,
            };
            loc_loss[a] = match m[a] {
                Match::Box(g) => {
                    targets[a] = encode(&cfg.coder, anchors[a], gts[g].bbox);
                    (0..4).map(|c| huber(cd[a * 4 + c] as f64 - targets[a][c] as f64).0).sum()
                }
                _ => 0.0,
            };
        }
        let decoded = cfg.coder.decode_all(anchors, cd);
        let scores: Vec<f32> = cls_loss.iter().map(|&v| v as f32).collect();
        let selected = nms_indices(&decoded, &scores, cfg.mining_iou, f32::NEG_INFINITY, cfg.num_hard_examples);
        let positives = selected.iter().filter(|&&a| matches!(m[a], Match::Box(_))).count();
        let max_neg = cfg.min_negatives_per_image.max(cfg.max_negatives_per_positive * positives);
        let mut negs = 0usize;
        for &a in &selected {
            let keep = match m[a] {
                Match::Box(_) => true,
                Match::Negative => {
                    negs += 1;
                    negs <= max_neg
                }
                Match::Ignored => false,
            };
            if !keep {
                continue;
            }
            cls_sum += cls_loss[a];
            loc_sum += loc_loss[a];
            let hot = match m[a] {
                Match::Box(g) => gts[g].class + 1,
                _ => 0,
            };
            for j in 0..k {
                let z = (j == hot) as u8 as f64;
                dl[a * k + j] = (sigmoid(lg[a * k + j] as f64) - z) as f32;
            }
            if matches!(m[a], Match::Box(_)) {
                for c in 0..4 {
                    dc[a * 4 + c] = huber(cd[a * 4 + c] as f64 - targets[a][c] as f64).1 as f32;
                }
            }
        }
        ImageSums { cls: cls_sum, loc: loc_sum, matches, negatives: negs.min(max_neg) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn grid_anchors() -> Vec<[f32; 4]> {
        // A 4x4 grid of 0.25 squares and a 2x2 grid of 0.5 squares.
        let mut a = Vec::new();
        for (g, s) in [(4, 0.25f32), (2, 0.5)] {
            for y in 0..g {
                for x in 0..g {
                    let (y0, x0) = (y as f32 * s, x as f32 * s);
                    a.push([y0, x0, y0 + s, x0 + s]);
                }
            }
        }
        a
    }

    #[test]
    fn matcher_thresholds_and_force_match() {
        let cfg = LossConfig::default();
        let anchors = grid_anchors();
        // Exactly anchor 0: IoU 1. A box between anchors 1 and 2 (IoU 1/3 with each): only
        // forced, to the first of the tied anchors.
        let boxes = [
            LabeledBox { bbox: [0.0, 0.0, 0.25, 0.25], class: 0 },
            LabeledBox { bbox: [0.0, 0.375, 0.25, 0.625], class: 1 },
        ];
        let m = assign(&cfg, &anchors, &boxes);
        assert_eq!(m[0], Match::Box(0));
        assert_eq!(m[1], Match::Box(1), "forced: the first of two tied best anchors");
        assert_eq!(m[2], Match::Negative);
        // The 0.5 anchor over anchor 0's quarter has IoU 0.25 with box 0: negative.
        assert_eq!(m[16], Match::Negative);
        assert_eq!(m.iter().filter(|x| matches!(x, Match::Box(_))).count(), 2);
        // Without forcing, box 1 has no anchor.
        let m = assign(&LossConfig { force_match: false, ..cfg }, &anchors, &boxes);
        assert_eq!(m[1], Match::Negative);
        // An ignore band when the thresholds differ.
        let cfg2 = LossConfig { matched_threshold: 0.6, unmatched_threshold: 0.3, force_match: false, ..cfg };
        let b = [LabeledBox { bbox: [0.0, 0.0, 0.25, 0.5], class: 0 }]; // IoU 0.5 with anchors 0 and 1
        let m = assign(&cfg2, &anchors, &b);
        assert_eq!((m[0], m[1]), (Match::Ignored, Match::Ignored));
        // No boxes: all negative.
        assert!(assign(&cfg, &anchors, &[]).iter().all(|&x| x == Match::Negative));
    }

    #[test]
    fn encode_inverts_decode() {
        let c = BoxCoder::default();
        let (a, b) = ([0.1, 0.2, 0.5, 0.4], [0.15, 0.1, 0.6, 0.45]);
        let d = c.decode(a, encode(&c, a, b));
        for (x, y) in d.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{d:?}");
        }
    }

    /// Anchors, logits, codes and boxes of a test batch.
    type Case = (Vec<[f32; 4]>, Vec<f32>, Vec<f32>, Vec<Vec<LabeledBox>>);

    fn case(seed: u64) -> Case {
        let anchors = grid_anchors();
        let mut rng = Rng::new(seed);
        let mut r = |s: f64| (rng.normal() * s) as f32;
        let (n, na, k) = (3, anchors.len(), 3);
        let logits: Vec<f32> = (0..n * na * k).map(|_| r(2.0)).collect();
        let codes: Vec<f32> = (0..n * na * 4).map(|_| r(1.5)).collect();
        let boxes = vec![
            vec![
                LabeledBox { bbox: [0.05, 0.0, 0.3, 0.2], class: 1 },
                LabeledBox { bbox: [0.5, 0.45, 1.0, 0.95], class: 0 },
            ],
            vec![],
            vec![LabeledBox { bbox: [0.2, 0.3, 0.55, 0.6], class: 1 }],
        ];
        (anchors, logits, codes, boxes)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let cfg = LossConfig::default();
        let (anchors, mut logits, mut codes, boxes) = case(5);
        let l = ssd_loss(&cfg, &anchors, 2, &logits, &codes, &boxes).unwrap();
        assert!(l.matches >= 3 && l.negatives > 0 && l.total > 0.0, "{l:?}");
        // Central differences in f64 terms, at every logit and code (the selection does not
        // move for steps this small on this case).
        let h = 1e-3f32;
        let mut worst = 0f64;
        for which in 0..2 {
            let len = if which == 0 { logits.len() } else { codes.len() };
            for i in 0..len {
                let v = if which == 0 { &mut logits } else { &mut codes };
                let x0 = v[i];
                v[i] = x0 + h;
                let up = ssd_loss(&cfg, &anchors, 2, &logits, &codes, &boxes).unwrap().total;
                let v = if which == 0 { &mut logits } else { &mut codes };
                v[i] = x0 - h;
                let dn = ssd_loss(&cfg, &anchors, 2, &logits, &codes, &boxes).unwrap().total;
                let v = if which == 0 { &mut logits } else { &mut codes };
                v[i] = x0;
                let fd = (up - dn) / (2.0 * h as f64);
                let g = if which == 0 { l.dlogits[i] } else { l.dcodes[i] } as f64;
                worst = worst.max((fd - g).abs());
            }
        }
        assert!(worst < 2e-4, "worst |fd - analytic| = {worst}");
        // Some gradients are zero: anchors the miner dropped.
        assert!(l.dlogits.iter().filter(|&&g| g == 0.0).count() > 0);
    }

    #[test]
    fn mining_keeps_three_negatives_per_positive() {
        let cfg = LossConfig::default();
        let (anchors, logits, codes, boxes) = case(9);
        let l = ssd_loss(&cfg, &anchors, 2, &logits, &codes, &boxes).unwrap();
        let na = anchors.len();
        let kept = |i: usize| (0..na).filter(|&a| l.dlogits[(i * na + a) * 3..][..3].iter().any(|&g| g != 0.0)).count();
        // Image 1 has no boxes: the 3 hardest negatives. Image 2: 1 match + 3 negatives.
        assert_eq!(kept(1), 3);
        let m2 = assign(&cfg, &anchors, &boxes[2]);
        let pos2 = m2.iter().filter(|x| matches!(x, Match::Box(_))).count();
        assert_eq!(kept(2), pos2 + 3 * pos2);
        // The negatives kept for image 1 are its three largest losses.
        let mut losses: Vec<(f64, usize)> = (0..na)
            .map(|a| {
                (
                    logits[(na + a) * 3..][..3]
                        .iter()
                        .enumerate()
                        .map(|(j, &x)| sigmoid_ce(x as f64, (j == 0) as u8 as f64))
                        .sum(),
                    a,
                )
            })
            .collect();
        losses.sort_by(|x, y| y.0.total_cmp(&x.0));
        for &(_, a) in &losses[..3] {
            assert!(l.dlogits[(na + a) * 3] != 0.0, "anchor {a} should be mined");
        }
        // Bad input is an error.
        assert!(ssd_loss(&cfg, &anchors, 2, &logits[1..], &codes, &boxes).is_err());
        let bad = vec![vec![LabeledBox { bbox: [0.0, 0.0, 0.5, 0.5], class: 2 }]; 3];
        assert!(ssd_loss(&cfg, &anchors, 2, &logits, &codes, &bad).is_err());
    }
}
