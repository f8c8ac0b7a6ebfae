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

mod block;
mod f32net;
mod head;
mod pw;
mod qnet;
mod schedule;

use std::ops::Range;
use std::sync::Mutex;
use std::time::Instant;

use mnv2_kernels::aligned::Zeroable;
use mnv2_kernels::dwconv::DwRow;
use mnv2_kernels::stem::{Image, Layout, StemGeom};
use mnv2_kernels::{AlignedVec, Isa, MinMax};

use mnv2_kernels::exec::{share, Phase, Pool, Rows, RowsMut, Team, Turns};

use crate::error::{Error, Result};
use crate::plan::{ConvKind, Plan, Role};
use block::{Hidden, Src};
pub(crate) use schedule::RowSlots;
use schedule::Schedule;

pub(crate) use f32net::F32Net;
pub(crate) use head::HeadNet;
pub(crate) use qnet::QNet;

fn minmax(a: crate::plan::Activation) -> MinMax {
    let (min, max) = a.bounds();
    MinMax { min, max }
}

/// A backbone tensor that a detection or segmentation head reads, materialised once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TapAt {
    /// The expanded tensor (after its activation) of block `k` (position in `plan.blocks`).
    Expansion(usize),
    /// The output of block `k`.
    Block(usize),
    /// The output of the last 1x1 convolution.
    LastConv,
}

/// The backbone layers the head of a non-classifier plan reads (through [`Layer::source`],
/// a concatenation, or by following the backbone), in layer order, with where each is in the
/// fused schedule.
///
/// [`Layer::source`]: crate::plan::Layer::source
pub(crate) fn head_taps(plan: &Plan) -> Result<Vec<(usize, TapAt)>> {
    let last = plan.last_conv;
    let mut read: Vec<usize> = Vec::new();
    for (i, l) in plan.layers.iter().enumerate().skip(last + 1) {
        read.push(l.source.unwrap_or(i - 1));
        if let crate::plan::Op::Concat { sources } = &l.op {
            read.extend(sources);
        }
    }
    read.retain(|&i| i <= last);
    read.sort_unstable();
    read.dedup();
    read.into_iter()
        .map(|i| {
            let at = if i == last && plan.layers[i].role == Role::LastConv {
                Some(TapAt::LastConv)
            } else {
                plan.blocks.iter().position(|b| b.expand == Some(i) || b.project == i).map(|k| {
                    if plan.blocks[k].project == i {
                        TapAt::Block(k)
                    } else {
                        TapAt::Expansion(k)
                    }
                })
            };
            match at {
                Some(TapAt::Expansion(k)) if plan.blocks[k].residual => Err(Error::Unsupported(format!(
                    "the fast engine does not tap the expansion of block {} (it has a shortcut)",
                    plan.blocks[k].index
                ))),
                Some(at) => Ok((i, at)),
                None => Err(Error::Unsupported(format!(
                    "the fast engine does not tap layer {} (only expansions, block outputs and the last conv)",
                    plan.layers[i].name
                ))),
            }
        })
        .collect()
}

/// Fails unless the plan is stem, inverted residual blocks (3x3 depthwise), then either the
/// last conv, pool, dropout and classifier, or a head reading backbone tensors that
/// [`head_taps`] can materialise: what the fused executor runs.
fn check_structure(plan: &Plan) -> Result<()> {
    let unsupported = |what: &str| Err(Error::Unsupported(format!("the fast engine does not run {what}")));
    let layers = &plan.layers;
    match plan.head {
        crate::plan::Head::Classifier(head) => {
            let chain = [plan.last_conv, head.pool, head.dropout, head.classifier];
            if layers[plan.last_conv].role != Role::LastConv
                || chain.windows(2).any(|w| w[1] != w[0] + 1)
                || chain[3] + 1 != layers.len()
                || layers.iter().any(|l| l.source.is_some())
            {
                return unsupported("a network that is not stem, blocks, last conv, pool, classifier");
            }
        }
        _ => {
            if layers[..=plan.last_conv].iter().any(|l| l.source.is_some()) {
                return unsupported("a backbone whose layers do not follow each other");
            }
            head_taps(plan)?;
        }
    }
    if layers[plan.stem()].role != Role::Stem {
        return unsupported("a network that does not start with its stem");
    }
    let stem = layers[0].conv().expect("stem conv");
    if stem.kind != ConvKind::Full || stem.kernel != 3 || stem.dilation != 1 {
        return unsupported("a stem that is not a dense 3x3 convolution");
    }
    if plan.blocks.iter().any(|b| layers[b.depthwise].conv().expect("depthwise").kernel != 3) {
        return unsupported("depthwise kernels other than 3x3");
    }
    if plan.blocks.is_empty() || plan.blocks[0].input != layers[0].output {
        return unsupported("a plan whose first block does not follow the stem");
    }
    Ok(())
}

