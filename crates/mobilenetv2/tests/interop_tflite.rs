//! TFLite interop: `.tflite` MobileNetV2s made by tf.lite.TFLiteConverter from Keras
//! (scripts/fixtures/interop_tflite.py). fp32: the TFLite interpreter's logits to 1e-4.
//! Full-integer int8: mapped onto the int8 engine (the file's weight integers and activation
//! quantisation, see tests/interop_int8.rs), which differs from the int8 interpreter where the
//! engine does not quantise (the input, the projections before residual adds, the last conv,
//! the logits): held to 5% of the logits' range, with the same top-1.

#[path = "interop_common/mod.rs"]
mod ic;

use ic::*;
use mobilenetv2::model::Preprocess;
use mobilenetv2::spec::Padding;
use mobilenetv2::Model;
use serde_json::Value;

/// The tolerance on logits.
const TOL: f32 = 1e-4;

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[test]
fn tflite_models_match_the_interpreter() {
    let p = data("tflite/configs.json");
    let configs: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let mut f32_logits = None;
    for cfg in configs {
        let name = cfg["name"].as_str().unwrap();
        let model =
            Model::load(&data(&format!("tflite/{}", cfg["file"].as_str().unwrap()))).unwrap_or_else(|e| panic!("{e}"));
        let s = model.spec();
        let hw = [cfg["hw"][0].as_u64().unwrap() as usize, cfg["hw"][1].as_u64().unwrap() as usize];
        assert_eq!((s.width, s.classes, [s.height, s.width_px]), (0.1, cfg["classes"].as_u64().unwrap() as usize, hw));
        assert_eq!(s.padding, Padding::Tf, "{name}");
        assert_eq!(model.preprocess, Preprocess::tf(), "{name}");
        let batch = cfg["batch"].as_u64().unwrap() as usize;
        let dims = [batch, 3, hw[0], hw[1]];
        let x = det_input(dims.iter().product(), cfg["seed"].as_u64().unwrap());
        let got = logits_nchw(&model, &dims, &x);
        let want = npy(&data(&format!("tflite/{name}.logits.npy"))).data;
        let err = max_abs_diff(&got, &want);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("{name}: max |engine - tflite interpreter| = {err:.3e} (max |logit| {scale:.3})");
        let classes = s.classes;
        if cfg["kind"] == "f32" {
            assert!(err <= TOL, "{name}: {err}");
            f32_logits = Some(got);
        } else {
            assert!(err <= 0.05 * scale, "{name}: {err} is more than 5% of {scale}");
            for b in 0..batch {
                let r = b * classes..(b + 1) * classes;
                assert_eq!(argmax(&got[r.clone()]), argmax(&want[r]), "{name}: top-1 of image {b}");
            }
            assert!(model.quant.is_some(), "{name}: runs on the int8 engine");
            if let Some(f) = &f32_logits {
                eprintln!("{name}: max |int8 engine - fp32 model| = {:.3e}", max_abs_diff(&got, f));
            }
        }
    }
}

#[test]
fn mangled_tflite_files_never_panic() {
    for f in ["tflite_w010_64_f32.tflite", "tflite_w010_64_int8.tflite"] {
        let bytes = std::fs::read(data(&format!("tflite/{f}"))).unwrap();
        let refused = mangle(&bytes, "tflite", |p| Model::load(p).map(|_| ()).map_err(|e| e.to_string()));
        eprintln!("{f}: {refused} of 49 mangled copies refused");
        assert!(refused > 0);
    }
}

#[test]
fn refuses_a_model_that_is_not_mobilenetv2_naming_the_operator() {
    let e = Model::load(&data("tflite/not_mobilenetv2.tflite")).unwrap_err().to_string();
    assert!(e.contains("not_mobilenetv2.tflite") && e.contains("operator #0 (CONV_2D"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

/// A mutation of the int8 fixture found by `cargo fuzz run tflite` (a zero point near i64::MAX
/// overflowed the dequantisation): an error naming the tensor, not a panic.
#[test]
fn fuzzed_zero_point_is_an_error() {
    let mut bytes = std::fs::read(data("tflite/tflite_w010_64_int8.tflite")).unwrap();
    let patch: [(usize, u8); 47] = [
        (11, 10),
        (12691, 191),
        (15767, 54),
        (17998, 52),
        (43937, 102),
        (43938, 101),
        (43939, 97),
        (43940, 116),
        (43941, 117),
        (43942, 114),
        (43943, 101),
        (43944, 115),
        (43945, 46),
        (43946, 57),
        (43947, 46),
        (43948, 99),
        (43949, 111),
        (43950, 110),
        (43951, 118),
        (43952, 46),
        (43953, 49),
        (43954, 46),
        (43955, 48),
        (43956, 46),
        (43957, 119),
        (43958, 101),
        (43959, 105),
        (43960, 103),
        (43961, 104),
        (43962, 116),
        (94457, 56),
        (129520, 41),
        (145764, 48),
        (147087, 55),
        (179584, 59),
        (191478, 142),
        (191479, 145),
        (191480, 144),
        (191481, 141),
        (191482, 146),
        (191483, 208),
        (191484, 158),
        (191485, 155),
        (191767, 9),
        (195508, 8),
        (205133, 2),
        (217607, 128),
    ];
    for (at, v) in patch {
        bytes[at] = v;
    }
    let p = std::env::temp_dir().join(format!("mnv2-fuzzed-{}.tflite", std::process::id()));
    std::fs::write(&p, &bytes).unwrap();
    let r = Model::load(&p);
    std::fs::remove_file(&p).unwrap();
    let Err(e) = r else { panic!("the mangled file is refused") };
    let e = e.to_string();
    eprintln!("{e}");
    assert!(e.contains("zero point") && e.contains("outside its element type"), "{e}");
}
