//! One training step of the SSDLite head (extra layers and predictors, batch-statistics
//! BatchNorm) under the TF SSD loss, against the same network and loss written by hand in
//! PyTorch (`scripts/fixtures/ssd_train.py`): the loss and its parts, the gradient of every head
//! tensor and of both backbone feature maps, and every head tensor after an SGD step (momentum
//! 0.9, weight decay 4e-5 on conv weights), running statistics included. Width 0.1 at 128x128,
//! 3 logits per anchor, 330 anchors, 6 images (one without boxes).
//!
//! Tolerance: relative error `||ours - torch||_2 / ||torch||_2` <= 1e-4 per tensor; for a
//! tensor the fixture samples (every SAMPLE-th value), the larger of that error on the sample
//! and the relative error of the whole tensor's norm.

mod common;

use common::{assert_ssd_loss, f32s, rel_err, root, ssd_fixture_boxes, ssd_fixture_tensor};
use mobilenetv2::detect::heads::{spec, HeadKind};
use mobilenetv2::detect::loss::{ssd_loss, LossConfig};
use mobilenetv2::names::expected;
use mobilenetv2::train::net::TensorInfo;
use mobilenetv2::train::{BnMode, HeadTape, Method, Optimizer, SsdHeadTrainer};
use mobilenetv2::weights;
use mobilenetv2::Model;
use serde_json::Value;

const TOL: f64 = 1e-4;

#[test]
fn head_step_matches_pytorch() {
    let file = weights::load(&root().join("tests/data/ssd/head_step.safetensors")).unwrap();
    let meta = |k: &str| file.metadata.get(k).unwrap_or_else(|| panic!("metadata {k}")).clone();
    let num = |k: &str| meta(k).parse::<f64>().unwrap();
    let (n, k) = (num("batch") as usize, num("logits") as usize);
    let sampled: Vec<String> = serde_json::from_str(&meta("sampled")).unwrap();
    let norms: serde_json::Map<String, Value> = serde_json::from_str(&meta("norms")).unwrap();
    let sample: usize = meta("sample").parse().unwrap();
    eprintln!("fixture: relu6 margin {}, mining gap {}", meta("relu6_margin"), meta("mining_gap"));

    let mut model =
        Model::init(&spec(HeadKind::SsdLite, k, num("width"), num("resolution") as usize), 0, false).unwrap();
    let head = SsdHeadTrainer::new(&model.plan).unwrap();
    // The fixture's values for every head tensor (the backbone's do not enter the step).
    let mut infos = Vec::new();
    let (mut params, mut stats) = (Vec::new(), Vec::new());
    for e in expected(&model.plan) {
        let len: usize = e.shape.iter().product();
        if e.name.starts_with("head.") {
            model.params.insert(e.name.clone(), ssd_fixture_tensor(&e.name, e.kind, &e.shape));
        }
        let dst = if e.kind.trainable() { &mut params } else { &mut stats };
        infos.push(TensorInfo {
            name: e.name.clone(),
            shape: e.shape.clone(),
            kind: e.kind,
            layer: e.layer,
            offset: dst.len(),
            len,
        });
        dst.extend_from_slice(model.param(&e.name));
    }
    // Anchors: ours (the TF generator) against the fixture's own implementation.
    let fa = f32s(&file, "anchors");
    assert_eq!(fa.len(), head.anchors.len() * 4);
    let worst = head.anchors.iter().flatten().zip(&fa).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-6, "anchors differ by {worst}");
    // The two feature maps.
    let phase = num("phase");
    let maps: Vec<Vec<f32>> = head
        .map_layers()
        .iter()
        .enumerate()
        .map(|(m, &l)| {
            (0..n * model.plan.layers[l].output.len())
                .map(|i| {
                    let img = (i / model.plan.layers[l].output.len()) as f64;
                    (3.0 + 2.9 * (0.61 * i as f64 + phase + m as f64).sin() * (1.7 * img + 0.5).sin()) as f32
                })
                .collect()
        })
        .collect();

    let mut tape = HeadTape::default();
    head.forward(&params, &mut stats, &mut tape, [&maps[0], &maps[1]], n, BnMode::Train).unwrap();
    let boxes = ssd_fixture_boxes(&meta("boxes"));
    let loss = ssd_loss(&LossConfig::default(), &head.anchors, k - 1, &tape.logits, &tape.codes, &boxes).unwrap();
    assert_ssd_loss(&loss, &meta);
    let mut grads = vec![0f32; params.len()];
    let dmaps = head.backward(&params, &mut grads, &mut tape, &loss.dlogits, &loss.dcodes, BnMode::Train).unwrap();

    let (mut worst, mut worst_name, mut count) = (0f64, String::new(), 0);
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
        if err > TOL {
            failed.push(format!("`{key}`: relative error {err:.3e}"));
        }
        if err > worst {
            (worst, worst_name) = (err, key);
        }
        count += 1;
    };
    // The maps' gradients are NHWC both sides.
    compare("grad.map0".into(), &dmaps[0]);
    compare("grad.map1".into(), &dmaps[1]);
    let head_tensors: Vec<&TensorInfo> = infos.iter().filter(|t| t.name.starts_with("head.")).collect();
    for t in &head_tensors {
        if t.trainable() {
            compare(format!("grad.{}", t.name), &grads[t.offset..t.offset + t.len]);
        }
    }
    let mut opt = Optimizer::new(Method::Sgd { momentum: 0.9, nesterov: false }, 4e-5, false, params.len());
    opt.step(&mut params, &grads, &infos, 0.1, |t| t.name.starts_with("head."));
    for t in &head_tensors {
        let src = if t.trainable() { &params } else { &stats };
        compare(format!("new.{}", t.name), &src[t.offset..t.offset + t.len]);
    }
    assert!(failed.is_empty(), "{} of {count} tensors above {TOL:e}:\n{}", failed.len(), failed.join("\n"));
    eprintln!("{count} tensors within {TOL:e}, worst {worst:.2e} ({worst_name})");
    assert_eq!(count, 2 + head_tensors.iter().filter(|t| t.trainable()).count() + head_tensors.len());
}
