//! The f32 network: BatchNorm folded, weights packed for the f32 kernels of one ISA; with
//! `bf16`, its 1x1 convolutions (expand, project, last conv, classifier) run on the bf16 GEMM
//! kernels instead, and the stem on the bf16 stem kernel. Block inputs and outputs stay f32
//! (the residual sums too); the depthwise outputs the projection reads are bf16, and so are
//! the expanded rows of blocks with an expand conv that no head taps: in pixel pairs where
//! the depthwise geometry allows (`Block::dw_pairs`, bf16 products), else at stride 2 as
//! plain rows whose depthwise conv sums in f32 (`Block::bf16_hidden`). The stem writes the
//! rows of a first block it feeds directly in pixel pairs too where that block's geometry
//! allows, else in f32.

use mnv2_kernels::bf16gemm::{as_bf16, as_bf16_mut, Bf16};
use mnv2_kernels::dwconv::{
    dwconv_rows, dwconv_rows_bf16, dwconv_rows_bf16_in, dwconv_rows_bf16_pairs, DwRow, PackedDw, MAX_ROWS,
};
use std::ops::Range;

use mnv2_kernels::stem::{stem_row, stem_row_bf16_pairs, Image, PackedStem, StemGeom};
use mnv2_kernels::{Isa, MinMax, Tier};

use super::pw::PackedPw;
use super::{check_structure, head_taps, minmax, Net, RowSlots, TapAt};
use crate::error::{Error, Result};
use crate::fold::FoldedLayers;
use crate::plan::{Head, Plan, Role};

struct Block {
    expand: Option<(PackedPw, MinMax)>,
    dw: (PackedDw, MinMax),
    project: (PackedPw, MinMax),
    /// bf16: the depthwise conv rounds its output rows to bf16 as it stores them, and the
    /// projection reads those (half the bytes, no rounding pass in the GEMM); the band rows
    /// then hold bf16 values, two per f32 slot. Needs an even hidden width.
    bf16_band: bool,
    /// bf16: the expand conv rounds its rows to bf16 as it stores them and the depthwise conv
    /// reads those (half the bytes through the ring), two per f32 slot as the band's, where
    /// the rows cannot be pixel pairs (`dw_pairs`) at an input size. Blocks with an expand
    /// conv, an even hidden width and stride 2, whose expanded tensor no head taps. At stride
    /// 2 the depthwise conv is bound by the bytes it reads (the 112 -> 56 block's 10% faster
    /// on Zen 5); at stride 1 it is bound by its arithmetic, and widening bf16 rows cost more
    /// than the bytes saved (5-13% slower).
    bf16_hidden: bool,
    /// bf16: the depthwise weights for expanded rows in pixel pairs (bf16 weights,
    /// `dwconv_rows_bf16_pairs`), which the expand conv (or, for the first block, the stem)
    /// then writes, at input sizes whose depthwise rows [`DwRow::reads_pairs`]. Blocks as
    /// `bf16_hidden`'s, of any stride, and the first block when the stem feeds it directly,
    /// with the depthwise padding and dilation of torchvision's network.
    dw_pairs: Option<PackedDw>,
}

/// How a block's expanded rows are held.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HiddenRows {
    F32,
    Bf16,
    /// bf16 in pixel pairs.
    Pairs,
}

pub(crate) struct F32Net {
    isa: Isa,
    stem: (PackedStem, MinMax),
    blocks: Vec<Block>,
    /// The last 1x1 conv (absent when the backbone ends with the last block, as DeepLab's).
    last: Option<(PackedPw, MinMax)>,
    /// Absent for detection and segmentation heads (`super::head::HeadNet` runs those).
    classifier: Option<PackedPw>,
    /// bf16 products (see [`Net::splits_by_pixels`]).
    bf16: bool,
}

