//! Regression tests for issue 17's hostile-input defects that need whole files, plus the
//! replay of the committed fuzz corpus (`tests/data/fuzz/<target>/*`) through every reader:
//! each file must give a value or an error, never a panic.

use std::path::{Path, PathBuf};

use mobilenetv2::{Model, Spec};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-hostile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Defect 4: `preprocess.resize` of 2^62 or 1e7 and `std: 0` were trusted at load (an abort,
/// or an error that did not name the file). Now refused at load, naming the file.
#[test]
fn preprocess_metadata_is_validated_at_load() {
    let d = scratch("meta");
    let mut m = Model::init(&Spec::new(0.35, 96), 1, false).unwrap();
    for (resize, std, what) in [
        (Some(1usize << 62), 0.2f32, "resize"),
        (Some(10_000_000), 0.2, "resize"),
        (Some(0), 0.2, "resize"),
        (Some(256), 0.0, "std"),
    ] {
        m.preprocess.resize = resize;
        m.preprocess.std = [std; 3];
        let p = d.join("m.safetensors");
        m.save(&p).unwrap();
        let e = Model::load(&p).unwrap_err().to_string();
        assert!(e.contains("m.safetensors") && e.contains("preprocess") && e.contains(what), "{e}");
    }
    m.preprocess.resize = Some(256);
    m.preprocess.std = [0.2; 3];
    let p = d.join("ok.safetensors");
    m.save(&p).unwrap();
    assert!(Model::load(&p).is_ok());
    std::fs::remove_dir_all(&d).unwrap();
}

/// A safetensors file whose JSON header is `header` followed by `data`.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(data);
    b
}

/// Defect 16: a JSON key given twice (last one won, silently) is refused, both when reading
/// from a path and from bytes.
#[test]
fn duplicate_json_keys_are_refused() {
    let d = scratch("dup");
    let dup = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let bytes = safetensors(dup, &[0u8; 8]);
    let p = d.join("dup.safetensors");
    std::fs::write(&p, &bytes).unwrap();
    let e = mobilenetv2::weights::load(&p).unwrap_err().to_string();
    assert!(e.contains("dup.safetensors") && e.contains("twice"), "{e}");
    let e = mobilenetv2::weights::safetensors_io::read(&p, &bytes).unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
    let meta = r#"{"__metadata__":{"a":"1","a":"2"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    std::fs::write(&p, safetensors(meta, &[0u8; 4])).unwrap();
    let e = mobilenetv2::weights::load(&p).unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
    let ok = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    std::fs::write(&p, safetensors(ok, &[0u8; 4])).unwrap();
    assert!(mobilenetv2::weights::load(&p).is_ok());
    std::fs::remove_dir_all(&d).unwrap();
}

/// Defect 8: a weight path that is a device or a FIFO is refused, not read forever.
#[cfg(unix)]
#[test]
fn devices_and_fifos_are_not_read() {
    let e = mobilenetv2::weights::load(Path::new("/dev/zero")).unwrap_err().to_string();
    assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
    let d = scratch("fifo");
    let link = d.join("w.pth");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let e = mobilenetv2::weights::load(&link).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let e = mobilenetv2::npy::read(&link).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let e = mobilenetv2::preprocess::decode(&link).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Every file of the committed fuzz corpus (`tests/data/fuzz/<target>/`, written by
/// `scripts/fuzz/hostile_corpus.py` plus what fuzzing found) through the reader its fuzz
/// target drives, exactly as the target does: none may panic (a panic fails this test; an
/// abort or stack overflow kills it). Runs on stable, no fuzzer needed.
#[test]
fn fuzz_corpus_replays_without_panics() {
    use mobilenetv2::model::Preprocess;
    use mobilenetv2::preprocess::{self, RgbImage};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fuzz");
    let targets = ["pth", "safetensors", "npy", "image", "idx", "weights_load", "metadata"];
    let base = Model::init(&Spec::new(0.35, 96), 1, false).unwrap();
    let mut replayed = 0;
    for target in targets {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(root.join(target)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus for {target}");
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let p = Path::new("corpus");
            match target {
                "pth" => {
                    if let Ok(file) = mobilenetv2::weights::pth::read(p, &data) {
                        let _ = Model::from_file(file);
                    }
                }
                "safetensors" => {
                    if let Ok(file) = mobilenetv2::weights::safetensors_io::read(p, &data) {
                        let _ = Model::from_file(file);
                    }
                }
                "npy" => {
                    let _ = mobilenetv2::npy::parse(p, &data);
                }
                "image" => {
                    if let Ok(img) = preprocess::decode_bytes(&data, p) {
                        for (pre, h, w) in [(Preprocess::imagenet(224), 224, 224), (Preprocess::tf(), 96, 128)] {
                            if let Ok(out) = preprocess::transform(&img, &pre, h, w) {
                                assert_eq!(out.data.len(), h * w * 3);
                            }
                        }
                    }
                }
                "idx" => {
                    if let Ok((dims, px)) = mobilenetv2::data::parse_idx(p, data.clone(), 3) {
                        let (h, w) = (dims[1], dims[2]);
                        if dims[0] > 0 && h > 0 && w > 0 && h * w <= 1 << 20 {
                            let img =
                                RgbImage::new(w, h, px[..h * w].iter().flat_map(|&v| [v, v, v]).collect()).unwrap();
                            let _ = preprocess::transform(&img, &Preprocess::imagenet(32), 32, 32);
                        }
                    }
                }
                "weights_load" => {
                    let d = scratch("replay");
                    let path = d.join(f.file_name().unwrap());
                    std::fs::write(&path, &data).unwrap();
                    if let Ok(file) = mobilenetv2::weights::load(&path) {
                        let _ = Model::from_file(file);
                    }
                    std::fs::remove_dir_all(&d).unwrap();
                }
                _ => {
                    let mut metadata = std::collections::BTreeMap::new();
                    for part in data.split(|&b| b == 0xff) {
                        let Some((&k, v)) = part.split_first() else { continue };
                        let key = ["spec", "preprocess", "labels", "quantization"][k as usize % 4];
                        metadata.insert(key.to_string(), String::from_utf8_lossy(v).into_owned());
                    }
                    let file =
                        mobilenetv2::weights::TensorFile { path: "corpus".into(), tensors: base.tensors(), metadata };
                    if let Ok(model) = Model::from_file(file) {
                        let img = RgbImage::new(3, 2, vec![9; 18]).unwrap();
                        let s = model.spec();
                        let _ = preprocess::transform(&img, &model.preprocess, s.height, s.width_px);
                    }
                }
            }
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} corpus files");
    assert!(replayed >= 7);
}
