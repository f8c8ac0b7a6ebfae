//! The real SSDLite-MobileNetV2's network exported to ONNX (raw outputs `box_encodings` and
//! `class_logits` for all 1917 anchors) reproduces the engine: ONNX Runtime ran the graph the
//! exporter writes (scripts/fixtures/ssdlite_onnx.py; the export must hash as the one it ran)
//! on a deterministic network input, and the engine's raw outputs on that input agree within
//! 1e-4 absolute. The measured worst errors are printed (`-- --nocapture`). Needs weights/
//! (scripts/fetch_assets.sh).

use std::path::PathBuf;

use mobilenetv2::detect::{Detector, DetectorOptions};
use mobilenetv2::export::onnx::{self, Options, SSD_OUTPUTS};
use mobilenetv2::plan::Shape;
use mobilenetv2::{npy, Batch};
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn data(name: &str) -> npy::Array {
    npy::read(&root().join("tests/data/ssdlite").join(name)).unwrap_or_else(|e| panic!("{e}"))
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn onnx_runtime_reproduces_the_detector_network() {
    let pb = root().join("weights/ssdlite_mobilenet_v2_person.pb");
    assert!(pb.is_file(), "{} is missing: run scripts/fetch_assets.sh", pb.display());
    let det = Detector::load(&pb, DetectorOptions { threads: 2, ..Default::default() }).unwrap();
    // The graph ONNX Runtime ran is the one exported today.
    let bytes = onnx::to_bytes(det.model(), Options::default()).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/data/ssdlite/onnx.json")).unwrap()).unwrap();
    let hash: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hash,
        meta["onnx_sha256"].as_str().unwrap(),
        "the exporter changed: rerun scripts/fixtures/ssdlite_onnx.py"
    );
    let proto = onnx::to_proto(det.model(), Options::default()).unwrap();
    let outs: Vec<_> = proto.graph.unwrap().output.into_iter().map(|o| o.name.unwrap()).collect();
    assert_eq!(outs, SSD_OUTPUTS);
    // The fixture's input, NHWC for the engine.
    let mut x = Vec::with_capacity(300 * 300 * 3);
    for h in 0..300 {
        for w in 0..300 {
            for c in 0..3 {
                x.push(((3 * h + 5 * w + 70 * c) % 255) as f32 / 127.5 - 1.0);
            }
        }
    }
    let raw = det.network_outputs(&Batch::new(1, Shape::new(300, 300, 3), x).unwrap()).unwrap();
    let (boxes, logits) = (data("onnx.box_encodings.npy"), data("onnx.class_logits.npy"));
    assert_eq!((boxes.shape.as_slice(), logits.shape.as_slice()), (&[1917, 4][..], &[1917, 2][..]));
    let (eb, el) = (max_abs(&raw[0].box_encodings, &boxes.data), max_abs(&raw[0].class_logits, &logits.data));
    let scale = logits.data.iter().chain(&boxes.data).fold(0f32, |m, v| m.max(v.abs()));
    println!(
        "ONNX Runtime vs engine, 1917 anchors: box encodings {eb:.3e}, class logits {el:.3e} (values up to {scale:.2})"
    );
    assert!(eb <= 1e-4 && el <= 1e-4, "boxes {eb}, logits {el}");
}
