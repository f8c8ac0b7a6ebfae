//! The detector's pure parts against TensorFlow running the real SSDLite-MobileNetV2 frozen
//! graph (fixtures in tests/data/ssdlite/, written by scripts/fixtures/ssdlite_tf.py):
//! anchors (1e-6), the legacy resize and input mapping (1e-5), box decoding, and decoding + NMS
//! on TF's own raw outputs reproducing TF's final detections (boxes 0.5 px, scores 1e-4).
//! The measured worst errors are printed (`-- --nocapture`).
//!
//! Tests marked "needs the graph" read weights/ssdlite_mobilenet_v2_person.pb and
//! weights/calib/astronaut.png, fetched by scripts/fetch_assets.sh; without them they fail and
//! say so.

use std::path::PathBuf;

use mobilenetv2::detect::resize::resize_bilinear_legacy;
use mobilenetv2::detect::{anchors, AnchorGenerator, PostProcess, SsdConfig, TfPreprocess};
use mobilenetv2::npy;
use mobilenetv2::preprocess;
use mobilenetv2::weights::tfgraph::TfGraph;
use serde_json::Value;

const GRIDS: [(usize, usize); 6] = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn data(name: &str) -> npy::Array {
    npy::read(&root().join("tests/data/ssdlite").join(name)).unwrap_or_else(|e| panic!("{e}"))
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("tests/data/ssdlite/meta.json")).unwrap()).unwrap()
}

fn fetched(rel: &str) -> PathBuf {
    let p = root().join(rel);
    assert!(p.is_file(), "{} is missing: run scripts/fetch_assets.sh", p.display());
    p
}

fn boxes(a: &npy::Array) -> Vec<[f32; 4]> {
    a.data.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}

#[test]
fn anchors_match_tensorflow() {
    let want = boxes(&data("anchors.npy"));
    let got = anchors::generate(&AnchorGenerator::default().box_specs(), &GRIDS, 300, 300, [1.0, 1.0]).unwrap();
    assert_eq!(got.len(), want.len());
    let worst =
        got.iter().zip(&want).flat_map(|(g, w)| g.iter().zip(w).map(|(a, b)| (a - b).abs())).fold(0f32, f32::max);
    println!("anchors: max |ours - TF| = {worst:.3e} over {} anchors", got.len());
    assert!(worst <= 1e-6, "anchors differ from TF's by {worst}");
}

#[test]
fn legacy_resize_matches_tensorflow_on_small_images() {
    for case in meta()["resize_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let x = data(&format!("resize_{name}.input.npy"));
        let y = data(&format!("resize_{name}.output.npy"));
        let got = resize_bilinear_legacy(&x.data, x.shape[0], x.shape[1], 3, y.shape[0], y.shape[1]);
        let worst = got.iter().zip(&y.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("resize {name} {:?} -> {:?}: max |ours - TF| = {worst:.3e}", &x.shape[..2], &y.shape[..2]);
        assert!(worst <= 1e-5, "{name}: {worst}");
    }
}

#[test]
fn network_input_matches_tensorflow_on_a_photo() {
    // needs the graph's photo: astronaut.png (512x512) through the graph's own preprocessing.
    let img = preprocess::decode(&fetched("weights/calib/astronaut.png")).unwrap();
    let x = TfPreprocess::default().apply(&img);
    let sample = data("astronaut.input_sample.npy");
    let idx: Vec<usize> =
        meta()["input_sample_rows_cols"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let mut worst = 0f32;
    for (i, &r) in idx.iter().enumerate() {
        for (j, &c) in idx.iter().enumerate() {
            for ch in 0..3 {
                let d = (x[(r * 300 + c) * 3 + ch] - sample.data[(i * idx.len() + j) * 3 + ch]).abs();
                worst = worst.max(d);
            }
        }
    }
    println!("network input (astronaut, {} samples): max |ours - TF| = {worst:.3e}", idx.len() * idx.len() * 3);
    assert!(worst <= 1e-5, "{worst}");
}

#[test]
fn decoding_matches_tensorflow() {
    let anchors = boxes(&data("anchors.npy"));
    let codes = data("astronaut.box_encodings.npy");
    let want = boxes(&data("astronaut.decoded_boxes.npy"));
    let got = PostProcess::default().coder.decode_all(&anchors, &codes.data);
    let worst =
        got.iter().zip(&want).flat_map(|(g, w)| g.iter().zip(w).map(|(a, b)| (a - b).abs())).fold(0f32, f32::max);
    println!("decoded boxes (astronaut): max |ours - TF| = {worst:.3e}");
    assert!(worst <= 1e-6, "{worst}");
}

#[test]
fn decoding_and_nms_on_tf_raw_outputs_reproduce_tf_detections() {
    let anchors = boxes(&data("anchors.npy"));
    let post = PostProcess::default();
    let (mut worst_px, mut worst_score) = (0f32, 0f32);
    for photo in meta()["photos"].as_array().unwrap() {
        let name = photo["name"].as_str().unwrap();
        let (w, h) = (photo["width"].as_f64().unwrap() as f32, photo["height"].as_f64().unwrap() as f32);
        let codes = data(&format!("{name}.box_encodings.npy"));
        let logits = data(&format!("{name}.class_logits.npy"));
        let want = data(&format!("{name}.detections.npy"));
        let n = photo["num_detections"].as_u64().unwrap() as usize;
        let got = post.run(&anchors, &codes.data, &logits.data, 2);
        assert_eq!(got.len(), n, "{name}: number of detections");
        for (k, (d, t)) in got.iter().zip(want.data.chunks_exact(6)).enumerate() {
            assert_eq!(d.class as f32 + 1.0, t[5], "{name} #{k}: class");
            let ds = (d.score - t[4]).abs();
            let scale = [h, w, h, w];
            let dp = (0..4).map(|i| ((d.bbox[i] - t[i]) * scale[i]).abs()).fold(0f32, f32::max);
            assert!(ds <= 1e-4 && dp <= 0.5, "{name} #{k}: ours {d:?}, TF {t:?}");
            worst_px = worst_px.max(dp);
            worst_score = worst_score.max(ds);
        }
    }
    println!("detections from TF raw outputs (3 photos x 100): max box error {worst_px:.3e} px, max score error {worst_score:.3e}");
}

#[test]
fn constants_read_from_the_graph() {
    // needs the graph: every setting read from its nodes equals the OD API config it was made with.
    let g = TfGraph::read_path(&fetched("weights/ssdlite_mobilenet_v2_person.pb")).unwrap();
    let c = SsdConfig::from_graph(&g).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.classes, 1);
    assert_eq!(c.preprocess, TfPreprocess::default());
    assert_eq!(c.post, PostProcess::default());
    assert_eq!(c.box_specs, AnchorGenerator::default().box_specs());
    // A graph without the anchor generator is refused, naming what is missing.
    let sub = TfGraph::read_path(&root().join("tests/data/ssdlite/subgraph.pb")).unwrap();
    let e = SsdConfig::from_graph(&sub).unwrap_err().to_string();
    assert!(e.contains("subgraph.pb") && e.contains("Postprocessor/Decode/truediv/y"), "{e}");
}
