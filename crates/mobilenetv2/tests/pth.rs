//! The PyTorch `.pth` reader against files torch itself wrote (tests/data/pth, made by
//! scripts/fixtures/pth.py): both container formats, pickle protocols 2 and 4, every
//! convertible dtype, strided views, checkpoints, refusal of malicious pickles, torchvision
//! parity through `Model::load`, and robustness against truncated and corrupted files.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mobilenetv2::engine::{Engine, Mode, Options};
use mobilenetv2::weights::{self, pth, Data, TensorFile};
use mobilenetv2::{npy, Batch, Error, Model};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    root().join("tests/data/pth").join(name)
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Checks every tensor of `file` against the expected dtype, shape and values in `json`, and
/// that the file has no other tensors.
fn check_against(file: &TensorFile, json: &str) {
    let text = std::fs::read_to_string(data(json)).unwrap();
    let want: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    let got: Vec<&String> = file.tensors.keys().collect();
    let names: Vec<&String> = want.keys().collect();
    assert_eq!(got, names, "{}: tensor names", file.path.display());
    for (name, w) in &want {
        let t = &file.tensors[name];
        let ctx = format!("{}: `{name}`", file.path.display());
        let shape: Vec<usize> = w["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(t.shape, shape, "{ctx}: shape");
        assert_eq!(t.data.dtype(), w["dtype"].as_str().unwrap(), "{ctx}: dtype");
        let values = w["values"].as_array().unwrap();
        assert_eq!(t.data.len(), values.len(), "{ctx}: element count");
        match &t.data {
            // The script wrote the f32 values exactly (as f64 text), so compare bit for bit.
            Data::F32(v) => {
                for (i, (g, e)) in v.iter().zip(values).enumerate() {
                    let e = e.as_f64().unwrap() as f32;
                    assert!(g.to_bits() == e.to_bits(), "{ctx}[{i}]: {g} != {e}");
                }
            }
            Data::I64(v) => {
                let e: Vec<i64> = values.iter().map(|x| x.as_i64().unwrap()).collect();
                assert_eq!(v, &e, "{ctx}");
            }
            Data::I32(v) => {
                let e: Vec<i32> = values.iter().map(|x| x.as_i64().unwrap() as i32).collect();
                assert_eq!(v, &e, "{ctx}");
            }
            Data::I8(v) => {
                let e: Vec<i8> = values.iter().map(|x| x.as_i64().unwrap() as i8).collect();
                assert_eq!(v, &e, "{ctx}");
            }
            Data::U8(v) => {
                let e: Vec<u8> = values.iter().map(|x| x.as_u64().unwrap() as u8).collect();
                assert_eq!(v, &e, "{ctx}");
            }
        }
    }
}

#[test]
fn tiny_state_dict_in_every_format() {
    for file in ["tiny.zip.pth", "tiny.legacy.pth", "tiny.p4.pth"] {
        let f = weights::load(&data(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        check_against(&f, "tiny.json");
    }
    // The sniffer sends each to the right container reader.
    let sniff = |name: &str| weights::sniff(Path::new(name), &bytes(name)[..16]).unwrap();
    assert_eq!(sniff("tiny.zip.pth"), weights::Format::TorchZip);
    assert_eq!(sniff("tiny.legacy.pth"), weights::Format::TorchLegacy);
}

#[test]
fn zip_crc_catches_corrupt_tensor_data() {
    // `views.base` starts -1.0, -0.5 (f32 little-endian) in its storage entry.
    let mut b = bytes("tiny.zip.pth");
    let pattern: Vec<u8> = [-1.0f32, -0.5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let at = b.windows(pattern.len()).position(|w| w == pattern).expect("views.base storage in tiny.zip.pth");
    assert!(pth::read(Path::new("ok.pth"), &b).is_ok());
    b[at + 1] ^= 0x10;
    let err = pth::read(Path::new("bad.pth"), &b).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("checksum"), "{err}");
}

#[test]
fn checkpoint_with_dataparallel_prefix() {
    // {"epoch", "best_acc", "state_dict": {"module.weight", ..}, "optimizer": {..}}: the
    // optimizer state (ints, floats, lists, tensors) must parse, the names lose `module.`.
    let f = weights::load(&data("checkpoint.zip.pth")).unwrap();
    check_against(&f, "checkpoint.json");
    assert!(f.tensors.keys().all(|k| !k.starts_with("module.")));
}

#[test]
fn unsupported_dtype_is_a_dtype_error() {
    match weights::load(&data("int16.zip.pth")) {
        Err(Error::DType { name, got, .. }) => {
            assert_eq!(name, "counts");
            assert_eq!(got, "int16");
        }
        other => panic!("expected a DType error, got {other:?}"),
    }
}

#[test]
fn malicious_pickles_are_refused() {
    for (file, global) in [
        // os.system pickles as posix.system on Linux.
        ("evil_system.zip.pth", "posix.system"),
        ("evil_system.legacy.pth", "posix.system"),
        ("evil_eval.p4.pth", "builtins.eval"),
    ] {
        match weights::load(&data(file)) {
            Err(e @ Error::UnsafePickle { .. }) => {
                let Error::UnsafePickle { ref what, .. } = e else { unreachable!() };
                assert!(what.contains(global), "{file}: refusal names `{what}`");
                let msg = e.to_string();
                assert!(msg.contains("refusing to load"), "{file}: {msg}");
                eprintln!("{file}: {msg}");
            }
            other => panic!("{file}: expected UnsafePickle, got {other:?}"),
        }
    }
}

#[test]
fn torchvision_035_parity_through_model_load() {
    let path = data("mnv2_w035_c10.pth");
    let f = weights::load(&path).unwrap();
    // 52 convolutions, 52 BatchNorms x 5 tensors, the classifier's weight and bias.
    assert_eq!(f.tensors.len(), 314);
    let model = Model::load(&path).unwrap();
    assert_eq!(model.spec().width, 0.35);
    assert_eq!(model.spec().classes, 10);
    let x = npy::read(&data("mnv2_w035_c10.input.npy")).unwrap();
    let want = npy::read(&data("mnv2_w035_c10.logits.npy")).unwrap();
    assert_eq!(x.shape, vec![2, 3, 64, 64]);
    let batch = Batch::from_nchw(&x.shape, &x.data).unwrap();
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    for mode in [Mode::Reference, Mode::Fast] {
        let engine = Engine::new(&model, Options { mode, ..Options::default() }).unwrap();
        let got = engine.run(&batch).unwrap();
        let err = max_abs_diff(&got.data, &want.data);
        eprintln!("w0.35 .pth, {mode:?}: max |diff| = {err:.3e}, max |logit| = {scale:.4}");
        assert!(err <= 1e-4, "{mode:?}: max |diff| {err}");
        // The logits are ~0.07 here, so also hold the error to 1e-4 of their scale.
        assert!(err <= 1e-4 * scale, "{mode:?}: relative error {}", err / scale);
    }
}

/// `pth::read` of `bytes`, turning a panic into a test failure that names the case.
fn read_no_panic(case: &str, bytes: &[u8]) -> Result<TensorFile, Error> {
    let path = Path::new("fuzz.pth");
    std::panic::catch_unwind(|| pth::read(path, bytes)).unwrap_or_else(|_| panic!("pth::read panicked on {case}"))
}

/// Offsets 0..len, every one for small files, `n` spread evenly (plus the last few) for big ones.
fn offsets(len: usize, n: usize) -> Vec<usize> {
    if len <= n {
        return (0..len).collect();
    }
    let mut v: Vec<usize> = (0..n).map(|i| i * len / n).collect();
    v.extend(len.saturating_sub(64)..len);
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn truncated_files_are_errors_not_panics() {
    for (file, n) in [
        ("tiny.zip.pth", usize::MAX),
        ("tiny.legacy.pth", usize::MAX),
        ("tiny.p4.pth", usize::MAX),
        ("checkpoint.zip.pth", usize::MAX),
        ("mnv2_w035_c10.pth", 300),
    ] {
        let b = bytes(file);
        for cut in offsets(b.len(), n) {
            let r = read_no_panic(&format!("{file} cut at {cut}"), &b[..cut]);
            assert!(r.is_err(), "{file} cut at {cut} of {} was accepted", b.len());
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    // Every byte of the small files flipped in turn (and set to 0xff / 0x00 in the pickle
    // part, where lengths and opcodes live), some bytes of the model file. Corrupt float data
    // in a legacy file cannot be detected (no checksum), so only "no panic" is asserted, plus
    // that the zip format's CRC catches most flips.
    for file in [
        "tiny.zip.pth",
        "tiny.legacy.pth",
        "tiny.p4.pth",
        "checkpoint.zip.pth",
        "evil_system.legacy.pth",
        "mnv2_w035_c10.pth",
    ] {
        let orig = bytes(file);
        let positions = offsets(orig.len(), 1500);
        let mut errors = 0;
        let mut b = orig.clone();
        for &i in &positions {
            for v in [orig[i] ^ 0xff, 0x00, 0xff, orig[i] ^ 0x01] {
                if v == orig[i] {
                    continue;
                }
                b[i] = v;
                if read_no_panic(&format!("{file} byte {i} = {v:#04x}"), &b).is_err() {
                    errors += 1;
                }
            }
            b[i] = orig[i];
        }
        eprintln!("{file}: {} positions, {errors} corruptions rejected", positions.len());
        if file.contains("zip") {
            assert!(errors >= positions.len(), "{file}: too few corruptions rejected");
        }
    }
}
