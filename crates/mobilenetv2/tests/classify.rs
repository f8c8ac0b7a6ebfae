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

/// The issue's tolerance on probabilities.
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

/// bf16 precision on the real weights and photos: the same top-1 class as fp32 (and
/// torchvision) for every photo; the largest logit difference to fp32 is printed.
#[test]
fn bf16_keeps_the_top_class_of_every_photo() {
    use mobilenetv2::engine::Precision;
    let fx = expected();
    let cases = fx["images"].as_array().unwrap();
    let paths: Vec<PathBuf> =
        cases.iter().map(|c| root().join("tests/data/images").join(c["image"].as_str().unwrap())).collect();
    let images: Vec<_> = paths.iter().map(|p| mobilenetv2::preprocess::decode(p).unwrap()).collect();
    let logits = |precision| {
        let model = Model::load(&real_weights()).unwrap_or_else(|e| panic!("{e}"));
        let c =
            Classifier::new(model, Options { threads: 2, precision: Some(precision), ..Options::default() }).unwrap();
        assert_eq!(c.engine().precision(), Some(precision));
        c.logits(&images).unwrap()
    };
    let (fp32, bf16) = (logits(Precision::Fp32), logits(Precision::Bf16));
    let classes = fp32.shape.c;
    let (mut worst, mut scale) = (0f32, 0f32);
    for (i, case) in cases.iter().enumerate() {
        let name = case["image"].as_str().unwrap();
        let (f, b) = (&fp32.data[i * classes..][..classes], &bf16.data[i * classes..][..classes]);
        let top = |v: &[f32]| classify::top_k(v, 1)[0].0;
        let want = case["top"][0]["index"].as_u64().unwrap() as usize;
        assert_eq!(top(f), want, "{name}: fp32 top-1");
        assert_eq!(top(b), want, "{name}: bf16 top-1 {} differs from fp32/torchvision {want}", top(b));
        let d = f.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d > 0.0, "{name}: bf16 logits equal fp32 ones: the bf16 path did not run");
        worst = worst.max(d);
        scale = scale.max(f.iter().fold(0f32, |m, v| m.max(v.abs())));
        eprintln!("{name}: top-1 {want} in fp32 and bf16; max |logit diff| {d:.3e}");
    }
    println!("bf16 vs fp32 on the real photos: top-1 unchanged, max |logit diff| {worst:.3e} (max |logit| {scale:.2})");
}

/// The README's "As a library" block is `examples/library.rs` (which CI compiles): its `use`
/// lines, then the lines between the example's snippet markers, with the example's `weights`
/// and `image` arguments written as the README's literal paths.
#[test]
fn readme_library_snippet_is_the_compiled_example() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let example = std::fs::read_to_string(root().join("crates/mobilenetv2/examples/library.rs")).unwrap();
    let start = readme.find("```rust\nuse mobilenetv2::").expect("README.md: the library block") + "```rust\n".len();
    let block = &readme[start..start + readme[start..].find("```").expect("README.md: the block's end")];
    let (_, after) = example.split_once("// --- README snippet ---\n").expect("library.rs: snippet start marker");
    let (snippet, _) = after.split_once("// --- end of snippet ---").expect("library.rs: snippet end marker");
    let snippet: Vec<String> = snippet
        .lines()
        .map(|l| {
            l.strip_prefix("    ")
                .unwrap_or(l)
                .replace("Model::load(weights)", "Model::load(\"weights/mobilenet_v2-b0353104.pth\".as_ref())")
                .replace("preprocess::load(image,", "preprocess::load(\"photo.jpg\".as_ref(),")
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    let (uses, body): (Vec<&str>, Vec<&str>) =
        block.lines().filter(|l| !l.trim().is_empty()).partition(|l| l.starts_with("use "));
    for u in &uses {
        assert!(example.lines().any(|l| l == *u), "README.md's `{u}` is not in examples/library.rs");
    }
    assert_eq!(body, snippet, "README.md's library block differs from examples/library.rs's snippet");
}
