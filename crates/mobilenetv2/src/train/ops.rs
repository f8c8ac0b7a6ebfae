//! The layers of training over a whole batch, fused so that the wide (expanded) tensors cross
//! memory as few times as possible.
//!
//! A BatchNorm in training mode needs the statistics of the whole batch before it can be
//! applied, so its application cannot live in the layer that produces its input; instead it
//! moves into the layer that *consumes* its output, which computes BatchNorm + clamp on the
//! fly, chunk by chunk, in cache:
//!
//! * a 1x1 convolution takes its input rows in chunks (stored rows, BatchNorm + clamp of the
//!   layer before, or the stem's patches), multiplies each chunk as it lies in cache, and
//!   takes the statistics of the chunk it just wrote ([`conv_forward`]);
//! * the depthwise convolution keeps a ring of `2 * dilation + 1` activated input rows per
//!   image and takes the statistics of each output row as it writes it ([`dw_forward`]);
//! * backward, a 1x1 convolution turns its output gradient into the gradient of its
//!   pre-BatchNorm output, recomputes its input, and forms both products and the next
//!   BatchNorm's reductions per chunk ([`pw_backward`]); the depthwise backward does the same
//!   per image with rings of rows ([`dw_backward`]).
//!
//! Per block the wide tensors cross memory 4 times forward (expand writes, depthwise reads
//! and writes, project reads) and 8 times backward, instead of about 30.
//!
//! Determinism: per-channel statistics are summed per chunk (or per image) of fixed size and
//! merged in order, so they do not depend on the number of threads; weight gradients of 1x1
//! convolutions are summed per thread over fixed row ranges and added in order, so a step gives
//! the same bits on every run with the same number of threads.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use mnv2_kernels::dwconv::{dwconv_row, DwRow, PackedDw};
use mnv2_kernels::gemm::{gemm, PackedGemm};
use mnv2_kernels::train::bn::{self, Grad as BnGrad, Sums};
use mnv2_kernels::train::{dw, matmul as mm, stream};
use mnv2_kernels::{MinMax, Tier};

pub use mnv2_kernels::train::bn::{BnAct, BnBwd};
use rayon::prelude::*;

/// Values per chunk of rows in forward passes (per operand: the chunk stays in L2).
const FWD_CHUNK: usize = 48 * 1024;
/// Values per chunk of rows in backward passes (larger: the weight gradient is re-read per chunk).
const BWD_CHUNK: usize = 96 * 1024;
/// Rows per partial sum of the standalone reductions.
const ROWS: usize = 512;
/// Tensors of at least this many values are written with non-temporal stores (they do not fit
/// in the last-level cache next to the others, and are read back only by a later pass).
static STREAM_MIN: AtomicUsize = AtomicUsize::new(4 << 20);

/// Sets the size (in values) from which tensors are written with non-temporal stores; the
/// results do not depend on it (tests use it to cover both paths on small inputs).
#[doc(hidden)]
pub fn set_stream_min(values: usize) {
    STREAM_MIN.store(values, Ordering::Relaxed);
}

fn streamed(values: usize) -> bool {
    values >= STREAM_MIN.load(Ordering::Relaxed)
}

pub fn threads() -> usize {
    rayon::current_num_threads()
}

fn chunk_rows(values: usize, width: usize) -> usize {
    (values / width.max(1)).clamp(16, 4096)
}

/// Per-thread scratch, grown as needed and never shrunk (no allocation in the steady state).
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    e: Vec<f32>,
    t: Vec<f32>,
    d: Vec<f64>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch. `f` must not re-enter the rayon pool.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// Buffers that outlive a call (partial sums), owned by the tape.
#[derive(Default)]
pub struct Work {
    f64s: Vec<f64>,
    f32s: Vec<f32>,
}

/// Where the input rows of a layer come from.
#[derive(Clone, Copy)]
pub enum Src<'a> {
    /// Stored activations.
    Rows(&'a [f32]),
    /// BatchNorm + clamp of the stored pre-BatchNorm output of the layer before.
    Bn(&'a [f32], BnAct<'a>),
    /// The stem's 3x3 patches of NHWC images (27 values per output pixel).
    Patches(&'a [f32], Geom),
}

impl Src<'_> {
    /// Prefetches the stored rows that [`Src::rows`] would read for `lo..hi`.
    fn prefetch(&self, lo: usize, hi: usize, c: usize) {
        match *self {
            Src::Rows(x) | Src::Bn(x, _) => prefetch_row(x, lo * c, (hi - lo) * c),
            Src::Patches(..) => {}
        }
    }

    /// Rows `lo..hi`, `c` wide: borrowed, or computed into `buf` on `tier`.
    fn rows<'b>(&'b self, tier: Tier, lo: usize, hi: usize, c: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        match *self {
            Src::Rows(x) => &x[lo * c..hi * c],
            Src::Bn(x, bn) => {
                let out = grow(buf, (hi - lo) * c);
                bn.apply(tier, &x[lo * c..hi * c], c, None, out);
                out
            }
            Src::Patches(img, g) => {
                let out = grow(buf, (hi - lo) * 27);
                im2col3_rows(img, g, lo, hi, out);
                out
            }
        }
    }
}

/// Where the gradient of a layer's (BatchNorm + clamp) output comes from.
#[derive(Clone, Copy)]
pub enum Grad<'a> {
    Rows(&'a [f32]),
    /// The mean over each image's pixels: one row of `c` per image, shared by its `hw` pixels.
    Pooled(&'a [f32], usize),
}

impl Grad<'_> {
    fn prefetch(&self, lo: usize, hi: usize, c: usize) {
        if let Grad::Rows(g) = *self {
            prefetch_row(g, lo * c, (hi - lo) * c);
        }
    }

    fn rows<'b>(&'b self, lo: usize, hi: usize, c: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
        match *self {
            Grad::Rows(g) => &g[lo * c..hi * c],
            Grad::Pooled(g, hw) => {
                let out = grow(buf, (hi - lo) * c);
                broadcast(g, hw, lo, hi, c, out);
                out
            }
        }
    }
}

fn broadcast(g: &[f32], hw: usize, lo: usize, hi: usize, c: usize, out: &mut [f32]) {
    for (r, o) in (lo..hi).zip(out.chunks_exact_mut(c)) {
        o.copy_from_slice(&g[r / hw * c..][..c]);
    }
}

/// The two reductions of a BatchNorm backward per channel: `(sum dz, sum dz * (x - mean))`.
pub type BnSums = (Vec<f64>, Vec<f64>);

