//! AVX2 depthwise 3x3: 8-channel tiles.
//!
//! f32 rows ([`row`]), read in place (no staging), walked as on AVX-512: interior pixels in
//! blocks of 6 (then 4, 2, 1) with stride and dilation as constants and no bounds checks, the
//! 9 weight vectors of a tile loaded once per call; edge pixels with their taps inside the row
//! unrolled. Each pixel's sum is the twin's, bit for bit: the bias, then the taps inside the
//! image, ky then kx, one FMA each; padding rows (null) and columns are skipped, not
//! zero-weighted. The two 8-channel tiles of a 16-channel group (a cache line of each pixel)
//! run block by block across every output row of the call, so an input pixel comes from L2
//! once per call. Only a channel tail's tile goes through `maskload`/`maskstore`.
//!
//! u8 rows ([`row_u8`]): as in the AVX-512 kernel, each input value is widened to f32 once,
//! not at each of its up to 9 taps: the input rows of two tiles (16 channels) are widened
//! together, in one pass over each row, into a thread-local staging area (per tile 8 channels
//! per pixel, contiguous), here with their padding columns as zeros,
//! so every output pixel runs the same loop, unrolled over a block of pixels with stride and
//! dilation as constants, with no bounds check at all. A staged row serves every output row
//! of the call that reads it (three at stride 1): the area keeps the rows staged last, by
//! source. The f32 sums of the weights' integers are exact (below 2^24), so any order gives
//! the twin's sums; [`Codes`] requantises them with the twin's operations, lane by lane.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::{padding_reads_present, Args, DwRow, PackedDw, Requant, MAX_ABS_SUM, MAX_ROWS, UNCAPPED_CODES};
use crate::aligned::{grown_aligned, AlignedVec};

/// The taps of one 8-channel tile of an f32 row: its weights and bias, loaded once per call.
struct Taps {
    /// The tile's first channel.
    ct: usize,
    w: [__m256; 9],
    bias: __m256,
    /// Lanes of the tile's channels (all 8 but in the tail tile).
    mask: __m256i,
}

impl Taps {
    /// Channels `ct..ct + 8` of `w` (those below `w.c`).
    ///
    /// # Safety
    /// The CPU has AVX2; `ct` is a multiple of 8 below `w.c`.
    #[inline(always)]
    unsafe fn new(w: &PackedDw, ct: usize) -> Taps {
        let mut t = Taps {
            ct,
            w: [_mm256_setzero_ps(); 9],
            // SAFETY: aligned loads, as the packing is 64-byte aligned, `c_pad` a multiple
            // of 16 and `ct + 8 <= c_pad`; the bias holds `c_pad` values.
            bias: _mm256_load_ps(w.bias.as_ptr().add(ct)),
            mask: _mm256_cmpgt_epi32(
                _mm256_set1_epi32((w.c - ct).min(LANES) as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            ),
        };
        for (k, v) in t.w.iter_mut().enumerate() {
            // SAFETY: as the bias.
            *v = _mm256_load_ps(w.weights.as_ptr().add(k * w.c_pad + ct));
        }
        t
    }
}

/// One f32 output row: its input rows, read in place, and its output.
struct OutRow {
    /// Null for a padding row, whose taps are skipped (not zero-weighted: that would turn an
    /// infinite input into NaN, or a -0.0 sum into +0.0).
    rows: [*const f32; 3],
    out: *mut f32,
    /// The activation's bounds.
    lo: f32,
    hi: f32,
}

/// The output rows of one f32 call, all of one geometry.
struct Walk<'a> {
    rows: &'a [OutRow],
    /// Pixel stride of the input and output rows (the channels).
    c: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    w_in: usize,
    w_out: usize,
}

