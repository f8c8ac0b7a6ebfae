//! The AMX tile unit of Intel's Xeons since Sapphire Rapids, as the AMX GEMM kernels
//! (`bf16gemm::amx`, `qgemm::amx`) use it: eight tile registers of 16 rows x 64 bytes, loaded
//! and stored by rows with a stride, multiplied by `tdpbf16ps` (bf16 pairs into f32) and
//! `tdpbusd` (u8 x s8 quads into i32). The instructions are inline assembly ([`Amx`]) behind
//! the [`Tiles`] trait, so that the tests can run the kernels on a model of the unit written
//! from the instruction set reference (`model::Model`) on any CPU: everything but the
//! instructions themselves is tested everywhere, the instructions only on a CPU with AMX.

use std::arch::asm;

/// Rows of every tile; 32-bit words per tile row (64 bytes).
pub(crate) const ROWS: usize = 16;

/// The tile configuration `ldtilecfg` reads (palette 1): every tile the kernels use is 16
/// rows of 64 bytes.
#[repr(C, align(64))]
#[cfg_attr(feature = "amx-model", allow(dead_code))]
pub(crate) struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

#[cfg_attr(feature = "amx-model", allow(dead_code))]
pub(crate) static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// The tile unit as the kernels use it, its registers named by const parameters: C tiles
/// 0..4, A tiles 4 and 5, B tiles 6 and 7, each 16 rows of 64 bytes.
pub(crate) trait Tiles {
    /// Configures every tile (`ldtilecfg`).
    ///
    /// # Safety
    /// The CPU has AMX-TILE and the process was granted the tile state.
    unsafe fn configure(&mut self);

    /// Tile `T` from 16 rows of 64 bytes at `p`, `stride` bytes apart (`tileloadd`).
    ///
    /// # Safety
    /// As [`Tiles::configure`], after it; the rows are readable.
    unsafe fn load<const T: usize>(&mut self, p: *const u8, stride: usize);

    /// `C += A * B` on tiles `C` (f32), `A` and `B` (bf16 pairs) (`tdpbf16ps`).
    ///
    /// # Safety
    /// As [`Tiles::configure`], after it; the CPU has AMX-BF16.
    unsafe fn dot_bf16<const C: usize, const A: usize, const B: usize>(&mut self);

    /// `C += A * B` on tiles `C` (i32), `A` (u8 quads) and `B` (s8 quads) (`tdpbusd`).
    ///
    /// # Safety
    /// As [`Tiles::configure`], after it; the CPU has AMX-INT8.
    unsafe fn dot_u8s8<const C: usize, const A: usize, const B: usize>(&mut self);

    /// Tile `T` to 16 rows of 64 bytes at `p`, `stride` bytes apart (`tilestored`).
    ///
    /// # Safety
    /// As [`Tiles::load`], with the rows writable.
    unsafe fn store<const T: usize>(&mut self, p: *mut u8, stride: usize);

    /// Returns the tiles to their initial state (`tilerelease`).
    ///
    /// # Safety
    /// As [`Tiles::configure`].
    unsafe fn release(&mut self);
}

/// The tile unit itself.
#[cfg_attr(feature = "amx-model", allow(dead_code))]
pub(crate) struct Amx;

/// The tile unit the AMX kernels run on: the CPU's.
#[cfg(not(feature = "amx-model"))]
#[inline(always)]
pub(crate) fn unit() -> Amx {
    Amx
}

/// The tile unit the AMX kernels run on: with the `amx-model` feature (testing only), the
/// model of it, on any CPU.
#[cfg(feature = "amx-model")]
#[inline(always)]
pub(crate) fn unit() -> model::Model {
    model::Model::new()
}

/// `match` on a const tile number, one `asm!` per register.
macro_rules! per_tile {
    ($t:expr, [$($n:literal)*], |$reg:ident| $body:expr) => {
        match $t {
            $($n => {
                macro_rules! $reg { ($s:literal) => { concat!($s, "tmm", $n) } }
                $body
            })*
            _ => unreachable!("tile registers 0..8"),
        }
    };
}

impl Tiles for Amx {
    #[inline(always)]
    unsafe fn configure(&mut self) {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
    }

