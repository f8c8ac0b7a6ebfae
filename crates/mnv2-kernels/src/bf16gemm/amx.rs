//! AMX-BF16 GEMM kernel: the bf16 pointwise product on the tile unit of Intel's Xeons since
//! Sapphire Rapids. One `tdpbf16ps` multiplies a 16 x 16 tile of A pairs (16 rows, 32
//! input channels) by a 16 x 16 tile of weight pairs (16 pairs of k, 16 columns) into a
//! 16 x 16 f32 tile: 8192 multiply-adds, where `vdpbf16ps` does 32.
//!
//! Blocking: 32 rows x one packed panel of 32 columns per block, in four C tiles (`tmm0..3`,
//! C tile `2r + h` holds rows `16r..` and columns `16h..`), two A tiles (`tmm4`, `tmm5`) and
//! two B tiles (`tmm6`, `tmm7`); every tile is 16 rows of 64 bytes, configured once per call.
//! A block of <= 16 rows or a panel of <= 16 real columns runs only the tiles it needs. The C
//! tiles start from the bias (a tile load of stride 0: every row the same 16 values), as the
//! AVX-512 kernels' accumulators do.
//!
//! Every tile is whole, so no tile reads past a buffer: the packing pads each panel's pairs
//! with zero pairs to a multiple of 16 ([`super::Bf16GemmKernel::pair_block`]), and A is first
//! rounded (f32 rows) or copied (rows already rounded) into a per-thread scratch whose rows
//! hold `packed_pairs` words, the padding zero, with zero rows up to a multiple of 16. The C
//! tiles are stored to a 32 x 32 f32 block, from which the AVX-512 BF16 kernel's epilogue
//! ([`Dst`]: clamp, residual, f32 / bf16 / pixel-pair stores) writes the block's rows.
//!
//! The tile instructions are inline assembly ([`Amx`]) behind the [`Tiles`] trait. The tests
//! run the same kernel on a model of the tile unit written from the instruction set reference
//! (`tests::Model`), so the tiling, padding and epilogue are tested on any CPU with AVX-512
//! BF16; the instructions themselves only where the CPU has AMX. No machine of this project
//! has had AMX yet, so the kernel is opt-in (`MNV2_ISA=amx`, [`crate::isa::amx_enabled`]).

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::aligned::AlignedVec;
use crate::isa::Needs;
use crate::lanes::mask16;

use super::avx512bf16::{round_rows, Dst, PairBf16, Panel};
use super::{bf16_bit_bounds, ASrc, Args, Bf16, Bf16GemmKernel, Out, PackedBf16Gemm};

/// Rows of every tile, and pairs of k per tile row (64 bytes).
const ROWS: usize = 16;
/// Bytes per tile row.
const ROW_BYTES: usize = 64;
/// Columns of a packed panel (two B tiles).
const NR: usize = 32;
/// Rows of a block (two A tiles).
const MR: usize = 32;

/// The registry entry.
pub(crate) const KERNEL: Bf16GemmKernel = Bf16GemmKernel {
    name: "gemm_bf16_minmaxres_32x32_amx",
    needs: Needs::AmxBf16,
    mr: MR,
    nr: NR,
    min_n: 0,
    pair_block: ROWS,
    run: gemm,
};

thread_local! {
    /// A rounded to bf16 pairs: rows of `packed_pairs` words (zero pairs after the real
    /// ones), zero rows up to a multiple of 16; grows to the largest call.
    static A16: RefCell<AlignedVec<u32>> = RefCell::new(AlignedVec::zeros(0));
}

/// The tile configuration `ldtilecfg` reads (palette 1): every tile this kernel uses is 16
/// rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// The tile unit as the kernel uses it, its registers named by const parameters: C tiles 0..4,
/// A tiles 4 and 5, B tiles 6 and 7, each 16 rows of 64 bytes.
pub(super) trait Tiles {
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

    /// `C += A * B` on tiles `C`, `A` and `B` (`tdpbf16ps`).
    ///
    /// # Safety
    /// As [`Tiles::configure`], after it; the CPU has AMX-BF16.
    unsafe fn dot<const C: usize, const A: usize, const B: usize>(&mut self);

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
pub(super) struct Amx;

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
    unsafe fn dot<const C: usize, const A: usize, const B: usize>(&mut self) {
        match (C, A, B) {
            (0, 4, 6) => asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem)),
            (1, 4, 7) => asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem)),
            (2, 5, 6) => asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem)),
            (3, 5, 7) => asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem)),
            _ => unreachable!("the kernel's four products"),
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