/// Mean and biased variance per channel.
pub struct Moments {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

/// Writes the mean and the sum of squared deviations of `x`'s channels to `out[..c]` and
/// `out[c..2c]`.
fn moments_of(tier: Tier, x: &[f32], c: usize, out: &mut [f64], tmp: &mut Vec<f32>, acc: &mut Vec<f64>) {
    let rows = x.len() / c;
    let acc = grow(acc, 2 * c);
    acc.fill(0.0);
    let (s, q) = acc.split_at_mut(c);
    let shift = &x[..c];
    bn::stats(tier, x, c, shift, s, q, grow(tmp, 2 * c));
    let n = rows as f64;
    for j in 0..c {
        out[j] = shift[j] as f64 + s[j] / n;
        out[c + j] = (q[j] - s[j] * s[j] / n).max(0.0);
    }
}

/// Merges per-part moments (`parts[k]` from [`moments_of`] over `counts[k]` rows), in order.
fn merge_moments(parts: &[f64], counts: impl Iterator<Item = usize> + Clone, c: usize) -> Moments {
    let n: usize = counts.clone().sum();
    let mut mean = vec![0f64; c];
    for (p, k) in parts.chunks_exact(2 * c).zip(counts.clone()) {
        for j in 0..c {
            mean[j] += p[j] * k as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut m2 = vec![0f64; c];
    for (p, k) in parts.chunks_exact(2 * c).zip(counts) {
        for j in 0..c {
            let d = p[j] - mean[j];
            m2[j] += p[c + j] + k as f64 * d * d;
        }
    }
    Moments { mean, var: m2.into_iter().map(|v| v / n as f64).collect() }
}

/// `y = a W^T` for a chunk (one thread).
fn gemm_fwd(a: &[f32], rows: usize, cin: usize, w: &[f32], cout: usize, y: &mut [f32]) {
    mm::matmul(y, cout, mm::Mat::row_major(a, rows, cin), mm::Mat::row_major(w, cout, cin).t(), false, 1);
}

/// Outputs up to which the inference GEMM kernels (row-major NHWC, 16 or 32 columns per
/// panel) beat the `gemm` crate, whose micro-kernels are column-major and waste lanes on
/// narrow outputs.
const NARROW: usize = 32;

/// A chunk product `y = a B (+ residual)` for `B` `[k][n]`: through packed weights for narrow
/// outputs, else through the `gemm` crate (`b` as given).
enum Product<'a> {
    Packed(PackedGemm),
    Crate {
        b: mm::Mat<'a>,
    },
    /// `B` `[k][n]` in a copy of its own (a transpose of the weights).
    Owned {
        b: Vec<f32>,
        k: usize,
        n: usize,
    },
}

impl<'a> Product<'a> {
    /// `B = W^T` for `[n][k]` weights `w`. Both kinds take the transpose `[k][n]` once per
    /// call: the `gemm` crate (which computes the row-major product transposed, with `B^T` as
    /// its left operand) then reads it in its own column-major order instead of gathering the
    /// weights one value at a time per chunk (3% of a DeepLab training step in its packing).
    fn transposed(isa: Tier, w: &'a [f32], n: usize, k: usize) -> Product<'a> {
        let mut wt = vec![0f32; k * n];
        for o in 0..n {
            for i in 0..k {
                wt[i * n + o] = w[o * k + i];
            }
        }
        if n <= NARROW {
            Product::Packed(PackedGemm::new(isa, &wt, k, n, &vec![0.0; n]))
        } else {
            Product::Owned { b: wt, k, n }
        }
    }

    /// `B = W` for `[k][n]` weights `w`.
    fn plain(isa: Tier, w: &'a [f32], k: usize, n: usize) -> Product<'a> {
        if n <= NARROW {
            Product::Packed(PackedGemm::new(isa, &w[..k * n], k, n, &vec![0.0; n]))
        } else {
            Product::Crate { b: mm::Mat::row_major(&w[..k * n], k, n) }
        }
    }

    fn run(&self, a: &[f32], rows: usize, y: &mut [f32], residual: Option<&[f32]>) {
        match self {
            Product::Packed(p) => gemm(rows, a, p.k, p, y, p.n, MinMax::NONE, residual.map(|r| (r, p.n))),
            Product::Crate { b } => {
                if let Some(r) = residual {
                    y.copy_from_slice(r);
                }
                mm::matmul(y, b.cols, mm::Mat::row_major(a, rows, b.rows), *b, residual.is_some(), 1)
            }
            Product::Owned { b, k, n } => {
                if let Some(r) = residual {
                    y.copy_from_slice(r);
                }
                let b = mm::Mat::row_major(b, *k, *n);
                mm::matmul(y, *n, mm::Mat::row_major(a, rows, *k), b, residual.is_some(), 1)
            }
        }
    }
}

/// A 1x1 convolution (or the stem as patches times weights) over `m` rows:
/// `x = src W^T` with `W` `[cout][cin]`, and, with `stats`, the moments of `x` per channel.
#[allow(clippy::too_many_arguments)]
pub fn conv_forward(
    isa: Tier,
    src: Src,
    m: usize,
    cin: usize,
    w: &[f32],
    cout: usize,
    x: &mut [f32],
    stats: bool,
    work: &mut Work,
) -> Option<Moments> {
    let rows = chunk_rows(FWD_CHUNK, cin.max(cout));
    let nch = m.div_ceil(rows);
    let x = &mut x[..m * cout];
    let prod = Product::transposed(isa, w, cout, cin);
    let parts = grow(&mut work.f64s, nch * 2 * cout);
    x.par_chunks_mut(rows * cout).zip(parts.par_chunks_mut(2 * cout)).enumerate().for_each(|(i, (xc, pc))| {
        with_scratch(|s| {
            let (lo, hi) = (i * rows, ((i + 1) * rows).min(m));
            let a = src.rows(isa, lo, hi, cin, &mut s.a);
            src.prefetch(hi, (hi + rows).min(m), cin);
            if streamed(m * cout) {
                let y = grow(&mut s.b, (hi - lo) * cout);
                prod.run(a, hi - lo, y, None);
                if stats {
                    moments_of(isa, y, cout, pc, &mut s.t, &mut s.d);
                }
                stream::stream_copy(isa, y, xc);
            } else {
                prod.run(a, hi - lo, xc, None);
                if stats {
                    moments_of(isa, xc, cout, pc, &mut s.t, &mut s.d);
                }
            }
        })
    });
    stats.then(|| merge_moments(parts, (0..nch).map(|i| ((i + 1) * rows).min(m) - i * rows), cout))
}

/// Geometry of a 3x3 convolution over one image.
#[derive(Clone, Copy, Debug)]
pub struct Geom {
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_top: usize,
    pub pad_left: usize,
}

impl Geom {
    fn row(&self) -> DwRow {
        DwRow {
            w_in: self.in_w,
            w_out: self.out_w,
            stride: self.stride,
            dilation: self.dilation,
            pad_left: self.pad_left,
        }
    }
    /// Input row read by output row `oy` through kernel row `ky`, if inside the image.
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.stride + ky * self.dilation) as isize - self.pad_top as isize;
        (0..self.in_h as isize).contains(&iy).then_some(iy as usize)
    }
    /// Output row that reads input row `iy` through kernel row `ky`, if any.
    fn out_row(&self, iy: usize, ky: usize) -> Option<usize> {
        dw::tap_row(iy, ky, self.stride, self.dilation, self.pad_top, self.out_h)
    }
}

/// Prefetches `len` values of `data` from `start`, as far as they exist.
fn prefetch_row(data: &[f32], start: usize, len: usize) {
    if start < data.len() {
        stream::prefetch(&data[start..(start + len).min(data.len())]);
    }
}

/// A ring of rows computed on demand: row `r` lives in slot `r % slots` while it is current.
struct Ring<'a> {
    data: &'a mut [f32],
    len: usize,
    tags: [usize; 16],
    slots: usize,
}

impl<'a> Ring<'a> {
    fn new(buf: &'a mut Vec<f32>, slots: usize, len: usize) -> Ring<'a> {
        assert!(slots <= 16, "dilation too large for the row ring");
        Ring { data: grow(buf, slots * len), len, tags: [usize::MAX; 16], slots }
    }

    /// Makes row `r` current, computing it with `fill` if it is not.
    fn ensure(&mut self, r: usize, fill: impl FnOnce(&mut [f32])) {
        let s = r % self.slots;
        if self.tags[s] != r {
            fill(&mut self.data[s * self.len..][..self.len]);
            self.tags[s] = r;
        }
    }

    fn get(&self, r: usize) -> &[f32] {
        let s = r % self.slots;
        debug_assert_eq!(self.tags[s], r);
        &self.data[s * self.len..][..self.len]
    }
}

/// Depthwise 3x3 forward over `n` images (no bias, no clamp) from `src` (stored rows or
/// BatchNorm + clamp of the expansion), with the moments of the output when `stats`.
#[allow(clippy::too_many_arguments)]
pub fn dw_forward(
    isa: Tier,
    src: Src,
    n: usize,
    c: usize,
    g: Geom,
    w_hwc: &[f32],
    x: &mut [f32],
    stats: bool,
    work: &mut Work,
) -> Option<Moments> {
    let packed = PackedDw::new(isa, w_hwc, c, &vec![0.0; c]);
    let (in_img, out_img, row_in, row_out) = (g.in_h * g.in_w * c, g.out_h * g.out_w * c, g.in_w * c, g.out_w * c);
    let streamed = streamed(n * out_img);
    let parts = grow(&mut work.f64s, n * 2 * c);
    x[..n * out_img].par_chunks_mut(out_img).zip(parts.par_chunks_mut(2 * c)).enumerate().for_each(|(b, (xi, pi))| {
        with_scratch(|s| {
            let mut ring = Ring::new(&mut s.a, 2 * g.dilation + 1, row_in);
            let sums = grow(&mut s.d, 2 * c);
            sums.fill(0.0);
            let (sum, sumsq) = sums.split_at_mut(c);
            let tmp = grow(&mut s.t, 3 * c);
            let (tmp, shift) = tmp.split_at_mut(2 * c);
            for oy in 0..g.out_h {
                let dst = &mut xi[oy * row_out..][..row_out];
                let (out, dst) = if streamed { (grow(&mut s.b, row_out), Some(dst)) } else { (dst, None) };
                match src {
                    Src::Bn(pre, bn) => {
                        let img = &pre[b * in_img..][..in_img];
                        for ky in 0..3 {
                            if let Some(iy) = g.in_row(oy, ky) {
                                ring.ensure(iy, |r| {
                                    bn.apply(isa, &img[iy * row_in..][..row_in], c, None, r);
                                    prefetch_row(pre, (b * g.in_h + iy + 1) * row_in, row_in);
                                });
                            }
                        }
                        let rows = std::array::from_fn(|ky| g.in_row(oy, ky).map(|iy| ring.get(iy)));
                        dwconv_row(&packed, rows, g.row(), MinMax::NONE, out);
                    }
                    Src::Rows(a) => {
                        let img = &a[b * in_img..][..in_img];
                        let rows = std::array::from_fn(|ky| g.in_row(oy, ky).map(|iy| &img[iy * row_in..][..row_in]));
                        dwconv_row(&packed, rows, g.row(), MinMax::NONE, out);
                    }
                    Src::Patches(..) => unreachable!("the depthwise convolution reads activations"),
                }
                if stats {
                    if oy == 0 {
                        shift.copy_from_slice(&out[..c]);
                    }
                    bn::stats(isa, out, c, shift, sum, sumsq, tmp);
                }
                if let Some(dst) = dst {
                    stream::stream_copy(isa, out, dst);
                }
            }
            if stats {
                let k = (g.out_h * g.out_w) as f64;
                for j in 0..c {
                    pi[j] = shift[j] as f64 + sum[j] / k;
                    pi[c + j] = (sumsq[j] - sum[j] * sum[j] / k).max(0.0);
                }
            }
        })
    });
    stats.then(|| merge_moments(parts, std::iter::repeat_n(g.out_h * g.out_w, n), c))
}

/// Global average pool of BatchNorm + clamp of `x` (`n` images of `hw` pixels).
pub fn pool_forward(isa: Tier, x: &[f32], n: usize, hw: usize, c: usize, bn: BnAct, pooled: &mut [f32]) {
    pooled[..n * c].par_chunks_mut(c).enumerate().for_each(|(b, p)| {
        with_scratch(|s| {
            let a = grow(&mut s.a, hw * c);
            bn.apply(isa, &x[b * hw * c..][..hw * c], c, None, a);
            p.fill(0.0);
            for px in a.chunks_exact(c) {
                for (p, v) in p.iter_mut().zip(px) {
                    *p += v;
                }
            }
            for p in p.iter_mut() {
                *p /= hw as f32;
            }
        })
    });
}

/// `out = clamp(x * scale + shift) (+ residual)` over whole tensors.
pub fn bn_apply(isa: Tier, x: &[f32], c: usize, bn: BnAct, res: Option<&[f32]>, out: &mut [f32]) {
    let out = &mut out[..x.len()];
    match res {
        Some(r) => out
            .par_chunks_mut(ROWS * c)
            .zip(x.par_chunks(ROWS * c))
            .zip(r.par_chunks(ROWS * c))
            .for_each(|((o, x), r)| bn.apply(isa, x, c, Some(r), o)),
        None => {
            out.par_chunks_mut(ROWS * c).zip(x.par_chunks(ROWS * c)).for_each(|(o, x)| bn.apply(isa, x, c, None, o))
        }
    }
}

/// The reductions of a BatchNorm backward, `(sum dz, sum dz * (x - mean))` through the clamp,
/// over the rows of `x` (`c` wide) and the output gradient `grad`.
pub fn bn_backward_sums(
    isa: Tier,
    x: &[f32],
    grad: Grad,
    c: usize,
    bn: BnAct,
    mean: &[f32],
    work: &mut Work,
) -> BnSums {
    let m = x.len() / c;
    let nch = m.div_ceil(ROWS);
    let parts = grow(&mut work.f64s, nch * 2 * c);
    parts.par_chunks_mut(2 * c).enumerate().for_each(|(i, p)| {
        with_scratch(|s| {
            let (lo, hi) = (i * ROWS, ((i + 1) * ROWS).min(m));
            let g = grad.rows(lo, hi, c, &mut s.a);
            p.fill(0.0);
            let (a, b) = p.split_at_mut(c);
            let sums = Sums { dz: a, dzx: b, tmp: grow(&mut s.t, 2 * c) };
            bn.backward_sums(isa, &x[lo * c..hi * c], BnGrad::In(g), c, mean, sums);
        })
    });
    sum_parts(parts, c)
}

/// `g = dx` in place of the output gradient `g` over all rows of `bwd.x` (`c` wide): the
/// BatchNorm + clamp backward once its reductions are known.
pub fn bn_backward_in_place(isa: Tier, bwd: BnBwd, c: usize, g: &mut [f32]) {
    g.par_chunks_mut(ROWS * c).enumerate().for_each(|(i, g)| {
        let lo = i * ROWS;
        bwd.rows_in_place(isa, lo, lo + g.len() / c, c, g)
    });
}

fn sum_parts(parts: &[f64], c: usize) -> BnSums {
    let (mut s, mut q) = (vec![0f64; c], vec![0f64; c]);
    for p in parts.chunks_exact(2 * c) {
        for j in 0..c {
            s[j] += p[j];
            q[j] += p[c + j];
        }
    }
    (s, q)
}

/// What [`pw_backward`] differentiates: `y = BN(src W^T)` with `W` `[cout][cin]` over `m` rows.
#[derive(Clone, Copy)]
pub struct PwBwd<'a> {
    /// Gradient of the layer's output (after BatchNorm and clamp).
    pub grad: Grad<'a>,
    /// The layer's BatchNorm backward.
    pub bwd: BnBwd<'a>,
    pub src: Src<'a>,
    pub w: &'a [f32],
    pub m: usize,
    pub cin: usize,
    pub cout: usize,
}

/// Where [`pw_backward`] and [`dw_backward`] send the input gradient, and which BatchNorm
/// reductions of the layer before they take on the way.
pub struct InGrad<'a> {
    pub out: &'a mut [f32],
    /// Added to the input gradient (the residual's gradient).
    pub residual: Option<&'a [f32]>,
    /// The layer before's pre-BatchNorm output, BatchNorm and mean: its reductions are returned.
    pub sums: Option<(&'a [f32], BnAct<'a>, &'a [f32])>,
    /// Store the gradient masked by the layer before's clamp (`dz`, what [`dw_backward`]
    /// takes) rather than the gradient itself (needs `sums`).
    pub masked: bool,
}

/// Backward of a 1x1 convolution (or the stem) with its BatchNorm: writes the weight gradient
/// to `dw` (`[cout][cin]`) and, with `din`, the input gradient; returns the reductions asked
/// for in `din.sums`.
pub fn pw_backward(isa: Tier, p: PwBwd, dw: &mut [f32], din: Option<InGrad>, work: &mut Work) -> Option<BnSums> {
    let PwBwd { grad, bwd, src, w, m, cin, cout } = p;
    let rows = chunk_rows(BWD_CHUNK, cin.max(cout));
    let nch = m.div_ceil(rows);
    let parts = threads().min(nch).max(1);
    let bounds: Vec<usize> = (0..=parts).map(|k| k * nch / parts).collect();
    let nw = cout * cin;
    // The weight gradient as `[cin][cout]` when cin is the narrow side (see `Product`).
    let wt = cin < 64 && cout > cin;
    let prod = din.as_ref().map(|_| Product::plain(isa, w, cout, cin));
    let Work { f64s, f32s } = work;
    let wparts = grow(f32s, parts * nw);
    let want_sums = din.as_ref().is_some_and(|d| d.sums.is_some());
    let masked = din.as_ref().is_some_and(|d| d.masked);
    assert!(!masked || want_sums, "a masked input gradient needs the layer before's BatchNorm");
    let stream = streamed(m * cin);
    let sums = grow(f64s, if want_sums { nch * 2 * cin } else { 0 });
    // Split the outputs at part boundaries (in rows and in chunks).
    let (mut din_parts, mut sum_parts_) = (Vec::with_capacity(parts), Vec::with_capacity(parts));
    let (residual, feed) = din.as_ref().map_or((None, None), |d| (d.residual, d.sums));
    let mut rest_din: Option<&mut [f32]> = din.map(|d| {
        let out = d.out;
        &mut out[..m * cin]
    });
    let mut rest_sums = &mut sums[..];
    for k in 0..parts {
        let (c0, c1) = (bounds[k], bounds[k + 1]);
        let r = (c1 * rows).min(m) - c0 * rows;
        din_parts.push(rest_din.take().map(|d| {
            let (a, b) = d.split_at_mut(r * cin);
            rest_din = Some(b);
            a
        }));
        let take = if want_sums { (c1 - c0) * 2 * cin } else { 0 };
        let (a, b) = std::mem::take(&mut rest_sums).split_at_mut(take);
        sum_parts_.push(a);
        rest_sums = b;
    }
    wparts.par_chunks_mut(nw).zip(din_parts).zip(sum_parts_).enumerate().for_each(|(k, ((wp, mut dp), sp))| {
        with_scratch(|s| {
            let (c0, c1) = (bounds[k], bounds[k + 1]);
            let base = c0 * rows;
            for ci in c0..c1 {
                let (lo, hi) = (ci * rows, ((ci + 1) * rows).min(m));
                let r = hi - lo;
                // The gradient of the pre-BatchNorm output, in scratch b.
                let gp = grow(&mut s.b, r * cout);
                match grad {
                    Grad::Rows(g) => bwd.rows_to(isa, lo, hi, cout, &g[lo * cout..hi * cout], gp),
                    Grad::Pooled(g, hw) => {
                        broadcast(g, hw, lo, hi, cout, gp);
                        bwd.rows_in_place(isa, lo, hi, cout, gp);
                    }
                }
                let gp: &[f32] = gp;
                let a = src.rows(isa, lo, hi, cin, &mut s.a);
                if ci + 1 < c1 {
                    let next = ((ci + 2) * rows).min(m);
                    grad.prefetch(hi, next, cout);
                    prefetch_row(bwd.x, hi * cout, (next - hi) * cout);
                    src.prefetch(hi, next, cin);
                }
                let (gm, am) = (mm::Mat::row_major(gp, r, cout), mm::Mat::row_major(a, r, cin));
                if wt {
                    mm::matmul(wp, cout, am.t(), gm, ci > c0, 1);
                } else {
                    mm::matmul(wp, cin, gm.t(), am, ci > c0, 1);
                }
                let Some(dp) = dp.as_deref_mut() else { continue };
                let dst = &mut dp[(lo - base) * cin..(hi - base) * cin];
                let (out, dst) = if stream { (grow(&mut s.e, r * cin), Some(dst)) } else { (dst, None) };
                let res = residual.map(|res| &res[lo * cin..hi * cin]);
                prod.as_ref().expect("an input gradient").run(gp, r, out, res);
                if let Some((xf, bnf, mean)) = feed {
                    let slot = &mut sp[(ci - c0) * 2 * cin..][..2 * cin];
                    slot.fill(0.0);
                    let (sa, sb) = slot.split_at_mut(cin);
                    let xr = &xf[lo * cin..hi * cin];
                    let sums = Sums { dz: sa, dzx: sb, tmp: grow(&mut s.t, 2 * cin) };
                    let g = if masked { BnGrad::Mask(&mut *out) } else { BnGrad::In(&*out) };
                    bnf.backward_sums(isa, xr, g, cin, mean, sums);
                }
                if let Some(dst) = dst {
                    stream::stream_copy(isa, out, dst);
                }
            }
        })
    });
    let (first, rest) = wparts.split_at_mut(nw);
    for p in rest.chunks_exact(nw) {
        for (d, v) in first.iter_mut().zip(p) {
            *d += v;
        }
    }
    let dw = &mut dw[..nw];
    if wt {
        for i in 0..cin {
            for o in 0..cout {
                dw[o * cin + i] = first[i * cout + o];
            }
        }
    } else {
        dw.copy_from_slice(first);
    }
    want_sums.then(|| sum_parts(sums, cin))
}

/// What [`dw_backward`] differentiates: `y = BN(dwconv(src))` over `n` images.
#[derive(Clone, Copy)]
pub struct DwBwd<'a> {
    /// The output gradient masked by the layer's clamp (`dz`, as [`pw_backward`] stores it
    /// with `masked`), `n * out_h * out_w * c`.
    pub dz: &'a [f32],
    /// The layer's BatchNorm backward coefficients (`x` is not read: the depthwise output is
    /// recomputed from its input rows, which the weight gradient needs anyway).
    pub bwd: BnBwd<'a>,
    /// Stored rows or BatchNorm + clamp of the expansion.
    pub src: Src<'a>,
    /// Weights `[3][3][c]`.
    pub w_hwc: &'a [f32],
    pub n: usize,
    pub c: usize,
    pub g: Geom,
}

