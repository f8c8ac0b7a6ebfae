//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use mobilenetv2::spec::{BottleneckActivation, Shortcut};
use mobilenetv2::Spec;
use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Values in [-2, 2) from an integer hash of the flat index; `scripts/fixtures/parity.py`
/// computes the same numbers, exactly, with numpy.
pub fn det_input(len: usize, seed: u64) -> Vec<f32> {
    (0..len as u64)
        .map(|i| {
            let mut h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(seed);
            h ^= h >> 29;
            h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            h ^= h >> 32;
            ((h >> 40) as f64 / (1u64 << 22) as f64 - 2.0) as f32
        })
        .collect()
}

/// A parity config from tests/data/parity/configs.json.
pub struct ParityConfig {
    pub name: String,
    pub spec: Spec,
    pub batch: usize,
    pub seed: u64,
}

/// The spec of a fixture config (`width`, `classes`, `hw` and an optional `spec` object with
/// `expansion`, `bottleneck`, `shortcut`, `output_stride`), as the fixture scripts write it.
pub fn spec_of(c: &Value) -> Spec {
    let extra = c.get("spec").cloned().unwrap_or(Value::Null);
    let mut spec = Spec {
        width: c["width"].as_f64().unwrap(),
        classes: c["classes"].as_u64().unwrap() as usize,
        height: c["hw"][0].as_u64().unwrap() as usize,
        width_px: c["hw"][1].as_u64().unwrap() as usize,
        ..Spec::default()
    };
    if let Some(t) = extra.get("expansion") {
        spec.expansion = Some(t.as_u64().unwrap() as usize);
    }
    if extra.get("bottleneck").and_then(Value::as_str) == Some("relu6") {
        spec.bottleneck = BottleneckActivation::Relu6;
    }
    if extra.get("shortcut").and_then(Value::as_str) == Some("none") {
        spec.shortcut = Shortcut::None;
    }
    if let Some(os) = extra.get("output_stride") {
        spec.output_stride = os.as_u64().unwrap() as usize;
    }
    spec
}

pub fn parity_configs() -> Vec<ParityConfig> {
    let path = root().join("tests/data/parity/configs.json");
    let text = std::fs::read_to_string(&path).expect("tests/data/parity/configs.json");
    let list: Vec<Value> = serde_json::from_str(&text).unwrap();
    list.iter()
        .map(|c| ParityConfig {
            name: c["name"].as_str().unwrap().into(),
            spec: spec_of(c),
            batch: c["batch"].as_u64().unwrap() as usize,
            seed: c["seed"].as_u64().unwrap(),
        })
        .collect()
}

/// torchvision's logits for a config.
pub fn parity_logits(name: &str) -> Vec<f32> {
    let p = root().join(format!("tests/data/parity/{name}.logits.npy"));
    mobilenetv2::npy::read(&p).unwrap().data
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The f32 tensor `name` of a committed fixture file (a panic naming it when absent or not f32).
pub fn f32s(file: &mobilenetv2::weights::TensorFile, name: &str) -> Vec<f32> {
    match &file.tensors.get(name).unwrap_or_else(|| panic!("fixture lacks {name}")).data {
        mobilenetv2::weights::Data::F32(v) => v.clone(),
        other => panic!("{name}: {}", other.dtype()),
    }
}

/// Relative error `||ours - theirs||_2 / ||theirs||_2`, accumulated in f64.
pub fn rel_err(ours: &[f32], theirs: &[f32]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    let (mut d, mut r) = (0f64, 0f64);
    for (a, b) in ours.iter().zip(theirs) {
        d += (*a as f64 - *b as f64).powi(2);
        r += (*b as f64).powi(2);
    }
    (d / r.max(1e-300)).sqrt()
}

/// The SSD fixtures' deterministic value of tensor `name` (`scripts/fixtures/ssd_train.py`,
/// `ssd_full_step.py`): with `s = sin(0.7853 i + 0.01 sum(bytes(name)))` in f64 (0.7853 is the
/// fixtures' step, not pi / 4), conv weight `1.7 s / sqrt(fan_in)`, BatchNorm weight `1 + 0.3 s`,
/// bias `0.2 s`, running mean `0.1 s`, running variance `1 + 0.5 s^2`, conv bias `0.1 s`; cast
/// to f32.
#[allow(clippy::approx_constant)]
pub fn ssd_fixture_tensor(name: &str, kind: mobilenetv2::names::Kind, shape: &[usize]) -> Vec<f32> {
    use mobilenetv2::names::Kind;
    let len: usize = shape.iter().product();
    let h = 0.01 * name.bytes().map(f64::from).sum::<f64>();
    let s = (0..len).map(|i| (0.7853 * i as f64 + h).sin());
    match kind {
        Kind::ConvWeight => {
            let fan = (shape[1] * shape[2] * shape[3]) as f64;
            s.map(|s| (1.7 * s / fan.sqrt()) as f32).collect()
        }
        Kind::BnWeight => s.map(|s| (1.0 + 0.3 * s) as f32).collect(),
        Kind::BnBias => s.map(|s| (0.2 * s) as f32).collect(),
        Kind::BnMean => s.map(|s| (0.1 * s) as f32).collect(),
        Kind::BnVar => s.map(|s| (1.0 + 0.5 * (s * s)) as f32).collect(),
        Kind::ConvBias => s.map(|s| (0.1 * s) as f32).collect(),
        other => panic!("{name}: {other:?} has no SSD fixture value"),
    }
}

/// The SSD fixtures' boxes (metadata `boxes`: per image, `[class, [ymin, xmin, ymax, xmax]]`).
pub fn ssd_fixture_boxes(json: &str) -> Vec<Vec<mobilenetv2::detect::loss::LabeledBox>> {
    let images: Vec<Vec<(usize, [f32; 4])>> = serde_json::from_str(json).unwrap();
    images
        .iter()
        .map(|im| im.iter().map(|&(class, bbox)| mobilenetv2::detect::loss::LabeledBox { bbox, class }).collect())
        .collect()
}

/// Asserts an SSD loss against a fixture's metadata (`meta(key)`): the total and its two parts
/// to 1e-5 relative, the matches and kept negatives exactly.
pub fn assert_ssd_loss(loss: &mobilenetv2::detect::loss::SsdLoss, meta: &dyn Fn(&str) -> String) {
    let num = |k: &str| meta(k).parse::<f64>().unwrap();
    for (name, ours, theirs) in [
        ("loss", loss.total, num("loss")),
        ("classification", loss.classification, num("classification")),
        ("localization", loss.localization, num("localization")),
    ] {
        let e = (ours - theirs).abs() / theirs.abs();
        eprintln!("{name}: {ours:.6} (torch {theirs:.6}, rel {e:.2e})");
        assert!(e < 1e-5, "{name}: {ours} vs torch {theirs}");
    }
    assert_eq!(loss.matches, meta("matches").parse::<usize>().unwrap());
    assert_eq!(loss.negatives, meta("negatives").parse::<usize>().unwrap());
}
