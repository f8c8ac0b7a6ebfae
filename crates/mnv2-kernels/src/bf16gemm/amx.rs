//! AMX-BF16 GEMM kernel: the bf16 pointwise product on the tile unit of Intel's Xeons since
//! Sapphire Rapids. One `tdpbf16ps` multiplies a 16 x 16 tile of A pairs (16 rows, 32
//! input channels) by a 16 x 16 tile of weight pairs (16 pairs of k, 16 columns) into a
//! 16 x 16 f32 tile: 8192 multiply-adds, where `vdpbf16ps` does 32.
//!
//! Blocking: 32 rows x one packed panel of 32 columns per block, in four C tiles (`tmm0..3`,
//! C tile `2r + h` holds rows `16r..` and columns `16h..`), two A tiles (`tmm4`, `tmm5`) and
//! two B tiles (`tmm6`, `tmm7`); every tile is 16 rows of 64 bytes, configured once per call.
//! A block of <= 16 rows or a panel of <= 16 real columns runs only the tiles it needs. The C
//! tiles start from the bias (a tile load of stride 0: every row the same 16 values; the SDM
//! defines it, a TILELOADD whose SIB omits the index register loads with stride zero), as the
//! AVX-512 kernels' accumulators do.
//!
//! Every tile is whole, so no tile reads past a buffer: the packing pads each panel's pairs
//! with zero pairs to a multiple of 16 ([`super::Bf16GemmKernel::pair_block`]), and A is first
//! rounded (f32 rows) or copied (rows already rounded) into a per-thread scratch whose rows
//! hold `packed_pairs` words, the padding zero, with zero rows up to a multiple of 16. The C
//! tiles are stored to a 32 x 32 f32 block, from which the AVX-512 BF16 kernel's epilogue
//! ([`Dst`]: clamp, residual, f32 / bf16 / pixel-pair stores) writes the block's rows.
//!
//! The tile instructions are inline assembly (`crate::amx::Amx`) behind the [`Tiles`] trait. The tests
//! run the same kernel on a model of the tile unit written from the instruction set reference
//! (`crate::amx::model::Model`), so the tiling, padding and epilogue are tested on any CPU with AVX-512
//! BF16; the instructions themselves only where the CPU has AMX. No machine of this project
//! has had AMX yet, so the kernel is opt-in (`MNV2_ISA=amx`, [`crate::isa::amx_enabled`]).

use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::aligned::grown_aligned;
use crate::aligned::AlignedVec;
use crate::amx::{products, unit, Block, Tiles, MR, NR, ROWS, ROW_BYTES};
use crate::isa::Needs;

use super::avx512bf16::{round_rows, Dst, PairBf16, Panel};
use super::{ASrc, Args, Bf16, Bf16GemmKernel, Out, PackedBf16Gemm};

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

/// # Safety
/// `args` must describe valid buffers for `w` (checked by `gemm_bf16`); the CPU must have
/// AVX-512 F/BW/VL/DQ, BF16 and AMX-TILE/AMX-BF16, and the process the tile state.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
pub(crate) unsafe fn gemm(args: &Args, w: &PackedBf16Gemm, src: ASrc, out: Out) {
    gemm_on(&mut unit(), args, w, src, out)
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
    // Valid until this thread next grows the area; nothing else uses it.
    let a16 = grown_aligned(&A16, rows * kp);
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
    let mut blk = Block([0.0; MR * NR]);
    for pi in args.panels.clone() {
        let n0 = pi * NR;
        let cols = NR.min(w.n - n0);
        let p = Panel::new(args, w, pi, kp);
        let bias = p.bias as *const u8;
        let init = [bias, bias.add(ROW_BYTES)];
        let (b, out) = ((p.b as *const u8, NR * 4), (blk.0.as_mut_ptr() as *mut u8, NR * 4));
        let mut i0 = 0;
        while i0 < args.m {
            let rows = MR.min(args.m - i0);
            let a = (a16.add(i0 * kp) as *const u8, kp * 4);
            products::<T, false>(t, (rows, cols), init, a, b, kp / ROWS, out);
            epilogue::<D>(&p, args, &blk, i0, rows, n0, cols > 16);
            i0 += MR;
        }
    }
}

/// Rows `i0..i0 + rows` of C (of `D`) from their sums in `block`: the AVX-512 BF16 kernel's
/// epilogue (clamp, residual, store), for columns `n0..n0 + 16` and, if `both`, the next 16.
///
/// # Safety
/// As [`panels`]; `rows` is even for pixel pairs.
#[inline(always)]
unsafe fn epilogue<D: Dst>(p: &Panel, args: &Args, block: &Block<f32>, i0: usize, rows: usize, n0: usize, both: bool) {
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
    use crate::amx::model::Model;
    use crate::bf16gemm::{gemm_bf16, PackedBf16Gemm};
    use crate::isa::Tier;
    use crate::MinMax;

    /// # Safety
    /// As [`gemm`], but the CPU needs only AVX-512 BF16 (the epilogue's instructions).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
    pub(crate) unsafe fn gemm_model(args: &Args, w: &PackedBf16Gemm, src: ASrc, out: Out) {
        gemm_on(&mut Model::new(), args, w, src, out)
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
