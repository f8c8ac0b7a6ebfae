//! The int8 network: u8 activations, s8 per-channel weights, VNNI GEMMs, requantisation
//! fused into every kernel's epilogue (see `crate::quant` for the scheme).
//!
//! The stem quantises the image with the quantisation the file records
//! (`QuantSpec::input`) and sums u8 codes times int8 weights exactly
//! (`mnv2_kernels::stem::PackedStemQ`); a file without it (quantised before it was recorded)
//! runs the stem in f32 on the float image, with its weights on the int8 grid. Either way the
//! stem writes u8 ReLU6 rows; every later tensor is u8 until the last conv, whose ReLU6
//! outputs are pooled in f32; the pooled features are quantised once more for the int8
//! classifier, whose logits come out in f32. The depthwise convs sum u8 values times int8
//! weights exactly (`mnv2_kernels::dwconv`).

use mnv2_kernels::dwconv::{dwconv_rows_u8, DwRow, PackedDw};
use std::ops::Range;

use mnv2_kernels::qgemm::{qgemm, qgemm_panels, quantize_row, quantize_weights, PackedQGemm, QOut, QParams, QResidual};
use mnv2_kernels::stem::{stem_row_q, stem_row_u8, Image, PackedStem, PackedStemQ, StemGeom};
use mnv2_kernels::{Isa, MinMax, Tier};

use super::{check_structure, minmax, Net, RowSlots, TapAt};
use crate::error::{Error, Result};
use crate::fold::FoldedLayers;
use crate::plan::{Activation, ConvKind, Head, Plan, Role};
use crate::qscheme::QuantSpec;

/// Weights `[k][n]` rounded to the int8 grid of their output channel (`q * scale`).
fn int8_grid(w: &[f32], k: usize, n: usize) -> Vec<f32> {
    let (q, s) = quantize_weights(w, k, n);
    q.iter().enumerate().map(|(i, &v)| v as f32 * s[i % n]).collect()
}

struct Block {
    expand: Option<PackedQGemm>,
    dw: (PackedDw, MinMax),
    project: (PackedQGemm, MinMax),
    /// Quantisation of the expanded rows, the depthwise output, the block's input (for the
    /// residual) and its output.
    hidden: QParams,
    dw_out: QParams,
    input: QParams,
    output: QParams,
}

/// The stem: on u8 image codes, or in f32 on the float image.
enum Stem {
    Int8(PackedStemQ),
    F32(PackedStem, MinMax),
}

pub(crate) struct QNet {
    isa: Isa,
    /// The tier every kernel call runs on.
    tier: Tier,
    stem: Stem,
    /// The stem's output quantisation (the first block's expanded rows).
    stem_q: QParams,
    blocks: Vec<Block>,
    /// The last 1x1 conv (absent when the backbone ends with the last block, as DeepLab's).
    last: Option<(PackedQGemm, MinMax)>,
    pooled: QParams,
    /// Absent for detection and segmentation heads.
    classifier: Option<PackedQGemm>,
}

