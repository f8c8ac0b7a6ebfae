//! SSD anchors: TensorFlow Object Detection API's multiple-grid anchor generator
//! (`ssd_anchor_generator` in a pipeline config), reproduced operation by operation in f32.
//!
//! Each feature map `k` of an `H_k x W_k` grid gets a list of box specs (scale, aspect ratio):
//! with `L` layers the scales are `s_k = min + (max - min) k / (L - 1)` (and `s_L = 1`); every
//! layer has one box per aspect ratio at `s_k` plus, when `interpolated_scale_aspect_ratio > 0`,
//! one at `sqrt(s_k s_{k+1})` with that ratio; with `reduce_boxes_in_lowest_layer` the first
//! layer has just (0.1, 1), (s_0, 2), (s_0, 0.5). The specs are computed in f64 and stored in
//! f32, as TF computes them in Python and bakes them into the graph.
//!
//! A box of scale `s` and ratio `r` is `s / sqrt(r)` high and `s sqrt(r)` wide (times the base
//! anchor size, scaled by `min(h, w) / h` and `min(h, w) / w` of the image). Centres are
//! `(i + 0.5) / H` (stride `1/H`, offset half a stride), corners centre -/+ half the size, in
//! normalised (ymin, xmin, ymax, xmax). Anchors are ordered by row, column, then spec, maps one
//! after another, and are not clipped (some extend past the image).

use crate::error::{Error, Result};

/// The generator's configuration (TF's `SsdAnchorGenerator` message). Its numbers are f32, as
/// in the pipeline config's protobuf: TF widens those f32 values to f64 for the spec
/// arithmetic, which decides the last bit of some scales (0.7211102, not 0.7211103).
#[derive(Clone, Debug, PartialEq)]
pub struct AnchorGenerator {
    /// Number of feature maps (6 for SSDLite).
    pub num_layers: usize,
    /// Scale of the first map's boxes, as a fraction of the image's shorter side.
    pub min_scale: f32,
    /// Scale of the last map's boxes.
    pub max_scale: f32,
    /// Width / height ratios of the boxes at each scale.
    pub aspect_ratios: Vec<f32>,
    /// Aspect ratio of the extra box at the interpolated scale; 0 for none.
    pub interpolated_scale_aspect_ratio: f32,
    /// Give the first map only (0.1, 1), (s_0, 2) and (s_0, 0.5).
    pub reduce_boxes_in_lowest_layer: bool,
    /// `[height, width]` of a scale-1 box, in units of the image's shorter side.
    pub base_anchor_size: [f64; 2],
}

impl Default for AnchorGenerator {
    /// `ssdlite_mobilenet_v2_coco.config`: 6 layers, scales 0.2 to 0.95, ratios 1, 2, 0.5, 3,
    /// 0.3333, the interpolated box at ratio 1, the reduced set on the first map.
    fn default() -> Self {
        AnchorGenerator {
            num_layers: 6,
            min_scale: 0.2,
            max_scale: 0.95,
            aspect_ratios: vec![1.0, 2.0, 0.5, 3.0, 0.3333],
            interpolated_scale_aspect_ratio: 1.0,
            reduce_boxes_in_lowest_layer: true,
            base_anchor_size: [1.0, 1.0],
        }
    }
}

/// One anchor shape: scale and aspect ratio (width / height), as f32 like the graph holds them.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxSpec {
    /// Scale, as a fraction of the base anchor size.
    pub scale: f32,
    /// Width / height.
    pub aspect_ratio: f32,
}

impl AnchorGenerator {
    /// The box specs of every layer.
    pub fn box_specs(&self) -> Vec<Vec<BoxSpec>> {
        let l = self.num_layers;
        let (lo, hi) = (f64::from(self.min_scale), f64::from(self.max_scale));
        let mut scales: Vec<f64> =
            (0..l).map(|i| if l > 1 { lo + (hi - lo) * i as f64 / (l - 1) as f64 } else { lo }).collect();
        scales.push(1.0);
        let spec = |s: f64, r: f64| BoxSpec { scale: s as f32, aspect_ratio: r as f32 };
        (0..l)
            .map(|k| {
                let s = scales[k];
                if k == 0 && self.reduce_boxes_in_lowest_layer {
                    return vec![spec(0.1, 1.0), spec(s, 2.0), spec(s, 0.5)];
                }
                let mut v: Vec<BoxSpec> = self.aspect_ratios.iter().map(|&r| spec(s, r.into())).collect();
                if self.interpolated_scale_aspect_ratio > 0.0 {
                    v.push(spec((s * scales[k + 1]).sqrt(), self.interpolated_scale_aspect_ratio.into()));
                }
                v
            })
            .collect()
    }
}

