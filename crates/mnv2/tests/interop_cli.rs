//! `mnv2 export` and the importers through the command line: an exported ONNX file runs
//! through `mnv2 run` with the logits of the weights it came from; a Keras file converts with
//! its TF conventions kept; bad input is a one-line error with exit code 1.

use mobilenetv2::npy;

mod common;
use common::{mnv2, ok, repo, tmp};

#[test]
fn export_then_run_gives_the_same_logits() {
    let (w, m) = (tmp("w.safetensors"), tmp("m.onnx"));
    let (w, m) = (w.to_str().unwrap(), m.to_str().unwrap());
    ok(&mnv2(&["init", "--width", "0.35", "--classes", "7", "--resolution", "64", "--randomize-bn", "--out", w]));
    ok(&mnv2(&["export", "--weights", w, "--format", "onnx", "--out", m, "--dynamic-batch", "--opset", "13"]));
    let x = tmp("x.npy");
    let values: Vec<f32> = (0..2 * 3 * 64 * 64).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
    npy::write(&x, &npy::Array { shape: vec![2, 3, 64, 64], data: values }).unwrap();
    let (a, b) = (tmp("a.npy"), tmp("b.npy"));
    let x = x.to_str().unwrap();
    ok(&mnv2(&["run", "--weights", w, "--input", x, "--output", a.to_str().unwrap()]));
    ok(&mnv2(&["run", "--weights", m, "--input", x, "--output", b.to_str().unwrap()]));
    assert_eq!(npy::read(&a).unwrap().data, npy::read(&b).unwrap().data, "the ONNX file gives other logits");
}

#[test]
fn keras_converts_with_its_conventions() {
    let out = tmp("k.safetensors");
    ok(&mnv2(&["convert", &repo("tests/data/interop/keras/keras3_w010_64x80.h5"), out.to_str().unwrap()]));
    let file = mobilenetv2::weights::load(&out).unwrap();
    let spec: mobilenetv2::Spec = serde_json::from_str(&file.metadata["spec"]).unwrap();
    assert_eq!((spec.padding, spec.bn_eps, spec.height, spec.width_px), (mobilenetv2::spec::Padding::Tf, 1e-3, 64, 80));
    assert!(file.metadata["preprocess"].contains("\"resize\":null"), "{}", file.metadata["preprocess"]);
}

#[test]
fn bad_interop_input_is_one_line() {
    let w = tmp("w2.safetensors");
    let w = w.to_str().unwrap();
    ok(&mnv2(&["init", "--width", "0.35", "--classes", "3", "--resolution", "64", "--out", w]));
    let o =
        mnv2(&["export", "--weights", w, "--format", "onnx", "--out", tmp("x.onnx").to_str().unwrap(), "--opset", "7"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("opset 7") && e.trim_end().lines().count() == 1, "{e}");
    let bad = tmp("bad.tflite");
    std::fs::write(&bad, b"\x10\x00\x00\x00TFL3\x00\x00\x00\x00").unwrap();
    let x = tmp("x2.npy");
    npy::write(&x, &npy::Array { shape: vec![1, 3, 64, 64], data: vec![0.0; 3 * 64 * 64] }).unwrap();
    let o = mnv2(&["run", "--weights", bad.to_str().unwrap(), "--input", x.to_str().unwrap(), "--output", "/dev/null"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("bad.tflite") && e.contains("TFLite") && e.trim_end().lines().count() == 1, "{e}");
}
