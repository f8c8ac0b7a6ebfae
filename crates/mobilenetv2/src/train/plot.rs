//! Training curves as a PNG: loss (left) and accuracy (right) against epochs, train and
//! validation. Drawn on an RGB canvas with a 5x7 pixel font of our own and encoded with the
//! `image` crate, so no font file or system library is needed.

use std::path::Path;

use super::run::Metrics;
use crate::error::{Error, Result};

const W: usize = 960;
const H: usize = 420;
const SCALE: usize = 2;

type Rgb = [u8; 3];
const BLUE: Rgb = [31, 119, 180];
const ORANGE: Rgb = [255, 127, 14];
const GRAY: Rgb = [200, 200, 200];
const BLACK: Rgb = [0, 0, 0];

fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        _ => [0; 7],
    }
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
            self.px[(y as usize * W + x as usize) * 3..][..3].copy_from_slice(&c);
        }
    }
    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch.to_ascii_uppercase());
            for (r, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for dy in 0..SCALE {
                            for dx in 0..SCALE {
                                let px = x + ((i * 6 + col) * SCALE + dx) as i64;
                                self.set(px, y + (r * SCALE + dy) as i64, c);
                            }
                        }
                    }
                }
            }
        }
    }
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = ((x0 + (x1 - x0) * t).round() as i64, (y0 + (y1 - y0) * t).round() as i64);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                self.set(x + dx, y + dy, c);
            }
        }
    }
}

fn fmt_tick(v: f64, pct: bool) -> String {
    if pct {
        format!("{:.0}%", v * 100.0)
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A named, coloured series of (x, y) points.
type Series<'a> = (&'a str, Rgb, Vec<(f64, f64)>);

/// One panel of series.
fn panel(cv: &mut Canvas, x0: usize, title: &str, series: &[Series], pct: bool) {
    let (left, top, pw, ph) = (x0 + 70, 40usize, W / 2 - 100, H - 100);
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.2.iter().copied()).filter(|p| p.1.is_finite()).collect();
    let xmax = pts.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let (mut ymin, mut ymax) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    if !ymin.is_finite() {
        (ymin, ymax) = (0.0, 1.0);
    }
    if ymax - ymin < 1e-6 {
        ymax = ymin + 1e-3;
    }
    let pad = (ymax - ymin) * 0.05;
    let (ymin, ymax) = (ymin - pad, ymax + pad);
    let sx = |x: f64| left as f64 + x / xmax * pw as f64;
    let sy = |y: f64| top as f64 + (ymax - y) / (ymax - ymin) * ph as f64;
    for i in 0..=4 {
        let y = ymin + (ymax - ymin) * i as f64 / 4.0;
        cv.line((left as f64, sy(y)), ((left + pw) as f64, sy(y)), GRAY);
        cv.text(x0 as i64 + 4, sy(y) as i64 - 7, &fmt_tick(y, pct), BLACK);
        let x = xmax * i as f64 / 4.0;
        cv.text(sx(x) as i64 - 10, (top + ph + 8) as i64, &format!("{x:.1}"), BLACK);
    }
    cv.line((left as f64, top as f64), (left as f64, (top + ph) as f64), BLACK);
    cv.line((left as f64, (top + ph) as f64), ((left + pw) as f64, (top + ph) as f64), BLACK);
    cv.text(left as i64, 12, title, BLACK);
    cv.text((left + pw / 2 - 30) as i64, (top + ph + 30) as i64, "EPOCH", BLACK);
    for (i, (name, colour, s)) in series.iter().enumerate() {
        let lx = (left + pw - 150) as i64;
        let ly = 12 + 18 * i as i64;
        cv.line((lx as f64, ly as f64 + 6.0), (lx as f64 + 20.0, ly as f64 + 6.0), *colour);
        cv.text(lx + 26, ly, name, *colour);
        let v: Vec<&(f64, f64)> = s.iter().filter(|p| p.1.is_finite()).collect();
        for w in v.windows(2) {
            cv.line((sx(w[0].0), sy(w[0].1)), (sx(w[1].0), sy(w[1].1)), *colour);
        }
        for p in &v {
            cv.line((sx(p.0) - 2.0, sy(p.1)), (sx(p.0) + 2.0, sy(p.1)), *colour);
        }
    }
}

/// Writes the loss and accuracy curves of `history` to `path` (atomically).
pub fn curves(path: &Path, history: &[Metrics]) -> Result<()> {
    let mut cv = Canvas { px: vec![255; W * H * 3] };
    let get = |f: &dyn Fn(&Metrics) -> Option<f64>| -> Vec<(f64, f64)> {
        history.iter().filter_map(|m| f(m).map(|v| (m.epoch, v))).collect()
    };
    panel(
        &mut cv,
        0,
        "LOSS",
        &[("TRAIN", BLUE, get(&|m| Some(m.train_loss))), ("VAL", ORANGE, get(&|m| m.val_loss))],
        false,
    );
    panel(
        &mut cv,
        W / 2,
        "ACCURACY",
        &[("TRAIN", BLUE, get(&|m| Some(m.train_acc))), ("VAL TOP1", ORANGE, get(&|m| m.val_top1))],
        true,
    );
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&cv.px, W as u32, H as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Image { path: path.into(), detail: e.to_string() })?;
    crate::fsutil::write_atomic(path, &png)
}

use image::ImageEncoder;
