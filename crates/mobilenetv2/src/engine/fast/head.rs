//! A detection or segmentation head on the fast engine: the plan's head layers in order,
//! each on the fast kernels of the engine's ISA (1x1 convs as packed GEMMs, 3x3 depthwise
//! convs as packed depthwise rows), reading the backbone tensors the fused schedule
//! materialised once ([`super::TapAt`]). Head tensors are small (SSDLite's largest is the
//! 19x19 map at 300x300, DeepLab's the feature map at output stride 16 or 8) and each is freed
//! after its last reader. Dense 3x3 convs (ASPP's atrous branches, SSD's regular head) run on
//! the scalar reference kernel.

use mnv2_kernels::dwconv::{dwconv_rows, DwRow, PackedDw};
use mnv2_kernels::exec::{split_rows, Pool};
use mnv2_kernels::resize::Bilinear;
use mnv2_kernels::{reference as k, MinMax, Tier};

use super::minmax;
use super::pw::PackedPw;
use crate::engine::reference::geom;
use crate::error::{Error, Result};
use crate::fold::{FoldedConv, FoldedLayers};
use crate::plan::{ConvKind, Op, Plan};

/// One head layer compiled for the kernels.
enum HeadOp {
    /// A 1x1 stride-1 conv: `pixels x c_in` times `c_in x c_out`.
    Pointwise(PackedPw, MinMax),
    /// A 3x3 depthwise conv.
    Depthwise(PackedDw, MinMax),
    /// Any other conv, on the reference kernel.
    Conv(FoldedConv, MinMax),
    GlobalAvgPool,
    Upsample {
        align_corners: bool,
    },
    Concat(Vec<usize>),
    Identity,
}

/// The head layers of a plan (those after [`Plan::last_conv`]) packed for one ISA (the 1x1
/// convs in bf16 for a bf16 engine).
pub(crate) struct HeadNet {
    /// Index of the first head layer.
    first: usize,
    ops: Vec<HeadOp>,
    /// DeepLab's projection with the image-pooling branch folded into its bias, if the head
    /// has one.
    fold: Option<BroadcastFold>,
}

/// A 1x1 conv (`proj`) over a concatenation (`concat`) one of whose parts is a 1x1 map
/// (`pooled`) upsampled to the image (`upsample`): DeepLab's projection, whose input begins
/// with the image-pooling branch. That part is the same vector at every pixel, so its product
/// is computed once per image and added to the bias, and the GEMM runs over the other parts'
/// channels only; neither the upsampled map nor the concatenation is written. At 512x512 and
/// OS 16 this skips 67M of the segmenter's 2.6G multiply-adds and a 2 MB copy. (The
/// upsampling of a 1x1 map is exact: both taps are that pixel, with weights 1 and 0.)
struct BroadcastFold {
    proj: usize,
    concat: usize,
    upsample: usize,
    pooled: usize,
    /// The concatenation's other parts, in order, and their channels in all.
    parts: Vec<usize>,
    k_rest: usize,
    /// The projection's weights for the other parts' channels, packed (bias replaced per image).
    rest: PackedPw,
    /// Its weights for the broadcast part's channels, `[channel][output]`.
    bcast_w: Vec<f32>,
    bias: Vec<f32>,
    act: MinMax,
}

