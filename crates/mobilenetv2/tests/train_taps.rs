//! The backbone's tap API in training ([`Net::forward_backbone`], [`Net::tap_value`],
//! [`Net::backward_from_taps`]), which heads other than the classifier train through.
//!
//! * Exact: classification's own backward equals the tap backward fed, at [`Tap::LastConv`],
//!   the gradient the pooling classifier sends there (relative error 1e-5 per tensor).
//! * Finite differences: for `L = sum(R * tap)` with a fixed random `R` at a block output, a
//!   block expansion, the last conv (and two taps at once, as SSDLite reads), the gradient of
//!   several tensors below the tap agrees with a central difference of `L` along it (relative
//!   error below 1e-2: f32 forward passes through batch-statistics BatchNorm, whose random
//!   deep networks have large curvature, so the step is small and the quotient noisy).
//!   Every backbone gradient is written (none left NaN) and those above the tap are zero.
//!   The last conv's own weights are left to the exact test: at 32x32 its BatchNorm sees two
//!   values per channel, which makes `L` too curved for a difference quotient; the test with
//!   the last conv runs at 64x64 (eight values).
//!
//! Tolerances: 1e-3 relative for the exact comparison (the random network's gradients grow
//! about 100x from the last conv to the stem, and the two paths round differently at the top;
//! the stem's error is 1e-4), 2e-2 for the finite differences (step 1e-5 of the tensor's norm).

use mobilenetv2::names::Kind;
use mobilenetv2::plan::Tap;
use mobilenetv2::rng::Rng;
use mobilenetv2::train::{BnMode, Net, StepOptions, Tape};
use mobilenetv2::{Model, Spec};

fn loss(net: &mut Net, tape: &mut Tape, x: &[f32], n: usize, taps: &[(Tap, Vec<f32>)]) -> f64 {
    net.forward_backbone(tape, x, n, BnMode::Train).unwrap();
    let mut l = 0f64;
    for (tap, r) in taps {
        let v = net.tap_value(tape, *tap).unwrap();
        assert_eq!(v.len(), r.len());
        l += v.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>();
    }
    l
}

fn setup(output_stride: usize, side: usize) -> (Net, Tape, Vec<f32>, usize) {
    let spec = Spec { classes: 4, output_stride, dropout: 0.0, ..Spec::new(0.35, side) };
    let model = Model::init(&spec, 3, true).unwrap();
    let net = Net::new(&model);
    let n = 2;
    let tape = Tape::new(&net.plan, n);
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..n * side * side * 3).map(|_| rng.normal() as f32).collect();
    (net, tape, x, n)
}

fn check(output_stride: usize, side: usize, taps: &[Tap], probe: &[&str]) {
    let (mut net, mut tape, x, n) = setup(output_stride, side);
    let mut rng = Rng::new(6);
    let taps: Vec<(Tap, Vec<f32>)> = taps
        .iter()
        .map(|&t| {
            let l = net.tap_layer(t).unwrap();
            (t, (0..n * net.plan.layers[l].output.len()).map(|_| rng.normal() as f32).collect())
        })
        .collect();
    loss(&mut net, &mut tape, &x, n, &taps);
    let injected: Vec<(Tap, &[f32])> = taps.iter().map(|(t, r)| (*t, &r[..])).collect();
    net.grads.fill(f32::NAN);
    net.backward_from_taps(&mut tape, &x, &injected).unwrap();
    let lc = net.plan.last_conv;
    let deepest = taps.iter().map(|(t, _)| net.tap_layer(*t).unwrap()).max().unwrap();
    for t in net.tensors.iter().filter(|t| t.layer <= lc && t.trainable()) {
        let g = &net.grads[t.offset..t.offset + t.len];
        assert!(g.iter().all(|v| v.is_finite()), "gradient of {} not written", t.name);
        // Above the deepest tap's block (its own later layers included) nothing flows.
        let above =
            net.plan.block_of(t.layer).map_or(t.layer > deepest, |b| b.project > deepest && b.first_layer() > deepest);
        if above && t.layer > deepest {
            assert!(g.iter().all(|v| *v == 0.0), "{} above the taps has a gradient", t.name);
        }
    }
    let (p0, g) = (net.params.clone(), net.grads.clone());
    for name in probe {
        let t = net.tensors.iter().find(|t| t.name == *name).unwrap().clone();
        let gt = &g[t.offset..t.offset + t.len];
        let norm = gt.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let pn = p0[t.offset..t.offset + t.len].iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let eps = std::env::var("TAPS_EPS").map_or(1e-5, |v| v.parse().unwrap()) * pn;
        let mut at = |s: f64| {
            for i in 0..t.len {
                net.params[t.offset + i] = (p0[t.offset + i] as f64 + s * eps * gt[i] as f64 / norm) as f32;
            }
            loss(&mut net, &mut tape, &x, n, &taps)
        };
        let fd = (at(1.0) - at(-1.0)) / (2.0 * eps);
        net.params[t.offset..t.offset + t.len].copy_from_slice(&p0[t.offset..t.offset + t.len]);
        let rel = (fd - norm).abs() / norm;
        eprintln!(
            "{:?} {name}: |g| {norm:.5}, finite difference {fd:.5}, rel {rel:.2e}",
            injected.iter().map(|t| t.0).collect::<Vec<_>>()
        );
        assert!(rel < 2e-2, "{name}: rel {rel:.3e}");
    }
}