/// A network compiled for the fused executor: what each stage computes, on activations of
/// element `T` (f32, or u8 for int8; the expanded rows too). The executor owns the order, the
/// bands, the buffers and threads; the slots its rows take ([`RowSlots`]) size them.
pub(crate) trait Net: RowSlots + Send + Sync {
    /// Activation element (block inputs and outputs, expanded rows, depthwise outputs).
    type T: Zeroable + Default;
    /// The last conv sums its rows in its epilogue (no scratch for its output rows).
    const POOLS_IN_EPILOGUE: bool;
    /// An image split across threads shares the small maps out by pixels (see
    /// [`schedule::Geo::pixels`]): where that was measured faster than by rows.
    fn splits_by_pixels(&self) -> bool {
        false
    }
    /// Pixels a fast-mode band of output rows holds at least: the projection's rows per call,
    /// and with the expanded rows it reads, the working set of a block.
    fn band_pixels(&self) -> usize {
        schedule::BAND_PIXELS
    }
    fn isa(&self) -> Isa;
    fn kernel_names(&self) -> Vec<&'static str>;
    /// Stem output row `oy` into `out` (a ring row, or a materialised activation when the
    /// first block has an expand conv).
    fn stem_row(&self, img: Image, oy: usize, g: StemGeom, out: &mut [Self::T]);
    /// Stem output row `oy` as a row of block 0's ring (the stem feeds the first block
    /// directly), for the depthwise rows of geometry `dw`: [`Net::stem_row`] unless the net
    /// packs those rows ([`RowSlots::hidden_row`] of block 0).
    fn stem_hidden_row(&self, _dw: DwRow, img: Image, oy: usize, g: StemGeom, out: &mut [Self::T]) {
        self.stem_row(img, oy, g, out)
    }
    /// Bytes the stem kernel stages per thread for rows of geometry `g`.
    fn stem_staging(&self, g: StemGeom) -> usize;
    /// Bytes block `k`'s depthwise kernel stages per thread for rows of geometry `g`.
    fn dw_staging(&self, k: usize, g: DwRow) -> usize;
    /// The expand 1x1 conv of block `k` over `m` pixels (into ring rows, or into the expanded
    /// tensor materialised whole because a head or a pixel split reads it), for the
    /// depthwise rows of geometry `g` (which a net may read in a layout of its own).
    #[allow(clippy::too_many_arguments)]
    fn expand(&self, k: usize, g: DwRow, m: usize, a: &[Self::T], lda: usize, out: &mut [Self::T], ldc: usize);
    /// Output rows of block `k`'s depthwise conv, one per triple of `rows` (expanded rows, or
    /// the block's input rows: a block without an expand conv that the stem does not feed
    /// directly), into `out` one after the other ([`RowSlots::band_row`] slots each).
    fn dw_rows(&self, k: usize, rows: &[[Option<&[Self::T]>; 3]], g: DwRow, out: &mut [Self::T]);
    /// The projection of block `k` over `m` pixels, with the block input added if `res`.
    #[allow(clippy::too_many_arguments)]
    fn project(
        &self,
        k: usize,
        m: usize,
        a: &[Self::T],
        lda: usize,
        out: &mut [Self::T],
        ldc: usize,
        res: Option<(&[Self::T], usize)>,
    );
    /// The last 1x1 conv over `m` pixels, its outputs added into `pooled` (real units).
    fn last_rows(&self, m: usize, a: &[Self::T], lda: usize, pooled: &mut [f32], scratch: &mut [f32]);
    /// The classifier's logits of column panels `panels` (of `classifier_panels().1` columns
    /// each) from the pooled features, into `out` (all the logits; other columns untouched).
    fn classify(&self, pooled: &[f32], out: &mut [f32], panels: Range<usize>);
    /// (number, width) of the classifier's column panels.
    fn classifier_panels(&self) -> (usize, usize);
    /// The last 1x1 conv over `m` pixels, its outputs (real units) into `out` (row stride `ldc`).
    fn last_conv_rows(&self, m: usize, a: &[Self::T], lda: usize, out: &mut [f32], ldc: usize);
    /// Activation values of a tapped tensor in real units.
    fn tap_values(&self, tap: TapAt, src: &[Self::T], dst: &mut [f32]);
}

/// Per-thread scratch.
struct Scratch<T: Zeroable> {
    ring: AlignedVec<T>,
    band: AlignedVec<T>,
    last: AlignedVec,
    pooled: Vec<f32>,
}

/// Per chained block (streaming mode): its ring of expanded rows, the ring of its output rows.
type ChainRings<T> = Vec<(AlignedVec<T>, AlignedVec<T>)>;

/// Buffers of one image in flight: the ping-pong block outputs, the side buffer of a team
/// (see [`schedule::Geo::pixels`]) and the chain rings.
struct Acts<T: Zeroable> {
    x: AlignedVec<T>,
    y: AlignedVec<T>,
    side: AlignedVec<T>,
    chain: ChainRings<T>,
}