/// Backward of the depthwise convolution with its BatchNorm, per image. For each output row,
/// the input rows it read are recomputed into a ring (BatchNorm + clamp of the expansion), the
/// row's pre-BatchNorm output is recomputed from them, and the BatchNorm backward turns the
/// masked gradient into the convolution's output gradient, kept in a second ring; from these
/// the weight gradient and, row by row, the input gradient are formed. Returns the weight
/// gradient `[3][3][c]` and the reductions asked for in `din.sums`.
pub fn dw_backward(isa: Tier, p: DwBwd, din: InGrad, work: &mut Work) -> (Vec<f32>, Option<BnSums>) {
    let DwBwd { dz, bwd, src, w_hwc, n, c, g } = p;
    assert!(din.residual.is_none() && !din.masked, "the depthwise backward adds no residual and stores no mask");
    let (in_img, out_img, row_in, row_out) = (g.in_h * g.in_w * c, g.out_h * g.out_w * c, g.in_w * c, g.out_w * c);
    let packed = PackedDw::new(isa, w_hwc, c, &vec![0.0; c]);
    let stream = streamed(n * in_img);
    let feed = din.sums;
    let Work { f64s, f32s } = work;
    let wparts = grow(f32s, n * 9 * c);
    let sums = grow(f64s, if feed.is_some() { n * 2 * c } else { n });
    let sum_stride = sums.len() / n;
    let out = &mut din.out[..n * in_img];
    out.par_chunks_mut(in_img)
        .zip(wparts.par_chunks_mut(9 * c))
        .zip(sums.par_chunks_mut(sum_stride))
        .enumerate()
        .for_each(|(b, ((di, acc), sp))| {
            with_scratch(|s| {
                let slots = 2 * g.dilation + 1;
                let Scratch { a, b: sb, t, e, .. } = s;
                let mut gring = Ring::new(sb, slots, row_out);
                let mut sring = Ring::new(a, slots, row_in);
                let (xrow, rest) = grow(e, row_out + row_in).split_at_mut(row_out);
                acc.fill(0.0);
                sp.fill(0.0);
                let dzimg = &dz[b * out_img..][..out_img];
                let src_row = |iy: usize, r: &mut [f32]| match src {
                    Src::Bn(pre, bn) => {
                        bn.apply(isa, &pre[(b * g.in_h + iy) * row_in..][..row_in], c, None, r);
                        prefetch_row(pre, (b * g.in_h + iy + 1) * row_in, row_in);
                    }
                    _ => unreachable!("stored rows are read in place"),
                };
                let mut next = 0;
                // Output rows < `upto`: their input rows, their output recomputed, the BatchNorm
                // backward into the ring, and their weight-gradient contributions.
                let mut advance = |upto: usize, gring: &mut Ring, sring: &mut Ring| {
                    while next < upto {
                        let oy = next;
                        let rows: [Option<&[f32]>; 3] = match src {
                            Src::Rows(a) => {
                                let img = &a[b * in_img..][..in_img];
                                std::array::from_fn(|ky| g.in_row(oy, ky).map(|iy| &img[iy * row_in..][..row_in]))
                            }
                            _ => {
                                for ky in 0..3 {
                                    if let Some(iy) = g.in_row(oy, ky) {
                                        sring.ensure(iy, |r| src_row(iy, r));
                                    }
                                }
                                std::array::from_fn(|ky| g.in_row(oy, ky).map(|iy| sring.get(iy)))
                            }
                        };
                        dwconv_row(&packed, rows, g.row(), MinMax::NONE, xrow);
                        gring.ensure(oy, |r| {
                            bwd.affine_to(isa, &dzimg[oy * row_out..][..row_out], xrow, c, r);
                            prefetch_row(dz, (b * g.out_h + oy + 1) * row_out, row_out);
                        });
                        dw::weight_grad_row(isa, gring.get(oy), rows, c, g.row(), acc);
                        next += 1;
                    }
                };
                for iy in 0..g.in_h {
                    let last = (0..3).filter_map(|ky| g.out_row(iy, ky)).max();
                    if let Some(last) = last {
                        advance(last + 1, &mut gring, &mut sring);
                    }
                    let rows = std::array::from_fn(|ky| g.out_row(iy, ky).map(|oy| gring.get(oy)));
                    let dst = &mut di[iy * row_in..][..row_in];
                    let (drow, dst) = if stream { (&mut rest[..row_in], Some(dst)) } else { (dst, None) };
                    dw::input_grad_row(isa, rows, w_hwc, c, g.row(), drow);
                    if let Some((xf, bnf, mean)) = feed {
                        let (sa, sb) = sp.split_at_mut(c);
                        let xr = &xf[(b * g.in_h + iy) * row_in..][..row_in];
                        let sums = Sums { dz: sa, dzx: sb, tmp: grow(t, 2 * c) };
                        bnf.backward_sums(isa, xr, BnGrad::In(&*drow), c, mean, sums);
                    }
                    if let Some(dst) = dst {
                        stream::stream_copy(isa, drow, dst);
                    }
                }
                advance(g.out_h, &mut gring, &mut sring);
            })
        });
    let mut wsum = vec![0f64; 9 * c];
    for p in wparts.chunks_exact(9 * c) {
        for (s, v) in wsum.iter_mut().zip(p) {
            *s += *v as f64;
        }
    }
    (wsum.into_iter().map(|v| v as f32).collect(), feed.map(|_| sum_parts(sums, c)))
}

