//! The stem: a dense 3x3 stride-2 convolution from the 3 image channels, one output row per
//! call, reading the image in NCHW (as PyTorch and `.npy` inputs hold it) or NHWC without a
//! transposing pass. Fused epilogue: bias, clamp.
//!
//! Kernels: `stem_f32_minmax_3x3s2_avx512` (8 pixels x up to 48 output channels in
//! registers; weights `[27][c_pad]` from L1), `stem_f32_minmax_3x3s2_avx2` (2 to 8 pixels x
//! up to 48 channels in ymm, the same sums bit for bit) and a portable twin; for bf16 networks
//! `stem_bf16_minmax_3x3s2_avx512bf16` (the window rows rounded to padded bf16 rows, 5 pairs
//! of taps per window row in `vdpbf16ps`) and its own twin; for int8 networks whose
//! quantisation records the image's, `stem_u8s8s32_requant_3x3s2_avx512vnni` (u8 image codes
//! times s8 weights, nine `vpdpbusd` per 16 outputs and pixel: [`PackedStemQ`]),
//! `stem_u8s8s32_requant_3x3s2_avx2` (i16 codes and weights, 14 `vpmaddwd` per 8 outputs and
//! pixel) and their twin.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512bf16;
#[cfg(target_arch = "x86_64")]
mod avx512vnni;
mod int8;
mod scalar;

#[cfg(test)]
use int8::image_code;
pub use int8::{stem_row_q, PackedStemQ, StemQKernel, KERNELS_INT8};

use crate::bf16gemm::{f32_to_bf16, Bf16};
use crate::isa::{Isa, Needs, Tier};
use crate::qgemm::QParams;
use crate::taps::PackedTaps;
use crate::MinMax;

/// Memory layout of a 3-channel image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Planar: channel, row, column.
    Nchw,
    /// Interleaved: row, column, channel.
    Nhwc,
}

/// One image: `3 * h * w` values.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// How `data` is laid out.
    pub layout: Layout,
}

impl Image<'_> {
    /// (channel stride, row stride, pixel stride).
    pub(crate) fn strides(&self) -> (usize, usize, usize) {
        match self.layout {
            Layout::Nchw => (self.h * self.w, self.w, 1),
            Layout::Nhwc => (1, self.w * 3, 3),
        }
    }
}

/// One stem kernel: its name (the identity of the code), what it needs, the widest layer it
/// serves, its code.
#[derive(Debug)]
pub struct StemKernel {
    /// The kernel's name, as profiles and `mnv2 bench` print it.
    pub name: &'static str,
    /// What the CPU must have.
    pub needs: Needs,
    /// Most output channels the kernel holds in registers.
    pub max_c: usize,
    /// bf16 products: the weights are packed as pairs of taps (see [`PackedStem`]).
    pub bf16: bool,
    /// # Safety
    /// The arguments are valid for the packing, and the CPU has `needs`.
    run: unsafe fn(&Args, &PackedStem),
    /// Bytes the kernel stages per thread for one output row of a geometry (see
    /// [`PackedStem::staging_bytes`]).
    staging: fn(StemGeom) -> usize,
}

/// Every stem kernel built for this target, best first. Stems wider than 48 channels run the
/// scalar twin, and its name says so.
pub static KERNELS: &[StemKernel] = &[
    #[cfg(target_arch = "x86_64")]
    StemKernel {
        name: "stem_f32_minmax_3x3s2_avx512",
        needs: Needs::Avx512,
        max_c: 48,
        bf16: false,
        run: avx512::row,
        staging: no_staging,
    },
    #[cfg(target_arch = "x86_64")]
    StemKernel {
        name: "stem_f32_minmax_3x3s2_avx2",
        needs: Needs::Avx2,
        max_c: 48,
        bf16: false,
        run: avx2::row,
        staging: no_staging,
    },
    StemKernel {
        name: "stem_f32_minmax_3x3s2_scalar",
        needs: Needs::Scalar,
        max_c: usize::MAX,
        bf16: false,
        run: scalar::row,
        staging: no_staging,
    },
];