impl BroadcastFold {
    /// The fold of the projection at plan layer `i`, if it reads such a concatenation whose
    /// broadcast part nothing else reads.
    fn find(plan: &Plan, i: usize, f: &FoldedConv, tier: Tier, bf16: bool, act: MinMax) -> Option<BroadcastFold> {
        let concat = plan.layers[i].source.unwrap_or(i - 1);
        let Op::Concat { sources } = &plan.layers[concat].op else { return None };
        let readers = |j: usize| {
            plan.layers.iter().enumerate().skip(j + 1).filter(move |(k, l)| match &l.op {
                Op::Concat { sources } => sources.contains(&j),
                _ => l.source.unwrap_or(k - 1) == j,
            })
        };
        let (at, &upsample) = sources.iter().enumerate().find(|(_, &s)| {
            let l = &plan.layers[s];
            matches!(l.op, Op::Upsample { .. }) && l.input.h == 1 && l.input.w == 1
        })?;
        if readers(concat).count() != 1 || readers(upsample).count() != 1 || sources.len() < 2 {
            return None;
        }
        let pooled = plan.layers[upsample].source.unwrap_or(upsample - 1);
        let n = plan.layers[i].output.c;
        let offset: usize = sources[..at].iter().map(|&s| plan.layers[s].output.c).sum();
        let kb = plan.layers[upsample].output.c;
        let k = plan.layers[i].input.c;
        let bcast_w = f.weights[offset * n..(offset + kb) * n].to_vec();
        let rest_w: Vec<f32> = [&f.weights[..offset * n], &f.weights[(offset + kb) * n..]].concat();
        let parts: Vec<usize> = sources.iter().copied().filter(|&s| s != upsample).collect();
        Some(BroadcastFold {
            proj: i,
            concat,
            upsample,
            pooled,
            k_rest: k - kb,
            rest: PackedPw::new(tier, bf16, &rest_w, k - kb, n, &f.bias),
            parts,
            bcast_w,
            bias: f.bias.clone(),
            act,
        })
    }

    /// The plan layers whose outputs the folded projection reads.
    fn reads(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().copied().chain([self.pooled])
    }

    /// The projection's output for one image, reading its inputs through `get`.
    fn run<'a>(&self, plan: &Plan, get: &dyn Fn(usize) -> &'a [f32], pool: Option<&Pool>) -> Vec<f32> {
        let l = &plan.layers[self.proj];
        let n = l.output.c;
        let mut bias = self.bias.clone();
        for (&p, w) in get(self.pooled).iter().zip(self.bcast_w.chunks_exact(n)) {
            for (b, &w) in bias.iter_mut().zip(w) {
                *b += p * w;
            }
        }
        let w = self.rest.with_bias(&bias);
        let pixels = l.output.h * l.output.w;
        let joined;
        let a: &[f32] = if let [only] = self.parts[..] {
            get(only)
        } else {
            let mut cat = vec![0f32; pixels * self.k_rest];
            concat(plan, &self.parts, get, self.k_rest, &mut cat);
            joined = cat;
            &joined
        };
        let mut out = vec![0f32; l.output.len()];
        let k = self.k_rest;
        split_rows(pool, pixels, n, &mut out, SPLIT_MIN_PIXELS, &|px, dst| {
            w.gemm(px.len(), &a[px.start * k..px.end * k], k, dst, n, self.act, None)
        });
        out
    }
}

/// Pixels below which a 1x1 conv is not split across threads.
const SPLIT_MIN_PIXELS: usize = 32;
/// Output rows below which a depthwise conv is not split across threads.
const SPLIT_MIN_ROWS: usize = 8;

impl HeadNet {
    /// Packs the head layers (taking their weights out of `folded`).
    pub fn new(plan: &Plan, folded: &mut FoldedLayers, tier: Tier, bf16: bool) -> Result<HeadNet> {
        let first = plan.last_conv + 1;
        let mut fold = None;
        let ops = plan.layers[first..]
            .iter()
            .enumerate()
            .map(|(j, l)| {
                let i = first + j;
                Ok(match &l.op {
                    Op::Conv(c) if c.residual => {
                        return Err(Error::Unsupported(format!("a head layer with a shortcut ({})", l.name)))
                    }
                    Op::Conv(c) => {
                        let f = folded.take(i);
                        let act = minmax(c.activation);
                        match c.kind {
                            ConvKind::Pointwise if c.stride == 1 => {
                                if fold.is_none() {
                                    fold = BroadcastFold::find(plan, i, &f, tier, bf16, act);
                                }
                                HeadOp::Pointwise(
                                    PackedPw::new(tier, bf16, &f.weights, l.input.c, l.output.c, &f.bias),
                                    act,
                                )
                            }
                            ConvKind::Depthwise if c.kernel == 3 => {
                                HeadOp::Depthwise(PackedDw::new(tier, &f.weights, l.output.c, &f.bias), act)
                            }
                            _ => HeadOp::Conv(f, act),
                        }
                    }
                    Op::GlobalAvgPool => HeadOp::GlobalAvgPool,
                    Op::Upsample { align_corners } => HeadOp::Upsample { align_corners: *align_corners },
                    Op::Concat { sources } => HeadOp::Concat(sources.clone()),
                    Op::Dropout { .. } => HeadOp::Identity,
                    Op::Linear => return Err(Error::Unsupported(format!("a fully connected head layer ({})", l.name))),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HeadNet { first, ops, fold })
    }

    /// Names of the fast kernels the head runs.
    pub fn kernel_names(&self) -> Vec<&'static str> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                HeadOp::Pointwise(w, _) => Some(w.kernel_name()),
                HeadOp::Depthwise(w, _) => Some(w.kernel_name()),
                _ => None,
            })
            .collect()
    }

