//! The fast executor: each inverted residual block runs fused, a band of output rows at a
//! time, so its expanded tensor never exists whole (the paper's section 5).
//!
//! For a band of output rows, the block computes the expanded rows it needs (1x1 expand
//! GEMM, or the stem for the first block) into a ring of rows that later bands reuse, runs
//! the depthwise kernel on them into a band buffer, and projects that with the residual
//! added in the GEMM epilogue. Only the narrow block outputs are materialised, in two
//! ping-pong buffers. The last 1x1 convolution is pooled as it is produced, band by band.
//!
//! Streaming mode goes further: the leading high-resolution blocks are chained row by row
//! (each pulls the rows it needs from the one before, which keeps only a ring of them), so
//! even the block outputs at 112x112 and 56x56 never exist whole.
//!
//! Threads: a batch of several images is shared out image by image, with no
//! synchronisation. A single image is split by output rows inside every block (each thread
//! recomputes the one or two expanded rows at the seam), with a barrier between blocks; in
//! streaming mode the chained blocks run on the first thread.
#![allow(unsafe_code)]

mod block;
mod rows;
mod schedule;

use std::ops::Range;
use std::sync::Mutex;
use std::time::Instant;

use mnv2_kernels::dwconv::PackedDw;
use mnv2_kernels::gemm::{gemm, PackedGemm};
use mnv2_kernels::stem::{stem_row, Image, Layout, PackedStem};
use mnv2_kernels::{AlignedVec, Isa, MinMax};

use super::fold::{fold_conv, linear};
use super::pool::{Pool, SpinBarrier};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::plan::{ConvKind, Op, Plan, Role};
use block::{Hidden, Src};
use rows::{Rows, SharedBuf};
use schedule::Schedule;

fn minmax(a: crate::plan::Activation) -> MinMax {
    let (min, max) = a.bounds();
    MinMax { min, max }
}

struct FastBlock {
    expand: Option<(PackedGemm, MinMax)>,
    dw: (PackedDw, MinMax),
    project: (PackedGemm, MinMax),
}

/// Weights packed for the kernels of one ISA; independent of the input size.
pub(crate) struct FastModel {
    pub isa: Isa,
    stem: (PackedStem, MinMax),
    blocks: Vec<FastBlock>,
    last: (PackedGemm, MinMax),
    classifier: PackedGemm,
}

/// The kernels a compiled model uses, for logs and profiles.
pub(crate) fn kernel_names(m: &FastModel) -> Vec<&'static str> {
    let mut v = vec![m.stem.0.kernel_name()];
    for b in &m.blocks {
        if let Some((e, _)) = &b.expand {
            v.push(e.kernel_name());
        }
        v.push(b.dw.0.kernel_name());
        v.push(b.project.0.kernel_name());
    }
    v.push(m.last.0.kernel_name());
    v.sort();
    v.dedup();
    v
}

impl FastModel {
    pub fn new(model: &Model, isa: Isa) -> Result<FastModel> {
        let plan = &model.plan;
        let unsupported = |what: &str| Err(Error::Unsupported(format!("the fast engine does not run {what}")));
        let layers = &plan.layers;
        let n = layers.len();
        if n < 5
            || layers[0].role != Role::Stem
            || layers[n - 4].role != Role::LastConv
            || !matches!(layers[n - 3].op, Op::GlobalAvgPool)
            || !matches!(layers[n - 2].op, Op::Dropout { .. })
            || !matches!(layers[n - 1].op, Op::Linear)
        {
            return unsupported("a network that is not stem, blocks, last conv, pool, classifier");
        }
        let conv = |i: usize| {
            let l = &layers[i];
            let c = l.conv().expect("conv layer");
            (fold_conv(model, l), minmax(c.activation), c)
        };
        let (f, act, c) = conv(0);
        if c.kind != ConvKind::Full || c.kernel != 3 || c.dilation != 1 {
            return unsupported("a stem that is not a dense 3x3 convolution");
        }
        let stem = (PackedStem::new(isa, &f.weights, layers[0].output.c, &f.bias), act);
        let mut blocks = Vec::new();
        for b in &plan.blocks {
            let expand = b.expand.map(|i| {
                let (f, act, _) = conv(i);
                (PackedGemm::new(isa, &f.weights, b.input.c, b.hidden, &f.bias), act)
            });
            let (f, act, c) = conv(b.depthwise);
            if c.kernel != 3 {
                return unsupported("depthwise kernels other than 3x3");
            }
            let dw = (PackedDw::new(isa, &f.weights, b.hidden, &f.bias), act);
            let (f, act, _) = conv(b.project);
            let project = (PackedGemm::new(isa, &f.weights, b.hidden, b.output.c, &f.bias), act);
            blocks.push(FastBlock { expand, dw, project });
        }
        if blocks.is_empty() || plan.blocks[0].input != layers[0].output {
            return unsupported("a plan whose first block does not follow the stem");
        }
        let (f, act, _) = conv(n - 4);
        let last = (PackedGemm::new(isa, &f.weights, layers[n - 4].input.c, layers[n - 4].output.c, &f.bias), act);
        let cls = linear(model, &layers[n - 1]);
        let classifier = PackedGemm::new(isa, &cls.weights, layers[n - 1].input.c, layers[n - 1].output.c, &cls.bias);
        Ok(FastModel { isa, stem, blocks, last, classifier })
    }
}

