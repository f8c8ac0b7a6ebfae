//! AVX-512 VNNI int8 GEMM: MR rows x 32 columns (28 zmm accumulators at MR = 14) or MR x 16
//! (24 at MR = 24). Per 4 values of k: one or two 64-byte panel loads, MR broadcasts of 4
//! activation bytes, and `vpdpbusd` per accumulator (64 multiply-adds each). The epilogue
//! runs on registers. For u8 outputs it works in the output's quantised units (scale, bias,
//! zero points and clamp bounds folded per call, see `mod.rs`): convert, one FMA, clamp,
//! residual (one FMA), round, saturate, masked store; without a residual the clamp bounds
//! are cut to the codes 0..=255 and the rounded value needs no clamp of its own; a row of a
//! 32-column tile then packs both vectors with saturation (`vpackssdw`, `vpackuswb`:
//! `lanes::saturate_bytes`; one `vpermd` back to column order) into one 32-byte store. For f32 outputs it
//! computes real values.
//!
//! A panel with padding columns (the last one of a layer whose output count is not a multiple
//! of the panel width) runs a narrower tile over the same packing: 24 columns (three ymm
//! `vpdpbusd` per row, 9 rows), 16 (one zmm) or 8 (one ymm). On Zen 4 a 512-bit instruction
//! takes both 256-bit pipes, so a padded lane costs as much as a real one; elsewhere (Zen 5,
//! Intel) 24 columns run two rows at a time in three zmm ([`tile_pairs`];
//! [`crate::isa::split_512`]). The sums are exact integers either way and the epilogue is the
//! same, so the bytes are the same.

use std::arch::x86_64::*;

use crate::lanes::{
    by_rows, each_row, halves, mask16, pair_rows, panel_tile, rotate_cols, saturate_bytes, tiles, unpair, upper_half,
    MR32, PAIRS24,
};

use super::{Args, PackedQGemm};

/// Loop invariants of one panel.
pub(super) struct Panel {
    pub(super) groups: usize,
    pub(super) lda: usize,
    /// Packed columns (`nr`): a group of 4 k values spans `4 * nr` bytes.
    pub(super) nr: usize,
    pub(super) b: *const i8,
    /// Per column vectors (one or two of each).
    pub(super) zcs: [__m512i; 2],
    pub(super) mul: [__m512; 2],
    pub(super) bias: [__m512; 2],
    pub(super) mask: [u16; 2],
    pub(super) lo: __m512,
    pub(super) hi: __m512,
    pub(super) rz: __m512i,
    pub(super) rs: __m512,
    /// u8 outputs, in quantised units: `x = acc * qmul + qbias`, clamped to `qlo..qhi`, plus
    /// `r * qrs`, rounded.
    pub(super) qmul: [__m512; 2],
    pub(super) qbias: [__m512; 2],
    pub(super) qlo: __m512,
    pub(super) qhi: __m512,
    pub(super) qrs: __m512,
    /// `qlo..qhi` within the codes `0..=255` (outputs without a residual).
    pub(super) code_lo: __m512,
    pub(super) code_hi: __m512,
    /// u8 outputs of a 32-column tile take [`Panel::pack32`]: no value of
    /// `acc * qmul + qbias` (plus the residual's term) can leave the i32 range, whatever the
    /// sums, and there is no residual or no activation (whose clamp comes before it).
    pub(super) packs: bool,
    /// The code bounds, rounded, as bytes (for [`Panel::pack32`]), unless they are 0 and 255.
    pub(super) byte_bounds: Option<(__m512i, __m512i)>,
}

