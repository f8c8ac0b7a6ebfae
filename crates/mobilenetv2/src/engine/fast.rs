//! The fast executor: each inverted residual block runs fused, a band of output rows at a
//! time, so its expanded tensor never exists whole (the paper's section 5).
//!
//! For a band of output rows, the block computes the expanded rows it needs (1x1 expand
//! GEMM, or the stem for the first block) into a ring of rows that later bands reuse, runs
//! the depthwise kernel on them into a band buffer, and projects that with the residual
//! added in the GEMM epilogue. Only the narrow block outputs are materialised, in two
//! ping-pong buffers. The last 1x1 convolution is pooled as it is produced, band by band.
//!
//! Threads: a batch of several images is shared out image by image, with no
//! synchronisation. A single image is split by output rows inside every block (each thread
//! recomputes the one or two expanded rows at the seam), with a barrier between blocks.
#![allow(unsafe_code)]

use std::ops::Range;
use std::sync::Mutex;
use std::time::Instant;

use mnv2_kernels::dwconv::{dwconv_row, DwRow, PackedDw};
use mnv2_kernels::gemm::{gemm, PackedGemm};
use mnv2_kernels::stem::{stem_row, Image, Layout, PackedStem, StemGeom};
use mnv2_kernels::{AlignedVec, Isa, MinMax};

use super::fold::{fold_conv, linear};
use super::pool::{Pool, SpinBarrier};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::plan::{ConvKind, Op, Plan, Role, Shape};

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

/// Geometry of one block at one input size.
#[derive(Clone, Copy, Debug)]
struct Geo {
    h_in: usize,
    w_in: usize,
    cin: usize,
    hidden: usize,
    h_out: usize,
    w_out: usize,
    cout: usize,
    stride: usize,
    dilation: usize,
    pad_top: usize,
    pad_left: usize,
    residual: bool,
    /// Output rows per band.
    band: usize,
    /// Rows in the ring of expanded rows (0 when the block reads its input directly).
    ring: usize,
}

impl Geo {
    /// Expanded-tensor rows a band of output rows reads, clamped to the input.
    fn hidden_rows(&self, oy: Range<usize>) -> (usize, usize) {
        let lo = (oy.start * self.stride).saturating_sub(self.pad_top);
        let hi = ((oy.end - 1) * self.stride + 2 * self.dilation).saturating_sub(self.pad_top).min(self.h_in - 1);
        (lo, hi)
    }
}

/// Everything about one input size: per-block geometry and buffer sizes.
pub(crate) struct Schedule {
    pub image: Shape,
    geos: Vec<Geo>,
    stem_geom: StemGeom,
    /// The first block computes its expanded rows with the stem (no expand conv): the stem
    /// output is never materialised.
    stem_fused: bool,
    last_in: Shape,
    last_c: usize,
    classes: usize,
    /// Values per thread: ring, band buffer, last-conv band.
    ring_len: usize,
    band_len: usize,
    last_band: usize,
    /// Values of each ping-pong activation buffer.
    act_len: usize,
}

/// Output rows per band: enough pixels for a few GEMM tiles in the projection.
fn band_rows(w_out: usize, h_out: usize) -> usize {
    64usize.div_ceil(w_out).clamp(1, h_out)
}

