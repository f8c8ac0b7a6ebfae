//! Per input size: the geometry of every block, how it is banded, which blocks stream into
//! each other, and how much activation memory all of that takes.

use std::ops::Range;

use mnv2_kernels::dwconv::DwRow;
use mnv2_kernels::stem::StemGeom;

use super::TapAt;
use crate::plan::{Head, Plan, Shape};

/// How many slots of a net's activation element one row of a block's values takes in the
/// engine's buffers: the unit every ring and band length of a [`Schedule`] is counted in.
/// One value per slot unless the net packs its rows (an f32 net with bf16 rows: two per slot).
pub(crate) trait RowSlots {
    /// Slots that one row of `len` values of block `k`'s expanded tensor takes (in its ring,
    /// or materialised) for depthwise rows of geometry `g`: `len` unless the net packs them
    /// (the net then keeps that tensor out of head taps and pixel splits, whose buffers hold
    /// `len`).
    fn hidden_row(&self, _k: usize, _g: DwRow, len: usize) -> usize {
        len
    }
    /// Slots that one depthwise output row of `len` values takes in the band (the rows
    /// `Net::dw_rows` writes and `Net::project` reads): `len` unless the net packs them.
    fn band_row(&self, _k: usize, len: usize) -> usize {
        len
    }
}

/// One value per slot (f32 and u8 rows).
#[cfg(test)]
pub(super) struct Values;

#[cfg(test)]
impl RowSlots for Values {}

/// Geometry of one block at one input size.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geo {
    pub h_in: usize,
    pub w_in: usize,
    pub cin: usize,
    pub hidden: usize,
    pub h_out: usize,
    pub w_out: usize,
    pub cout: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub residual: bool,
    /// Output rows per band.
    pub band: usize,
    /// Rows in the ring of expanded rows (0 when the block reads its input rows directly).
    pub ring: usize,
    /// The expand conv runs as a phase of its own that materialises the expanded tensor
    /// (a head reads it); the block then reads those rows directly.
    pub split: bool,
    /// An image split across threads shares this block out by pixels, not rows: the threads
    /// expand their pixels into the team's side buffer, then each runs the depthwise rows
    /// covering its output pixels and projects those pixels. On small maps a split by rows
    /// is uneven (7 rows on 2 threads: 4 and 3) and each thread would expand the rows at the
    /// seam again (at 14x14 on 2 threads, 8 rows for 7).
    pub pixels: bool,
}

impl Geo {
    /// The geometry of one of the block's depthwise output rows.
    pub fn dw_row(&self) -> DwRow {
        DwRow {
            w_in: self.w_in,
            w_out: self.w_out,
            stride: self.stride,
            dilation: self.dilation,
            pad_left: self.pad_left,
        }
    }

    /// Expanded-tensor rows a band of output rows reads, clamped to the input: `lo..=hi`.
    pub fn hidden_rows(&self, oy: Range<usize>) -> (usize, usize) {
        let lo = (oy.start * self.stride).saturating_sub(self.pad_top);
        let hi = ((oy.end - 1) * self.stride + 2 * self.dilation).saturating_sub(self.pad_top).min(self.h_in - 1);
        (lo, hi)
    }

    /// Most input rows one band needs at once.
    fn span(&self) -> usize {
        ((self.band - 1) * self.stride + 2 * self.dilation + 1).min(self.h_in)
    }

    /// Slots of this block's ring of expanded rows (block `k` of a net counting rows in
    /// `slots`).
    fn ring_len(&self, k: usize, slots: &dyn RowSlots) -> usize {
        self.ring * slots.hidden_row(k, self.dw_row(), self.w_in * self.hidden)
    }

    /// Slots of this block's band of depthwise rows (as [`Geo::ring_len`]).
    fn band_len(&self, k: usize, slots: &dyn RowSlots) -> usize {
        self.band * slots.band_row(k, self.w_out * self.hidden)
    }

    /// Values of the expanded tensor a pixel-split block holds in the side buffer.
    pub fn side_len(&self) -> usize {
        if self.pixels {
            self.h_in * self.w_in * self.hidden
        } else {
            0
        }
    }
}

/// Whether a block whose output has `h_out` rows is shared out by pixels among `threads`
/// threads (see [`Geo::pixels`]): when each thread would get fewer than 4 rows (the 7x7
/// blocks on 2 threads). On 14x14 the extra barrier and the expanded tensor's round trip
/// through memory cost about what the seam rows do (measured on 2 threads, Zen 4).
fn by_pixels(h_out: usize, threads: usize) -> bool {
    threads > 1 && h_out < 4 * threads
}

/// Pixels a fast-mode band holds at least, unless the net asks for more
/// ([`super::Net::band_pixels`]): a few 14-row tiles per projection call.
pub(super) const BAND_PIXELS: usize = 64;