    /// Per layer of the plan, the last head layer that reads its output (or `wanted` asks for
    /// it: `usize::MAX`); `None` when nothing does.
    fn last_reader(&self, plan: &Plan, wanted: &[usize]) -> Vec<Option<usize>> {
        let fold = self.fold_for(wanted);
        let mut last = vec![None; plan.layers.len()];
        for (i, l) in plan.layers.iter().enumerate().skip(self.first) {
            match fold {
                Some(f) if i == f.concat || i == f.upsample => continue,
                Some(f) if i == f.proj => {
                    f.reads().for_each(|s| last[s] = Some(i));
                    continue;
                }
                _ => {}
            }
            last[l.source.unwrap_or(i - 1)] = Some(i);
            if let Op::Concat { sources } = &l.op {
                sources.iter().for_each(|&s| last[s] = Some(i));
            }
        }
        for &w in wanted {
            last[w] = Some(usize::MAX);
        }
        last
    }

    /// The projection fold, unless `wanted` asks for a layer it skips.
    fn fold_for(&self, wanted: &[usize]) -> Option<&BroadcastFold> {
        self.fold.as_ref().filter(|f| !wanted.contains(&f.concat) && !wanted.contains(&f.upsample))
    }

    /// The values of one image held at once at worst while the head runs: the live tensors
    /// (each freed after its last reader) plus the layer being written, taps excluded.
    pub fn peak_values(&self, plan: &Plan, wanted: &[usize]) -> usize {
        let last = self.last_reader(plan, wanted);
        let end = wanted.iter().copied().max().unwrap_or(plan.layers.len() - 1);
        let (mut live, mut peak) = (0usize, 0usize);
        let mut held = vec![false; plan.layers.len()];
        let fold = self.fold_for(wanted);
        for i in self.first..=end {
            if fold.is_some_and(|f| i == f.concat || i == f.upsample) {
                continue;
            }
            let out = plan.layers[i].output.len();
            peak = peak.max(live + out);
            live += out;
            held[i] = true;
            for j in self.first..=i {
                if held[j] && last[j].is_none_or(|r| r <= i) {
                    held[j] = false;
                    live -= plan.layers[j].output.len();
                }
            }
        }
        peak
    }

    /// The outputs of the `wanted` head layers for one image whose backbone tensors are
    /// `taps` (plan layer, values). `pool` (if any) splits the larger convs by rows.
    pub fn run(&self, plan: &Plan, taps: &[(usize, &[f32])], wanted: &[usize], pool: Option<&Pool>) -> Vec<Vec<f32>> {
        let last = self.last_reader(plan, wanted);
        let end = wanted.iter().copied().max().unwrap_or(plan.layers.len() - 1);
        let mut held: Vec<Option<Vec<f32>>> = vec![None; plan.layers.len()];
        let mut results: Vec<Vec<f32>> = vec![Vec::new(); wanted.len()];
        let fold = self.fold_for(wanted);
        for i in self.first..=end {
            if fold.is_some_and(|f| i == f.concat || i == f.upsample) {
                continue;
            }
            let get = |j: usize| -> &[f32] {
                match taps.iter().find(|t| t.0 == j) {
                    Some(t) => t.1,
                    None => held[j].as_deref().expect("a head layer's input runs before it"),
                }
            };
            let l = &plan.layers[i];
            let out = match fold.filter(|f| i == f.proj) {
                Some(f) => f.run(plan, &get, pool),
                None => {
                    let input = get(l.source.unwrap_or(i - 1));
                    match &self.ops[i - self.first] {
                        HeadOp::Upsample { align_corners } => {
                            let (a, b) = (l.input, l.output);
                            Bilinear::new(a.h, a.w, a.c, b.h, b.w, *align_corners).resize(input, pool, SPLIT_MIN_ROWS)
                        }
                        op => {
                            let mut out = vec![0f32; l.output.len()];
                            self.write(plan, i, op, input, &get, pool, &mut out);
                            out
                        }
                    }
                }
            };
            let mut asked = results.iter_mut().zip(wanted).filter(|(_, &w)| w == i).map(|(r, _)| r).peekable();
            while let Some(r) = asked.next() {
                // The last layer (usually the only one wanted, and the largest: DeepLab's
                // upsampled logits) is moved out rather than copied.
                if i == end && asked.peek().is_none() {
                    *r = out;
                    return results;
                }
                r.clone_from(&out);
            }
            held[i] = Some(out);
            for (j, h) in held.iter_mut().enumerate().skip(self.first).take(i + 1 - self.first) {
                if h.is_some() && last[j].is_none_or(|r| r <= i) {
                    *h = None;
                }
            }
        }
        results
    }

