//! int8: calibration, the quantised file format, and the int8 engine against fp32.

mod common;

use common::*;
use mobilenetv2::engine::{Engine, Isa, Mode, Options};
use mobilenetv2::quant::{self, Method};
use mobilenetv2::{Batch, Model, Spec};

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn images(spec: &Spec, n: usize, seed: u64) -> Batch {
    let len = 3 * spec.height * spec.width_px;
    Batch::from_nchw(&[n, 3, spec.height, spec.width_px], &det_input(n * len, seed)).unwrap()
}

fn run(model: &Model, x: &Batch, mode: Mode, threads: usize, isa: Option<Isa>) -> Vec<f32> {
    Engine::new(model, Options { mode, threads, isa, precision: None }).unwrap().run(x).unwrap().data
}

#[test]
fn int8_tracks_fp32_and_is_deterministic() {
    for (width, res, classes) in [(1.0, 96, 100), (0.35, 64, 10), (0.75, 80, 1000)] {
        let spec = Spec { classes, ..Spec::new(width, res) };
        let model = Model::init(&spec, 11, true).unwrap();
        let calib: Vec<Batch> = (0..4).map(|i| images(&spec, 2, 100 + i)).collect();
        let qspec = quant::calibrate(&model, &calib, Method::MinMax).unwrap();
        let mut qmodel = model.clone();
        qmodel.quant = Some(qspec);
        let x = images(&spec, 3, 7);
        let fp32 = run(&model, &x, Mode::Fast, 1, None);
        let int8 = run(&qmodel, &x, Mode::Fast, 1, None);
        let c = cosine(&fp32, &int8);
        let (_, kernels) = Engine::new(&qmodel, Options::default()).unwrap().kernels();
        let gemms: Vec<_> = kernels.iter().filter(|k| k.starts_with("qgemm")).collect();
        eprintln!("width {width} at {res}: cosine(int8, fp32) = {c:.5}; 1x1 kernels {gemms:?}");
        assert!(c >= 0.99, "width {width}: cosine {c}");
        // The same bytes in every mode and thread count; every ISA within rounding.
        for (mode, threads) in [(Mode::Fast, 2), (Mode::Streaming, 1), (Mode::Streaming, 2)] {
            assert_eq!(run(&qmodel, &x, mode, threads, None), int8, "{mode:?} x{threads}");
        }
        for isa in mnv2_kernels::isa::available() {
            let other = run(&qmodel, &x, Mode::Fast, 1, Some(isa));
            assert!(cosine(&other, &int8) > 0.9999, "{isa:?}");
        }
        let one = Batch::new(1, x.shape, x.image(1).to_vec()).unwrap();
        assert_eq!(run(&qmodel, &one, Mode::Fast, 2, None), int8[classes..2 * classes], "batch of one, split");
    }
}

#[test]
fn the_stem_runs_on_image_codes_when_the_file_records_their_quantisation() {
    let spec = Spec { classes: 10, ..Spec::new(0.35, 64) };
    let model = Model::init(&spec, 5, true).unwrap();
    let calib: Vec<Batch> = (0..2).map(|i| images(&spec, 2, 200 + i)).collect();
    let qspec = quant::calibrate(&model, &calib, Method::Percentile { percent: 99.9 }).unwrap();
    // The image's range is its min and max, whatever the method.
    let (lo, hi) = calib.iter().flat_map(|b| &b.data).fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let iq = qspec.input.expect("calibration records the image's quantisation");
    assert!((iq.scale - (hi - lo) / 255.0).abs() <= 1e-6 * iq.scale.max(1.0), "{iq:?} for [{lo}, {hi}]");
    let with = Model { quant: Some(qspec.clone()), ..model.clone() };
    // A file quantised before the input was recorded: the f32 stem on the float image.
    let without = Model { quant: Some(quant::QuantSpec { input: None, ..qspec }), ..model.clone() };
    let stem = |m: &Model| -> String {
        let (_, names) = Engine::new(m, Options::default()).unwrap().kernels();
        names.into_iter().find(|n| n.starts_with("stem_")).unwrap().to_string()
    };
    assert!(stem(&with).starts_with("stem_u8s8s32_requant"), "{}", stem(&with));
    assert!(stem(&without).starts_with("stem_f32"), "{}", stem(&without));
    let x = images(&spec, 3, 9);
    let fp32 = run(&model, &x, Mode::Fast, 1, None);
    let (a, b) = (run(&with, &x, Mode::Fast, 1, None), run(&without, &x, Mode::Fast, 1, None));
    assert_ne!(a, b, "the image codes change the stem's sums");
    let (ca, cb) = (cosine(&a, &fp32), cosine(&b, &fp32));
    eprintln!("cosine to fp32: int8 stem {ca:.5}, f32 stem {cb:.5}");
    assert!(ca >= 0.99 && cb >= 0.99 && cosine(&a, &b) >= 0.995, "{ca} {cb}");
    // The same bytes in every mode and thread count.
    for (mode, threads) in [(Mode::Fast, 2), (Mode::Streaming, 1), (Mode::Streaming, 2)] {
        assert_eq!(run(&with, &x, mode, threads, None), a, "{mode:?} x{threads}");
    }
}

