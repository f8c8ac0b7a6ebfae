//! int8 interop (fixtures from scripts/fixtures/interop_int8.py).
//!
//! Export: an int8 model (random weights, min/max calibration) written as a QDQ graph is byte
//! for byte the file ONNX Runtime ran, ONNX Runtime fused it into its integer kernels
//! (QLinearConv, QGemm), and its logits match the int8 engine's within int8 rounding (the
//! biases are rounded onto ONNX Runtime's int32 grid): cosine >= 0.9999, max difference <= 1%
//! of the largest logit. Re-importing the export gives the same int8 model (weights, scales and
//! activation quantisation; the biases rounded onto the int32 grid).
//!
//! Import: QDQ graphs from onnxruntime's quantize_static (per-channel and per-tensor weights)
//! and full-integer TFLite models map onto the int8 engine: the per-channel files' weight
//! integers run unchanged, and the logits match ONNX Runtime's and the TFLite interpreter's
//! within what the engine does not represent (the projections' pre-residual, the last conv's
//! and the logits' quantisation, listed as import notes; the input's quantisation is held and
//! runs the int8 stem): cosine >= 0.9995, max
//! difference <= 2% of the largest logit, same top-1. What the scheme cannot hold is refused.

#[path = "interop_common/mod.rs"]
mod ic;

use std::collections::HashMap;

use ic::*;
use mobilenetv2::export::onnx::{self, Options};
use mobilenetv2::plan::Op;
use mobilenetv2::quant::{self, ActQuant, Method};
use mobilenetv2::weights::onnx::proto;
use mobilenetv2::weights::{self, Data, Tensor};
use mobilenetv2::{Batch, Model, Spec};
use prost::Message;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn configs(name: &str) -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(data(&format!("int8/{name}.json"))).unwrap()).unwrap()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-interop-int8-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// Logits against a reference: per image cosine >= `cos`, max difference <= `rel` of the
/// largest logit, the same top-1.
fn check_close(name: &str, got: &[f32], want: &[f32], classes: usize, cos: f64, rel: f32) {
    let err = max_abs_diff(got, want);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got.chunks(classes).zip(want.chunks(classes)).map(|(a, b)| cosine(a, b)).fold(1.0, f64::min);
    eprintln!("{name}: max |mnv2 - reference| = {err:.3e} (max |logit| {scale:.3}), worst cosine {worst:.6}");
    assert!(worst >= cos, "{name}: cosine {worst}");
    assert!(err <= rel * scale, "{name}: {err} is more than {rel} of {scale}");
    for (i, (a, b)) in got.chunks(classes).zip(want.chunks(classes)).enumerate() {
        assert_eq!(argmax(a), argmax(b), "{name}: top-1 of image {i}");
    }
}

fn notes(path: &std::path::Path) -> Vec<String> {
    let file = mobilenetv2::weights::load(path).unwrap();
    serde_json::from_str(file.metadata.get("import_notes").map_or("[]", |s| s.as_str())).unwrap()
}

/// The int8 model of an export config: `mnv2 init --randomize-bn`, `mnv2 quantize --method
/// minmax` on the calibration batch, saved and loaded back (as `mnv2 export` reads it).
fn quantised(cfg: &Value) -> Model {
    let spec: Spec = serde_json::from_value(cfg["spec"].clone()).unwrap();
    let model = Model::init(&spec, cfg["seed"].as_u64().unwrap(), true).unwrap();
    let (n, seed) = (cfg["calib"][0].as_u64().unwrap() as usize, cfg["calib"][1].as_u64().unwrap());
    let dims = [n, 3, spec.height, spec.width_px];
    let calib = Batch::from_nchw(&dims, &det_input(dims.iter().product(), seed)).unwrap();
    let q = quant::calibrate(&model, &[calib], Method::MinMax).unwrap();
    let mut qm = model;
    qm.quant = Some(q.clone());
    let path = tmp(&format!("{}.safetensors", cfg["name"].as_str().unwrap()));
    quant::save(&qm, &q, &path).unwrap();
    Model::load(&path).unwrap()
}

