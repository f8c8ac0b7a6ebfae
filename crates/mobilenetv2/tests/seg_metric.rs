//! `segment::metric` against the numpy reference of scripts/fixtures/seg_metric.py
//! (tests/data/seg_metric/cases.json): the confusion matrix exactly, per-class IoU, mean IoU
//! and pixel accuracy to 1e-9; classes absent from both sides have no IoU and are left out of
//! the mean.

use mobilenetv2::segment::metric::ConfusionMatrix;
use serde_json::Value;

#[test]
fn metric_equals_numpy_reference() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/seg_metric/cases.json");
    let fixture: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    let bytes = |v: &Value| -> Vec<u8> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect() };
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let k = case["classes"].as_u64().unwrap() as usize;
        let mut m = ConfusionMatrix::new(k);
        for img in case["images"].as_array().unwrap() {
            let (truth, pred) = (bytes(&img["truth"]), bytes(&img["pred"]));
            let hw = (img["h"].as_u64().unwrap() * img["w"].as_u64().unwrap()) as usize;
            assert_eq!((truth.len(), pred.len()), (hw, hw));
            m.add(&truth, &pred).unwrap();
        }
        let e = &case["expected"];
        let confusion: Vec<Vec<u64>> = e["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect())
            .collect();
        assert_eq!(m.rows(), confusion, "{name}: confusion matrix");
        let s = m.scores();
        assert_eq!(s.pixels, e["pixels"].as_u64().unwrap(), "{name}");
        for (c, (got, want)) in s.iou.iter().zip(e["iou"].as_array().unwrap()).enumerate() {
            match (got, want.as_f64()) {
                (Some(g), Some(w)) => assert!((g - w).abs() <= 1e-9, "{name}: IoU of class {c}: {g} vs numpy {w}"),
                (None, None) => {}
                _ => panic!("{name}: class {c}: IoU {got:?}, numpy {want}"),
            }
        }
        let (mi, pa) = (e["mean_iou"].as_f64().unwrap(), e["pixel_accuracy"].as_f64().unwrap());
        assert!((s.mean_iou - mi).abs() <= 1e-9, "{name}: mIoU {} vs numpy {mi}", s.mean_iou);
        assert!((s.pixel_accuracy - pa).abs() <= 1e-9, "{name}: pixel accuracy {} vs numpy {pa}", s.pixel_accuracy);
    }
    // The fixture covers what the conventions are about.
    let absent = &cases.iter().find(|c| c["name"] == "absent_class_excluded").unwrap()["expected"]["iou"];
    assert!(absent[4].is_null());
    let fp = &cases.iter().find(|c| c["name"] == "false_positive_and_missed_classes").unwrap()["expected"]["iou"];
    assert_eq!((fp[2].as_f64(), fp[3].as_f64()), (Some(0.0), Some(0.0)));
}
