//! SSDLite and SSD head accounting (paper Tables 5 and 6) and the real model's counts.
//!
//! The reference for shapes is TensorFlow itself: tests/data/ssdlite/convs.json lists every
//! convolution of the real SSDLite-MobileNetV2 graph with its kernel and its output size as TF
//! ran it at 300x300 and at 320x320 (scripts/fixtures/ssdlite_tf.py). The backbone comes from
//! the project's plan with TF 'SAME' padding; the head from `detect::heads`. Multiply-adds
//! count convolutions only; "params" conventions are stated per check. Numbers are printed
//! (`-- --nocapture`).

use std::path::PathBuf;

use mobilenetv2::accounting::layer_cost;
use mobilenetv2::detect::heads::{HeadCost, HeadKind, HeadSpec, Map};
use mobilenetv2::plan::{Plan, Role};
use mobilenetv2::spec::{Padding, Spec};
use serde_json::Value;

fn convs(res: usize) -> Vec<Value> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/ssdlite/convs.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["convs"][res.to_string()].as_array().unwrap().clone()
}

/// The backbone up to `layer_19` (no classifier) with TF padding: (weights, BN gamma/beta,
/// madds) and the two taps.
struct Backbone {
    weights: u64,
    bn: u64,
    madds: u64,
    t16: Map,
    t32: Map,
}

fn backbone(res: usize, width: f64) -> Backbone {
    let spec = Spec { padding: Padding::Tf, bn_eps: 1e-3, ..Spec::new(width, res) };
    let plan = Plan::new(&spec).unwrap();
    let mut b = Backbone { weights: 0, bn: 0, madds: 0, t16: Map { h: 0, w: 0, c: 0 }, t32: Map { h: 0, w: 0, c: 0 } };
    for l in &plan.layers {
        if matches!(l.role, Role::Pool | Role::Dropout | Role::Classifier) {
            continue;
        }
        let c = layer_cost(l);
        b.weights += c.weights;
        b.bn += c.bn;
        b.madds += c.madds;
        let m = Map { h: l.output.h, w: l.output.w, c: l.output.c };
        if l.role == Role::Expand && l.block == Some(14) {
            b.t16 = m;
        }
        if l.role == Role::LastConv {
            b.t32 = m;
        }
    }
    b
}

fn tf_madds(rows: &[Value], head: bool) -> u64 {
    rows.iter()
        .filter(|r| {
            let s = r[0].as_str().unwrap();
            (s.starts_with("BoxPredictor") || s.contains("/layer_19")) == head
        })
        .map(|r| (2..8).map(|i| r[i].as_u64().unwrap()).product::<u64>())
        .sum()
}

#[test]
fn head_layers_match_tensorflow_at_300_and_320() {
    for res in [300, 320] {
        let bb = backbone(res, 1.0);
        assert_eq!(bb.t16.c, 576);
        assert_eq!(bb.t32, Map { h: res.div_ceil(32), w: res.div_ceil(32), c: 1280 });
        let rows = convs(res);
        let layers = HeadSpec::new(HeadKind::SsdLite, 2, 1.0).layers(bb.t16, bb.t32);
        let tf: Vec<&Value> = rows
            .iter()
            .filter(|r| {
                r[0].as_str().unwrap().starts_with("BoxPredictor") || r[0].as_str().unwrap().contains("/layer_19")
            })
            .collect();
        assert_eq!(layers.len(), tf.len(), "{res}: number of head convs");
        for l in &layers {
            let r = tf
                .iter()
                .find(|r| r[0].as_str().unwrap().trim_start_matches("FeatureExtractor/MobilenetV2/") == l.name)
                .unwrap_or_else(|| panic!("{res}: TF has no conv `{}`", l.name));
            let u = |i: usize| r[i].as_u64().unwrap() as usize;
            assert_eq!(r[1].as_bool().unwrap(), l.groups > 1, "{}: depthwise", l.name);
            assert_eq!((u(2), u(3), u(4)), (l.kernel, l.kernel, l.input.c), "{}: kernel", l.name);
            assert_eq!((u(6), u(7), u(8)), (l.output.h, l.output.w, l.output.c), "{}: output", l.name);
        }
        // The backbone's and the head's multiply-adds equal TF's conv shapes'.
        let head: HeadCost = HeadSpec::new(HeadKind::SsdLite, 2, 1.0).cost(bb.t16, bb.t32);
        assert_eq!(bb.madds, tf_madds(&rows, false), "{res}: backbone madds");
        assert_eq!(head.madds, tf_madds(&rows, true), "{res}: head madds");
        println!("real model at {res}: backbone {} + head {} = {} MAdds", bb.madds, head.madds, bb.madds + head.madds);
    }
}

