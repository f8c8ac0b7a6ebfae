//! Lane masks, register tiles and byte packing of the AVX-512 kernels.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The mask of the first `n` of 16 lanes (all of them for `n >= 16`): tails of channel rows.
#[inline(always)]
pub(crate) fn mask16(n: usize) -> u16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as u16
    }
}

/// The 16-bit words of the 32-bit lanes of `mask`: bit `l` to bits `2l` and `2l + 1` (the
/// mask of a tile's channels in rows of bf16 pairs).
#[inline(always)]
pub(crate) fn words_of(mask: u16) -> u32 {
    let mut x = mask as u32;
    x = (x | (x << 8)) & 0x00ff_00ff;
    x = (x | (x << 4)) & 0x0f0f_0f0f;
    x = (x | (x << 2)) & 0x3333_3333;
    x = (x | (x << 1)) & 0x5555_5555;
    x | (x << 1)
}

/// The 16 f32 at `p` (`FULL`), or the lanes of `mask` with the others zero: a channel tile
/// and its tail.
///
/// # Safety
/// The CPU has AVX-512 F; `p` is readable for the lanes loaded.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn load16<const FULL: bool>(p: *const f32, mask: u16) -> __m512 {
    if FULL {
        _mm512_loadu_ps(p)
    } else {
        _mm512_maskz_loadu_ps(mask, p)
    }
}

/// Four vectors of i32 codes saturated to u8 in one vector: 128-bit lane `l` holds lanes
/// `4l..4l + 4` of `v[0]`, then of `v[1]`, `v[2]` and `v[3]`. Signed then unsigned saturation
/// takes every i32 to 0..=255 (two unsigned packs would read 32768..=65535 as negative 16-bit
/// values and give 0). The int8 kernels' epilogues all narrow through it.
///
/// # Safety
/// The CPU has AVX-512 BW.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn saturate_bytes(v: [__m512i; 4]) -> __m512i {
    _mm512_packus_epi16(_mm512_packs_epi32(v[0], v[1]), _mm512_packs_epi32(v[2], v[3]))
}

/// Rows of a 32-column tile (28 zmm accumulators), shared by the f32, int8 and bf16 GEMMs.
pub(crate) const MR32: usize = 14;
/// Rows of a tile of a 16-column panel (24 zmm accumulators).
pub(crate) const MR16: usize = 24;
/// Rows of the 24-column tile: 27 ymm accumulators, 3 weight vectors and the broadcast.
pub(crate) const MR24: usize = 9;
/// Row pairs of the pair tile ([`PAIRS24`]): 24 zmm accumulators, 3 weight vectors, the two
/// rows' broadcasts and the blend mask.
pub(crate) const PAIRS: usize = 8;
/// The width [`panel_tile`] gives for <= 24 real columns run two rows at a time: the 48
/// outputs of rows `2j` and `2j + 1` as three zmm, (row 2j, columns 0..16), (row 2j, 16..24 |
/// row 2j + 1, 0..8) and (row 2j + 1, 8..24). 1.5 vector instructions per row and k where
/// the 32-column tile runs 2; the middle vector's operand blends the two rows' broadcasts
/// ([`halves`]) and its weights are the panel's columns 16..24 then 0..8 ([`rotate_cols`]),
/// and [`store_pair`] is the epilogue.
pub(crate) const PAIRS24: usize = 48;

/// (columns, rows) of the tile a panel of `nr` packed columns runs when `cols` of them are
/// real: the narrowest of 32, 24, 16 and 8 columns that covers them. 24 columns run three ymm
/// per row where `split` ([`crate::isa::split_512`]: a padded lane of a 512-bit instruction
/// costs as much as a real one, a 256-bit one half, so the pair tile would save nothing);
/// elsewhere two rows at a time ([`PAIRS24`]), whose 1.5 zmm per row beat three ymm (and the
/// 32-column tile's two zmm).
#[inline(always)]
pub(crate) fn panel_tile(cols: usize, nr: usize, split: bool) -> (usize, usize) {
    match cols {
        25.. => (32, MR32),
        17..=24 if !split => (PAIRS24, 2 * PAIRS),
        17..=24 => (24, MR24),
        9..=16 => (16, if nr == 32 { MR32 } else { MR16 }),
        _ => (8, if nr == 32 { MR32 } else { MR16 }),
    }
}