impl<T: Zeroable> Acts<T> {
    fn new(s: &Schedule, side_len: usize) -> Acts<T> {
        let chain = (0..s.chain)
            .map(|k| {
                let (h, o) = s.chain_ring_lens(k);
                (AlignedVec::zeros(h), AlignedVec::zeros(o))
            })
            .collect();
        Acts {
            x: AlignedVec::zeros(s.act_len),
            y: AlignedVec::zeros(s.act_len),
            side: AlignedVec::zeros(side_len),
            chain,
        }
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
    /// Per block: seconds in the expand conv (the stem, for a first block fused with it), the
    /// depthwise conv and the projection.
    pub block_ops: Vec<[f64; 3]>,
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

/// The fast engine for one compiled network: the thread pool and, per input size, the
/// schedule and buffers (allocated on the first image of that size, then reused).
pub(crate) struct FastEngine<N: Net> {
    pub net: N,
    /// The head layers of a detection or segmentation plan (after the backbone).
    head: Option<HeadNet>,
    streaming: bool,
    pool: Pool,
    state: Mutex<Option<State<N::T>>>,
}

struct State<T: Zeroable> {
    /// The schedule of an image run on one thread, and its phases (see [`phases`]).
    schedule: Schedule,
    phases: Vec<Phase>,
    /// The schedule of one image split across the pool's threads, and its phases (`None`
    /// with one thread).
    split: Option<(Schedule, Vec<Phase>)>,
    scratch: Vec<Mutex<Scratch<T>>>,
    acts: Vec<Mutex<Acts<T>>>,
    /// Per thread: its pooled sums, then its columns of the logits (two halves).
    slots: Mutex<Vec<f32>>,
}

/// The phases of one image in the order [`FastEngine::image`] runs them: the stem (unless the
/// first block computes it), the chained blocks (streaming), every other block, the pooled
/// sums and the logits.
fn phases(s: &Schedule) -> Vec<Phase> {
    let mut v = Vec::new();
    if !s.stem_fused {
        v.push(Phase::Rows { rows: s.stem_out.h, row_len: s.stem_out.w * s.stem_out.c });
    }
    let out = |g: &schedule::Geo| Phase::Rows { rows: g.h_out, row_len: g.w_out * g.cout };
    if s.chain > 0 {
        v.push(out(&s.geos[s.chain - 1]));
    }
    for g in &s.geos[s.chain..] {
        if g.split {
            v.push(Phase::Rows { rows: g.h_in, row_len: g.w_in * g.hidden });
        }
        if g.pixels {
            // Expanded pixels into the side buffer, then output pixels.
            v.push(Phase::Side { rows: g.h_in * g.w_in, row_len: g.hidden });
            v.push(Phase::Rows { rows: g.h_out * g.w_out, row_len: g.cout });
        } else {
            v.push(out(g));
        }
    }
    if s.taps.is_some() {
        // The last conv (if tapped) writes its tap, not a shared buffer.
        return v;
    }
    v.push(Phase::Gather { len: s.last_c });
    v.push(Phase::Gather { len: s.classes });
    v
}

/// Where a phase reads its input rows: the image, or the buffer the previous phase wrote.
#[derive(Clone, Copy)]
enum Prev {
    Image,
    Rows { row_len: usize, cap: usize },
}

impl Prev {
    fn src<'a, T>(self, img: Image<'a>, sch: &Schedule, input: &'a [T]) -> Src<'a, T> {
        match self {
            Prev::Image => Src::Image(img, sch.stem_geom),
            Prev::Rows { row_len, cap } => Src::Rows(Rows::new(input, row_len, cap)),
        }
    }
}

/// A fast engine with its network type erased, for the `Engine` facade.
pub(crate) trait Runner: Send + Sync {
    /// Logits of `n` images (`n * classes` values) of `plan.input()` in `layout`.
    fn run(&self, plan: &Plan, images: &[f32], n: usize, layout: Layout, profile: Option<&mut Profile>) -> Vec<f32>;
    /// The outputs of the head layers `wanted` (per layer `n` images' values) of `n` images of
    /// `plan.input()` in `layout`, for a plan with a detection or segmentation head.
    fn run_layers(&self, plan: &Plan, images: &[f32], n: usize, layout: Layout, wanted: &[usize]) -> Vec<Vec<f32>>;
    /// Activation bytes allocated for one image of this plan's size in flight.
    fn activation_bytes(&self, plan: &Plan) -> usize;
    fn isa(&self) -> Isa;
    /// The kernels the network uses, sorted, each once.
    fn kernel_names(&self) -> Vec<&'static str>;
}

impl<N: Net> Runner for FastEngine<N> {
    fn run(&self, plan: &Plan, images: &[f32], n: usize, layout: Layout, profile: Option<&mut Profile>) -> Vec<f32> {
        FastEngine::run(self, plan, images, n, layout, profile)
    }
    fn run_layers(&self, plan: &Plan, images: &[f32], n: usize, layout: Layout, wanted: &[usize]) -> Vec<Vec<f32>> {
        FastEngine::run_layers(self, plan, images, n, layout, wanted)
    }
    fn activation_bytes(&self, plan: &Plan) -> usize {
        FastEngine::activation_bytes(self, plan)
    }
    fn isa(&self) -> Isa {
        self.net.isa()
    }
    fn kernel_names(&self) -> Vec<&'static str> {
        let mut v = self.net.kernel_names();
        v.extend(self.head.iter().flat_map(HeadNet::kernel_names));
        v.sort();
        v.dedup();
        v
    }
}

impl<N: Net> FastEngine<N> {
    pub fn new(net: N, head: Option<HeadNet>, threads: usize, streaming: bool) -> FastEngine<N> {
        FastEngine { net, head, streaming, pool: Pool::new(threads), state: Mutex::new(None) }
    }

    /// The schedule of `plan` with small maps shared out by pixels among `threads` (see
    /// [`Schedule::new`]), its ring and band lengths (the chain's rings too) in the slots this
    /// net's rows take ([`RowSlots::hidden_row`], [`RowSlots::band_row`]: bf16 rows take half the slots
    /// of f32 ones).
    fn schedule(&self, plan: &Plan, threads: usize) -> Schedule {
        Schedule::new(plan, self.streaming, threads, self.net.band_pixels(), &self.net)
    }

