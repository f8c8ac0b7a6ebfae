//! AVX2 depthwise 3x3: 8-channel tiles, weights in registers.
//!
//! f32 rows ([`row`]): bounds checks only at the edges; channel tails go through
//! `maskload`/`maskstore`.
//!
//! u8 rows ([`row_u8`]): as in the AVX-512 kernel, each input value is widened to f32 once,
//! not at each of its up to 9 taps: the tile's input rows are widened into a thread-local
//! staging area (8 channels per pixel, contiguous), here with their padding columns as zeros,
//! so every output pixel runs the same loop, unrolled over a block of pixels with stride and
//! dilation as constants, with no bounds check at all. A staged row serves every output row
//! of the call that reads it (three at stride 1): the area keeps the rows staged last, by
//! source. The f32 sums of the weights' integers are exact (below 2^24), so any order gives
//! the twin's sums; [`Codes`] requantises them with the twin's operations, lane by lane.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::{padding_reads_present, Args, DwRow, PackedDw, Requant, MAX_ROWS};
use crate::aligned::{grown_aligned, AlignedVec};

/// Loop invariants of one 8-channel tile.
struct Tile {
    rows: [*const f32; 3],
    out: *mut f32,
    c: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    w_in: usize,
    w: [__m256; 9],
    bias: __m256,
    mask: __m256i,
    lo: __m256,
    hi: __m256,
}

impl Tile {
    /// # Safety
    /// The CPU has AVX2 and FMA; the pointers this reads and writes are the rows `dwconv_row` checked, and
    /// `x` is an output column of the row (taps outside the input row only when `checked`).
    #[inline(always)]
    unsafe fn pixel(&self, x: usize, checked: bool) {
        let mut a = self.bias;
        for (ky, &row) in self.rows.iter().enumerate() {
            if row.is_null() {
                continue;
            }
            for kx in 0..3 {
                let ix = (x * self.stride + kx * self.dilation) as isize - self.pad as isize;
                if checked && (ix < 0 || ix as usize >= self.w_in) {
                    continue;
                }
                let v = _mm256_maskload_ps(row.add(ix as usize * self.c), self.mask);
                a = _mm256_fmadd_ps(v, self.w[ky * 3 + kx], a);
            }
        }
        _mm256_maskstore_ps(self.out.add(x * self.c), self.mask, _mm256_min_ps(_mm256_max_ps(a, self.lo), self.hi));
    }
}

