//! `mnv2 train --task segmentation --head deeplab` on a tiny composed dataset: a few steps from
//! a (random) ImageNet-style backbone write metrics.jsonl with a val mIoU and a finite loss,
//! curves.png, a checkpoint and final.safetensors; `--resume` continues from the checkpoint;
//! `mnv2 segment` loads the result; `--aspp` trains the head with its atrous branches, and
//! `mnv2 segment` runs that too; one-image batches are refused in one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../mobilenetv2/tests/support/idx.rs"]
mod idx;

fn mnv2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mnv2")).args(args).output().expect("mnv2 runs")
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "mnv2 failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-cli-segtrain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A composed scene set (4 train, 2 val images of 64x64) from IDX blobs and one photo.
fn dataset(dir: &Path) -> PathBuf {
    let (idx_dir, bg) = idx::compose_inputs(dir);
    let out = dir.join("set");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(mnv2(&[
        "dataset",
        "compose",
        "--fashion-mnist",
        &s(&idx_dir),
        "--backgrounds",
        &s(&bg),
        "--out",
        &s(&out),
        "--train",
        "4",
        "--val",
        "2",
        "--size",
        "64",
    ]));
    out
}

fn train(data: &Path, init: &Path, out: &Path, steps: &str, batch: &str, extra: &[&str]) -> Output {
    let base = [
        "train",
        "--task",
        "segmentation",
        "--head",
        "deeplab",
        "--data",
        data.to_str().unwrap(),
        "--init",
        init.to_str().unwrap(),
        "--width",
        "0.35",
        "--crop",
        "48",
        "--steps",
        steps,
        "--batch",
        batch,
        "--optimizer",
        "sgd",
        "--lr",
        "0.01",
        "--eval-every",
        "2",
        "--checkpoint-every",
        "1",
        "--threads",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    mnv2(&[&base[..], extra].concat())
}

#[test]
fn trains_resumes_and_segment_loads_the_result() {
    let dir = tmp("run");
    let data = dataset(&dir);
    let init = dir.join("init.safetensors");
    ok(mnv2(&["init", "--width", "0.35", "--classes", "10", "--seed", "4", "--out", init.to_str().unwrap()]));
    let out = dir.join("run");
    let o = ok(train(&data, &init, &out, "3", "2", &[]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("backbone: ") && err.contains("tensors from"), "{err}");
    for f in ["metrics.jsonl", "curves.png", "checkpoint.safetensors", "final.safetensors"] {
        assert!(out.join(f).is_file(), "{f} missing: {err}");
    }
    let lines = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let m = lines(&out);
    assert_eq!(m.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3], "{m:?}");
    for l in &m {
        assert!(l["train_loss"].as_f64().unwrap().is_finite() && l["train_loss"].as_f64().unwrap() > 0.0, "{l}");
        let miou = l["val_miou"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&miou), "{l}");
    }

    // Resume to step 5: the run continues from step 3.
    let o = ok(train(&data, &init, &out, "5", "2", &["--resume"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("resuming from") && err.contains("at step 3"), "{err}");
    let m = lines(&out);
    assert_eq!(m.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3, 4, 5], "{m:?}");

    // `mnv2 segment` loads the trained model.
    let seg = dir.join("seg");
    let img = std::fs::read_dir(data.join("val/images")).unwrap().next().unwrap().unwrap().path();
    let w = out.join("final.safetensors");
    let o =
        ok(mnv2(&["segment", "--weights", w.to_str().unwrap(), "--out", seg.to_str().unwrap(), img.to_str().unwrap()]));
    let stem = img.file_stem().unwrap().to_str().unwrap();
    assert!(seg.join(format!("{stem}.png")).is_file());
    // The model carries the dataset's class names: the per-class lines name them.
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("background"), "no class names in `mnv2 segment`'s output:\n{text}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn trains_the_aspp_head_and_segment_runs_it() {
    let dir = tmp("aspp");
    let data = dataset(&dir);
    let init = dir.join("init.safetensors");
    ok(mnv2(&["init", "--width", "0.35", "--classes", "10", "--seed", "4", "--out", init.to_str().unwrap()]));
    let out = dir.join("run");
    ok(train(&data, &init, &out, "2", "2", &["--aspp"]));
    let m: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(m.last().unwrap()["step"], 2, "{m:?}");
    assert!(m.iter().all(|l| l["train_loss"].as_f64().is_some_and(|v| v.is_finite() && v > 0.0)), "{m:?}");
    // final.safetensors is a DeepLab with ASPP: its spec says so (what `mnv2 segment` reads to
    // build the head) and it holds the three atrous branches.
    let w = out.join("final.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    for i in 1..=3 {
        let t = &header[format!("head.aspp{i}.0.weight")];
        assert_eq!(t["shape"], serde_json::json!([256, 112, 3, 3]), "aspp{i}: {t}");
    }
    let spec: serde_json::Value = serde_json::from_str(header["__metadata__"]["spec"].as_str().unwrap()).unwrap();
    assert_eq!(spec["head"]["deeplab"]["aspp"], true, "{spec}");
    let seg = dir.join("seg");
    let img = std::fs::read_dir(data.join("val/images")).unwrap().next().unwrap().unwrap().path();
    let o = ok(mnv2(&[
        "segment",
        "--weights",
        w.to_str().unwrap(),
        "--out",
        seg.to_str().unwrap(),
        "--json",
        img.to_str().unwrap(),
    ]));
    let stem = img.file_stem().unwrap().to_str().unwrap();
    assert!(seg.join(format!("{stem}.png")).is_file(), "{}", String::from_utf8_lossy(&o.stdout));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn single_image_batches_are_refused() {
    let dir = tmp("refuse");
    let data = dataset(&dir);
    let init = dir.join("init.safetensors");
    ok(mnv2(&["init", "--width", "0.35", "--classes", "10", "--out", init.to_str().unwrap()]));
    let o = train(&data, &init, &dir.join("x"), "2", "1", &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("two or more images") && err.trim().lines().count() == 1, "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
