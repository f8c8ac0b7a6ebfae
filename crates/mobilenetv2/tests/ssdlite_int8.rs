//! The real SSDLite-MobileNetV2 quantised: calibrated on the photos of weights/calib/
//! (`Detector::calibrate`, percentile 99.9, as `mnv2 quantize` does), written as an int8
//! detector file, loaded back and run (backbone on the int8 kernels, the head in f32 on the
//! int8-grid weights), against the fp32 detector on the three TF fixture photos: every fp32
//! detection scoring >= 0.3 has an int8 detection of the same class with IoU >= 0.85 and a
//! score within 0.1, and the int8 detector finds nothing >= 0.5 where fp32 has nothing >= 0.3.
//! The agreement (IoU, score differences) is printed (`-- --nocapture`). Needs weights/.

use std::path::PathBuf;

use mobilenetv2::detect::{Detector, DetectorOptions, PixelDetection};
use mobilenetv2::engine::Mode;
use mobilenetv2::preprocess;
use mobilenetv2::quant::Method;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fetched(rel: &str) -> PathBuf {
    let p = root().join(rel);
    assert!(p.is_file(), "{} is missing: run scripts/fetch_assets.sh", p.display());
    p
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let (w, h) = ((a[2].min(b[2]) - a[0].max(b[0])).max(0.0), (a[3].min(b[3]) - a[1].max(b[1])).max(0.0));
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

#[test]
fn int8_detector_finds_the_fp32_boxes() {
    let pb = fetched("weights/ssdlite_mobilenet_v2_person.pb");
    let opts = |mode| DetectorOptions { threshold: 0.05, threads: 2, mode, ..DetectorOptions::default() };
    let fp32 = Detector::load(&pb, opts(Mode::Fast)).unwrap();
    let mut calib: Vec<PathBuf> = std::fs::read_dir(root().join("weights/calib"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
        .collect();
    calib.sort();
    let photos: Vec<_> = calib.iter().map(|p| preprocess::decode(p).unwrap()).collect();
    let q = fp32.calibrate(&photos, Method::Percentile { percent: 99.9 }).unwrap();
    assert_eq!((q.images, q.blocks.len()), (photos.len(), 17));
    let path = std::env::temp_dir().join(format!("mnv2-ssdlite-int8-{}.safetensors", std::process::id()));
    fp32.save_int8(&path, &q).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let int8 = Detector::load(&path, opts(Mode::Fast)).unwrap();
    let streaming = Detector::load(&path, opts(Mode::Streaming)).unwrap();
    std::fs::remove_file(&path).ok();
    assert!(int8.model().quant.is_some(), "the file loads as an int8 model");
    let (isa, kernels) = int8.kernels();
    println!("int8 detector file: {size} bytes; isa {isa:?}, kernels {}", kernels.join(", "));
    assert!(kernels.iter().any(|k| k.starts_with("qgemm")), "the backbone runs on int8 GEMMs: {kernels:?}");
    for (name, file) in [
        ("astronaut", "weights/calib/astronaut.png"),
        ("chelsea", "tests/data/images/chelsea.png"),
        ("coffee", "tests/data/images/coffee.png"),
    ] {
        let image = preprocess::decode(&fetched(file)).unwrap();
        let want = fp32.detect(&image).unwrap();
        let got = int8.detect(&image).unwrap();
        assert_eq!(streaming.detect(&image).unwrap(), got, "{name}: streaming int8 = fast int8");
        let strong: Vec<&PixelDetection> = want.iter().filter(|d| d.score >= 0.3).collect();
        if strong.is_empty() {
            let top = got.first().map_or(0.0, |d| d.score);
            let fp32_top = want.first().map_or(0.0, |d| d.score);
            println!(
                "{name}: fp32 finds nothing >= 0.3 (top score {fp32_top:.3}, 0 = none >= 0.05); int8 top {top:.3}"
            );
            assert!(top < 0.5, "{name}: int8 finds {:?} where fp32 finds nothing", got[0]);
        }
        for d in strong {
            let best = got
                .iter()
                .filter(|g| g.class == d.class)
                .max_by(|a, b| iou(&a.bbox, &d.bbox).total_cmp(&iou(&b.bbox, &d.bbox)))
                .unwrap_or_else(|| panic!("{name}: no int8 detection of class {}", d.class));
            let (o, ds) = (iou(&best.bbox, &d.bbox), best.score - d.score);
            println!(
                "{name}: fp32 {:.4} at {:?}; int8 {:.4} at {:?}: IoU {o:.4}, score {ds:+.4}",
                d.score, d.bbox, best.score, best.bbox
            );
            assert!(o >= 0.85 && ds.abs() <= 0.1, "{name}: IoU {o}, score difference {ds}");
        }
    }
}
