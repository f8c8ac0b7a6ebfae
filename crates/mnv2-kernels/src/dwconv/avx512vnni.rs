//! AVX-512 VNNI depthwise 3x3 on u8 rows: exact integer sums, three taps per `vpdpbusd`.
//!
//! Channels go [`QUAD_GROUP`] (64) at a time. Each input pixel's three rows (64 bytes each)
//! are interleaved into four vectors of 16 quads, one quad per channel (its bytes in rows 0,
//! 1 and 2, then a zero), by in-lane unpacks: rows 0 and 1 into byte pairs, row 2 with zeros,
//! then both into quads; 8 shuffles for 64 channels. The quads of a run of input pixels are
//! written once into a staging area, zero quads standing for the padding columns, so every
//! output pixel is the same straight code: per vector, one `vpdpbusd` per horizontal tap
//! against weight quads packed in the unpacks' channel order ([`super::quad_channel`]). The
//! epilogue converts, scales and rounds each vector of sums, and three in-lane packs (which
//! saturate to 0..=255) put the 64 codes back in channel order for one store. A padding row
//! is a present row whose weight bytes are zeroed.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::avx512::channels;
use super::{
    padding_reads_present, Args, DwRow, PackedDw, Requant, MAX_ABS_SUM, QUAD_CHUNK as CHUNK, QUAD_GROUP, UNCAPPED_CODES,
};
use crate::aligned::grown;
use crate::lanes::saturate_bytes;

thread_local! {
    /// Quads of the input pixels of one pass: `[pixel][4]` vectors.
    static STAGE: RefCell<Vec<__m512i>> = const { RefCell::new(Vec::new()) };
}

/// Bytes of the thread's staging area for rows of `g`: the quads of the input pixels one pass
/// of [`CHUNK`] output pixels reads, four vectors each (`DwKernel::staging`).
pub(crate) fn staging_bytes(g: DwRow, _c: usize) -> usize {
    4 * size_of::<__m512i>() * ((CHUNK - 1) * g.stride + 2 * g.dilation + 1)
}

/// Bytes this thread's staging area holds now.
#[cfg(test)]
pub(crate) fn held_bytes() -> usize {
    STAGE.with_borrow(|s| s.len() * size_of::<__m512i>())
}

/// Loop invariants of one group of 64 channels.
struct Group {
    rows: [*const u8; 3],
    out: *mut u8,
    /// Pixel stride of the input and output rows (the channels).
    c: usize,
    /// The group's real channels, as a byte mask.
    mask: u64,
    /// Weight quads `[kx][vector]`.
    w: [[__m512i; 4]; 3],
    /// Multiplier and addend into output codes, per vector.
    mb: [(__m512, __m512); 4],
    /// The activation's bounds as codes, unless they are 0 and 255 (the packs' saturation).
    bounds: Option<(__m512i, __m512i)>,
    /// Some code may reach 2^30 before saturation: it is clamped in f32 first (the
    /// conversion would give `i32::MIN` from 2^31 on).
    big: bool,
}

impl Group {
    /// The four quad vectors of input pixel `ix`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW and VNNI (callers are [`row`]); `ix` lies in the rows
    /// `dwconv_row_u8` checked.
    #[inline(always)]
    unsafe fn quads(&self, ix: usize) -> [__m512i; 4] {
        let load = |r: *const u8| _mm512_maskz_loadu_epi8(self.mask, r.add(ix * self.c) as *const i8);
        let (a, b, c) = (load(self.rows[0]), load(self.rows[1]), load(self.rows[2]));
        let zero = _mm512_setzero_si512();
        let (ab_lo, ab_hi) = (_mm512_unpacklo_epi8(a, b), _mm512_unpackhi_epi8(a, b));
        let (c_lo, c_hi) = (_mm512_unpacklo_epi8(c, zero), _mm512_unpackhi_epi8(c, zero));
        [
            _mm512_unpacklo_epi16(ab_lo, c_lo),
            _mm512_unpackhi_epi16(ab_lo, c_lo),
            _mm512_unpacklo_epi16(ab_hi, c_hi),
            _mm512_unpackhi_epi16(ab_hi, c_hi),
        ]
    }

