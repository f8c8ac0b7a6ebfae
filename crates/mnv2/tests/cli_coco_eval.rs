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

/// `mnv2 eval --task detection` on a one-image COCO dataset (the CC0 astronaut, one person box
/// drawn by hand around her) with the real SSDLite person detector: AP50 is 1, and the
/// detections it writes give `mnv2 coco-eval` the same numbers.
#[test]
fn eval_detection_writes_results_that_coco_eval_reads() {
    let pb = common::root().join("weights/ssdlite_mobilenet_v2_person.pb");
    let photo = common::root().join("weights/calib/astronaut.png");
    assert!(
        pb.is_file() && photo.is_file(),
        "run scripts/fetch_assets.sh: the person detector and astronaut.png are fetched"
    );
    let dir = tmp("astronaut-set");
    std::fs::create_dir_all(dir.join("val/images")).unwrap();
    std::fs::copy(&photo, dir.join("val/images/astronaut.png")).unwrap();
    let gt = dir.join("val/instances.json");
    std::fs::write(
        &gt,
        r#"{"images": [{"id": 7, "file_name": "astronaut.png", "width": 512, "height": 512}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [5, 30, 370, 480], "area": 120000, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "person"}]}"#,
    )
    .unwrap();
    let out = dir.join("detections.json");
    let (d, w, o) = (dir.to_str().unwrap(), pb.to_str().unwrap(), out.to_str().unwrap());
    let r = mnv2(&["eval", "--task", "detection", "--weights", w, "--data", d, "--out", o, "--json", "--threads", "1"]);
    ok(&r);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["images"], 1);
    assert!((v["AP50"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{v}");
    let r2 = mnv2(&["coco-eval", gt.to_str().unwrap(), o, "--json"]);
    ok(&r2);
    let v2: serde_json::Value = serde_json::from_slice(&r2.stdout).unwrap();
    for n in ["AP", "AP50", "AP75", "AR1", "AR100", "APl"] {
        assert_eq!(v[n], v2[n], "{n}");
    }
    // The bf16 engine finds the astronaut too.
    let r = mnv2(&["eval", "--task", "detection", "--weights", w, "--data", d, "--json", "--precision", "bf16"]);
    ok(&r);
    let vb: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!((vb["AP50"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{vb}");
    // A dataset with a bad record stops with its file and record, or is skipped with a count.
    std::fs::write(
        &gt,
        r#"{"images": [{"id": 7, "file_name": "astronaut.png", "width": 512, "height": 512}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [5, 30, 370, 480]},
                            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [500, 30, 370, 480]}],
            "categories": [{"id": 1, "name": "person"}]}"#,
    )
    .unwrap();
    let args = ["eval", "--task", "detection", "--weights", w, "--data", d, "--json", "--threads", "1"];
    assert_input_error(&mnv2(&args), "annotation 2 (image 7): box [500, 30, 870, 510] lies outside the 512x512 image");
    let r = mnv2(&[&args[..], &["--skip-bad-annotations"]].concat());
    ok(&r);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["skipped"], 1);
}