/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row`); the CPU must have AVX2+FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn row(args: &[Args<f32, f32>], w: &PackedDw) {
    for a in args {
        row1(a, w);
    }
}

/// One output row.
///
/// # Safety
/// As [`row`].
#[target_feature(enable = "avx2,fma")]
unsafe fn row1(args: &Args<f32, f32>, w: &PackedDw) {
    let g = args.g;
    let c = w.c;
    let (lo_x, hi_x) = g.interior();
    for ct in (0..c).step_by(8) {
        let cols = (c - ct).min(8) as i32;
        let t = Tile {
            rows: std::array::from_fn(|i| if args.rows[i].is_null() { args.rows[i] } else { args.rows[i].add(ct) }),
            out: args.out.add(ct),
            c,
            stride: g.stride,
            dilation: g.dilation,
            pad: g.pad_left,
            w_in: g.w_in,
            w: std::array::from_fn(|k| _mm256_loadu_ps(w.weights.as_ptr().add(k * w.c_pad + ct))),
            bias: _mm256_loadu_ps(w.bias.as_ptr().add(ct)),
            mask: _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
            lo: _mm256_set1_ps(args.act.min),
            hi: _mm256_set1_ps(args.act.max),
        };
        for x in 0..g.w_out {
            t.pixel(x, x < lo_x || x >= hi_x);
        }
    }
}

/// Channels of a tile: one vector.
const LANES: usize = 8;

thread_local! {
    /// f32 staging of u8 input rows: [`slots`] rows of [`staged_width`] pixels of one
    /// 8-channel tile.
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

/// Bytes of the staging area [`row_u8`] uses for rows of `g`: [`slots`] input rows of one
/// 8-channel tile, with their padding columns, widened to f32 (`DwKernel::staging`).
pub(crate) fn staging_bytes_u8(g: DwRow, _c: usize) -> usize {
    slots(g) * staged_width(g) * LANES * size_of::<f32>()
}

/// Bytes this thread's staging area holds now.
#[cfg(test)]
pub(crate) fn held_bytes() -> usize {
    STAGING.with_borrow(|s| s.len() * size_of::<f32>())
}

/// The staged rows of one tile: the slots of the staging area, each with the source row it
/// holds (null: none yet) and when it was last read.
struct Stage {
    area: *mut f32,
    /// Floats per slot.
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

    /// The staged tile (channels `ct..ct + 8` of rows of `c` channels) of each present row of
    /// `src` (null for the others): rows staged for the output row before are reused, the
    /// others widened into the slots read longest ago by other output rows.
    ///
    /// # Safety
    /// The CPU has AVX2; the area holds [`slots`] rows of [`staged_width`] pixels of 8 f32 for
    /// `g`; each present row of `src` holds `g.w_in * c` values, unchanged since it was staged
    /// (`Stage` lives for one call, whose input rows are shared borrows); `ct < c`.
    #[inline(always)]
    unsafe fn rows(&mut self, src: [*const u8; 3], g: DwRow, c: usize, ct: usize) -> [*const f32; 3] {
        self.clock += 1;
        let mut out = [std::ptr::null(); 3];
        for (o, &r) in out.iter_mut().zip(&src) {
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
                    widen(r, self.area.add(s * self.len), g, c, ct);
                    s
                }
            };
            self.used[s] = self.clock;
            *o = self.area.add(s * self.len) as *const f32;
        }
        out
    }
}

/// Stages channels `ct..ct + 8` of the u8 row `src` (`c` channels per pixel) at `dst`:
/// [`staged_width`] pixels of 8 f32, from input column `-g.pad_left` on, zero outside the
/// row. Lanes past the row's channels hold the next pixel's values (or zeros), which only
/// padding channels, of zero weights, read.
///
/// # Safety
/// The CPU has AVX2; `src` holds `g.w_in * c` bytes; `dst` is writable for
/// `staged_width(g) * 8` f32, 32-byte aligned; `ct < c`.
#[inline(always)]
unsafe fn widen(src: *const u8, dst: *mut f32, g: DwRow, c: usize, ct: usize) {
    let width = staged_width(g);
    let len = g.w_in * c;
    let zero = _mm256_setzero_ps();
    // Input columns ix staged at pad + ix: those in the row, and of them those whose 8 bytes
    // lie inside it.
    let pad = g.pad_left.min(width);
    let end = (pad + g.w_in).min(width);
    let fast = if ct + LANES <= c {
        end
    } else if len >= ct + LANES {
        (pad + (len - ct - LANES) / c + 1).min(end)
    } else {
        pad
    };
    for j in 0..pad {
        _mm256_store_ps(dst.add(j * LANES), zero);
    }
    for j in pad..fast {
        // SAFETY: the 8 bytes read lie in the row, (j - pad) * c + ct + 8 <= len by `fast`.
        let b = _mm_loadl_epi64(src.add((j - pad) * c + ct) as *const __m128i);
        _mm256_store_ps(dst.add(j * LANES), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)));
    }
    for j in fast..end {
        let off = (j - pad) * c + ct;
        let mut tmp = [0u8; 16];
        std::ptr::copy_nonoverlapping(src.add(off), tmp.as_mut_ptr(), (len - off).min(LANES));
        let b = _mm_loadu_si128(tmp.as_ptr() as *const __m128i);
        _mm256_store_ps(dst.add(j * LANES), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)));
    }
    for j in end..width {
        _mm256_store_ps(dst.add(j * LANES), zero);
    }
}

/// The int8 epilogue of one 8-channel tile: [`Requant::code`] lane by lane (the AVX-512
/// kernel's `Epi::store_codes` on 8 lanes).
struct Codes {
    /// Per channel multiplier and addend into output codes ([`Requant::channel`]).
    m: __m256,
    b: __m256,
    /// The activation's bounds as codes, in 16-bit lanes.
    lo: __m256i,
    hi: __m256i,
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
        Codes { m, b, lo: _mm256_set1_epi16(rq.lo as i16), hi: _mm256_set1_epi16(rq.hi as i16) }
    }

    /// `round(acc * m + b)` of the exact sums `acc` (one fused multiply-add, rounded half to
    /// even), capped at 1e9 first (from 2^31 on the conversion gives i32::MIN).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn rounded(&self, acc: __m256) -> __m256i {
        _mm256_cvtps_epi32(_mm256_min_ps(_mm256_fmadd_ps(acc, self.m, self.b), _mm256_set1_ps(1e9)))
    }

    /// The codes of two pixels' sums `a` and `b`, 8 bytes each, `a`'s low: [`Codes::rounded`],
    /// saturated to 16 bits and clamped to the bounds (as clamping the i32, the bounds being
    /// codes), then packed to bytes (exactly: they lie in 0..=255). [`Requant::code`], lane by
    /// lane.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn codes2(&self, a: __m256, b: __m256) -> __m128i {
        // 128-bit lane l: lanes 4l..4l + 4 of a, then of b.
        let h = _mm256_packs_epi32(self.rounded(a), self.rounded(b));
        let h = _mm256_min_epi16(_mm256_max_epi16(h, self.lo), self.hi);
        let v = _mm256_packus_epi16(h, h);
        // Dwords 0 and 4 hold a's bytes, 1 and 5 b's.
        _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5)))
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

    /// Stores the codes of the sums of the XB output pixels from `x0`, two at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; as [`TileU8::store`] for each pixel.
    #[inline(always)]
    unsafe fn store_all<const XB: usize, const FULL: bool>(&self, x0: usize, acc: &[__m256; XB]) {
        for j in (0..XB).step_by(2) {
            // An odd last pixel pairs with itself.
            let v = self.codes.codes2(acc[j], acc[(j + 1).min(XB - 1)]);
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
    unsafe fn block<const S: usize, const D: usize, const XB: usize, const FULL: bool>(&self, x0: usize) {
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
        self.store_all::<XB, FULL>(x0, &acc);
    }

    /// Output pixels `x..hi` in blocks of XB; returns where it stopped.
    ///
    /// # Safety
    /// As [`TileU8::block`], for `hi <= w_out`.
    #[inline(always)]
    unsafe fn run<const S: usize, const D: usize, const XB: usize, const FULL: bool>(
        &self,
        mut x: usize,
        hi: usize,
    ) -> usize {
        while x + XB <= hi {
            self.block::<S, D, XB, FULL>(x);
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
        let x = self.run::<S, D, 6, FULL>(0, w_out);
        let x = self.run::<S, D, 4, FULL>(x, w_out);
        let x = self.run::<S, D, 2, FULL>(x, w_out);
        self.run::<S, D, 1, FULL>(x, w_out);
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
        self.store_all::<1, false>(x, &[a]);
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
    for ct in (0..c).step_by(LANES) {
        let mut stage = Stage::new(area, g);
        for (a, rq) in args.iter().zip(&rq) {
            let staged = stage.rows(a.rows, g, c, ct);
            let t = TileU8 {
                rows: padding_reads_present(staged),
                out: a.out.add(ct),
                c,
                cols: (c - ct).min(LANES),
                stride: g.stride,
                dilation: g.dilation,
                // SAFETY: aligned loads, as the packing is 64-byte aligned, `c_pad` a
                // multiple of 16 and `ct + 8 <= c_pad`.
                w: std::array::from_fn(|k| {
                    if staged[k / 3].is_null() {
                        _mm256_setzero_ps()
                    } else {
                        _mm256_load_ps(w.weights.as_ptr().add(k * w.c_pad + ct))
                    }
                }),
                codes: Codes::new(rq, w, ct),
            };
            t.walk(g.w_out);
        }
    }
}
