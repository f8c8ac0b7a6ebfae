//! `mnv2 eval --task segmentation`: mIoU, per-class IoU and pixel accuracy of a DeepLab model
//! on a VOC-style dataset, equal to the metric of `mnv2 segment`'s own class maps against the
//! masks; malformed masks are one-line errors naming the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mobilenetv2::preprocess::{decode, RgbImage};
use mobilenetv2::segment::dataset::read_mask;
use mobilenetv2::segment::metric::ConfusionMatrix;
use mobilenetv2::segment::Segmentation;

fn mnv2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mnv2")).args(args).output().expect("mnv2 runs")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-cli-evalseg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A VOC tree: two photos cut from the test images, masks of blocks of classes 0, 8, 15 and
/// an ignore band.
fn voc(dir: &Path) {
    for d in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    for (name, src, w, h) in [("cat", "chelsea.png", 72, 48), ("cup", "coffee.png", 40, 56)] {
        let photo = decode(&root().join("tests/data/images").join(src)).unwrap();
        let mut data = Vec::new();
        for y in 60..60 + h {
            data.extend_from_slice(&photo.data[(y * photo.width + 100) * 3..(y * photo.width + 100 + w) * 3]);
        }
        let crop = RgbImage::new(w, h, data).unwrap();
        // An all-background class map's overlay is the photo itself: an RGB PNG writer.
        let blank = Segmentation { width: w, height: h, num_classes: 21, classes: vec![0; w * h] };
        std::fs::write(dir.join(format!("JPEGImages/{name}.png")), blank.overlay_png(&crop).unwrap()).unwrap();
        let classes = (0..w * h)
            .map(|p| match (p % w * 3 / w, p / w) {
                (_, y) if y == h / 2 => 255,
                (0, _) => 0,
                (1, _) => 8,
                _ => 15,
            })
            .collect();
        let png = Segmentation { width: w, height: h, num_classes: 21, classes }.to_png().unwrap();
        std::fs::write(dir.join(format!("SegmentationClass/{name}.png")), png).unwrap();
    }
    std::fs::write(dir.join("ImageSets/Segmentation/val.txt"), "cat\ncup\n").unwrap();
}

#[test]
fn eval_segmentation_matches_the_metric_of_segment_outputs() {
    let dir = tmp("ok");
    let data = dir.join("voc");
    voc(&data);
    let weights = root().join("tests/data/deeplab/w035.safetensors");
    let w = weights.to_str().unwrap();
    let o = mnv2(&["eval", "--task", "segmentation", "--weights", w, "--data", data.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The same images through `mnv2 segment`, scored here.
    let out = dir.join("pred");
    let images: Vec<String> =
        ["cat", "cup"].iter().map(|n| data.join(format!("JPEGImages/{n}.png")).display().to_string()).collect();
    let o = mnv2(
        &[
            &["segment", "--weights", w, "--out", out.to_str().unwrap()],
            &images.iter().map(String::as_str).collect::<Vec<_>>()[..],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut m = ConfusionMatrix::new(21);
    for n in ["cat", "cup"] {
        let (_, _, truth) = read_mask(&data.join(format!("SegmentationClass/{n}.png"))).unwrap();
        let (_, _, pred) = read_mask(&out.join(format!("{n}.png"))).unwrap();
        m.add(&truth, &pred).unwrap();
    }
    let s = m.scores();
    assert_eq!(v["n"], 2);
    assert_eq!(v["pixels"].as_u64().unwrap(), (72 * 47 + 40 * 55) as u64);
    assert_eq!(v["pixels"].as_u64().unwrap(), s.pixels);
    assert!((v["mean_iou"].as_f64().unwrap() - s.mean_iou).abs() < 1e-12);
    assert!((v["pixel_accuracy"].as_f64().unwrap() - s.pixel_accuracy).abs() < 1e-12);
    let ious = v["classes"].as_array().unwrap();
    assert_eq!(ious.len(), 21);
    for (c, got) in ious.iter().enumerate() {
        assert_eq!(got["iou"].as_f64(), s.iou[c], "class {c}");
    }
    assert_eq!(v["confusion"], serde_json::json!(m.rows()));
    // On the bf16 engine: the same pixels scored, a mIoU of its own class maps.
    let o = mnv2(&[
        "eval",
        "--task",
        "segmentation",
        "--weights",
        w,
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--precision",
        "bf16",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vb: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(vb["pixels"], v["pixels"]);
    assert!(
        (vb["mean_iou"].as_f64().unwrap() - s.mean_iou).abs() < 0.05,
        "bf16 {} against {}",
        vb["mean_iou"],
        s.mean_iou
    );
    // The text table.
    let o = mnv2(&["eval", "--task", "segmentation", "--weights", w, "--data", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("mIoU") && text.contains("pixel accuracy") && text.contains("person"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_segmentation_errors_name_the_file() {
    let dir = tmp("bad");
    let data = dir.join("voc");
    voc(&data);
    let weights = root().join("tests/data/deeplab/w035.safetensors");
    let w = weights.to_str().unwrap();
    // Label 30 in a 21-class model's ground truth.
    let png = Segmentation { width: 40, height: 56, num_classes: 31, classes: vec![30; 40 * 56] }.to_png().unwrap();
    std::fs::write(data.join("SegmentationClass/cup.png"), png).unwrap();
    let o = mnv2(&["eval", "--task", "segmentation", "--weights", w, "--data", data.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(e.contains("SegmentationClass/cup.png") && e.contains("label 30"), "{e}");
    std::fs::remove_file(data.join("SegmentationClass/cup.png")).unwrap();
    let o = mnv2(&["eval", "--task", "segmentation", "--weights", w, "--data", data.to_str().unwrap()]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("SegmentationClass/cup.png") && e.contains("not found"), "{e}");
    let o = mnv2(&["eval", "--task", "segmentation", "--data", data.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--weights"));
    std::fs::remove_dir_all(&dir).unwrap();
}
