//! Box decoding: TF Object Detection API's Faster R-CNN box coder, in f32 in TF's operation order.
//!
//! An encoding `(ty, tx, th, tw)` relative to an anchor of centre `(ya, xa)` and size
//! `(ha, wa)` decodes to the centre `(ty / sy * ha + ya, tx / sx * wa + xa)` and the size
//! `(exp(th / sh) ha, exp(tw / sw) wa)`, returned as corners (ymin, xmin, ymax, xmax), not
//! clipped. The SSD configs use scales `(sy, sx, sh, sw) = (10, 10, 5, 5)`.

/// The coder's scale factors `(y, x, h, w)`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxCoder {
    /// The factors `(sy, sx, sh, sw)` the encodings were multiplied by.
    pub scales: [f32; 4],
}

impl Default for BoxCoder {
    fn default() -> Self {
        BoxCoder { scales: [10.0, 10.0, 5.0, 5.0] }
    }
}

impl BoxCoder {
    /// Decodes one encoding against its anchor.
    pub fn decode(&self, anchor: [f32; 4], code: [f32; 4]) -> [f32; 4] {
        let [ymin, xmin, ymax, xmax] = anchor;
        let (ha, wa) = (ymax - ymin, xmax - xmin);
        let (yca, xca) = (ymin + ha / 2.0, xmin + wa / 2.0);
        let [sy, sx, sh, sw] = self.scales;
        let (ty, tx, th, tw) = (code[0] / sy, code[1] / sx, code[2] / sh, code[3] / sw);
        let w = tw.exp() * wa;
        let h = th.exp() * ha;
        let yc = ty * ha + yca;
        let xc = tx * wa + xca;
        [yc - h / 2.0, xc - w / 2.0, yc + h / 2.0, xc + w / 2.0]
    }

    /// Decodes all encodings (`codes.len() == 4 * anchors.len()`, anchor-major).
    pub fn decode_all(&self, anchors: &[[f32; 4]], codes: &[f32]) -> Vec<[f32; 4]> {
        assert_eq!(codes.len(), anchors.len() * 4, "one (ty, tx, th, tw) per anchor");
        anchors.iter().zip(codes.chunks_exact(4)).map(|(&a, c)| self.decode(a, [c[0], c[1], c[2], c[3]])).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_code_is_the_anchor_and_scales_apply() {
        let c = BoxCoder::default();
        let a = [0.1, 0.2, 0.5, 0.4];
        // A zero code gives the anchor back (to rounding: the centre is rebuilt from the corners).
        let d = c.decode(a, [0.0; 4]);
        assert!(d.iter().zip(a).all(|(x, y)| (x - y).abs() < 1e-7), "{d:?}");
        // ty = 10 moves the centre by one anchor height; th = 5 multiplies the height by e.
        let d = c.decode(a, [10.0, 0.0, 5.0, 0.0]);
        let h = 0.4 * std::f32::consts::E;
        assert!((d[0] - (0.7 - h / 2.0)).abs() < 1e-6 && (d[2] - (0.7 + h / 2.0)).abs() < 1e-6, "{d:?}");
        assert!((d[1] - 0.2).abs() < 1e-7 && (d[3] - 0.4).abs() < 1e-7);
    }
}