impl Walk<'_> {
    /// The tile's 8 channels at `p` (only the lanes of its mask unless `FULL`).
    ///
    /// # Safety
    /// The CPU has AVX2; `p` is the tile's first channel of an input pixel of a row of the
    /// call (rows `dwconv_rows` checked); `FULL` only if the tile has 8 channels.
    #[inline(always)]
    unsafe fn load<const FULL: bool>(t: &Taps, p: *const f32) -> __m256 {
        if FULL {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, t.mask)
        }
    }

    /// Stores the sums `a` of output pixel `x` of row `r`, clamped to the activation's bounds.
    ///
    /// # Safety
    /// The CPU has AVX2; `x < w_out`; `FULL` only if the tile has 8 channels.
    #[inline(always)]
    unsafe fn store<const FULL: bool>(&self, t: &Taps, r: &OutRow, x: usize, a: __m256) {
        Self::store_at::<FULL>(t, r, r.out.add(x * self.c + t.ct), a)
    }

    /// Stores the sums `a` at `p`, clamped to the bounds of row `r`.
    ///
    /// # Safety
    /// The CPU has AVX2; `p` is the tile's first channel of an output pixel of `r`; `FULL`
    /// only if the tile has 8 channels.
    #[inline(always)]
    unsafe fn store_at<const FULL: bool>(t: &Taps, r: &OutRow, p: *mut f32, a: __m256) {
        let v = _mm256_min_ps(_mm256_max_ps(a, _mm256_set1_ps(r.lo)), _mm256_set1_ps(r.hi));
        if FULL {
            _mm256_storeu_ps(p, v)
        } else {
            _mm256_maskstore_ps(p, t.mask, v)
        }
    }

    /// XB interior output pixels of row `r`, every tap inside the row: columns `x0 + j * Q`
    /// for `j < XB`, where the spacing Q ([`spacing`]) is the dilation at stride 1 (so the
    /// pixels' taps interleave as a dense row's do), else 1; stride S and dilation D. Each
    /// pixel's sum starts at the bias and takes its taps in the twin's order, ky then kx, one
    /// FMA each; a tap that neighbouring pixels share is loaded once.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the rows' stride and dilation are S and D; the pixels lie in
    /// the rows' interior ([`DwRow::interior`](super::DwRow::interior)); `FULL` only if the
    /// tile has 8 channels.
    #[inline(always)]
    unsafe fn block<const S: usize, const D: usize, const XB: usize, const FULL: bool>(
        &self,
        t: &Taps,
        r: &OutRow,
        x0: usize,
    ) {
        let (c, q) = (self.c, spacing(S, D));
        let mut acc = [t.bias; XB];
        for ky in 0..3 {
            let row = r.rows[ky];
            if row.is_null() {
                continue;
            }
            let base = row.add((x0 * S - self.pad) * c + t.ct);
            for kx in 0..3 {
                let w = t.w[ky * 3 + kx];
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(Self::load::<FULL>(t, base.add((j * q * S + kx * D) * c)), w, *a);
                }
            }
        }
        let out = r.out.add(x0 * c + t.ct);
        for (j, a) in acc.iter().enumerate() {
            Self::store_at::<FULL>(t, r, out.add(j * q * c), *a);
        }
    }

    /// One output pixel at any stride and dilation; taps outside the row are skipped.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `x < w_out`; `FULL` only if the tile has 8 channels.
    #[inline(always)]
    unsafe fn pixel<const FULL: bool>(&self, t: &Taps, r: &OutRow, x: usize) {
        let mut a = t.bias;
        for ky in 0..3 {
            let row = r.rows[ky];
            if row.is_null() {
                continue;
            }
            for kx in 0..3 {
                let ix = (x * self.stride + kx * self.dilation) as isize - self.pad as isize;
                if ix < 0 || ix as usize >= self.w_in {
                    continue;
                }
                let v = Self::load::<FULL>(t, row.add(ix as usize * self.c + t.ct));
                a = _mm256_fmadd_ps(v, t.w[ky * 3 + kx], a);
            }
        }
        self.store::<FULL>(t, r, x, a);
    }

    /// One pixel whose taps `kx` in `K0..K1` lie inside the row, the others left or right of
    /// it: the edge pixels, with no bounds checks.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `x < w_out` and the taps `K0..K1` of `x` (and no others)
    /// read input columns; `FULL` only if the tile has 8 channels.
    #[inline(always)]
    unsafe fn edge<const K0: usize, const K1: usize, const FULL: bool>(&self, t: &Taps, r: &OutRow, x: usize) {
        let mut a = t.bias;
        let step = self.dilation * self.c;
        for ky in 0..3 {
            let row = r.rows[ky];
            if row.is_null() {
                continue;
            }
            let base = row.add((x * self.stride + K0 * self.dilation - self.pad) * self.c + t.ct);
            for kx in K0..K1 {
                a = _mm256_fmadd_ps(Self::load::<FULL>(t, base.add((kx - K0) * step)), t.w[ky * 3 + kx], a);
            }
        }
        self.store::<FULL>(t, r, x, a);
    }

    /// Edge pixel `x` (some tap outside the row) of every row and tile: its taps inside the
    /// row are a range `k0..k1` (the kernel's columns read increasing input columns), unrolled.
    ///
    /// # Safety
    /// As [`Walk::pixel`], for each tile.
    #[inline(always)]
    unsafe fn edge_pixel<const NT: usize, const FULL: bool>(&self, taps: &[Taps; NT], x: usize) {
        let col = |kx: usize| (x * self.stride + kx * self.dilation) as isize - self.pad as isize;
        let inside = |kx: usize| (0..self.w_in as isize).contains(&col(kx));
        let k0 = (0..3).find(|&k| inside(k)).unwrap_or(3);
        let k1 = (k0..3).find(|&k| !inside(k)).unwrap_or(3);
        for r in self.rows {
            for t in taps {
                match (k0, k1) {
                    (1, 3) => self.edge::<1, 3, FULL>(t, r, x),
                    (0, 2) => self.edge::<0, 2, FULL>(t, r, x),
                    (2, 3) => self.edge::<2, 3, FULL>(t, r, x),
                    (0, 1) => self.edge::<0, 1, FULL>(t, r, x),
                    (1, 2) => self.edge::<1, 2, FULL>(t, r, x),
                    _ => self.pixel::<FULL>(t, r, x),
                }
            }
        }
    }

    /// Interior pixels `x..hi` in runs of XB * Q ([`spacing`]): Q blocks of XB pixels each,
    /// every block across every row and tile before the next (so its input pixels come from
    /// L2 once, and from L1 for the other rows and tiles); returns where it stopped.
    ///
    /// # Safety
    /// As [`Walk::block`], for `x..hi` in the interior and each tile.
    #[inline(always)]
    unsafe fn run<const S: usize, const D: usize, const XB: usize, const NT: usize, const FULL: bool>(
        &self,
        taps: &[Taps; NT],
        mut x: usize,
        hi: usize,
    ) -> usize {
        let q = if XB == 1 { 1 } else { spacing(S, D) };
        while x + XB * q <= hi {
            for x0 in x..x + q {
                for r in self.rows {
                    for t in taps {
                        self.block::<S, D, XB, FULL>(t, r, x0);
                    }
                }
            }
            x += XB * q;
        }
        x
    }

    /// Interior pixels `x..hi`: blocks of 6 (six sums and nine weights: 15 of the 16
    /// registers), then 4, 2, 1.
    ///
    /// # Safety
    /// As [`Walk::run`].
    #[inline(always)]
    unsafe fn cascade<const S: usize, const D: usize, const NT: usize, const FULL: bool>(
        &self,
        taps: &[Taps; NT],
        x: usize,
        hi: usize,
    ) {
        let x = self.run::<S, D, 6, NT, FULL>(taps, x, hi);
        let x = self.run::<S, D, 4, NT, FULL>(taps, x, hi);
        let x = self.run::<S, D, 2, NT, FULL>(taps, x, hi);
        self.run::<S, D, 1, NT, FULL>(taps, x, hi);
    }

    /// Every output pixel of every row, for the NT tiles `taps`; the rows' interior is
    /// `lo..hi` ([`DwRow::interior`](super::DwRow::interior)).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the tiles lie in the rows' channels; `FULL` only if each
    /// has 8 channels.
    #[inline(always)]
    unsafe fn tiles<const NT: usize, const FULL: bool>(&self, taps: &[Taps; NT], (lo, hi): (usize, usize)) {
        for x in 0..lo {
            self.edge_pixel::<NT, FULL>(taps, x);
        }
        match (self.stride, self.dilation) {
            (1, 1) => self.cascade::<1, 1, NT, FULL>(taps, lo, hi),
            (2, 1) => self.cascade::<2, 1, NT, FULL>(taps, lo, hi),
            (1, 2) => self.cascade::<1, 2, NT, FULL>(taps, lo, hi),
            (1, 4) => self.cascade::<1, 4, NT, FULL>(taps, lo, hi),
            _ => {
                for x in lo..hi {
                    for r in self.rows {
                        for t in taps {
                            self.pixel::<FULL>(t, r, x);
                        }
                    }
                }
            }
        }
        for x in hi.max(lo)..self.w_out {
            self.edge_pixel::<NT, FULL>(taps, x);
        }
    }
}

