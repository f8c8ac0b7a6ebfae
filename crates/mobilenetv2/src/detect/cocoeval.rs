//! COCO box evaluation, number for number what pycocotools' `COCOeval(gt, dt, 'bbox')` computes
//! with its default parameters: `evaluate()`, `accumulate()` and the 12 numbers of
//! `summarize()` (tests/coco_eval.rs checks all of them, the recall array and the precision
//! curves against pycocotools on committed fixtures, to 1e-6).
//!
//! What pycocotools does, and so what this does:
//!
//! - images are the ground truth's (sorted ids), categories the ground truth's `categories`
//!   (sorted ids); detections of a category the ground truth does not list are ignored
//!   ([`CocoEval::ignored_detections`] counts them); a detection of an image the ground truth
//!   does not list is an error (pycocotools' `loadRes` refuses it too);
//! - IoU of boxes `[x, y, w, h]`; against a crowd box (`iscrowd` 1) it is the intersection over
//!   the detection's area, and a crowd box can absorb any number of detections;
//! - areas `all` [0, 1e10], `small` [0, 32²], `medium` [32², 96²], `large` [96², 1e10], bounds
//!   included, judged on the ground truth's `area` field (a segment's area in COCO, not the
//!   box's) and on `w * h` for detections;
//! - per image and category, detections by descending score with a stable sort (numpy's
//!   `argsort(kind='mergesort')`), the first 100 kept; ground truths with the ignored ones
//!   (crowd, or outside the area range) last; greedy matching at each IoU threshold
//!   0.50:0.05:0.95 (numpy's `linspace` values, bit for bit); a detection matched to an ignored
//!   ground truth, or unmatched and outside the area range, is ignored;
//! - per category, area and maxDets (1, 10, 100): the images' detections merged by score (stable,
//!   images in id order), precision made monotone from the right, read at the 101 recall points
//!   0:0.01:1 with `searchsorted(side='left')` (0 past the last recall reached); recall is the
//!   last recall reached; both -1 where the category has no unignored ground truth;
//! - `summarize()`: the mean of the cells that are not -1 (numpy's pairwise summation), -1 if none.
//!
//! One quirk is kept on purpose: pycocotools stores a match as the ground truth's `id`, so a
//! ground truth with id 0 counts as unmatched.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use super::coco::{read_json, InstancesFile, ResultRecord, MAX_COCO_JSON_BYTES};
use crate::error::{Error, Result};

/// Number of IoU thresholds (0.50, 0.55, ..., 0.95).
pub const T: usize = 10;
/// Number of recall points (0, 0.01, ..., 1).
pub const R: usize = 101;
/// Area ranges: all, small, medium, large.
pub const AREA_RANGES: [(&str, f64, f64); 4] =
    [("all", 0.0, 1e10), ("small", 0.0, 1024.0), ("medium", 1024.0, 9216.0), ("large", 9216.0, 1e10)];
/// Detections per image considered: 1, 10, 100.
pub const MAX_DETS: [usize; 3] = [1, 10, 100];
const A: usize = AREA_RANGES.len();
/// Categories one evaluation accepts (COCO has 80, LVIS 1203): the precision array holds
/// 12,120 numbers per category (about 200 MB at this bound).
pub const MAX_EVAL_CATEGORIES: usize = 2048;

const M: usize = MAX_DETS.len();

/// The names of the 12 summary numbers, in `summarize()`'s order, as [`CocoEval::stats_json`]
/// writes them: `AP` (AP at IoU 0.50:0.95, area all, 100 detections), `AP50`, `AP75`, `APs`,
/// `APm`, `APl` (small, medium, large), `AR1`, `AR10`, `AR100` (recall at 1, 10 and 100
/// detections per image), `ARs`, `ARm`, `ARl`.
pub const STAT_NAMES: [&str; 12] =
    ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];

/// numpy's `linspace(start, stop, num)`: `i * step + start`, the last value exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    (0..num).map(|i| if i == num - 1 { stop } else { i as f64 * step + start }).collect()
}

/// The IoU thresholds, as pycocotools' `Params.iouThrs` holds them.
pub fn iou_thresholds() -> Vec<f64> {
    linspace(0.5, 0.95, T)
}

/// The recall points, as pycocotools' `Params.recThrs` holds them.
pub fn recall_thresholds() -> Vec<f64> {
    linspace(0.0, 1.0, R)
}