/// Output rows per band: at least `pixels` pixels, so the projection GEMM gets whole tiles.
/// Fast mode asks for the net's [`super::Net::band_pixels`] (at least [`BAND_PIXELS`]);
/// streaming mode for 14 (one tile), which keeps every ring and band buffer small.
fn band_rows(w_out: usize, h_out: usize, pixels: usize) -> usize {
    pixels.div_ceil(w_out).clamp(1, h_out)
}

pub(super) struct Schedule {
    pub image: Shape,
    pub geos: Vec<Geo>,
    pub stem_geom: StemGeom,
    /// The first block computes its expanded rows with the stem (no expand conv): the stem
    /// output is never materialised.
    pub stem_fused: bool,
    pub stem_out: Shape,
    /// Leading blocks chained row by row (streaming mode): block k < chain produces rows
    /// into a ring that block k + 1 pulls from, so their outputs never exist whole. The
    /// output of block `chain - 1` is materialised. 0 in fast mode.
    pub chain: usize,
    /// Ring rows of the outputs of chain blocks `0..chain - 1`.
    pub chain_out_cap: Vec<usize>,
    pub last_in: Shape,
    pub last_c: usize,
    pub classes: usize,
    /// The backbone layers a detection or segmentation head reads (materialised once, in
    /// real units), with where each is in the schedule; `None` for a classifier.
    pub taps: Option<Vec<(usize, TapAt)>>,
    /// Slots ([`RowSlots`]) of the ring shared by the blocks outside the chain (per thread).
    pub ring_len: usize,
    /// Slots of each chain block's ring of expanded rows.
    pub chain_hidden: Vec<usize>,
    /// Slots of the depthwise band buffer (per thread).
    pub band_len: usize,
    /// Values of the last conv's band buffer (per thread).
    pub last_band: usize,
    /// Values of each of the two ping-pong activation buffers.
    pub act_len: usize,
    /// Values of the team's side buffer (the largest expanded tensor of a pixel-split block).
    pub side_len: usize,
    /// The last conv is shared out by pixels (as [`Geo::pixels`]).
    pub last_pixels: bool,
}

impl Schedule {
    /// The schedule of `plan`'s images: run on one thread, or split across threads, with the
    /// small maps shared out by pixels among `threads` threads (1: by rows everywhere), in
    /// bands of `band_pixels` pixels or more in fast mode; rings and bands counted in the
    /// slots of `slots` (the streaming chain chosen by those counts too).
    pub fn new(plan: &Plan, streaming: bool, threads: usize, band_pixels: usize, slots: &dyn RowSlots) -> Schedule {
        let taps = match plan.head {
            Head::Classifier(_) => None,
            _ => Some(super::head_taps(plan).expect("checked when the engine was built")),
        };
        let split = |k: usize| taps.iter().flatten().any(|t| t.1 == TapAt::Expansion(k));
        let l0 = &plan.layers[0];
        let stem = l0.conv().expect("stem");
        // The stem's output rows can feed the first block directly unless that block reads
        // them twice (an expand conv, or a residual).
        let stem_fused = plan.stem_feeds_first_block();
        let band_pixels = if streaming { 14 } else { band_pixels };
        let geos_for = |chain: usize, threads: usize| -> Vec<Geo> {
            plan.blocks
                .iter()
                .enumerate()
                .map(|(k, b)| {
                    let dw = plan.layers[b.depthwise].conv().expect("depthwise");
                    let band = if k < chain { 1 } else { band_rows(b.output.w, b.output.h, band_pixels) };
                    let reads_input = (b.expand.is_none() && !(stem_fused && k == 0)) || split(k);
                    // Blocks with an expand conv only; a head's taps and the streaming chain keep
                    // their row-wise shares.
                    let pixels = taps.is_none() && k >= chain && b.expand.is_some() && by_pixels(b.output.h, threads);
                    let mut g = Geo {
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
                        ring: 0,
                        split: split(k),
                        pixels,
                    };
                    if pixels {
                        // The depthwise rows covering one thread's output pixels.
                        g.band = (b.output.h * b.output.w).div_ceil(threads).div_ceil(b.output.w) + 1;
                    } else if !reads_input {
                        g.ring = g.span();
                    }
                    g
                })
                .collect()
        };
        let last = &plan.layers[plan.last_conv];
        let build = |chain: usize, threads: usize| {
            let geos = geos_for(chain, threads);
            let chain_out_cap: Vec<usize> =
                (0..chain.saturating_sub(1)).map(|k| (geos[k].band + geos[k + 1].span()).min(geos[k].h_out)).collect();
            let mut act_len = if stem_fused { 0 } else { l0.output.len() };
            for (k, b) in plan.blocks.iter().enumerate() {
                if k + 1 >= chain {
                    act_len = act_len.max(b.output.len());
                }
                if geos[k].split {
                    act_len = act_len.max(b.input.h * b.input.w * b.hidden);
                }
            }
            Schedule {
                image: plan.input(),
                stem_geom: StemGeom {
                    w_out: l0.output.w,
                    stride: stem.stride,
                    pad_top: stem.pad.top,
                    pad_left: stem.pad.left,
                },
                stem_fused,
                stem_out: l0.output,
                chain,
                chain_out_cap,
                ring_len: geos.iter().enumerate().skip(chain).map(|(k, g)| g.ring_len(k, slots)).max().unwrap_or(0),
                chain_hidden: geos[..chain].iter().enumerate().map(|(k, g)| g.ring_len(k, slots)).collect(),
                band_len: geos.iter().enumerate().map(|(k, g)| g.band_len(k, slots)).max().unwrap_or(0),
                side_len: geos.iter().map(Geo::side_len).max().unwrap_or(0),
                geos,
                last_in: last.input,
                last_c: last.output.c,
                classes: if taps.is_some() { 0 } else { plan.output().c },
                // With a head, the last conv writes its tap directly.
                last_band: if taps.is_some() {
                    0
                } else {
                    band_rows(last.output.w, last.output.h, band_pixels) * last.output.w * last.output.c
                },
                act_len,
                last_pixels: taps.is_none() && by_pixels(last.input.h, threads),
                taps: taps.clone(),
            }
        };
        if !streaming {
            return build(0, threads);
        }
        // Streaming: chain as many leading blocks as keeps the total smallest, stopping before
        // the first block a head taps (its tensors must exist whole).
        let first_tapped = taps
            .iter()
            .flatten()
            .map(|t| match t.1 {
                TapAt::Expansion(k) | TapAt::Block(k) => k,
                TapAt::LastConv => plan.blocks.len(),
            })
            .min()
            .unwrap_or(plan.blocks.len());
        let most = first_tapped.min(plan.blocks.len() - 1);
        if most == 0 {
            return build(0, threads);
        }
        // The chain is chosen as for one thread, so that whole and split images share it (and
        // the rings the engine allocates for it).
        let chain = (1..=most).min_by_key(|&c| build(c, 1).activation_values(1)).expect("a plan has blocks");
        build(chain, threads)
    }