/// The spacing of the output pixels of one block at stride `s` and dilation `d`: at stride 1
/// the taps of pixels `d` apart interleave as those of neighbours do at dilation 1 (pixel
/// `x + d` reads input columns `d` right of those of `x`), so a block of them shares loads.
const fn spacing(s: usize, d: usize) -> usize {
    if s == 1 {
        d
    } else {
        1
    }
}

/// f32 rows to f32 rows, read in place: 16 channels (two 8-channel tiles: a cache line of
/// each pixel) at a time, across every output row of `args` block of pixels by block of
/// pixels, so each input pixel comes from L2 once per call and from L1 for the other tile
/// and the other output rows that read it; tails of 8 and fewer channels one tile at a time.
///
/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_rows`), all of one geometry;
/// the CPU must have AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn row(args: &[Args<f32, f32>], w: &PackedDw) {
    let Some(first) = args.first() else { return };
    let g = first.g;
    let c = w.c;
    assert!(args.len() <= MAX_ROWS);
    let mut rows =
        [const { OutRow { rows: [std::ptr::null(); 3], out: std::ptr::null_mut(), lo: 0.0, hi: 0.0 } }; MAX_ROWS];
    for (r, a) in rows.iter_mut().zip(args) {
        *r = OutRow { rows: a.rows, out: a.out, lo: a.act.min, hi: a.act.max };
    }
    let walk = Walk {
        rows: &rows[..args.len()],
        c,
        stride: g.stride,
        dilation: g.dilation,
        pad: g.pad_left,
        w_in: g.w_in,
        w_out: g.w_out,
    };
    let interior = g.interior();
    let pairs = c / (2 * LANES) * (2 * LANES);
    for ct in (0..pairs).step_by(2 * LANES) {
        walk.tiles::<2, true>(&[Taps::new(w, ct), Taps::new(w, ct + LANES)], interior);
    }
    for ct in (pairs..c).step_by(LANES) {
        if ct + LANES <= c {
            walk.tiles::<1, true>(&[Taps::new(w, ct)], interior);
        } else {
            walk.tiles::<1, false>(&[Taps::new(w, ct)], interior);
        }
    }
}

/// Channels of a tile: one vector.
const LANES: usize = 8;

/// Tiles staged together: a 16-channel group (16 bytes of each input pixel; 32, four tiles,
/// measured no faster).
const GROUP: usize = 2;

thread_local! {
    /// f32 staging of u8 input rows: for each tile of a [`GROUP`], [`slots`] rows of
    /// [`staged_width`] pixels of 8 channels.
    static STAGING: RefCell<AlignedVec<f32>> = RefCell::new(AlignedVec::zeros(0));
}

/// Staged rows kept per tile: the three rows of one output row, and at dilation 2 those of the
/// output row before too (the next output row reads them again).
fn slots(g: DwRow) -> usize {
    3 * g.dilation.clamp(1, 2)
}

/// Pixels of a staged row: every column the taps of the output row read, padding included.
fn staged_width(g: DwRow) -> usize {
    if g.w_out == 0 {
        0
    } else {
        (g.w_out - 1) * g.stride + 2 * g.dilation + 1
    }
}

/// Bytes of the staging area [`row_u8`] uses for rows of `g`: [`slots`] input rows of the
/// [`GROUP`]'s 8-channel tiles, with their padding columns, widened to f32
/// (`DwKernel::staging`).
pub(crate) fn staging_bytes_u8(g: DwRow, _c: usize) -> usize {
    GROUP * slots(g) * staged_width(g) * LANES * size_of::<f32>()
}

/// Bytes this thread's staging area holds now.
#[cfg(test)]
pub(crate) fn held_bytes() -> usize {
    STAGING.with_borrow(|s| s.len() * size_of::<f32>())
}

/// The staged rows of one group of tiles: the slots of the staging area, each with the source
/// row it holds (null: none yet) and when it was last read; tile `t`'s copy of slot `s` is
/// `t * slots + s`.
struct Stage {
    area: *mut f32,
    /// Floats per slot and tile.
    len: usize,
    keys: [*const u8; 6],
    used: [usize; 6],
    slots: usize,
    clock: usize,
}

impl Stage {
    /// Empty slots in `area` for rows of `g`.
    fn new(area: *mut f32, g: DwRow) -> Stage {
        let slots = slots(g);
        debug_assert!(slots <= 6);
        Stage { area, len: staged_width(g) * LANES, keys: [std::ptr::null(); 6], used: [0; 6], slots, clock: 0 }
    }

    /// The staged tiles (channels `ct..ct + 8 * NT` of rows of `c` channels) of each present
    /// row of `src` (null for the others), `[tile][row]`: rows staged for the output row
    /// before are reused, the others widened into the slots read longest ago by other output
    /// rows.
    ///
    /// # Safety
    /// The CPU has AVX2; the area holds [`staging_bytes_u8`] for `g`, and `NT <= GROUP`; each
    /// present row of `src` holds `g.w_in * c` values, unchanged since it was staged (`Stage`
    /// lives for one call, whose input rows are shared borrows); `ct < c`.
    #[inline(always)]
    unsafe fn rows<const NT: usize>(
        &mut self,
        src: [*const u8; 3],
        g: DwRow,
        c: usize,
        ct: usize,
    ) -> [[*const f32; 3]; NT] {
        self.clock += 1;
        let mut out = [[std::ptr::null(); 3]; NT];
        for (i, &r) in src.iter().enumerate() {
            if r.is_null() {
                continue;
            }
            let s = match self.keys[..self.slots].iter().position(|&k| k == r) {
                Some(s) => s,
                None => {
                    // Three slots at least, and this output row reads three rows at most.
                    let s = (0..self.slots)
                        .filter(|&s| self.used[s] != self.clock)
                        .min_by_key(|&s| self.used[s])
                        .expect("a slot this output row does not read");
                    self.keys[s] = r;
                    widen::<NT>(r, std::array::from_fn(|t| self.slot(t, s)), g, c, ct);
                    s
                }
            };
            self.used[s] = self.clock;
            for (t, o) in out.iter_mut().enumerate() {
                o[i] = self.slot(t, s);
            }
        }
        out
    }

    /// Tile `t`'s copy of slot `s`.
    ///
    /// # Safety
    /// `t < GROUP`, `s < self.slots`.
    #[inline(always)]
    unsafe fn slot(&self, t: usize, s: usize) -> *mut f32 {
        self.area.add((t * self.slots + s) * self.len)
    }
}

/// The staged columns of a row of `g` that lie outside the input row: `0..pad` and
/// `end..width` are padding, `pad..end` input columns `0..end - pad`.
fn staged_columns(g: DwRow) -> (usize, usize, usize) {
    let width = staged_width(g);
    let pad = g.pad_left.min(width);
    (pad, (pad + g.w_in).min(width), width)
}

/// Zeroes the padding columns of every slot of every tile: [`widen`] writes only the others,
/// so each staged row has zero padding for the whole call.
///
/// # Safety
/// The CPU has AVX2; `area` holds [`staging_bytes_u8`] for `g`, 32-byte aligned.
#[inline(always)]
unsafe fn zero_padding(area: *mut f32, g: DwRow) {
    let (pad, end, width) = staged_columns(g);
    for s in 0..GROUP * slots(g) {
        let row = area.add(s * width * LANES);
        for j in (0..pad).chain(end..width) {
            _mm256_store_ps(row.add(j * LANES), _mm256_setzero_ps());
        }
    }
}

/// Stages channels `ct..ct + 8 * NT` of the u8 row `src` (`c` channels per pixel), tile `t`
/// (8 channels) at `dst[t]`: the input columns of [`staged_width`] pixels of 8 f32, from
/// input column `-g.pad_left` on (the padding columns, zero, are left as [`zero_padding`] made
/// them). The tiles of a group are widened together, from one pass over the row: each input
/// pixel's 16 bytes are read in one pass, where one tile at a time read each pixel's cache
/// line once per tile (the widening was ~40% of the kernel's time, its loads waiting on the
/// strided lines). Lanes past the row's channels hold the next pixel's values (or zeros),
/// which only padding channels, of zero weights, read.
///
/// # Safety
/// The CPU has AVX2; `src` holds `g.w_in * c` bytes; each `dst[t]` is writable for
/// `staged_width(g) * 8` f32, 32-byte aligned; `ct < c`.
#[inline(always)]
unsafe fn widen<const NT: usize>(src: *const u8, dst: [*mut f32; NT], g: DwRow, c: usize, ct: usize) {
    let len = g.w_in * c;
    let bytes = NT * LANES;
    // Input columns ix staged at pad + ix: those in the row, and of them those whose bytes
    // lie inside it.
    let (pad, end, _) = staged_columns(g);
    let fast = if ct + bytes <= c {
        end
    } else if len >= ct + bytes {
        (pad + (len - ct - bytes) / c + 1).min(end)
    } else {
        pad
    };
    let store = |j: usize, t: usize, b: __m128i| {
        _mm256_store_ps(dst[t].add(j * LANES), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)));
    };
    for j in pad..fast {
        for t in 0..NT {
            // SAFETY: the bytes read lie in the row, (j - pad) * c + ct + 8 * NT <= len by
            // `fast`.
            store(j, t, _mm_loadl_epi64(src.add((j - pad) * c + ct + t * LANES) as *const __m128i));
        }
    }
    for j in fast..end {
        let off = (j - pad) * c + ct;
        let mut tmp = [0u8; LANES * GROUP];
        std::ptr::copy_nonoverlapping(src.add(off), tmp.as_mut_ptr(), (len - off).min(bytes));
        for t in 0..NT {
            store(j, t, _mm_loadl_epi64(tmp.as_ptr().add(t * LANES) as *const __m128i));
        }
    }
}

/// The int8 epilogue of one 8-channel tile: [`Requant::code`] lane by lane (the AVX-512
/// kernel's `Epi::store_codes` on 8 lanes). Where the bounds are the codes 0 and 255 and no
/// code can reach 2^30 (the usual ReLU6 layer: `sat`), the packs' saturation is the whole clamp
/// and the conversion needs no cap, as in the VNNI kernel: 18 operations per four pixels
/// instead of 26, and the int8 depthwise layers 4-12% faster (Zen 3, stop 28).
struct Codes {
    /// Per channel multiplier and addend into output codes ([`Requant::channel`]).
    m: __m256,
    b: __m256,
    /// The activation's bounds as codes, in 16-bit lanes.
    lo: __m256i,
    hi: __m256i,
    /// The bounds are 0 and 255 and no code reaches 2^30: the packs' saturation is then the
    /// whole clamp, and the cap before the conversion is not needed ([`Codes::codes4`]'s SAT).
    sat: bool,
}

impl Codes {
    /// For the channels `ct..ct + 8` of `w`, output row requantised by `rq`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `w` was packed by `PackedDw::quantized_for` and `ct` is a
    /// multiple of 8 below `w.c`.
    #[inline(always)]
    unsafe fn new(rq: &Requant, w: &PackedDw, ct: usize) -> Codes {
        let inv = _mm256_set1_ps(rq.inv);
        // SAFETY: aligned loads, as scale and bias are 64-byte aligned and hold at least
        // `c_pad` values; `ct + 8 <= c_pad`, a multiple of 16.
        let m = _mm256_mul_ps(_mm256_load_ps(w.scale.as_ptr().add(ct)), inv);
        let b = _mm256_fmadd_ps(_mm256_load_ps(w.bias.as_ptr().add(ct)), inv, _mm256_set1_ps(rq.zero));
        // The largest code each channel of the tile can reach (NaN counts as too large).
        let abs = |v: __m256| _mm256_andnot_ps(_mm256_set1_ps(-0.0), v);
        let reach = _mm256_fmadd_ps(abs(m), _mm256_set1_ps(MAX_ABS_SUM), abs(b));
        let big = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NLT_UQ>(reach, _mm256_set1_ps(UNCAPPED_CODES)));
        let sat = rq.lo == 0 && rq.hi == 255 && big == 0;
        Codes { m, b, lo: _mm256_set1_epi16(rq.lo as i16), hi: _mm256_set1_epi16(rq.hi as i16), sat }
    }

    /// `round(acc * m + b)` of the exact sums `acc` (one fused multiply-add, rounded half to
    /// even), capped at 1e9 first (from 2^31 on the conversion gives i32::MIN) unless SAT.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; SAT only if `self.sat`.
    #[inline(always)]
    unsafe fn rounded<const SAT: bool>(&self, acc: __m256) -> __m256i {
        let x = _mm256_fmadd_ps(acc, self.m, self.b);
        _mm256_cvtps_epi32(if SAT { x } else { _mm256_min_ps(x, _mm256_set1_ps(1e9)) })
    }

    /// The 16-bit codes `h` clamped to the bounds; with SAT as they are (the pack to bytes
    /// saturates to 0..=255, which are the bounds).
    ///
    /// # Safety
    /// The CPU has AVX2; SAT only if `self.sat`.
    #[inline(always)]
    unsafe fn clamped<const SAT: bool>(&self, h: __m256i) -> __m256i {
        if SAT {
            h
        } else {
            _mm256_min_epi16(_mm256_max_epi16(h, self.lo), self.hi)
        }
    }

    /// The codes of two pixels' sums `a` and `b`, 8 bytes each, `a`'s low: [`Codes::rounded`],
    /// saturated to 16 bits and clamped to the bounds (as clamping the i32, the bounds being
    /// codes), then packed to bytes (exactly: they lie in 0..=255). [`Requant::code`], lane by
    /// lane.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; SAT only if `self.sat`.
    #[inline(always)]
    unsafe fn codes2<const SAT: bool>(&self, a: __m256, b: __m256) -> __m128i {
        // 128-bit lane l: lanes 4l..4l + 4 of a, then of b.
        let h = _mm256_packs_epi32(self.rounded::<SAT>(a), self.rounded::<SAT>(b));
        let h = self.clamped::<SAT>(h);
        let v = _mm256_packus_epi16(h, h);
        // Dwords 0 and 4 hold a's bytes, 1 and 5 b's.
        _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5)))
    }

    /// The codes of four pixels' sums, as [`Codes::codes2`] of (`a`, `b`) and of (`c`, `d`),
    /// with one pack to bytes and no lane-crossing permute: the 128-bit halves of the packed
    /// bytes interleaved by dwords (`vpermd` issues about once per 1.3 cycles on Zen 3, the
    /// unpacks twice per cycle; scripts/bench/uarch).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; SAT only if `self.sat`.
    #[inline(always)]
    unsafe fn codes4<const SAT: bool>(&self, a: __m256, b: __m256, c: __m256, d: __m256) -> [__m128i; 2] {
        let ab = _mm256_packs_epi32(self.rounded::<SAT>(a), self.rounded::<SAT>(b));
        let cd = _mm256_packs_epi32(self.rounded::<SAT>(c), self.rounded::<SAT>(d));
        let (ab, cd) = (self.clamped::<SAT>(ab), self.clamped::<SAT>(cd));
        // Dwords: low half a0-3 b0-3 c0-3 d0-3, high half a4-7 b4-7 c4-7 d4-7.
        let v = _mm256_packus_epi16(ab, cd);
        let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        [_mm_unpacklo_epi32(lo, hi), _mm_unpackhi_epi32(lo, hi)]
    }
}

/// Loop invariants of one 8-channel tile of one output row, on staged rows.
struct TileU8 {
    /// The three staged rows (a padding row replaced by a present one, with zero weights).
    rows: [*const f32; 3],
    out: *mut u8,
    /// Output pixel stride (the channels).
    c: usize,
    /// Output channels of this tile (8 but in the tail tile).
    cols: usize,
    stride: usize,
    dilation: usize,
    w: [__m256; 9],
    codes: Codes,
}

impl TileU8 {
    /// Stores the 8 codes in the low (`HIGH`: high) half of `v` at output pixel `x` (all 8 if
    /// `FULL`, else the tile's `cols`).
    ///
    /// # Safety
    /// The CPU has AVX2; `x` is an output column of the row `out` points into, which holds
    /// the tile's channels of each of its pixels.
    #[inline(always)]
    unsafe fn store<const FULL: bool, const HIGH: bool>(&self, x: usize, v: __m128i) {
        let p = self.out.add(x * self.c);
        if FULL {
            if HIGH {
                _mm_storeh_pd(p as *mut f64, _mm_castsi128_pd(v));
            } else {
                _mm_storel_epi64(p as *mut __m128i, v);
            }
        } else {
            let mut tmp = [0u8; 16];
            _mm_storeu_si128(tmp.as_mut_ptr() as *mut __m128i, v);
            std::ptr::copy_nonoverlapping(tmp.as_ptr().add(if HIGH { 8 } else { 0 }), p, self.cols);
        }
    }

    /// Stores the codes of the sums of the XB output pixels from `x0`, four at a time, then
    /// two.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; as [`TileU8::store`] for each pixel.
    #[inline(always)]
    unsafe fn store_all<const XB: usize, const FULL: bool, const SAT: bool>(&self, x0: usize, acc: &[__m256; XB]) {
        let quads = XB / 4 * 4;
        for j in (0..quads).step_by(4) {
            let [ab, cd] = self.codes.codes4::<SAT>(acc[j], acc[j + 1], acc[j + 2], acc[j + 3]);
            self.store::<FULL, false>(x0 + j, ab);
            self.store::<FULL, true>(x0 + j + 1, ab);
            self.store::<FULL, false>(x0 + j + 2, cd);
            self.store::<FULL, true>(x0 + j + 3, cd);
        }
        for j in (quads..XB).step_by(2) {
            // An odd last pixel pairs with itself.
            let v = self.codes.codes2::<SAT>(acc[j], acc[(j + 1).min(XB - 1)]);
            self.store::<FULL, false>(x0 + j, v);
            if j + 1 < XB {
                self.store::<FULL, true>(x0 + j + 1, v);
            }
        }
    }

    /// XB output pixels from column `x0`; S and D are stride and dilation.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `x0 + XB <= w_out` and the tile's stride and dilation are S
    /// and D (the staged rows then hold every column read); as [`TileU8::store`].
    #[inline(always)]
    unsafe fn block<const S: usize, const D: usize, const XB: usize, const FULL: bool, const SAT: bool>(
        &self,
        x0: usize,
    ) {
        let mut acc = [_mm256_setzero_ps(); XB];
        for ky in 0..3 {
            let base = self.rows[ky].add(x0 * S * LANES);
            for kx in 0..3 {
                let w = self.w[ky * 3 + kx];
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_load_ps(base.add((j * S + kx * D) * LANES)), w, *a);
                }
            }
        }
        self.store_all::<XB, FULL, SAT>(x0, &acc);
    }

    /// Output pixels `x..hi` in blocks of XB; returns where it stopped.
    ///
    /// # Safety
    /// As [`TileU8::block`], for `hi <= w_out`.
    #[inline(always)]
    unsafe fn run<const S: usize, const D: usize, const XB: usize, const FULL: bool, const SAT: bool>(
        &self,
        mut x: usize,
        hi: usize,
    ) -> usize {
        while x + XB <= hi {
            self.block::<S, D, XB, FULL, SAT>(x);
            x += XB;
        }
        x
    }

    /// The whole row, `w_out` pixels, stride S and dilation D: blocks of 6, then 4, 2, 1.
    ///
    /// # Safety
    /// As [`TileU8::block`].
    #[inline(always)]
    unsafe fn cascade<const S: usize, const D: usize, const FULL: bool>(&self, w_out: usize) {
        if self.codes.sat {
            self.blocks::<S, D, FULL, true>(w_out)
        } else {
            self.blocks::<S, D, FULL, false>(w_out)
        }
    }

    /// [`TileU8::cascade`] with the epilogue's SAT.
    ///
    /// # Safety
    /// As [`TileU8::block`].
    #[inline(always)]
    unsafe fn blocks<const S: usize, const D: usize, const FULL: bool, const SAT: bool>(&self, w_out: usize) {
        let x = self.run::<S, D, 6, FULL, SAT>(0, w_out);
        let x = self.run::<S, D, 4, FULL, SAT>(x, w_out);
        let x = self.run::<S, D, 2, FULL, SAT>(x, w_out);
        self.run::<S, D, 1, FULL, SAT>(x, w_out);
    }

    /// One output pixel, at any stride and dilation.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `x < w_out` (the staged rows hold every column read); as
    /// [`TileU8::store`].
    #[inline(always)]
    unsafe fn pixel(&self, x: usize) {
        let mut a = _mm256_setzero_ps();
        for ky in 0..3 {
            for kx in 0..3 {
                let v = _mm256_load_ps(self.rows[ky].add((x * self.stride + kx * self.dilation) * LANES));
                a = _mm256_fmadd_ps(v, self.w[ky * 3 + kx], a);
            }
        }
        self.store_all::<1, false, false>(x, &[a]);
    }

    /// The tile's whole output row, `w_out` pixels.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the staged rows are of the row's geometry, whose output row
    /// `out` points into.
    #[inline(always)]
    unsafe fn walk(&self, w_out: usize) {
        match (self.stride, self.dilation, self.cols == LANES) {
            (1, 1, true) => self.cascade::<1, 1, true>(w_out),
            (1, 1, false) => self.cascade::<1, 1, false>(w_out),
            (2, 1, true) => self.cascade::<2, 1, true>(w_out),
            (2, 1, false) => self.cascade::<2, 1, false>(w_out),
            (1, 2, true) => self.cascade::<1, 2, true>(w_out),
            (1, 4, true) => self.cascade::<1, 4, true>(w_out),
            _ => (0..w_out).for_each(|x| self.pixel(x)),
        }
    }
}

/// u8 rows to u8 rows: for each 8-channel tile, each output row of `args` on its staged input
/// rows (so a tile's staged rows serve all the output rows that read them).
///
/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_rows_u8`), all of one geometry,
/// packed by `PackedDw::quantized_for`; the CPU must have AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn row_u8(args: &[Args<u8, u8>], w: &PackedDw) {
    let Some(first) = args.first() else { return };
    let g = first.g;
    if g.w_out == 0 {
        return;
    }
    let c = w.c;
    assert!(args.len() <= MAX_ROWS);
    // Valid until this thread next asks for a larger staging area; nothing else uses it.
    let area = grown_aligned(&STAGING, staging_bytes_u8(g, c) / size_of::<f32>());
    let rq: [Requant; MAX_ROWS] = std::array::from_fn(|i| {
        let a = args.get(i).unwrap_or(first);
        Requant::new(a.act, a.out_q)
    });
    zero_padding(area, g);
    for ct in (0..c).step_by(GROUP * LANES) {
        let mut stage = Stage::new(area, g);
        let nt = (c - ct).div_ceil(LANES).min(GROUP);
        for (a, rq) in args.iter().zip(&rq) {
            let staged = if nt == GROUP {
                stage.rows::<GROUP>(a.rows, g, c, ct)
            } else {
                let [rows] = stage.rows::<1>(a.rows, g, c, ct);
                [rows; GROUP]
            };
            // One call site of the (large, inlined) tile walk, not one per tile of the group:
            // with two copies the layers of 7-14 pixels a row ran 8-27% slower.
            for (t, &rows) in staged.iter().enumerate().take(nt) {
                tile_u8(a, rq, w, rows, ct + t * LANES).walk(g.w_out);
            }
        }
    }
}

/// The tile of channels `ct..ct + 8` of output row `a`, on its staged rows.
///
/// # Safety
/// The CPU has AVX2 and FMA; as [`row_u8`], `ct < w.c` a multiple of 8, `staged` the tile's
/// rows of `a` ([`Stage::rows`]).
#[inline(always)]
unsafe fn tile_u8(a: &Args<u8, u8>, rq: &Requant, w: &PackedDw, staged: [*const f32; 3], ct: usize) -> TileU8 {
    let c = w.c;
    TileU8 {
        rows: padding_reads_present(staged),
        out: a.out.add(ct),
        c,
        cols: (c - ct).min(LANES),
        stride: a.g.stride,
        dilation: a.g.dilation,
        // SAFETY: aligned loads, as the packing is 64-byte aligned, `c_pad` a multiple of 16
        // and `ct + 8 <= c_pad`.
        w: std::array::from_fn(|k| {
            if staged[k / 3].is_null() {
                _mm256_setzero_ps()
            } else {
                _mm256_load_ps(w.weights.as_ptr().add(k * w.c_pad + ct))
            }
        }),
        codes: Codes::new(rq, w, ct),
    }
}