    #[inline(always)]
    unsafe fn load<const T: usize>(&mut self, p: *const u8, stride: usize) {
        per_tile!(T, [0 1 2 3 4 5 6 7], |tmm| asm!(
            concat!(tmm!("tileloadd "), ", [{p} + {s}*1]"),
            p = in(reg) p,
            s = in(reg) stride,
            options(nostack, readonly),
        ))
    }

    #[inline(always)]
    unsafe fn dot_bf16<const C: usize, const A: usize, const B: usize>(&mut self) {
        match (C, A, B) {
            (0, 4, 6) => asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem)),
            (1, 4, 7) => asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem)),
            (2, 5, 6) => asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem)),
            (3, 5, 7) => asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem)),
            _ => unreachable!("the kernels' four products"),
        }
    }

    #[inline(always)]
    unsafe fn dot_u8s8<const C: usize, const A: usize, const B: usize>(&mut self) {
        match (C, A, B) {
            (0, 4, 6) => asm!("tdpbusd tmm0, tmm4, tmm6", options(nostack, nomem)),
            (1, 4, 7) => asm!("tdpbusd tmm1, tmm4, tmm7", options(nostack, nomem)),
            (2, 5, 6) => asm!("tdpbusd tmm2, tmm5, tmm6", options(nostack, nomem)),
            (3, 5, 7) => asm!("tdpbusd tmm3, tmm5, tmm7", options(nostack, nomem)),
            _ => unreachable!("the kernels' four products"),
        }
    }

    #[inline(always)]
    unsafe fn store<const T: usize>(&mut self, p: *mut u8, stride: usize) {
        per_tile!(T, [0 1 2 3], |tmm| asm!(
            concat!("tilestored [{p} + {s}*1], ", tmm!("")),
            p = in(reg) p,
            s = in(reg) stride,
            options(nostack),
        ))
    }

    #[inline(always)]
    unsafe fn release(&mut self) {
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// Bytes per tile row.
pub(crate) const ROW_BYTES: usize = 64;

/// Rows of a block of the AMX GEMMs (two A tiles).
pub(crate) const MR: usize = 32;
/// Columns of a block, one packed panel (two B tiles).
pub(crate) const NR: usize = 32;

/// A block of C tiles as stored: 32 rows of 32 f32 (bf16 products) or i32 (int8 ones).
#[repr(C, align(64))]
pub(crate) struct Block<T>(pub(crate) [T; MR * NR]);

/// The sums of a block of `rows` rows and `cols` real columns (at most [`MR`] and [`NR`]):
/// [`block`] with only the A and B tiles they need, `INT8` as there.
///
/// # Safety
/// As [`block`], for `rows.div_ceil(16)` A tiles and `cols.div_ceil(16)` B tiles.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn products<T: Tiles, const INT8: bool>(
    t: &mut T,
    (rows, cols): (usize, usize),
    init: [*const u8; 2],
    a: (*const u8, usize),
    b: (*const u8, usize),
    steps: usize,
    out: (*mut u8, usize),
) {
    match (rows > ROWS, cols > 16) {
        (true, true) => block::<T, INT8, 2, 2>(t, init, a, b, steps, out),
        (true, false) => block::<T, INT8, 2, 1>(t, init, a, b, steps, out),
        (false, true) => block::<T, INT8, 1, 2>(t, init, a, b, steps, out),
        (false, false) => block::<T, INT8, 1, 1>(t, init, a, b, steps, out),
    }
}