/// Every bf16 stem kernel, best first: image and weights rounded to bf16 (to nearest even),
/// products exact, summed in f32 from the bias in `vdpbf16ps` order over the pairs of taps of
/// each window row (`(kx, ci)` = (0,0)+(0,1), (0,2)+(1,0), (1,1)+(1,2), (2,0)+(2,1), (2,2)
/// alone). The AVX-512 one runs only while [`crate::isa::bf16_enabled`], as the bf16 GEMMs.
pub static KERNELS_BF16: &[StemKernel] = &[
    #[cfg(target_arch = "x86_64")]
    StemKernel {
        name: "stem_bf16_minmax_3x3s2_avx512bf16",
        needs: Needs::Avx512Bf16,
        max_c: 48,
        bf16: true,
        run: avx512bf16::row,
        staging: avx512bf16::staging_bytes,
    },
    StemKernel {
        name: "stem_bf16_minmax_3x3s2_scalar",
        needs: Needs::Scalar,
        max_c: usize::MAX,
        bf16: true,
        run: scalar::row_bf16,
        staging: scalar::staging_bytes_bf16,
    },
];

/// Values of one padded bf16 window row (a bf16 kernel's scratch): the columns the output row
/// reads, 3 channels each, and one more (the partner of the 9th tap's pair).
pub(crate) fn bf16_row_len(g: StemGeom) -> usize {
    (g.w_out.saturating_sub(1) * g.stride + 3) * 3 + 1
}

fn no_staging(_: StemGeom) -> usize {
    0
}

/// The best kernel of a stem `registry` ([`KERNELS`], [`KERNELS_BF16`]) for `tier` that holds
/// `c` outputs ([`crate::isa::Needs::selectable`]).
fn best(registry: &'static [StemKernel], tier: Tier, c: usize) -> &'static StemKernel {
    registry.iter().find(|k| k.needs.selectable(tier) && c <= k.max_c).expect("the scalar kernel serves every width")
}

/// Stem weights `[ky][kx][ci][co]` packed as `[27][c_pad]` with bias, for one kernel; for a
/// bf16 kernel, the first `15 * c_pad` values hold `[ky][pair][c_pad]` words of two bf16
/// weights (the pair's first tap in the low half), as f32 bit patterns.
pub type PackedStem = PackedTaps<StemKernel, 27>;

impl PackedStem {
    /// `weights` are HWIO `[3][3][3][c]`: for the best kernel of `tier` that holds `c` outputs.
    pub fn new(tier: Tier, weights: &[f32], c: usize, bias: &[f32]) -> PackedStem {
        PackedStem::for_kernel(tier, best(KERNELS, tier, c), weights, c, bias)
    }

    /// Packs for `kernel`, which `tier` must grant and which must hold `c` outputs.
    pub fn for_kernel(tier: Tier, kernel: &'static StemKernel, weights: &[f32], c: usize, bias: &[f32]) -> PackedStem {
        kernel.needs.assert_granted(kernel.name, tier);
        assert!(c <= kernel.max_c, "{} holds at most {} outputs, not {c}", kernel.name, kernel.max_c);
        let mut p = PackedTaps::pack(kernel, weights, c, bias);
        if kernel.bf16 {
            let f32s = p.weights.clone();
            let (w, c_pad) = (&mut p.weights, p.c_pad);
            w.fill(0.0);
            for ky in 0..3 {
                for q in 0..5 {
                    for co in 0..c {
                        let tap = |j: usize| if j < 9 { f32_to_bf16(f32s[(ky * 9 + j) * c_pad + co]) } else { 0 };
                        let word = tap(2 * q) as u32 | (tap(2 * q + 1) as u32) << 16;
                        w[(ky * 5 + q) * c_pad + co] = f32::from_bits(word);
                    }
                }
            }
        }
        p
    }

    /// For the bf16 stem ([`KERNELS_BF16`]): the best kernel of `tier` that holds `c` outputs
    /// (the AVX-512 BF16 one only while [`crate::isa::bf16_enabled`]).
    pub fn bf16(tier: Tier, weights: &[f32], c: usize, bias: &[f32]) -> PackedStem {
        PackedStem::for_kernel(tier, best(KERNELS_BF16, tier, c), weights, c, bias)
    }

    /// Name of the kernel this packing is for.
    pub fn kernel_name(&self) -> &'static str {
        self.kernel.name
    }

    /// Bytes the kernel keeps per thread, outside the caller's buffers, to compute rows of
    /// geometry `g` (the bf16 kernels' rounded window rows; 0 for f32), for the engine's
    /// activation accounting.
    pub fn staging_bytes(&self, g: StemGeom) -> usize {
        (self.kernel.staging)(g)
    }

    /// The tier of the kernel this packing is for.
    pub fn isa(&self) -> Isa {
        self.kernel.needs.tier()
    }
}

/// Geometry of the stem's output rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StemGeom {
    /// Output width.
    pub w_out: usize,
    /// Stride along both axes.
    pub stride: usize,
    /// Zero rows above the image.
    pub pad_top: usize,
    /// Zero columns left of the image.
    pub pad_left: usize,
}