/// `da[m][i] = sum_o dy[m][o] * w[o][i]` (the classifier's input gradient; small).
pub fn pw_input_grad(dy: &[f32], m: usize, cout: usize, w: &[f32], cin: usize, da: &mut [f32]) {
    mm::matmul(
        &mut da[..m * cin],
        cin,
        mm::Mat::row_major(&dy[..m * cout], m, cout),
        mm::Mat::row_major(w, cout, cin),
        false,
        1,
    );
}

/// `y[m][o] = sum_i a[m][i] * w[o][i]` (the classifier; small).
pub fn pw_forward(a: &[f32], m: usize, cin: usize, w: &[f32], cout: usize, y: &mut [f32]) {
    gemm_fwd(&a[..m * cin], m, cin, w, cout, &mut y[..m * cout]);
}

/// `dw[o][i] = sum_m dy[m][o] * a[m][i]` (the classifier's weight gradient; small).
pub fn weight_grad(dy: &[f32], m: usize, cout: usize, a: &[f32], cin: usize, dw: &mut [f32]) {
    mm::matmul(
        &mut dw[..cout * cin],
        cin,
        mm::Mat::row_major(&dy[..m * cout], m, cout).t(),
        mm::Mat::row_major(&a[..m * cin], m, cin),
        false,
        1,
    );
}