    /// The codes of the four vectors of sums, in channel order, stored at output pixel `x`.
    ///
    /// # Safety
    /// As [`Group::quads`]; `x` is an output pixel of the row.
    #[inline(always)]
    unsafe fn store(&self, x: usize, acc: [__m512i; 4]) {
        let v: [__m512i; 4] = std::array::from_fn(|j| {
            let x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[j]), self.mb[j].0, self.mb[j].1);
            _mm512_cvtps_epi32(if self.big { _mm512_min_ps(x, _mm512_set1_ps(1e9)) } else { x })
        });
        let mut q = saturate_bytes(v);
        if let Some((lo, hi)) = self.bounds {
            q = _mm512_min_epu8(_mm512_max_epu8(q, lo), hi);
        }
        _mm512_mask_storeu_epi8(self.out.add(x * self.c) as *mut i8, self.mask, q);
    }
}

/// # Safety
/// `args` must describe valid rows for `w` (checked by `dwconv_row_u8`), packed by
/// [`PackedDw::quantized_for`]; the CPU must have AVX-512 and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
pub(crate) unsafe fn row(args: &[Args<u8, u8>], w: &PackedDw) {
    // Row by row: each stages its pixels' quads (64 channels at a time) anyway.
    for a in args {
        row1(a, w);
    }
}

/// One output row.
///
/// # Safety
/// As [`row`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
unsafe fn row1(args: &Args<u8, u8>, w: &PackedDw) {
    let g = args.g;
    let (c, c_pad) = (w.c, w.c_pad);
    let c_quad = c.next_multiple_of(QUAD_GROUP);
    let (s, d) = (g.stride, g.dilation);
    // A padding row reads a present row with its weight bytes zeroed.
    let rows = padding_reads_present(args.rows);
    // Byte `i` of every quad is row `i`'s.
    let keep = (0..3).filter(|&i| !args.rows[i].is_null()).fold(0u64, |k, i| k | 0x1111_1111_1111_1111 << i);
    let rq = Requant::new(args.act, args.out_q);
    let bounds =
        (rq.lo != 0 || rq.hi != 255).then(|| (_mm512_set1_epi8(rq.lo as i8), _mm512_set1_epi8(rq.hi as u8 as i8)));
    let vectors = staging_bytes(g, c) / size_of::<__m512i>();
    // Valid until this thread next asks for a larger area; nothing else uses it.
    let stage = grown(&STAGE, vectors, _mm512_setzero_si512());
    for ct in (0..c).step_by(QUAD_GROUP) {
        let cols = (c - ct).min(QUAD_GROUP);
        let vec = |base: usize, j: usize| base + ct + 16 * j;
        let grp = Group {
            rows: rows.map(|r| r.add(ct)),
            out: args.out.add(ct),
            c,
            mask: if cols == 64 { !0 } else { (1u64 << cols) - 1 },
            w: std::array::from_fn(|kx| {
                std::array::from_fn(|j| {
                    let p = w.weights.as_ptr().add(vec(9 * c_pad + kx * c_quad, j));
                    _mm512_maskz_mov_epi8(keep, _mm512_load_si512(p as *const _))
                })
            }),
            mb: std::array::from_fn(|j| {
                let at = |base: usize| w.scale.as_ptr().add(vec(base, j));
                channels(&rq, at(c_pad), at(c_pad + c_quad))
            }),
            bounds,
            big: false,
        };
        // The largest code any channel of the group can reach.
        let reach = |(m, b): (__m512, __m512)| {
            MAX_ABS_SUM * _mm512_reduce_max_ps(_mm512_abs_ps(m)) + _mm512_reduce_max_ps(_mm512_abs_ps(b))
        };
        let grp = Group { big: grp.mb.iter().any(|&mb| reach(mb) >= UNCAPPED_CODES), ..grp };
        for x0 in (0..g.w_out).step_by(CHUNK) {
            let n = CHUNK.min(g.w_out - x0);
            // Staging slot `o` holds input column `first + o`.
            let first = (x0 * s) as isize - g.pad_left as isize;
            for o in 0..(n - 1) * s + 2 * d + 1 {
                let ix = first + o as isize;
                let q = if ix >= 0 && (ix as usize) < g.w_in {
                    grp.quads(ix as usize)
                } else {
                    [_mm512_setzero_si512(); 4]
                };
                for (j, v) in q.into_iter().enumerate() {
                    stage.add(4 * o + j).write(v);
                }
            }
            for x in 0..n {
                let mut acc = [_mm512_setzero_si512(); 4];
                for kx in 0..3 {
                    let src = stage.add(4 * (x * s + kx * d));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_dpbusd_epi32(*a, src.add(j).read(), grp.w[kx][j]);
                    }
                }
                grp.store(x0 + x, acc);
            }
        }
    }
}