impl Panel {
    /// The panel's invariants: its columns' folded epilogue constants and its packed weights.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ; `pi` is a panel of `w`, `args` checked by `qgemm`.
    #[inline(always)]
    pub(super) unsafe fn new(args: &Args, w: &PackedQGemm, pi: usize) -> Panel {
        let (k, n, nr) = (w.k, w.n, w.nr);
        let n0 = pi * nr;
        let cols = nr.min(n - n0);
        let vec = |v: usize| n0 + 16 * v.min(nr / 16 - 1);
        let mut zcs = [_mm512_setzero_si512(); 2];
        let mut mul = [_mm512_setzero_ps(); 2];
        let mut bias = [_mm512_setzero_ps(); 2];
        let mut qmul = [_mm512_setzero_ps(); 2];
        let mut qbias = [_mm512_setzero_ps(); 2];
        let f = super::fold_out(args);
        for v in 0..2 {
            zcs[v] = _mm512_loadu_si512(w.zcs.as_ptr().add(vec(v)) as *const _);
            mul[v] = _mm512_loadu_ps(w.mul.as_ptr().add(vec(v)));
            bias[v] = _mm512_loadu_ps(w.bias.as_ptr().add(vec(v)));
            // The same operations as `fold_column`, sixteen columns at a time.
            qmul[v] = _mm512_mul_ps(mul[v], _mm512_set1_ps(f.inv));
            let t = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(zcs[v]), mul[v], bias[v]);
            qbias[v] = _mm512_add_ps(
                _mm512_fmadd_ps(t, _mm512_set1_ps(f.inv), _mm512_set1_ps(f.zo)),
                _mm512_set1_ps(f.rshift),
            );
        }
        Panel {
            groups: k / 4,
            lda: args.lda,
            nr,
            b: w.data.as_ptr().add(pi * w.packed_groups() * 4 * nr),
            zcs,
            mul,
            bias,
            mask: [mask16(cols), mask16(cols.saturating_sub(16))],
            lo: _mm512_set1_ps(args.act.min),
            hi: _mm512_set1_ps(args.act.max),
            rz: _mm512_set1_epi32(args.res_q.zero),
            rs: _mm512_set1_ps(args.res_q.scale),
            qmul,
            qbias,
            qlo: _mm512_set1_ps(f.lo),
            qhi: _mm512_set1_ps(f.hi),
            qrs: _mm512_set1_ps(f.rs),
            code_lo: _mm512_set1_ps(f.lo.max(0.0)),
            code_hi: _mm512_set1_ps(f.hi.min(255.0)),
            packs: {
                // |sum| <= k * 255 * 128; the products stay far inside f32's integers.
                let big =
                    |v: [__m512; 2]| v.iter().map(|x| _mm512_reduce_max_ps(_mm512_abs_ps(*x))).fold(0f32, f32::max);
                let bound = (k as f32 * 255.0 * 128.0) * big(qmul) + big(qbias) + 255.0 * f.rs.abs();
                let no_act = args.act.min == f32::NEG_INFINITY && args.act.max == f32::INFINITY;
                bound < 1e9 && (args.r.is_null() || no_act)
            },
            byte_bounds: {
                let (lo, hi) = (f.lo.max(0.0).round_ties_even(), f.hi.min(255.0).round_ties_even());
                (lo > 0.0 || hi < 255.0).then(|| (_mm512_set1_epi8(lo as u8 as i8), _mm512_set1_epi8(hi as u8 as i8)))
            },
        }
    }

    /// Epilogue of one accumulator vector (columns `v * 16..`): the real values.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL and VNNI; `args` and the panel describe buffers `qgemm` checked, and
    /// the rows and columns passed lie within them (column tails masked).
    #[inline(always)]
    pub(super) unsafe fn real(&self, acc: __m512i, v: usize, args: &Args, row: usize, col: usize) -> __m512 {
        let mut x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, self.zcs[v])), self.mul[v], self.bias[v]);
        x = _mm512_min_ps(_mm512_max_ps(x, self.lo), self.hi);
        let mask = self.mask[v];
        if !args.r.is_null() {
            let r = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, args.r.add(row * args.ldr + col) as *const i8));
            x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(r, self.rz)), self.rs, x);
        }
        x
    }

    /// Epilogue of one row of a 32-column tile with u8 outputs: both vectors (plus the
    /// residual, if any) rounded to i32, packed with saturation to 0..=255 (rounding
    /// is monotonic, so this is the code of the value clamped first, as [`Panel::finish`]
    /// computes it), the bytes put back in column order, one store.
    ///
    /// # Safety
    /// As [`Panel::finish`]; `self.packs`.
    #[inline(always)]
    pub(super) unsafe fn pack32(&self, acc: [__m512i; 2], args: &Args, row: usize, col: usize) {
        // A loop, not `array::from_fn`: a closure has no target features, and once this
        // epilogue had two callers LLVM stopped inlining it, leaving every intrinsic a call
        // (the int8 network 5x slower).
        let mut q = [_mm512_setzero_si512(); 2];
        for (v, q) in q.iter_mut().enumerate() {
            let mut x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[v]), self.qmul[v], self.qbias[v]);
            if !args.r.is_null() {
                let r = args.r.add(row * args.ldr + col + 16 * v) as *const i8;
                let r = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(self.mask[v], r));
                x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r), self.qrs, x);
            }
            *q = _mm512_cvtps_epi32(x);
        }
        // Lane l holds columns 4l..4l+4 of each vector: dword 4l (first vector), 4l + 1.
        let z = _mm512_setzero_si512();
        let b = saturate_bytes([q[0], q[1], z, z]);
        let mut b = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0), b);
        if let Some((lo, hi)) = self.byte_bounds {
            b = _mm512_min_epu8(_mm512_max_epu8(b, lo), hi);
        }
        let mask = self.mask[0] as u32 | (self.mask[1] as u32) << 16;
        _mm256_mask_storeu_epi8(args.c.add(row * args.ldc + col) as *mut i8, mask, _mm512_castsi512_si256(b));
    }

    /// Epilogue of one accumulator vector, stored at `c` (u8 or f32).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL and VNNI; `args` and the panel describe buffers `qgemm` checked, and
    /// the rows and columns passed lie within them (column tails masked).
    #[inline(always)]
    pub(super) unsafe fn finish(&self, acc: __m512i, v: usize, args: &Args, row: usize, col: usize) {
        let mask = self.mask[v];
        if args.f32_out {
            let x = self.real(acc, v, args, row, col);
            _mm512_mask_storeu_ps((args.c as *mut f32).add(row * args.ldc + col), mask, x);
        } else if args.r.is_null() {
            // Clamped to the codes first, the rounded value needs no further clamp: rounding
            // is monotonic, so this is the same code as clamping after it.
            let x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), self.qmul[v], self.qbias[v]);
            let x = _mm512_min_ps(_mm512_max_ps(x, self.code_lo), self.code_hi);
            let c = args.c.add(row * args.ldc + col);
            _mm512_mask_cvtusepi32_storeu_epi8(c as *mut i8, mask, _mm512_cvtps_epi32(x));
        } else {
            let mut x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), self.qmul[v], self.qbias[v]);
            x = _mm512_min_ps(_mm512_max_ps(x, self.qlo), self.qhi);
            if !args.r.is_null() {
                let r = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, args.r.add(row * args.ldr + col) as *const i8));
                x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r), self.qrs, x);
            }
            // Capped first: from 2^31 on the conversion gives i32::MIN.
            let x = _mm512_min_ps(x, _mm512_set1_ps(1e9));
            let q = _mm512_max_epi32(_mm512_cvtps_epi32(x), _mm512_setzero_si512());
            _mm512_mask_cvtusepi32_storeu_epi8(args.c.add(row * args.ldc + col) as *mut i8, mask, q);
        }
    }
}