/// The sums of one block of the AMX GEMMs: `RT` A tiles (16 rows each) times `H` B tiles (16
/// columns each), `INT8` with `tdpbusd` (else `tdpbf16ps`), over `steps` tiles of k, stored
/// to `out` (rows `ldo` bytes apart). C tile `2r + h` starts from the 16 values at `init[h]`
/// in every row (a load of stride 0: the bias, or zeros); A tile `r` of step `q` is 16 rows
/// from `a + 64 q + 16 r lda`, B tile `h` 16 rows from `b + 16 q ldb + 64 h`.
///
/// # Safety
/// As [`Tiles::configure`], after it, with the CPU's AMX-BF16 or AMX-INT8 (as `INT8` says);
/// every tile's rows lie in readable (`out`: writable) memory.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<T: Tiles, const INT8: bool, const RT: usize, const H: usize>(
    t: &mut T,
    init: [*const u8; 2],
    (a, lda): (*const u8, usize),
    (b, ldb): (*const u8, usize),
    steps: usize,
    (out, ldo): (*mut u8, usize),
) {
    t.load::<0>(init[0], 0);
    if H == 2 {
        t.load::<1>(init[1], 0);
    }
    if RT == 2 {
        t.load::<2>(init[0], 0);
        if H == 2 {
            t.load::<3>(init[1], 0);
        }
    }
    for q in 0..steps {
        let (aq, bq) = (a.add(q * ROW_BYTES), b.add(q * ROWS * ldb));
        t.load::<4>(aq, lda);
        t.load::<6>(bq, ldb);
        if H == 2 {
            t.load::<7>(bq.add(ROW_BYTES), ldb);
        }
        dot::<T, INT8, 0, 4, 6>(t);
        if H == 2 {
            dot::<T, INT8, 1, 4, 7>(t);
        }
        if RT == 2 {
            t.load::<5>(aq.add(ROWS * lda), lda);
            dot::<T, INT8, 2, 5, 6>(t);
            if H == 2 {
                dot::<T, INT8, 3, 5, 7>(t);
            }
        }
    }
    t.store::<0>(out, ldo);
    if H == 2 {
        t.store::<1>(out.add(ROW_BYTES), ldo);
    }
    if RT == 2 {
        t.store::<2>(out.add(ROWS * ldo), ldo);
        if H == 2 {
            t.store::<3>(out.add(ROWS * ldo + ROW_BYTES), ldo);
        }
    }
}

/// `tdpbusd` or `tdpbf16ps` on tiles `C`, `A`, `B`.
///
/// # Safety
/// As [`block`].
#[inline(always)]
unsafe fn dot<T: Tiles, const INT8: bool, const C: usize, const A: usize, const B: usize>(t: &mut T) {
    if INT8 {
        t.dot_u8s8::<C, A, B>()
    } else {
        t.dot_bf16::<C, A, B>()
    }
}

#[cfg(any(test, feature = "amx-model"))]
pub(crate) mod model {
    use super::{Tiles, ROWS};
    use crate::bf16gemm::bf16_to_f32;

    /// The tile unit as the instruction set reference describes it (Intel SDM: TILELOADD,
    /// TILESTORED, TDPBF16PS, TDPBUSD), for 16 x 64-byte tiles. `tdpbf16ps`: per output, the
    /// products of the even channels and of the odd ones summed apart over the tile's 16 pairs,
    /// from zero, then added together and to C; input denormals read as zero and output
    /// denormals flushed (a product of two bf16 values is exact in f32, so the reference's FMA
    /// is a multiply and an add here). `tdpbusd`: u8 times s8, summed in i32 (wrapping, no
    /// saturation).
    pub(crate) struct Model {
        tiles: [[u32; 256]; 8],
        configured: bool,
    }

    impl Model {
        pub(crate) fn new() -> Model {
            Model { tiles: [[0; 256]; 8], configured: false }
        }
    }

    /// A bf16 value's f32, a denormal read as zero.
    fn daz(h: u32) -> f32 {
        let h = h & 0xffff;
        if h & 0x7f80 == 0 {
            bf16_to_f32((h & 0x8000) as u16)
        } else {
            bf16_to_f32(h as u16)
        }
    }

    /// `v`, a denormal flushed to zero of its sign.
    fn ftz(v: f32) -> f32 {
        if v.is_subnormal() {
            f32::from_bits(v.to_bits() & 0x8000_0000)
        } else {
            v
        }
    }

    impl Tiles for Model {
        unsafe fn configure(&mut self) {
            assert!(!self.configured, "configured twice without a release");
            self.configured = true;
        }

        unsafe fn load<const T: usize>(&mut self, p: *const u8, stride: usize) {
            assert!(self.configured, "a tile load before ldtilecfg");
            for r in 0..ROWS {
                for c in 0..16 {
                    self.tiles[T][r * 16 + c] = (p.add(r * stride + 4 * c) as *const u32).read_unaligned();
                }
            }
        }