#[test]
fn qdq_export_runs_on_onnxruntime_int8_kernels_and_matches() {
    for cfg in configs("export") {
        let name = cfg["name"].as_str().unwrap();
        let model = quantised(&cfg);
        let opts =
            Options { dynamic_batch: cfg["dynamic"].as_bool().unwrap_or(false), opset: cfg["opset"].as_i64().unwrap() };
        let bytes = onnx::to_bytes(&model, opts).unwrap();
        let sha = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(sha, cfg["sha256"].as_str().unwrap(), "{name}: the export is not the file ONNX Runtime ran");
        // ONNX Runtime ran every convolution that reads and writes quantised tensors (the stem
        // included: the input is quantised), and the classifier, as integer kernels (the
        // residual projections and the last conv compute in float, as in the engine).
        let plan = &model.plan;
        assert!(model.quant.as_ref().unwrap().input.is_some(), "{name}: calibration records the input");
        let fused = plan.layers.iter().filter(|l| l.conv().is_some_and(|c| !c.residual)).count() - 1;
        assert_eq!(cfg["ort_fused_ops"]["QLinearConv"].as_u64(), Some(fused as u64), "{name}");
        assert_eq!(cfg["ort_fused_ops"]["QGemm"].as_u64(), Some(1), "{name}");
        let spec = model.spec();
        let batch = cfg["batch"].as_u64().unwrap() as usize;
        let dims = [batch, 3, spec.height, spec.width_px];
        let x = det_input(dims.iter().product(), cfg["seed"].as_u64().unwrap());
        let got = logits_nchw(&model, &dims, &x);
        let want = npy(&data(&format!("int8/{name}.logits.npy"))).data;
        check_close(name, &got, &want, spec.classes, 0.9999, 0.01);
        // Re-import: the same int8 model, its weights' integers and its quantisation.
        let path = tmp(&format!("{name}.onnx"));
        std::fs::write(&path, &bytes).unwrap();
        let back = Model::load(&path).unwrap();
        assert_eq!(back.spec(), model.spec(), "{name}");
        assert_eq!(back.quant, model.quant, "{name}: quantisation round trip");
        let (a, b) = (
            weights::int8::quantized_tensors(&back.plan, &back.params),
            weights::int8::quantized_tensors(&model.plan, &model.params),
        );
        for (k, t) in a.iter().filter(|(k, _)| k.ends_with(".weight") || k.ends_with(".weight_scale")) {
            assert_eq!(Some(t), b.get(k), "{name}: {k} round trip");
        }
        // The biases come back on the int32 grid of the export.
        let again = logits_nchw(&back, &dims, &x);
        check_close(&format!("{name} re-imported"), &again, &got, spec.classes, 0.99999, 0.01);
        assert_eq!(notes(&path), Vec::<String>::new(), "{name}: an mnv2 export maps exactly");
    }
}

#[test]
fn qdq_export_needs_opset_13() {
    let cfg = &configs("export")[1];
    let e = onnx::to_bytes(&quantised(cfg), Options { dynamic_batch: false, opset: 12 }).unwrap_err().to_string();
    assert!(e.contains("opset 13"), "{e}");
}

/// The int8 weights of an ONNX graph's Conv and Gemm nodes, in graph order (OIHW, [out, in]).
fn onnx_weight_ints(path: &std::path::Path) -> Vec<Vec<i8>> {
    let m = proto::ModelProto::decode(&*std::fs::read(path).unwrap()).unwrap();
    let g = m.graph.unwrap();
    let inits: HashMap<&str, &proto::TensorProto> = g.initializer.iter().map(|t| (t.name(), t)).collect();
    let producer: HashMap<&str, &proto::NodeProto> =
        g.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    g.node
        .iter()
        .filter(|n| matches!(n.op_type(), "Conv" | "Gemm"))
        .map(|n| {
            let dq = producer[n.input[1].as_str()];
            assert_eq!(dq.op_type(), "DequantizeLinear");
            inits[dq.input[0].as_str()].raw_data().iter().map(|&b| b as i8).collect()
        })
        .collect()
}