/// PyTorch depthwise weights `[c][1][3][3]` to `[3][3][c]`.
pub fn dw_weights_hwc(w: &[f32], c: usize) -> Vec<f32> {
    let mut out = vec![0f32; 9 * c];
    for ch in 0..c {
        for t in 0..9 {
            out[t * c + ch] = w[ch * 9 + t];
        }
    }
    out
}

/// The stem's patches of output pixels `lo..hi` (over the batch):
/// `cols[pixel][(ky * 3 + kx) * 3 + ci]`, zero where the kernel hangs over the border.
fn im2col3_rows(img: &[f32], g: Geom, lo: usize, hi: usize, cols: &mut [f32]) {
    let in_img = g.in_h * g.in_w * 3;
    let per = g.out_h * g.out_w;
    for (p, row) in (lo..hi).zip(cols.chunks_exact_mut(27)) {
        let (b, rest) = (p / per, p % per);
        let (oy, ox) = (rest / g.out_w, rest % g.out_w);
        let im = &img[b * in_img..][..in_img];
        for ky in 0..3 {
            let iy = g.in_row(oy, ky);
            for kx in 0..3 {
                let ix = (ox * g.stride + kx * g.dilation) as isize - g.pad_left as isize;
                let dst = &mut row[(ky * 3 + kx) * 3..][..3];
                match iy {
                    Some(iy) if (0..g.in_w as isize).contains(&ix) => {
                        dst.copy_from_slice(&im[(iy * g.in_w + ix as usize) * 3..][..3])
                    }
                    _ => dst.fill(0.0),
                }
            }
        }
    }
}

