//! DeepLabv3 + MobileNetV2 on the reference engine against PyTorch.
//!
//! scripts/fixtures/deeplab_torch.py builds the same network by hand in PyTorch (torchvision's
//! backbone names, the plan's head names, TF DeepLab's align_corners resizes), with random
//! float16-rounded weights at width 0.35 and 21 classes, and commits the weights and, for a
//! 129x129 input at output stride 16 and 8, with and without ASPP, the head's logits at the
//! feature size and the final upsampled logits at every 4th row and column, computed in
//! float64 (tests/data/deeplab/). Tolerance: 1e-4 absolute on logits of magnitude up to 4.5.

use std::path::{Path, PathBuf};

use mobilenetv2::engine::{Mode, Options};
use mobilenetv2::segment::{argmax, Segmenter};
use mobilenetv2::spec::HeadSpec;
use mobilenetv2::weights::{self, Data};
use mobilenetv2::{Batch, Engine, Model, Spec};

const TOL: f32 = 1e-4;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/deeplab").join(name)
}

struct Expected {
    file: weights::TensorFile,
}

impl Expected {
    fn load() -> Expected {
        Expected { file: weights::load(&data("expected.safetensors")).unwrap() }
    }
    /// An NCHW tensor as a batch (NHWC).
    fn batch(&self, name: &str) -> Batch {
        let t = &self.file.tensors[name];
        let Data::F32(v) = &t.data else { panic!("{name} is not f32") };
        Batch::from_nchw(&t.shape, v).unwrap()
    }
}

fn model(aspp: bool, output_stride: usize) -> Model {
    let m = Model::load(&data(if aspp { "w035_aspp.safetensors" } else { "w035.safetensors" })).unwrap();
    assert_eq!(m.spec().head, HeadSpec::DeepLab { aspp });
    assert_eq!((m.spec().width, m.spec().classes), (0.35, 21));
    m.with_spec(&Spec { output_stride, ..m.spec().clone() }).unwrap()
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Every 4th row and column of an NHWC batch of one image.
fn subsample4(b: &Batch) -> Vec<f32> {
    let s = b.shape;
    let mut out = Vec::new();
    for y in (0..s.h).step_by(4) {
        for x in (0..s.w).step_by(4) {
            out.extend_from_slice(&b.data[(y * s.w + x) * s.c..][..s.c]);
        }
    }
    out
}

#[test]
fn logits_match_pytorch() {
    let exp = Expected::load();
    let input = exp.batch("input");
    for (aspp, os) in [(false, 16), (false, 8), (true, 16), (true, 8)] {
        let cfg = format!("os{os}{}", if aspp { "_aspp" } else { "" });
        let m = model(aspp, os);
        let engine = Engine::new(&m, Options { mode: Mode::Reference, ..Options::default() }).unwrap();
        let plan = engine.plan_for(input.shape).unwrap();
        let h = plan.deeplab("test").unwrap();
        let outs = engine.run_taps(&input, &plan, &[h.logits, h.upsample]).unwrap();
        let want_logits = exp.batch(&format!("{cfg}.logits"));
        assert_eq!(outs[0].shape, want_logits.shape, "{cfg}");
        let e_logits = max_err(&outs[0].data, &want_logits.data);
        let want_out = exp.batch(&format!("{cfg}.out_s4"));
        assert_eq!(outs[1].shape.h, 129);
        let e_out = max_err(&subsample4(&outs[1]), &want_out.data);
        println!(
            "{cfg}: feature logits {} max |err| {e_logits:.2e}; upsampled max |err| {e_out:.2e}",
            want_logits.shape
        );
        assert!(e_logits <= TOL && e_out <= TOL, "{cfg}: {e_logits} {e_out}");
        // Engine::run gives the upsampled logits too.
        assert_eq!(engine.run(&input).unwrap(), outs[1]);
    }
}

#[test]
fn batches_and_threads_agree() {
    let exp = Expected::load();
    let one = exp.batch("input");
    let mut flipped = one.data.clone();
    let s = one.shape;
    for y in 0..s.h {
        for x in 0..s.w {
            let (a, b) = ((y * s.w + x) * 3, (y * s.w + s.w - 1 - x) * 3);
            flipped[a..a + 3].copy_from_slice(&one.data[b..b + 3]);
        }
    }
    let two = Batch::new(2, s, [one.data.clone(), flipped.clone()].concat()).unwrap();
    let m = model(true, 16);
    let single = Engine::new(&m, Options { mode: Mode::Reference, threads: 1, isa: None, precision: None }).unwrap();
    let threaded = Engine::new(&m, Options { mode: Mode::Reference, threads: 2, isa: None, precision: None }).unwrap();
    let a = single.run(&two).unwrap();
    let b = threaded.run(&two).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.image(0), single.run(&one).unwrap().data.as_slice());
    assert_ne!(a.image(0), a.image(1));
}

