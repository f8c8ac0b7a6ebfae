//! Optimizer steps against torch: SGD momentum, SGD Nesterov and AdamW from `torch.optim`, and
//! RMSProp with TensorFlow's rule reimplemented in torch ops (`scripts/fixtures/train_grads.py`).
//! Three steps with changing learning rates; weight decay on the conv weight only.

mod common;

use common::root;
use mobilenetv2::names::Kind;
use mobilenetv2::train::net::TensorInfo;
use mobilenetv2::train::{Method, Optimizer, Schedule};
use mobilenetv2::weights::{self, Data};

fn f32s(file: &weights::TensorFile, name: &str) -> Vec<f32> {
    match &file.tensors[name].data {
        Data::F32(v) => v.clone(),
        other => panic!("{name}: {}", other.dtype()),
    }
}

#[test]
fn three_steps_match_torch() {
    let file = weights::load(&root().join("tests/data/train/optim.safetensors")).unwrap();
    let lrs: Vec<f32> = serde_json::from_str(&file.metadata["lrs"]).unwrap();
    let wd: f32 = file.metadata["weight_decay"].parse().unwrap();
    let names = [("conv.weight", Kind::ConvWeight), ("bn.weight", Kind::BnWeight), ("fc.bias", Kind::LinearBias)];
    let (mut tensors, mut init) = (Vec::new(), Vec::new());
    for (layer, (name, kind)) in names.iter().enumerate() {
        let v = f32s(&file, &format!("init.{name}"));
        tensors.push(TensorInfo {
            name: name.to_string(),
            shape: vec![v.len()],
            kind: *kind,
            layer,
            offset: init.len(),
            len: v.len(),
        });
        init.extend(v);
    }
    let methods = [
        ("sgd", Method::Sgd { momentum: 0.9, nesterov: false }),
        ("nesterov", Method::Sgd { momentum: 0.9, nesterov: true }),
        ("adamw", Method::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }),
        ("rmsprop_tf", Method::RmsProp { decay: 0.9, momentum: 0.9, eps: 1e-3 }),
    ];
    for (label, method) in methods {
        let mut params = init.clone();
        let mut opt = Optimizer::new(method, wd, false, params.len());
        let mut worst = 0f64;
        for (t, &lr) in lrs.iter().enumerate() {
            let grads: Vec<f32> = names.iter().flat_map(|(n, _)| f32s(&file, &format!("grad{t}.{n}"))).collect();
            opt.step(&mut params, &grads, &tensors, lr, |_| true);
            for info in &tensors {
                let want = f32s(&file, &format!("{label}.step{t}.{}", info.name));
                let got = &params[info.offset..info.offset + info.len];
                for (a, b) in got.iter().zip(&want) {
                    let err = (*a as f64 - *b as f64).abs() / (b.abs() as f64).max(1e-3);
                    worst = worst.max(err);
                    assert!(err < 1e-5, "{label} step {t} {}: {a} vs torch {b}", info.name);
                }
            }
        }
        eprintln!("{label}: 3 steps, worst relative difference {worst:.1e}");
    }
}

#[test]
fn frozen_tensors_are_untouched_and_decay_skips_norms() {
    let tensors = vec![
        TensorInfo { name: "w".into(), shape: vec![2], kind: Kind::ConvWeight, layer: 0, offset: 0, len: 2 },
        TensorInfo { name: "b".into(), shape: vec![2], kind: Kind::BnBias, layer: 0, offset: 2, len: 2 },
    ];
    let mut p = vec![1.0; 4];
    let mut opt = Optimizer::new(Method::Sgd { momentum: 0.0, nesterov: false }, 0.5, false, 4);
    opt.step(&mut p, &[0.0; 4], &tensors, 1.0, |_| true);
    assert_eq!(p, vec![0.5, 0.5, 1.0, 1.0], "decay on the weight only");
    opt.step(&mut p, &[1.0; 4], &tensors, 1.0, |t| t.name == "b");
    assert_eq!(p, vec![0.5, 0.5, 0.0, 0.0], "the frozen weight did not move");
}

#[test]
fn schedules() {
    let s = Schedule::Cosine { warmup: 0.25 };
    // 100 steps per epoch, 600 in all: 25 warm-up steps.
    assert!((s.lr(0.05, 0, 100, 600) - 0.05 / 25.0).abs() < 1e-12);
    assert!((s.lr(0.05, 24, 100, 600) - 0.05).abs() < 1e-12);
    assert!((s.lr(0.05, 25, 100, 600) - 0.05).abs() < 1e-12);
    assert!((s.lr(0.05, 25 + 575 / 2, 100, 600) - 0.025).abs() < 1e-4);
    assert!(s.lr(0.05, 599, 100, 600) < 1e-6);
    let st = Schedule::Step { gamma: 0.98 };
    assert_eq!(st.lr(0.045, 99, 100, 600), 0.045);
    assert!((st.lr(0.045, 250, 100, 600) - 0.045 * 0.98 * 0.98).abs() < 1e-12);
    // DeepLab's poly: lr (1 - step / total)^0.9.
    let p = Schedule::Poly { power: 0.9 };
    assert_eq!(p.lr(0.007, 0, 100, 30_000), 0.007);
    assert!((p.lr(0.007, 15_000, 100, 30_000) - 0.007 * 0.5f64.powf(0.9)).abs() < 1e-15);
    assert_eq!(p.lr(0.007, 30_000, 100, 30_000), 0.0);
}