/// PyTorch stem weights `[o][ci][ky][kx]` to the patch order `[o][(ky * 3 + kx) * 3 + ci]`.
pub fn stem_weights_to_cols(w: &[f32], cout: usize) -> Vec<f32> {
    let mut out = vec![0f32; cout * 27];
    for o in 0..cout {
        for ci in 0..3 {
            for t in 0..9 {
                out[o * 27 + t * 3 + ci] = w[(o * 3 + ci) * 9 + t];
            }
        }
    }
    out
}

/// The inverse of [`stem_weights_to_cols`].
pub fn stem_cols_to_weights(wc: &[f32], cout: usize, w: &mut [f32]) {
    for o in 0..cout {
        for ci in 0..3 {
            for t in 0..9 {
                w[(o * 3 + ci) * 9 + t] = wc[o * 27 + t * 3 + ci];
            }
        }
    }
}

/// A dense 3x3 convolution with stride 1 and dilation `rate`, zero-padded by `rate` on every
/// side (TF's 'SAME'), from `cin` to `cout` channels over `n` NHWC images of `h x w`: DeepLab's
/// atrous ASPP branches. It runs as up to nine shifted 1x1 products, without im2col: tap
/// `(ky, kx)` reads the input moved by `((ky - 1) rate, (kx - 1) rate)`, and only the window
/// of output pixels whose moved input lies inside the image is multiplied, row by row, straight
/// from the stored rows by the `gemm` crate. A tap whose window is empty (a rate at least the
/// map's size, all in the padding) costs nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Atrous {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub rate: usize,
    pub cin: usize,
    pub cout: usize,
}

impl Atrous {
    /// The shift of kernel index `k` (0, 1, 2) along an axis.
    fn shift(&self, k: usize) -> isize {
        (k as isize - 1) * self.rate as isize
    }

    /// The output coordinates `lo..hi` along an axis of `size` whose input, moved by `s`, lies
    /// inside it (empty when the whole tap is in the padding).
    fn span(size: usize, s: isize) -> (usize, usize) {
        let lo = (-s).max(0) as usize;
        let hi = (size as isize - s.max(0)).max(0) as usize;
        (lo.min(hi), hi)
    }

    /// Taps whose window is not empty: `(tap index ky * 3 + kx, dy, (x0, x1), dx)` with `x0..x1`
    /// the output columns it covers; the centre tap first (it covers every pixel).
    fn taps(&self) -> Vec<(usize, isize, (usize, usize), isize)> {
        let mut out = Vec::with_capacity(9);
        for t in [4, 0, 1, 2, 3, 5, 6, 7, 8] {
            let (dy, dx) = (self.shift(t / 3), self.shift(t % 3));
            let (y0, y1) = Atrous::span(self.h, dy);
            let (x0, x1) = Atrous::span(self.w, dx);
            if y0 < y1 && x0 < x1 {
                out.push((t, dy, (x0, x1), dx));
            }
        }
        out
    }

    /// Input row read by output row `y` through a tap moved by `dy`, if inside the image.
    fn in_row(&self, y: usize, dy: isize) -> Option<usize> {
        let iy = y as isize + dy;
        (0..self.h as isize).contains(&iy).then_some(iy as usize)
    }
}

/// PyTorch weights `[cout][cin][3][3]` to one `[cin][cout]` matrix per tap (`[9][cin][cout]`)
/// in `out`.
pub fn atrous_taps(w: &[f32], cin: usize, cout: usize, out: &mut [f32]) {
    for o in 0..cout {
        for i in 0..cin {
            for t in 0..9 {
                out[(t * cin + i) * cout + o] = w[(o * cin + i) * 9 + t];
            }
        }
    }
}

/// The inverse of [`atrous_taps`].
pub fn atrous_taps_to_weights(taps: &[f32], cin: usize, cout: usize, w: &mut [f32]) {
    for o in 0..cout {
        for i in 0..cin {
            for t in 0..9 {
                w[(o * cin + i) * 9 + t] = taps[(t * cin + i) * cout + o];
            }
        }
    }
}