impl F32Net {
    /// Packs the folded weights of `plan`'s layers (taking them out of `folded`).
    pub fn new(plan: &Plan, folded: &mut FoldedLayers, isa: Isa, bf16: bool) -> Result<F32Net> {
        check_structure(plan)?;
        let tier =
            Tier::new(isa).ok_or_else(|| Error::Unsupported(format!("this CPU cannot run {} kernels", isa.name())))?;
        let layers = &plan.layers;
        let act = |i: usize| minmax(layers[i].conv().expect("conv layer").activation);
        let f = folded.take(0);
        let c0 = layers[0].output.c;
        let stem = if bf16 {
            PackedStem::bf16(tier, &f.weights, c0, &f.bias)
        } else {
            PackedStem::new(tier, &f.weights, c0, &f.bias)
        };
        let stem = (stem, act(0));
        let tapped: Vec<usize> = head_taps(plan)?
            .into_iter()
            .filter_map(|t| if let TapAt::Expansion(k) = t.1 { Some(k) } else { None })
            .collect();
        let mut blocks = Vec::new();
        for (k, b) in plan.blocks.iter().enumerate() {
            let expand = b.expand.map(|i| {
                let f = folded.take(i);
                (PackedPw::new(tier, bf16, &f.weights, b.input.c, b.hidden, &f.bias), act(i))
            });
            let f = folded.take(b.depthwise);
            let bf16_band = bf16 && b.hidden.is_multiple_of(2);
            let packs_rows = bf16_band && expand.is_some() && !tapped.contains(&k);
            let bf16_hidden = packs_rows && b.stride == 2;
            // The stem writes the first block's rows in pairs as an expand conv would.
            let stem_pairs = bf16_band && k == 0 && plan.stem_feeds_first_block() && !tapped.contains(&k);
            let dwc = layers[b.depthwise].conv().expect("depthwise");
            let dw_pairs = ((packs_rows || stem_pairs) && dwc.dilation == 1 && dwc.pad.left == 1)
                .then(|| PackedDw::bf16_pairs(tier, &f.weights, b.hidden, &f.bias));
            let dw = if bf16_hidden {
                PackedDw::bf16_rows(tier, &f.weights, b.hidden, &f.bias)
            } else if bf16_band {
                PackedDw::bf16_out(tier, &f.weights, b.hidden, &f.bias)
            } else {
                PackedDw::new(tier, &f.weights, b.hidden, &f.bias)
            };
            let dw = (dw, act(b.depthwise));
            let f = folded.take(b.project);
            let project = (PackedPw::new(tier, bf16, &f.weights, b.hidden, b.output.c, &f.bias), act(b.project));
            blocks.push(Block { expand, dw, project, bf16_band, bf16_hidden, dw_pairs });
        }
        let last_conv = plan.last_conv;
        let last = (layers[last_conv].role == Role::LastConv).then(|| {
            let f = folded.take(last_conv);
            let (l_in, l_out) = (layers[last_conv].input.c, layers[last_conv].output.c);
            (PackedPw::new(tier, bf16, &f.weights, l_in, l_out, &f.bias), act(last_conv))
        });
        let classifier = match plan.head {
            Head::Classifier(h) => {
                let (cls, f) = (h.classifier, folded.take(h.classifier));
                Some(PackedPw::new(tier, bf16, &f.weights, layers[cls].input.c, layers[cls].output.c, &f.bias))
            }
            _ => None,
        };
        Ok(F32Net { isa, stem, blocks, last, classifier, bf16 })
    }

    fn last(&self) -> &(PackedPw, MinMax) {
        self.last.as_ref().expect("the schedule runs the last conv only when the network has one")
    }

    fn classifier(&self) -> &PackedPw {
        self.classifier.as_ref().expect("the schedule classifies only with a classification head")
    }

    /// How block `k` holds its expanded rows for depthwise rows of geometry `g`.
    fn hidden_rows(&self, k: usize, g: DwRow) -> HiddenRows {
        let b = &self.blocks[k];
        if b.dw_pairs.is_some() && g.reads_pairs() {
            HiddenRows::Pairs
        } else if b.bf16_hidden {
            HiddenRows::Bf16
        } else {
            HiddenRows::F32
        }
    }
}

impl RowSlots for F32Net {
    fn hidden_row(&self, k: usize, g: DwRow, len: usize) -> usize {
        match self.hidden_rows(k, g) {
            HiddenRows::F32 => len,
            HiddenRows::Bf16 | HiddenRows::Pairs => len / 2,
        }
    }

    fn band_row(&self, k: usize, len: usize) -> usize {
        if self.blocks[k].bf16_band {
            len / 2
        } else {
            len
        }
    }
}

impl Net for F32Net {
    type T = f32;
    const POOLS_IN_EPILOGUE: bool = false;

    fn isa(&self) -> Isa {
        self.isa
    }

