//! One whole-network detection training step (what `mnv2 train --task detection` does per step:
//! `SsdHeadTrainer::step` with the backbone) against PyTorch (`scripts/fixtures/ssd_full_step.py`):
//! torchvision's MobileNetV2 features with TF 'SAME' padding and the hand-written SSDLite head of
//! `ssd_train.py`, batch-statistics BatchNorm everywhere, the TF SSD loss, one SGD step (momentum
//! 0.9, weight decay 4e-5 on conv weights). Width 0.1 at 128x128, 3 logits per anchor, 6 images
//! (one without boxes). Compared: the loss and its parts, the gradient of every tensor of backbone
//! and head, and every tensor after the step (running statistics included).
//!
//! Tolerance: relative error `||ours - torch||_2 / ||torch||_2` (the reference in float64; for a
//! tensor the fixture samples, every SAMPLE-th value, the larger of that error on the sample and
//! the relative error of the whole tensor's norm) at most 1e-4, or at most FACTOR times the error
//! of PyTorch's own float32 run of the same step (the fixture's `torch_f32_err`) where that is
//! larger. Through 50-odd batch-statistics BatchNorms over 6 images of 128x128 at width 0.1, f32
//! rounding alone moves some tensors by more than 1e-4: PyTorch's float32 is off its float64 by
//! a median 2.8e-5 and up to 5.4e-3 (a projection weight), and by factors above 1e8 on the
//! projection BatchNorm biases whose true gradient is zero (the next BatchNorm removes any
//! shift), where both f32 implementations return rounding noise.

mod common;

use common::{assert_ssd_loss, f32s, rel_err, root, ssd_fixture_boxes, ssd_fixture_tensor};
use mobilenetv2::detect::heads::{spec, HeadKind};
use mobilenetv2::detect::loss::LossConfig;
use mobilenetv2::names::expected;
use mobilenetv2::train::{BnMode, HeadTape, Method, Net, Optimizer, SsdHeadTrainer, Tape};
use mobilenetv2::weights;
use mobilenetv2::Model;
use serde_json::Value;

const TOL: f64 = 1e-4;
const FACTOR: f64 = 4.0;

#[test]
fn whole_network_step_matches_pytorch() {
    let file = weights::load(&root().join("tests/data/ssd/full_step.safetensors")).unwrap();
    let meta = |k: &str| file.metadata.get(k).unwrap_or_else(|| panic!("metadata {k}")).clone();
    let num = |k: &str| meta(k).parse::<f64>().unwrap();
    let (n, k, res) = (num("batch") as usize, num("logits") as usize, num("resolution") as usize);
    let sampled: Vec<String> = serde_json::from_str(&meta("sampled")).unwrap();
    let norms: serde_json::Map<String, Value> = serde_json::from_str(&meta("norms")).unwrap();
    let sample: usize = meta("sample").parse().unwrap();
    let f32_err: serde_json::Map<String, Value> = serde_json::from_str(&meta("torch_f32_err")).unwrap();
    eprintln!("fixture: relu6 margin {}, mining gap {}", meta("relu6_margin"), meta("mining_gap"));

    let mut model = Model::init(&spec(HeadKind::SsdLite, k, num("width"), res), 0, false).unwrap();
    for e in expected(&model.plan) {
        model.params.insert(e.name.clone(), ssd_fixture_tensor(&e.name, e.kind, &e.shape));
    }
    let head = SsdHeadTrainer::new(&model.plan).unwrap();
    let mut net = Net::new(&model);
    let mut tape = Tape::new(&net.plan, n);
    let mut htape = HeadTape::default();
    let per = res * res * 3;
    let images: Vec<f32> = (0..n * per).map(|i| (0.37 * i as f64 + 0.9 * (i / per) as f64).sin() as f32).collect();
    let boxes = ssd_fixture_boxes(&meta("boxes"));
    let loss = head
        .step(&mut net, &mut tape, &mut htape, &images, &boxes, &LossConfig::default(), BnMode::Train, true)
        .unwrap();
    assert_ssd_loss(&loss, &meta);

    let (mut worst, mut worst_name, mut count, mut within_tol) = (0f64, String::new(), 0, 0);
    let mut ratios = Vec::new();
    let mut failed = Vec::new();
    let mut compare = |key: String, ours: &[f32]| {
        let theirs = f32s(&file, &key);
        let err = if sampled.contains(&key) {
            let picked: Vec<f32> = ours.iter().step_by(sample).copied().collect();
            let want = norms[&key].as_f64().unwrap();
            let norm = ours.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            rel_err(&picked, &theirs).max((norm - want).abs() / want)
        } else {
            rel_err(ours, &theirs)
        };
        let theirs32 = f32_err[&key].as_f64().unwrap();
        let tol = TOL.max(FACTOR * theirs32);
        if err > tol {
            failed.push(format!("`{key}`: relative error {err:.3e} (PyTorch float32: {theirs32:.3e})"));
        }
        within_tol += usize::from(err <= TOL);
        if theirs32 > 0.0 {
            ratios.push(err / theirs32);
        }
        if err / tol > worst {
            (worst, worst_name) = (err / tol, key);
        }
        count += 1;
    };
    let tensors = net.tensors.clone();
    for t in tensors.iter().filter(|t| t.trainable()) {
        compare(format!("grad.{}", t.name), &net.grads[t.offset..t.offset + t.len]);
    }
    let mut opt = Optimizer::new(Method::Sgd { momentum: 0.9, nesterov: false }, 4e-5, false, net.params.len());
    opt.step(&mut net.params, &net.grads, &tensors, 0.1, |_| true);
    for t in &tensors {
        let src = if t.trainable() { &net.params } else { &net.stats };
        compare(format!("new.{}", t.name), &src[t.offset..t.offset + t.len]);
    }
    assert!(failed.is_empty(), "{} of {count} tensors out of tolerance:\n{}", failed.len(), failed.join("\n"));
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "{count} tensors within tolerance ({within_tol} within {TOL:e}); worst error / tolerance {worst:.2} \
         ({worst_name}); ours / PyTorch float32 error: median {:.2}, max {:.2}",
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1]
    );
    let trainable = tensors.iter().filter(|t| t.trainable()).count();
    assert_eq!(count, trainable + tensors.len());
    assert!(
        tensors.iter().any(|t| t.name.starts_with("features.")) && tensors.iter().any(|t| t.name.starts_with("head."))
    );
}