#[test]
fn quantize_static_qdq_graphs_run_on_the_int8_engine() {
    for cfg in configs("qdq") {
        let name = cfg["name"].as_str().unwrap();
        let path = data(&format!("int8/{}", cfg["file"].as_str().unwrap()));
        let model = Model::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let q = model.quant.as_ref().unwrap_or_else(|| panic!("{name}: imported as int8"));
        assert_eq!((q.method, q.images), (Method::Imported, 0), "{name}");
        let s = model.spec();
        assert_eq!((s.width, s.classes), (cfg["width"].as_f64().unwrap(), cfg["classes"].as_u64().unwrap() as usize));
        // ReLU6 was folded into the quantisation ranges: zero point 0 and a range within [0, 6].
        for b in &q.blocks {
            for a in [b.hidden, b.dw] {
                assert!(a.zero == 0 && 255.0 * a.scale <= 6.0 + a.scale, "{name}: {a:?}");
            }
        }
        let batch = cfg["batch"].as_u64().unwrap() as usize;
        let dims = [batch, 3, s.height, s.width_px];
        let x = det_input(dims.iter().product(), cfg["seed"].as_u64().unwrap());
        let got = logits_nchw(&model, &dims, &x);
        let want = npy(&data(&format!("int8/{name}.logits.npy"))).data;
        check_close(name, &got, &want, s.classes, 0.9995, 0.02);
        let notes = notes(&path);
        for what in ["before the residual add", "last convolution", "the logits'"] {
            assert!(notes.iter().any(|n| n.contains(what)), "{name}: a note on {what}: {notes:?}");
        }
        assert!(q.input.is_some(), "{name}: the input's quantisation is held");
        assert!(!notes.iter().any(|n| n.contains("the input's")), "{name}: {notes:?}");
        // The engine runs the file's own weight integers when they are per output channel.
        let ints = weights::int8::quantized_tensors(&model.plan, &model.params);
        let engine: Vec<&Tensor> = model
            .plan
            .layers
            .iter()
            .filter(|l| matches!(l.op, Op::Conv(_) | Op::Linear))
            .map(|l| &ints[&format!("{}.weight", l.name)])
            .collect();
        let same = onnx_weight_ints(&path)
            .iter()
            .zip(&engine)
            .filter(|(f, t)| matches!(&t.data, Data::I8(v) if v == *f))
            .count();
        let requantised = notes.iter().any(|n| n.contains("requantised"));
        if cfg["per_channel"].as_bool().unwrap() {
            assert_eq!(same, engine.len(), "{name}: every layer runs the file's integers");
            assert!(!requantised, "{name}: {notes:?}");
        } else {
            assert!(requantised, "{name}: per-tensor weights are requantised per channel: {notes:?}");
        }
    }
}

#[test]
fn full_integer_tflite_runs_on_the_int8_engine() {
    for (file, cfg) in [
        ("int8/tflite_w035_64_int8.tflite", configs("tflite").remove(0)),
        ("tflite/tflite_w010_64_int8.tflite", {
            let p = data("tflite/configs.json");
            let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            all.into_iter().find(|c| c["kind"] == "int8").unwrap()
        }),
    ] {
        let path = data(file);
        let model = Model::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(model.quant.is_some(), "{file}: imported as int8");
        let s = model.spec();
        let batch = cfg["batch"].as_u64().unwrap() as usize;
        let dims = [batch, 3, s.height, s.width_px];
        let x = det_input(dims.iter().product(), cfg["seed"].as_u64().unwrap());
        let got = logits_nchw(&model, &dims, &x);
        let want = npy(&path.with_extension("logits.npy")).data;
        check_close(file, &got, &want, s.classes, 0.9995, 0.02);
        let notes = notes(&path);
        assert!(!notes.iter().any(|n| n.contains("requantised")), "{file}: the file's integers: {notes:?}");
        // The input's int8 quantisation is held (zero point + 128): the stem runs on its codes.
        assert!(model.quant.as_ref().unwrap().input.is_some(), "{file}: the input's quantisation");
        assert!(!notes.iter().any(|n| n.contains("the input's")), "{file}: {notes:?}");
    }
}

// Refusals, on a small exported model edited.

fn small() -> Model {
    let spec = Spec { classes: 4, ..Spec::new(0.35, 64) };
    let model = Model::init(&spec, 5, true).unwrap();
    let calib = Batch::from_nchw(&[2, 3, 64, 64], &det_input(2 * 3 * 64 * 64, 9)).unwrap();
    let q = quant::calibrate(&model, &[calib], Method::MinMax).unwrap();
    Model { quant: Some(q), ..model }
}

fn load_err(m: &proto::ModelProto, name: &str) -> String {
    let path = tmp(name);
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let e = Model::load(&path).unwrap_err().to_string();
    assert!(e.contains(name) && !e.contains('\n'), "{e}");
    e
}

/// Removes the QuantizeLinear `q` and its DequantizeLinear, reading `q`'s input instead.
fn drop_qdq(m: &mut proto::ModelProto, q: &str) {
    let g = m.graph.as_mut().unwrap();
    let src = g.node.iter().find(|n| n.name() == q).unwrap().input[0].clone();
    let dq = g.node.iter().find(|n| n.op_type() == "DequantizeLinear" && n.input[0] == q).unwrap().output[0].clone();
    g.node.retain(|n| n.name() != q && n.output[0] != dq);
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut().filter(|i| **i == dq) {
            *i = src.clone();
        }
    }
}