    /// Slots of the rings private to chain block `k`: its expanded rows, and its output
    /// (values) unless it is the last of the chain.
    pub fn chain_ring_lens(&self, k: usize) -> (usize, usize) {
        let g = &self.geos[k];
        let out = self.chain_out_cap.get(k).map_or(0, |cap| cap * g.w_out * g.cout);
        (self.chain_hidden[k], out)
    }

    /// Activation slots the engine allocates for one image split across `threads` (each
    /// thread streams its share of the chain in rings of its own).
    pub fn activation_values(&self, threads: usize) -> usize {
        let chain: usize = (0..self.chain).map(|k| self.chain_ring_lens(k)).map(|(a, b)| a + b).sum();
        let per_thread = chain + self.ring_len + self.band_len + self.last_band + self.last_c;
        2 * self.act_len + self.side_len + threads * per_thread
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::Spec;

    #[test]
    fn streaming_fits_in_1mb_at_224() {
        let plan = Plan::new(&Spec::default()).unwrap();
        let fast = Schedule::new(&plan, false, 1, BAND_PIXELS, &Values);
        let streaming = Schedule::new(&plan, true, 1, BAND_PIXELS, &Values);
        assert_eq!(fast.chain, 0);
        assert!(streaming.chain >= 3, "the 112x112 and 56x56 blocks are chained");
        let bytes = 4 * streaming.activation_values(1);
        assert!(bytes <= 1_000_000, "streaming needs {bytes} bytes");
        assert!(4 * fast.activation_values(1) > 2 * bytes);
        // Every ring can hold what one band of its consumer reads at once.
        for (k, cap) in streaming.chain_out_cap.iter().enumerate() {
            assert!(*cap >= streaming.geos[k + 1].span());
        }
    }

    /// Ring and band lengths, the streaming chain's rings included, are counted in the slots
    /// the net's rows take: rows packed two values per slot (a bf16 net) take half.
    #[test]
    fn lengths_are_counted_in_the_nets_slots() {
        struct Halves;
        impl RowSlots for Halves {
            fn hidden_row(&self, _: usize, _: DwRow, len: usize) -> usize {
                len / 2
            }
            fn band_row(&self, _: usize, len: usize) -> usize {
                len / 2
            }
        }
        let plan = Plan::new(&Spec::default()).unwrap();
        for streaming in [false, true] {
            let (v, h) = (
                Schedule::new(&plan, streaming, 1, BAND_PIXELS, &Values),
                Schedule::new(&plan, streaming, 1, BAND_PIXELS, &Halves),
            );
            assert_eq!((v.chain > 0, h.chain), (streaming, v.chain));
            assert_eq!((2 * h.ring_len, 2 * h.band_len), (v.ring_len, v.band_len));
            assert_eq!(h.chain_hidden.len(), h.chain);
            let doubled: Vec<usize> = h.chain_hidden.iter().map(|n| 2 * n).collect();
            assert_eq!(doubled, v.chain_hidden);
            assert!(v.ring_len > 0 && v.band_len > 0);
        }
    }
}
