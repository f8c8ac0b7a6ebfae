//! Training curves as a PNG: loss (left) and accuracy (right) against epochs, train and
//! validation (detection: loss parts and COCO AP against steps), drawn by [`crate::draw::charts`] (plotters, text in the embedded DejaVu Sans).

use std::path::Path;

use super::run::Metrics;
use crate::draw::{self, Chart, Rgb, Series};
use crate::error::Result;

const W: usize = 960;
const H: usize = 420;
const BLUE: Rgb = [31, 119, 180];
const ORANGE: Rgb = [255, 127, 14];
const GREEN: Rgb = [44, 160, 44];

/// Writes the loss and accuracy curves of `history` to `path` (atomically).
pub fn curves(path: &Path, history: &[Metrics]) -> Result<()> {
    let get = |f: &dyn Fn(&Metrics) -> Option<f64>| -> Vec<(f64, f64)> {
        history.iter().filter_map(|m| f(m).map(|v| (m.epoch, v))).collect()
    };
    let series = |name: &str, colour, points| Series { name: name.into(), colour, points };
    if history.iter().any(|m| m.cls_loss.is_some()) {
        return detection(path, history);
    }
    let loss = Chart {
        title: "loss".into(),
        x_label: "epoch".into(),
        percent: false,
        series: vec![
            series("train", BLUE, get(&|m| Some(m.train_loss))),
            series("validation", ORANGE, get(&|m| m.val_loss)),
        ],
    };
    let accuracy = Chart {
        title: "accuracy".into(),
        x_label: "epoch".into(),
        percent: true,
        series: vec![
            series("train", BLUE, get(&|m| Some(m.train_acc))),
            series(
                if history.iter().any(|m| m.val_miou.is_some()) {
                    "validation pixel accuracy"
                } else {
                    "validation top-1"
                },
                ORANGE,
                get(&|m| m.val_top1),
            ),
            series("validation mIoU", GREEN, get(&|m| m.val_miou)),
        ],
    };
    draw::write_png(&draw::charts(W, H, &[loss, accuracy])?, path)
}

/// Detection's curves: the loss and its two parts (left), validation mAP and AP50 (right).
fn detection(path: &Path, history: &[Metrics]) -> Result<()> {
    let get = |f: &dyn Fn(&Metrics) -> Option<f64>| -> Vec<(f64, f64)> {
        history.iter().filter_map(|m| f(m).map(|v| (m.step as f64, v))).collect()
    };
    let series = |name: &str, colour, points| Series { name: name.into(), colour, points };
    let loss = Chart {
        title: "training loss".into(),
        x_label: "step".into(),
        percent: false,
        series: vec![
            series("total", BLUE, get(&|m| Some(m.train_loss))),
            series("classification", ORANGE, get(&|m| m.cls_loss)),
            series("localisation", GREEN, get(&|m| m.loc_loss)),
        ],
    };
    let ap = Chart {
        title: "validation COCO AP".into(),
        x_label: "step".into(),
        percent: true,
        series: vec![series("AP@[.5:.95]", BLUE, get(&|m| m.val_map)), series("AP50", ORANGE, get(&|m| m.val_ap50))],
    };
    draw::write_png(&draw::charts(W, H, &[loss, ap])?, path)
}
