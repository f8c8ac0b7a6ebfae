//! `mnv2 train` and `mnv2 eval` end to end on tiny data: a run killed with SIGKILL and
//! resumed ends with the same weights, bit for bit, as an uninterrupted run; bad input stops
//! with a one-line error; evaluation reports top-1 and a confusion matrix.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mobilenetv2::weights::{self, Data};

mod common;
#[path = "../../mobilenetv2/tests/support/idx.rs"]
mod idx;
use common::{assert_one_error_line, mnv2, mnv2_cmd};
use idx::idx_data;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        data,
        "--width",
        "0.35",
        "--resolution",
        "32",
        "--epochs",
        "3",
        "--batch",
        "8",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--augment",
        "crop-flip",
        "--dropout",
        "0.2",
        "--seed",
        "5",
        "--checkpoint-every",
        "1",
        "--threads",
        "2",
        "--quiet",
        "--out",
        out,
    ]
}

fn tensors(p: &Path) -> Vec<(String, Vec<f32>)> {
    weights::load(p)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(k, t)| match t.data {
            Data::F32(v) => (k, v),
            _ => panic!("{k} is not f32"),
        })
        .collect()
}

#[test]
fn killed_and_resumed_run_matches_an_uninterrupted_one_bitwise() {
    let d = dir("resume");
    let data = idx_data(&d, 120, 4);
    let data = data.to_str().unwrap();
    let (a, b) = (d.join("a"), d.join("b"));
    let o = mnv2(&train_args(data, a.to_str().unwrap()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut child = mnv2_cmd().args(train_args(data, b.to_str().unwrap())).stderr(Stdio::null()).spawn().unwrap();
    let ckpt = b.join("checkpoint.safetensors");
    let t0 = Instant::now();
    while !ckpt.exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(30));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!b.join("final.safetensors").exists(), "the run finished before it was killed");
    let mut args = train_args(data, b.to_str().unwrap());
    args.push("--resume");
    let o = mnv2(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resuming from"), "{err}");

    let (ta, tb) = (tensors(&a.join("final.safetensors")), tensors(&b.join("final.safetensors")));
    assert_eq!(ta.len(), tb.len());
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "`{na}` differs after resume");
    }
    // And training moved the weights.
    let init = tensors(&a.join("checkpoint.safetensors"));
    assert!(init.iter().any(|(n, _)| n.starts_with("optim.")));

    // The trained model is evaluated, and loads in `mnv2 classify` form.
    let o = mnv2(&[
        "eval",
        "--data",
        data,
        "--weights",
        a.join("final.safetensors").to_str().unwrap(),
        "--augment",
        "none",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n"], 120);
    assert_eq!(v["confusion"].as_array().unwrap().len(), 4);
    let total: u64 = v["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(total, 120);
    assert!(a.join("metrics.jsonl").is_file() && a.join("curves.png").is_file());

    // `--precision bf16` evaluates on the bf16 engine: a loss that differs from fp32's by
    // rounding, not equal to it; int8 needs an int8 file (one line naming it).
    let final_s = a.join("final.safetensors");
    let w = final_s.to_str().unwrap();
    let base = ["eval", "--data", data, "--weights", w, "--augment", "none", "--json", "--precision"];
    let o = mnv2(&[&base[..], &["bf16"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vb: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (l32, l16) = (v["loss"].as_f64().unwrap(), vb["loss"].as_f64().unwrap());
    assert!(l16 != l32 && (l16 - l32).abs() < 0.02 * l32, "bf16 loss {l16}, fp32 {l32}");
    assert_eq!(vb["n"], 120);
    let o = mnv2(&[&base[..], &["fp32"]].concat());
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["loss"], v["loss"]);
    let o = mnv2(&[&base[..], &["int8"]].concat());
    assert_one_error_line(&o, "int8 precision needs int8 weights");

    // Per-image predictions, in data order, agree with the confusion matrix; the model
    // quantises on the IDX files themselves and the int8 model evaluates the same images.
    let preds = d.join("fp32.predictions");
    let final_w = a.join("final.safetensors");
    let eval_args = |w: &Path, p: &Path| -> Vec<String> {
        ["eval", "--data", data, "--weights", w.to_str().unwrap(), "--augment", "none", "--predictions"]
            .iter()
            .map(|s| s.to_string())
            .chain([p.to_str().unwrap().to_string()])
            .collect()
    };
    let o = mnv2_cmd().args(eval_args(&final_w, &preds)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<(usize, usize)> = std::fs::read_to_string(&preds)
        .unwrap()
        .lines()
        .map(|l| {
            let (x, y) = l.split_once(' ').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), 120);
    assert!(lines.iter().enumerate().all(|(i, &(label, _))| label == i % 4), "labels in data order");
    for (t, row) in v["confusion"].as_array().unwrap().iter().enumerate() {
        for (p, count) in row.as_array().unwrap().iter().enumerate() {
            let n = lines.iter().filter(|&&x| x == (t, p)).count() as u64;
            assert_eq!(n, count.as_u64().unwrap(), "confusion[{t}][{p}]");
        }
    }
    let q = d.join("int8.safetensors");
    let o = mnv2(&[
        "quantize",
        "--weights",
        final_w.to_str().unwrap(),
        "--calib",
        data,
        "--images",
        "40",
        "--out",
        q.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("on 40 image(s)"));
    let o = mnv2_cmd().args(eval_args(&q, &d.join("int8.predictions"))).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(d.join("int8.predictions")).unwrap().lines().count(), 120);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_input_stops_with_one_line() {
    let d = dir("bad");
    // An empty class folder.
    std::fs::create_dir_all(d.join("folders/cat")).unwrap();
    std::fs::create_dir_all(d.join("folders/dog")).unwrap();
    let png = common::root().join("tests/data/images/formats");
    let any = std::fs::read_dir(&png)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "png" || x == "jpg"))
        .unwrap();
    std::fs::copy(&any, d.join("folders/cat").join(any.file_name().unwrap())).unwrap();
    let out = d.join("o");
    let folders = d.join("folders");
    let o = mnv2(&train_args(folders.to_str().unwrap(), out.to_str().unwrap()));
    assert_one_error_line(&o, "class folder `dog` has no readable images");
    // An unreadable image, with --bad-images stop.
    std::fs::write(d.join("folders/dog/broken.jpg"), b"not a jpeg").unwrap();
    let mut args = train_args(folders.to_str().unwrap(), out.to_str().unwrap());
    args.extend(["--bad-images", "stop"]);
    assert_one_error_line(&mnv2(&args), "broken.jpg");
    // A diverging run stops on the NaN and keeps its last checkpoint.
    let data = idx_data(&d, 64, 4);
    let mut args = train_args(data.to_str().unwrap(), out.to_str().unwrap());
    let i = args.iter().position(|a| *a == "0.05").unwrap();
    args[i] = "1e30";
    let o = mnv2(&args);
    assert_one_error_line(&o, "diverged");
    assert!(out.join("checkpoint.safetensors").is_file(), "the last good checkpoint is kept");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A full disk (here: a file size limit, which fails writes the same way) while writing a
/// checkpoint stops the run with one clear line and leaves the previous checkpoint intact.
#[cfg(target_os = "linux")]
#[test]
fn full_disk_keeps_the_previous_checkpoint() {
    let d = dir("fulldisk");
    let data = idx_data(&d, 64, 4);
    let out = d.join("o");
    let (data, out_s) = (data.to_str().unwrap(), out.to_str().unwrap());
    let mut args = train_args(data, out_s);
    args.extend(["--max-steps", "2"]);
    let o = mnv2(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = out.join("checkpoint.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    assert!(before.len() > 1 << 20, "the checkpoint must exceed the limit below");
    // Resume with files limited to 512 KiB (ulimit -f counts 512- or 1024-byte blocks by
    // shell; 512 blocks is at most 512 KiB either way). mnv2 catches SIGXFSZ itself, so the
    // write fails with EFBIG like a full disk fails with ENOSPC instead of killing it.
    let mut resume = train_args(data, out_s);
    resume.push("--resume");
    let o = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 512 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_mnv2"))
        .args(&resume)
        .output()
        .unwrap();
    assert_one_error_line(&o, "could not write the checkpoint");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("previous checkpoint is kept"), "{e}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), before, "the previous checkpoint changed");
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // And the kept checkpoint still resumes.
    let mut again = train_args(data, out_s);
    again.extend(["--resume", "--max-steps", "3"]);
    let o = mnv2(&again);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&d).unwrap();
}