/// One tile of MR rows x W columns (32, 24, 16 or 8) of a panel: 32 and 16 columns in zmm
/// accumulators, 24 and 8 in ymm ones (three and one per row: Zen 4 runs a ymm `vpdpbusd` at
/// half the cost of a zmm one; one zmm and one ymm would make LLVM widen each A broadcast
/// with a shuffle). The ymm sums are joined (and widened with zeros) for the 16-lane
/// epilogue, whose masks keep it to the real columns.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and VNNI; `args` and the panel describe buffers `qgemm` checked, and
/// the rows and columns passed lie within them (column tails masked), with `W` no wider than
/// the panel.
#[inline(always)]
unsafe fn tile<const MR: usize, const W: usize>(p: &Panel, args: &Args, i0: usize, n0: usize) {
    // Flat accumulator arrays (not [[_; NV]; MR]): LLVM keeps these in registers; the nested
    // array was spilled to the stack and its broadcasts repeated per vector. The arrays a
    // width does not use are never touched, and vanish.
    let mut acc0 = [_mm512_setzero_si512(); MR];
    let mut acc1 = [_mm512_setzero_si512(); MR];
    let mut y0 = [_mm256_setzero_si256(); MR];
    let mut y1 = [_mm256_setzero_si256(); MR];
    let mut y2 = [_mm256_setzero_si256(); MR];
    let mut bp = p.b;
    let mut ap = args.a.add(i0 * p.lda);
    for _ in 0..p.groups {
        if W.is_multiple_of(16) {
            let b0 = _mm512_load_si512(bp as *const _);
            let b1 = if W == 32 { _mm512_load_si512(bp.add(64) as *const _) } else { b0 };
            for i in 0..MR {
                let a = _mm512_set1_epi32((ap.add(i * p.lda) as *const i32).read_unaligned());
                acc0[i] = _mm512_dpbusd_epi32(acc0[i], a, b0);
                if W == 32 {
                    acc1[i] = _mm512_dpbusd_epi32(acc1[i], a, b1);
                }
            }
        } else {
            let b0 = _mm256_load_si256(bp as *const _);
            let b1 = if W == 24 { _mm256_load_si256(bp.add(32) as *const _) } else { b0 };
            let b2 = if W == 24 { _mm256_load_si256(bp.add(64) as *const _) } else { b0 };
            for i in 0..MR {
                let a = _mm256_set1_epi32((ap.add(i * p.lda) as *const i32).read_unaligned());
                y0[i] = _mm256_dpbusd_epi32(y0[i], a, b0);
                if W == 24 {
                    y1[i] = _mm256_dpbusd_epi32(y1[i], a, b1);
                    y2[i] = _mm256_dpbusd_epi32(y2[i], a, b2);
                }
            }
        }
        bp = bp.add(p.nr * 4);
        ap = ap.add(4);
    }
    for i in 0..MR {
        if W == 8 {
            acc0[i] = _mm512_zextsi256_si512(y0[i]);
        }
        if W == 24 {
            acc0[i] = _mm512_inserti32x8::<1>(_mm512_castsi256_si512(y0[i]), y1[i]);
            acc1[i] = _mm512_zextsi256_si512(y2[i]);
        }
    }
    let nv = W.div_ceil(16);
    if args.pool {
        // Row after row into the sums, in the scalar twin's order.
        for v in 0..nv {
            let acc = if v == 0 { &acc0 } else { &acc1 };
            let sums = (args.c as *mut f32).add(n0 + 16 * v);
            let mut s = _mm512_maskz_loadu_ps(p.mask[v], sums);
            for (i, x) in acc.iter().enumerate() {
                s = _mm512_add_ps(s, p.real(*x, v, args, i0 + i, n0 + 16 * v));
            }
            _mm512_mask_storeu_ps(sums, p.mask[v], s);
        }
        return;
    }
    if W == 32 && p.packs && !args.f32_out {
        each_row!(MR, |i| {
            p.pack32([acc0[i], acc1[i]], args, i0 + i, n0);
        });
        return;
    }
    each_row!(MR, |i| {
        p.finish(acc0[i], 0, args, i0 + i, n0);
        if nv == 2 {
            p.finish(acc1[i], 1, args, i0 + i, n0 + 16);
        }
    });
}