impl Schedule {
    pub fn new(plan: &Plan) -> Schedule {
        let l0 = &plan.layers[0];
        let stem = l0.conv().expect("stem");
        // The stem's output rows can feed the first block directly unless that block reads
        // them twice (an expand conv, or a residual).
        let stem_fused = plan.blocks[0].expand.is_none() && !plan.blocks[0].residual;
        let mut act_len = if stem_fused { 0 } else { l0.output.len() };
        let mut geos = Vec::new();
        for b in &plan.blocks {
            let dw = plan.layers[b.depthwise].conv().expect("depthwise");
            let band = band_rows(b.output.w, b.output.h);
            let reads_input = b.expand.is_none() && !(stem_fused && b.index == plan.blocks[0].index);
            let ring = if reads_input { 0 } else { ((band - 1) * dw.stride + 2 * dw.dilation + 1).min(b.input.h) };
            geos.push(Geo {
                h_in: b.input.h,
                w_in: b.input.w,
                cin: b.input.c,
                hidden: b.hidden,
                h_out: b.output.h,
                w_out: b.output.w,
                cout: b.output.c,
                stride: dw.stride,
                dilation: dw.dilation,
                pad_top: dw.pad.top,
                pad_left: dw.pad.left,
                residual: b.residual,
                band,
                ring,
            });
            act_len = act_len.max(b.output.len());
        }
        let n = plan.layers.len();
        let last = &plan.layers[n - 4];
        let last_band = band_rows(last.output.w, last.output.h) * last.output.w * last.output.c;
        Schedule {
            image: plan.input(),
            stem_geom: StemGeom {
                w_out: l0.output.w,
                stride: stem.stride,
                pad_top: stem.pad.top,
                pad_left: stem.pad.left,
            },
            stem_fused,
            ring_len: geos.iter().map(|g| g.ring * g.w_in * g.hidden).max().unwrap_or(0),
            band_len: geos.iter().map(|g| g.band * g.w_out * g.hidden).max().unwrap_or(0),
            geos,
            last_in: last.input,
            last_c: last.output.c,
            classes: plan.output().c,
            last_band,
            act_len,
        }
    }

    /// Bytes of activation memory one image needs (ping-pong buffers plus one thread's
    /// scratch), as the engine allocates it.
    pub fn activation_bytes(&self, threads: usize) -> usize {
        4 * (2 * self.act_len + threads * (self.ring_len + self.band_len + self.last_band + self.last_c))
    }
}

/// Per-thread scratch.
struct Scratch {
    ring: AlignedVec,
    band: AlignedVec,
    last: AlignedVec,
    pooled: Vec<f32>,
}

/// Buffers of one image in flight.
struct Acts {
    x: AlignedVec,
    y: AlignedVec,
}

/// A raw view of a buffer that several threads write in disjoint parts.
#[derive(Clone, Copy)]
struct SharedBuf {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: used only to hand disjoint row ranges of one buffer to pool threads, and to read
// whole buffers after a barrier has ordered the writes before the reads.
unsafe impl Send for SharedBuf {}
unsafe impl Sync for SharedBuf {}

impl SharedBuf {
    fn new(v: &mut [f32]) -> SharedBuf {
        SharedBuf { ptr: v.as_mut_ptr(), len: v.len() }
    }

    /// # Safety
    /// No other thread may access `range` while the slice lives.
    unsafe fn slice_mut<'a>(self, range: Range<usize>) -> &'a mut [f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len())
    }

    /// # Safety
    /// No thread may write the buffer while the slice lives.
    unsafe fn slice<'a>(self, range: Range<usize>) -> &'a [f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        std::slice::from_raw_parts(self.ptr.add(range.start), range.len())
    }
}

/// Where a block reads its input rows.
#[derive(Clone, Copy)]
enum Src<'a> {
    /// The stem's output rows, computed from the image on demand.
    Image(Image<'a>),
    Tensor(SharedBuf),
}

/// Seconds spent per stage, when profiling.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// (name, seconds) in network order.
    pub stages: Vec<(String, f64)>,
}

impl Profile {
    fn add(&mut self, i: usize, name: impl FnOnce() -> String, secs: f64) {
        if self.stages.len() <= i {
            self.stages.push((name(), 0.0));
        }
        self.stages[i].1 += secs;
    }
}

/// The fast engine for one model: packed weights, the thread pool and, per input size,
/// the schedule and buffers (allocated on the first image of that size, then reused).
pub(crate) struct FastEngine {
    pub model: FastModel,
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

impl FastEngine {
    pub fn new(model: &Model, isa: Isa, threads: usize) -> Result<FastEngine> {
        Ok(FastEngine { model: FastModel::new(model, isa)?, pool: Pool::new(threads), state: Mutex::new(None) })
    }