/// Anchors per location of each layer.
pub fn anchors_per_location(specs: &[Vec<BoxSpec>]) -> Vec<usize> {
    specs.iter().map(Vec::len).collect()
}

/// The anchors of feature maps with grids `grids[k] = (H_k, W_k)` for an `image_h x image_w`
/// input, in normalised (ymin, xmin, ymax, xmax).
pub fn generate(
    specs: &[Vec<BoxSpec>],
    grids: &[(usize, usize)],
    image_h: usize,
    image_w: usize,
    base: [f64; 2],
) -> Result<Vec<[f32; 4]>> {
    if specs.len() != grids.len() {
        return Err(Error::Input(format!("{} anchor layers for {} feature maps", specs.len(), grids.len())));
    }
    if image_h == 0 || image_w == 0 || grids.iter().any(|&(h, w)| h == 0 || w == 0) {
        return Err(Error::Input(format!("empty image ({image_h}x{image_w}) or feature map ({grids:?})")));
    }
    let (im_h, im_w) = (image_h as f32, image_w as f32);
    let min_im = im_h.min(im_w);
    let base_h = min_im / im_h * base[0] as f32;
    let base_w = min_im / im_w * base[1] as f32;
    let total: usize = specs.iter().zip(grids).map(|(s, &(h, w))| s.len() * h * w).sum();
    let mut out = Vec::with_capacity(total);
    for (layer, &(gh, gw)) in specs.iter().zip(grids) {
        let (stride_y, stride_x) = (1.0f32 / gh as f32, 1.0f32 / gw as f32);
        let (offset_y, offset_x) = (0.5f32 * stride_y, 0.5f32 * stride_x);
        let sizes: Vec<(f32, f32)> = layer
            .iter()
            .map(|b| {
                let r = b.aspect_ratio.sqrt();
                (b.scale / r * base_h, b.scale * r * base_w)
            })
            .collect();
        for y in 0..gh {
            let yc = y as f32 * stride_y + offset_y;
            for x in 0..gw {
                let xc = x as f32 * stride_x + offset_x;
                for &(h, w) in &sizes {
                    out.push([yc - 0.5 * h, xc - 0.5 * w, yc + 0.5 * h, xc + 0.5 * w]);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssdlite_specs_and_counts() {
        let specs = AnchorGenerator::default().box_specs();
        assert_eq!(anchors_per_location(&specs), vec![3, 6, 6, 6, 6, 6]);
        assert_eq!(specs[0][0], BoxSpec { scale: 0.1, aspect_ratio: 1.0 });
        assert_eq!(specs[0][2], BoxSpec { scale: 0.2, aspect_ratio: 0.5 });
        // The graph's `truediv_15/x`: 0.35 five times, then sqrt(0.35 * 0.5).
        assert_eq!(specs[1][0].scale, 0.35);
        assert_eq!(specs[1][5].scale, 0.418_33);
        assert_eq!(specs[5][5].scale, 0.974_679_4);
        assert_eq!(specs[3][5].scale, 0.721_110_2);
        assert_eq!(specs[1][4].aspect_ratio, 0.3333);
        let grids = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)];
        let a = generate(&specs, &grids, 300, 300, [1.0, 1.0]).unwrap();
        assert_eq!(a.len(), 1917);
        // The first anchor: centre 0.5/19, size 0.1, not clipped.
        let c = 0.5 / 19.0;
        for (got, want) in a[0].iter().zip([c - 0.05, c - 0.05, c + 0.05, c + 0.05]) {
            assert!((got - want).abs() < 1e-7, "{:?}", a[0]);
        }
        assert!(generate(&specs, &grids[..5], 300, 300, [1.0, 1.0]).is_err());
    }

    #[test]
    fn non_square_images_keep_boxes_square_in_pixels() {
        let specs = vec![vec![BoxSpec { scale: 0.5, aspect_ratio: 1.0 }]];
        let a = generate(&specs, &[(1, 1)], 200, 400, [1.0, 1.0]).unwrap();
        // 0.5 of the shorter side (100 px) each way: height 0.5 of 200, width 0.25 of 400.
        assert_eq!(a[0], [0.25, 0.375, 0.75, 0.625]);
    }
}