#[test]
fn block_output_tap() {
    check(
        32,
        32,
        &[Tap::Block(13)],
        &["features.13.conv.2.weight", "features.13.conv.1.0.weight", "features.12.conv.0.1.weight"],
    );
}

#[test]
fn expansion_tap() {
    check(
        32,
        32,
        &[Tap::Expansion(14)],
        &["features.14.conv.0.0.weight", "features.14.conv.0.1.bias", "features.13.conv.1.0.weight"],
    );
}

#[test]
fn last_conv_and_expansion_taps_ssdlite() {
    check(
        32,
        64,
        &[Tap::Expansion(14), Tap::LastConv],
        &["features.16.conv.1.0.weight", "features.14.conv.0.0.weight", "features.13.conv.2.weight"],
    );
}

#[test]
fn dilated_last_block_tap() {
    check(
        16,
        32,
        &[Tap::Block(17)],
        &["features.17.conv.2.weight", "features.17.conv.1.0.weight", "features.15.conv.0.0.weight"],
    );
}

#[test]
fn last_conv_tap_equals_classification_backward() {
    let (mut net, mut tape, x, n) = setup(32, 32);
    let labels = [1, 3];
    net.step(&mut tape, &x, &labels, StepOptions::default(), None).unwrap();
    let want = net.grads.clone();
    // The classifier's gradient at the pooled features, spread over the pixels.
    let k = net.plan.output().c;
    let w = net.values("classifier.1.weight").unwrap().to_vec();
    let l = net.tap_layer(Tap::LastConv).unwrap();
    let (hw, c) = (net.plan.layers[l].output.h * net.plan.layers[l].output.w, net.plan.layers[l].output.c);
    let mut rows = vec![0f32; n * hw * c];
    for i in 0..n {
        for j in 0..c {
            let d: f32 = (0..k).map(|o| tape.dlogits[i * k + o] * w[o * c + j]).sum();
            for p in 0..hw {
                rows[(i * hw + p) * c + j] = d / hw as f32;
            }
        }
    }
    net.forward_backbone(&mut tape, &x, n, BnMode::Train).unwrap();
    net.backward_from_taps(&mut tape, &x, &[(Tap::LastConv, &rows)]).unwrap();
    let mut count = 0;
    for t in net.tensors.iter().filter(|t| t.layer <= net.plan.last_conv && t.trainable()) {
        let (a, b) = (&net.grads[t.offset..t.offset + t.len], &want[t.offset..t.offset + t.len]);
        let d: f64 = a.iter().zip(b).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>().sqrt();
        let r: f64 = b.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
        // A BatchNorm bias before batch-statistics BatchNorms only has a zero gradient (see
        // train_grads.rs): both sides hold rounding noise.
        let zero = t.kind == Kind::BnBias && r < 1e-4;
        assert!(d <= 1e-3 * r || zero, "{}: {d:.3e} vs norm {r:.3e}", t.name);
        count += 1;
    }
    assert!(count > 100);
}

#[test]
fn stem_tap_and_wrong_lengths_are_refused() {
    let (mut net, mut tape, x, n) = setup(32, 32);
    assert!(net.tap_layer(Tap::Stem).is_err());
    net.forward_backbone(&mut tape, &x, n, BnMode::Train).unwrap();
    let e = net.backward_from_taps(&mut tape, &x, &[(Tap::Block(13), &[0.0; 3])]).unwrap_err();
    assert!(e.to_string().contains("Block(13)"), "{e}");
    assert!(net.backward_from_taps(&mut tape, &x, &[]).is_err());
}
