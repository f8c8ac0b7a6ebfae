//! One band of output rows of a fused inverted residual block, for any [`Net`] (f32 or int8).

use std::ops::Range;
use std::time::Instant;

use mnv2_kernels::dwconv::MAX_ROWS;
use mnv2_kernels::exec::{Rows, RowsMut};
use mnv2_kernels::stem::{Image, StemGeom};

use super::schedule::Geo;
use super::Net;

/// Where a block reads its input rows.
pub(super) enum Src<'a, T> {
    /// The stem's output rows, computed from the image on demand.
    Image(Image<'a>, StemGeom),
    Rows(Rows<'a, T>),
}

impl<T> Clone for Src<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Src<'_, T> {}

/// A block's ring of expanded rows and the first row not computed yet; when profiling, the
/// seconds spent expanding (or in the stem), in the depthwise conv and projecting.
pub(super) struct Hidden<'a, H> {
    pub ring: &'a mut [H],
    pub next: usize,
    pub ops: Option<&'a mut [f64; 3]>,
}

/// Adds the time since `*t` to operation `op` and restarts `t` (profiling only).
fn lap(ops: &mut Option<&mut [f64; 3]>, op: usize, t: &mut Option<Instant>) {
    if let (Some(ops), Some(t0)) = (ops.as_deref_mut(), t.as_mut()) {
        ops[op] += t0.elapsed().as_secs_f64();
        *t0 = Instant::now();
    }
}

/// Output rows `oy` of block `k` into `out`: expanded rows (those not already in the ring)
/// -> depthwise into `band` -> projection with the residual in its epilogue.
///
/// The input rows the band reads must be present in `src`.
#[allow(clippy::too_many_arguments)]
pub(super) fn band<N: Net>(
    net: &N,
    k: usize,
    g: &Geo,
    src: Src<N::T>,
    out: &mut RowsMut<N::T>,
    oy: Range<usize>,
    hidden: &mut Hidden<N::T>,
    band: &mut [N::T],
) {
    let (oy0, oy1) = (oy.start, oy.end);
    let (lo, hi) = g.hidden_rows(oy.clone());
    let mut t = hidden.ops.is_some().then(Instant::now);
    let ring_row = net.hidden_row(k, g.dw_row(), g.w_in * g.hidden);
    let mut ring = (g.ring > 0).then(|| RowsMut::new(&mut *hidden.ring, ring_row, g.ring));
    // 1. Expanded rows lo..=hi into the ring, each computed once per block.
    if let Some(ring) = ring.as_mut() {
        let mut r = hidden.next.max(lo);
        while r <= hi {
            let mut end = ring.run_end(r, hi + 1);
            if let Src::Rows(input) = src {
                end = input.run_end(r, end);
            }
            let dst = ring.rows_mut(r, end);
            // `ldc` counts values, not slots: a net that packs bf16 rows reads `dst` as those.
            match src {
                Src::Image(img, sg) => {
                    for (j, row) in dst.chunks_exact_mut(ring_row).enumerate() {
                        net.stem_hidden_row(g.dw_row(), img, r + j, sg, row);
                    }
                }
                Src::Rows(input) => {
                    let a = input.rows(r, end);
                    net.expand(k, g.dw_row(), (end - r) * g.w_in, a, g.cin, dst, g.hidden);
                }
            }
            r = end;
        }
        hidden.next = hidden.next.max(hi + 1);
    }
    lap(&mut hidden.ops, 0, &mut t);
    // 2. Depthwise, the band's rows a few per call, into the band buffer.
    let band_row = net.band_row(k, g.w_out * g.hidden);
    let rows = match (ring.as_ref().map(|r| r.as_rows()), src) {
        (Some(ring), _) => ring,
        (None, Src::Rows(input)) => input,
        (None, Src::Image(..)) => unreachable!("the stem always fills a ring"),
    };
    depthwise(net, k, g, rows, oy0..oy1, band);
    lap(&mut hidden.ops, 1, &mut t);
    // 3. Projection, in runs contiguous in the output (and residual) rows.
    let mut r = oy0;
    while r < oy1 {
        let mut end = out.run_end(r, oy1);
        let residual = match src {
            Src::Rows(input) if g.residual => {
                end = input.run_end(r, end);
                Some((input.rows(r, end), g.cin))
            }
            _ => None,
        };
        let a = &band[(r - oy0) * band_row..(end - oy0) * band_row];
        let dst = out.rows_mut(r, end);
        net.project(k, (end - r) * g.w_out, a, g.hidden, dst, g.cout, residual);
        r = end;
    }
    lap(&mut hidden.ops, 2, &mut t);
}

/// Output pixels `out.window_rows()` (rows of `g.cout` values) of pixel-split block `k`
/// (see [`Geo::pixels`]): the depthwise rows covering them into `band`, from the expanded
/// tensor `hidden` (whole, as activations: u8 codes in the int8 network), then the
/// projection of those pixels, with the block
/// input `input` (whole) added if the block has a residual.
pub(super) fn pixels<N: Net>(
    net: &N,
    k: usize,
    g: &Geo,
    input: &[N::T],
    hidden: &[N::T],
    out: &mut RowsMut<N::T>,
    band: &mut [N::T],
) {
    let px = out.window_rows();
    if px.is_empty() {
        return;
    }
    let (y0, y1) = (px.start / g.w_out, (px.end - 1) / g.w_out + 1);
    let band_row = net.band_row(k, g.w_out * g.hidden);
    depthwise(net, k, g, Rows::new(hidden, g.w_in * g.hidden, g.h_in), y0..y1, band);
    // The band holds whole rows: this thread's pixels start `skip` pixels in.
    let pixel = band_row / g.w_out;
    let skip = px.start - y0 * g.w_out;
    let a = &band[skip * pixel..(skip + px.len()) * pixel];
    let residual = g.residual.then(|| (&input[px.start * g.cin..px.end * g.cin], g.cin));
    net.project(k, px.len(), a, g.hidden, out.values_mut(), g.cout, residual);
}

/// Output rows `ys` of block `k`'s depthwise conv from the expanded rows `rows` (indexed by
/// input row), into `band` from its start: as many rows per call ([`Net::dw_rows`]) as one
/// kernel call takes, so the kernel runs each channel tile across them while their shared
/// input rows are in L1.
fn depthwise<N: Net>(net: &N, k: usize, g: &Geo, rows: Rows<N::T>, ys: Range<usize>, band: &mut [N::T]) {
    const PER_CALL: usize = MAX_ROWS;
    let band_row = net.band_row(k, g.w_out * g.hidden);
    let dwg = g.dw_row();
    let mut triples: [[Option<&[N::T]>; 3]; PER_CALL] = [[None; 3]; PER_CALL];
    let mut y = ys.start;
    while y < ys.end {
        let n = (ys.end - y).min(PER_CALL);
        for (j, t) in triples[..n].iter_mut().enumerate() {
            *t = std::array::from_fn(|ky| {
                let iy = ((y + j) * g.stride + ky * g.dilation) as isize - g.pad_top as isize;
                (iy >= 0 && (iy as usize) < g.h_in).then(|| rows.rows(iy as usize, iy as usize + 1))
            });
        }
        let at = (y - ys.start) * band_row;
        net.dw_rows(k, &triples[..n], dwg, &mut band[at..at + n * band_row]);
        y += n;
    }
}