/// The atrous convolution `x = conv(src)` (`src` `n h w x cin`, `x` `n h w x cout`, weights
/// per tap from [`atrous_taps`]), with the moments of `x` per channel when `stats`. Output rows
/// are shared out over threads; each is the sum of its taps in a fixed order.
pub fn atrous_forward(
    isa: Tier,
    a: Atrous,
    src: &[f32],
    taps: &[f32],
    x: &mut [f32],
    stats: bool,
    work: &mut Work,
) -> Option<Moments> {
    let Atrous { n, h, w, cin, cout, .. } = a;
    let row_out = w * cout;
    let list = a.taps();
    let parts = grow(&mut work.f64s, n * h * 2 * cout);
    x[..n * h * row_out].par_chunks_mut(row_out).zip(parts.par_chunks_mut(2 * cout)).enumerate().for_each(
        |(r, (xr, pr))| {
            let (i, y) = (r / h, r % h);
            for &(t, dy, (x0, x1), dx) in &list {
                let Some(iy) = a.in_row(y, dy) else { continue };
                let start = ((i * h + iy) * w) as isize + x0 as isize + dx;
                let lhs = mm::Mat { data: &src[start as usize * cin..], rows: x1 - x0, cols: cin, rs: cin, cs: 1 };
                let rhs = mm::Mat::row_major(&taps[t * cin * cout..][..cin * cout], cin, cout);
                mm::matmul(&mut xr[x0 * cout..], cout, lhs, rhs, t != 4, 1);
            }
            if stats {
                with_scratch(|s| moments_of(isa, xr, cout, pr, &mut s.t, &mut s.d));
            }
        },
    );
    stats.then(|| merge_moments(parts, std::iter::repeat_n(w, n * h), cout))
}

/// The input gradient of [`atrous_forward`]: `din (+)= conv^T(dx)` from the gradient `dx` of
/// its output (`n h w x cout`), added to `din` when `accumulate`. Input rows are shared out over
/// threads; each gathers the output rows that read it.
pub fn atrous_input_grad(a: Atrous, dx: &[f32], taps: &[f32], din: &mut [f32], accumulate: bool) {
    let Atrous { n, h, w, cin, cout, .. } = a;
    let row_in = w * cin;
    let list = a.taps();
    din[..n * h * row_in].par_chunks_mut(row_in).enumerate().for_each(|(r, dr)| {
        let (i, iy) = (r / h, r % h);
        for &(t, dy, (x0, x1), dx_) in &list {
            // The output row that reads input row `iy` through this tap.
            let Some(y) = a.in_row(iy, -dy) else { continue };
            let lhs =
                mm::Mat { data: &dx[((i * h + y) * w + x0) * cout..], rows: x1 - x0, cols: cout, rs: cout, cs: 1 };
            let rhs = mm::Mat::row_major(&taps[t * cin * cout..][..cin * cout], cin, cout).t();
            let col = (x0 as isize + dx_) as usize;
            mm::matmul(&mut dr[col * cin..], cin, lhs, rhs, accumulate || t != 4, 1);
        }
    });
}

/// Output pixels per gathered chunk of [`atrous_weight_grad`].
const ATROUS_CHUNK: usize = 4096;