    fn kernel_names(&self) -> Vec<&'static str> {
        let mut v = vec![self.stem.0.kernel_name()];
        v.extend(self.last.as_ref().map(|l| l.0.kernel_name()));
        for b in &self.blocks {
            if let Some((e, _)) = &b.expand {
                v.push(e.kernel_name());
            }
            v.push(b.dw.0.kernel_name());
            v.extend(b.dw_pairs.as_ref().map(|p| p.kernel_name()));
            v.push(b.project.0.kernel_name());
        }
        v
    }

    fn stem_row(&self, img: Image, oy: usize, g: StemGeom, out: &mut [f32]) {
        stem_row(&self.stem.0, img, oy, g, self.stem.1, out);
    }

    fn stem_hidden_row(&self, dw: DwRow, img: Image, oy: usize, g: StemGeom, out: &mut [f32]) {
        if self.hidden_rows(0, dw) == HiddenRows::Pairs {
            stem_row_bf16_pairs(&self.stem.0, img, oy, g, self.stem.1, as_bf16_mut(out));
        } else {
            self.stem_row(img, oy, g, out);
        }
    }

    fn stem_staging(&self, g: StemGeom) -> usize {
        self.stem.0.staging_bytes(g)
    }

    fn dw_staging(&self, k: usize, g: DwRow) -> usize {
        self.blocks[k].dw.0.staging_bytes(g)
    }

    fn expand(&self, k: usize, g: DwRow, m: usize, a: &[f32], lda: usize, out: &mut [f32], ldc: usize) {
        let (w, act) = self.blocks[k].expand.as_ref().expect("block has an expand conv");
        match self.hidden_rows(k, g) {
            HiddenRows::F32 => w.gemm(m, a, lda, out, ldc, *act, None),
            HiddenRows::Bf16 => w.gemm_to_bf16(m, a, lda, as_bf16_mut(out), ldc, *act, false),
            // Whole rows of an even width: each pair lies in one row.
            HiddenRows::Pairs => w.gemm_to_bf16(m, a, lda, as_bf16_mut(out), ldc, *act, true),
        }
    }

    /// fp32 only: on 2 threads (Zen 4) the 7x7 blocks by pixels took 3.36 ms against 3.51
    /// by rows (median of 10 alternating runs); bf16 and int8 showed no gain (int8 also not
    /// with its expanded pixels held as u8 codes: 1.527 against 1.517 ms).
    fn splits_by_pixels(&self) -> bool {
        !self.bf16
    }

    /// bf16: bands of 512 pixels (5 rows of the 112-wide map: a fifth of the GEMM calls of
    /// 64-pixel ones; the 112 -> 56 block's expanded rows then take 470 KB, in L2).
    /// Network, Zen 5, 4 alternating rounds: 0.989x / 0.973x at 1 / 2 threads (1024: 0.982x /
    /// 0.988x). f32 rows are twice the bytes: 512 gave fp32 1.000x / 1.013x, 1024 1.037x.
    fn band_pixels(&self) -> usize {
        if self.bf16 {
            512
        } else {
            super::schedule::BAND_PIXELS
        }
    }

    fn dw_rows(&self, k: usize, rows: &[[Option<&[f32]>; 3]], g: DwRow, mut out: &mut [f32]) {
        let b = &self.blocks[k];
        let (w, act) = &b.dw;
        let hidden = self.hidden_rows(k, g);
        if hidden != HiddenRows::F32 {
            // The expanded rows hold bf16 values (two per f32 slot): viewed as such, a kernel
            // call's worth at a time; each output row takes `band_row` slots.
            let mut rows16: [[Option<&[Bf16]>; 3]; MAX_ROWS] = [[None; 3]; MAX_ROWS];
            for chunk in rows.chunks(MAX_ROWS) {
                for (r16, r) in rows16.iter_mut().zip(chunk) {
                    *r16 = r.map(|r| r.map(as_bf16));
                }
                let (n, len) = (chunk.len(), self.band_row(k, g.w_out * w.c));
                let (head, rest) = std::mem::take(&mut out).split_at_mut(n * len);
                match (hidden, &b.dw_pairs) {
                    (HiddenRows::Pairs, Some(p)) => dwconv_rows_bf16_pairs(p, &rows16[..n], g, *act, as_bf16_mut(head)),
                    _ => dwconv_rows_bf16_in(w, &rows16[..n], g, *act, as_bf16_mut(head)),
                }
                out = rest;
            }
        } else if b.bf16_band {
            dwconv_rows_bf16(w, rows, g, *act, as_bf16_mut(out));
        } else {
            dwconv_rows(w, rows, g, *act, out);
        }
    }

    fn project(
        &self,
        k: usize,
        m: usize,
        a: &[f32],
        lda: usize,
        out: &mut [f32],
        ldc: usize,
        res: Option<(&[f32], usize)>,
    ) {
        let b = &self.blocks[k];
        let (w, act) = &b.project;
        if b.bf16_band {
            w.gemm_bf16_rows(m, as_bf16(a), lda, out, ldc, *act, res);
        } else {
            w.gemm(m, a, lda, out, ldc, *act, res);
        }
    }

    fn last_rows(&self, m: usize, a: &[f32], lda: usize, pooled: &mut [f32], scratch: &mut [f32]) {
        let (w, act) = self.last();
        let c = w.n();
        let dst = &mut scratch[..m * c];
        w.gemm(m, a, lda, dst, c, *act, None);
        for row in dst.chunks_exact(c) {
            for (p, v) in pooled.iter_mut().zip(row) {
                *p += v;
            }
        }
    }

    fn classify(&self, pooled: &[f32], out: &mut [f32], panels: Range<usize>) {
        let c = self.classifier();
        c.gemm_panels(1, pooled, pooled.len(), out, c.n(), MinMax::NONE, None, panels);
    }

    fn classifier_panels(&self) -> (usize, usize) {
        (self.classifier().panels(), self.classifier().nr())
    }

    fn last_conv_rows(&self, m: usize, a: &[f32], lda: usize, out: &mut [f32], ldc: usize) {
        let (w, act) = self.last();
        w.gemm(m, a, lda, out, ldc, *act, None);
    }

    fn tap_values(&self, _: TapAt, src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}