#[test]
fn quantised_file_round_trip() {
    let spec = Spec { classes: 7, ..Spec::new(0.5, 64) };
    let model = Model::init(&spec, 3, true).unwrap();
    let qspec = quant::calibrate(&model, &[images(&spec, 2, 1)], "percentile:99.9".parse().unwrap()).unwrap();
    let mut qmodel = model.clone();
    qmodel.quant = Some(qspec.clone());
    let dir = std::env::temp_dir().join(format!("mnv2-int8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("q.safetensors");
    quant::save(&qmodel, &qspec, &path).unwrap();
    let fp32_size = {
        let p = dir.join("f.safetensors");
        model.save(&p).unwrap();
        std::fs::metadata(&p).unwrap().len()
    };
    let q_size = std::fs::metadata(&path).unwrap().len();
    assert!(q_size * 3 < fp32_size, "int8 file {q_size} vs fp32 {fp32_size}");
    let loaded = Model::load(&path).unwrap();
    assert_eq!(loaded.quant.as_ref(), Some(&qspec));
    let x = images(&spec, 2, 5);
    let a = run(&qmodel, &x, Mode::Fast, 1, None);
    let b = run(&loaded, &x, Mode::Fast, 1, None);
    assert_eq!(a, b, "the file gives the same int8 network");
    // A corrupt scale is refused.
    let mut file = mobilenetv2::weights::load(&path).unwrap();
    file.tensors.get_mut("features.3.conv.0.0.weight_scale").unwrap().shape = vec![1];
    file.tensors.get_mut("features.3.conv.0.0.weight_scale").unwrap().data = mobilenetv2::weights::Data::F32(vec![1.0]);
    let e = Model::from_file(file).unwrap_err().to_string();
    assert!(e.contains("features.3.conv.0.0.weight_scale"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The real ImageNet weights, calibrated on photos that are not test photos
/// (`weights/calib`, fetched by scripts/fetch_assets.sh): the int8 network keeps the fp32
/// top-1 class on every test photo.
#[test]
fn real_weights_keep_top1_on_the_test_photos() {
    let weights = root().join("weights/mobilenet_v2-b0353104.pth");
    let calib_dir = root().join("weights/calib");
    assert!(
        weights.exists() && calib_dir.exists(),
        "run scripts/fetch_assets.sh first (needs {weights:?} and {calib_dir:?})"
    );
    let model = Model::load(&weights).unwrap();
    let (h, w) = (model.spec().height, model.spec().width_px);
    let mut calib: Vec<_> = std::fs::read_dir(&calib_dir).unwrap().map(|e| e.unwrap().path()).collect();
    calib.sort();
    let batches: Vec<Batch> =
        calib.chunks(4).map(|c| mobilenetv2::preprocess::load_batch(c, &model.preprocess, h, w).unwrap()).collect();
    let qspec = quant::calibrate(&model, &batches, "percentile:99.9".parse().unwrap()).unwrap();
    let mut qmodel = model.clone();
    qmodel.quant = Some(qspec);
    let photos: Vec<_> = ["camera.png", "chelsea.png", "coffee.png", "grace_hopper.jpg", "rocket.jpg"]
        .iter()
        .map(|p| root().join("tests/data/images").join(p))
        .collect();
    let x = mobilenetv2::preprocess::load_batch(&photos, &model.preprocess, h, w).unwrap();
    let fp32 = run(&model, &x, Mode::Fast, 2, None);
    let int8 = run(&qmodel, &x, Mode::Fast, 2, None);
    for (i, p) in photos.iter().enumerate() {
        let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        let (a, b) = (&fp32[i * 1000..(i + 1) * 1000], &int8[i * 1000..(i + 1) * 1000]);
        eprintln!("{}: fp32 top-1 {} int8 top-1 {} cosine {:.4}", p.display(), argmax(a), argmax(b), cosine(a, b));
        assert_eq!(argmax(a), argmax(b), "{}", p.display());
    }
}

/// f16 storage: half the file, weights within f16 rounding, logits close to f32's.
#[test]
fn f16_weight_storage() {
    use mobilenetv2::weights::safetensors_io::FloatStore;
    let spec = Spec { classes: 10, ..Spec::new(0.5, 64) };
    let model = Model::init(&spec, 4, true).unwrap();
    let dir = std::env::temp_dir().join(format!("mnv2-f16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (p32, p16) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    model.save(&p32).unwrap();
    model.save_as(&p16, FloatStore::F16).unwrap();
    let (s32, s16) = (std::fs::metadata(&p32).unwrap().len(), std::fs::metadata(&p16).unwrap().len());
    assert!(s16 * 10 < s32 * 6, "f16 file {s16} vs f32 {s32}");
    let half = Model::load(&p16).unwrap();
    for (name, v) in &model.params {
        for (a, b) in v.iter().zip(&half.params[name]) {
            assert!((a - b).abs() <= a.abs() * 1e-3 + 1e-7, "{name}: {a} vs {b}");
        }
    }
    let x = images(&spec, 2, 9);
    let (a, b) = (run(&model, &x, Mode::Fast, 1, None), run(&half, &x, Mode::Fast, 1, None));
    assert!(cosine(&a, &b) > 0.9999);
    std::fs::remove_dir_all(&dir).ok();
}