#[test]
fn real_model_counts() {
    // ssdlite-real-model.md §2.8: 3,045,126 trainable (weights + BN gamma/beta + biases),
    // 3,095,878 floats with the BN moving statistics.
    let bb = backbone(300, 1.0);
    let head = HeadSpec::new(HeadKind::SsdLite, 2, 1.0).cost(bb.t16, bb.t32);
    let trainable = bb.weights + bb.bn + head.params();
    println!(
        "real model: {trainable} trainable params, {} floats with BN statistics",
        trainable + bb.bn + head.bn_stats
    );
    assert_eq!(trainable, 3_045_126);
    assert_eq!(trainable + bb.bn + head.bn_stats, 3_095_878);
    assert_eq!(bb.madds + head.madds, 616_952_240);
}

fn round_to(x: u64, unit: f64) -> f64 {
    (x as f64 / unit).round() * unit
}

#[test]
fn paper_tables_5_and_6() {
    let bb = backbone(320, 1.0);
    let lite = HeadSpec::new(HeadKind::SsdLite, 81, 1.0).cost(bb.t16, bb.t32);
    let ssd = HeadSpec::new(HeadKind::Ssd, 81, 1.0).cost(bb.t16, bb.t32);
    let total_no_bn = bb.weights + lite.params_no_bn();
    let total = bb.weights + bb.bn + lite.params();
    let madds = bb.madds + lite.madds;
    println!("Table 6, MNet V2 + SSDLite @320, 81 logits: {total_no_bn} params (weights + biases), {total} (+ BN gamma/beta), {madds} MAdds");
    println!(
        "Table 5 SSD head @320: {} params (weights + biases), {} (+ BN), {} MAdds",
        ssd.params_no_bn(),
        ssd.params(),
        ssd.madds
    );
    println!(
        "Table 5 SSDLite head @320: {} params (weights + biases), {} (+ BN), {} MAdds, 2x = {}",
        lite.params_no_bn(),
        lite.params(),
        lite.madds,
        2 * lite.madds
    );
    // Table 6: 4.3M params (either convention) and 0.8B MAdds.
    assert_eq!(round_to(total_no_bn, 1e5), 4.3e6);
    assert_eq!(round_to(total, 1e5), 4.3e6);
    assert_eq!(round_to(madds, 1e8), 8e8);
    // Table 5, SSD: 14.8M params, 1.25B MAdds (ours 1.259B: within 1 %).
    assert_eq!(round_to(ssd.params_no_bn(), 1e5), 14.8e6);
    assert!((ssd.madds as f64 / 1.25e9 - 1.0).abs() < 0.01, "{}", ssd.madds);
    // Table 5, SSDLite: 2.1M params. Its 0.35B matches no MAC count (0.18B here): twice the
    // MACs, i.e. FLOPs, is within 3 % of it.
    assert_eq!(round_to(lite.params_no_bn(), 1e5), 2.1e6);
    assert_eq!(round_to(lite.params(), 1e5), 2.1e6);
    assert_eq!(round_to(lite.madds, 1e7), 1.8e8);
    assert!((2.0 * lite.madds as f64 / 0.35e9 - 1.0).abs() < 0.03, "{}", lite.madds);
}
