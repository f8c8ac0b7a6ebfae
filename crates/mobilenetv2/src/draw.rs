//! Drawing for people to look at: labelled boxes on a photo (`mnv2 detect --draw`) and line
//! charts (the training curves), both with `plotters` on an RGB buffer and with text in a
//! real font, DejaVu Sans, embedded from the `dejavu` crate (no system font or library is
//! looked up, so the pictures are the same on every machine). The project draws text this
//! one way.
//!
//! Images are encoded as PNG with the `image` crate and written atomically.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor, TextStyle};

use crate::error::{Error, Result};
use crate::preprocess::RgbImage;

/// The font family every text is drawn in (registered once, from the embedded font).
const FAMILY: &str = "sans-serif";

/// An RGB colour.
pub type Rgb = [u8; 3];

/// Registers DejaVu Sans with plotters under [`FAMILY`], once per process.
fn font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font does not load".to_string())
        })
        .clone()
        .map_err(Error::Unsupported)
}

fn colour(c: Rgb) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

fn text_style(size: f64, c: Rgb) -> TextStyle<'static> {
    TextStyle { color: colour(c).to_backend_color(), ..TextStyle::from((FAMILY, size).into_font()) }
}

fn draw_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unsupported(format!("drawing {what} failed: {e}"))
}

/// A box to draw: corners in pixels, its colour and the text on its label (none if empty).
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledBox {
    /// `[x0, y0, x1, y1]` in pixels.
    pub bbox: [f32; 4],
    /// The frame's and the label's background colour.
    pub colour: Rgb,
    /// Drawn in white on a band of `colour` above the box (inside it when the box touches the
    /// top of the image).
    pub label: String,
}

/// A few colours that stay apart from each other and readable under white text.
pub const PALETTE: [Rgb; 6] =
    [[214, 39, 40], [31, 119, 180], [44, 160, 44], [148, 103, 189], [255, 127, 14], [23, 190, 207]];

/// `image` with `boxes` drawn on it: frames `max(2, size / 250)` px wide and labels in a font
/// `max(14, size / 30)` px high, where size is the image's smaller side.
pub fn boxes(image: &RgbImage, boxes: &[LabelledBox]) -> Result<RgbImage> {
    font()?;
    let (w, h) = (image.width, image.height);
    let mut px = image.data.clone();
    {
        let area = BitMapBackend::with_buffer(&mut px, (w as u32, h as u32)).into_drawing_area();
        let side = w.min(h) as f64;
        let stroke = ((side / 250.0).round() as u32).max(2);
        let size = (side / 30.0).max(14.0).round();
        for b in boxes {
            let c = colour(b.colour);
            let [x0, y0, x1, y1] = b.bbox.map(|v| v.round() as i32);
            area.draw(&Rectangle::new([(x0, y0), (x1, y1)], c.stroke_width(stroke)))
                .map_err(|e| draw_err("a box", e))?;
            if b.label.is_empty() {
                continue;
            }
            let style = text_style(size, [255, 255, 255]);
            let (tw, _) = area.estimate_text_size(&b.label, &style).map_err(|e| draw_err("a label", e))?;
            // plotters puts the baseline at y + size/2 with ab_glyph; DejaVu's ascenders reach
            // 0.65 size above it and descenders 0.2 below: the ink spans y - 0.15 size to
            // y + 0.7 size.
            let (tw, ink) = (tw as i32, (0.86 * size).ceil() as i32);
            let pad = (size / 6.0).ceil() as i32;
            let band = ink + 2 * pad;
            let lift = (0.16 * size).round() as i32;
            // Above the box if it fits, else inside its top edge.
            let top = if y0 - band >= 0 { y0 - band } else { y0.max(0) };
            let left = x0.clamp(0, (w as i32 - tw - 2 * pad).max(0));
            area.draw(&Rectangle::new([(left, top), (left + tw + 2 * pad, top + band)], c.filled()))
                .map_err(|e| draw_err("a label", e))?;
            area.draw(&Text::new(b.label.clone(), (left + pad, top + pad + lift), style))
                .map_err(|e| draw_err("a label", e))?;
        }
        area.present().map_err(|e| draw_err("boxes", e))?;
    }
    Ok(RgbImage { width: w, height: h, data: px })
}

/// One line of a chart: its name in the legend, its colour, its points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Shown in the legend.
    pub name: String,
    /// Line colour.
    pub colour: Rgb,
    /// `(x, y)` points; non-finite `y` are skipped.
    pub points: Vec<(f64, f64)>,
}

/// One chart: a title, the x axis's name, its series; `percent` labels the y axis as
/// percentages of 1 (and puts the legend at the lower right, else the upper right).
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Above the chart.
    pub title: String,
    /// Under the x axis.
    pub x_label: String,
    /// y values are fractions shown as percentages.
    pub percent: bool,
    /// The lines.
    pub series: Vec<Series>,
}

