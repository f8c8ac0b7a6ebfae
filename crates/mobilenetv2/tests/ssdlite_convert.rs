//! The real SSDLite-MobileNetV2 saved in the project's safetensors format
//! (`Detector::save`, `mnv2 convert model.pb detector.safetensors`) is the same detector as the
//! frozen graph it came from: the same post-processing and labels read back from the file's
//! `detector` metadata, bit-identical raw outputs on astronaut.png (all 1917 anchors) and
//! identical detections. Needs weights/ (scripts/fetch_assets.sh).

use std::path::{Path, PathBuf};

use mobilenetv2::detect::{is_graph, Detector, DetectorOptions};
use mobilenetv2::preprocess;
use mobilenetv2::weights::safetensors_io::FloatStore;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fetched(rel: &str) -> PathBuf {
    let p = root().join(rel);
    assert!(p.is_file(), "{} is missing: run scripts/fetch_assets.sh", p.display());
    p
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-ssd-convert-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn opts() -> DetectorOptions {
    DetectorOptions { threshold: 0.01, threads: 2, ..DetectorOptions::default() }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn safetensors_detector_equals_the_graph() {
    let pb = fetched("weights/ssdlite_mobilenet_v2_person.pb");
    let graph = Detector::load(&pb, opts()).unwrap_or_else(|e| panic!("{e}"));
    let out = tmp("person.safetensors");
    graph.save(&out, FloatStore::F32).unwrap();
    assert!(is_graph(&pb).unwrap() && !is_graph(&out).unwrap());
    let st = Detector::load(&out, opts()).unwrap_or_else(|e| panic!("{e}"));
    // The post-processing and labels travel in the file.
    assert_eq!(st.options(), graph.options());
    assert_eq!(st.label(0), "person");
    assert_eq!(st.model().spec(), graph.model().spec());
    assert_eq!(st.model().params, graph.model().params);
    assert_eq!(st.anchors(), graph.anchors());
    let image = preprocess::decode(&fetched("weights/calib/astronaut.png")).unwrap();
    let (a, b) = (
        graph.raw_outputs(std::slice::from_ref(&image)).unwrap(),
        st.raw_outputs(std::slice::from_ref(&image)).unwrap(),
    );
    assert_eq!(a[0].class_logits.len(), 1917 * 2);
    assert_eq!(a[0].box_encodings.len(), 1917 * 4);
    assert_eq!(bits(&a[0].class_logits), bits(&b[0].class_logits), "class logits bit for bit");
    assert_eq!(bits(&a[0].box_encodings), bits(&b[0].box_encodings), "box encodings bit for bit");
    let (da, db) = (graph.detect(&image).unwrap(), st.detect(&image).unwrap());
    assert!(!da.is_empty() && da[0].score > 0.5);
    assert_eq!(da, db);
    println!("astronaut: {} detections, identical; top {:?}", db.len(), db[0]);
}

#[test]
fn non_default_post_processing_round_trips() {
    // Every setting is read back, not defaulted: change each one, including NMS V2's -inf
    // score threshold, which JSON cannot hold as a number.
    let pb = fetched("weights/ssdlite_mobilenet_v2_person.pb");
    let mut o = opts();
    let graph = Detector::load(&pb, o.clone()).unwrap();
    o.config = graph.options().config.clone();
    o.config.post.nms.score_threshold = f32::NEG_INFINITY;
    o.config.post.nms.iou_threshold = 0.45;
    o.config.post.nms.max_total = 7;
    o.config.post.coder.scales = [8.0, 9.0, 4.0, 3.0];
    o.config.post.logit_scale = 1.5;
    o.config.preprocess.scale = 0.0078125;
    o.config.box_specs[1][2].scale = 0.3125;
    o.labels = vec!["pedestrian".into()];
    let changed = Detector::new(graph.model().clone(), o).unwrap();
    let out = tmp("changed.safetensors");
    changed.save(&out, FloatStore::F32).unwrap();
    let back = Detector::load(&out, opts()).unwrap();
    assert_eq!(back.options(), changed.options());
    assert_eq!(back.label(0), "pedestrian");
    assert_eq!(back.anchors(), changed.anchors());
}

#[test]
fn a_classifier_or_broken_metadata_is_not_a_detector() {
    let cls = tmp("classifier.safetensors");
    mobilenetv2::Model::init(&mobilenetv2::Spec::new(0.35, 64), 1, false).unwrap().save(&cls).unwrap();
    let e = Detector::load(&cls, opts()).err().unwrap().to_string();
    assert!(e.contains("classifier.safetensors") && e.contains("no `detector` metadata"), "{e}");
    // A detector whose metadata disagrees with its network: one-line errors naming the file.
    let pb = fetched("weights/ssdlite_mobilenet_v2_person.pb");
    let graph = Detector::load(&pb, opts()).unwrap();
    let write = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| -> PathBuf {
        let good = tmp("good.safetensors");
        graph.save(&good, FloatStore::F32).unwrap();
        let mut file = mobilenetv2::weights::load(&good).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&file.metadata["detector"]).unwrap();
        edit(&mut v);
        file.metadata.insert("detector".into(), v.to_string());
        let p = tmp(name);
        mobilenetv2::weights::safetensors_io::write(&p, &file.tensors, &file.metadata).unwrap();
        p
    };
    let check = |p: &Path, needle: &str| {
        let e = Detector::load(p, opts()).err().unwrap().to_string();
        assert!(e.contains(&p.display().to_string()) && e.contains(needle), "`{needle}` not in: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    };
    check(&write("classes.safetensors", &|v| v["config"]["classes"] = 3.into()), "foreground classes");
    check(&write("labels.safetensors", &|v| v["labels"] = serde_json::json!(["a", "b"])), "2 labels");
    check(&write("size.safetensors", &|v| v["config"]["preprocess"]["height"] = 320.into()), "resizes to 320x300");
    check(&write("missing.safetensors", &|v| v["config"].as_object_mut().unwrap().clear()), "missing field");
    check(&write("inf.safetensors", &|v| v["config"]["post"]["nms"]["score_threshold"] = "nan".into()), "`nan`");
}