impl QNet {
    /// Quantises and packs the folded weights of `plan`'s layers (taking them out of `folded`).
    pub fn new(plan: &Plan, folded: &mut FoldedLayers, spec: &QuantSpec, isa: Isa) -> Result<QNet> {
        check_structure(plan)?;
        let tier =
            Tier::new(isa).ok_or_else(|| Error::Unsupported(format!("this CPU cannot run {} kernels", isa.name())))?;
        let unsupported = |what: &str| Err(Error::Unsupported(format!("the int8 engine does not run {what}")));
        let layers = &plan.layers;
        let relu6 = |i: usize| layers[i].conv().expect("conv").activation == Activation::Relu6;
        if !relu6(0) || plan.blocks.iter().any(|b| !relu6(b.depthwise) || b.expand.is_some_and(|e| !relu6(e))) {
            return unsupported("a network whose stem, expand and depthwise convs are not ReLU6");
        }
        if plan.blocks.iter().skip(1).any(|b| b.expand.is_none()) {
            return unsupported("blocks without an expand conv after the first (their depthwise input is signed)");
        }
        if layers.iter().any(|l| l.conv().is_some_and(|c| c.kind == ConvKind::Pointwise) && l.input.c % 4 != 0) {
            return unsupported("1x1 convolutions whose input channels are not a multiple of 4");
        }
        if spec.blocks.len() != plan.blocks.len() {
            return Err(Error::InvalidSpec(format!(
                "the quantisation has {} blocks, the network {}",
                spec.blocks.len(),
                plan.blocks.len()
            )));
        }
        let f = folded.take(0);
        let c0 = layers[0].output.c;
        let stem_q: QParams = spec.blocks[0].hidden.into();
        let relu6 = minmax(Activation::Relu6);
        let image_q = spec.input.map(QParams::from).filter(|q| (0..=255).contains(&q.zero) && q.scale > 0.0);
        let stem = match image_q {
            Some(q) => Stem::Int8(PackedStemQ::new(tier, &f.weights, c0, &f.bias, q, relu6, stem_q)),
            None => Stem::F32(PackedStem::new(tier, &int8_grid(&f.weights, 27, c0), c0, &f.bias), relu6),
        };
        let mut blocks = Vec::new();
        let mut input = stem_q;
        for (b, q) in plan.blocks.iter().zip(&spec.blocks) {
            let (hidden, dw_out, output): (QParams, QParams, QParams) = (q.hidden.into(), q.dw.into(), q.output.into());
            if hidden.zero != 0 || dw_out.zero != 0 {
                return unsupported("ReLU6 activations with a non-zero zero point");
            }
            let expand = b.expand.map(|i| {
                let f = folded.take(i);
                PackedQGemm::new(tier, &f.weights, b.input.c, b.hidden, &f.bias, input)
            });
            let f = folded.take(b.depthwise);
            let dw = (PackedDw::quantized(tier, &f.weights, b.hidden, &f.bias, hidden), minmax(Activation::Relu6));
            let proj = &layers[b.project];
            let f = folded.take(b.project);
            let act = minmax(proj.conv().expect("project").activation);
            let project = (PackedQGemm::new(tier, &f.weights, b.hidden, b.output.c, &f.bias, dw_out), act);
            blocks.push(Block { expand, dw, project, hidden, dw_out, input, output });
            input = output;
        }
        let last_conv = plan.last_conv;
        let last = (layers[last_conv].role == Role::LastConv).then(|| {
            let f = folded.take(last_conv);
            let (l_in, l_out) = (layers[last_conv].input.c, layers[last_conv].output.c);
            (PackedQGemm::new(tier, &f.weights, l_in, l_out, &f.bias, input), minmax(Activation::Relu6))
        });
        let pooled: QParams = spec.pooled.into();
        // A detection or segmentation head runs in f32 on the taps (`super::head`).
        let classifier = match plan.head {
            Head::Classifier(h) => {
                let (cls_layer, cls) = (h.classifier, folded.take(h.classifier));
                let (c_in, c_out) = (layers[cls_layer].input.c, layers[cls_layer].output.c);
                Some(PackedQGemm::new(tier, &cls.weights, c_in, c_out, &cls.bias, pooled))
            }
            _ => None,
        };
        let isa = blocks.last().map_or(isa, |b| b.project.0.isa());
        Ok(QNet { isa, tier, stem, stem_q, blocks, last, pooled, classifier })
    }

    fn last(&self) -> &(PackedQGemm, MinMax) {
        self.last.as_ref().expect("the schedule runs the last conv only when the network has one")
    }

    fn classifier(&self) -> &PackedQGemm {
        self.classifier.as_ref().expect("the schedule classifies only with a classification head")
    }
}

/// u8 codes, one per slot.
impl RowSlots for QNet {}

impl Net for QNet {
    type T = u8;
    const POOLS_IN_EPILOGUE: bool = true;

    /// Bands of 512 pixels (5 rows of the 112-wide map, a fifth of the GEMM calls of 64-pixel
    /// ones; u8 rows keep the working set in L2). Network, Zen 5, 4 alternating rounds: 0.955x
    /// / 0.969x at 1 / 2 threads (1024: 0.974x / 0.964x).
    fn band_pixels(&self) -> usize {
        512
    }

