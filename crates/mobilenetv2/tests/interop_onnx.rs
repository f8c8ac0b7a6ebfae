//! ONNX interop. Export: `mnv2 export`'s file is byte for byte the one ONNX Runtime ran
//! (sha256 recorded by scripts/fixtures/interop_onnx.py) and ONNX Runtime's logits equal the
//! engine's to 1e-4. Import: torchvision models exported by torch.onnx (BatchNorm kept or
//! folded, Clip bounds as attributes or inputs, opsets 9 to 20, static or dynamic batch, the
//! dynamo exporter) give ONNX Runtime's logits to 1e-4. Graphs that are not a MobileNetV2 are
//! refused with an error naming the node; mangled files never panic.

#[path = "interop_common/mod.rs"]
mod ic;

use ic::*;
use mobilenetv2::export::onnx::{self, Options};
use mobilenetv2::weights::onnx::proto;
use mobilenetv2::{Model, Spec};
use prost::Message;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The tolerance on logits.
const TOL: f32 = 1e-4;

fn configs(dir: &str) -> Vec<Value> {
    let p = data(&format!("{dir}/configs.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-interop-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn export_matches_onnxruntime_and_reimports_exactly() {
    for cfg in configs("onnx_export") {
        let name = cfg["name"].as_str().unwrap();
        let spec: Spec = serde_json::from_value(cfg["spec"].clone()).unwrap();
        let model = Model::init(&spec, cfg["seed"].as_u64().unwrap(), true).unwrap();
        let opts =
            Options { dynamic_batch: cfg["dynamic"].as_bool().unwrap_or(false), opset: cfg["opset"].as_i64().unwrap() };
        let bytes = onnx::to_bytes(&model, opts).unwrap();
        let sha = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(sha, cfg["sha256"].as_str().unwrap(), "{name}: the export is not the file ONNX Runtime ran");
        let batch = cfg["batch"].as_u64().unwrap() as usize;
        let dims = [batch, 3, spec.height, spec.width_px];
        let x = det_input(dims.iter().product(), cfg["seed"].as_u64().unwrap());
        let got = logits_nchw(&model, &dims, &x);
        let want = npy(&data(&format!("onnx_export/{name}.logits.npy"))).data;
        let err = max_abs_diff(&got, &want);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("export {name}: max |engine - onnxruntime| = {err:.3e} (max |logit| {scale:.3})");
        assert!(err <= TOL, "{name}: {err}");
        assert!(err <= 1e-3 * scale, "{name}: relative error {}", err / scale);
        // Re-import: the same spec and bit-identical logits (the fold is exact both ways).
        let path = tmp(&format!("{name}.onnx"));
        onnx::write(&model, &path, opts).unwrap();
        let back = Model::load(&path).unwrap();
        assert_eq!(back.spec(), model.spec(), "{name}: spec round trip");
        assert_eq!(back.preprocess, model.preprocess, "{name}: preprocessing round trip");
        assert_eq!(logits_nchw(&back, &dims, &x), got, "{name}: re-imported logits");
    }
}

#[test]
fn torch_exports_match_onnxruntime() {
    for cfg in configs("onnx_import") {
        let name = cfg["name"].as_str().unwrap();
        let path = data(&format!("onnx_import/{name}.onnx"));
        let model = Model::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let s = model.spec();
        assert_eq!(s.width, cfg["width"].as_f64().unwrap(), "{name}");
        assert_eq!(s.classes, cfg["classes"].as_u64().unwrap() as usize, "{name}");
        assert_eq!(
            [s.height, s.width_px],
            [cfg["hw"][0].as_u64().unwrap() as usize, cfg["hw"][1].as_u64().unwrap() as usize]
        );
        assert_eq!(s.bn_eps, 1e-5, "{name}: PyTorch's epsilon");
        assert_eq!(model.preprocess, mobilenetv2::model::Preprocess::imagenet(s.height.min(s.width_px)), "{name}");
        let batch = cfg["batch"].as_u64().unwrap() as usize;
        let dims = [batch, 3, s.height, s.width_px];
        let x = det_input(dims.iter().product(), cfg["seed"].as_u64().unwrap());
        let got = logits_nchw(&model, &dims, &x);
        let want = npy(&data(&format!("onnx_import/{name}.logits.npy"))).data;
        let err = max_abs_diff(&got, &want);
        eprintln!("import {name}: max |engine - onnxruntime| = {err:.3e}");
        assert!(err <= TOL, "{name}: {err}");
    }
}

fn exported() -> proto::ModelProto {
    let model = Model::init(&Spec { classes: 4, ..Spec::new(0.35, 64) }, 3, true).unwrap();
    onnx::to_proto(&model, Options::default()).unwrap()
}

fn graph(m: &mut proto::ModelProto) -> &mut proto::GraphProto {
    m.graph.as_mut().unwrap()
}

fn load_err(m: &proto::ModelProto, name: &str) -> String {
    let path = tmp(name);
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let err = Model::load(&path).unwrap_err().to_string();
    assert!(err.contains(name), "the error names the file: {err}");
    assert!(!err.contains('\n'), "one line: {err}");
    err
}

#[test]
fn refuses_graphs_that_are_not_mobilenetv2_naming_the_node() {
    // A ReLU instead of ReLU6.
    let mut m = exported();
    let clip = graph(&mut m).node.iter_mut().find(|n| n.op_type() == "Clip").unwrap();
    clip.op_type = Some("Relu".into());
    clip.input.truncate(1);
    let e = load_err(&m, "relu.onnx");
    assert!(e.contains("node `features.0.0.relu6` (Relu)"), "{e}");
    // Clip to another range.
    let mut m = exported();
    let max = graph(&mut m).initializer.iter_mut().find(|t| t.name() == "relu6_max").unwrap();
    max.raw_data = Some(5f32.to_le_bytes().to_vec());
    let e = load_err(&m, "clip5.onnx");
    assert!(e.contains("Clip(0, 5) is not ReLU6"), "{e}");
    // A stride changed.
    let mut m = exported();
    let conv = graph(&mut m).node.iter_mut().find(|n| n.name() == "features.2.conv.1.0").unwrap();
    conv.attribute.iter_mut().find(|a| a.name() == "strides").unwrap().ints = vec![1, 1];
    let e = load_err(&m, "stride.onnx");
    assert!(e.contains("node `features.2.conv.1.0` (Conv)") && e.contains("strides [1, 1]"), "{e}");
    // A residual removed: the Add's output renamed away.
    let mut m = exported();
    let g = graph(&mut m);
    let i = g.node.iter().position(|n| n.name() == "features.3.conv.2.add").unwrap();
    let add = g.node.remove(i);
    for n in g.node.iter_mut() {
        for inp in n.input.iter_mut() {
            if *inp == add.output[0] {
                *inp = add.input[0].clone();
            }
        }
    }
    let e = load_err(&m, "noresidual.onnx");
    assert!(e.contains("features.3.conv.2") && e.contains("residual"), "{e}");
    // A layer dropped.
    let mut m = exported();
    let g = graph(&mut m);
    let i = g.node.iter().position(|n| n.name() == "features.18.0").unwrap();
    g.node.drain(i..i + 2);
    let e = load_err(&m, "short.onnx");
    assert!(e.contains("does not fit a MobileNetV2"), "{e}");
    // An operator that has no place.
    let mut m = exported();
    graph(&mut m).node.iter_mut().find(|n| n.op_type() == "GlobalAveragePool").unwrap().op_type =
        Some("MaxPool".into());
    let e = load_err(&m, "maxpool.onnx");
    assert!(e.contains("node `avgpool` (MaxPool)"), "{e}");
    // Not ONNX at all.
    let path = tmp("garbage.onnx");
    std::fs::write(&path, b"\x08\x07\x12garbage").unwrap();
    let e = Model::load(&path).unwrap_err().to_string();
    assert!(e.contains("garbage.onnx") && e.contains("ONNX"), "{e}");
}

#[test]
fn mangled_onnx_files_never_panic() {
    let bytes = std::fs::read(data("onnx_import/torch_op13_bn.onnx")).unwrap();
    let refused = mangle(&bytes, "onnx", |p| Model::load(p).map(|_| ()).map_err(|e| e.to_string()));
    assert!(refused > 0);
}
