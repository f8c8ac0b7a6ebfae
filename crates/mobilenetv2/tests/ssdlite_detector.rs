//! The real SSDLite-MobileNetV2, imported from its frozen graph onto the plan with its head,
//! against TensorFlow running that graph (tests/data/ssdlite/, scripts/fixtures/ssdlite_tf.py):
//! the raw class logits and box encodings of all 1917 anchors on three photos within 1e-4
//! absolute (one batch of three, two threads), and `Detector::detect` on astronaut.png
//! reproducing TF's final detections (boxes within 0.5 px, scores within 1e-4). The measured
//! worst errors are printed (`-- --nocapture`). Needs weights/ (scripts/fetch_assets.sh).

use std::path::PathBuf;

use mobilenetv2::detect::{Detector, DetectorOptions};
use mobilenetv2::engine::Mode;
use mobilenetv2::{npy, preprocess};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fetched(rel: &str) -> PathBuf {
    let p = root().join(rel);
    assert!(p.is_file(), "{} is missing: run scripts/fetch_assets.sh", p.display());
    p
}

fn data(name: &str) -> npy::Array {
    npy::read(&root().join("tests/data/ssdlite").join(name)).unwrap_or_else(|e| panic!("{e}"))
}

fn photos() -> Vec<Value> {
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/data/ssdlite/meta.json")).unwrap()).unwrap();
    m["photos"].as_array().unwrap().clone()
}

fn detector(threshold: f32) -> Detector {
    detector_on(threshold, Mode::Fast, 2)
}

fn detector_on(threshold: f32, mode: Mode, threads: usize) -> Detector {
    let opts = DetectorOptions { threshold, threads, mode, ..DetectorOptions::default() };
    Detector::from_graph(&fetched("weights/ssdlite_mobilenet_v2_person.pb"), opts).unwrap_or_else(|e| panic!("{e}"))
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn raw_outputs_match_tensorflow_on_three_photos() {
    let det = detector(0.5);
    assert_eq!(det.anchors().len(), 1917);
    let photos = photos();
    let images: Vec<_> = photos
        .iter()
        .map(|p| preprocess::decode(&fetched(p["file"].as_str().unwrap())).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let raw = det.raw_outputs(&images).unwrap();
    for (p, r) in photos.iter().zip(&raw) {
        let name = p["name"].as_str().unwrap();
        let logits = data(&format!("{name}.class_logits.npy"));
        let codes = data(&format!("{name}.box_encodings.npy"));
        assert_eq!(logits.shape, [1917, 2]);
        let (el, eb) = (max_abs(&r.class_logits, &logits.data), max_abs(&r.box_encodings, &codes.data));
        println!("{name}: 1917 anchors, max |ours - TF| class logits {el:.3e}, box encodings {eb:.3e}");
        assert!(el <= 1e-4 && eb <= 1e-4, "{name}: logits {el}, boxes {eb}");
    }
}

#[test]
fn astronaut_person_where_tensorflow_finds_it() {
    let photo = photos().into_iter().find(|p| p["name"] == "astronaut").unwrap();
    let (w, h) = (photo["width"].as_f64().unwrap() as f32, photo["height"].as_f64().unwrap() as f32);
    let image = preprocess::decode(&fetched("weights/calib/astronaut.png")).unwrap();
    // TF's detections: (ymin, xmin, ymax, xmax) normalised, score, class (1-based), by score.
    let want = data("astronaut.detections.npy");
    let threshold = 0.01;
    let tf: Vec<&[f32]> = want.data.chunks_exact(6).filter(|t| t[4] >= threshold).collect();
    let got = detector(threshold).detect(&image).unwrap();
    assert!(!got.is_empty() && tf[0][4] > 0.5, "TF finds the person: {:?}", tf[0]);
    assert_eq!(got.len(), tf.len(), "detections scoring >= {threshold}");
    let (mut worst_px, mut worst_score) = (0f32, 0f32);
    for (k, (d, t)) in got.iter().zip(&tf).enumerate() {
        let want_px = [t[1] * w, t[0] * h, t[3] * w, t[2] * h];
        let dp = max_abs(&d.bbox, &want_px);
        let ds = (d.score - t[4]).abs();
        assert_eq!(d.class as f32 + 1.0, t[5], "#{k}: class");
        assert!(dp <= 0.5 && ds <= 1e-4, "#{k}: ours {d:?}, TF {want_px:?} {}", t[4]);
        worst_px = worst_px.max(dp);
        worst_score = worst_score.max(ds);
    }
    let top = got[0];
    println!(
        "astronaut: {} detections >= {threshold}, top person {:.4} at {:?} px; max box error {worst_px:.3e} px, max score error {worst_score:.3e}",
        got.len(),
        top.score,
        top.bbox
    );
    // Batches: the same image twice gives the same detections as once.
    let two = detector(threshold).detect_batch(&[image.clone(), image]).unwrap();
    assert_eq!(two[0], got);
    assert_eq!(two[1], got);
}

/// The fast engine (fused backbone, block 14's expansion and the last conv materialised once,
/// extra layers and predictors on the fast kernels) and the streaming one against the
/// layer-by-layer reference engine on the three photos: batches of 3 and of 1, on 1 and 2
/// threads, all 1917 anchors' class logits and box encodings within 4e-5 absolute of the
/// reference (f32 sums in another order: 2.2e-5 measured at worst; TF's own oneDNN on/off
/// spread is 1.4e-5) and within TF's 1e-4.
#[test]
fn fast_engine_matches_reference_engine() {
    let photos = photos();
    let images: Vec<_> = photos
        .iter()
        .map(|p| preprocess::decode(&fetched(p["file"].as_str().unwrap())).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let reference = detector_on(0.5, Mode::Reference, 2).raw_outputs(&images).unwrap();
    let tol = 4e-5;
    for (mode, threads) in [(Mode::Fast, 1), (Mode::Fast, 2), (Mode::Streaming, 1), (Mode::Streaming, 2)] {
        let det = detector_on(0.5, mode, threads);
        let batch = det.raw_outputs(&images).unwrap();
        let single: Vec<_> =
            images.iter().map(|im| det.raw_outputs(std::slice::from_ref(im)).unwrap().remove(0)).collect();
        for (k, p) in photos.iter().enumerate() {
            let name = p["name"].as_str().unwrap();
            let (want_l, want_b) =
                (data(&format!("{name}.class_logits.npy")), data(&format!("{name}.box_encodings.npy")));
            for (how, r) in [("batch of 3", &batch[k]), ("alone", &single[k])] {
                let el = max_abs(&r.class_logits, &reference[k].class_logits);
                let eb = max_abs(&r.box_encodings, &reference[k].box_encodings);
                let (tl, tb) = (max_abs(&r.class_logits, &want_l.data), max_abs(&r.box_encodings, &want_b.data));
                println!(
                    "{mode:?} {threads} thread(s), {name} {how}: max |fast - reference| logits {el:.2e}, boxes {eb:.2e}; |fast - TF| {tl:.2e}, {tb:.2e}"
                );
                assert!(el <= tol && eb <= tol, "{mode:?} x{threads} {name} {how}: logits {el}, boxes {eb}");
                assert!(tl <= 1e-4 && tb <= 1e-4, "{mode:?} x{threads} {name} {how} vs TF: logits {tl}, boxes {tb}");
            }
        }
    }
}
