//! `mnv2 info --head ssdlite|ssd` and `mnv2 info --weights` on detectors (the paper's Tables 5
//! and 6 and the real model's counts through the CLI's JSON), `mnv2 convert` of a frozen
//! graph to the project's safetensors detector and `mnv2 detect` on either giving the same
//! output. Needs weights/ (scripts/fetch_assets.sh).

mod common;
use common::{assert_input_error, mnv2, ok, repo, root, small_weights, stderr, tmp};
use serde_json::Value;

const PB: &str = "weights/ssdlite_mobilenet_v2_person.pb";

fn pb() -> String {
    let p = root().join(PB);
    assert!(p.is_file(), "{} is missing: run scripts/fetch_assets.sh", p.display());
    p.to_str().unwrap().to_owned()
}

fn json(args: &[&str]) -> Value {
    let o = mnv2(args);
    ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn round_to(x: u64, unit: f64) -> f64 {
    (x as f64 / unit).round() * unit
}

#[test]
fn info_ssdlite_reproduces_table_6_and_table_5() {
    // Table 6: MNet V2 + SSDLite at 320, 80 COCO classes + background: 4.3M params, 0.8B MAdds.
    let v = json(&["info", "--head", "ssdlite", "--classes", "80", "--resolution", "320", "--json"]);
    assert_eq!(v["spec"]["classes"], 81);
    assert_eq!(v["spec"]["padding"], "tf");
    let (params, no_bn, madds) = (u(&v["params"]), u(&v["params_no_bn"]), u(&v["madds"]));
    println!("Table 6 via the CLI: {no_bn} params (weights + biases), {params} (+ BN gamma/beta), {madds} MAdds");
    assert_eq!((round_to(no_bn, 1e5), round_to(params, 1e5), round_to(madds, 1e8)), (4.3e6, 4.3e6, 8e8));
    let d = &v["detector"];
    for key in ["params", "params_no_bn", "madds"] {
        let parts: u64 = ["backbone", "extra", "predictors"].iter().map(|p| u(&d[p][key])).sum();
        assert_eq!(parts, u(&v[key]), "{key}: the split adds up");
        assert_eq!(u(&d["total"][key]), u(&v[key]));
    }
    // Per-layer rows: every row's params and madds add up to the totals; the predictors' shapes.
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.iter().map(|l| u(&l["madds"])).sum::<u64>(), madds);
    assert_eq!(layers.iter().map(|l| u(&l["params"])).sum::<u64>(), params);
    let row = |name: &str| layers.iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("no row {name}"));
    assert_eq!(row("head.BoxPredictor_0.ClassPredictor")["output"], serde_json::json!([20, 20, 3 * 81]));
    assert_eq!(row("head.BoxPredictor_5.BoxEncodingPredictor")["output"], serde_json::json!([1, 1, 6 * 4]));
    assert_eq!(row("head.layer_19_2_Conv2d_2_3x3_s2_512_depthwise.0")["op"], "dwconv3x3 s2 relu6");
    assert_eq!(layers.iter().filter(|l| l["role"] == "extra").count(), 12);
    assert_eq!(layers.iter().filter(|l| l["role"] == "predictor").count(), 24);
    // Table 5: the head alone at 320 with 81 logits. SSDLite 2.1M; SSD 14.8M and 1.25B (ours
    // within 1 %).
    assert_eq!(round_to(u(&d["head"]["params_no_bn"]), 1e5), 2.1e6);
    let ssd = json(&["info", "--head", "ssd", "--classes", "80", "--resolution", "320", "--json"]);
    let head = &ssd["detector"]["head"];
    assert_eq!(round_to(u(&head["params_no_bn"]), 1e5), 14.8e6);
    assert!((u(&head["madds"]) as f64 / 1.25e9 - 1.0).abs() < 0.01, "{head}");
    assert_eq!(ssd["detector"]["backbone"], d["backbone"], "the same backbone");
    // The text table has the rows and the split.
    let o = mnv2(&["info", "--head", "ssdlite", "--classes", "80", "--resolution", "320"]);
    ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("head.BoxPredictor_0.ClassPredictor"), "{text}");
    assert!(text.contains("  predictors "), "{text}");
}

#[test]
fn info_detector_defaults() {
    // K = 80 (Table 6's COCO) plus background, 300x300, TF padding and BatchNorm epsilon 1e-3.
    let v = json(&["info", "--head", "ssdlite", "--json"]);
    let s = &v["spec"];
    assert_eq!((s["classes"].as_u64(), s["height"].as_u64(), s["width_px"].as_u64()), (Some(81), Some(300), Some(300)));
    assert_eq!(s["padding"], "tf");
    assert!((s["bn_eps"].as_f64().unwrap() - 1e-3).abs() < 1e-9);
    assert_eq!(s["head"], serde_json::json!({"ssdlite": {"separable": true}}));
    assert_input_error(&mnv2(&["info", "--head", "ssdlite", "--classes", "0"]), "--classes");
    assert_input_error(&mnv2(&["info", "--head", "ssd", "--aspp"]), "--aspp needs --head deeplab");
}

