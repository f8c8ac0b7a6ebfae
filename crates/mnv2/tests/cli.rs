//! The command line: JSON schemas, exit codes and one-line errors.

use std::path::PathBuf;
use std::process::{Command, Output};

use mobilenetv2::npy;

fn mnv2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mnv2")).args(args).output().expect("mnv2 runs")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 1, one line on stderr that mentions `needle`, and no panic.
fn assert_input_error(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    assert!(e.contains(needle), "`{needle}` not in: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn info_json_has_the_totals() {
    let o = mnv2(&["info", "--width", "1.0", "--resolution", "224", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["params"], 3_504_872);
    assert_eq!(v["madds"], 300_774_272u64);
    assert_eq!(v["layers"].as_array().unwrap().len(), 55);
    assert_eq!(v["layers"][0]["output"], serde_json::json!([112, 112, 32]));
    let o = mnv2(&["info", "--width", "1.4", "--resolution", "97x113", "--classes", "10", "--json", "--memory"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["spec"]["height"], 97);
    assert!(v["memory"]["table3_max_bytes_f16"].as_u64().unwrap() > 0);
    let o = mnv2(&["info", "--memory"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("401,408"));
}

#[test]
fn info_rejects_bad_options() {
    assert_input_error(&mnv2(&["info", "--resolution", "20"]), "minimum 32x32");
    assert_input_error(&mnv2(&["info", "--bottleneck", "tanh"]), "--bottleneck");
    assert_input_error(&mnv2(&["info", "--output-stride", "4"]), "output stride");
}

#[test]
fn init_run_convert_round_trip() {
    let w = tmp("w.safetensors");
    let o = mnv2(&["init", "--width", "0.35", "--classes", "3", "--seed", "9", "--out", w.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let x = tmp("x.npy");
    let data: Vec<f32> = (0..2 * 3 * 40 * 36).map(|i| ((i % 17) as f32 - 8.0) / 4.0).collect();
    npy::write(&x, &npy::Array { shape: vec![2, 3, 40, 36], data }).unwrap();
    let y = tmp("y.npy");
    let run = |weights: &PathBuf| {
        let o = mnv2(&[
            "run",
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--output",
            y.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        npy::read(&y).unwrap()
    };
    let a = run(&w);
    assert_eq!(a.shape, vec![2, 3]);
    let w2 = tmp("w2.safetensors");
    let o = mnv2(&["convert", w.to_str().unwrap(), w2.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(run(&w2), a);
}

#[test]
fn run_reports_bad_inputs() {
    let w = tmp("w3.safetensors");
    assert!(mnv2(&["init", "--width", "0.35", "--classes", "2", "--out", w.to_str().unwrap()]).status.success());
    let y = tmp("out.npy");
    let run = |x: &PathBuf| {
        mnv2(&[
            "run",
            "--weights",
            w.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--output",
            y.to_str().unwrap(),
        ])
    };
    let missing = tmp("missing.npy");
    assert_input_error(&run(&missing), "missing.npy");
    let x = tmp("x3.npy");
    let mut data = vec![0.5f32; 3 * 32 * 32];
    npy::write(&x, &npy::Array { shape: vec![1, 3, 32, 32], data: data.clone() }).unwrap();
    let bytes = std::fs::read(&x).unwrap();
    let cut = tmp("cut.npy");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    assert_input_error(&run(&cut), "truncated");
    data[7] = f32::NAN;
    let nan = tmp("nan.npy");
    npy::write(&nan, &npy::Array { shape: vec![1, 3, 32, 32], data }).unwrap();
    assert_input_error(&run(&nan), "not finite");
    let three = tmp("3d.npy");
    npy::write(&three, &npy::Array { shape: vec![3, 32, 32], data: vec![0.0; 3072] }).unwrap();
    assert_input_error(&run(&three), "4-D");
    let o = mnv2(&[
        "run",
        "--weights",
        x.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
    ]);
    assert_input_error(&o, "x3.npy");
}

#[test]
fn isa_cap_selects_the_portable_kernels_with_the_same_results() {
    let w = tmp("w_isa.safetensors");
    assert!(mnv2(&["init", "--width", "0.5", "--classes", "5", "--randomize-bn", "--out", w.to_str().unwrap()])
        .status
        .success());
    let x = tmp("x_isa.npy");
    let data: Vec<f32> = (0..3 * 64 * 48).map(|i| ((i * 7 % 23) as f32 - 11.0) / 6.0).collect();
    npy::write(&x, &npy::Array { shape: vec![1, 3, 64, 48], data }).unwrap();
    let mut outs = Vec::new();
    for cap in ["scalar", "avx2", "avx512"] {
        let y = tmp(&format!("y_{cap}.npy"));
        let o = Command::new(env!("CARGO_BIN_EXE_mnv2"))
            .args([
                "run",
                "--weights",
                w.to_str().unwrap(),
                "--input",
                x.to_str().unwrap(),
                "--output",
                y.to_str().unwrap(),
            ])
            .env("MNV2_ISA", cap)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        outs.push(npy::read(&y).unwrap().data);
    }
    for o in &outs[1..] {
        let err = o.iter().zip(&outs[0]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < 1e-5, "ISA caps disagree by {err}");
    }
    let o = mnv2(&[
        "bench",
        "--weights",
        w.to_str().unwrap(),
        "--resolution",
        "64",
        "--runs",
        "3",
        "--warmup",
        "0",
        "--isa",
        "scalar",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let last = String::from_utf8_lossy(&o.stdout).lines().last().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["isa"], "scalar");
    assert!(
        v["median_ms"].as_f64().unwrap() > 0.0 && v["p90_ms"].as_f64().unwrap() >= v["median_ms"].as_f64().unwrap()
    );
}
