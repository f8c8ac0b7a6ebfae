//! `mnv2 train --task detection --head ssdlite` on tiny composed datasets (96 px, width 0.35
//! from a seeded `mnv2 init` backbone): the run writes metrics.jsonl (loss, its two parts, val
//! COCO AP), curves.png, a checkpoint and final.safetensors; `mnv2 detect` and `mnv2 eval
//! --task detection` load the result; a run stopped by `--max-steps` and `--resume`d ends on
//! the same weights as an uninterrupted one; the loss falls when overfitting four images; bad
//! options and data get one-line errors.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{assert_one_error_line, mnv2, ok, stderr};

#[path = "../../mobilenetv2/tests/support/idx.rs"]
mod idx;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-cli-dettrain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A composed scene set of `train` / `val` images of 96x96 and a width-0.35 backbone.
fn setup(dir: &Path, train: usize, val: usize) -> (PathBuf, PathBuf) {
    let (idx_dir, bg) = idx::compose_inputs(dir);
    let out = dir.join("set");
    let (t, v) = (train.to_string(), val.to_string());
    ok(&mnv2(&[
        "dataset",
        "compose",
        "--fashion-mnist",
        &s(&idx_dir),
        "--backgrounds",
        &s(&bg),
        "--out",
        &s(&out),
        "--train",
        &t,
        "--val",
        &v,
        "--size",
        "96",
    ]));
    let init = dir.join("init.safetensors");
    ok(&mnv2(&["init", "--width", "0.35", "--classes", "10", "--seed", "4", "--out", &s(&init)]));
    (out, init)
}

fn train(data: &Path, init: &Path, out: &Path, steps: &str, extra: &[&str]) -> Output {
    let batch = if extra.contains(&"--batch") { &[][..] } else { &["--batch", "2"][..] };
    let base = [
        "train",
        "--task",
        "detection",
        "--data",
        &s(data),
        "--init",
        &s(init),
        "--width",
        "0.35",
        "--resolution",
        "96",
        "--steps",
        steps,
        "--threads",
        "1",
        "--quiet",
        "--out",
        &s(out),
    ];
    mnv2(&[&base[..], batch, extra].concat())
}