#[test]
fn info_weights_of_the_graph_equals_the_spec() {
    let pb = pb();
    let from_file = json(&["info", "--weights", &pb, "--json"]);
    // ssdlite-real-model.md: 3,045,126 trainable parameters; MAdds as TF's conv shapes give them.
    assert_eq!((u(&from_file["params"]), u(&from_file["madds"])), (3_045_126, 616_952_240));
    let from_spec = json(&["info", "--head", "ssdlite", "--classes", "1", "--json"]);
    for key in ["spec", "params", "params_no_bn", "madds", "detector", "layers"] {
        assert_eq!(from_file[key], from_spec[key], "{key}");
    }
    assert_eq!(from_file["weights"], pb.as_str());
    // The converted safetensors detector: the same again.
    let st = tmp("info.safetensors");
    ok(&mnv2(&["convert", &pb, st.to_str().unwrap()]));
    let from_st = json(&["info", "--weights", st.to_str().unwrap(), "--json"]);
    for key in ["spec", "params", "madds", "detector", "layers"] {
        assert_eq!(from_st[key], from_spec[key], "{key}");
    }
    // Any other weights file: a classifier's totals equal its spec's.
    let w = small_weights("info");
    let a = json(&["info", "--weights", &w, "--json"]);
    let b = json(&["info", "--width", "0.35", "--resolution", "96", "--json"]);
    assert_eq!((&a["params"], &a["madds"], &a["layers"]), (&b["params"], &b["madds"], &b["layers"]));
    assert!(a.get("detector").is_none());
    // Bad files: one line naming the file.
    let missing = tmp("missing.pb");
    assert_input_error(&mnv2(&["info", "--weights", missing.to_str().unwrap()]), "missing.pb");
    assert_input_error(&mnv2(&["info", "--weights", &pb, "--head", "ssd"]), "cannot be used with");
}

#[test]
fn detect_with_the_converted_safetensors_equals_the_graph() {
    let pb = pb();
    let st = tmp("person.safetensors");
    let o = mnv2(&["convert", &pb, st.to_str().unwrap()]);
    ok(&o);
    assert!(stderr(&o).contains("SSD detector"), "{}", stderr(&o));
    let image = repo("weights/calib/astronaut.png");
    let run = |w: &str| {
        let o = mnv2(&["detect", "--weights", w, &image, "--threshold", "0.01", "--json", "--threads", "2"]);
        ok(&o);
        String::from_utf8(o.stdout).unwrap()
    };
    let (a, b) = (run(&pb), run(st.to_str().unwrap()));
    assert_eq!(a, b, "the same detections, printed the same");
    let v: Value = serde_json::from_str(&b).unwrap();
    let top = &v[0]["detections"][0];
    assert_eq!(top["label"], "person");
    assert!(top["score"].as_f64().unwrap() > 0.9, "{top}");
    // --mode: the streaming engine and the layer-by-layer reference find the same person.
    for mode in ["streaming", "reference"] {
        let o = mnv2(&["detect", "--weights", &pb, &image, "--threshold", "0.5", "--json", "--mode", mode]);
        ok(&o);
        let m: Value = serde_json::from_slice(&o.stdout).unwrap();
        let other = &m[0]["detections"][0];
        for k in 0..4 {
            let (p, q) = (top["box"][k].as_f64().unwrap(), other["box"][k].as_f64().unwrap());
            assert!((p - q).abs() <= 0.01, "{mode}: {top} vs {other}");
        }
        assert!((top["score"].as_f64().unwrap() - other["score"].as_f64().unwrap()).abs() <= 1e-4, "{mode}: {other}");
    }
    // --precision bf16 (the 1x1 convolutions in bf16): the same person, its box within 2
    // pixels and its score within 0.02 of fp32's.
    let o = mnv2(&["detect", "--weights", &pb, &image, "--threshold", "0.5", "--json", "--precision", "bf16"]);
    ok(&o);
    let m: Value = serde_json::from_slice(&o.stdout).unwrap();
    let bf = &m[0]["detections"][0];
    assert_eq!(bf["label"], "person");
    for k in 0..4 {
        let (p, q) = (top["box"][k].as_f64().unwrap(), bf["box"][k].as_f64().unwrap());
        assert!((p - q).abs() <= 2.0, "bf16: {top} vs {bf}");
    }
    assert!((top["score"].as_f64().unwrap() - bf["score"].as_f64().unwrap()).abs() <= 0.02, "bf16: {bf}");
    assert_ne!(top["score"], bf["score"], "--precision bf16 changed nothing: the option did not reach the engine");
    // --draw: the box and its label "person 0.90", white on the class colour, above the box
    // (font 17 px on a 512 px image: a 21-row band over the box's top edge at y = 32).
    let dir = tmp("drawn");
    let o = mnv2(&["detect", "--weights", st.to_str().unwrap(), &image, "--draw", dir.to_str().unwrap()]);
    ok(&o);
    let drawn = mobilenetv2::preprocess::decode(&dir.join("astronaut.png")).unwrap();
    let photo = mobilenetv2::preprocess::decode(std::path::Path::new(&image)).unwrap();
    assert_eq!((drawn.width, drawn.height), (512, 512));
    let px = |im: &mobilenetv2::preprocess::RgbImage, x: usize, y: usize| {
        let i = (y * im.width + x) * 3;
        [im.data[i], im.data[i + 1], im.data[i + 2]]
    };
    let red = mobilenetv2::draw::PALETTE[0];
    let band: Vec<[u8; 3]> =
        (11..32).flat_map(|y| (6..60).map(move |x| (x, y))).map(|(x, y)| px(&drawn, x, y)).collect();
    let white = band.iter().filter(|p| p.iter().all(|&v| v > 200)).count();
    let background = band.iter().filter(|&&p| p == red).count();
    assert!(white > 60 && background > 400, "label band: {white} white, {background} background pixels");
    assert_eq!(px(&drawn, 5, 300), red, "the box's left edge");
    assert_eq!(px(&drawn, 200, 300), px(&photo, 200, 300), "inside the box untouched");
    assert_eq!(px(&drawn, 450, 5), px(&photo, 450, 5), "outside untouched");
    // A classifier is not a detector.
    let w = small_weights("detect");
    let o = mnv2(&["detect", "--weights", &w, &image]);
    assert_input_error(&o, "no `detector` metadata");
}
