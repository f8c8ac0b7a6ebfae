//! AMX-INT8 GEMM kernel: the int8 pointwise product on the tile unit ([`crate::amx`]). One
//! `tdpbusd` multiplies a 16 x 64 tile of u8 activations (16 rows, 64 input channels) by a
//! 16 x 64-byte tile of s8 weight quads (16 groups of 4 k, 16 columns) into a 16 x 16 i32
//! tile: 16384 multiply-adds, where `vpdpbusd` does 64.
//!
//! The same blocking as the bf16 AMX kernel (`bf16gemm::amx`): 32 rows x one 32-column panel
//! in four C tiles (`tmm0..3`), two A tiles and two B tiles, every tile 16 rows of 64 bytes;
//! a block of <= 16 rows or a panel of <= 16 real columns runs only the tiles it needs. The
//! packing pads each panel's groups of 4 k with zero groups to a multiple of 16
//! ([`super::QGemmKernel::group_block`]); A's rows are copied into a per-thread scratch of
//! `packed_groups * 4` bytes per row, with rows up to a multiple of 16, so no tile reads past
//! a buffer (what the padding holds adds nothing: it meets zero weights, or rows never
//! stored). The C tiles start at zero and go to a 32 x 32 i32 block,
//! from which the VNNI kernel's epilogue (its `Panel`: requantisation, clamp, residual, u8 /
//! f32 / pooled outputs) writes the block's rows in order. The sums are exact integers, as
//! `vpdpbusd`'s, and the epilogue is the same code, so the bytes are the same as every other
//! int8 kernel's.
//!
//! Not yet run on an AMX CPU: opt-in (`MNV2_ISA=amx`, [`crate::isa::amx_int8_enabled`]). The
//! tests run it on the model of the tile unit (`crate::amx::model::Model`) everywhere.

use std::arch::x86_64::*;
use std::cell::RefCell;

use crate::aligned::grown_aligned;
use crate::aligned::AlignedVec;
use crate::amx::{products, unit, Block, Tiles, MR, NR, ROWS, ROW_BYTES};
use crate::isa::Needs;

use super::avx512vnni::Panel;
use super::{Args, PackedQGemm, QGemmKernel};

/// The registry entry.
pub(crate) const KERNEL: QGemmKernel = QGemmKernel {
    name: "qgemm_u8s8s32_requant_32x32_amx",
    needs: Needs::AmxInt8,
    mr: MR,
    nr: NR,
    min_n: 0,
    group_block: ROWS,
    k_pairs: false,
    run: qgemm,
};

thread_local! {
    /// A's rows, `packed_groups * 4` bytes each, rows up to a multiple of 16; grows to the
    /// largest call.
    static A8: RefCell<AlignedVec<u8>> = RefCell::new(AlignedVec::zeros(0));
}

/// Sixteen zero words: the rows of a C tile before the first product (a load of stride 0).
static ZEROS: [i32; 16] = [0; 16];

/// # Safety
/// `args` must describe valid buffers for `w` (checked by `qgemm`); the CPU must have
/// AVX-512 F/BW/VL/DQ, VNNI and AMX-TILE/AMX-INT8, and the process the tile state.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
pub(crate) unsafe fn qgemm(args: &Args, w: &PackedQGemm) {
    qgemm_on(&mut unit(), args, w)
}

/// The kernel on tile unit `t`.
///
/// # Safety
/// As [`qgemm`], with `t` runnable (the CPU's tiles, or a model of them).
#[inline(always)]
unsafe fn qgemm_on<T: Tiles>(t: &mut T, args: &Args, w: &PackedQGemm) {
    if args.m == 0 || args.panels.is_empty() {
        return;
    }
    let kb = w.packed_groups() * 4;
    let rows = args.m.next_multiple_of(ROWS);
    // Valid until this thread next grows the area; nothing else uses it.
    let a8 = grown_aligned(&A8, rows * kb);
    // The padding keeps what it holds: its codes meet the weights' zero groups (exact
    // integers, so they add 0), and the rows after `m` are never stored.
    for i in 0..args.m {
        std::ptr::copy_nonoverlapping(args.a.add(i * args.lda), a8.add(i * kb), w.k);
    }
    t.configure();
    let mut blk = Block([0; MR * NR]);
    let zeros = ZEROS.as_ptr() as *const u8;
    for pi in args.panels.clone() {
        let n0 = pi * NR;
        let cols = NR.min(w.n - n0);
        let p = Panel::new(args, w, pi);
        let (b, out) = ((p.b as *const u8, NR * 4), (blk.0.as_mut_ptr() as *mut u8, NR * 4));
        let mut i0 = 0;
        while i0 < args.m {
            let rows = MR.min(args.m - i0);
            let (a, steps) = ((a8.add(i0 * kb) as *const u8, kb), kb / ROW_BYTES);
            products::<T, true>(t, (rows, cols), [zeros; 2], a, b, steps, out);
            epilogue(&p, args, &blk, i0, rows, n0, cols > 16);
            i0 += MR;
        }
    }
    t.release();
}

