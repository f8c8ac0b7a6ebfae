//! SSDLite and SSD head accounting (paper Tables 5 and 6) and the real model's counts.
//!
//! The reference for shapes is TensorFlow itself: tests/data/ssdlite/convs.json lists every
//! convolution of the real SSDLite-MobileNetV2 graph with its kernel and its output size as TF
//! ran it at 300x300 and at 320x320 (scripts/fixtures/ssdlite_tf.py). The backbone comes from
//! the project's plan with TF 'SAME' padding; the head from `detect::heads`. Multiply-adds
//! count convolutions only; "params" conventions are stated per check. Numbers are printed
//! (`-- --nocapture`).

use std::path::PathBuf;

use mobilenetv2::accounting::account;
use mobilenetv2::detect::heads::{spec, DetectorCost, HeadKind};
use mobilenetv2::plan::{Plan, Role};
use serde_json::Value;

fn convs(res: usize) -> Vec<Value> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/ssdlite/convs.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["convs"][res.to_string()].as_array().unwrap().clone()
}

fn plan(kind: HeadKind, logits: usize, res: usize) -> Plan {
    Plan::new(&spec(kind, logits, 1.0, res)).unwrap()
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
        let p = plan(HeadKind::SsdLite, 2, res);
        let ssd = p.ssd("test").unwrap();
        assert_eq!(p.layers[ssd.maps[0]].output.c, 576);
        assert_eq!(
            p.layers[ssd.maps[1]].output,
            mobilenetv2::plan::Shape::new(res.div_ceil(32), res.div_ceil(32), 1280)
        );
        let rows = convs(res);
        let layers: Vec<_> = p.layers.iter().filter(|l| matches!(l.role, Role::Extra | Role::Predictor)).collect();
        let tf: Vec<&Value> = rows
            .iter()
            .filter(|r| {
                r[0].as_str().unwrap().starts_with("BoxPredictor") || r[0].as_str().unwrap().contains("/layer_19")
            })
            .collect();
        assert_eq!(layers.len(), tf.len(), "{res}: number of head convs");
        for l in &layers {
            let scope = mobilenetv2::detect::tfimport::tf_scope(l).unwrap();
            let r = tf
                .iter()
                .find(|r| r[0].as_str().unwrap() == scope)
                .unwrap_or_else(|| panic!("{res}: TF has no conv `{}`", l.name));
            let u = |i: usize| r[i].as_u64().unwrap() as usize;
            let c = l.conv().unwrap();
            assert_eq!(r[1].as_bool().unwrap(), c.groups > 1, "{}: depthwise", l.name);
            assert_eq!((u(2), u(3), u(4)), (c.kernel, c.kernel, l.input.c), "{}: kernel", l.name);
            assert_eq!((u(6), u(7), u(8)), (l.output.h, l.output.w, l.output.c), "{}: output", l.name);
        }
        // The backbone's and the head's multiply-adds equal TF's conv shapes'.
        let cost = DetectorCost::of(&p).unwrap();
        let (bb, head) = (cost.backbone, cost.head());
        assert_eq!(bb.madds, tf_madds(&rows, false), "{res}: backbone madds");
        assert_eq!(head.madds, tf_madds(&rows, true), "{res}: head madds");
        assert_eq!(account(&p).madds, bb.madds + head.madds);
        println!("real model at {res}: backbone {} + head {} = {} MAdds", bb.madds, head.madds, bb.madds + head.madds);
    }
}

#[test]
fn real_model_counts() {
    // ssdlite-real-model.md §2.8: 3,045,126 trainable (weights + BN gamma/beta + biases),
    // 3,095,878 floats with the BN moving statistics.
    let p = plan(HeadKind::SsdLite, 2, 300);
    let t = DetectorCost::of(&p).unwrap().total();
    let trainable = t.params();
    println!("real model: {trainable} trainable params, {} floats with BN statistics", trainable + t.bn_stats);
    assert_eq!(trainable, 3_045_126);
    assert_eq!(trainable + t.bn_stats, 3_095_878);
    assert_eq!(t.madds, 616_952_240);
    let a = account(&p);
    assert_eq!((a.params, a.madds), (3_045_126, 616_952_240));
}

fn round_to(x: u64, unit: f64) -> f64 {
    (x as f64 / unit).round() * unit
}

#[test]
fn paper_tables_5_and_6() {
    let lite_plan = plan(HeadKind::SsdLite, 81, 320);
    let lite_cost = DetectorCost::of(&lite_plan).unwrap();
    let lite = lite_cost.head();
    let ssd = DetectorCost::of(&plan(HeadKind::Ssd, 81, 320)).unwrap().head();
    let (total_no_bn, total, madds) =
        (lite_cost.total().params_no_bn(), lite_cost.total().params(), lite_cost.total().madds);
    let a = account(&lite_plan);
    assert_eq!((a.params_no_bn, a.params, a.madds), (total_no_bn, total, madds));
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
