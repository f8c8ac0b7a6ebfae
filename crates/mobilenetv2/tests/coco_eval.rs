//! COCO box evaluation against pycocotools (fixtures: tests/data/coco_eval/, written by
//! scripts/fixtures/coco_eval.py): the 12 summary numbers, the printed table, the recall
//! array, the mean precision of every (IoU, category, area, maxDets) cell and, for the "mixed"
//! case, whole precision curves; all to 1e-6 (in practice they agree to the last bit or two).

use std::path::PathBuf;

use mobilenetv2::detect::cocoeval::{self, evaluate, load_detections, GroundTruth, AREA_RANGES, MAX_DETS, R, T};
use serde_json::Value;

const TOL: f64 = 1e-6;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/coco_eval").join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(data("expected.json")).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Largest |difference|, asserting the -1 ("no ground truth") cells agree exactly.
fn max_diff(got: &[f64], want: &[f64], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g == -1.0, w == -1.0, "{what}[{i}]: got {g}, pycocotools {w}");
        worst = worst.max((g - w).abs());
    }
    worst
}

#[test]
fn thresholds_are_numpys_linspace_bit_for_bit() {
    let e = expected();
    assert_eq!(cocoeval::iou_thresholds(), floats(&e["params"]["iou_thrs"]));
    assert_eq!(cocoeval::recall_thresholds(), floats(&e["params"]["rec_thrs"]));
}

#[test]
fn equals_pycocotools_on_every_case() {
    let e = expected();
    let cases = e["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 3);
    for (name, want) in cases {
        let gt = GroundTruth::load(&data(&format!("{name}.gt.json"))).unwrap();
        let dets = load_detections(&data(&format!("{name}.dt.json")), &gt).unwrap();
        let got = evaluate(&gt, &dets).unwrap();
        let k = got.category_ids.len();
        assert_eq!(
            got.category_ids,
            want["cat_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>()
        );

        let stats = max_diff(&got.stats, &floats(&want["stats"]), &format!("{name} stats"));
        assert!(stats <= TOL, "{name}: stats differ by {stats:e}\n{}", got.summary_table());
        assert_eq!(got.summary_table(), want["summary"].as_str().unwrap(), "{name}: the printed table");

        // recall [T][K][A][M]
        let mut want_recall = Vec::new();
        for t in want["recall"].as_array().unwrap() {
            for kk in t.as_array().unwrap() {
                for a in kk.as_array().unwrap() {
                    want_recall.extend(floats(a));
                }
            }
        }
        let rd = max_diff(&got.recall, &want_recall, &format!("{name} recall"));
        assert!(rd <= TOL, "{name}: recall differs by {rd:e}");

        // precision averaged over the recall points: [T][K][A][M]
        let mut want_pm = Vec::new();
        for t in want["precision_mean"].as_array().unwrap() {
            for kk in t.as_array().unwrap() {
                for a in kk.as_array().unwrap() {
                    want_pm.extend(floats(a));
                }
            }
        }
        let mut got_pm = Vec::new();
        for t in 0..T {
            for kk in 0..k {
                for a in 0..AREA_RANGES.len() {
                    for m in 0..MAX_DETS.len() {
                        got_pm.push((0..R).map(|r| got.precision_at(t, r, kk, a, m)).sum::<f64>() / R as f64);
                    }
                }
            }
        }
        let pd = max_diff(&got_pm, &want_pm, &format!("{name} mean precision"));
        assert!(pd <= TOL, "{name}: mean precision differs by {pd:e}");

        if let Some(curves) = want.get("precision_all_100") {
            for (t, per_cat) in curves.as_object().unwrap() {
                let t: usize = t.parse().unwrap();
                for (kk, curve) in per_cat.as_array().unwrap().iter().enumerate() {
                    let g: Vec<f64> = (0..R).map(|r| got.precision_at(t, r, kk, 0, 2)).collect();
                    let d = max_diff(&g, &floats(curve), &format!("{name} precision t={t} k={kk}"));
                    assert!(d <= TOL, "{name}: precision curve t={t} k={kk} differs by {d:e}");
                }
            }
        }
        println!("{name}: stats max |diff| {stats:e}, recall {rd:e}, mean precision {pd:e}");
    }
}

#[test]
fn mixed_case_counts_the_detections_of_unlisted_categories() {
    let gt = GroundTruth::load(&data("mixed.gt.json")).unwrap();
    let dets = load_detections(&data("mixed.dt.json"), &gt).unwrap();
    // One detection of category 9, which the ground truth does not list.
    assert_eq!(evaluate(&gt, &dets).unwrap().ignored_detections, 1);
}

#[test]
fn stats_json_uses_the_documented_names() {
    let gt = GroundTruth::load(&data("perfect.gt.json")).unwrap();
    let dets = load_detections(&data("perfect.dt.json"), &gt).unwrap();
    let e = evaluate(&gt, &dets).unwrap();
    let j = e.stats_json();
    let names: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    for n in cocoeval::STAT_NAMES {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert_eq!(j["AP"].as_f64().unwrap(), e.stats[0]);
    assert_eq!(j["ARl"].as_f64().unwrap(), e.stats[11]);
    // Perfect detections: AP 1 for every category that has ground truth.
    assert!(e.category_ap().iter().all(|&v| (v - 1.0).abs() < 1e-12 || v == -1.0), "{:?}", e.category_ap());
}