/// The weight gradient of [`atrous_forward`] per tap (`[9][cin][cout]`, see [`atrous_taps`]):
/// for each tap, the windows of `src` and of the output gradient `dx` it pairs are gathered
/// (a chunk of pixels at a time) and multiplied, `src^T dx`, by the `gemm` crate on every
/// thread (it splits the output, so the sums do not depend on the thread count). Taps in the
/// padding get zero.
pub fn atrous_weight_grad(a: Atrous, src: &[f32], dx: &[f32], dtaps: &mut [f32], work: &mut Work) {
    let Atrous { n, h, w, cin, cout, .. } = a;
    let dtaps = &mut dtaps[..9 * cin * cout];
    dtaps.fill(0.0);
    let buf = grow(&mut work.f32s, ATROUS_CHUNK.min(n * h * w) * (cin + cout));
    let (abuf, gbuf) = buf.split_at_mut(ATROUS_CHUNK.min(n * h * w) * cin);
    for (t, dy, (x0, x1), dx_) in a.taps() {
        let (y0, y1) = Atrous::span(h, dy);
        let (per_row, rows) = (x1 - x0, y1 - y0);
        // Output rows `(i, y)` of the window, gathered ATROUS_CHUNK pixels (whole rows) at a time.
        let all: Vec<(usize, usize)> = (0..n).flat_map(|i| (y0..y1).map(move |y| (i, y))).collect();
        let per_chunk = (ATROUS_CHUNK / per_row).max(1);
        let dst = &mut dtaps[t * cin * cout..][..cin * cout];
        debug_assert_eq!(all.len(), n * rows);
        for (c, group) in all.chunks(per_chunk).enumerate() {
            let p = group.len() * per_row;
            abuf[..p * cin]
                .par_chunks_mut(per_row * cin)
                .zip(gbuf[..p * cout].par_chunks_mut(per_row * cout))
                .zip(group)
                .for_each(|((ar, gr), &(i, y))| {
                    let iy = (y as isize + dy) as usize;
                    let ix = (x0 as isize + dx_) as usize;
                    ar.copy_from_slice(&src[((i * h + iy) * w + ix) * cin..][..per_row * cin]);
                    gr.copy_from_slice(&dx[((i * h + y) * w + x0) * cout..][..per_row * cout]);
                });
            let lhs = mm::Mat::row_major(&abuf[..p * cin], p, cin).t();
            let rhs = mm::Mat::row_major(&gbuf[..p * cout], p, cout);
            mm::matmul(dst, cout, lhs, rhs, c > 0, threads());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn vals(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// The direct definition in f64: `out[i, y, x, o] = sum w[o, c, ky, kx] src[i, y + dy, x + dx, c]`.
    fn naive(a: Atrous, src: &[f32], w: &[f32]) -> Vec<f64> {
        let Atrous { n, h, w: wd, rate, cin, cout } = a;
        let mut out = vec![0f64; n * h * wd * cout];
        for i in 0..n {
            for y in 0..h {
                for x in 0..wd {
                    for t in 0..9 {
                        let iy = y as isize + (t as isize / 3 - 1) * rate as isize;
                        let ix = x as isize + (t as isize % 3 - 1) * rate as isize;
                        if !(0..h as isize).contains(&iy) || !(0..wd as isize).contains(&ix) {
                            continue;
                        }
                        let px = &src[((i * h + iy as usize) * wd + ix as usize) * cin..][..cin];
                        for o in 0..cout {
                            let s: f64 = (0..cin).map(|c| w[(o * cin + c) * 9 + t] as f64 * px[c] as f64).sum();
                            out[((i * h + y) * wd + x) * cout + o] += s;
                        }
                    }
                }
            }
        }
        out
    }

    fn close(ours: &[f32], want: &[f64], what: &str) {
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (k, (a, b)) in ours.iter().zip(want).enumerate() {
            assert!((*a as f64 - b).abs() <= 1e-5 * scale.max(1.0), "{what}[{k}]: {a} vs {b}");
        }
    }

    /// Forward, input gradient and weight gradient of the shifted-product atrous convolution
    /// against the direct definition and its exact adjoints, at rates that leave every tap
    /// partly inside the map, some taps wholly in the padding, and all but the centre tap
    /// there; on maps wider than tall and the reverse.
    #[test]
    fn atrous_matches_direct_convolution_and_its_adjoints() {
        let isa = Tier::new(mnv2_kernels::isa::best()).unwrap();
        let mut rng = Rng::new(5);
        let mut work = Work::default();
        for (n, h, w, rate, cin, cout) in [
            (2, 7, 9, 1, 5, 6),
            (2, 7, 9, 3, 5, 6),
            (1, 9, 6, 6, 4, 3),
            (1, 20, 21, 18, 3, 4),
            (3, 5, 4, 18, 3, 7),
            (1, 1, 1, 2, 2, 2),
        ] {
            let a = Atrous { n, h, w, rate, cin, cout };
            let what = format!("{a:?}");
            let src = vals(&mut rng, n * h * w * cin);
            let wt = vals(&mut rng, cout * cin * 9);
            let mut taps = vec![f32::NAN; wt.len()];
            atrous_taps(&wt, cin, cout, &mut taps);
            let mut back = vec![0f32; wt.len()];
            atrous_taps_to_weights(&taps, cin, cout, &mut back);
            assert_eq!(back, wt);
            // Forward and its moments.
            let want = naive(a, &src, &wt);
            let mut x = vec![f32::NAN; n * h * w * cout];
            let mo = atrous_forward(isa, a, &src, &taps, &mut x, true, &mut work).unwrap();
            close(&x, &want, &format!("{what} forward"));
            for o in 0..cout {
                let col: Vec<f64> = want.iter().skip(o).step_by(cout).copied().collect();
                let mean = col.iter().sum::<f64>() / col.len() as f64;
                let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64;
                assert!((mo.mean[o] - mean).abs() < 1e-5 && (mo.var[o] - var).abs() < 1e-4 * var.max(1.0), "{what}");
            }
            // Input gradient: the adjoint, column by column of the direct operator (a basis
            // vector of the output gradient at each output pixel and channel in turn would be
            // slow; instead <dx, conv(e_j)> for every input basis vector e_j).
            let g = vals(&mut rng, n * h * w * cout);
            let prior = vals(&mut rng, n * h * w * cin);
            let mut din = prior.clone();
            atrous_input_grad(a, &g, &taps, &mut din, true);
            let mut fresh = vec![f32::NAN; din.len()];
            atrous_input_grad(a, &g, &taps, &mut fresh, false);
            let mut e = vec![0f32; src.len()];
            let mut want_din = vec![0f64; src.len()];
            for j in 0..src.len() {
                e[j] = 1.0;
                let col = naive(a, &e, &wt);
                want_din[j] = col.iter().zip(&g).map(|(c, g)| c * *g as f64).sum();
                e[j] = 0.0;
            }
            close(&fresh, &want_din, &format!("{what} input gradient"));
            let with_prior: Vec<f64> = want_din.iter().zip(&prior).map(|(d, p)| d + *p as f64).collect();
            close(&din, &with_prior, &format!("{what} accumulated input gradient"));
            // Weight gradient: d/dw[o, c, t] of <g, conv(src)> = <g, conv with a unit weight>.
            let mut dtaps = vec![f32::NAN; taps.len()];
            atrous_weight_grad(a, &src, &g, &mut dtaps, &mut work);
            let mut dw = vec![0f32; wt.len()];
            atrous_taps_to_weights(&dtaps, cin, cout, &mut dw);
            let mut unit = vec![0f32; wt.len()];
            let want_dw: Vec<f64> = (0..wt.len())
                .map(|j| {
                    unit[j] = 1.0;
                    let col = naive(a, &src, &unit);
                    unit[j] = 0.0;
                    col.iter().zip(&g).map(|(c, g)| c * *g as f64).sum()
                })
                .collect();
            close(&dw, &want_dw, &format!("{what} weight gradient"));
        }
    }

    /// The forward pass, its moments and both gradients give the same bits on 1, 2 and 3
    /// threads (rows are shared out whole; the gemm crate splits the weight gradient's output).
    #[test]
    fn atrous_is_the_same_on_any_thread_count() {
        let isa = Tier::new(mnv2_kernels::isa::best()).unwrap();
        let a = Atrous { n: 2, h: 9, w: 11, rate: 2, cin: 40, cout: 72 };
        let mut rng = Rng::new(4);
        let src = vals(&mut rng, 2 * 9 * 11 * 40);
        let g = vals(&mut rng, 2 * 9 * 11 * 72);
        let taps = vals(&mut rng, 9 * 40 * 72);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut work = Work::default();
                let mut x = vec![0f32; g.len()];
                let mo = atrous_forward(isa, a, &src, &taps, &mut x, true, &mut work).unwrap();
                let mut din = vec![0f32; src.len()];
                atrous_input_grad(a, &g, &taps, &mut din, false);
                let mut dt = vec![0f32; taps.len()];
                atrous_weight_grad(a, &src, &g, &mut dt, &mut work);
                (x, mo.mean, mo.var, din, dt)
            })
        };
        let one = run(1);
        for t in [2, 3] {
            let other = run(t);
            assert!(one.0 == other.0 && one.1 == other.1 && one.2 == other.2, "forward on {t} threads");
            assert!(one.3 == other.3 && one.4 == other.4, "gradients on {t} threads");
        }
    }

    /// Taps wholly in the padding are skipped: with a rate of at least the map's size only the
    /// centre tap remains, a 1x1 convolution, and the other taps' weight gradients are zero.
    #[test]
    fn atrous_beyond_the_map_is_the_centre_tap() {
        let a = Atrous { n: 2, h: 3, w: 4, rate: 6, cin: 3, cout: 2 };
        assert_eq!(a.taps().iter().map(|t| t.0).collect::<Vec<_>>(), [4]);
        let b = Atrous { h: 21, w: 21, rate: 18, ..a };
        assert_eq!(b.taps().len(), 9);
        assert_eq!(Atrous::span(21, 18), (0, 3));
        assert_eq!(Atrous::span(21, -18), (18, 21));
        assert_eq!(Atrous::span(3, 6), (0, 0));
        let mut rng = Rng::new(9);
        let mut work = Work::default();
        let src = vals(&mut rng, 2 * 3 * 4 * 3);
        let g = vals(&mut rng, 2 * 3 * 4 * 2);
        let taps = vals(&mut rng, 9 * 3 * 2);
        let mut dtaps = vec![f32::NAN; taps.len()];
        atrous_weight_grad(a, &src, &g, &mut dtaps, &mut work);
        for t in (0..9).filter(|&t| t != 4) {
            assert!(dtaps[t * 6..(t + 1) * 6].iter().all(|&v| v == 0.0));
        }
        assert!(dtaps[4 * 6..5 * 6].iter().any(|&v| v != 0.0));
    }
}