/// Per-thread scratch.
struct Scratch {
    ring: AlignedVec,
    band: AlignedVec,
    last: AlignedVec,
    pooled: Vec<f32>,
}

/// Buffers of one image in flight: the ping-pong block outputs and, in streaming mode, the
/// chained blocks' rings (per chained block: its expanded rows, its output rows).
struct Acts {
    x: AlignedVec,
    y: AlignedVec,
    chain: Vec<(AlignedVec, AlignedVec)>,
}

impl Acts {
    fn new(s: &Schedule) -> Acts {
        let chain = (0..s.chain)
            .map(|k| {
                let (h, o) = s.chain_ring_lens(k);
                (AlignedVec::zeros(h), AlignedVec::zeros(o))
            })
            .collect();
        Acts { x: AlignedVec::zeros(s.act_len), y: AlignedVec::zeros(s.act_len), chain }
    }
}

/// Times stages when profiling.
struct Timer<'p> {
    prof: Option<&'p mut Profile>,
    t: Instant,
}

impl Timer<'_> {
    fn tick(&mut self, stage: usize, name: impl FnOnce() -> String) {
        if let Some(p) = self.prof.as_deref_mut() {
            p.add(stage, name, self.t.elapsed().as_secs_f64());
            self.t = Instant::now();
        }
    }
}

/// Seconds spent per stage, when profiling.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// (name, seconds) in network order.
    pub stages: Vec<(String, f64)>,
}

impl Profile {
    fn add(&mut self, i: usize, name: impl FnOnce() -> String, secs: f64) {
        while self.stages.len() <= i {
            self.stages.push((String::new(), 0.0));
        }
        if self.stages[i].0.is_empty() {
            self.stages[i].0 = name();
        }
        self.stages[i].1 += secs;
    }
}

/// The fast engine for one model: packed weights, the thread pool and, per input size,
/// the schedule and buffers (allocated on the first image of that size, then reused).
pub(crate) struct FastEngine {
    pub model: FastModel,
    streaming: bool,
    pool: Pool,
    state: Mutex<Option<State>>,
}

struct State {
    schedule: Schedule,
    scratch: Vec<Mutex<Scratch>>,
    acts: Vec<Mutex<Acts>>,
    partial: Mutex<AlignedVec>,
    barrier: SpinBarrier,
}

/// How one image is shared among the pool's threads.
struct Split<'a> {
    tid: usize,
    threads: usize,
    barrier: &'a SpinBarrier,
    partial: SharedBuf,
}

impl Split<'_> {
    fn single() -> Split<'static> {
        static ONE: std::sync::OnceLock<SpinBarrier> = std::sync::OnceLock::new();
        Split { tid: 0, threads: 1, barrier: ONE.get_or_init(|| SpinBarrier::new(1)), partial: SharedBuf::new(&mut []) }
    }

    /// This thread's share of `n` rows.
    fn rows(&self, n: usize) -> Range<usize> {
        let per = n / self.threads;
        let extra = n % self.threads;
        let start = self.tid * per + self.tid.min(extra);
        start..start + per + usize::from(self.tid < extra)
    }
}