#[test]
fn segmenter_argmax_matches_pytorch() {
    let exp = Expected::load();
    let input = exp.batch("input");
    let want = exp.batch("os16_aspp.out_s4");
    let seg = Segmenter::new(model(true, 16), Options::default()).unwrap();
    let logits = seg.logits(&input).unwrap();
    let ours = argmax(&subsample4(&logits), 21);
    let theirs = argmax(&want.data, 21);
    // Pixels whose two best PyTorch logits are within the tolerance could go either way.
    let mut compared = 0;
    for (p, px) in want.data.chunks_exact(21).enumerate() {
        let mut v = px.to_vec();
        v.sort_by(|a, b| b.partial_cmp(a).unwrap());
        if v[0] - v[1] > 2.0 * TOL {
            assert_eq!(ours[p], theirs[p], "pixel {p}");
            compared += 1;
        }
    }
    assert!(compared > 1000, "{compared}");
    assert!(theirs.iter().any(|&c| c != theirs[0]), "a constant map would test little");
}

#[test]
fn segmenter_refuses_classifiers() {
    let m = Model::init(&Spec::new(0.35, 64), 1, false).unwrap();
    let e = Segmenter::new(m, Options::default()).err().unwrap().to_string();
    assert!(e.contains("needs a DeepLab head"), "{e}");
}

#[test]
fn multi_scale_matches_pytorch() {
    // TF DeepLab's MF inference (6 scales x 2 flips, softmax averaged) against the fixture's
    // PyTorch version: mean probabilities at every 4th pixel.
    let exp = Expected::load();
    let input = exp.batch("input");
    let want = exp.batch("os16.mf_prob_s4");
    let seg = Segmenter::new(model(false, 16), Options::default()).unwrap();
    let probs = seg.multi_scale_probabilities(&input).unwrap();
    assert_eq!(probs.shape, mobilenetv2::plan::Shape::new(129, 129, 21));
    let e = max_err(&subsample4(&probs), &want.data);
    println!("multi-scale + flips: max |err| of the mean probabilities {e:.2e}");
    assert!(e <= TOL, "{e}");
    // Not the single-scale probabilities (the comparison would be vacuous otherwise).
    let single = seg.logits(&input).unwrap();
    let single_probs: Vec<f32> = single.data.chunks_exact(21).flat_map(mobilenetv2::classify::softmax).collect();
    let d = max_err(&single_probs, &probs.data);
    println!("multi-scale vs single-scale probabilities: max |diff| {d:.2e}");
    assert!(d > 1e-3, "{d}");
}

#[test]
fn large_images_are_scaled_down_and_mapped_back() {
    let photo = mobilenetv2::preprocess::decode(&data("../images/chelsea.png")).unwrap();
    let seg = Segmenter::new(model(false, 16), Options::default()).unwrap().with_max_side(96);
    let s = seg.segment_image(&photo).unwrap();
    assert_eq!((s.width, s.height, s.classes.len()), (451, 300, 451 * 300));
    // The same as segmenting the 96x64 network input itself, mapped back by nearest neighbour
    // (source pixel = floor(pixel * 64 / 300), floor(pixel * 96 / 451)).
    let small = mobilenetv2::preprocess::resize_bilinear(&photo, 96, 64);
    let direct = seg.segment_image(&small).unwrap();
    assert_eq!(s.classes[0], direct.classes[0]);
    assert_eq!(s.classes[299 * 451 + 450], direct.classes[63 * 96 + 95]);
    assert_eq!(s.classes[150 * 451 + 225], direct.classes[32 * 96 + 47]);
}

#[test]
fn deeplab_weights_round_trip_through_the_project_format() {
    let m = model(true, 8);
    let path = std::env::temp_dir().join(format!("deeplab-rt-{}.safetensors", std::process::id()));
    m.save(&path).unwrap();
    let back = Model::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(back.spec(), m.spec());
    assert_eq!(back.params, m.params);
}
