//! The GraphDef reader on the real SSDLite-MobileNetV2 frozen graph, against what TensorFlow's
//! own parser reads from it (tests/data/ssdlite/meta.json, written by
//! scripts/fixtures/ssdlite_tf.py): node and op counts, the numeric Consts, the bytes of a few
//! weight tensors, and the post-processing constants.
//!
//! The graph (`weights/ssdlite_mobilenet_v2_person.pb`) is fetched and sha256-checked by
//! scripts/fetch_assets.sh; without it this test fails and says so.

use std::path::{Path, PathBuf};

use mobilenetv2::weights::tfgraph::TfGraph;
use mobilenetv2::weights::Data;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn graph_path() -> PathBuf {
    let p = root().join("weights/ssdlite_mobilenet_v2_person.pb");
    assert!(p.is_file(), "{} is missing: run scripts/fetch_assets.sh", p.display());
    p
}

fn meta() -> Value {
    let p = root().join("tests/data/ssdlite/meta.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn real_graph_reads_as_tensorflow_reads_it() {
    let g = TfGraph::read_path(&graph_path()).unwrap_or_else(|e| panic!("{e}"));
    let m = meta();
    let facts = &m["graph_facts"];
    assert_eq!(g.nodes.len() as u64, facts["nodes"].as_u64().unwrap());
    let ops = g.op_counts();
    for (op, n) in facts["ops"].as_object().unwrap() {
        assert_eq!(ops.get(op.as_str()).copied().unwrap_or(0) as u64, n.as_u64().unwrap(), "op {op}");
    }
    assert_eq!(ops.len(), facts["ops"].as_object().unwrap().len());
    assert_eq!(g.consts.len() as u64, facts["numeric_consts"].as_u64().unwrap());
    let floats: Vec<_> = g.consts.values().filter(|t| matches!(t.data, Data::F32(_))).collect();
    assert_eq!(floats.len() as u64, facts["float32_consts"].as_u64().unwrap());
    assert_eq!(floats.iter().map(|t| t.numel() as u64).sum::<u64>(), facts["float32_values"].as_u64().unwrap());
    for (name, want) in facts["tensors"].as_object().unwrap() {
        let shape: Vec<usize> =
            want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        let v = g.f32s(name, Some(&shape)).unwrap();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let got = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(got, want["sha256"].as_str().unwrap(), "{name}: values differ from TensorFlow's");
    }
    // Weights reach their consumers through `/read` Identity nodes.
    let w = "FeatureExtractor/MobilenetV2/Conv/weights";
    assert_eq!(g.resolve(&format!("{w}/read")).unwrap().name, w);
    let conv = g.consumers(&format!("{w}/read"));
    assert_eq!(conv.len(), 1);
    assert_eq!(conv[0].op, "Conv2D");
    assert_eq!(conv[0].attr_str(Path::new("x"), "padding").unwrap(), "SAME");
    assert_eq!(conv[0].attr_ints(Path::new("x"), "strides").unwrap(), vec![1, 2, 2, 1]);
}

#[test]
fn post_processing_constants_match_tensorflow() {
    let g = TfGraph::read_path(&graph_path()).unwrap_or_else(|e| panic!("{e}"));
    let c = &meta()["constants"];
    let f = |k: &str| c[k].as_f64().unwrap() as f32;
    let nms = "Postprocessor/BatchMultiClassNonMaxSuppression/map/while/MultiClassNonMaxSuppression/";
    assert_eq!(g.scalar_f32("Preprocessor/mul/x").unwrap(), f("preprocess_scale"));
    assert_eq!(g.scalar_f32("Preprocessor/sub/y").unwrap(), f("preprocess_offset"));
    assert_eq!(g.scalar_f32(&format!("{nms}non_max_suppression/iou_threshold")).unwrap(), f("iou_threshold"));
    assert_eq!(g.scalar_f32(&format!("{nms}non_max_suppression/score_threshold")).unwrap(), f("score_threshold"));
    assert_eq!(g.scalar_int(&format!("{nms}Minimum/x")).unwrap(), c["max_per_class"].as_i64().unwrap());
    assert_eq!(g.scalar_int(&format!("{nms}Minimum_1/x")).unwrap(), c["max_total"].as_i64().unwrap());
    let size = g.values_f64("Preprocessor/map/while/ResizeImage/stack").unwrap();
    assert_eq!(size, vec![300.0, 300.0]);
}

/// A few nodes of the real graph as TensorFlow's protobuf wrote them (committed, so this runs
/// without the fetched file): every storage form a frozen graph uses.
#[test]
fn subgraph_written_by_tensorflow() {
    let p = root().join("tests/data/ssdlite/subgraph.pb");
    let g = TfGraph::read_path(&p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.nodes.len(), 7);
    // float_val scalar, int_val vector, tensor_content floats behind an Identity.
    assert_eq!(g.scalar_f32("Preprocessor/mul/x").unwrap(), 2.0f32 / 255.0);
    assert_eq!(g.values_f64("Preprocessor/map/while/ResizeImage/stack").unwrap(), vec![300.0, 300.0]);
    let b = g.f32s("BoxPredictor_5/ClassPredictor/biases/read", Some(&[12])).unwrap();
    assert!(b.iter().all(|v| v.is_finite()) && b.iter().any(|&v| v != 0.0));
    // A string Const stays a node without a numeric tensor.
    let s = "MultipleGridAnchorGenerator/assert_equal/Assert/Assert/data_1";
    assert_eq!(g.require(s).unwrap().op, "Const");
    assert!(g.tensor(s).unwrap_err().to_string().contains("holds strings"));
    let bn = g.require("FeatureExtractor/MobilenetV2/layer_19_2_Conv2d_5_3x3_s2_128/BatchNorm/FusedBatchNorm").unwrap();
    let x = Path::new("x");
    assert_eq!(bn.attr_float(x, "epsilon").unwrap(), 0.001);
    assert_eq!(bn.attr_bool(x, "is_training").unwrap(), Some(false));
    assert_eq!(bn.data_inputs().count(), 5);
    // Every truncation of a real file is a one-line error or a shorter graph, never a panic.
    let bytes = std::fs::read(&p).unwrap();
    for cut in 0..bytes.len() {
        if let Err(e) = TfGraph::read(&p, &bytes[..cut]) {
            let e = e.to_string();
            assert!(e.contains("subgraph.pb") && !e.contains('\n'), "{e}");
        }
    }
}