/// Rows `i0..i0 + rows` from their sums in `block`, through the VNNI kernel's epilogue, as its
/// tiles run it: pooled sums row after row, u8 rows of a 32-column panel packed where the
/// panel allows ([`Panel::pack32`]), else 16 columns at a time; columns `n0..n0 + 16` and, if
/// `both`, the next 16.
///
/// # Safety
/// As [`qgemm_on`].
#[inline(always)]
unsafe fn epilogue(p: &Panel, args: &Args, block: &Block<i32>, i0: usize, rows: usize, n0: usize, both: bool) {
    let acc = |i: usize, v: usize| _mm512_load_si512(block.0.as_ptr().add(i * NR + 16 * v) as *const _);
    let nv = if both { 2 } else { 1 };
    if args.pool {
        for v in 0..nv {
            let sums = (args.c as *mut f32).add(n0 + 16 * v);
            let mut s = _mm512_maskz_loadu_ps(p.mask[v], sums);
            for i in 0..rows {
                s = _mm512_add_ps(s, p.real(acc(i, v), v, args, i0 + i, n0 + 16 * v));
            }
            _mm512_mask_storeu_ps(sums, p.mask[v], s);
        }
        return;
    }
    for i in 0..rows {
        if p.packs && !args.f32_out {
            let second = if both { acc(i, 1) } else { _mm512_setzero_si512() };
            p.pack32([acc(i, 0), second], args, i0 + i, n0);
        } else {
            p.finish(acc(i, 0), 0, args, i0 + i, n0);
            if both {
                p.finish(acc(i, 1), 1, args, i0 + i, n0 + 16);
            }
        }
    }
}

/// The kernel on a model of the tile unit: the registry entry the tests add to run the AMX
/// kernel's tiling, padding and epilogue on any CPU with AVX-512 VNNI.
#[cfg(test)]
pub(super) static MODEL: QGemmKernel = QGemmKernel {
    name: "qgemm_u8s8s32_requant_32x32_amx_on_a_tile_model",
    needs: Needs::Avx512Vnni,
    mr: MR,
    nr: NR,
    min_n: 0,
    group_block: ROWS,
    k_pairs: false,
    run: tests::qgemm_model,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amx::model::Model;
    use crate::isa::Tier;
    use crate::qgemm::{qgemm as qgemm_api, QOut, QParams, KERNELS};
    use crate::MinMax;

    /// # Safety
    /// As [`qgemm`], but the CPU needs only AVX-512 VNNI (the epilogue's instructions).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
    pub(super) unsafe fn qgemm_model(args: &Args, w: &PackedQGemm) {
        qgemm_on(&mut Model::new(), args, w)
    }

    /// The A scratch is reused between calls and its padding is not cleared: after a call of
    /// a wider k and more rows left codes 255 there, the codes beyond `k` (which meet the
    /// weights' zero groups) and the rows beyond `m` (whose sums are never stored) must not
    /// change a byte.
    #[test]
    fn a_narrow_call_after_a_wide_one_gives_the_twins_bytes() {
        let Some(tier) = Tier::host().into_iter().find(|t| t.vnni().is_some()) else {
            println!("SKIPPED {} (host lacks avx512vnni)", MODEL.name);
            return;
        };
        let input = QParams { scale: 0.02, zero: 3 };
        let out = QParams { scale: 0.05, zero: 7 };
        let pack = |kern: &'static QGemmKernel, k: usize, n: usize| {
            let q: Vec<i8> = (0..k * n).map(|i| (i % 251) as i8).collect();
            PackedQGemm::from_quantized(kern, tier, &q, &vec![0.01; n], k, n, &vec![0.1; n], input)
        };
        let run = |p: &PackedQGemm, m: usize, a: &[u8]| {
            let mut c = vec![0u8; m * p.n];
            qgemm_api(m, a, p.k, p, QOut::U8 { c: &mut c, ldc: p.n, q: out }, MinMax::RELU6, None);
            c
        };
        run(&pack(&MODEL, 128, 40), 48, &vec![255; 48 * 128]);
        let a: Vec<u8> = (0..37 * 20).map(|i| (i * 7 % 256) as u8).collect();
        let twin = KERNELS.iter().find(|k| k.needs == Needs::Scalar).expect("the twin");
        assert_eq!(run(&pack(&MODEL, 20, 40), 37, &a), run(&pack(twin, 20, 40), 37, &a));
    }
}