/// A block of C tiles as f32, 32 rows of 32 columns.
#[repr(C, align(64))]
struct Block([f32; MR * NR]);

/// # Safety
/// `args` must describe valid buffers for `w` (checked by `gemm_bf16`); the CPU must have
/// AVX-512 F/BW/VL/DQ, BF16 and AMX-TILE/AMX-BF16, and the process the tile state.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
pub(crate) unsafe fn gemm(args: &Args, w: &PackedBf16Gemm, src: ASrc, out: Out) {
    gemm_on(&mut Amx, args, w, src, out)
}

/// The kernel on tile unit `t`.
///
/// # Safety
/// As [`gemm`], with `t` runnable (the CPU's tiles, or a model of them).
#[inline(always)]
pub(super) unsafe fn gemm_on<T: Tiles>(t: &mut T, args: &Args, w: &PackedBf16Gemm, src: ASrc, out: Out) {
    if args.m == 0 || args.panels.is_empty() {
        return;
    }
    let kp = w.packed_pairs();
    let rows = args.m.next_multiple_of(ROWS);
    // Valid until this thread next grows the area; nothing else uses it. (The work stays out
    // of the closure, which lacks the target features the intrinsics need inlined.)
    let a16 = A16.with_borrow_mut(|s| {
        if s.len() < rows * kp {
            *s = AlignedVec::zeros(rows * kp);
        }
        s.as_mut_ptr()
    });
    fill_a(args, w, src, a16, kp);
    t.configure();
    match out {
        Out::F32 => panels::<T, f32>(t, args, w, a16, kp),
        Out::Bf16 => panels::<T, Bf16>(t, args, w, a16, kp),
        Out::Bf16Pairs => panels::<T, PairBf16>(t, args, w, a16, kp),
    }
    t.release();
}

/// A's rows as bf16 pairs at `a16`, `kp` words per row: rounded from f32 or copied, zero pairs
/// after the real ones, zero rows after row `m` up to a multiple of 16.
///
/// # Safety
/// As [`gemm`], with `a16` writable for `m.next_multiple_of(16) * kp` words.
#[inline(always)]
unsafe fn fill_a(args: &Args, w: &PackedBf16Gemm, src: ASrc, a16: *mut u32, kp: usize) {
    let (m, pairs) = (args.m, w.pairs());
    match src {
        ASrc::F32 => round_rows(m, w.k, args.a, args.lda, a16, kp),
        ASrc::Pairs(p, ld) => {
            for i in 0..m {
                std::ptr::copy_nonoverlapping(p.add(i * ld), a16.add(i * kp), pairs);
            }
        }
    }
    if kp > pairs {
        for i in 0..m {
            std::ptr::write_bytes(a16.add(i * kp + pairs), 0, kp - pairs);
        }
    }
    std::ptr::write_bytes(a16.add(m * kp), 0, (m.next_multiple_of(ROWS) - m) * kp);
}

/// The panels of `args`, block by block, into C of `D`.
///
/// # Safety
/// As [`gemm_on`], after `fill_a` and the tiles' configuration.
#[inline(always)]
unsafe fn panels<T: Tiles, D: Dst>(t: &mut T, args: &Args, w: &PackedBf16Gemm, a16: *const u32, kp: usize) {
    let mut block = Block([0.0; MR * NR]);
    for pi in args.panels.clone() {
        let n0 = pi * NR;
        let cols = NR.min(w.n - n0);
        let b = w.data.as_ptr().add(pi * kp * NR);
        let p = Panel {
            pairs: w.pairs(),
            lda: kp,
            nr: NR,
            ldc: args.ldc,
            ldr: args.ldr,
            b,
            bias: w.bias.as_ptr().add(n0),
            m0: mask16(cols),
            m1: mask16(cols.saturating_sub(16)),
            lo: _mm512_set1_ps(args.act.min),
            hi: _mm512_set1_ps(args.act.max),
            bits: bf16_bit_bounds(args.act).map(|(l, h)| (_mm512_set1_epi16(l), _mm512_set1_epi16(h))),
        };
        let mut i0 = 0;
        while i0 < args.m {
            let rows = MR.min(args.m - i0);
            let a = a16.add(i0 * kp);
            match (rows > ROWS, cols > 16) {
                (true, true) => products::<T, 2, 2>(t, &p, a, kp, &mut block),
                (true, false) => products::<T, 2, 1>(t, &p, a, kp, &mut block),
                (false, true) => products::<T, 1, 2>(t, &p, a, kp, &mut block),
                (false, false) => products::<T, 1, 1>(t, &p, a, kp, &mut block),
            }
            epilogue::<D>(&p, args, &block, i0, rows, n0, cols > 16);
            i0 += MR;
        }
    }
}