/// One ground-truth box.
#[derive(Clone, Debug, PartialEq)]
pub struct GtAnnotation {
    /// The annotation's `id`.
    pub id: i64,
    /// Its image's `id`.
    pub image_id: i64,
    /// Its category's `id`.
    pub category_id: i64,
    /// `[x, y, width, height]` in pixels.
    pub bbox: [f64; 4],
    /// The `area` the area ranges judge (COCO: the segment's area).
    pub area: f64,
    /// A crowd region: ignored, IoU over the detection's area, matches any number of detections.
    pub iscrowd: bool,
}

/// The ground truth: images, categories and boxes.
#[derive(Clone, Debug, Default)]
pub struct GroundTruth {
    images: Vec<i64>,
    categories: Vec<i64>,
    annotations: Vec<GtAnnotation>,
}

/// One detection, as in a COCO results file.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionResult {
    /// The image's `id`.
    pub image_id: i64,
    /// The category's `id`.
    pub category_id: i64,
    /// `[x, y, width, height]` in pixels.
    pub bbox: [f64; 4],
    /// The confidence (any finite number; only the order matters).
    pub score: f64,
}

impl GroundTruth {
    /// Ground truth from its parts. Image, category and annotation ids must be unique, and
    /// every annotation's image and category listed.
    pub fn new(images: Vec<i64>, categories: Vec<i64>, annotations: Vec<GtAnnotation>) -> Result<GroundTruth> {
        let images = sorted_unique(images, "image")?;
        let categories = sorted_unique(categories, "category")?;
        let mut ids = std::collections::HashSet::with_capacity(annotations.len());
        for a in &annotations {
            let what = |d: String| Error::Input(format!("ground truth annotation {}: {d}", a.id));
            if !ids.insert(a.id) {
                return Err(what("the id is used twice".into()));
            }
            if images.binary_search(&a.image_id).is_err() {
                return Err(what(format!("image {} is not among the images", a.image_id)));
            }
            if categories.binary_search(&a.category_id).is_err() {
                return Err(what(format!("category {} is not among the categories", a.category_id)));
            }
            if !a.bbox.iter().all(|v| v.is_finite()) || !a.area.is_finite() {
                return Err(what("the box or the area is not finite".into()));
            }
        }
        Ok(GroundTruth { images, categories, annotations })
    }

    /// Reads a COCO instances file (`images`, `annotations`, `categories`). Only what box
    /// evaluation uses is read: ids, `bbox`, `area` (w * h where it is missing) and `iscrowd`
    /// (0 where missing); errors name the file and the annotation.
    pub fn load(path: &Path) -> Result<GroundTruth> {
        let f: InstancesFile = read_json(path, MAX_COCO_JSON_BYTES, "COCO annotations")?;
        let mut anns = Vec::with_capacity(f.annotations.len());
        for a in f.annotations {
            let bad = |d: String| Error::format(path, "COCO annotations", format!("annotation {}: {d}", a.id));
            let bbox = box4(&a.bbox).map_err(bad)?;
            let iscrowd = match a.iscrowd.unwrap_or(0) {
                0 => false,
                1 => true,
                v => return Err(bad(format!("iscrowd is {v}, not 0 or 1"))),
            };
            anns.push(GtAnnotation {
                id: a.id,
                image_id: a.image_id,
                category_id: a.category_id,
                bbox,
                area: a.area.unwrap_or(bbox[2] * bbox[3]),
                iscrowd,
            });
        }
        let images = f.images.iter().map(|i| i.id).collect();
        let categories = f.categories.iter().map(|c| c.id).collect();
        GroundTruth::new(images, categories, anns).map_err(|e| match e {
            Error::Input(d) => Error::format(path, "COCO annotations", d),
            e => e,
        })
    }

    /// The image ids, sorted.
    pub fn images(&self) -> &[i64] {
        &self.images
    }

    /// The category ids, sorted.
    pub fn categories(&self) -> &[i64] {
        &self.categories
    }

    /// The annotations, in file order.
    pub fn annotations(&self) -> &[GtAnnotation] {
        &self.annotations
    }
}

fn sorted_unique(mut ids: Vec<i64>, what: &str) -> Result<Vec<i64>> {
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::Input(format!("{what} id {} is used twice", w[0])));
    }
    Ok(ids)
}

/// Four finite numbers.
pub(crate) fn box4(v: &[f64]) -> std::result::Result<[f64; 4], String> {
    match *v {
        [x, y, w, h] if v.iter().all(|c| c.is_finite()) => Ok([x, y, w, h]),
        [_, _, _, _] => Err(format!("bbox {v:?} is not finite")),
        _ => Err(format!("bbox has {} numbers, not [x, y, width, height]", v.len())),
    }
}