pub(crate) struct Args<'a> {
    pub img: Image<'a>,
    pub oy: usize,
    pub g: StemGeom,
    pub act: MinMax,
    pub out: Dst,
}

/// Where a stem kernel stores its output row.
#[derive(Clone, Copy)]
pub(crate) enum Dst {
    /// The values.
    F32(*mut f32),
    /// Their u8 codes of a quantisation (`QParams::quantize`: round half to even, the zero
    /// point, saturated to 0..=255).
    U8(*mut u8, QParams),
    /// bf16 (to nearest even) in pixel pairs of `c` channels each: channel `co` of pixels
    /// `2q` and `2q + 1` at `2q * c + 2 * co` and the word after (the bf16 kernels only).
    Bf16Pairs(*mut Bf16, usize),
}

impl Dst {
    /// Stores value `y` of output element `i` (the scalar twins).
    ///
    /// # Safety
    /// Element `i` lies in the row `stem_row` checked.
    #[inline(always)]
    pub unsafe fn put(self, i: usize, y: f32) {
        match self {
            Dst::F32(p) => *p.add(i) = y,
            Dst::U8(p, q) => *p.add(i) = q.quantize(y),
            Dst::Bf16Pairs(..) => self.put_bits(i, f32_to_bf16(y)),
        }
    }

    /// Stores the bf16 bits `b` of output element `i` in pixel pairs (the bf16 twin's clamp
    /// in bits; `Dst::Bf16Pairs` only).
    ///
    /// # Safety
    /// As [`Dst::put`].
    #[inline(always)]
    pub unsafe fn put_bits(self, i: usize, b: u16) {
        let Dst::Bf16Pairs(p, c) = self else { unreachable!("bf16 bits go to pixel pairs only") };
        let (x, co) = (i / c, i % c);
        *p.add((x & !1) * c + 2 * co + (x & 1)) = Bf16(b)
    }
}

/// Output row `oy` (`g.w_out * p.c` values, NHWC).
pub fn stem_row(p: &PackedStem, img: Image, oy: usize, g: StemGeom, act: MinMax, out: &mut [f32]) {
    assert!(out.len() >= g.w_out * p.c, "output row too short");
    run_row(p, img, oy, g, act, Dst::F32(out.as_mut_ptr()))
}

/// [`stem_row`] quantised in the kernel's epilogue: `out` holds the u8 codes of `q`, the same
/// as [`crate::qgemm::quantize_row`] of [`stem_row`]'s output (the int8 network's first
/// expanded rows), without a second pass over the row.
pub fn stem_row_u8(p: &PackedStem, img: Image, oy: usize, g: StemGeom, act: MinMax, q: QParams, out: &mut [u8]) {
    assert!(out.len() >= g.w_out * p.c, "output row too short");
    run_row(p, img, oy, g, act, Dst::U8(out.as_mut_ptr(), q))
}

/// [`stem_row`] rounded to bf16 in the kernel's epilogue and stored in pixel pairs (as
/// `dwconv_rows_bf16_pairs` reads them, and the bf16 expand GEMM writes them): channel `co`
/// of pixels `2q` and `2q + 1` at `2q * c + 2 * co` and the word after. The packing must be a
/// bf16 one ([`PackedStem::bf16`]) and the output width even. Clamped as the GEMM's pairs
/// are (`gemm_bf16_to_bf16_pairs`): where both bounds are non-negative (ReLU6, ReLU), in bf16
/// bits after the rounding, which gives [`stem_row`]'s values rounded for every sum but a
/// NaN (which ends at the upper bound, not the lower one).
pub fn stem_row_bf16_pairs(p: &PackedStem, img: Image, oy: usize, g: StemGeom, act: MinMax, out: &mut [Bf16]) {
    assert!(p.kernel.bf16, "{} stores f32 rows, not bf16 pixel pairs", p.kernel.name);
    assert!(g.w_out.is_multiple_of(2), "pixel pairs need an even output width, not {}", g.w_out);
    assert!(out.len() >= g.w_out * p.c, "output row too short");
    run_row(p, img, oy, g, act, Dst::Bf16Pairs(out.as_mut_ptr(), p.c))
}

/// Panics unless output row `oy` of geometry `g` reads inside `img` (the checks every stem
/// row function makes before its kernel's unchecked reads).
fn check_row(img: &Image, oy: usize, g: StemGeom) {
    assert_eq!(img.data.len(), 3 * img.h * img.w, "image size");
    assert!(g.w_out == 0 || (g.w_out - 1) * g.stride < img.w + g.pad_left, "output wider than the image allows");
    assert!(oy * g.stride < img.h + g.pad_top, "row below the image");
}

