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
