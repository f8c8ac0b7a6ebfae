//! `segment::dataset`: VOC-style and composed segmentation datasets, and one-line errors
//! naming the file for malformed masks (size mismatch, labels beyond the classes other than
//! 255, colour masks, missing files).

use std::path::{Path, PathBuf};

use mobilenetv2::data::compose::{compose, ComposeConfig, Sources};
use mobilenetv2::segment::dataset::{read_mask, Layout, SegmentationSet};
use mobilenetv2::segment::Segmentation;

#[path = "support/idx.rs"]
mod idx;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-segds-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn palette_png(path: &Path, w: usize, h: usize, classes: Vec<u8>) {
    let png = Segmentation { width: w, height: h, num_classes: 21, classes }.to_png().unwrap();
    std::fs::write(path, png).unwrap();
}

fn gray_png(path: &Path, w: u32, h: u32, v: Vec<u8>) {
    image::GrayImage::from_raw(w, h, v).unwrap().save(path).unwrap();
}

/// A VOC tree with two images (one JPEG, one PNG) and their masks: a palette one and a grey one.
fn voc(root: &Path) {
    for d in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    image::RgbImage::from_pixel(6, 4, image::Rgb([10, 20, 30])).save(root.join("JPEGImages/a.jpg")).unwrap();
    image::RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3])).save(root.join("JPEGImages/b.png")).unwrap();
    let mut a = vec![0u8; 24];
    a[5] = 15;
    a[6] = 255;
    a[7] = 20;
    palette_png(&root.join("SegmentationClass/a.png"), 6, 4, a);
    gray_png(&root.join("SegmentationClass/b.png"), 3, 2, vec![0, 1, 2, 255, 3, 0]);
    std::fs::write(root.join("ImageSets/Segmentation/val.txt"), "a\n\nb\n").unwrap();
}

#[test]
fn voc_layout_reads_palette_and_grey_masks() {
    let root = tmp("voc");
    voc(&root);
    let set = SegmentationSet::open(&root, "val").unwrap();
    assert_eq!((set.layout, set.len(), set.class_names.len()), (Layout::Voc, 2, 21));
    assert_eq!(set.names, ["a", "b"]);
    let a = set.load(0, 21).unwrap();
    assert_eq!((a.image.width, a.image.height), (6, 4));
    assert_eq!(&a.mask[4..9], &[0, 15, 255, 20, 0]);
    let b = set.load(1, 21).unwrap();
    assert_eq!(b.mask, [0, 1, 2, 255, 3, 0]);
    std::fs::remove_dir_all(&root).unwrap();
}

fn err(set: &SegmentationSet, i: usize, classes: usize) -> String {
    let e = set.load(i, classes).unwrap_err().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn malformed_masks_are_one_line_errors_naming_the_file() {
    let root = tmp("bad");
    voc(&root);
    let set = SegmentationSet::open(&root, "val").unwrap();
    // Label 20 is beyond 3 classes; 255 is not.
    let e = err(&set, 0, 3);
    assert!(e.contains("SegmentationClass/a.png") && e.contains("label 15") && e.contains("3 classes"), "{e}");
    // Size mismatch.
    palette_png(&root.join("SegmentationClass/b.png"), 2, 3, vec![0; 6]);
    let e = err(&set, 1, 21);
    assert!(e.contains("SegmentationClass/b.png") && e.contains("2x3") && e.contains("3x2"), "{e}");
    // A colour mask.
    image::RgbImage::from_pixel(3, 2, image::Rgb([128, 0, 0])).save(root.join("SegmentationClass/b.png")).unwrap();
    let e = err(&set, 1, 21);
    assert!(e.contains("SegmentationClass/b.png") && e.contains("palette or grey"), "{e}");
    // Not a PNG at all.
    std::fs::write(root.join("SegmentationClass/b.png"), b"not a png").unwrap();
    let e = err(&set, 1, 21);
    assert!(e.contains("SegmentationClass/b.png"), "{e}");
    // Missing files are found when the set is opened.
    std::fs::remove_file(root.join("SegmentationClass/b.png")).unwrap();
    let e = SegmentationSet::open(&root, "val").unwrap_err().to_string();
    assert!(e.contains("SegmentationClass/b.png") && e.contains("not found"), "{e}");
    std::fs::remove_file(root.join("JPEGImages/b.png")).unwrap();
    let e = SegmentationSet::open(&root, "val").unwrap_err().to_string();
    assert!(e.contains("JPEGImages/b.jpg") && e.contains("not found"), "{e}");
    let e = SegmentationSet::open(&root, "train").unwrap_err().to_string();
    assert!(e.contains("ImageSets/Segmentation/train.txt"), "{e}");
    std::fs::write(root.join("ImageSets/Segmentation/evil.txt"), "../../etc/passwd\n").unwrap();
    let e = SegmentationSet::open(&root, "evil").unwrap_err().to_string();
    assert!(e.contains("evil.txt") && e.contains("line 1"), "{e}");
    let e = SegmentationSet::open(&root.join("JPEGImages"), "val").unwrap_err().to_string();
    assert!(e.contains("neither a VOC dataset"), "{e}");
    let e = read_mask(&root.join("nope.png")).unwrap_err().to_string();
    assert!(e.contains("nope.png"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A composed set opens in its own layout, with the composed classes, and its masks load.
#[test]
fn composed_layout_reads_its_masks() {
    let dir = tmp("composed");
    let idx = dir.join("idx");
    std::fs::create_dir_all(&idx).unwrap();
    for (prefix, n) in [("train", 12), ("t10k", 6)] {
        idx::write_idx(&idx, prefix, n, |i| {
            let mut px = [0u8; 28 * 28];
            for p in px.iter_mut().skip(28 * 6).take(28 * 16).skip(i % 3) {
                *p = 200;
            }
            (px, (i % 10) as u8)
        });
    }
    let bg = dir.join("bg");
    std::fs::create_dir_all(&bg).unwrap();
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/images/coffee.png");
    std::fs::copy(photo, bg.join("coffee.png")).unwrap();
    let src = Sources::open(&idx, &bg).unwrap();
    for (name, jpeg) in [("png", None), ("jpg", Some(90))] {
        let cfg = ComposeConfig { train: 3, val: 2, jpeg_quality: jpeg, ..ComposeConfig::for_size(64) };
        let set_dir = dir.join(name);
        compose(&cfg, &src, &set_dir, &|_, _| {}).unwrap();
        for (split, n) in [("train", 3), ("val", 2)] {
            let set = SegmentationSet::open(&set_dir, split).unwrap();
            assert_eq!((set.layout, set.len()), (Layout::Composed, n));
            assert_eq!(set.class_names.len(), 11);
            assert_eq!(set.class_names[0], "background");
            assert!(set.image_path(0).to_string_lossy().ends_with(&format!("000001.{name}")));
            for i in 0..n {
                let s = set.load(i, 11).unwrap();
                assert_eq!((s.image.width, s.image.height, s.mask.len()), (64, 64, 64 * 64));
                assert!(s.mask.iter().all(|&c| c <= 10));
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