/// `[x0 x 8 | x1 x 8]`: the lower half of `x0` and the upper half of `x1` (the middle
/// operand of a row pair, [`PAIRS24`]). A bitwise select under a constant mask: LLVM turns a
/// blend of two broadcasts into a two-source permute, which on Zen 5 competes with the
/// multiply-adds for their pipes (measured: the N = 24 projections 6-8% faster than the
/// 32-column tile with the permute, 17-19% with the select).
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn halves(x0: __m512, x1: __m512, upper: __m512i) -> __m512 {
    let (x0, x1) = (_mm512_castps_si512(x0), _mm512_castps_si512(x1));
    _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xca>(upper, x1, x0))
}

/// The mask [`halves`] selects the upper half with.
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn upper_half() -> __m512i {
    _mm512_maskz_set1_epi32(0xff00, -1)
}

/// Columns 16..24 then 0..8 of a panel, from its columns 0..16 (`lo`) and 8..24 (`hi`).
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn rotate_cols(lo: __m512, hi: __m512) -> __m512 {
    _mm512_shuffle_f32x4::<0b0100_1110>(hi, lo)
}

/// The rows of pair `j` of a [`PAIRS24`] tile of `rows` rows: `2j` and `2j + 1`, or `2j`
/// twice when the count is odd and this is the last pair (its second half then stores the
/// same values again).
#[inline(always)]
pub(crate) fn pair_rows(j: usize, rows: usize) -> (usize, usize) {
    (2 * j, (2 * j + 1).min(rows - 1))
}

/// The three accumulators of a [`PAIRS24`] row pair started from the panel's bias at `bias`:
/// columns 0..16, 16..24 | 0..8 and 8..24.
///
/// # Safety
/// The CPU has AVX-512 F; `bias` is 64-byte aligned and readable for 24 values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn pair_bias(bias: *const f32) -> [__m512; 3] {
    let (lo, hi) = (_mm512_load_ps(bias), _mm512_loadu_ps(bias.add(8)));
    [lo, rotate_cols(lo, hi), hi]
}

/// The f32 epilogue of a whole [`PAIRS24`] tile of `rows` rows: [`store_pair`] for each pair
/// of `acc` (`[pair][vector]`), the rows at `c` (and `r`, unless null) `ldc` (`ldr`) apart.
///
/// # Safety
/// As [`store_pair`], for `rows` rows.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn store_pairs<const P: usize>(
    acc: &[[__m512; 3]; P],
    rows: usize,
    cols: usize,
    (c, ldc): (*mut f32, usize),
    (r, ldr): (*const f32, usize),
    lo: __m512,
    hi: __m512,
) {
    for (j, v) in acc.iter().enumerate() {
        let (i0, i1) = pair_rows(j, rows);
        let rr = if r.is_null() { [r, r] } else { [r.add(i0 * ldr), r.add(i1 * ldr)] };
        store_pair(*v, cols, [c.add(i0 * ldc), c.add(i1 * ldc)], rr, lo, hi);
    }
}

/// The sums of one row pair of a [`PAIRS24`] tile as each row's two vectors of a 32-column
/// tile: columns 0..16 and 16..32 (of which lanes 0..8, columns 16..24, are real).
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn unpair(v: [__m512i; 3]) -> [[__m512i; 2]; 2] {
    // Row 2j + 1: columns 0..8 are the middle vector's upper half, 8..24 the third vector.
    let first = _mm512_shuffle_i32x4::<0b0100_1110>(v[1], v[2]);
    let second = _mm512_shuffle_i32x4::<0b0100_1110>(v[2], v[2]);
    [[v[0], v[1]], [first, second]]
}

/// The epilogue of one row pair of a [`PAIRS24`] tile with `cols` (17..=24) real columns:
/// each vector of `v` clamped to `lo..=hi`, plus the residual where `r` rows are not null,
/// stored to the rows at `c` (`c[1]`, `r[1]` the second row). A tile with an odd row count
/// pairs its last row with itself: its second half then stores the same values again.
///
/// # Safety
/// The CPU has AVX-512 F; the rows at `c` (and `r`, unless null) hold `cols` values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn store_pair(
    v: [__m512; 3],
    cols: usize,
    c: [*mut f32; 2],
    r: [*const f32; 2],
    lo: __m512,
    hi: __m512,
) {
    // Row 2j: columns 0..16 (vector 0) and 16..cols (lanes 0..8 of vector 1); row 2j + 1:
    // columns 0..8 (lanes 8..16 of vector 1, addressed 8 columns before the row, whose lanes
    // 0..8 are masked off) and 8..cols (vector 2).
    let (m1, tail, m2) = (mask16(cols - 16), 0xff00, mask16(cols - 8));
    // Not `array::from_fn`: its closure has no target features (see the VNNI GEMM's epilogue).
    let mut x = v;
    for x in x.iter_mut() {
        *x = _mm512_min_ps(_mm512_max_ps(*x, lo), hi);
    }
    if !r[0].is_null() {
        let mid = _mm512_mask_loadu_ps(_mm512_maskz_loadu_ps(m1, r[0].add(16)), tail, r[1].wrapping_sub(8));
        x[0] = _mm512_add_ps(x[0], _mm512_loadu_ps(r[0]));
        x[1] = _mm512_add_ps(x[1], mid);
        x[2] = _mm512_add_ps(x[2], _mm512_maskz_loadu_ps(m2, r[1].add(8)));
    }
    _mm512_storeu_ps(c[0], x[0]);
    _mm512_mask_storeu_ps(c[0].add(16), m1, x[1]);
    _mm512_mask_storeu_ps(c[1].wrapping_sub(8), tail, x[1]);
    _mm512_mask_storeu_ps(c[1].add(8), m2, x[2]);
}