fn set_init(m: &mut proto::ModelProto, name: &str, f: impl FnOnce(&mut proto::TensorProto)) {
    f(m.graph.as_mut().unwrap().initializer.iter_mut().find(|t| t.name() == name).unwrap());
}

#[test]
fn qdq_import_refuses_what_the_int8_scheme_cannot_hold() {
    let model = small();
    let proto = |m: &Model| onnx::to_proto(m, Options::default()).unwrap();
    // A ReLU6 folded into a quantisation that no longer clamps at 0.
    let mut m = proto(&model);
    set_init(&mut m, "features.2.conv.0.0.output.zero_point", |t| t.raw_data = Some(vec![100]));
    let e = load_err(&m, "zp.onnx");
    assert!(e.contains("features.2.conv.0.0") && e.contains("nor quantised to a range within [0, 6]"), "{e}");
    // An explicit Clip before a quantisation with zero point 100 that tops out below 6: not
    // representable with the engine's zero point 0 for ReLU6 outputs.
    let mut q = model.quant.clone().unwrap();
    q.blocks[2].hidden = ActQuant { scale: 0.01, zero: 100 };
    let e = load_err(&proto(&Model { quant: Some(q.clone()), ..model.clone() }), "clip.onnx");
    assert!(e.contains("zero point 100") && e.contains("cannot represent"), "{e}");
    // The same zero point with a range that reaches 6: the same values on zero point 0.
    q.blocks[2].hidden = ActQuant { scale: 6.0 / 155.0, zero: 100 };
    let path = tmp("clip_ok.onnx");
    std::fs::write(&path, proto(&Model { quant: Some(q), ..model.clone() }).encode_to_vec()).unwrap();
    let back = Model::load(&path).unwrap();
    assert_eq!(back.quant.unwrap().blocks[2].hidden, ActQuant { scale: 6.0 / 155.0, zero: 0 });
    assert!(notes(&path).iter().any(|n| n.contains("features.3.conv.0.0 (zero point 100)")), "{:?}", notes(&path));
    // One activation left unquantised.
    let mut m = proto(&model);
    drop_qdq(&mut m, "features.5.conv.2.output.q");
    let e = load_err(&m, "partial.onnx");
    assert!(e.contains("partially quantised") && e.contains("features.5.conv.2"), "{e}");
    // A DequantizeLinear that does not undo its QuantizeLinear.
    let mut m = proto(&model);
    let g = m.graph.as_mut().unwrap();
    g.initializer.push(proto::TensorProto {
        name: Some("other_scale".into()),
        data_type: Some(proto::tensor_proto::DataType::Float as i32),
        raw_data: Some(0.5f32.to_le_bytes().to_vec()),
        ..Default::default()
    });
    g.node.iter_mut().find(|n| n.name() == "features.4.conv.2.output.dq").unwrap().input[1] = "other_scale".into();
    let e = load_err(&m, "requant.onnx");
    assert!(e.contains("features.4.conv.2.output.dq") && e.contains("its QuantizeLinear"), "{e}");
    // int16 activations.
    let mut m = proto(&model);
    set_init(&mut m, "pooled.zero_point", |t| {
        t.data_type = Some(proto::tensor_proto::DataType::Uint16 as i32);
        t.raw_data = Some(vec![0, 0]);
    });
    let e = load_err(&m, "int16.onnx");
    assert!(e.contains("uint16") && e.contains("int8 engine"), "{e}");
    // No activation quantised at all: the weights are dequantised and run in float. (ReLU6
    // ranges wider than [0, 6] keep their Clip nodes, which removing the quantisation keeps.)
    let mut q = model.quant.clone().unwrap();
    for b in q.blocks.iter_mut() {
        (b.hidden, b.dw) = (ActQuant { scale: 0.03, zero: 0 }, ActQuant { scale: 0.03, zero: 0 });
    }
    let mut m = proto(&Model { quant: Some(q), ..model.clone() });
    let qs: Vec<String> = m
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type() == "QuantizeLinear")
        .map(|n| n.name().into())
        .collect();
    for q in &qs {
        drop_qdq(&mut m, q);
    }
    let path = tmp("weights_only.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let file = mobilenetv2::weights::load(&path).unwrap();
    assert!(file.metadata.contains_key("dequantized"));
    assert!(Model::from_file(file).unwrap().quant.is_none());
}

#[test]
fn mangled_qdq_files_never_panic() {
    let bytes = std::fs::read(data("int8/qdq_torch_w010_64_pertensor.onnx")).unwrap();
    let refused = mangle(&bytes, "onnx", |p| Model::load(p).map(|_| ()).map_err(|e| e.to_string()));
    assert!(refused > 0);
}
