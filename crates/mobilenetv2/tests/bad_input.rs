//! Bad input gets a clear error naming the file and the problem, never a panic.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mobilenetv2::engine::{Engine, Options};
use mobilenetv2::weights::{safetensors_io, Data, Tensor};
use mobilenetv2::{Batch, Error, Model, Spec};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-bad-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn small() -> Model {
    Model::init(&Spec { classes: 4, ..Spec::new(0.35, 64) }, 1, true).unwrap()
}

/// Writes the model's tensors after `edit` has changed them, without metadata (so the
/// configuration is inferred from the shapes, as for a torchvision file).
fn write_edited(name: &str, edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) -> PathBuf {
    let mut t = small().tensors();
    edit(&mut t);
    let p = tmp(name);
    safetensors_io::write(&p, &t, &BTreeMap::new()).unwrap();
    p
}

fn load_err(p: &Path) -> String {
    let e = Model::load(p).unwrap_err().to_string();
    assert!(e.contains(&p.display().to_string()), "error does not name the file: {e}");
    assert!(!e.contains('\n'), "error is not one line: {e}");
    e
}

#[test]
fn truncated_and_corrupt_safetensors() {
    let p = tmp("good.safetensors");
    small().save(&p).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    for cut in [0, 5, 8, 20, 200, bytes.len() / 2, bytes.len() - 1] {
        let q = tmp("cut.safetensors");
        std::fs::write(&q, &bytes[..cut]).unwrap();
        let e = load_err(&q);
        assert!(e.contains("not a valid") || e.contains("empty"), "cut at {cut}: {e}");
    }
    let mut corrupt = bytes.clone();
    corrupt[8..16].copy_from_slice(b"{garbage");
    let q = tmp("corrupt.safetensors");
    std::fs::write(&q, &corrupt).unwrap();
    load_err(&q);
}

#[test]
fn wrong_shape_names_tensor_and_expected_shape() {
    let p = write_edited("shape.safetensors", |t| {
        t.insert("features.3.conv.0.0.weight".into(), Tensor::f32(vec![48, 8, 2, 2], vec![0.0; 48 * 32]));
    });
    let e = load_err(&p);
    assert!(e.contains("features.3.conv.0.0.weight") && e.contains("[48, 8, 1, 1]"), "{e}");
}

#[test]
fn missing_and_unknown_tensors() {
    let p = write_edited("missing.safetensors", |t| {
        t.remove("features.5.conv.1.1.running_var");
    });
    let e = load_err(&p);
    assert!(e.contains("missing tensor `features.5.conv.1.1.running_var`"), "{e}");
    let p = write_edited("unknown.safetensors", |t| {
        t.insert("features.99.weight".into(), Tensor::f32(vec![1], vec![0.0]));
    });
    let e = load_err(&p);
    assert!(e.contains("unknown tensor `features.99.weight`"), "{e}");
    let p = write_edited("nocls.safetensors", |t| {
        t.remove("classifier.1.weight");
    });
    assert!(load_err(&p).contains("classifier.1.weight"));
}

#[test]
fn wrong_dtype_and_nan_weights() {
    let p = write_edited("dtype.safetensors", |t| {
        let x = t.get_mut("features.0.1.bias").unwrap();
        x.data = Data::I64(vec![0; x.numel()]);
    });
    let e = load_err(&p);
    assert!(e.contains("features.0.1.bias") && e.contains("int64"), "{e}");
    let p = write_edited("nan.safetensors", |t| {
        if let Data::F32(v) = &mut t.get_mut("features.7.conv.2.weight").unwrap().data {
            v[3] = f32::NAN;
        }
    });
    let e = load_err(&p);
    assert!(e.contains("features.7.conv.2.weight") && e.contains("non-finite"), "{e}");
}

#[test]
fn bad_metadata_is_reported() {
    let m = small();
    let mut meta = m.metadata();
    meta.insert("spec".into(), "{not json".into());
    let p = tmp("meta.safetensors");
    safetensors_io::write(&p, &m.tensors(), &meta).unwrap();
    assert!(load_err(&p).contains("metadata `spec`"));
    meta = m.metadata();
    meta.insert("labels".into(), "[\"a\", \"b\"]".into());
    safetensors_io::write(&p, &m.tensors(), &meta).unwrap();
    assert!(load_err(&p).contains("4 classes"));
}

#[test]
fn unreadable_path() {
    let p = tmp("does-not-exist.safetensors");
    let e = load_err(&p);
    assert!(e.contains("No such file"), "{e}");
    assert!(matches!(Model::load(&p), Err(Error::Io { .. })));
}

#[test]
fn nan_and_wrong_shape_inputs() {
    let engine = Engine::new(&small(), Options::default()).unwrap();
    let mut b = Batch::zeros(1, mobilenetv2::plan::Shape::new(64, 64, 3));
    b.data[100] = f32::INFINITY;
    let e = engine.run(&b).unwrap_err().to_string();
    assert!(e.contains("not finite"), "{e}");
    let b = Batch::zeros(1, mobilenetv2::plan::Shape::new(64, 64, 4));
    assert!(engine.run(&b).unwrap_err().to_string().contains("3 channels"));
    let b = Batch::zeros(1, mobilenetv2::plan::Shape::new(16, 64, 3));
    assert!(engine.run(&b).unwrap_err().to_string().contains("minimum 32x32"));
}