    /// Writes head layer `i` (`op`, reading `input`, and a concatenation its parts through
    /// `get`) into `out`.
    #[allow(clippy::too_many_arguments)]
    fn write<'a>(
        &self,
        plan: &Plan,
        i: usize,
        op: &HeadOp,
        input: &[f32],
        get: &dyn Fn(usize) -> &'a [f32],
        pool: Option<&Pool>,
        out: &mut [f32],
    ) {
        let l = &plan.layers[i];
        match op {
            HeadOp::Pointwise(w, act) => {
                let (cin, cout) = (l.input.c, l.output.c);
                split_rows(pool, l.output.h * l.output.w, cout, out, SPLIT_MIN_PIXELS, &|px, dst| {
                    w.gemm(px.len(), &input[px.start * cin..px.end * cin], cin, dst, cout, *act, None)
                });
            }
            HeadOp::Depthwise(w, act) => {
                let c = l.conv().expect("conv");
                let (i_s, o_s) = (l.input, l.output);
                let g =
                    DwRow { w_in: i_s.w, w_out: o_s.w, stride: c.stride, dilation: c.dilation, pad_left: c.pad.left };
                let row_len = o_s.w * o_s.c;
                let rows_of = |y: usize| -> [Option<&[f32]>; 3] {
                    std::array::from_fn(|ky| {
                        let iy = (y * c.stride + ky * c.dilation) as isize - c.pad.top as isize;
                        let ok = iy >= 0 && (iy as usize) < i_s.h;
                        ok.then(|| &input[iy as usize * i_s.w * i_s.c..(iy as usize + 1) * i_s.w * i_s.c])
                    })
                };
                split_rows(pool, o_s.h, row_len, out, SPLIT_MIN_ROWS, &|rows, dst| {
                    let triples: Vec<[Option<&[f32]>; 3]> = rows.map(rows_of).collect();
                    dwconv_rows(w, &triples, g, *act, dst);
                });
            }
            HeadOp::Conv(f, act) => {
                let c = l.conv().expect("conv");
                k::conv2d_f32(&geom(l, c), input, &f.weights, &f.bias, *act, None, out);
            }
            HeadOp::GlobalAvgPool => k::global_avg_pool_f32(input, l.input.h * l.input.w, l.input.c, out),
            HeadOp::Upsample { .. } => unreachable!("upsampling writes a fresh vector"),
            HeadOp::Concat(sources) => concat(plan, sources, get, l.output.c, out),
            HeadOp::Identity => out.copy_from_slice(input),
        }
    }
}

/// Writes the outputs of plan layers `parts` (read through `get`), one after another along
/// the channels, into `out` (`width` channels per pixel).
fn concat<'a>(plan: &Plan, parts: &[usize], get: &dyn Fn(usize) -> &'a [f32], width: usize, out: &mut [f32]) {
    let mut offset = 0;
    for &s in parts {
        let c = plan.layers[s].output.c;
        for (px, o) in get(s).chunks_exact(c).zip(out.chunks_exact_mut(width)) {
            o[offset..offset + c].copy_from_slice(px);
        }
        offset += c;
    }
}