/// The sums of one block, `RT` A tiles (16 rows each) by `H` B tiles (16 columns each), from
/// the bias, stored to `block` (rows 32 f32 apart).
///
/// # Safety
/// As [`panels`], with `a` the block's first A row (`kp` words apart, `16 * RT` rows readable).
#[inline(always)]
unsafe fn products<T: Tiles, const RT: usize, const H: usize>(
    t: &mut T,
    p: &Panel,
    a: *const u32,
    kp: usize,
    block: &mut Block,
) {
    let bias = p.bias as *const u8;
    t.load::<0>(bias, 0);
    if H == 2 {
        t.load::<1>(bias.add(ROW_BYTES), 0);
    }
    if RT == 2 {
        t.load::<2>(bias, 0);
        if H == 2 {
            t.load::<3>(bias.add(ROW_BYTES), 0);
        }
    }
    let (lda, ldb) = (kp * 4, NR * 4);
    for q in 0..kp / ROWS {
        let (aq, bq) = (a.add(q * ROWS) as *const u8, p.b.add(q * ROWS * NR) as *const u8);
        t.load::<4>(aq, lda);
        t.load::<6>(bq, ldb);
        if H == 2 {
            t.load::<7>(bq.add(ROW_BYTES), ldb);
        }
        t.dot::<0, 4, 6>();
        if H == 2 {
            t.dot::<1, 4, 7>();
        }
        if RT == 2 {
            t.load::<5>(aq.add(ROWS * lda), lda);
            t.dot::<2, 5, 6>();
            if H == 2 {
                t.dot::<3, 5, 7>();
            }
        }
    }
    let (c, ldc) = (block.0.as_mut_ptr() as *mut u8, NR * 4);
    t.store::<0>(c, ldc);
    if H == 2 {
        t.store::<1>(c.add(ROW_BYTES), ldc);
    }
    if RT == 2 {
        t.store::<2>(c.add(ROWS * ldc), ldc);
        if H == 2 {
            t.store::<3>(c.add(ROWS * ldc + ROW_BYTES), ldc);
        }
    }
}

/// Rows `i0..i0 + rows` of C (of `D`) from their sums in `block`: the AVX-512 BF16 kernel's
/// epilogue (clamp, residual, store), for columns `n0..n0 + 16` and, if `both`, the next 16.
///
/// # Safety
/// As [`panels`]; `rows` is even for pixel pairs.
#[inline(always)]
unsafe fn epilogue<D: Dst>(p: &Panel, args: &Args, block: &Block, i0: usize, rows: usize, n0: usize, both: bool) {
    let c = args.c as *mut D;
    let sum = |i: usize, h: usize| _mm512_load_ps(block.0.as_ptr().add(i * NR + 16 * h));
    let res = |i: usize, h: usize| {
        if args.r.is_null() {
            args.r
        } else {
            args.r.add((i0 + i) * args.ldr + n0 + 16 * h)
        }
    };
    let halves: &[(usize, u16)] = if both { &[(0, p.m0), (1, p.m1)] } else { &[(0, p.m0)] };
    let mut i = 0;
    while i < rows {
        for &(h, mask) in halves {
            let j = n0 + 16 * h;
            if D::STEP == 2 {
                D::store16x2(p, c, (i0 + i, j), sum(i, h), sum(i + 1, h), (res(i, h), res(i + 1, h)), mask);
            } else {
                D::store16(D::at(c, i0 + i, p.ldc, j), p.finish(sum(i, h), res(i, h), mask), mask);
            }
        }
        i += D::STEP;
    }
}