/// The row into `out`, whose length the caller checked.
fn run_row(p: &PackedStem, img: Image, oy: usize, g: StemGeom, act: MinMax, out: Dst) {
    check_row(&img, oy, g);
    let args = Args { img, oy, g, act, out };
    // SAFETY: sizes checked above; the packing's kernel was granted by a `Tier`, the proof
    // that this CPU runs it.
    unsafe { (p.kernel.run)(&args, p) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bf16gemm::bf16_to_f32;
    use crate::{reference, ConvGeom};

    /// One test shape: an image in both layouts, weights, bias and the geometry.
    struct Case {
        nhwc: Vec<f32>,
        nchw: Vec<f32>,
        wts: Vec<f32>,
        bias: Vec<f32>,
        g: ConvGeom,
        sg: StemGeom,
    }

    impl Case {
        /// `h x w` image, `c` outputs, paddings top, left, bottom, right; `edit` changes the
        /// NHWC image before the NCHW copy is made.
        fn new((h, w, c, pt, pl, pb, pr): Shape, wdiv: f32, edit: impl FnOnce(&mut [f32])) -> Case {
            let (out_h, w_out) = ((h + pt + pb - 3) / 2 + 1, (w + pl + pr - 3) / 2 + 1);
            let mut nhwc: Vec<f32> = (0..h * w * 3).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
            edit(&mut nhwc);
            let mut nchw = vec![0.0; nhwc.len()];
            for p in 0..h * w {
                for ch in 0..3 {
                    nchw[ch * h * w + p] = nhwc[p * 3 + ch];
                }
            }
            let wts = (0..27 * c).map(|i| ((i * 13 % 29) as f32 - 14.0) / wdiv).collect();
            let bias = (0..c).map(|i| i as f32 * 0.1 - 1.0).collect();
            let g = ConvGeom {
                in_h: h,
                in_w: w,
                in_c: 3,
                out_h,
                out_w: w_out,
                out_c: c,
                kernel: 3,
                stride: 2,
                dilation: 1,
                pad_top: pt,
                pad_left: pl,
                groups: 1,
            };
            let sg = StemGeom { w_out, stride: 2, pad_top: pt, pad_left: pl };
            Case { nhwc, nchw, wts, bias, g, sg }
        }

        /// The f32 reference convolution of `x` with `w` and `bias`.
        fn reference(&self, x: &[f32], w: &[f32], bias: &[f32], act: MinMax) -> Vec<f32> {
            let mut out = vec![0.0; self.g.out_h * self.g.out_w * self.g.out_c];
            reference::conv2d_f32(&self.g, x, w, bias, act, None, &mut out);
            out
        }

        /// Every output row through `p`, from the image in `layout`.
        fn run(&self, p: &PackedStem, layout: Layout, act: MinMax) -> Vec<f32> {
            let data = if layout == Layout::Nchw { &self.nchw } else { &self.nhwc };
            let img = Image { data, h: self.g.in_h, w: self.g.in_w, layout };
            let row = self.g.out_w * self.g.out_c;
            let mut got = vec![f32::NAN; self.g.out_h * row];
            for oy in 0..self.g.out_h {
                stem_row(p, img, oy, self.sg, act, &mut got[oy * row..(oy + 1) * row]);
            }
            got
        }
    }

    /// (h, w, c, pad top, left, bottom, right).
    type Shape = (usize, usize, usize, usize, usize, usize, usize);

    /// Odd and even widths, 1 to 48 outputs, every padding (torch's, TF's SAME, none, one
    /// side), and the network's 224-wide rows: the shapes the bf16 and int8 kernels meet their
    /// twins on.
    const SHAPES: [Shape; 9] = [
        (9, 11, 1, 1, 1, 1, 1),
        (9, 11, 17, 1, 1, 1, 1),
        (4, 224, 32, 1, 1, 1, 1),
        (3, 225, 32, 0, 0, 1, 1),
        (7, 33, 48, 1, 1, 1, 1),
        (12, 10, 24, 1, 1, 1, 1),
        (5, 5, 8, 1, 1, 1, 1),
        (6, 41, 16, 0, 1, 1, 0),
        (5, 37, 40, 1, 0, 0, 1),
    ];

    /// The network's stems: 16, 32 and 48 outputs (widths 0.5, 1.0 and 1.4) of 224, 97 and
    /// 113 pixel wide images, padded as torchvision pads (1 all round), and TF's SAME at 224.
    const NETWORK_SHAPES: [Shape; 10] = [
        (5, 224, 16, 1, 1, 1, 1),
        (5, 224, 32, 1, 1, 1, 1),
        (5, 224, 48, 1, 1, 1, 1),
        (5, 224, 32, 0, 0, 1, 1),
        (5, 97, 16, 1, 1, 1, 1),
        (5, 97, 32, 1, 1, 1, 1),
        (5, 97, 48, 1, 1, 1, 1),
        (5, 113, 16, 1, 1, 1, 1),
        (5, 113, 32, 1, 1, 1, 1),
        (5, 113, 48, 1, 1, 1, 1),
    ];

    /// The bytes a vector kernel keeps in its thread's staging area (which the engine counts
    /// as activation memory) are no more than it declares: shapes run from narrow to wide, as
    /// the areas only grow. The twins allocate what they declare per call.
    #[test]
    fn stem_kernels_stage_what_they_declare() {
        let tier = *Tier::host().last().expect("scalar");
        let mut shapes: Vec<Shape> = SHAPES.iter().chain(&NETWORK_SHAPES).copied().collect();
        shapes.sort_by_key(|s| s.1);
        #[cfg(target_arch = "x86_64")]
        for (name, needs, held_bytes) in [
            (KERNELS_BF16[0].name, KERNELS_BF16[0].needs, avx512bf16::held_bytes as fn() -> usize),
            (int8::KERNELS_INT8[0].name, int8::KERNELS_INT8[0].needs, avx512vnni::held_bytes),
            (int8::KERNELS_INT8[1].name, int8::KERNELS_INT8[1].needs, avx2::held_bytes),
        ] {
            if !crate::isa::runs_or_skips(name, needs) {
                continue;
            }
            for &shape in &shapes {
                let case = Case::new(shape, 9.0, |_| {});
                let img = Image { data: &case.nhwc, h: case.g.in_h, w: case.g.in_w, layout: Layout::Nhwc };
                let mut out = vec![0.0f32; case.g.out_w * shape.2];
                let (declared, held) = if name == KERNELS_BF16[0].name {
                    let p = PackedStem::for_kernel(tier, &KERNELS_BF16[0], &case.wts, shape.2, &case.bias);
                    stem_row(&p, img, case.g.out_h - 1, case.sg, MinMax::NONE, &mut out);
                    (p.staging_bytes(case.sg), held_bytes())
                } else {
                    let q = crate::qgemm::QParams { scale: 0.05, zero: 100 };
                    let kernel = int8::KERNELS_INT8.iter().find(|k| k.name == name).expect("an int8 kernel");
                    let p = PackedStemQ::for_kernel(tier, kernel, &case.wts, shape.2, &case.bias, q, MinMax::RELU6, q);
                    let mut codes = vec![0u8; out.len()];
                    stem_row_q(&p, img, case.g.out_h - 1, case.sg, &mut codes);
                    (p.staging_bytes(case.sg), held_bytes())
                };
                assert!(held > 0 && held <= declared, "{name} {shape:?}: holds {held} bytes, declares {declared}");
            }
            eprintln!("stem staging checked: {name}");
        }
    }

    #[test]
    fn every_kernel_and_layout_matches_reference() {
        let tier = *Tier::host().last().expect("scalar");
        let mut tested = Vec::new();
        for kern in KERNELS.iter().filter(|k| crate::isa::runs_or_skips(k.name, k.needs)) {
            tested.push(kern.name);
            let shapes = [
                (9, 11, 1, 1, 1, 1, 1),
                (9, 11, 15, 1, 1, 1, 1),
                (9, 11, 17, 1, 1, 1, 1),
                (9, 11, 47, 1, 1, 1, 1),
                (4, 224, 32, 1, 1, 1, 1),
                (3, 225, 32, 0, 0, 1, 1),
                (9, 11, 32, 1, 1, 1, 1),
                (8, 8, 16, 0, 0, 1, 1),
                (7, 33, 48, 1, 1, 1, 1),
                (12, 10, 24, 1, 1, 1, 1),
                (5, 5, 8, 1, 1, 1, 1),
                (6, 6, 56, 1, 1, 1, 1),
                (6, 41, 16, 0, 1, 1, 0),
                (5, 37, 40, 1, 0, 0, 1),
                (9, 11, 7, 2, 2, 0, 0),
            ];
            for shape in shapes.into_iter().chain(NETWORK_SHAPES) {
                if shape.2 > kern.max_c {
                    continue;
                }
                let case = Case::new(shape, 10.0, |_| {});
                let act = MinMax::RELU6;
                let want = case.reference(&case.nhwc, &case.wts, &case.bias, act);
                let p = PackedStem::for_kernel(tier, kern, &case.wts, shape.2, &case.bias);
                for layout in [Layout::Nchw, Layout::Nhwc] {
                    let got = case.run(&p, layout, act);
                    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(err < 1e-5, "{} {layout:?} {shape:?}: {err}", p.kernel_name());
                }
            }
        }
        eprintln!("f32 stem kernels tested: {tested:?}");
    }

    /// The bf16 kernels against their twin (same rounded operands, exact products, the same
    /// f32 order: equal up to f32 accumulation rounding), the twin against the f32 reference
    /// (within bf16 rounding, and not equal to it: it is bf16), in both layouts, odd widths
    /// and paddings; an infinity next to a window leaves that window's pixel finite.
    #[test]
    fn bf16_kernels_match_the_twin() {
        let tier = *Tier::host().last().expect("scalar");
        let twin = KERNELS_BF16.last().expect("the scalar twin");
        let mut tested = Vec::new();
        for kern in KERNELS_BF16.iter().filter(|k| crate::isa::runs_or_skips(k.name, k.needs)) {
            tested.push(kern.name);
            for shape in SHAPES {
                let (h, w, c, _, pl, _, _) = shape;
                if c > kern.max_c {
                    continue;
                }
                // An infinity at column 3 - pl of the last row (channel 0): the partner of the
                // first window's 9th tap, outside that window.
                let case = Case::new(shape, 9.0, |x| x[((h - 1) * w + 3 - pl) * 3] = f32::INFINITY);
                let act = MinMax::NONE;
                let exact = case.reference(&case.nhwc, &case.wts, &case.bias, act);
                // Each product is off by at most 2^-8 of itself (both operands rounded): the
                // twin is within 2^-8 of the sum of the products' magnitudes (plus f32 rounding).
                let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
                let scale = case.reference(&abs(&case.nhwc), &abs(&case.wts), &vec![0.0; c], act);
                let p = PackedStem::for_kernel(tier, kern, &case.wts, c, &case.bias);
                let p_twin = PackedStem::for_kernel(tier, twin, &case.wts, c, &case.bias);
                assert_eq!(p.kernel_name(), kern.name);
                let mut rounded = false;
                for layout in [Layout::Nchw, Layout::Nhwc] {
                    let (got, want) = (case.run(&p, layout, act), case.run(&p_twin, layout, act));
                    for (i, (((x, y), e), m)) in got.iter().zip(&want).zip(&exact).zip(&scale).enumerate() {
                        let what = format!("{} {layout:?} {shape:?} at {i}", kern.name);
                        if !e.is_finite() {
                            continue;
                        }
                        assert!(x.is_finite() && y.is_finite(), "{what}: {x} / twin {y} where f32 gives {e}");
                        assert!((x - y).abs() <= 8.0 * f32::EPSILON * y.abs().max(1.0), "{what}: {x} vs twin {y}");
                        assert!(
                            (y - e).abs() <= m / 256.0 + 1e-5 * e.abs().max(1.0),
                            "{what}: twin {y} vs f32 {e} ({m})"
                        );
                        rounded |= y != e;
                    }
                }
                assert!(rounded, "{shape:?}: the bf16 twin gave the f32 results");
            }
        }
        eprintln!("bf16 stem kernels tested: {tested:?}");
    }

    /// The bf16 kernels' pixel pairs are their f32 rows rounded to bf16 and moved, bit for
    /// bit: every bf16 kernel the host runs (the twin included), both layouts, with and
    /// without a clamp, 1 to 40 channels (whole vectors and tails), even widths from 6 to 112
    /// (18 and 20: pairs after the last block of 8 pixels); nothing written past the row.
    #[test]
    fn bf16_pixel_pairs_are_the_rows_rounded_and_moved() {
        let tier = *Tier::host().last().expect("scalar");
        let mut tested = Vec::new();
        for kern in KERNELS_BF16.iter().filter(|k| crate::isa::runs_or_skips(k.name, k.needs)) {
            tested.push(kern.name);
            let mut shapes = 0;
            for shape in SHAPES {
                let (h, w, c) = (shape.0, shape.1, shape.2);
                let case = Case::new(shape, 9.0, |_| {});
                if !case.sg.w_out.is_multiple_of(2) {
                    continue;
                }
                shapes += 1;
                let p = PackedStem::for_kernel(tier, kern, &case.wts, c, &case.bias);
                let row = case.g.out_w * c;
                for act in [MinMax::RELU6, MinMax::NONE] {
                    for layout in [Layout::Nchw, Layout::Nhwc] {
                        let values = case.run(&p, layout, act);
                        let data = if layout == Layout::Nchw { &case.nchw } else { &case.nhwc };
                        let img = Image { data, h, w, layout };
                        for oy in 0..case.g.out_h {
                            let mut want = vec![Bf16(0xa5a5); row + 40];
                            for (i, v) in values[oy * row..(oy + 1) * row].iter().enumerate() {
                                let (x, co) = (i / c, i % c);
                                want[(x - x % 2) * c + 2 * co + x % 2] = Bf16(f32_to_bf16(*v));
                            }
                            let mut got = vec![Bf16(0xa5a5); row + 40];
                            stem_row_bf16_pairs(&p, img, oy, case.sg, act, &mut got);
                            assert!(got == want, "{} {layout:?} {shape:?} {act:?} row {oy}", kern.name);
                        }
                    }
                }
            }
            assert_eq!(shapes, 6, "the even widths of SHAPES");
        }
        eprintln!("bf16 stem kernels tested for pixel pairs: {tested:?}");
    }

    /// Pixel pairs clamp as the GEMM's do (`bf16_bit_bounds`): on every bf16 kernel, in both
    /// layouts, the outputs whose window holds a NaN pixel end at the upper bound under ReLU6
    /// (a clamp in bf16 bits), at the lower bound under [-1, 1] (an f32 clamp); the others
    /// stay finite.
    #[test]
    fn bf16_pixel_pairs_of_nan_sums() {
        let tier = *Tier::host().last().expect("scalar");
        let (h, w, c) = (5, 20, 40);
        // Input row 2, column 9: the windows of output row 1, columns 4 and 5.
        let case = Case::new((h, w, c, 1, 1, 1, 1), 9.0, |x| x[(2 * w + 9) * 3 + 1] = f32::NAN);
        let w_out = case.sg.w_out;
        for kern in KERNELS_BF16.iter().filter(|k| crate::isa::runs_or_skips(k.name, k.needs)) {
            let p = PackedStem::for_kernel(tier, kern, &case.wts, c, &case.bias);
            for (act, nan_to) in [(MinMax::RELU6, 6.0), (MinMax { min: -1.0, max: 1.0 }, -1.0)] {
                for layout in [Layout::Nchw, Layout::Nhwc] {
                    let data = if layout == Layout::Nchw { &case.nchw } else { &case.nhwc };
                    let img = Image { data, h, w, layout };
                    let mut got = vec![Bf16(0); w_out * c];
                    stem_row_bf16_pairs(&p, img, 1, case.sg, act, &mut got);
                    for co in 0..c {
                        let at = |x: usize| got[(x & !1) * c + 2 * co + (x & 1)].0;
                        let what = format!("{} {act:?} {layout:?} channel {co}", kern.name);
                        assert_eq!((at(4), at(5)), (f32_to_bf16(nan_to), f32_to_bf16(nan_to)), "{what}");
                        assert!(bf16_to_f32(at(2)).is_finite() && bf16_to_f32(at(7)).is_finite(), "{what}");
                    }
                }
            }
        }
    }

    /// The int8 stem ([`PackedStemQ`]): every kernel gives the twin's bytes (exact sums, the
    /// same epilogue), in both layouts, for zero points 0, 128 and 255, image values beyond the
    /// quantised range, an infinity and a NaN; and the twin is the quantised convolution: the
    /// reference f32 convolution of the dequantised image codes and the int8-grid weights,
    /// within one output code.
    #[test]
    fn int8_kernels_match_the_twin_and_the_quantised_convolution() {
        let tier = *Tier::host().last().expect("scalar");
        let twin = KERNELS_INT8.last().expect("the scalar twin");
        let mut tested = Vec::new();
        for kern in KERNELS_INT8.iter().filter(|k| crate::isa::runs_or_skips(k.name, k.needs)) {
            tested.push(kern.name);
            for shape in SHAPES.into_iter().chain(NETWORK_SHAPES) {
                let (h, w, c) = (shape.0, shape.1, shape.2);
                // An infinity and a NaN in the last image row (channel 0, columns 2 and 5 or the last).
                let case = Case::new(shape, 10.0, |x| {
                    x[((h - 1) * w + 2) * 3] = f32::INFINITY;
                    x[((h - 1) * w + 5.min(w - 1)) * 3] = f32::NAN;
                });
                for (input, act, out_q) in [
                    (QParams { scale: 4.0 / 255.0, zero: 128 }, MinMax::RELU6, QParams { scale: 6.0 / 255.0, zero: 0 }),
                    (QParams { scale: 0.01, zero: 0 }, MinMax::NONE, QParams { scale: 0.2, zero: 100 }),
                    (QParams { scale: 0.012, zero: 255 }, MinMax::RELU6, QParams { scale: 0.05, zero: 0 }),
                ] {
                    let p = PackedStemQ::for_kernel(tier, kern, &case.wts, c, &case.bias, input, act, out_q);
                    let p_twin = PackedStemQ::for_kernel(tier, twin, &case.wts, c, &case.bias, input, act, out_q);
                    assert_eq!(p.kernel_name(), kern.name);
                    let row = case.g.out_w * c;
                    let mut outs = Vec::new();
                    for layout in [Layout::Nchw, Layout::Nhwc] {
                        let data = if layout == Layout::Nchw { &case.nchw } else { &case.nhwc };
                        let img = Image { data, h, w, layout };
                        let run = |p: &PackedStemQ| {
                            let mut out = vec![0xa5u8; case.g.out_h * row];
                            for (oy, r) in out.chunks_mut(row).enumerate() {
                                stem_row_q(p, img, oy, case.sg, r);
                            }
                            out
                        };
                        let (got, want) = (run(&p), run(&p_twin));
                        assert_eq!(got, want, "{} {layout:?} {shape:?} {input:?}", kern.name);
                        outs.push(want);
                    }
                    assert_eq!(outs[0], outs[1], "{shape:?}: the layouts disagree");
                    // The f32 convolution of the dequantised codes with the int8-grid weights.
                    let deq: Vec<f32> =
                        case.nhwc.iter().map(|&v| input.dequantize(image_code(v, 1.0 / input.scale, input))).collect();
                    let (q, s) = crate::qgemm::quantize_weights(&case.wts, 27, c);
                    let grid: Vec<f32> = q.iter().enumerate().map(|(i, &v)| v as f32 * s[i % c]).collect();
                    let real = case.reference(&deq, &grid, &case.bias, act);
                    let mut off = 0;
                    for (r, &code) in real.iter().zip(&outs[0]) {
                        let d = (out_q.quantize(r.clamp(act.min, act.max)) as i32 - code as i32).abs();
                        assert!(d <= 1, "{shape:?} {input:?}: {code} vs the f32 convolution's {r}");
                        off += d as usize;
                    }
                    assert!(off * 50 <= real.len(), "{shape:?}: {off} of {} codes off by one", real.len());
                }
            }
        }
        eprintln!("int8 stem kernels tested: {tested:?}");
    }

    /// The quantising epilogue gives the codes `quantize_row` gives for the row, on every
    /// kernel (f32 and bf16) and both layouts, zero point and saturation included.
    #[test]
    fn u8_rows_are_the_quantised_rows() {
        let tier = *Tier::host().last().expect("scalar");
        for kern in KERNELS.iter().chain(KERNELS_BF16).filter(|k| crate::isa::runs_or_skips(k.name, k.needs)) {
            for shape in [(9, 11, 17, 1, 1, 1, 1), (4, 224, 32, 1, 1, 1, 1), (7, 33, 48, 1, 1, 1, 1)] {
                let case = Case::new(shape, 10.0, |_| {});
                let p = PackedStem::for_kernel(tier, kern, &case.wts, shape.2, &case.bias);
                for (act, q) in [
                    (MinMax::RELU6, QParams { scale: 6.0 / 255.0, zero: 0 }),
                    (MinMax::NONE, QParams { scale: 0.02, zero: 3 }),
                ] {
                    for layout in [Layout::Nchw, Layout::Nhwc] {
                        let values = case.run(&p, layout, act);
                        let mut want = vec![0u8; values.len()];
                        crate::qgemm::quantize_row(tier, &values, &mut want, q);
                        let data = if layout == Layout::Nchw { &case.nchw } else { &case.nhwc };
                        let img = Image { data, h: shape.0, w: shape.1, layout };
                        let row = case.g.out_w * shape.2;
                        let mut got = vec![0xa5u8; values.len()];
                        for oy in 0..case.g.out_h {
                            stem_row_u8(&p, img, oy, case.sg, act, q, &mut got[oy * row..(oy + 1) * row]);
                        }
                        assert!(want.contains(&255) && want.contains(&0), "{shape:?} {q:?}");
                        assert_eq!(got, want, "{} {layout:?} {shape:?} {q:?}", kern.name);
                    }
                }
            }
        }
    }
}
