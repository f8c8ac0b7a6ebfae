//! A detection or segmentation head on the fast engine: the plan's head layers in order,
//! each on the fast kernels of the engine's ISA (1x1 convs as packed GEMMs, 3x3 depthwise
//! convs as packed depthwise rows), reading the backbone tensors the fused schedule
//! materialised once ([`super::TapAt`]). Head tensors are small (SSDLite's largest is the
//! 19x19 map at 300x300, DeepLab's the feature map at output stride 16 or 8) and each is freed
//! after its last reader. Dense 3x3 convs (ASPP's atrous branches, SSD's regular head) run on
//! the scalar reference kernel.

use std::ops::Range;
use std::sync::Mutex;

use mnv2_kernels::dwconv::{dwconv_row, DwRow, PackedDw};
use mnv2_kernels::exec::{share, Pool};
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
}

/// Pixels below which a 1x1 conv is not split across threads.
const SPLIT_MIN_PIXELS: usize = 32;
/// Output rows below which a depthwise conv is not split across threads.
const SPLIT_MIN_ROWS: usize = 8;

impl HeadNet {
    /// Packs the head layers (taking their weights out of `folded`).
    pub fn new(plan: &Plan, folded: &mut FoldedLayers, tier: Tier, bf16: bool) -> Result<HeadNet> {
        let first = plan.last_conv + 1;
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
                            ConvKind::Pointwise if c.stride == 1 => HeadOp::Pointwise(
                                PackedPw::new(tier, bf16, &f.weights, l.input.c, l.output.c, &f.bias),
                                act,
                            ),
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
        Ok(HeadNet { first, ops })
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
        let mut last = vec![None; plan.layers.len()];
        for (i, l) in plan.layers.iter().enumerate().skip(self.first) {
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

    /// The values of one image held at once at worst while the head runs: the live tensors
    /// (each freed after its last reader) plus the layer being written, taps excluded.
    pub fn peak_values(&self, plan: &Plan, wanted: &[usize]) -> usize {
        let last = self.last_reader(plan, wanted);
        let end = wanted.iter().copied().max().unwrap_or(plan.layers.len() - 1);
        let (mut live, mut peak) = (0usize, 0usize);
        let mut held = vec![false; plan.layers.len()];
        for i in self.first..=end {
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
        for i in self.first..=end {
            let l = &plan.layers[i];
            let src = l.source.unwrap_or(i - 1);
            let input: &[f32] = match taps.iter().find(|t| t.0 == src) {
                Some(t) => t.1,
                None => held[src].as_deref().expect("a head layer's input runs before it"),
            };
            let mut out = vec![0f32; l.output.len()];
            match &self.ops[i - self.first] {
                HeadOp::Pointwise(w, act) => {
                    let (cin, cout) = (l.input.c, l.output.c);
                    split_rows(pool, l.output.h * l.output.w, cout, &mut out, SPLIT_MIN_PIXELS, &|px, dst| {
                        w.gemm(px.len(), &input[px.start * cin..px.end * cin], cin, dst, cout, *act, None)
                    });
                }
                HeadOp::Depthwise(w, act) => {
                    let c = l.conv().expect("conv");
                    let (i_s, o_s) = (l.input, l.output);
                    let g = DwRow {
                        w_in: i_s.w,
                        w_out: o_s.w,
                        stride: c.stride,
                        dilation: c.dilation,
                        pad_left: c.pad.left,
                    };
                    let row_len = o_s.w * o_s.c;
                    let rows_of = |y: usize| -> [Option<&[f32]>; 3] {
                        std::array::from_fn(|ky| {
                            let iy = (y * c.stride + ky * c.dilation) as isize - c.pad.top as isize;
                            let ok = iy >= 0 && (iy as usize) < i_s.h;
                            ok.then(|| &input[iy as usize * i_s.w * i_s.c..(iy as usize + 1) * i_s.w * i_s.c])
                        })
                    };
                    split_rows(pool, o_s.h, row_len, &mut out, SPLIT_MIN_ROWS, &|rows, dst| {
                        for (y, o) in rows.zip(dst.chunks_exact_mut(row_len)) {
                            dwconv_row(w, rows_of(y), g, *act, o);
                        }
                    });
                }
                HeadOp::Conv(f, act) => {
                    let c = l.conv().expect("conv");
                    k::conv2d_f32(&geom(l, c), input, &f.weights, &f.bias, *act, None, &mut out);
                }
                HeadOp::GlobalAvgPool => k::global_avg_pool_f32(input, l.input.h * l.input.w, l.input.c, &mut out),
                HeadOp::Upsample { align_corners } => {
                    let (a, b) = (l.input, l.output);
                    let r = Bilinear::new(a.h, a.w, a.c, b.h, b.w, *align_corners);
                    split_rows(pool, b.h, b.w * b.c, &mut out, SPLIT_MIN_ROWS, &|rows, dst| r.rows(input, rows, dst));
                }
                HeadOp::Concat(sources) => {
                    let mut offset = 0;
                    for &s in sources {
                        let part = match taps.iter().find(|t| t.0 == s) {
                            Some(t) => t.1,
                            None => held[s].as_deref().expect("a concatenated layer runs before the concat"),
                        };
                        let c = plan.layers[s].output.c;
                        for (px, o) in part.chunks_exact(c).zip(out.chunks_exact_mut(l.output.c)) {
                            o[offset..offset + c].copy_from_slice(px);
                        }
                        offset += c;
                    }
                }
                HeadOp::Identity => out.copy_from_slice(input),
            }
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
}

/// Calls `f(rows, dst)` over `rows` rows of `row_len` values of `out`: at once, or split
/// across `pool`'s threads when there are at least `min_rows` rows.
fn split_rows(
    pool: Option<&Pool>,
    rows: usize,
    row_len: usize,
    out: &mut [f32],
    min_rows: usize,
    f: &(dyn Fn(Range<usize>, &mut [f32]) + Sync),
) {
    let threads = pool.map_or(1, Pool::threads);
    if threads == 1 || rows < min_rows.max(threads) {
        return f(0..rows, out);
    }
    let mut parts: Vec<Mutex<(Range<usize>, &mut [f32])>> = Vec::with_capacity(threads);
    let mut rest = out;
    for t in 0..threads {
        let r = share(t, threads, rows);
        let (mine, tail) = rest.split_at_mut(r.len() * row_len);
        parts.push(Mutex::new((r, mine)));
        rest = tail;
    }
    let pool = pool.expect("threads > 1");
    pool.run(&|tid| {
        let mut p = parts[tid].lock().unwrap_or_else(|e| e.into_inner());
        let (r, dst) = &mut *p;
        f(r.clone(), dst);
    });
}