/// One tile of up to `2 * P` rows of a 32-column panel with 17..=24 real columns, two rows
/// at a time ([`PAIRS24`]): 1.5 `vpdpbusd` per row and 4 k where [`tile`] runs 2. The sums
/// are put back in rows ([`unpair`]) for the 32-column tile's epilogue, so the bytes are the
/// same. With an odd row count the last row is its own partner (and stored once).
///
/// # Safety
/// As [`tile`], for `rows` rows; not for pooled outputs.
#[inline(always)]
unsafe fn tile_pairs<const P: usize>(p: &Panel, args: &Args, rows: usize, i0: usize, n0: usize) {
    let mut acc0 = [_mm512_setzero_si512(); P];
    let mut acc1 = [_mm512_setzero_si512(); P];
    let mut acc2 = [_mm512_setzero_si512(); P];
    let upper = upper_half();
    let word = |x: __m512i| _mm512_castsi512_ps(x);
    let mut bp = p.b;
    let mut ap = args.a.add(i0 * p.lda);
    for _ in 0..p.groups {
        // Quads of columns 0..16 and 8..24 (the packing's zeros beyond the real ones).
        let b0 = _mm512_load_si512(bp as *const _);
        let b2 = _mm512_loadu_si512(bp.add(32) as *const _);
        let b1 = _mm512_castps_si512(rotate_cols(word(b0), word(b2)));
        for j in 0..P {
            let (i0, i1) = pair_rows(j, rows);
            let x0 = _mm512_set1_epi32((ap.add(i0 * p.lda) as *const i32).read_unaligned());
            let x1 = _mm512_set1_epi32((ap.add(i1 * p.lda) as *const i32).read_unaligned());
            acc0[j] = _mm512_dpbusd_epi32(acc0[j], x0, b0);
            acc1[j] = _mm512_dpbusd_epi32(acc1[j], _mm512_castps_si512(halves(word(x0), word(x1), upper)), b1);
            acc2[j] = _mm512_dpbusd_epi32(acc2[j], x1, b2);
        }
        bp = bp.add(p.nr * 4);
        ap = ap.add(4);
    }
    for j in 0..P {
        for (h, acc) in unpair([acc0[j], acc1[j], acc2[j]]).into_iter().enumerate() {
            let i = 2 * j + h;
            if i >= rows {
                break;
            }
            if p.packs && !args.f32_out {
                p.pack32(acc, args, i0 + i, n0);
            } else {
                p.finish(acc[0], 0, args, i0 + i, n0);
                p.finish(acc[1], 1, args, i0 + i, n0 + 16);
            }
        }
    }
}