        unsafe fn dot_bf16<const C: usize, const A: usize, const B: usize>(&mut self) {
            assert!(self.configured, "a tile product before ldtilecfg");
            assert!(C < 4 && (A == 4 || A == 5) && B >= 6 && B < 8, "the kernel's registers");
            for m in 0..ROWS {
                for n in 0..16 {
                    let (mut even, mut odd) = (0f32, 0f32);
                    for k in 0..16 {
                        let (x, y) = (self.tiles[A][m * 16 + k], self.tiles[B][k * 16 + n]);
                        even = ftz(even + daz(x) * daz(y));
                        odd = ftz(odd + daz(x >> 16) * daz(y >> 16));
                    }
                    let c = f32::from_bits(self.tiles[C][m * 16 + n]);
                    self.tiles[C][m * 16 + n] = ftz(c + ftz(even + odd)).to_bits();
                }
            }
        }

        unsafe fn dot_u8s8<const C: usize, const A: usize, const B: usize>(&mut self) {
            assert!(self.configured, "a tile product before ldtilecfg");
            assert!(C < 4 && (A == 4 || A == 5) && B >= 6 && B < 8, "the kernel's registers");
            for m in 0..ROWS {
                for n in 0..16 {
                    let mut acc = self.tiles[C][m * 16 + n] as i32;
                    for k in 0..16 {
                        let (x, y) = (self.tiles[A][m * 16 + k].to_le_bytes(), self.tiles[B][k * 16 + n].to_le_bytes());
                        for b in 0..4 {
                            acc = acc.wrapping_add(x[b] as i32 * (y[b] as i8) as i32);
                        }
                    }
                    self.tiles[C][m * 16 + n] = acc as u32;
                }
            }
        }

        unsafe fn store<const T: usize>(&mut self, p: *mut u8, stride: usize) {
            assert!(self.configured, "a tile store before ldtilecfg");
            for r in 0..ROWS {
                for c in 0..16 {
                    (p.add(r * stride + 4 * c) as *mut u32).write_unaligned(self.tiles[T][r * 16 + c]);
                }
            }
        }