/// Reads a COCO results file (a JSON list of `{image_id, category_id, bbox, score}`) for
/// `gt`: a detection of an image the ground truth does not list is an error naming the file
/// and the detection's position in the list.
pub fn load_detections(path: &Path, gt: &GroundTruth) -> Result<Vec<DetectionResult>> {
    let recs: Vec<ResultRecord> = read_json(path, MAX_COCO_JSON_BYTES, "COCO results")?;
    let mut out = Vec::with_capacity(recs.len());
    for (n, r) in recs.into_iter().enumerate() {
        let bad = |d: String| Error::format(path, "COCO results", format!("detection {n} (0-based): {d}"));
        let bbox = box4(&r.bbox).map_err(bad)?;
        if gt.images.binary_search(&r.image_id).is_err() {
            return Err(bad(format!("image_id {} is not an image of the ground truth", r.image_id)));
        }
        out.push(DetectionResult { image_id: r.image_id, category_id: r.category_id, bbox, score: r.score });
    }
    Ok(out)
}

/// pycocotools' `bbIou` of one detection and one ground truth (both `[x, y, w, h]`), in its
/// operation order.
fn box_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let da = d[2] * d[3];
    let u = if crowd { da } else { da + g[2] * g[3] - i };
    i / u
}

/// One image, category and area range after matching (pycocotools' `evaluateImg` entry).
struct ImageEval {
    /// Scores of the (at most 100) detections, descending.
    scores: Vec<f64>,
    /// `[t * D + d]`: matched to a ground truth with a non-zero id.
    matched: Vec<bool>,
    /// `[t * D + d]`: ignored.
    ignored: Vec<bool>,
    /// Ground truths not ignored.
    gt_counted: usize,
}

/// The result of an evaluation: pycocotools' `eval['precision']`, `eval['recall']` and
/// `stats`.
#[derive(Clone, Debug)]
pub struct CocoEval {
    /// The IoU thresholds ([`iou_thresholds`]).
    pub iou_thresholds: Vec<f64>,
    /// The recall points ([`recall_thresholds`]).
    pub recall_thresholds: Vec<f64>,
    /// The category ids, sorted: the `K` axis.
    pub category_ids: Vec<i64>,
    /// `[T, R, K, A, M]` row-major: precision at each IoU threshold, recall point, category,
    /// area range ([`AREA_RANGES`]) and maxDets ([`MAX_DETS`]); -1 where the category has no
    /// ground truth that counts.
    pub precision: Vec<f64>,
    /// `[T, K, A, M]` row-major: the recall reached; -1 as for precision.
    pub recall: Vec<f64>,
    /// The 12 numbers of `summarize()`, named by [`STAT_NAMES`].
    pub stats: [f64; 12],
    /// Detections of a category the ground truth does not list (pycocotools drops them too).
    pub ignored_detections: usize,
}

