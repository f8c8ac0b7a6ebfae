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

/// (columns, rows) of the tile a panel of `nr` packed columns runs when `cols` of them are
/// real: the narrowest of 32, 24, 16 and 8 columns that covers them. The 24-column tile (three
/// ymm per row) only where `split` ([`crate::isa::split_512`]: a padded lane of a 512-bit
/// instruction costs as much as a real one, a 256-bit one half); elsewhere 24 real columns run
/// the 32-column tile, whose two zmm per row beat three ymm.
#[inline(always)]
pub(crate) fn panel_tile(cols: usize, nr: usize, split: bool) -> (usize, usize) {
    match cols {
        25.. => (32, MR32),
        17..=24 if !split => (32, MR32),
        17..=24 => (24, MR24),
        9..=16 => (16, if nr == 32 { MR32 } else { MR16 }),
        _ => (8, if nr == 32 { MR32 } else { MR16 }),
    }
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
/// for 24, 1..=[`MR16`] for 16 and 8). Each tile is instantiated for the heights it runs
/// only. The f32, int8 and bf16 GEMMs dispatch their tiles with it.
macro_rules! by_rows {
    (32, $rows:expr, |$r:ident| $call:expr) => {
        $crate::lanes::by_rows!(@ $rows, [1 2 3 4 5 6 7 8 9 10 11 12 13 14], $r, $call)
    };
    (24, $rows:expr, |$r:ident| $call:expr) => {
        $crate::lanes::by_rows!(@ $rows, [1 2 3 4 5 6 7 8 9], $r, $call)
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

// The row lists of `by_rows!` are these heights.
const _: () = assert!(MR32 == 14 && MR24 == 9 && MR16 == 24);