    fn state_for<'a>(&self, plan: &Plan, guard: &'a mut Option<State<N::T>>) -> &'a State<N::T> {
        let fits = matches!(guard, Some(s) if s.schedule.image == plan.input());
        if !fits {
            let schedule = self.schedule(plan, 1);
            let t = self.pool.threads();
            let by_pixels = if self.net.splits_by_pixels() { t } else { 1 };
            let split = (t > 1).then(|| self.schedule(plan, by_pixels));
            let either = |f: fn(&Schedule) -> usize| f(&schedule).max(split.as_ref().map_or(0, f));
            let (ring, band, side) = (either(|s| s.ring_len), either(|s| s.band_len), either(|s| s.side_len));
            let scratch = (0..t)
                .map(|_| {
                    Mutex::new(Scratch {
                        ring: AlignedVec::zeros(ring),
                        band: AlignedVec::zeros(band),
                        last: AlignedVec::zeros(if N::POOLS_IN_EPILOGUE { 0 } else { schedule.last_band }),
                        pooled: vec![0.0; schedule.last_c],
                    })
                })
                .collect();
            // Thread 0's buffers hold a split image, side buffer included.
            let acts = (0..t).map(|tid| Mutex::new(Acts::new(&schedule, if tid == 0 { side } else { 0 }))).collect();
            let slots = Mutex::new(vec![0f32; 2 * t * schedule.last_c.max(schedule.classes)]);
            let phases = phases(&schedule);
            let split = split.map(|s| {
                let p = self::phases(&s);
                (s, p)
            });
            *guard = Some(State { schedule, phases, split, scratch, acts, slots });
        }
        guard.as_ref().expect("state set above")
    }

    /// Activation bytes allocated for one image of this plan's size in flight.
    pub fn activation_bytes(&self, plan: &Plan) -> usize {
        let threads = self.pool.threads();
        let mut s = self.schedule(plan, 1);
        if threads > 1 {
            // The buffers serve whole images and split ones (a side buffer, other bands).
            let split = self.schedule(plan, if self.net.splits_by_pixels() { threads } else { 1 });
            s.band_len = s.band_len.max(split.band_len);
            s.side_len = split.side_len;
        }
        let t = size_of::<N::T>();
        let chain_hidden: usize = (0..s.chain).map(|k| s.chain_ring_lens(k).0).sum();
        let chain_out: usize = (0..s.chain).map(|k| s.chain_ring_lens(k).1).sum();
        // f32 in every network: the last conv band and the pooled sums; and what the kernels
        // stage: the depthwise kernels' u8 rows, the stem's rows.
        let last_band = if N::POOLS_IN_EPILOGUE { 0 } else { s.last_band };
        let dw_staging =
            (s.geos.iter().enumerate()).map(|(k, g)| self.net.dw_staging(k, g.dw_row())).max().unwrap_or(0);
        // One thread-local area per kind of kernel, grown to the widest call.
        let staging = dw_staging + self.net.stem_staging(s.stem_geom);
        let f32_values = last_band + s.last_c;
        let per_thread = t * (chain_hidden + s.ring_len + chain_out + s.band_len) + 4 * f32_values + staging;
        // A head's backbone tensors (f32, whole) and the head's own live tensors.
        let head = match (&s.taps, &self.head) {
            (Some(taps), Some(head)) => {
                let taps: usize = taps.iter().map(|t| plan.layers[t.0].output.len()).sum();
                4 * (taps + head.peak_values(plan, &[plan.layers.len() - 1]))
            }
            _ => 0,
        };
        2 * t * s.act_len + t * s.side_len + threads * per_thread + head
    }

    /// The outputs of the head layers `wanted` of `n` images (per layer, the images' values
    /// one after the other): the backbone fused as for classification, the tensors the head
    /// reads materialised once, then the head. One image on several threads is split by rows
    /// (backbone and head); several images are shared out whole.
    pub fn run_layers(&self, plan: &Plan, images: &[f32], n: usize, layout: Layout, wanted: &[usize]) -> Vec<Vec<f32>> {
        let head = self.head.as_ref().expect("an engine for a head's plan has the head");
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = self.state_for(plan, &mut guard);
        let sch = &st.schedule;
        let tap_list = sch.taps.as_ref().expect("a head's schedule has taps");
        let tap_shapes: Vec<crate::plan::Shape> = tap_list.iter().map(|t| plan.layers[t.0].output).collect();
        let per = sch.image.len();
        let threads = self.pool.threads();
        let img = |i: usize| Image { data: &images[i * per..(i + 1) * per], h: sch.image.h, w: sch.image.w, layout };
        let new_taps = || -> Vec<Vec<f32>> { tap_shapes.iter().map(|s| vec![0f32; s.len()]).collect() };
        fn as_taps<'b>(list: &[(usize, TapAt)], bufs: &'b [Vec<f32>]) -> Vec<(usize, &'b [f32])> {
            list.iter().zip(bufs).map(|(t, b)| (t.0, &b[..])).collect()
        }
        if n == 1 && threads > 1 {
            let mut bufs = new_taps();
            {
                // Each thread writes its share of the rows of every tap.
                let mut pieces: Vec<Vec<&mut [f32]>> = (0..threads).map(|_| Vec::new()).collect();
                for (buf, shape) in bufs.iter_mut().zip(&tap_shapes) {
                    let mut rest = &mut buf[..];
                    for (t, p) in pieces.iter_mut().enumerate() {
                        let rows = share(t, threads, shape.h);
                        let (mine, tail) = rest.split_at_mut(rows.len() * shape.w * shape.c);
                        p.push(mine);
                        rest = tail;
                    }
                }
                let pieces: Vec<Mutex<Vec<&mut [f32]>>> = pieces.into_iter().map(Mutex::new).collect();
                let mut acts0 = st.acts[0].lock().unwrap();
                let Acts { x, y, side, chain } = &mut *acts0;
                let (sch, phases) = st.split.as_ref().map(|(s, p)| (s, &p[..])).expect("a pool of several threads");
                let team = Team::new(x, y, side, &mut [], threads, phases);
                let chain0 = Mutex::new(Some(chain));
                let job = |tid: usize| {
                    let mut turns = team.member(tid);
                    let mut sc = st.scratch[tid].lock().unwrap();
                    let mut own = if tid == 0 { None } else { Some(st.acts[tid].lock().unwrap()) };
                    let first = if tid == 0 { chain0.lock().unwrap().take() } else { None };
                    let chain: &mut ChainRings<N::T> = match (own.as_deref_mut(), first) {
                        (Some(a), _) => &mut a.chain,
                        (None, Some(c)) => c,
                        (None, None) => unreachable!("thread 0 has the first rings"),
                    };
                    let mut mine = pieces[tid].lock().unwrap();
                    let timer = Timer { prof: None, t: Instant::now() };
                    self.image(sch, img(0), &mut turns, chain, &mut sc, &mut [], &mut mine, timer);
                };
                self.pool.run(&job);
            }
            return head.run(plan, &as_taps(tap_list, &bufs), wanted, Some(&self.pool));
        }
        // Several images (or one thread): each thread takes whole images, head included.
        let done: Vec<Mutex<Vec<Vec<f32>>>> = (0..n).map(|_| Mutex::new(Vec::new())).collect();
        let job = |tid: usize| {
            let mut sc = st.scratch[tid].lock().unwrap();
            let mut acts = st.acts[tid].lock().unwrap();
            let Acts { x, y, chain, .. } = &mut *acts;
            let mut bufs = new_taps();
            for i in (tid..n).step_by(threads) {
                {
                    let mut mine: Vec<&mut [f32]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
                    let timer = Timer { prof: None, t: Instant::now() };
                    let team = Team::new(&mut *x, &mut *y, &mut [], &mut [], 1, &st.phases);
                    self.image(sch, img(i), &mut team.member(0), chain, &mut sc, &mut [], &mut mine, timer);
                }
                *done[i].lock().unwrap() = head.run(plan, &as_taps(tap_list, &bufs), wanted, None);
            }
        };
        self.pool.run(&job);
        if n == 1 {
            return done.into_iter().next().map(|d| d.into_inner().unwrap()).unwrap_or_default();
        }
        let mut out: Vec<Vec<f32>> =
            wanted.iter().map(|&w| Vec::with_capacity(n * plan.layers[w].output.len())).collect();
        for d in done {
            for (o, v) in out.iter_mut().zip(d.into_inner().unwrap()) {
                o.extend_from_slice(&v);
            }
        }
        out
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
            let Acts { x, y, chain, .. } = &mut *acts;
            for i in 0..n {
                let out = &mut logits[i * classes..(i + 1) * classes];
                let timer = Timer { prof: Some(&mut *p), t: Instant::now() };
                let team = Team::new(x, y, &mut [], &mut [], 1, &st.phases);
                self.image(sch, img(i), &mut team.member(0), chain, &mut sc, out, &mut [], timer);
            }
            return logits;
        }
        if n == 1 && threads > 1 {
            let mut slots = st.slots.lock().unwrap();
            // Thread 0's buffers hold the image: every thread writes its rows of x and y in
            // turns (see `Team`), and only thread 0 uses the chain rings.
            let mut acts0 = st.acts[0].lock().unwrap();
            let Acts { x, y, side, chain } = &mut *acts0;
            let (sch, phases) = st.split.as_ref().map(|(s, p)| (s, &p[..])).expect("a pool of several threads");
            let team = Team::new(x, y, side, &mut slots, threads, phases);
            let chain0 = Mutex::new(Some(chain));
            // Only thread 0 writes the logits (after the last phase).
            let out0 = Mutex::new(Some(&mut logits[..]));
            let job = |tid: usize| {
                let mut turns = team.member(tid);
                let mut sc = st.scratch[tid].lock().unwrap();
                let out = if tid == 0 { out0.lock().unwrap().take() } else { None };
                // Each thread streams its own share of the chained blocks, in its own rings.
                let mut own = if tid == 0 { None } else { Some(st.acts[tid].lock().unwrap()) };
                let first = if tid == 0 { chain0.lock().unwrap().take() } else { None };
                let chain: &mut ChainRings<N::T> = match (own.as_deref_mut(), first) {
                    (Some(a), _) => &mut a.chain,
                    (None, Some(c)) => c,
                    (None, None) => unreachable!("thread 0 has the first rings"),
                };
                let out: &mut [f32] = out.unwrap_or(&mut []);
                let timer = Timer { prof: None, t: Instant::now() };
                self.image(sch, img(0), &mut turns, chain, &mut sc, out, &mut [], timer);
            };
            self.pool.run(&job);
            return logits;
        }
        // Several images (or one thread): each thread takes whole images.
        let outs: Vec<Mutex<&mut [f32]>> = logits.chunks_mut(classes.max(1)).map(Mutex::new).collect();
        let job = |tid: usize| {
            let mut sc = st.scratch[tid].lock().unwrap();
            let mut acts = st.acts[tid].lock().unwrap();
            let Acts { x, y, chain, .. } = &mut *acts;
            for i in (tid..n).step_by(threads) {
                // Image i's logits are written by this thread only.
                let mut o = outs[i].lock().unwrap();
                let timer = Timer { prof: None, t: Instant::now() };
                let team = Team::new(&mut *x, &mut *y, &mut [], &mut [], 1, &st.phases);
                self.image(sch, img(i), &mut team.member(0), chain, &mut sc, &mut o, &mut [], timer);
            }
        };
        self.pool.run(&job);
        drop(outs);
        logits
    }

    /// One image, on one thread or split across the threads of a team (`turns`).
    #[allow(clippy::too_many_arguments)]
    fn image(
        &self,
        sch: &Schedule,
        img: Image,
        turns: &mut Turns<N::T>,
        chain_bufs: &mut ChainRings<N::T>,
        sc: &mut Scratch<N::T>,
        out: &mut [f32],
        taps: &mut [&mut [f32]],
        mut timer: Timer,
    ) {
        let net = &self.net;
        // This thread's rows of a tapped tensor, in real units, into its share of the tap.
        let tap_index = |at: TapAt| sch.taps.iter().flatten().position(|t| t.1 == at);
        let (tid, threads) = (turns.tid(), turns.threads());
        let mut prev = Prev::Image;
        if !sch.stem_fused {
            let s = sch.stem_out;
            let len = s.w * s.c;
            turns.rows(|_, mut dst| {
                let rows = dst.window_rows();
                let dst = dst.values_mut();
                for (i, oy) in rows.enumerate() {
                    net.stem_row(img, oy, sch.stem_geom, &mut dst[i * len..(i + 1) * len]);
                }
            });
            prev = Prev::Rows { row_len: len, cap: s.h };
            timer.tick(0, || "features.0 stem".into());
        }
        let first_stage = usize::from(!sch.stem_fused);
        let mut k0 = 0;
        if sch.chain > 0 {
            // Streaming: the chained blocks, pulled from the last one; each thread produces its
            // share of the last one's rows (recomputing the few rows its share's receptive
            // field shares with the neighbour's).
            let last = sch.chain - 1;
            let prof = timer.prof.as_deref_mut();
            turns.rows(|input, mut out_rows| {
                let rows = out_rows.window_rows();
                if rows.is_empty() {
                    return;
                }
                // The first row each chained block produces for this share.
                let mut next_out = vec![0; sch.chain];
                next_out[last] = rows.start;
                for k in (1..sch.chain).rev() {
                    next_out[k - 1] = sch.geos[k].hidden_rows(next_out[k]..next_out[k] + 1).0;
                }
                let mut chain = Chain {
                    net,
                    sch,
                    src: prev.src(img, sch, input),
                    acts: chain_bufs,
                    band: &mut sc.band,
                    next_out,
                    hidden_next: vec![0; sch.chain],
                    prof,
                    first_stage,
                };
                chain.produce(last, rows.end, &mut out_rows);
            });
            let g = &sch.geos[last];
            prev = Prev::Rows { row_len: g.w_out * g.cout, cap: g.h_out };
            k0 = sch.chain;
            timer.t = Instant::now();
        }
        for k in k0..sch.geos.len() {
            let g = &sch.geos[k];
            if g.split {
                // The expanded tensor, whole (a head reads it); the block reads it directly.
                let j = tap_index(TapAt::Expansion(k)).expect("a split block is tapped");
                let Prev::Rows { row_len: in_len, .. } = prev else { unreachable!("a tapped block follows a block") };
                let packed = net.hidden_row(k, g.dw_row(), g.w_in * g.hidden);
                assert_eq!(packed, g.w_in * g.hidden, "a tapped expansion is not packed");
                turns.rows(|input, mut out_rows| {
                    let rows = out_rows.window_rows();
                    let a = &input[rows.start * in_len..rows.end * in_len];
                    let dst = out_rows.values_mut();
                    net.expand(k, g.dw_row(), rows.len() * g.w_in, a, g.cin, dst, g.hidden);
                    net.tap_values(TapAt::Expansion(k), dst, &mut taps[j][..]);
                });
                prev = Prev::Rows { row_len: g.w_in * g.hidden, cap: g.h_in };
            }
            if g.pixels {
                let Prev::Rows { row_len: in_len, cap } = prev else {
                    unreachable!("a pixel-split block follows a block")
                };
                debug_assert_eq!((in_len, cap), (g.w_in * g.cin, g.h_in));
                assert_eq!(net.hidden_row(k, g.dw_row(), g.hidden), g.hidden, "a pixel-split expansion is not packed");
                turns.side(|input, mut hidden| {
                    let px = hidden.window_rows();
                    net.expand(
                        k,
                        g.dw_row(),
                        px.len(),
                        &input[px.start * g.cin..px.end * g.cin],
                        g.cin,
                        hidden.values_mut(),
                        g.hidden,
                    );
                });
                turns.rows_with_side(|input, hidden, mut out| {
                    block::pixels(net, k, g, input, hidden, &mut out, &mut sc.band);
                });
                prev = Prev::Rows { row_len: g.w_out * g.cout, cap: g.h_out };
                timer.tick(first_stage + k, || format!("features.{} block", k + 1));
                continue;
            }
            let tap_out = tap_index(TapAt::Block(k));
            let ops = timer.prof.as_deref_mut().map(|p| {
                p.block_ops.resize(sch.geos.len(), [0.0; 3]);
                &mut p.block_ops[k]
            });
            turns.rows(|input, mut out_rows| {
                let src = prev.src(img, sch, input);
                let rows = out_rows.window_rows();
                let mut hidden = Hidden { ring: &mut sc.ring, next: 0, ops };
                let mut oy = rows.start;
                while oy < rows.end {
                    let end = (oy + g.band).min(rows.end);
                    block::band(net, k, g, src, &mut out_rows, oy..end, &mut hidden, &mut sc.band);
                    oy = end;
                }
                if let Some(j) = tap_out {
                    net.tap_values(TapAt::Block(k), out_rows.values_mut(), &mut taps[j][..]);
                }
            });
            prev = Prev::Rows { row_len: g.w_out * g.cout, cap: g.h_out };
            timer.tick(first_stage + k, || format!("features.{} block", k + 1));
        }
        let stages = first_stage + sch.geos.len();
        if sch.taps.is_some() {
            // A head's backbone: the last conv, if tapped, straight into its tap.
            if let Some(j) = tap_index(TapAt::LastConv) {
                let s = sch.last_in;
                let rows = share(tid, threads, s.h);
                turns.read(|x| {
                    let a = &x[rows.start * s.w * s.c..rows.end * s.w * s.c];
                    net.last_conv_rows(rows.len() * s.w, a, s.c, &mut taps[j][..], sch.last_c);
                });
                timer.tick(stages, || "last conv".into());
            }
            return;
        }
        let last_len = sch.last_in.len();
        let s = sch.last_in;
        // This thread's pixels of the last conv: its rows, or its share of the pixels.
        let my_pixels = if sch.last_pixels {
            share(tid, threads, s.h * s.w)
        } else {
            let r = share(tid, threads, s.h);
            r.start * s.w..r.end * s.w
        };
        sc.pooled.fill(0.0);
        let c = sch.last_c;
        let inv = 1.0 / (sch.last_in.h * sch.last_in.w) as f32;
        if threads == 1 {
            turns.read(|x| self.last_rows(sch, &x[..last_len], my_pixels, sc));
            let pooled: Vec<f32> = sc.pooled.iter().map(|v| v * inv).collect();
            timer.tick(stages, || "last conv + pool".into());
            net.classify(&pooled, out, 0..net.classifier_panels().0);
            timer.tick(stages + 1, || "classifier".into());
            return;
        }
        // Split image: the pooled sums of every thread's rows, then the classifier shared by
        // column panels (it streams megabytes of weights; two threads read them twice as fast).
        let pooled: Vec<f32> = turns.gather(
            |x, slot| {
                self.last_rows(sch, &x[..last_len], my_pixels, sc);
                slot.copy_from_slice(&sc.pooled);
            },
            |parts| (0..c).map(|j| (0..threads).map(|t| parts[t * c + j]).sum::<f32>() * inv).collect(),
        );
        let (panels, nr) = net.classifier_panels();
        let my_panels = share(tid, threads, panels);
        let classes = sch.classes;
        turns.gather(
            |_, mine| net.classify(&pooled, mine, my_panels),
            |all| {
                if tid == 0 {
                    for t in 0..threads {
                        let cols = share(t, threads, panels);
                        let (a, b) = ((cols.start * nr).min(classes), (cols.end * nr).min(classes));
                        out[a..b].copy_from_slice(&all[t * classes + a..t * classes + b]);
                    }
                }
            },
        );
    }

    /// Last 1x1 convolution over input pixels `pixels`, summed into `sc.pooled` band by band.
    fn last_rows(&self, sch: &Schedule, input: &[N::T], pixels: Range<usize>, sc: &mut Scratch<N::T>) {
        let c = sch.last_in.c;
        let band = if N::POOLS_IN_EPILOGUE { pixels.len().max(1) } else { (sc.last.len() / sch.last_c).max(1) };
        let mut p0 = pixels.start;
        while p0 < pixels.end {
            let p1 = (p0 + band).min(pixels.end);
            self.net.last_rows(p1 - p0, &input[p0 * c..p1 * c], c, &mut sc.pooled, &mut sc.last);
            p0 = p1;
        }
    }
}