/// A safetensors file as (metadata, tensor name -> raw bytes), independent of the order the
/// writer put them in.
fn tensors(path: &Path) -> (serde_json::Value, Vec<(String, Vec<u8>)>) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let meta = h.remove("__metadata__").unwrap_or_default();
    let mut out: Vec<(String, Vec<u8>)> = h
        .into_iter()
        .map(|(k, v)| {
            let o = v["data_offsets"].as_array().unwrap();
            let (a, z) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
            (k, b[8 + n + a..8 + n + z].to_vec())
        })
        .collect();
    out.sort();
    (meta, out)
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn trains_resumes_bit_for_bit_and_the_result_detects_and_evaluates() {
    let dir = tmp("run");
    let (data, init) = setup(&dir, 6, 3);
    let every = ["--head", "ssdlite", "--eval-every", "2", "--checkpoint-every", "1"];
    // Uninterrupted: 4 steps.
    let whole = dir.join("whole");
    let o = train(&data, &init, &whole, "4", &every);
    ok(&o);
    let err = stderr(&o);
    assert!(err.contains("backbone: ") && err.contains("tensors from"), "{err}");
    for f in ["metrics.jsonl", "curves.png", "checkpoint.safetensors", "final.safetensors"] {
        assert!(whole.join(f).is_file(), "{f} missing: {err}");
    }
    let m = metrics(&whole);
    assert_eq!(m.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4], "{m:?}");
    for l in &m {
        let (total, cls, loc) =
            (l["train_loss"].as_f64().unwrap(), l["cls_loss"].as_f64().unwrap(), l["loc_loss"].as_f64().unwrap());
        assert!(total.is_finite() && total > 0.0 && cls > 0.0 && loc >= 0.0, "{l}");
        assert!((total - cls - loc).abs() <= 1e-6 * total, "the parts must add up: {l}");
        for k in ["val_map", "val_ap50"] {
            assert!((0.0..=1.0).contains(&l[k].as_f64().unwrap()), "{l}");
        }
        assert!(l["images_per_s"].as_f64().unwrap() > 0.0 && l["peak_rss_mb"].as_f64().unwrap() > 0.0, "{l}");
    }

    // Stopped after 2 steps, then resumed to 4: the same final weights, byte for byte.
    let split = dir.join("split");
    let o = train(&data, &init, &split, "4", &[&every[..], &["--max-steps", "2"]].concat());
    ok(&o);
    assert!(!split.join("final.safetensors").exists());
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    let o = train(&data, &init, &split, "4", &[&every[..], &["--resume"]].concat());
    ok(&o);
    assert!(stderr(&o).contains("resuming from") && stderr(&o).contains("at step 2"), "{}", stderr(&o));
    let (ma, ta) = tensors(&whole.join("final.safetensors"));
    let (mb, tb) = tensors(&split.join("final.safetensors"));
    assert_eq!(ma, mb);
    assert_eq!(ta.len(), tb.len());
    for ((na, a), (nb, b)) in ta.iter().zip(&tb) {
        assert!(na == nb && a == b, "`{na}`: a resumed run must end on the uninterrupted run's weights, bit for bit");
    }
    assert_eq!(metrics(&split).iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4]);
    // Resuming with another learning rate is refused.
    let o = train(&data, &init, &split, "6", &["--resume", "--lr", "0.1"]);
    assert_one_error_line(&o, "other options than the checkpoint's");

    // `mnv2 detect` and `mnv2 eval --task detection` load the trained detector.
    let w = s(&whole.join("final.safetensors"));
    let img = std::fs::read_dir(data.join("val/images")).unwrap().next().unwrap().unwrap().path();
    let o = mnv2(&["detect", "--weights", &w, "--threshold", "0", "--json", &s(&img)]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dets = v[0]["detections"].as_array().unwrap();
    assert!(!dets.is_empty(), "{v}");
    // Labelled with the dataset's category names.
    let coco: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("train/instances.json")).unwrap()).unwrap();
    let names: Vec<&str> = coco["categories"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 10);
    for d in dets {
        let k = d["class"].as_u64().unwrap() as usize;
        assert_eq!(d["label"].as_str().unwrap(), names[k], "{d}");
    }
    let o = mnv2(&["eval", "--task", "detection", "--weights", &w, "--data", &s(&data), "--json"]);
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("AP"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn loss_falls_when_overfitting_four_images() {
    let dir = tmp("overfit");
    let (data, init) = setup(&dir, 4, 1);
    let out = dir.join("run");
    ok(&train(
        &data,
        &init,
        &out,
        "30",
        &["--batch", "4", "--det-augment", "none", "--eval-every", "5", "--val-images", "1"],
    ));
    let m = metrics(&out);
    let loss: Vec<f64> = m.iter().map(|l| l["train_loss"].as_f64().unwrap()).collect();
    assert_eq!(loss.len(), 6);
    eprintln!("mean loss per 5 steps: {loss:?}");
    assert!(loss[5] < 0.8 * loss[0], "{loss:?}");
    let loc: Vec<f64> = m.iter().map(|l| l["loc_loss"].as_f64().unwrap()).collect();
    assert!(loc[5] < loc[0], "{loc:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_options_and_data_get_one_line_errors() {
    let dir = tmp("bad");
    let (data, init) = setup(&dir, 2, 1);
    let out = dir.join("x");
    let o = train(&data, &init, &out, "2", &["--batch", "1"]);
    assert_one_error_line(&o, "two or more images per step");
    let o = train(&data, &init, &out, "2", &["--detector-init", &s(&init)]);
    assert_one_error_line(&o, "not both");
    let o = train(&data, &init, &out, "2", &["--head", "deeplab"]);
    assert_one_error_line(&o, "ssdlite");
    let o = train(&dir.join("nowhere"), &init, &out, "2", &[]);
    assert_one_error_line(&o, "nowhere");
    let wide = dir.join("wide.safetensors");
    ok(&mnv2(&["init", "--width", "0.5", "--classes", "10", "--out", &s(&wide)]));
    let o = train(&data, &wide, &out, "2", &[]);
    assert_one_error_line(&o, "width 0.5");
    // A truncated annotation file names itself.
    std::fs::write(data.join("train/instances.json"), "{\"images\": [").unwrap();
    let o = train(&data, &init, &out, "2", &[]);
    assert_one_error_line(&o, "instances.json");
    std::fs::remove_dir_all(&dir).ok();
}