        unsafe fn release(&mut self) {
            *self = Model::new();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::amx::{TileConfig, CONFIG};
        use crate::bf16gemm::f32_to_bf16;

        /// The model itself: sums of small integers are exact in any order, a denormal operand
        /// counts as zero, and the even and odd products are summed apart before they meet C.
        #[test]
        fn the_model_multiplies_tiles_as_the_reference_says() {
            let mut t = Model::new();
            // SAFETY: the model runs on any CPU; every pointer covers 16 rows of 64 bytes.
            unsafe {
                t.configure();
                let bf = |v: f32| f32_to_bf16(v) as u32;
                let a: Vec<u32> = (0..256).map(|i| bf((i % 7) as f32) | (bf((i % 5) as f32 - 2.0) << 16)).collect();
                let b: Vec<u32> = (0..256).map(|i| bf((i % 3) as f32) | (bf(1.0) << 16)).collect();
                let c: Vec<f32> = (0..256).map(|i| i as f32).collect();
                t.load::<4>(a.as_ptr() as *const u8, 64);
                t.load::<6>(b.as_ptr() as *const u8, 64);
                t.load::<0>(c.as_ptr() as *const u8, 64);
                t.dot_bf16::<0, 4, 6>();
                let mut got = vec![0f32; 256];
                t.store::<0>(got.as_mut_ptr() as *mut u8, 64);
                for m in 0..16 {
                    for n in 0..16 {
                        let want: f32 = c[m * 16 + n]
                            + (0..16)
                                .map(|k| {
                                    let (x, y) = (a[m * 16 + k], b[k * 16 + n]);
                                    bf16_to_f32(x as u16) * bf16_to_f32(y as u16)
                                        + bf16_to_f32((x >> 16) as u16) * bf16_to_f32((y >> 16) as u16)
                                })
                                .sum::<f32>();
                        assert_eq!(got[m * 16 + n], want, "row {m} column {n}");
                    }
                }
                // A denormal bf16 (0x0001) times 2^120 would be 2^-13 in f32: read as zero.
                let a = [0x0001u32; 256];
                let b = [f32_to_bf16(2f32.powi(120)) as u32; 256];
                t.load::<4>(a.as_ptr() as *const u8, 64);
                t.load::<6>(b.as_ptr() as *const u8, 64);
                t.load::<1>([0u32; 16].as_ptr() as *const u8, 0);
                t.dot_bf16::<1, 4, 6>();
                t.store::<1>(got.as_mut_ptr() as *mut u8, 64);
                assert!(got.iter().all(|v| *v == 0.0), "denormal inputs are zero: {:?}", &got[..4]);
                // Per row: k = 0 multiplies 1 (even) and 2^-25 (odd), k = 1..16 both 2^-25, all
                // by 1. Summed apart, the even lanes stay 1 (2^-25 is under half an ulp of 1, each
                // add rounds it away) and the odd ones reach 16 x 2^-25 = 2^-21 exactly: 1 + 2^-21.
                // Summed in one chain (as `vdpbf16ps` does), every 2^-25 would round away: 1.
                let e = f32_to_bf16(2f32.powi(-25)) as u32;
                let a: Vec<u32> =
                    (0..256).map(|i| if i % 16 == 0 { 0x3f80 | (e << 16) } else { e | (e << 16) }).collect();
                let b = [0x3f80_3f80u32; 256];
                t.load::<4>(a.as_ptr() as *const u8, 64);
                t.load::<6>(b.as_ptr() as *const u8, 64);
                t.load::<1>([0u32; 16].as_ptr() as *const u8, 0);
                t.dot_bf16::<1, 4, 6>();
                t.store::<1>(got.as_mut_ptr() as *mut u8, 64);
                assert_eq!(got[0], 1.0 + 2f32.powi(-21), "even and odd products are summed apart");
                t.release();
            }
        }

        /// The tile configuration is what `ldtilecfg` expects: 64 bytes, palette 1, tiles 0..8 of
        /// 16 rows x 64 bytes, the others unused.
        #[test]
        fn the_tile_configuration_is_64_bytes_of_palette_1() {
            assert_eq!(std::mem::size_of::<TileConfig>(), 64);
            assert_eq!(std::mem::align_of::<TileConfig>(), 64);
            let bytes: &[u8; 64] = unsafe { &*(&CONFIG as *const TileConfig as *const [u8; 64]) };
            assert_eq!(bytes[0], 1, "palette");
            assert_eq!(&bytes[16..18], &[64, 0], "tile 0: 64 bytes per row, little-endian");
            assert_eq!(&bytes[48..56], &[16; 8], "tiles 0..8: 16 rows");
            assert!(bytes[56..].iter().all(|b| *b == 0) && bytes[32..48].iter().all(|b| *b == 0));
        }

        /// `tdpbusd`: unsigned A bytes times signed B bytes, four per word, into C.
        #[test]
        fn the_model_multiplies_bytes_unsigned_by_signed() {
            let mut t = Model::new();
            // SAFETY: the model runs on any CPU; every pointer covers 16 rows of 64 bytes.
            unsafe {
                t.configure();
                let a: Vec<u32> = (0..256u32).map(|i| u32::from_le_bytes([255, (i % 200) as u8, 1, 7])).collect();
                let b: Vec<u32> = (0..256u32).map(|i| u32::from_le_bytes([0x80, 127, (i % 9) as u8, 0xff])).collect();
                let c: Vec<i32> = (0..256).map(|i| i - 100).collect();
                t.load::<4>(a.as_ptr() as *const u8, 64);
                t.load::<6>(b.as_ptr() as *const u8, 64);
                t.load::<2>(c.as_ptr() as *const u8, 64);
                t.dot_u8s8::<2, 4, 6>();
                let mut got = vec![0i32; 256];
                t.store::<2>(got.as_mut_ptr() as *mut u8, 64);
                for m in 0..16 {
                    for n in 0..16 {
                        let want = c[m * 16 + n]
                            + (0..16)
                                .map(|k| {
                                    let (x, y) = (a[m * 16 + k].to_le_bytes(), b[k * 16 + n].to_le_bytes());
                                    (0..4).map(|q| x[q] as i32 * y[q] as i8 as i32).sum::<i32>()
                                })
                                .sum::<i32>();
                        assert_eq!(got[m * 16 + n], want, "row {m} column {n}");
                    }
                }
                // 255 x -128 is the most negative product: unsigned A, signed B.
                assert!(got[0] < -16 * 255 * 128 / 2);
                t.release();
            }
        }
    }
}