    fn state_for<'a>(&self, plan: &Plan, guard: &'a mut Option<State>) -> &'a State {
        let fits = matches!(guard, Some(s) if s.schedule.image == plan.input());
        if !fits {
            let schedule = Schedule::new(plan);
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
            let acts = (0..t)
                .map(|_| {
                    Mutex::new(Acts { x: AlignedVec::zeros(schedule.act_len), y: AlignedVec::zeros(schedule.act_len) })
                })
                .collect();
            let partial = Mutex::new(AlignedVec::zeros(t * schedule.last_c));
            *guard = Some(State { schedule, scratch, acts, partial, barrier: SpinBarrier::new(t) });
        }
        guard.as_ref().expect("state set above")
    }

    /// Activation bytes allocated for images of this plan's size.
    pub fn activation_bytes(&self, plan: &Plan) -> usize {
        Schedule::new(plan).activation_bytes(self.pool.threads())
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
            for i in 0..n {
                let out = &mut logits[i * classes..(i + 1) * classes];
                self.image(sch, img(i), &mut acts, &mut sc, out, Some(p));
            }
            return logits;
        }
        if n == 1 && threads > 1 {
            let out = SharedBuf::new(&mut logits);
            let mut partial = st.partial.lock().unwrap();
            let partial = SharedBuf::new(&mut partial);
            let mut acts0 = st.acts[0].lock().unwrap();
            let acts = (SharedBuf::new(&mut acts0.x), SharedBuf::new(&mut acts0.y));
            let job = |tid: usize| {
                let _g = st.barrier.guard();
                let mut sc = st.scratch[tid].lock().unwrap();
                let split = Split { tid, threads, barrier: &st.barrier, acts, partial };
                // SAFETY: only thread 0 writes the logits (after the last barrier).
                let out = unsafe { out.slice_mut(0..if tid == 0 { classes } else { 0 }) };
                self.image_split(sch, img(0), &mut sc, &split, out);
            };
            self.pool.run(&job);
            return logits;
        }
        // Several images (or one thread): each thread takes whole images.
        let out = SharedBuf::new(&mut logits);
        let job = |tid: usize| {
            let mut sc = st.scratch[tid].lock().unwrap();
            let mut acts = st.acts[tid].lock().unwrap();
            for i in (tid..n).step_by(threads) {
                // SAFETY: image i's logits are written by one thread only.
                let o = unsafe { out.slice_mut(i * classes..(i + 1) * classes) };
                self.image(sch, img(i), &mut acts, &mut sc, o, None);
            }
        };
        self.pool.run(&job);
        logits
    }

    /// One image on one thread.
    fn image(
        &self,
        sch: &Schedule,
        img: Image,
        acts: &mut Acts,
        sc: &mut Scratch,
        out: &mut [f32],
        mut prof: Option<&mut Profile>,
    ) {
        let m = &self.model;
        let (mut x, mut y) = (SharedBuf::new(&mut acts.x), SharedBuf::new(&mut acts.y));
        let mut t = Instant::now();
        let mut src = Src::Image(img);
        let mut stage = 0;
        if !sch.stem_fused {
            let g = &sch.geos[0];
            // SAFETY: single thread.
            let dst = unsafe { y.slice_mut(0..g.h_in * g.w_in * g.cin) };
            for oy in 0..g.h_in {
                let row = &mut dst[oy * g.w_in * g.cin..(oy + 1) * g.w_in * g.cin];
                stem_row(&m.stem.0, img, oy, sch.stem_geom, m.stem.1, row);
            }
            std::mem::swap(&mut x, &mut y);
            src = Src::Tensor(x);
            if let Some(p) = prof.as_deref_mut() {
                p.add(stage, || "features.0 stem".into(), t.elapsed().as_secs_f64());
                t = Instant::now();
                stage += 1;
            }
        }
        for (bi, (b, g)) in m.blocks.iter().zip(&sch.geos).enumerate() {
            self.block(b, g, sch, src, y, 0..g.h_out, sc);
            src = Src::Tensor(y);
            std::mem::swap(&mut x, &mut y);
            if let Some(p) = prof.as_deref_mut() {
                p.add(stage, || format!("features.{} block", bi + 1), t.elapsed().as_secs_f64());
                t = Instant::now();
                stage += 1;
            }
        }
        // SAFETY: single thread.
        let last_in = unsafe { x.slice(0..sch.last_in.len()) };
        sc.pooled.fill(0.0);
        self.last_rows(sch, last_in, 0..sch.last_in.h, sc);
        let inv = 1.0 / (sch.last_in.h * sch.last_in.w) as f32;
        let pooled: Vec<f32> = sc.pooled.iter().map(|v| v * inv).collect();
        if let Some(p) = prof.as_deref_mut() {
            p.add(stage, || "last conv + pool".into(), t.elapsed().as_secs_f64());
            t = Instant::now();
            stage += 1;
        }
        gemm(1, &pooled, pooled.len(), &m.classifier, out, sch.classes, MinMax::NONE, None);
        if let Some(p) = prof {
            p.add(stage, || "classifier".into(), t.elapsed().as_secs_f64());
        }
    }

    /// One image split across the pool's threads.
    fn image_split(&self, sch: &Schedule, img: Image, sc: &mut Scratch, sp: &Split, out: &mut [f32]) {
        let m = &self.model;
        let (mut x, mut y) = sp.acts;
        let mut src = Src::Image(img);
        if !sch.stem_fused {
            let g = &sch.geos[0];
            let rows = sp.rows(g.h_in);
            let len = g.w_in * g.cin;
            // SAFETY: threads write disjoint rows; the barrier orders them before the reads.
            let dst = unsafe { y.slice_mut(rows.start * len..rows.end * len) };
            for (i, oy) in rows.enumerate() {
                stem_row(&m.stem.0, img, oy, sch.stem_geom, m.stem.1, &mut dst[i * len..(i + 1) * len]);
            }
            sp.barrier.wait();
            std::mem::swap(&mut x, &mut y);
            src = Src::Tensor(x);
        }
        for (b, g) in m.blocks.iter().zip(&sch.geos) {
            self.block(b, g, sch, src, y, sp.rows(g.h_out), sc);
            sp.barrier.wait();
            src = Src::Tensor(y);
            std::mem::swap(&mut x, &mut y);
        }
        // SAFETY: all threads only read x now.
        let last_in = unsafe { x.slice(0..sch.last_in.len()) };
        sc.pooled.fill(0.0);
        self.last_rows(sch, last_in, sp.rows(sch.last_in.h), sc);
        let c = sch.last_c;
        // SAFETY: each thread writes its own slot.
        unsafe { sp.partial.slice_mut(sp.tid * c..(sp.tid + 1) * c) }.copy_from_slice(&sc.pooled);
        sp.barrier.wait();
        if sp.tid == 0 {
            let inv = 1.0 / (sch.last_in.h * sch.last_in.w) as f32;
            // SAFETY: the barrier ordered every slot's write before this read.
            let parts = unsafe { sp.partial.slice(0..sp.threads * c) };
            let pooled: Vec<f32> =
                (0..c).map(|j| (0..sp.threads).map(|t| parts[t * c + j]).sum::<f32>() * inv).collect();
            gemm(1, &pooled, c, &m.classifier, out, sch.classes, MinMax::NONE, None);
        }
    }

    /// Output rows `rows` of one block into `out` (the whole output tensor).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        b: &FastBlock,
        g: &Geo,
        sch: &Schedule,
        src: Src,
        out: SharedBuf,
        rows: Range<usize>,
        sc: &mut Scratch,
    ) {
        let m = &self.model;
        let ring_row = g.w_in * g.hidden;
        let in_row = g.w_in * g.cin;
        let mut next = 0usize;
        let dwg = DwRow { w_in: g.w_in, w_out: g.w_out, stride: g.stride, dilation: g.dilation, pad_left: g.pad_left };
        let mut oy0 = rows.start;
        while oy0 < rows.end {
            let oy1 = (oy0 + g.band).min(rows.end);
            let (lo, hi) = g.hidden_rows(oy0..oy1);
            // 1. Expanded rows lo..=hi into the ring (those not there from the last band).
            if g.ring > 0 {
                let mut r = next.max(lo);
                while r <= hi {
                    let slot = r % g.ring;
                    let run = (hi + 1 - r).min(g.ring - slot);
                    let dst = &mut sc.ring[slot * ring_row..(slot + run) * ring_row];
                    match (src, &b.expand) {
                        (Src::Image(img), _) => {
                            for j in 0..run {
                                stem_row(
                                    &m.stem.0,
                                    img,
                                    r + j,
                                    sch.stem_geom,
                                    m.stem.1,
                                    &mut dst[j * ring_row..(j + 1) * ring_row],
                                );
                            }
                        }
                        (Src::Tensor(input), Some((w, act))) => {
                            // SAFETY: the input tensor is only read during this block.
                            let a = unsafe { input.slice(r * in_row..(r + run) * in_row) };
                            gemm(run * g.w_in, a, g.cin, w, dst, g.hidden, *act, None);
                        }
                        (Src::Tensor(_), None) => unreachable!("a ring without an expand conv"),
                    }
                    r += run;
                }
                next = hi + 1;
            }
            // 2. Depthwise, one output row at a time, into the band buffer.
            let band_row = g.w_out * g.hidden;
            for oy in oy0..oy1 {
                let rows3: [Option<&[f32]>; 3] = std::array::from_fn(|ky| {
                    let iy = (oy * g.stride + ky * g.dilation) as isize - g.pad_top as isize;
                    if iy < 0 || iy as usize >= g.h_in {
                        return None;
                    }
                    let iy = iy as usize;
                    Some(match src {
                        _ if g.ring > 0 => &sc.ring[(iy % g.ring) * ring_row..(iy % g.ring + 1) * ring_row],
                        // SAFETY: the input tensor is only read during this block.
                        Src::Tensor(input) => unsafe { input.slice(iy * in_row..(iy + 1) * in_row) },
                        Src::Image(_) => unreachable!("the stem always fills a ring"),
                    })
                });
                let dst = &mut sc.band[(oy - oy0) * band_row..(oy - oy0 + 1) * band_row];
                dwconv_row(&b.dw.0, rows3, dwg, b.dw.1, dst);
            }
            // 3. Project the band, adding the residual in the epilogue.
            let pixels = (oy1 - oy0) * g.w_out;
            let out_row = g.w_out * g.cout;
            // SAFETY: this thread owns output rows oy0..oy1 of the block.
            let dst = unsafe { out.slice_mut(oy0 * out_row..oy1 * out_row) };
            let residual = match src {
                // SAFETY: read-only during the block; same shape as the output.
                Src::Tensor(input) if g.residual => Some((unsafe { input.slice(oy0 * in_row..oy1 * in_row) }, g.cin)),
                _ => None,
            };
            let (w, act) = &b.project;
            gemm(pixels, &sc.band[..pixels * g.hidden], g.hidden, w, dst, g.cout, *act, residual);
            oy0 = oy1;
        }
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

/// How one image is shared among the pool's threads.
struct Split<'a> {
    tid: usize,
    threads: usize,
    barrier: &'a SpinBarrier,
    acts: (SharedBuf, SharedBuf),
    partial: SharedBuf,
}

impl Split<'_> {
    /// This thread's share of `n` rows.
    fn rows(&self, n: usize) -> Range<usize> {
        let per = n / self.threads;
        let extra = n % self.threads;
        let start = self.tid * per + self.tid.min(extra);
        start..start + per + usize::from(self.tid < extra)
    }
}
