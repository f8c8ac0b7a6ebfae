//! bf16 precision on the detector: an SSDLite (random weights, BatchNorm randomised) on the
//! fast engine with its backbone and box predictors' 1x1 convs on the bf16 GEMMs, against the
//! same detector in f32 and in the reference mode.

use mobilenetv2::detect::heads::{spec, HeadKind};
use mobilenetv2::detect::{Detector, DetectorOptions};
use mobilenetv2::engine::{Mode, Precision};
use mobilenetv2::plan::Shape;
use mobilenetv2::rng::Rng;
use mobilenetv2::{Batch, Model};

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn bf16_detector_outputs_stay_near_f32() {
    let model = Model::init(&spec(HeadKind::SsdLite, 2, 0.35, 300), 3, true).unwrap();
    let mut rng = Rng::new(5);
    let data: Vec<f32> = (0..300 * 300 * 3).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect();
    let batch = Batch::new(1, Shape::new(300, 300, 3), data).unwrap();
    let outputs = |mode, precision| {
        let o = DetectorOptions { mode, precision, threads: 2, ..DetectorOptions::default() };
        let d = Detector::new(model.clone(), o).unwrap();
        assert_eq!(d.options().precision, precision);
        d.network_outputs(&batch).unwrap().remove(0)
    };
    let want = outputs(Mode::Reference, None);
    let f32_fast = outputs(Mode::Fast, Some(Precision::Fp32));
    for (name, w, f) in [
        ("boxes", &want.box_encodings, &f32_fast.box_encodings),
        ("logits", &want.class_logits, &f32_fast.class_logits),
    ] {
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max_abs(w, f) <= 1e-4 * scale.max(1.0), "fp32 {name}");
        for mode in [Mode::Fast, Mode::Streaming] {
            let b = outputs(mode, Some(Precision::Bf16));
            let got = if name == "boxes" { &b.box_encodings } else { &b.class_logits };
            let err = max_abs(got, w);
            println!("SSDLite {mode:?} bf16 {name}: max |diff| to f32 {err:.2e} (largest {scale:.2})");
            assert!(err > 0.0 && err <= 2e-2 * scale, "{mode:?} bf16 {name}: {err}");
        }
    }
}
