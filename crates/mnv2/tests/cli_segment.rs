//! `mnv2 segment` and `mnv2 info --head deeplab`: Table 7 from the command line, class maps
//! and overlays written, JSON, one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mobilenetv2::preprocess::decode;
use mobilenetv2::segment::voc_color;

fn mnv2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mnv2")).args(args).output().expect("mnv2 runs")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-cli-seg-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_input_error(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    assert!(e.contains(needle), "`{needle}` not in: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

fn info_json(args: &[&str]) -> serde_json::Value {
    let o = mnv2(&[&["info", "--head", "deeplab", "--classes", "21", "--json"], args].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn info_reproduces_table7() {
    let v = info_json(&["--output-stride", "16", "--resolution", "513"]);
    assert_eq!((v["params"].as_u64(), v["madds"].as_u64()), (Some(2_113_557), Some(2_740_709_056)));
    let names: Vec<&str> = v["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"head.aspp0.0") && !names.contains(&"head.aspp1.0"));
    assert_eq!(*names.last().unwrap(), "head.upsample");
    let v = info_json(&["--aspp", "--output-stride", "16", "--resolution", "513"]);
    assert_eq!((v["params"].as_u64(), v["madds"].as_u64()), (Some(4_523_541), Some(5_363_508_928)));
    let aspp1 = v["layers"].as_array().unwrap().iter().find(|l| l["name"] == "head.aspp1.0").unwrap();
    assert_eq!(aspp1["op"], "atrous3x3 d6 relu");
    assert_eq!(aspp1["output"], serde_json::json!([33, 33, 256]));
    let v = info_json(&["--multi-scale", "--output-stride", "8", "--resolution", "513"]);
    assert_eq!(v["multi_scale"]["madds"].as_u64(), Some(152_334_636_288));
    let v = info_json(&["--aspp", "--multi-scale", "--output-stride", "8", "--resolution", "512"]);
    assert_eq!(v["params"].as_u64(), Some(4_523_541));
    assert_eq!(v["multi_scale"]["madds"].as_u64(), Some(320_219_406_336));
    let o = mnv2(&[
        "info",
        "--head",
        "deeplab",
        "--classes",
        "21",
        "--output-stride",
        "8",
        "--multi-scale",
        "--resolution",
        "513",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("multi-scale + flips: 152,334,636,288 multiply-adds (152.3B; 12 passes"), "{text}");
    let logits = text.lines().find(|l| l.starts_with("head.logits ")).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(logits.split_whitespace().take(3).collect::<Vec<_>>(), ["head.logits", "conv1x1", "+bias"], "{text}");
}

#[test]
fn info_rejects_bad_head_flags() {
    assert_input_error(&mnv2(&["info", "--head", "deeplab"]), "output stride 16 or 8");
    assert_input_error(&mnv2(&["info", "--aspp"]), "--aspp needs --head deeplab");
    assert_input_error(&mnv2(&["info", "--head", "yolo"]), "--head `yolo`");
    assert_input_error(&mnv2(&["info", "--multi-scale"]), "--multi-scale needs --head deeplab");
}

#[test]
fn segment_writes_masks_overlays_and_json() {
    let weights = root().join("tests/data/deeplab/w035.safetensors");
    let images = [root().join("tests/data/images/chelsea.png"), root().join("tests/data/images/camera.png")];
    let out = tmp("out");
    let o = mnv2(&[
        "segment",
        "--weights",
        weights.to_str().unwrap(),
        images[0].to_str().unwrap(),
        images[1].to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
        "--threads",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let results = v.as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (r, (stem, w, h)) in results.iter().zip([("chelsea", 451, 300), ("camera", 512, 512)]) {
        assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(w), Some(h)));
        let total: f64 = r["classes"].as_array().unwrap().iter().map(|c| c["fraction"].as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        assert!(r["classes"].as_array().unwrap().iter().all(|c| c["class"].as_u64().unwrap() < 21));
        let mask = decode(&out.join(format!("{stem}.png"))).unwrap();
        assert_eq!((mask.width, mask.height), (w as usize, h as usize));
        let overlay = decode(&out.join(format!("{stem}_overlay.png"))).unwrap();
        assert_eq!((overlay.width, overlay.height), (w as usize, h as usize));
        assert_eq!(r["mask"].as_str().unwrap(), out.join(format!("{stem}.png")).to_str().unwrap());
    }
    // The mask's fractions agree with the JSON: decode the indices back.
    // (the palette expanded to RGB by the decoder: each class has its VOC colour).
    let mask = decode(&out.join("camera.png")).unwrap();
    let first = &results[1]["classes"][0];
    let colour = voc_color(first["class"].as_u64().unwrap() as u8);
    let n = mask.data.chunks_exact(3).filter(|px| **px == colour).count();
    let pixels = (mask.width * mask.height) as f64;
    assert!((n as f64 / pixels - first["fraction"].as_f64().unwrap()).abs() < 1e-12);

    // --precision bf16: the same classes in nearly the same proportions.
    let bf = tmp("bf16");
    let o = mnv2(&[
        "segment",
        "--weights",
        weights.to_str().unwrap(),
        images[1].to_str().unwrap(),
        "--out",
        bf.to_str().unwrap(),
        "--json",
        "--precision",
        "bf16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fractions = |r: &serde_json::Value| -> Vec<(u64, f64)> {
        r["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["class"].as_u64().unwrap(), c["fraction"].as_f64().unwrap()))
            .collect()
    };
    let (f32s, bf16s) = (fractions(&results[1]), fractions(&b[0]));
    assert_eq!(f32s[0].0, bf16s[0].0, "the largest class: fp32 {f32s:?}, bf16 {bf16s:?}");
    for &(c, f) in &f32s {
        let g = bf16s.iter().find(|x| x.0 == c).map_or(0.0, |x| x.1);
        assert!((f - g).abs() <= 0.02, "class {c}: fp32 {f}, bf16 {g}");
    }
}

#[test]
fn segment_multi_scale() {
    let weights = root().join("tests/data/deeplab/w035.safetensors");
    let image = root().join("tests/data/images/chelsea.png");
    let out = tmp("ms");
    let args =
        ["segment", "--weights", weights.to_str().unwrap(), image.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let o = mnv2(&[&args[..], &["--json", "--multi-scale"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v[0]["width"].as_u64(), v[0]["height"].as_u64()), (Some(451), Some(300)));
    let mask = decode(&out.join("chelsea.png")).unwrap();
    assert_eq!((mask.width, mask.height), (451, 300));
}

#[test]
fn segment_errors_name_the_file() {
    let weights = root().join("tests/data/deeplab/w035.safetensors");
    let out = tmp("err");
    let missing = tmp("no-such.png");
    let o = mnv2(&[
        "segment",
        "--weights",
        weights.to_str().unwrap(),
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_input_error(&o, "no-such.png");
    let not_image = root().join("tests/data/deeplab/expected.safetensors");
    let o = mnv2(&[
        "segment",
        "--weights",
        weights.to_str().unwrap(),
        not_image.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_input_error(&o, "expected.safetensors");
    let tiny = root().join("tests/data/images/formats/gray8_trns.png");
    let o = mnv2(&[
        "segment",
        "--weights",
        weights.to_str().unwrap(),
        tiny.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_input_error(&o, "gray8_trns.png");
    assert_input_error(&o, "smaller than the network's minimum 32x32");
    // A classifier's weights.
    let cls = tmp("cls.safetensors");
    let o = mnv2(&["init", "--width", "0.35", "--classes", "5", "--out", cls.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let photo = root().join("tests/data/images/chelsea.png");
    let o =
        mnv2(&["segment", "--weights", cls.to_str().unwrap(), photo.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_input_error(&o, "needs a DeepLab head");
    assert_input_error(&o, "cls.safetensors");
}