/// The kernel on a model of the tile unit: the registry entry the tests add to run the AMX
/// kernel's tiling, padding and epilogue on any CPU with AVX-512 BF16.
#[cfg(test)]
pub(super) static MODEL: Bf16GemmKernel = Bf16GemmKernel {
    name: "gemm_bf16_minmaxres_32x32_amx_on_a_tile_model",
    needs: Needs::Avx512Bf16,
    mr: MR,
    nr: NR,
    min_n: 0,
    pair_block: ROWS,
    run: tests::gemm_model,
};

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::bf16gemm::{bf16_to_f32, f32_to_bf16, gemm_bf16, PackedBf16Gemm};
    use crate::isa::Tier;
    use crate::MinMax;

    /// The tile unit as the instruction set reference describes it (Intel SDM, TDPBF16PS,
    /// TILELOADD, TILESTORED), for 16 x 64-byte tiles: per output, the products of the even
    /// channels and of the odd ones summed apart over the tile's 16 pairs, from zero, then
    /// added together and to C; input denormals read as zero and output denormals flushed (a
    /// product of two bf16 values is exact in f32, so the reference's FMA is a multiply and
    /// an add here).
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

        unsafe fn dot<const C: usize, const A: usize, const B: usize>(&mut self) {
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

    /// # Safety
    /// As [`gemm`], but the CPU needs only AVX-512 BF16 (the epilogue's instructions).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
    pub(crate) unsafe fn gemm_model(args: &Args, w: &PackedBf16Gemm, src: ASrc, out: Out) {
        gemm_on(&mut Model::new(), args, w, src, out)
    }

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
            t.dot::<0, 4, 6>();
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
            t.dot::<1, 4, 6>();
            t.store::<1>(got.as_mut_ptr() as *mut u8, 64);
            assert!(got.iter().all(|v| *v == 0.0), "denormal inputs are zero: {:?}", &got[..4]);
            // Per row: k = 0 multiplies 1 (even) and 2^-25 (odd), k = 1..16 both 2^-25, all
            // by 1. Summed apart, the even lanes stay 1 (2^-25 is under half an ulp of 1, each
            // add rounds it away) and the odd ones reach 16 x 2^-25 = 2^-21 exactly: 1 + 2^-21.
            // Summed in one chain (as `vdpbf16ps` does), every 2^-25 would round away: 1.
            let e = f32_to_bf16(2f32.powi(-25)) as u32;
            let a: Vec<u32> = (0..256).map(|i| if i % 16 == 0 { 0x3f80 | (e << 16) } else { e | (e << 16) }).collect();
            let b = [0x3f80_3f80u32; 256];
            t.load::<4>(a.as_ptr() as *const u8, 64);
            t.load::<6>(b.as_ptr() as *const u8, 64);
            t.load::<1>([0u32; 16].as_ptr() as *const u8, 0);
            t.dot::<1, 4, 6>();
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

    /// The scratch of A is reused between calls: its padding must be zeroed again after a
    /// call of a wider k left NaN there (a NaN times a zero weight pair is NaN).
    #[test]
    fn padding_is_zero_after_a_wider_call() {
        let Some(tier) = Tier::host().into_iter().find(|t| t.bf16().is_some()) else {
            println!("SKIPPED {} (host lacks avx512bf16)", MODEL.name);
            return;
        };
        let nan = vec![f32::NAN; 40 * 48];
        let wide = PackedBf16Gemm::for_kernel(tier, &MODEL, &vec![0.5; 48 * 32], 48, 32, &[0.0; 32]);
        let mut c = vec![0.0; 40 * 32];
        gemm_bf16(40, &nan, 48, &wide, &mut c, 32, MinMax::NONE, None);
        assert!(c.iter().all(|v| !v.is_finite()), "NaN sums end at the clamp's lower bound, -inf");
        // k = 18: 9 pairs of 16 in the tiles; the scratch still holds NaN beyond them.
        let narrow = PackedBf16Gemm::for_kernel(tier, &MODEL, &vec![0.5; 18 * 20], 18, 20, &[1.0; 20]);
        let a = vec![1.0; 37 * 18];
        let mut c = vec![0.0; 37 * 20];
        gemm_bf16(37, &a, 18, &narrow, &mut c, 20, MinMax::NONE, None);
        assert!(c.iter().all(|v| *v == 10.0), "{:?}", &c[..4]);
    }
}
