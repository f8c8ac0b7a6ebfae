//! Gradient parity with PyTorch autograd (train mode): loss, every parameter's gradient and
//! the running statistics after one step, for the configs of `scripts/fixtures/train_grads.py`.
//! Tolerance: relative error `||ours - torch|| / ||torch||` <= 1e-4 per tensor.
//!
//! One exception is forced by the mathematics: the BatchNorm bias after a linear bottleneck
//! feeds only 1x1 convolutions followed by batch-statistics BatchNorms (directly or through
//! residual adds), which subtract any per-channel constant, so its true gradient is exactly
//! zero and both sides return rounding noise. Such a tensor (reference norm below 1e-4 of its
//! BatchNorm weight's gradient) must be zero at that scale on our side too.

mod common;

use common::{det_input, f32s, rel_err, root, spec_of};
use mobilenetv2::names::Kind;
use mobilenetv2::train::{BnMode, Net, StepOptions, Tape};
use mobilenetv2::weights;
use mobilenetv2::{Batch, Model, Spec};
use serde_json::Value;

const TOL: f64 = 1e-4;

fn check(name: &str) {
    let file = weights::load(&root().join(format!("tests/data/train/{name}.safetensors"))).unwrap();
    let meta = |k: &str| file.metadata.get(k).unwrap_or_else(|| panic!("metadata {k}")).clone();
    let cfg: Value = serde_json::from_str(&meta("config")).unwrap();
    let sampled: Vec<String> = serde_json::from_str(&meta("sampled")).unwrap();
    let norms: serde_json::Map<String, Value> = serde_json::from_str(&meta("norms")).unwrap();
    let sample: usize = meta("sample").parse().unwrap();
    let torch_loss: f64 = meta("loss").parse().unwrap();

    // Dropout off, as the fixture script trains.
    let spec = Spec { dropout: 0.0, ..spec_of(&cfg) };
    let (n, seed) = (cfg["batch"].as_u64().unwrap() as usize, cfg["seed"].as_u64().unwrap());
    let model = Model::init(&spec, seed, true).unwrap();
    let mut net = Net::new(&model);
    let mut tape = Tape::new(&net.plan, n);
    let (h, w) = (spec.height, spec.width_px);
    let x = Batch::from_nchw(&[n, 3, h, w], &det_input(n * 3 * h * w, seed)).unwrap();
    let labels: Vec<usize> = (0..n).map(|i| ((seed as usize) * 7 + 3 * i) % spec.classes).collect();
    let opts =
        StepOptions { bn: BnMode::Train, backbone: true, label_smoothing: cfg["smoothing"].as_f64().unwrap() as f32 };
    let stats = net.step(&mut tape, &x.data, &labels, opts, None).unwrap();

    let loss_err = (stats.loss - torch_loss).abs() / torch_loss.abs();
    let logit_err = rel_err(tape.logits(spec.classes), &f32s(&file, "logits"));
    eprintln!("{name}: loss {:.6} (torch {torch_loss:.6}, rel {loss_err:.2e}), logits rel {logit_err:.2e}", stats.loss);
    assert!(loss_err < 1e-5, "{name}: loss {} vs torch {torch_loss}", stats.loss);
    assert!(logit_err < 1e-4, "{name}: logits rel err {logit_err:.3e}");

    let (mut worst, mut worst_name, mut count, mut zeros) = (0f64, String::new(), 0, 0);
    for t in net.tensors.clone() {
        let (ours, key) = if t.trainable() {
            (net.grad(&t.name).unwrap().to_vec(), format!("grad.{}", t.name))
        } else {
            (net.values(&t.name).unwrap().to_vec(), format!("stat.{}", t.name))
        };
        let theirs = f32s(&file, &key);
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        if let Some(w) = t.name.strip_suffix(".bias").filter(|_| t.kind == Kind::BnBias) {
            let scale = norm(net.grad(&format!("{w}.weight")).unwrap());
            if norm(&theirs) < 1e-4 * scale {
                let ours_n = norm(&ours);
                assert!(
                    ours_n < 1e-4 * scale,
                    "{name}: `{key}` should be zero: norm {ours_n:.3e} vs scale {scale:.3e}"
                );
                zeros += 1;
                continue;
            }
        }
        let err = if sampled.contains(&t.name) {
            let picked: Vec<f32> = ours.iter().step_by(sample).copied().collect();
            let want = norms[&t.name].as_f64().unwrap();
            let norm_err = (norm(&ours) - want).abs() / want;
            rel_err(&picked, &theirs).max(norm_err)
        } else {
            rel_err(&ours, &theirs)
        };
        assert!(err <= TOL, "{name}: `{key}` relative error {err:.3e} > {TOL:e}");
        if err > worst {
            worst = err;
            worst_name = key;
        }
        count += 1;
    }
    eprintln!("{name}: {count} tensors within {TOL:e}, worst {worst:.2e} ({worst_name}); {zeros} zero-gradient biases");
}

#[test]
fn gradients_match_pytorch_width_035() {
    check("w035_48x56_b4");
}

#[test]
fn gradients_match_pytorch_width_100() {
    check("w100_48_b4");
}

#[test]
fn gradients_match_pytorch_dilated() {
    check("w035_os8_40_b4");
}