impl FastEngine {
    pub fn new(model: &Model, isa: Isa, threads: usize, streaming: bool) -> Result<FastEngine> {
        Ok(FastEngine {
            model: FastModel::new(model, isa)?,
            streaming,
            pool: Pool::new(threads),
            state: Mutex::new(None),
        })
    }

    fn state_for<'a>(&self, plan: &Plan, guard: &'a mut Option<State>) -> &'a State {
        let fits = matches!(guard, Some(s) if s.schedule.image == plan.input());
        if !fits {
            let schedule = Schedule::new(plan, self.streaming);
            let t = self.pool.threads();
            let scratch = (0..t)
                .map(|_| {
                    Mutex::new(Scratch {
                        ring: AlignedVec::zeros(schedule.ring_len),
                        band: AlignedVec::zeros(schedule.band_len),
                        last: AlignedVec::zeros(schedule.last_band),
                        pooled: vec![0.0; schedule.last_c],
                    })
                })
                .collect();
            let acts = (0..t).map(|_| Mutex::new(Acts::new(&schedule))).collect();
            let partial = Mutex::new(AlignedVec::zeros(t * schedule.last_c));
            *guard = Some(State { schedule, scratch, acts, partial, barrier: SpinBarrier::new(t) });
        }
        guard.as_ref().expect("state set above")
    }

    /// Activation bytes allocated for one image of this plan's size in flight.
    pub fn activation_bytes(&self, plan: &Plan) -> usize {
        4 * Schedule::new(plan, self.streaming).activation_values(self.pool.threads())
    }

    /// Logits of `n` images (`n * classes` values). `images` holds `n` images of
    /// `plan.input()` in `layout`.
    pub fn run(
        &self,
        plan: &Plan,
        images: &[f32],
        n: usize,
        layout: Layout,
        profile: Option<&mut Profile>,
    ) -> Vec<f32> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = self.state_for(plan, &mut guard);
        let sch = &st.schedule;
        let per = sch.image.len();
        let classes = sch.classes;
        let mut logits = vec![0f32; n * classes];
        let threads = self.pool.threads();
        let img = |i: usize| Image { data: &images[i * per..(i + 1) * per], h: sch.image.h, w: sch.image.w, layout };
        if let Some(p) = profile {
            // Profiling: one thread, one image at a time, timed stage by stage.
            let mut sc = st.scratch[0].lock().unwrap();
            let mut acts = st.acts[0].lock().unwrap();
            let acts = &mut *acts;
            let (x, y) = (SharedBuf::new(&mut acts.x), SharedBuf::new(&mut acts.y));
            for i in 0..n {
                let out = &mut logits[i * classes..(i + 1) * classes];
                let timer = Timer { prof: Some(&mut *p), t: Instant::now() };
                self.image(sch, img(i), (x, y, &mut acts.chain), &mut sc, &Split::single(), out, timer);
            }
            return logits;
        }
        if n == 1 && threads > 1 {
            let out = SharedBuf::new(&mut logits);
            let mut partial = st.partial.lock().unwrap();
            let partial = SharedBuf::new(&mut partial);
            // Thread 0's buffers hold the image; every thread writes disjoint rows of x and y
            // between barriers, and only thread 0 uses the chain rings.
            let mut acts0 = st.acts[0].lock().unwrap();
            let acts0 = &mut *acts0;
            let (x, y) = (SharedBuf::new(&mut acts0.x), SharedBuf::new(&mut acts0.y));
            let chain0 = Mutex::new(&mut acts0.chain);
            let job = |tid: usize| {
                let _g = st.barrier.guard();
                let mut sc = st.scratch[tid].lock().unwrap();
                let split = Split { tid, threads, barrier: &st.barrier, partial };
                // SAFETY: only thread 0 writes the logits (after the last barrier).
                let out = unsafe { out.slice_mut(0..if tid == 0 { classes } else { 0 }) };
                let mut none = Vec::new();
                let mut chain = if tid == 0 { Some(chain0.lock().unwrap()) } else { None };
                let chain: &mut Vec<_> = match chain.as_deref_mut() {
                    Some(c) => c,
                    None => &mut none,
                };
                self.image(sch, img(0), (x, y, chain), &mut sc, &split, out, Timer { prof: None, t: Instant::now() });
            };
            self.pool.run(&job);
            return logits;
        }
        // Several images (or one thread): each thread takes whole images.
        let out = SharedBuf::new(&mut logits);
        let job = |tid: usize| {
            let mut sc = st.scratch[tid].lock().unwrap();
            let mut acts = st.acts[tid].lock().unwrap();
            let acts = &mut *acts;
            let (x, y) = (SharedBuf::new(&mut acts.x), SharedBuf::new(&mut acts.y));
            for i in (tid..n).step_by(threads) {
                // SAFETY: image i's logits are written by one thread only.
                let o = unsafe { out.slice_mut(i * classes..(i + 1) * classes) };
                let timer = Timer { prof: None, t: Instant::now() };
                self.image(sch, img(i), (x, y, &mut acts.chain), &mut sc, &Split::single(), o, timer);
            }
        };
        self.pool.run(&job);
        logits
    }

    /// One image, on one thread or split across the pool's threads (`sp`).
    #[allow(clippy::too_many_arguments)]
    fn image(
        &self,
        sch: &Schedule,
        img: Image,
        bufs: (SharedBuf, SharedBuf, &mut Vec<(AlignedVec, AlignedVec)>),
        sc: &mut Scratch,
        sp: &Split,
        out: &mut [f32],
        mut timer: Timer,
    ) {
        let m = &self.model;
        let (mut x, mut y, chain_bufs) = bufs;
        let mut src = Src::Image(img, sch.stem_geom);
        if !sch.stem_fused {
            let s = sch.stem_out;
            let rows = sp.rows(s.h);
            let len = s.w * s.c;
            // SAFETY: threads write disjoint rows; the barrier orders them before the reads.
            let dst = unsafe { y.slice_mut(rows.start * len..rows.end * len) };
            for (i, oy) in rows.enumerate() {
                stem_row(&m.stem.0, img, oy, sch.stem_geom, m.stem.1, &mut dst[i * len..(i + 1) * len]);
            }
            sp.barrier.wait();
            std::mem::swap(&mut x, &mut y);
            src = Src::Rows(Rows::new(x, len, s.h));
            timer.tick(0, || "features.0 stem".into());
        }
        let first_stage = usize::from(!sch.stem_fused);
        let mut k0 = 0;
        if sch.chain > 0 {
            // Streaming: the chained blocks run on the first thread, pulled from the last.
            if sp.tid == 0 {
                let last = sch.chain - 1;
                let g = &sch.geos[last];
                let out_rows = Rows::new(y, g.w_out * g.cout, g.h_out);
                let mut chain = Chain {
                    m,
                    sch,
                    src,
                    acts: chain_bufs,
                    band: &mut sc.band,
                    next_out: vec![0; sch.chain],
                    hidden_next: vec![0; sch.chain],
                    prof: timer.prof.as_deref_mut(),
                    first_stage,
                };
                chain.produce(last, g.h_out, out_rows);
            }
            sp.barrier.wait();
            let g = &sch.geos[sch.chain - 1];
            std::mem::swap(&mut x, &mut y);
            src = Src::Rows(Rows::new(x, g.w_out * g.cout, g.h_out));
            k0 = sch.chain;
            timer.t = Instant::now();
        }
        for k in k0..m.blocks.len() {
            let g = &sch.geos[k];
            let out_rows = Rows::new(y, g.w_out * g.cout, g.h_out);
            let rows = sp.rows(g.h_out);
            let mut hidden = Hidden { ring: &mut sc.ring, next: 0 };
            let mut oy = rows.start;
            while oy < rows.end {
                let end = (oy + g.band).min(rows.end);
                block::band(m, &m.blocks[k], g, src, out_rows, oy..end, &mut hidden, &mut sc.band);
                oy = end;
            }
            sp.barrier.wait();
            src = Src::Rows(out_rows);
            std::mem::swap(&mut x, &mut y);
            timer.tick(first_stage + k, || format!("features.{} block", k + 1));
        }
        let stages = first_stage + m.blocks.len();
        // SAFETY: all threads only read x now.
        let last_in = unsafe { x.slice(0..sch.last_in.len()) };
        sc.pooled.fill(0.0);
        self.last_rows(sch, last_in, sp.rows(sch.last_in.h), sc);
        let c = sch.last_c;
        let pooled: Vec<f32> = if sp.threads > 1 {
            // SAFETY: each thread writes its own slot.
            unsafe { sp.partial.slice_mut(sp.tid * c..(sp.tid + 1) * c) }.copy_from_slice(&sc.pooled);
            sp.barrier.wait();
            if sp.tid != 0 {
                return;
            }
            // SAFETY: the barrier ordered every slot's write before this read.
            let parts = unsafe { sp.partial.slice(0..sp.threads * c) };
            (0..c).map(|j| (0..sp.threads).map(|t| parts[t * c + j]).sum::<f32>()).collect()
        } else {
            sc.pooled.clone()
        };
        let inv = 1.0 / (sch.last_in.h * sch.last_in.w) as f32;
        let pooled: Vec<f32> = pooled.iter().map(|v| v * inv).collect();
        timer.tick(stages, || "last conv + pool".into());
        gemm(1, &pooled, c, &m.classifier, out, sch.classes, MinMax::NONE, None);
        timer.tick(stages + 1, || "classifier".into());
    }

    /// Last 1x1 convolution over input rows `rows`, summed into `sc.pooled` band by band.
    fn last_rows(&self, sch: &Schedule, input: &[f32], rows: Range<usize>, sc: &mut Scratch) {
        let s = sch.last_in;
        let c = sch.last_c;
        let band = (sc.last.len() / (s.w * c)).max(1);
        let (w, act) = &self.model.last;
        let mut r0 = rows.start;
        while r0 < rows.end {
            let r1 = (r0 + band).min(rows.end);
            let px = (r1 - r0) * s.w;
            let dst = &mut sc.last[..px * c];
            gemm(px, &input[r0 * s.w * s.c..r1 * s.w * s.c], s.c, w, dst, c, *act, None);
            for row in dst.chunks_exact(c) {
                for (p, v) in sc.pooled.iter_mut().zip(row) {
                    *p += v;
                }
            }
            r0 = r1;
        }
    }
}

