//! A training step does not depend on the number of threads beyond rounding (weight gradients
//! of 1x1 convolutions are summed per thread), and is bitwise repeatable for a given number:
//! for classification, and for segmentation (DeepLab with ASPP: the head's passes and the
//! pixel-wise loss run on the pool too).

use mobilenetv2::rng::Rng;
use mobilenetv2::spec::HeadSpec;
use mobilenetv2::train::{ops, BnMode, Net, SegTape, StepOptions, Tape};
use mobilenetv2::{Model, Spec};

fn step(model: &Model, threads: usize) -> (Vec<f32>, Vec<f32>, f64) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let spec = model.spec();
        let (n, h, w) = (6, spec.height, spec.width_px);
        let mut net = Net::new(model);
        let mut tape = Tape::new(&net.plan, n);
        let mut rng = Rng::new(3);
        let images: Vec<f32> = (0..n * h * w * 3).map(|_| rng.normal() as f32).collect();
        let labels: Vec<usize> = (0..n).map(|i| i % spec.classes).collect();
        let opts = StepOptions { bn: BnMode::Train, backbone: true, label_smoothing: 0.1 };
        let st = net.step(&mut tape, &images, &labels, opts, None).unwrap();
        (net.grads, net.stats, st.loss)
    })
}

#[test]
fn gradients_agree_across_thread_counts_and_repeat_bitwise() {
    let spec = Spec { classes: 5, dropout: 0.0, ..Spec::new(0.35, 40) };
    let model = Model::init(&spec, 7, true).unwrap();
    let (g1, s1, l1) = step(&model, 1);
    for t in [2, 3] {
        let (g, s, l) = step(&model, t);
        assert_eq!(s, s1, "running statistics differ with {t} threads");
        assert!((l - l1).abs() < 1e-9, "loss differs with {t} threads");
        let diff = g.iter().zip(&g1).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        let norm = g1.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        assert!(diff <= 1e-5 * norm, "gradients with {t} threads differ by {:.2e} of their norm", diff / norm);
        let (again, _, _) = step(&model, t);
        assert!(again == g, "two steps with {t} threads differ");
    }
}

fn seg_step(model: &Model, threads: usize) -> (Vec<f32>, Vec<f32>, f64) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let spec = model.spec();
        let (n, h, w) = (3, spec.height, spec.width_px);
        let mut net = Net::new(model);
        let mut tape = Tape::new(&net.plan, n);
        let mut seg = SegTape::new(&net.plan, n).unwrap();
        let mut rng = Rng::new(5);
        let images: Vec<f32> = (0..n * h * w * 3).map(|_| rng.normal() as f32).collect();
        let labels: Vec<u8> =
            (0..n * h * w).map(|i| if i % 13 == 0 { 255 } else { (i / 7 % spec.classes) as u8 }).collect();
        let st = net.seg_step(&mut tape, &mut seg, &images, &labels, n, None).unwrap();
        (net.grads, net.stats, st.loss)
    })
}

#[test]
fn segmentation_gradients_agree_across_thread_counts_and_repeat_bitwise() {
    let spec = Spec { classes: 6, output_stride: 16, head: HeadSpec::DeepLab { aspp: true }, ..Spec::new(0.35, 97) };
    let model = Model::init(&Spec { width_px: 113, ..spec }, 9, true).unwrap();
    let (g1, s1, l1) = seg_step(&model, 1);
    for t in [2, 3] {
        let (g, s, l) = seg_step(&model, t);
        let sdiff = s.iter().zip(&s1).fold(0f32, |m, (a, b)| m.max((a - b).abs() / b.abs().max(1.0)));
        assert!(sdiff <= 1e-6, "running statistics differ by {sdiff:.2e} with {t} threads");
        assert!((l - l1).abs() <= 1e-6 * l1.abs(), "loss {l} with {t} threads, {l1} with one");
        let diff = g.iter().zip(&g1).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        let norm = g1.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        eprintln!(
            "segmentation, {t} threads: loss {l} (1 thread {l1}), gradients differ by {:.2e} of their norm",
            diff / norm
        );
        assert!(diff <= 1e-5 * norm, "gradients with {t} threads differ by {:.2e} of their norm", diff / norm);
        let (again, again_s, again_l) = seg_step(&model, t);
        assert!(again == g && again_s == s && again_l == l, "two segmentation steps with {t} threads differ");
    }
}

#[test]
fn streaming_stores_change_nothing() {
    let spec = Spec { classes: 5, dropout: 0.0, ..Spec::new(0.35, 40) };
    let model = Model::init(&spec, 8, true).unwrap();
    ops::set_stream_min(usize::MAX);
    let plain = step(&model, 2);
    ops::set_stream_min(0);
    let streamed = step(&model, 2);
    ops::set_stream_min(4 << 20);
    assert!(plain == streamed, "non-temporal stores changed the step");
}
