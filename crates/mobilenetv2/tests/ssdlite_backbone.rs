//! The real SSDLite-MobileNetV2's backbone, imported from the frozen graph onto the plan
//! (TF 'SAME' padding, BatchNorm epsilon 1e-3 from the graph), run by the reference engine on
//! astronaut.png after the graph's own preprocessing: the two feature maps the SSD head reads
//! against TensorFlow's (tests/data/ssdlite/astronaut.feat{0,1}_sample.npy, written by
//! scripts/fixtures/ssdlite_tf.py), within 1e-4 absolute. Needs weights/ (scripts/fetch_assets.sh).

use std::path::PathBuf;

use mobilenetv2::detect::{tfimport, TfPreprocess};
use mobilenetv2::engine::{Mode, Options};
use mobilenetv2::plan::{Shape, Tap};
use mobilenetv2::weights::tfgraph::TfGraph;
use mobilenetv2::{npy, preprocess, Batch, Engine};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fetched(rel: &str) -> PathBuf {
    let p = root().join(rel);
    assert!(p.is_file(), "{} is missing: run scripts/fetch_assets.sh", p.display());
    p
}

#[test]
fn backbone_taps_match_tensorflow() {
    let g = TfGraph::read_path(&fetched("weights/ssdlite_mobilenet_v2_person.pb")).unwrap();
    let model = tfimport::model(&g, 300, 300).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.spec().bn_eps, 1e-3);
    let img = preprocess::decode(&fetched("weights/calib/astronaut.png")).unwrap();
    let x = Batch::new(1, Shape::new(300, 300, 3), TfPreprocess::default().apply(&img)).unwrap();
    let engine = Engine::new(&model, Options { mode: Mode::Reference, threads: 2, ..Options::default() }).unwrap();
    let feats = engine.features(&x, &[Tap::Expansion(14), Tap::LastConv]).unwrap();
    assert_eq!(feats[0].shape, Shape::new(19, 19, 576));
    assert_eq!(feats[1].shape, Shape::new(10, 10, 1280));
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/data/ssdlite/meta.json")).unwrap()).unwrap();
    for (k, f) in feats.iter().enumerate() {
        let want = npy::read(&root().join(format!("tests/data/ssdlite/astronaut.feat{k}_sample.npy"))).unwrap();
        let pos = meta["feature_sample_positions"][format!("feat{k}")].as_array().unwrap();
        let c = f.shape.c;
        let mut worst = 0f32;
        for (p, yx) in pos.iter().enumerate() {
            let (y, x) = (yx[0].as_u64().unwrap() as usize, yx[1].as_u64().unwrap() as usize);
            let got = &f.data[(y * f.shape.w + x) * c..][..c];
            for (a, b) in got.iter().zip(&want.data[p * c..(p + 1) * c]) {
                worst = worst.max((a - b).abs());
            }
        }
        println!("feature map {k} {}: max |ours - TF| = {worst:.3e} over {} values", f.shape, pos.len() * c);
        assert!(worst <= TOL, "feature map {k}: {worst}");
    }
}

#[test]
fn a_graph_without_the_backbone_is_refused() {
    let g = TfGraph::read_path(&root().join("tests/data/ssdlite/subgraph.pb")).unwrap();
    let e = tfimport::model(&g, 300, 300).unwrap_err().to_string();
    assert!(e.contains("subgraph.pb") && e.contains("FeatureExtractor/MobilenetV2/Conv/weights"), "{e}");
}
