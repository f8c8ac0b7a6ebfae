//! `mnv2 dataset compose` from the command line: the set is written with the summary, JSON
//! output, same seed same bytes, and one-line errors for bad options and missing inputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../mobilenetv2/tests/support/idx.rs"]
mod idx;

fn mnv2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mnv2")).args(args).output().expect("mnv2 runs")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-cli-dataset-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn compose(idx: &Path, bg: &Path, out: &Path, extra: &[&str]) -> Output {
    let base = [
        "dataset",
        "compose",
        "--fashion-mnist",
        idx.to_str().unwrap(),
        "--backgrounds",
        bg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--train",
        "4",
        "--val",
        "2",
        "--size",
        "64",
    ];
    mnv2(&[&base[..], extra].concat())
}

#[test]
fn compose_writes_the_set_and_is_deterministic() {
    let dir = tmp("ok");
    let (idx, bg) = idx::compose_inputs(&dir);
    let o = compose(&idx, &bg, &dir.join("a"), &["--seed", "3", "--json", "--items-per-image", "1..4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["train"]["images"].as_u64(), v["val"]["images"].as_u64()), (Some(4), Some(2)));
    let o = compose(&idx, &bg, &dir.join("b"), &["--seed", "3", "--items-per-image", "1..4", "--threads", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("train 4 images") && text.contains("val 2 images"), "{text}");
    for f in ["train/instances.json", "val/instances.json", "train/images/000004.png", "val/masks/000002.png"] {
        assert_eq!(std::fs::read(dir.join("a").join(f)).unwrap(), std::fs::read(dir.join("b").join(f)).unwrap(), "{f}");
    }
    let list = std::fs::read_to_string(dir.join("a/ImageSets/Segmentation/val.txt")).unwrap();
    assert_eq!(list, "000001\n000002\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn one_line_error(o: &Output, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(e.contains(needle), "`{needle}` not in {e}");
}

#[test]
fn compose_errors_are_one_line() {
    let dir = tmp("bad");
    let (idx, bg) = idx::compose_inputs(&dir);
    one_line_error(&compose(&idx, &bg, &dir.join("x"), &["--items-per-image", "5..2"]), "items per image");
    one_line_error(&compose(&idx, &bg, &dir.join("x"), &["--items-per-image", "a..b"]), "--items-per-image");
    one_line_error(&compose(&idx, &bg, &dir.join("x"), &["--jpeg", "0"]), "JPEG quality");
    one_line_error(&compose(&idx, &idx, &dir.join("x"), &[]), "no PNG or JPEG backgrounds");
    one_line_error(&compose(&bg, &bg, &dir.join("x"), &[]), "train-images-idx3-ubyte");
    one_line_error(&compose(&idx, &bg, &bg, &[]), "already exists");
    assert!(!dir.join("x").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