/// `charts` side by side on a white `width x height` image: axes with ticks, a grid, a
/// legend per chart.
pub fn charts(width: usize, height: usize, charts: &[Chart]) -> Result<RgbImage> {
    font()?;
    let mut px = vec![255u8; width * height * 3];
    {
        let root = BitMapBackend::with_buffer(&mut px, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err("a chart", e))?;
        let panels = root.split_evenly((1, charts.len().max(1)));
        for (chart, panel) in charts.iter().zip(&panels) {
            draw_chart(panel, chart).map_err(|e| draw_err(&format!("the chart `{}`", chart.title), e))?;
        }
        root.present().map_err(|e| draw_err("a chart", e))?;
    }
    Ok(RgbImage { width, height, data: px })
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_chart(area: &Area, chart: &Chart) -> std::result::Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let finite = |s: &Series| s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    let lines: Vec<Vec<(f64, f64)>> = chart.series.iter().map(finite).collect();
    let all = lines.iter().flatten();
    let xmax = all.clone().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let (mut lo, mut hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-6 {
        hi = lo + 1e-3;
    }
    let pad = (hi - lo) * 0.05;
    let mut c = ChartBuilder::on(area)
        .caption(&chart.title, (FAMILY, 20).into_font())
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, (lo - pad)..(hi + pad))
        .map_err(|x| e(&x))?;
    let percent = chart.percent;
    let y_fmt = move |v: &f64| {
        if percent {
            format!("{:.0}%", v * 100.0)
        } else if v.abs() >= 10.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    };
    c.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_label_formatter(&y_fmt)
        .label_style((FAMILY, 14).into_font())
        .axis_desc_style((FAMILY, 15).into_font())
        .draw()
        .map_err(|x| e(&x))?;
    for (s, points) in chart.series.iter().zip(lines) {
        let col = colour(s.colour);
        c.draw_series(LineSeries::new(points.clone(), col.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(points.into_iter().map(|p| Circle::new(p, 3, col.filled()))).map_err(|x| e(&x))?;
    }
    c.configure_series_labels()
        // Losses fall and accuracies rise: the legend goes where the lines are not.
        .position(if chart.percent { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight })
        .label_font((FAMILY, 14).into_font())
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    Ok(())
}

/// Encodes `image` as PNG and writes it to `path` atomically.
pub fn write_png(image: &RgbImage, path: &Path) -> Result<()> {
    use image::ImageEncoder;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&image.data, image.width as u32, image.height as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Image { path: path.into(), detail: e.to_string() })?;
    crate::fsutil::write_atomic(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(w: usize, h: usize) -> RgbImage {
        RgbImage { width: w, height: h, data: vec![128; w * h * 3] }
    }

    fn px(im: &RgbImage, x: usize, y: usize) -> Rgb {
        let i = (y * im.width + x) * 3;
        [im.data[i], im.data[i + 1], im.data[i + 2]]
    }

    #[test]
    fn frames_and_labels_land_where_asked() {
        let im = blank(320, 240);
        let red = [214, 39, 40];
        let b = LabelledBox { bbox: [40.0, 80.0, 200.0, 220.0], colour: red, label: "person 0.90".into() };
        let out = boxes(&im, std::slice::from_ref(&b)).unwrap();
        // The frame: its left edge is red, the middle of the box untouched.
        assert_eq!(px(&out, 40, 150), red);
        assert_eq!(px(&out, 120, 150), [128; 3]);
        // The label band above the box (font 14 px: 3 px padding around 13 px of ink, rows
        // 61..80): red background with white (anti-aliased) glyph pixels, and no ink above it.
        let band: Vec<Rgb> =
            (61..79).flat_map(|y| (42..120).map(move |x| (x, y))).map(|(x, y)| px(&out, x, y)).collect();
        let white = band.iter().filter(|p| p.iter().all(|&v| v > 200)).count();
        let bg = band.iter().filter(|&&p| p == red).count();
        assert!(white > 40 && bg > 200, "white {white}, background {bg}");
        assert_eq!(px(&out, 41, 61), red);
        assert!(out.data[..61 * 320 * 3].iter().all(|&v| v == 128), "text spills above its band");
        // The ink keeps a margin inside the band: its first and last two rows are plain red.
        let ink: Vec<usize> = (61..80).filter(|&y| (41..100).any(|x| px(&out, x, y) != red)).collect();
        assert!(ink.first() >= Some(&63) && ink.last() <= Some(&77), "ink rows {ink:?}");
        // Different text, different pixels; no label, no band.
        let other = boxes(&im, &[LabelledBox { label: "cat 0.12".into(), ..b.clone() }]).unwrap();
        assert_ne!(other.data, out.data);
        let bare = boxes(&im, &[LabelledBox { label: String::new(), ..b }]).unwrap();
        assert_eq!(px(&bare, 60, 70), [128; 3]);
    }

    #[test]
    fn a_label_at_the_top_goes_inside_the_box() {
        let out = boxes(
            &blank(200, 100),
            &[LabelledBox { bbox: [0.0, 0.0, 150.0, 90.0], colour: [0, 0, 255], label: "x".into() }],
        )
        .unwrap();
        assert_eq!(px(&out, 1, 1), [0, 0, 255]);
    }

    #[test]
    fn charts_draw_text_and_lines() {
        let series =
            |c| Series { name: "train".into(), colour: c, points: vec![(0.5, 2.0), (1.0, 1.0), (2.0, f64::NAN)] };
        let chart = Chart {
            title: "loss".into(),
            x_label: "epoch".into(),
            percent: false,
            series: vec![series([31, 119, 180])],
        };
        let im =
            charts(640, 300, &[chart.clone(), Chart { title: "accuracy".into(), percent: true, ..chart }]).unwrap();
        assert_eq!((im.width, im.height), (640, 300));
        let blue = im.data.chunks_exact(3).filter(|p| p == &[31, 119, 180]).count();
        let dark = im.data.chunks_exact(3).filter(|p| p.iter().all(|&v| v < 80)).count();
        assert!(blue > 100 && dark > 500, "line pixels {blue}, text/axis pixels {dark}");
    }
}
