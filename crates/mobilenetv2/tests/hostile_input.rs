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
