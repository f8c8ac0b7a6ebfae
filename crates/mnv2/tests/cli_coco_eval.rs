//! `mnv2 coco-eval`: pycocotools' table and numbers on the committed fixtures
//! (tests/data/coco_eval, scripts/fixtures/coco_eval.py), and one-line errors.

mod common;
use common::{assert_input_error, mnv2, ok, repo, tmp};

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(repo("tests/data/coco_eval/expected.json")).unwrap()).unwrap()
}

#[test]
fn prints_pycocotools_table_and_json() {
    let want = &expected()["cases"]["mixed"];
    let (gt, dt) = (repo("tests/data/coco_eval/mixed.gt.json"), repo("tests/data/coco_eval/mixed.dt.json"));
    let o = mnv2(&["coco-eval", &gt, &dt]);
    ok(&o);
    let text = String::from_utf8(o.stdout).unwrap();
    // pycocotools' 12 lines, character for character, then the note of the one detection of an
    // unlisted category.
    let summary = want["summary"].as_str().unwrap();
    assert!(text.starts_with(summary), "got:\n{text}\nwant:\n{summary}");
    assert!(text[summary.len()..].starts_with("1 detections of categories the ground truth does not list"), "{text}");

    let o = mnv2(&["coco-eval", &gt, &dt, "--json"]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];
    for (i, n) in names.iter().enumerate() {
        let (g, w) = (v[n].as_f64().unwrap(), want["stats"][i].as_f64().unwrap());
        assert!((g - w).abs() <= 1e-6, "{n}: {g} vs pycocotools {w}");
    }
    assert_eq!(v["ignored_detections"], 1);
    assert_eq!(v["per_category"].as_array().unwrap().len(), 5);
    // Category 7 has detections but no ground truth: -1, as pycocotools' precision holds it.
    assert_eq!(v["per_category"][4]["id"], 7);
    assert_eq!(v["per_category"][4]["AP"], -1.0);
}

#[test]
fn bad_files_are_one_line_errors() {
    let gt = repo("tests/data/coco_eval/mixed.gt.json");
    let dt = tmp("dt.json");
    std::fs::write(
        &dt,
        r#"[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5},
                             {"image_id": 555, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]"#,
    )
    .unwrap();
    let d = dt.to_str().unwrap();
    assert_input_error(
        &mnv2(&["coco-eval", &gt, d]),
        "detection 1 (0-based): image_id 555 is not an image of the ground truth",
    );
    std::fs::write(&dt, r#"[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 0.5}]"#).unwrap();
    assert_input_error(&mnv2(&["coco-eval", &gt, d]), "bbox has 3 numbers");
    std::fs::write(&dt, r#"[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5"#).unwrap();
    assert_input_error(&mnv2(&["coco-eval", &gt, d]), "not a valid COCO results file");
    assert_input_error(&mnv2(&["coco-eval", d, d]), "not a valid COCO annotations file");
    assert_input_error(&mnv2(&["coco-eval", "/nonexistent.json", d]), "/nonexistent.json");
}