/// The streaming chain of leading blocks, pulled from its last block.
struct Chain<'a, 'p, N: Net> {
    net: &'a N,
    sch: &'a Schedule,
    /// Input of the first chained block.
    src: Src<'a, N::T>,
    acts: &'a mut ChainRings<N::T>,
    band: &'a mut [N::T],
    next_out: Vec<usize>,
    hidden_next: Vec<usize>,
    prof: Option<&'p mut Profile>,
    first_stage: usize,
}

impl<N: Net> Chain<'_, '_, N> {
    /// Makes output rows `..upto` of chained block `k` available: in its ring, or in
    /// `last_out` for the last one.
    fn produce(&mut self, k: usize, upto: usize, last_out: &mut RowsMut<N::T>) {
        let g = self.sch.geos[k];
        while self.next_out[k] < upto {
            let oy0 = self.next_out[k];
            let oy1 = (oy0 + g.band).min(g.h_out);
            let (_, hi) = g.hidden_rows(oy0..oy1);
            if k > 0 {
                self.produce(k - 1, hi + 1, last_out);
            }
            let t = Instant::now();
            let ops = self.prof.as_deref_mut().map(|p| {
                p.block_ops.resize(self.sch.geos.len(), [0.0; 3]);
                &mut p.block_ops[k]
            });
            let (before, rest) = self.acts.split_at_mut(k);
            let src = if k == 0 {
                self.src
            } else {
                let gp = &self.sch.geos[k - 1];
                Src::Rows(Rows::new(&before[k - 1].1[..], gp.w_out * gp.cout, self.sch.chain_out_cap[k - 1]))
            };
            let (hidden_ring, out_ring) = &mut rest[0];
            let mut hidden = Hidden { ring: &mut hidden_ring[..], next: self.hidden_next[k], ops };
            let band = &mut *self.band;
            match self.sch.chain_out_cap.get(k) {
                Some(&cap) => {
                    let mut out = RowsMut::new(&mut out_ring[..], g.w_out * g.cout, cap);
                    block::band(self.net, k, &g, src, &mut out, oy0..oy1, &mut hidden, band);
                }
                None => block::band(self.net, k, &g, src, last_out, oy0..oy1, &mut hidden, band),
            }
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

#[cfg(test)]
mod tests {
    use crate::engine::{Engine, Isa, Mode, Options};
    use crate::quant::{self, Method};
    use crate::{Batch, Model, Spec};

    /// Every kernel an engine packs is one the ISA it was asked for grants: a scalar engine
    /// runs scalar kernels only (int8 included), and the names say what runs.
    #[test]
    fn engines_run_the_isa_they_are_given() {
        let spec = Spec { classes: 5, ..Spec::new(0.35, 32) };
        let model = Model::init(&spec, 1, true).unwrap();
        let x = Batch::from_nchw(&[1, 3, 32, 32], &vec![0.5; 3 * 32 * 32]).unwrap();
        let mut qmodel = model.clone();
        qmodel.quant = Some(quant::calibrate(&model, std::slice::from_ref(&x), Method::MinMax).unwrap());
        for isa in mnv2_kernels::isa::available() {
            for m in [&model, &qmodel] {
                let e =
                    Engine::new(m, Options { mode: Mode::Fast, threads: 1, isa: Some(isa), precision: None }).unwrap();
                let (_, names) = e.kernels();
                assert!(!names.is_empty());
                for n in names {
                    let tier = n.rsplit('_').next().unwrap();
                    let ok = match isa {
                        Isa::Scalar => tier == "scalar",
                        Isa::Avx2 => tier == "scalar" || tier == "avx2",
                        Isa::Avx512 => tier != "avx2",
                    };
                    assert!(ok, "{n} in an engine asked for {}", isa.name());
                }
            }
        }
    }

    /// A split image shares its small maps out by pixels (a side phase of expanded pixels,
    /// then output pixels): the logits are those of one thread, up to the order in which the
    /// threads' pooled sums add, in both modes and for shares that cut rows anywhere.
    #[test]
    fn pixel_split_blocks_match_one_thread() {
        for (width, res, threads) in [(0.5, 96, 2), (0.35, 64, 3), (1.0, 112, 4)] {
            let spec = Spec { classes: 17, ..Spec::new(width, res) };
            let plan = crate::Plan::new(&spec).unwrap();
            let s = super::Schedule::new(&plan, false, threads, super::schedule::BAND_PIXELS, &super::schedule::Values);
            let split: Vec<_> = s.geos.iter().filter(|g| g.pixels).collect();
            assert!(split.iter().any(|g| g.residual) && split.iter().any(|g| g.stride == 2), "{res}: {split:?}");
            assert!(split.iter().any(|g| (g.h_out * g.w_out) % threads != 0), "{res}: a share cuts a row");
            assert!(
                s.last_pixels
                    && !super::Schedule::new(&plan, false, 1, super::schedule::BAND_PIXELS, &super::schedule::Values)
                        .geos
                        .iter()
                        .any(|g| g.pixels)
            );
            let model = Model::init(&spec, 5, true).unwrap();
            let data: Vec<f32> = (0..3 * res * res).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
            let x = Batch::from_nchw(&[1, 3, res, res], &data).unwrap();
            let run = |mode, threads| {
                let e = Engine::new(&model, Options { mode, threads, isa: None, precision: None }).unwrap();
                e.run(&x).unwrap().data
            };
            let one = run(Mode::Fast, 1);
            let scale = one.iter().fold(0f32, |m, v| m.max(v.abs()));
            for mode in [Mode::Fast, Mode::Streaming] {
                let many = run(mode, threads);
                let err = one.iter().zip(&many).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err <= 1e-5 * scale, "{res} {mode:?} x{threads}: {err} of {scale}");
            }
        }
    }
}