/// Evaluates `dets` against `gt` as pycocotools' `COCOeval(gt, dt, 'bbox')` with its default
/// parameters does (`evaluate`, `accumulate`, `summarize`).
pub fn evaluate(gt: &GroundTruth, dets: &[DetectionResult]) -> Result<CocoEval> {
    let nk = gt.categories.len();
    let img: HashMap<i64, usize> = gt.images.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let cat: HashMap<i64, usize> = gt.categories.iter().enumerate().map(|(k, &id)| (id, k)).collect();
    if nk > MAX_EVAL_CATEGORIES {
        return Err(Error::Input(format!(
            "the ground truth lists {nk} categories, more than the {MAX_EVAL_CATEGORIES} this evaluation accepts"
        )));
    }
    // The (category, image) cells that hold a ground truth or a detection, each with its
    // ground truths and detections in file order: memory follows the boxes, not images x
    // categories.
    let mut cells: HashMap<(usize, usize), (Vec<usize>, Vec<usize>)> = HashMap::new();
    for (n, a) in gt.annotations.iter().enumerate() {
        cells.entry((cat[&a.category_id], img[&a.image_id])).or_default().0.push(n);
    }
    let mut ignored_detections = 0;
    for (n, d) in dets.iter().enumerate() {
        let Some(&i) = img.get(&d.image_id) else {
            return Err(Error::Input(format!(
                "detection {n} (0-based): image_id {} is not an image of the ground truth",
                d.image_id
            )));
        };
        if !d.score.is_finite() || !d.bbox.iter().all(|v| v.is_finite()) {
            return Err(Error::Input(format!("detection {n} (0-based): the box or the score is not finite")));
        }
        match cat.get(&d.category_id) {
            Some(&k) => cells.entry((k, i)).or_default().1.push(n),
            None => ignored_detections += 1,
        }
    }
    let max_det = MAX_DETS[M - 1];
    let thresholds = iou_thresholds();
    // Per category, its cells in image order, each evaluated at every area range.
    let mut keys: Vec<(usize, usize)> = cells.keys().copied().collect();
    keys.sort_unstable();
    let mut evals: Vec<Vec<[ImageEval; A]>> = (0..nk).map(|_| Vec::new()).collect();
    for (k, i) in keys {
        let (g, d) = &cells[&(k, i)];
        let mut d = d.clone();
        d.sort_by(|&x, &y| dets[y].score.partial_cmp(&dets[x].score).expect("finite scores"));
        d.truncate(max_det);
        let g: Vec<&GtAnnotation> = g.iter().map(|&n| &gt.annotations[n]).collect();
        let d: Vec<&DetectionResult> = d.iter().map(|&n| &dets[n]).collect();
        evals[k].push(AREA_RANGES.map(|(_, lo, hi)| evaluate_image(&g, &d, lo, hi, &thresholds)));
    }
    let rec_thrs = recall_thresholds();
    let mut precision = vec![-1.0; T * R * nk * A * M];
    let mut recall = vec![-1.0; T * nk * A * M];
    for k in 0..nk {
        for a in 0..A {
            let e: Vec<&ImageEval> = evals[k].iter().map(|cell| &cell[a]).collect();
            if e.is_empty() {
                continue;
            }
            let npig: usize = e.iter().map(|x| x.gt_counted).sum();
            if npig == 0 {
                continue;
            }
            for (m, &md) in MAX_DETS.iter().enumerate() {
                // (image eval, detection) in concatenation order, then stably by score.
                let mut all: Vec<(usize, usize)> =
                    e.iter().enumerate().flat_map(|(j, x)| (0..x.scores.len().min(md)).map(move |d| (j, d))).collect();
                all.sort_by(|&(j1, d1), &(j2, d2)| {
                    e[j2].scores[d2].partial_cmp(&e[j1].scores[d1]).expect("finite scores")
                });
                let nd = all.len();
                let mut rc = vec![0.0; nd];
                let mut pr = vec![0.0; nd];
                for t in 0..T {
                    let (mut tp, mut fp) = (0usize, 0usize);
                    for (n, &(j, d)) in all.iter().enumerate() {
                        let x = e[j];
                        let dn = x.scores.len();
                        if !x.ignored[t * dn + d] {
                            if x.matched[t * dn + d] {
                                tp += 1;
                            } else {
                                fp += 1;
                            }
                        }
                        let (tpf, fpf) = (tp as f64, fp as f64);
                        rc[n] = tpf / npig as f64;
                        pr[n] = tpf / (fpf + tpf + f64::EPSILON);
                    }
                    recall[((t * nk + k) * A + a) * M + m] = if nd > 0 { rc[nd - 1] } else { 0.0 };
                    for n in (1..nd).rev() {
                        if pr[n] > pr[n - 1] {
                            pr[n - 1] = pr[n];
                        }
                    }
                    for (r, &thr) in rec_thrs.iter().enumerate() {
                        let p = rc.partition_point(|&v| v < thr);
                        precision[(((t * R + r) * nk + k) * A + a) * M + m] = if p < nd { pr[p] } else { 0.0 };
                    }
                }
            }
        }
    }
    let mut ev = CocoEval {
        iou_thresholds: thresholds,
        recall_thresholds: rec_thrs,
        category_ids: gt.categories.clone(),
        precision,
        recall,
        stats: [0.0; 12],
        ignored_detections,
    };
    ev.stats = ev.summarize();
    Ok(ev)
}