/// # Safety
/// `args` must describe valid buffers for `w` (checked by `qgemm`); the CPU must have
/// AVX-512 F/BW/VL and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
pub(crate) unsafe fn qgemm(args: &Args, w: &PackedQGemm) {
    let (n, nr) = (w.n, w.nr);
    for pi in args.panels.clone() {
        let n0 = pi * nr;
        let cols = nr.min(n - n0);
        let p = Panel::new(args, w, pi);
        // A panel with padding columns (the N = 24 projections, the last panel of the
        // N = 144 expansions) runs the narrowest tile that covers its real ones.
        // Pooled sums (the last conv, never 24 columns) keep to the row tiles.
        let (width, mr) = match panel_tile(cols, nr, w.split) {
            (PAIRS24, _) if args.pool => (32, MR32),
            t => t,
        };
        let t = tiles(args.m, mr);
        match width {
            32 => panel::<32>(&p, args, t, n0),
            PAIRS24 => panel::<PAIRS24>(&p, args, t, n0),
            24 => panel::<24>(&p, args, t, n0),
            16 => panel::<16>(&p, args, t, n0),
            _ => panel::<8>(&p, args, t, n0),
        }
    }
}

/// The row tiles of one panel, W columns wide ([`tile`], or [`tile_pairs`] for `PAIRS24`):
/// `count` tiles of `base` rows, the first `extra` one row more ([`tiles`]).
///
/// A function of its own per width, not inlined into [`qgemm`]: with all 79 tile copies (every
/// width, every row count) inlined, `qgemm` was one 420 KB function on which LLVM spent most
/// of this crate's build, in every `cargo test` and release build (the crate alone, test
/// profile, 2 cores: 420 s, now 129 s). A call per panel costs nothing next to its tiles, whose
/// code is as before.
///
/// # Safety
/// As [`tile`]: `p` is a panel of `qgemm`'s `args`, and `(count, base, extra)` the row tiles
/// ([`tiles`]) of `args.m` for this width's MR.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")]
#[inline(never)]
unsafe fn panel<const W: usize>(p: &Panel, args: &Args, (count, base, extra): (usize, usize, usize), n0: usize) {
    let mut i = 0;
    for t in 0..count {
        let rows = base + usize::from(t < extra);
        match W {
            32 => by_rows!(32, rows, |R| tile::<R, 32>(p, args, i, n0)),
            PAIRS24 => by_rows!(pairs, rows, |P| tile_pairs::<P>(p, args, rows, i, n0)),
            24 => by_rows!(24, rows, |R| tile::<R, 24>(p, args, i, n0)),
            16 => by_rows!(16, rows, |R| tile::<R, 16>(p, args, i, n0)),
            _ => by_rows!(8, rows, |R| tile::<R, 8>(p, args, i, n0)),
        }
        i += rows;
    }
}