    fn isa(&self) -> Isa {
        self.isa
    }

    fn kernel_names(&self) -> Vec<&'static str> {
        let mut v = vec![match &self.stem {
            Stem::Int8(p) => p.kernel_name(),
            Stem::F32(p, _) => p.kernel_name(),
        }];
        v.extend(self.last.as_ref().map(|l| l.0.kernel_name()));
        v.extend(self.classifier.as_ref().map(|c| c.kernel_name()));
        for b in &self.blocks {
            if let Some(e) = &b.expand {
                v.push(e.kernel_name());
            }
            v.push(b.dw.0.kernel_name());
            v.push(b.project.0.kernel_name());
        }
        v
    }

    fn stem_row(&self, img: Image, oy: usize, g: StemGeom, out: &mut [u8]) {
        match &self.stem {
            Stem::Int8(p) => stem_row_q(p, img, oy, g, out),
            Stem::F32(p, act) => stem_row_u8(p, img, oy, g, *act, self.stem_q, out),
        }
    }

    fn dw_staging(&self, k: usize, g: DwRow) -> usize {
        self.blocks[k].dw.0.staging_bytes(g)
    }

    fn stem_staging(&self, g: StemGeom) -> usize {
        match &self.stem {
            Stem::Int8(p) => p.staging_bytes(g),
            Stem::F32(p, _) => p.staging_bytes(g),
        }
    }

    fn expand(&self, k: usize, _g: DwRow, m: usize, a: &[u8], lda: usize, out: &mut [u8], ldc: usize) {
        let b = &self.blocks[k];
        let w = b.expand.as_ref().expect("block has an expand conv");
        qgemm(m, a, lda, w, QOut::U8 { c: out, ldc, q: b.hidden }, MinMax::RELU6, None);
    }

    fn dw_rows(&self, k: usize, rows: &[[Option<&[u8]>; 3]], g: DwRow, out: &mut [u8]) {
        let b = &self.blocks[k];
        dwconv_rows_u8(&b.dw.0, rows, g, b.dw.1, out, b.dw_out);
    }

    fn project(
        &self,
        k: usize,
        m: usize,
        a: &[u8],
        lda: usize,
        out: &mut [u8],
        ldc: usize,
        res: Option<(&[u8], usize)>,
    ) {
        let b = &self.blocks[k];
        let residual = res.map(|(r, ldr)| QResidual { r, ldr, q: b.input });
        qgemm(m, a, lda, &b.project.0, QOut::U8 { c: out, ldc, q: b.output }, b.project.1, residual);
    }

    fn last_rows(&self, m: usize, a: &[u8], lda: usize, pooled: &mut [f32], _: &mut [f32]) {
        let (w, act) = self.last();
        qgemm(m, a, lda, w, QOut::Pool { sums: pooled }, *act, None);
    }

    fn classify(&self, pooled: &[f32], out: &mut [f32], panels: Range<usize>) {
        let mut q = vec![0u8; pooled.len()];
        quantize_row(self.tier, pooled, &mut q, self.pooled);
        let c = self.classifier();
        let o = QOut::F32 { c: out, ldc: c.n };
        qgemm_panels(1, &q, q.len(), c, o, MinMax::NONE, None, panels);
    }

    fn classifier_panels(&self) -> (usize, usize) {
        (self.classifier().panels(), self.classifier().nr)
    }

    fn last_conv_rows(&self, m: usize, a: &[u8], lda: usize, out: &mut [f32], ldc: usize) {
        let (w, act) = self.last();
        qgemm(m, a, lda, w, QOut::F32 { c: out, ldc }, *act, None);
    }

    fn tap_values(&self, tap: TapAt, src: &[u8], dst: &mut [f32]) {
        let q = match tap {
            TapAt::Expansion(k) => self.blocks[k].hidden,
            TapAt::Block(k) => self.blocks[k].output,
            TapAt::LastConv => unreachable!("the last conv writes real values (`last_conv_rows`)"),
        };
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = (v as i32 - q.zero) as f32 * q.scale;
        }
    }
}
