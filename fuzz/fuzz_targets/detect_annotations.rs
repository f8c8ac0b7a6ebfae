//! Fuzzes the detection annotation readers and the COCO evaluation. The first byte picks what
//! the rest is: a COCO instances file (read as a dataset in both modes, and as evaluation
//! ground truth), a COCO results file (evaluated against a fixed ground truth), or a Pascal
//! VOC annotation XML. Whatever the bytes: a dataset, an evaluation or an error, never a panic,
//! and memory within the readers' budgets.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mobilenetv2::detect::cocoeval;
use mobilenetv2::detect::dataset::{BadAnnotations, DetectionDataset};

const GT: &str = r#"{"images":[{"id":1,"file_name":"a.jpg","width":64,"height":48},{"id":2,"file_name":"a.jpg","width":640,"height":480}],
"annotations":[{"id":1,"image_id":1,"category_id":1,"bbox":[1,2,30,20],"area":600,"iscrowd":0},
{"id":2,"image_id":1,"category_id":2,"bbox":[0,0,64,48],"area":3072,"iscrowd":1},
{"id":3,"image_id":2,"category_id":1,"bbox":[100,100,200,150],"area":30000,"iscrowd":0}],
"categories":[{"id":1,"name":"a"},{"id":2,"name":"b"}]}"#;

/// A scratch tree with the files the readers look for (one per fuzzing process).
fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("mnv2-fuzz-detect-{}", std::process::id()));
        for sub in ["images", "Annotations", "ImageSets/Main", "JPEGImages"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("images/a.jpg"), b"x").unwrap();
        std::fs::write(d.join("JPEGImages/000001.jpg"), b"x").unwrap();
        std::fs::write(d.join("ImageSets/Main/val.txt"), b"000001\n").unwrap();
        std::fs::write(d.join("gt.json"), GT).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    let d = dir();
    match kind % 3 {
        0 => {
            let p = d.join("instances.json");
            std::fs::write(&p, body).unwrap();
            for mode in [BadAnnotations::Stop, BadAnnotations::Skip] {
                if let Ok(ds) = DetectionDataset::open_coco(&p, &d.join("images"), mode) {
                    let gt = ds.to_ground_truth();
                    let _ = cocoeval::evaluate(&gt, &[]);
                }
            }
            if let Ok(gt) = cocoeval::GroundTruth::load(&p) {
                let _ = cocoeval::evaluate(&gt, &[]);
            }
        }
        1 => {
            let p = d.join("results.json");
            std::fs::write(&p, body).unwrap();
            let gt = cocoeval::GroundTruth::load(&d.join("gt.json")).unwrap();
            if let Ok(dets) = cocoeval::load_detections(&p, &gt) {
                if let Ok(e) = cocoeval::evaluate(&gt, &dets) {
                    let _ = e.summary_table();
                    let _ = e.category_ap();
                }
            }
        }
        _ => {
            std::fs::write(d.join("Annotations/000001.xml"), body).unwrap();
            for mode in [BadAnnotations::Stop, BadAnnotations::Skip] {
                let _ = DetectionDataset::open_voc(d, "val", None, mode);
            }
        }
    }
});
