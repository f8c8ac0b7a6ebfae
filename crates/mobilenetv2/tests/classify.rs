//! Classification of real photos with torchvision's real ImageNet weights, against torchvision
//! itself (fixture: tests/data/classify_expected.json, written by scripts/fixtures/classify.py).
//!
//! The weights (`weights/mobilenet_v2-b0353104.pth`, torchvision's legacy-format file) are not
//! committed: `scripts/fetch_assets.sh` fetches and checksums them, and CI runs it before the
//! tests. Without them this test fails and says so; it never skips silently.

use std::path::PathBuf;

use mobilenetv2::classify::{self, Classifier};
use mobilenetv2::engine::Options;
use mobilenetv2::Model;
use serde_json::Value;

/// The tolerance on probabilities.
const PROB_TOL: f32 = 0.01;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn real_weights() -> PathBuf {
    let p = root().join("weights/mobilenet_v2-b0353104.pth");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch_assets.sh to fetch torchvision's ImageNet weights",
        p.display()
    );
    p
}

fn expected() -> Value {
    let p = root().join("tests/data/classify_expected.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

#[test]
fn real_photos_classify_like_torchvision() {
    let model = Model::load(&real_weights()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.spec().classes, 1000);
    let fx = expected();
    let k = fx["top"].as_u64().unwrap() as usize;
    let cases = fx["images"].as_array().unwrap();
    let paths: Vec<PathBuf> =
        cases.iter().map(|c| root().join("tests/data/images").join(c["image"].as_str().unwrap())).collect();
    let classifier = Classifier::new(model, Options { threads: 2, ..Options::default() }).unwrap();
    // All five photos in one batch: also checks that batching keeps images apart.
    let got = classifier.classify_files(&paths, k).unwrap();
    let mut worst = 0f32;
    for (case, g) in cases.iter().zip(&got) {
        let name = case["image"].as_str().unwrap();
        let want = case["top"].as_array().unwrap();
        let want_idx: Vec<usize> = want.iter().map(|t| t["index"].as_u64().unwrap() as usize).collect();
        let got_idx: Vec<usize> = g.top.iter().map(|p| p.index).collect();
        assert_eq!(got_idx, want_idx, "{name}: top-{k} classes differ from torchvision's");
        for (t, p) in want.iter().zip(&g.top) {
            let d = (p.prob - t["prob"].as_f64().unwrap() as f32).abs();
            worst = worst.max(d);
            assert!(d <= PROB_TOL, "{name}: class {} probability {} vs torchvision {}", p.index, p.prob, t["prob"]);
            assert_eq!(p.label.as_deref(), t["label"].as_str(), "{name}: label of {}", p.index);
        }
        eprintln!(
            "{name}: top-1 {} {:?} p={:.6} (torchvision {:.6})",
            g.top[0].index, g.top[0].label, g.top[0].prob, want[0]["prob"]
        );
    }
    eprintln!("max |prob diff| over the top-{k} of every photo: {worst:.3e}");
}

#[test]
fn batch_and_single_image_agree() {
    let model = Model::load(&real_weights()).unwrap_or_else(|e| panic!("{e}"));
    let classifier = Classifier::new(model, Options::default()).unwrap();
    let dir = root().join("tests/data/images");
    let one = classifier.classify_files(&[dir.join("coffee.png")], 3).unwrap();
    let two = classifier.classify_files(&[dir.join("camera.png"), dir.join("coffee.png")], 3).unwrap();
    assert_eq!(one[0].top.len(), 3);
    for (a, b) in one[0].top.iter().zip(&two[1].top) {
        assert_eq!(a.index, b.index);
        assert!((a.prob - b.prob).abs() < 1e-6);
    }
    let probs: f32 = classify::softmax(&[0.0; 1000]).iter().sum();
    assert!((probs - 1.0).abs() < 1e-5);
}