/// Splits `m` rows into tiles of at most `mr`, evenly (e.g. 49 rows -> 13+12+12+12, not
/// 14+14+14+7), so the last tile does not run half empty: (count, rows per tile, tiles with
/// one more row).
#[inline(always)]
pub(crate) fn tiles(m: usize, mr: usize) -> (usize, usize, usize) {
    let count = m.div_ceil(mr);
    (count, m / count, m % count)
}

/// `$call` with the const `$r` set to `$rows`: the height of a tile of `$w` columns, as
/// [`panel_tile`] and [`tiles`] choose it (1..=[`MR32`] rows for 32 columns, 1..=[`MR24`]
/// for 24, 1..=[`MR16`] for 16 and 8; for `pairs`, the row pairs of `$rows` rows,
/// 1..=[`PAIRS`]). Each tile is instantiated for the heights it runs
/// only. The f32, int8 and bf16 GEMMs dispatch their tiles with it.
macro_rules! by_rows {
    (32, $rows:expr, |$r:ident| $call:expr) => {
        $crate::lanes::by_rows!(@ $rows, [1 2 3 4 5 6 7 8 9 10 11 12 13 14], $r, $call)
    };
    (24, $rows:expr, |$r:ident| $call:expr) => {
        $crate::lanes::by_rows!(@ $rows, [1 2 3 4 5 6 7 8 9], $r, $call)
    };
    (pairs, $rows:expr, |$r:ident| $call:expr) => {
        $crate::lanes::by_rows!(@ usize::div_ceil($rows, 2), [1 2 3 4 5 6 7 8], $r, $call)
    };
    ($w:literal, $rows:expr, |$r:ident| $call:expr) => {
        $crate::lanes::by_rows!(
            @ $rows, [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24], $r, $call
        )
    };
    (@ $rows:expr, [$($n:literal)*], $r:ident, $call:expr) => {
        match $rows {
            $($n => {
                const $r: usize = $n;
                $call
            })*
            _ => unreachable!("tile rows"),
        }
    };
}
pub(crate) use by_rows;

/// Runs `$body` for each row `$i` in `0..$mr` (a tile's const generic height, at most 24),
/// unrolled by the macro rather than left to LLVM, so that a tile's accumulators stay in
/// registers through its epilogue. LLVM kept an epilogue it judged too large to unroll a
/// loop over the accumulators stored to the stack: the bf16 GEMM with bf16 outputs ran the
/// K = 16 product 30% slower than with f32 ones, and the int8 GEMM's epilogues spilled
/// every tile.
macro_rules! each_row {
    ($mr:expr, |$i:ident| $body:block) => {
        each_row!(@ $mr, $i, $body, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23)
    };
    (@ $mr:expr, $i:ident, $body:block, $($n:literal)*) => {
        const { assert!($mr <= 24) };
        $(
            if $n < $mr {
                let $i: usize = $n;
                $body
            }
        )*
    };
}
pub(crate) use each_row;

// The row lists of `by_rows!` are these heights.
const _: () = assert!(MR32 == 14 && MR24 == 9 && MR16 == 24 && PAIRS == 8);

#[cfg(test)]
mod tests {
    #[test]
    fn words_of_doubles_each_lane_bit() {
        assert_eq!(super::words_of(0xffff), u32::MAX);
        assert_eq!(super::words_of(0b101), 0b11_00_11);
        assert_eq!(super::words_of(0x8000), 0xc000_0000);
        assert_eq!(super::words_of(0), 0);
    }
}
