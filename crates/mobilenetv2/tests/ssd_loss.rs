//! The SSD training loss (`detect::loss`) against the same loss written by hand in PyTorch
//! (`scripts/fixtures/ssd_loss.py`): value, parts, match and mined-negative counts, and the
//! gradients with respect to the logits and box codes from autograd. Four images (one without
//! boxes, one box reached only by force-matching), a duplicated anchor whose prediction the
//! miner's NMS suppresses. Tolerance: relative error `||ours - torch||_2 / ||torch||_2` <= 1e-5
//! per gradient tensor, 1e-6 on the losses (both sides accumulate in f64).

mod common;

use common::{f32s, rel_err, root};
use mobilenetv2::detect::loss::{ssd_loss, LabeledBox, LossConfig};
use mobilenetv2::weights;

#[test]
fn loss_and_gradients_match_pytorch() {
    let file = weights::load(&root().join("tests/data/ssd/loss.safetensors")).unwrap();
    let meta = |k: &str| file.metadata.get(k).unwrap_or_else(|| panic!("metadata {k}")).clone();
    let num = |k: &str| meta(k).parse::<f64>().unwrap();
    let classes = meta("classes").parse::<usize>().unwrap();
    let anchors: Vec<[f32; 4]> = f32s(&file, "anchors").chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
    let (logits, codes) = (f32s(&file, "logits"), f32s(&file, "codes"));
    let n = codes.len() / (4 * anchors.len());
    let mut boxes = vec![Vec::new(); n];
    for r in f32s(&file, "boxes").chunks_exact(6) {
        boxes[r[0] as usize].push(LabeledBox { bbox: [r[2], r[3], r[4], r[5]], class: r[1] as usize });
    }
    assert!(boxes.iter().any(Vec::is_empty), "the case has an image without boxes");
    let suppressed: Vec<(usize, usize)> = serde_json::from_str(&meta("suppressed")).unwrap();
    assert!(!suppressed.is_empty(), "the case exercises the miner's NMS");

    let l = ssd_loss(&LossConfig::default(), &anchors, classes, &logits, &codes, &boxes).unwrap();
    assert_eq!(l.matches, meta("matches").parse::<usize>().unwrap());
    assert_eq!(l.negatives, meta("negatives").parse::<usize>().unwrap());
    for (name, ours, theirs) in [
        ("loss", l.total, num("loss")),
        ("classification", l.classification, num("classification")),
        ("localization", l.localization, num("localization")),
    ] {
        let e = (ours - theirs).abs() / theirs.abs();
        assert!(e < 1e-6, "{name}: {ours} vs torch {theirs} (rel {e:.2e})");
    }
    let e1 = rel_err(&l.dlogits, &f32s(&file, "dlogits"));
    let e2 = rel_err(&l.dcodes, &f32s(&file, "dcodes"));
    eprintln!("loss {:.6}: dlogits rel {e1:.2e}, dcodes rel {e2:.2e}", l.total);
    assert!(e1 <= 1e-5 && e2 <= 1e-5, "dlogits {e1:.3e}, dcodes {e2:.3e}");
    // The suppressed anchors get no gradient.
    let (na, k) = (anchors.len(), classes + 1);
    for &(i, a) in &suppressed {
        assert!(l.dlogits[(i * na + a) * k..][..k].iter().all(|&g| g == 0.0), "image {i} anchor {a}");
    }
}
