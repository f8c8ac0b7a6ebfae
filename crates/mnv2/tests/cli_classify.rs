//! `mnv2 classify`: the JSON schema, the table, and one-line errors (exit code 1, naming the
//! file, no panic) for missing and corrupt images.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::{assert_input_error, mnv2, photo, real_weights, small_weights, stderr, tmp};

#[test]
fn json_schema_with_the_real_weights() {
    let w = real_weights();
    let (cat, gray) = (photo("chelsea.png"), photo("camera.png"));
    let o = mnv2(&["classify", &cat, &gray, "--weights", &w, "--json", "--top", "3", "--threads", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("stdout is one JSON document");
    let list = v.as_array().expect("a JSON array");
    assert_eq!(list.len(), 2);
    for (item, path) in list.iter().zip([&cat, &gray]) {
        let obj = item.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["image", "top"]);
        assert_eq!(item["image"], path.as_str());
        let top = item["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let mut last = f64::INFINITY;
        for t in top {
            let keys: Vec<_> = t.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["index", "label", "prob"]);
            assert!(t["index"].as_u64().unwrap() < 1000);
            assert!(!t["label"].as_str().unwrap().is_empty());
            let p = t["prob"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p) && p <= last, "{t}");
            last = p;
        }
    }
    assert_eq!(list[0]["top"][0]["index"], 285);
    assert_eq!(list[0]["top"][0]["label"], "Egyptian cat");
    assert_eq!(list[1]["top"][0]["label"], "tripod");
}

#[test]
fn table_by_default() {
    let o = mnv2(&["classify", &photo("coffee.png"), "--weights", &small_weights("table"), "--top", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with("coffee.png"), "{text}");
    assert!(lines[1].contains("rank") && lines[1].contains("label"), "{text}");
    assert_eq!(lines.len(), 2 + 4, "{text}");
    assert!(lines[2].trim_start().starts_with("1 "), "{text}");
}

#[test]
fn missing_image_names_the_file() {
    let w = small_weights("missing");
    let missing = tmp("no-such-photo.jpg");
    let o = mnv2(&["classify", &photo("chelsea.png"), missing.to_str().unwrap(), "--weights", &w]);
    assert_input_error(&o, "no-such-photo.jpg");
}

#[test]
fn corrupt_images_name_the_file() {
    let w = small_weights("corrupt");
    let cut = |name: &str, keep: &dyn Fn(usize) -> usize| {
        let bytes = std::fs::read(photo(name)).unwrap();
        let p = tmp(&format!("truncated-{name}"));
        std::fs::write(&p, &bytes[..keep(bytes.len())]).unwrap();
        p
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        // Half a JPEG: the decoder itself would accept it and fill in grey.
        (cut("rocket.jpg", &|n| n / 2), "truncated"),
        // Only the end-of-image marker missing.
        (cut("grace_hopper.jpg", &|n| n - 2), "truncated"),
        (cut("chelsea.png", &|n| n / 2), "truncated-chelsea.png"),
        (cut("coffee.png", &|_| 20), "truncated-coffee.png"),
    ];
    let text = tmp("notes.png");
    std::fs::write(&text, "these are not pixels").unwrap();
    let empty = tmp("empty.jpg");
    std::fs::write(&empty, "").unwrap();
    for (p, needle) in cases
        .iter()
        .map(|(p, n)| (p.as_path(), *n))
        .chain([(text.as_path(), "notes.png"), (empty.as_path(), "empty.jpg")])
    {
        let o = mnv2(&["classify", p.to_str().unwrap(), "--weights", &w, "--json"]);
        assert_input_error(&o, needle);
        assert_input_error(&o, file_name(p));
    }
}

fn file_name(p: &Path) -> &str {
    p.file_name().unwrap().to_str().unwrap()
}

#[test]
fn top_must_be_positive() {
    let o = mnv2(&["classify", &photo("coffee.png"), "--weights", &small_weights("top"), "--top", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--top"), "{}", stderr(&o));
}