/// The streaming chain of leading blocks, pulled from its last block.
struct Chain<'a, 'p> {
    m: &'a FastModel,
    sch: &'a Schedule,
    /// Input of the first chained block.
    src: Src<'a>,
    acts: &'a mut Vec<(AlignedVec, AlignedVec)>,
    band: &'a mut [f32],
    next_out: Vec<usize>,
    hidden_next: Vec<usize>,
    prof: Option<&'p mut Profile>,
    first_stage: usize,
}

impl Chain<'_, '_> {
    /// The output rows of chained block `k`: a ring, or `last_out` for the last one.
    fn out_rows(&mut self, k: usize, last_out: Rows) -> Rows {
        let g = &self.sch.geos[k];
        match self.sch.chain_out_cap.get(k) {
            Some(&cap) => Rows::new(SharedBuf::new(&mut self.acts[k].1), g.w_out * g.cout, cap),
            None => last_out,
        }
    }

    /// Makes output rows `..upto` of chained block `k` available.
    fn produce(&mut self, k: usize, upto: usize, last_out: Rows) {
        let g = self.sch.geos[k];
        while self.next_out[k] < upto {
            let oy0 = self.next_out[k];
            let oy1 = (oy0 + g.band).min(g.h_out);
            let (_, hi) = g.hidden_rows(oy0..oy1);
            let src = if k == 0 {
                self.src
            } else {
                self.produce(k - 1, hi + 1, last_out);
                Src::Rows(self.out_rows(k - 1, last_out))
            };
            let t = Instant::now();
            let out = self.out_rows(k, last_out);
            let mut hidden = Hidden { ring: &mut self.acts[k].0, next: self.hidden_next[k] };
            block::band(self.m, &self.m.blocks[k], &g, src, out, oy0..oy1, &mut hidden, self.band);
            self.hidden_next[k] = hidden.next;
            self.next_out[k] = oy1;
            if let Some(p) = self.prof.as_deref_mut() {
                p.add(
                    self.first_stage + k,
                    || format!("features.{} block (streamed)", k + 1),
                    t.elapsed().as_secs_f64(),
                );
            }
        }
    }
}