/// pycocotools' `evaluateImg` for one image, category and area range: `g` in file order, `d`
/// by descending score (at most 100). IoUs are recomputed where needed rather than kept (the
/// same numbers: memory stays flat however many boxes an image has).
fn evaluate_image(g: &[&GtAnnotation], d: &[&DetectionResult], lo: f64, hi: f64, thresholds: &[f64]) -> ImageEval {
    let ng = g.len();
    let nd = d.len();
    let ignore = |a: &GtAnnotation| a.iscrowd || a.area < lo || a.area > hi;
    // Ground truths not ignored first, each group in file order (a stable sort on the flag).
    let order: Vec<usize> = (0..ng).filter(|&n| !ignore(g[n])).chain((0..ng).filter(|&n| ignore(g[n]))).collect();
    let gt_ig: Vec<bool> = order.iter().map(|&n| ignore(g[n])).collect();
    let crowd: Vec<bool> = order.iter().map(|&n| g[n].iscrowd).collect();
    let mut matched = vec![false; T * nd];
    let mut ignored = vec![false; T * nd];
    if nd > 0 && ng > 0 {
        let mut gt_taken = vec![false; ng];
        for (t, &thr) in thresholds.iter().enumerate() {
            gt_taken.iter_mut().for_each(|x| *x = false);
            for di in 0..nd {
                let mut iou = thr.min(1.0 - 1e-10);
                let mut m: Option<usize> = None;
                for (gi, &n) in order.iter().enumerate() {
                    if gt_taken[gi] && !crowd[gi] {
                        continue;
                    }
                    if let Some(mm) = m {
                        if !gt_ig[mm] && gt_ig[gi] {
                            break;
                        }
                    }
                    let v = box_iou(&d[di].bbox, &g[n].bbox, g[n].iscrowd);
                    if v < iou {
                        continue;
                    }
                    iou = v;
                    m = Some(gi);
                }
                if let Some(mm) = m {
                    ignored[t * nd + di] = gt_ig[mm];
                    // pycocotools stores the ground truth's id: id 0 reads as "no match".
                    matched[t * nd + di] = g[order[mm]].id != 0;
                    // The detection's id (1 + its position in the results file) is never 0.
                    gt_taken[mm] = true;
                }
            }
        }
    }
    for (di, dd) in d.iter().enumerate() {
        let area = dd.bbox[2] * dd.bbox[3];
        if area < lo || area > hi {
            for t in 0..T {
                if !matched[t * nd + di] {
                    ignored[t * nd + di] = true;
                }
            }
        }
    }
    ImageEval {
        scores: d.iter().map(|x| x.score).collect(),
        matched,
        ignored,
        gt_counted: gt_ig.iter().filter(|&&x| !x).count(),
    }
}

/// numpy's pairwise summation of a float64 array (what `np.mean` adds with).
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, &x| s + x)
    } else if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

fn mean_or_minus_one(v: &[f64]) -> f64 {
    if v.is_empty() {
        -1.0
    } else {
        pairwise_sum(v) / v.len() as f64
    }
}

impl CocoEval {
    fn k(&self) -> usize {
        self.category_ids.len()
    }

    /// Precision at IoU threshold `t`, recall point `r`, category index `k`, area `a`, maxDets `m`.
    pub fn precision_at(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> f64 {
        self.precision[(((t * R + r) * self.k() + k) * A + a) * M + m]
    }

    /// Recall at IoU threshold `t`, category index `k`, area `a`, maxDets `m`.
    pub fn recall_at(&self, t: usize, k: usize, a: usize, m: usize) -> f64 {
        self.recall[((t * self.k() + k) * A + a) * M + m]
    }

    /// pycocotools' `_summarize`: the mean over the cells that are not -1 (in numpy's order).
    fn summary(&self, ap: bool, iou: Option<f64>, a: usize, max_dets: usize) -> f64 {
        let m = MAX_DETS.iter().position(|&x| x == max_dets).expect("a maxDets value");
        // `np.where(iouThr == p.iouThrs)`: exact comparison with the linspace values.
        let ts: Vec<usize> = (0..T).filter(|&t| iou.is_none_or(|v| v == self.iou_thresholds[t])).collect();
        let mut vals = Vec::new();
        for &t in &ts {
            if ap {
                for r in 0..R {
                    vals.extend((0..self.k()).map(|k| self.precision_at(t, r, k, a, m)).filter(|&v| v > -1.0));
                }
            } else {
                vals.extend((0..self.k()).map(|k| self.recall_at(t, k, a, m)).filter(|&v| v > -1.0));
            }
        }
        mean_or_minus_one(&vals)
    }

    /// (AP?, IoU threshold, area index, maxDets) of each of the 12 summary numbers.
    const SUMMARY: [(bool, Option<f64>, usize, usize); 12] = [
        (true, None, 0, 100),
        (true, Some(0.5), 0, 100),
        (true, Some(0.75), 0, 100),
        (true, None, 1, 100),
        (true, None, 2, 100),
        (true, None, 3, 100),
        (false, None, 0, 1),
        (false, None, 0, 10),
        (false, None, 0, 100),
        (false, None, 1, 100),
        (false, None, 2, 100),
        (false, None, 3, 100),
    ];

    fn summarize(&self) -> [f64; 12] {
        Self::SUMMARY.map(|(ap, iou, a, md)| self.summary(ap, iou, a, md))
    }

    /// The 12 lines pycocotools' `summarize()` prints, character for character.
    pub fn summary_table(&self) -> String {
        let mut s = String::new();
        for (n, &(ap, iou, a, md)) in Self::SUMMARY.iter().enumerate() {
            let title = if ap { "Average Precision" } else { "Average Recall" };
            let kind = if ap { "(AP)" } else { "(AR)" };
            let iou = match iou {
                None => format!("{:.2}:{:.2}", self.iou_thresholds[0], self.iou_thresholds[T - 1]),
                Some(v) => format!("{v:.2}"),
            };
            let _ = writeln!(
                s,
                " {title:<18} {kind} @[ IoU={iou:<9} | area={:>6} | maxDets={md:>3} ] = {:.3}",
                AREA_RANGES[a].0, self.stats[n]
            );
        }
        s
    }

    /// The 12 numbers as a JSON object keyed by [`STAT_NAMES`].
    pub fn stats_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> =
            STAT_NAMES.iter().zip(self.stats).map(|(n, v)| (n.to_string(), serde_json::json!(v))).collect();
        serde_json::Value::Object(map)
    }

    /// Per category (in [`CocoEval::category_ids`] order): AP at IoU 0.50:0.95, area all,
    /// 100 detections (-1 where the category has no ground truth), the way detectron2's
    /// per-category table computes it from pycocotools' precision array.
    pub fn category_ap(&self) -> Vec<f64> {
        (0..self.k())
            .map(|k| {
                let v: Vec<f64> = (0..T)
                    .flat_map(|t| (0..R).map(move |r| (t, r)))
                    .map(|(t, r)| self.precision_at(t, r, k, 0, M - 1))
                    .filter(|&v| v > -1.0)
                    .collect();
                mean_or_minus_one(&v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_boxes_and_crowds() {
        let g = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(box_iou(&[5.0, 0.0, 10.0, 10.0], &g, false), 50.0 / 150.0);
        assert_eq!(box_iou(&[5.0, 0.0, 10.0, 10.0], &g, true), 0.5);
        assert_eq!(box_iou(&[10.0, 0.0, 10.0, 10.0], &g, false), 0.0);
        assert_eq!(box_iou(&[2.0, 2.0, 2.0, 2.0], &g, true), 1.0);
    }

    #[test]
    fn pairwise_sum_matches_plain_sum_closely() {
        let v: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin()).collect();
        let plain: f64 = v.iter().sum();
        assert!((pairwise_sum(&v) - plain).abs() < 1e-12);
        assert_eq!(pairwise_sum(&[1.0, 2.0]), 3.0);
    }

    #[test]
    fn one_perfect_detection() {
        let gt = GroundTruth::new(
            vec![1],
            vec![3],
            vec![GtAnnotation {
                id: 1,
                image_id: 1,
                category_id: 3,
                bbox: [0.0, 0.0, 50.0, 50.0],
                area: 2500.0,
                iscrowd: false,
            }],
        )
        .unwrap();
        let d = [DetectionResult { image_id: 1, category_id: 3, bbox: [0.0, 0.0, 50.0, 50.0], score: 0.5 }];
        let e = evaluate(&gt, &d).unwrap();
        // Medium box: AP 1 at every threshold (less pycocotools' eps: precision is
        // 1 / (1 + 2^-52)); no small or large ground truth: -1.
        let want = [1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0, -1.0];
        for (g, w) in e.stats.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{:?}", e.stats);
        }
        // No detections: precision and recall 0 where there is ground truth.
        let e = evaluate(&gt, &[]).unwrap();
        assert_eq!(e.stats[0], 0.0);
        assert_eq!(e.stats[8], 0.0);
        let bad = [DetectionResult { image_id: 2, category_id: 3, bbox: [0.0; 4], score: 0.5 }];
        assert!(evaluate(&gt, &bad).unwrap_err().to_string().contains("image_id 2"));
    }
}
