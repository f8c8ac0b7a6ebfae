//! AVX-512 depthwise 3x3 gradients, 16 channels per tile.
//!
//! Input gradient: the tile's 9 weight vectors stay in registers while the input row is
//! walked; each input pixel sums its taps in registers and is stored once. At stride 1 the
//! interior goes 8 pixels at a time, fully unrolled with the dilation a constant; edges and
//! stride 2 (where a pixel's taps depend on its parity) go pixel by pixel with checks.
//! A missing output-gradient row is replaced by a present one with zero weights.
//!
//! Weight gradient: the tile's 9 accumulators stay in registers while the output row is
//! walked (one output-gradient load and up to 9 input loads and FMAs per pixel), and are
//! added to the accumulator in memory once per row.

use std::arch::x86_64::*;

use crate::lanes::{load16 as load, mask16};

use crate::dwconv::DwRow;

/// # Safety
/// The CPU has AVX-512 F/BW/VL/DQ; the pointers this reads and writes lie in the rows the public
/// gradient function checked, and the columns and masks passed stay within them.
#[inline(always)]
unsafe fn store<const FULL: bool>(p: *mut f32, m: u16, v: __m512) {
    if FULL {
        _mm512_storeu_ps(p, v)
    } else {
        _mm512_mask_storeu_ps(p, m, v)
    }
}

/// Loop invariants of one 16-channel tile of the input gradient.
struct InTile {
    /// Output-gradient rows by kernel row (a present row stands in for a missing one).
    rows: [*const f32; 3],
    out: *mut f32,
    c: usize,
    g: DwRow,
    w: [__m512; 9],
    mask: u16,
}

impl InTile {
    /// One input pixel with every tap checked.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ; the pointers this reads and writes lie in the rows the public
    /// gradient function checked, and the columns and masks passed stay within them.
    #[inline(always)]
    unsafe fn pixel<const FULL: bool>(&self, ix: usize) {
        let g = &self.g;
        let mut a = _mm512_setzero_ps();
        for kx in 0..3 {
            let Some(t) = (ix + g.pad_left).checked_sub(kx * g.dilation) else { continue };
            if t % g.stride != 0 || t / g.stride >= g.w_out {
                continue;
            }
            let off = t / g.stride * self.c;
            for ky in 0..3 {
                a = _mm512_fmadd_ps(load::<FULL>(self.rows[ky].add(off), self.mask), self.w[ky * 3 + kx], a);
            }
        }
        store::<FULL>(self.out.add(ix * self.c), self.mask, a);
    }

    /// XB interior pixels from `ix0` at stride 1, dilation D: every tap present.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ; the pointers this reads and writes lie in the rows the public
    /// gradient function checked, and the columns and masks passed stay within them.
    #[inline(always)]
    unsafe fn interior<const D: usize, const XB: usize, const FULL: bool>(&self, ix0: usize) {
        let mut acc = [_mm512_setzero_ps(); XB];
        // ox = ix + pad - kx * D
        let base = ix0 + self.g.pad_left - 2 * D;
        for ky in 0..3 {
            let r = self.rows[ky].add(base * self.c);
            for kx in 0..3 {
                let w = self.w[ky * 3 + kx];
                for (j, a) in acc.iter_mut().enumerate() {
                    let p = r.add((j + (2 - kx) * D) * self.c);
                    *a = _mm512_fmadd_ps(load::<FULL>(p, self.mask), w, *a);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            store::<FULL>(self.out.add((ix0 + j) * self.c), self.mask, *a);
        }
    }

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ; the pointers this reads and writes lie in the rows the public
    /// gradient function checked, and the columns and masks passed stay within them.
    #[inline(always)]
    unsafe fn run<const D: usize, const FULL: bool>(&self, mut ix: usize, hi: usize) -> usize {
        while ix + 8 <= hi {
            self.interior::<D, 8, FULL>(ix);
            ix += 8;
        }
        ix
    }

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ; the pointers this reads and writes lie in the rows the public
    /// gradient function checked, and the columns and masks passed stay within them.
    #[inline(always)]
    unsafe fn walk<const FULL: bool>(&self) {
        let g = &self.g;
        // At stride 1 every tap of ix is present for 2d <= ix + pad < w_out.
        let (lo, hi) = if g.stride == 1 && g.w_out > g.pad_left {
            let lo = (2 * g.dilation).saturating_sub(g.pad_left);
            let hi = (g.w_out - g.pad_left).min(g.w_in);
            (lo.min(hi), hi)
        } else {
            (0, 0)
        };
        for ix in 0..lo {
            self.pixel::<FULL>(ix);
        }
        let mut ix = match (g.stride, g.dilation) {
            (1, 1) => self.run::<1, FULL>(lo, hi),
            (1, 2) => self.run::<2, FULL>(lo, hi),
            (1, 4) => self.run::<4, FULL>(lo, hi),
            _ => lo,
        };
        while ix < hi {
            self.pixel::<FULL>(ix);
            ix += 1;
        }
        for ix in hi.max(lo)..g.w_in {
            self.pixel::<FULL>(ix);
        }
    }
}

/// # Safety
/// Present rows hold `g.w_out * c` values, `w` `9 * c`, `din` `g.w_in * c`; AVX-512 CPU.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) unsafe fn input_grad_row(rows: [*const f32; 3], w: *const f32, c: usize, g: DwRow, din: *mut f32) {
    let Some(present) = rows.iter().copied().find(|r| !r.is_null()) else {
        std::ptr::write_bytes(din, 0, g.w_in * c);
        return;
    };
    for ct in (0..c).step_by(16) {
        let cols = (c - ct).min(16);
        let mask = mask16(cols);
        // Loops, not closures: a closure does not inherit this function's target features.
        let mut wv = [_mm512_setzero_ps(); 9];
        let mut rp = [present.add(ct); 3];
        for ky in 0..3 {
            if !rows[ky].is_null() {
                rp[ky] = rows[ky].add(ct);
                for kx in 0..3 {
                    wv[ky * 3 + kx] = _mm512_maskz_loadu_ps(mask, w.add((ky * 3 + kx) * c + ct));
                }
            }
        }
        let t = InTile { rows: rp, out: din.add(ct), c, g, w: wv, mask };
        if cols == 16 {
            t.walk::<true>()
        } else {
            t.walk::<false>()
        }
    }
}

/// Loop invariants of one 16-channel tile of the weight gradient.
struct WTile {
    dout: *const f32,
    rows: [*const f32; 3],
    present: [bool; 3],
    c: usize,
    g: DwRow,
    mask: u16,
}

impl WTile {
    /// Output pixel `ox` into `a`; with `checked`, taps outside the input row are skipped.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ; the pointers this reads and writes lie in the rows the public
    /// gradient function checked, and the columns and masks passed stay within them.
    #[inline(always)]
    unsafe fn pixel<const FULL: bool>(&self, ox: usize, checked: bool, a: &mut [__m512; 9]) {
        let g = &self.g;
        let d = load::<FULL>(self.dout.add(ox * self.c), self.mask);
        for kx in 0..3 {
            let ix = (ox * g.stride + kx * g.dilation) as isize - g.pad_left as isize;
            if checked && (ix < 0 || ix as usize >= g.w_in) {
                continue;
            }
            let off = ix as usize * self.c;
            for ky in 0..3 {
                if self.present[ky] {
                    let v = load::<FULL>(self.rows[ky].add(off), self.mask);
                    a[ky * 3 + kx] = _mm512_fmadd_ps(d, v, a[ky * 3 + kx]);
                }
            }
        }
    }

    /// Interior pixels `lo..hi` at stride S, dilation D (constants).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ; the pointers this reads and writes lie in the rows the public
    /// gradient function checked, and the columns and masks passed stay within them.
    #[inline(always)]
    unsafe fn interior<const S: usize, const D: usize, const FULL: bool>(
        &self,
        lo: usize,
        hi: usize,
        a: &mut [__m512; 9],
    ) {
        let c = self.c;
        let pad = self.g.pad_left;
        for ox in lo..hi {
            let d = load::<FULL>(self.dout.add(ox * c), self.mask);
            let base = (ox * S - pad) * c;
            for ky in 0..3 {
                if self.present[ky] {
                    let r = self.rows[ky].add(base);
                    for kx in 0..3 {
                        let v = load::<FULL>(r.add(kx * D * c), self.mask);
                        a[ky * 3 + kx] = _mm512_fmadd_ps(d, v, a[ky * 3 + kx]);
                    }
                }
            }
        }
    }

    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/DQ; the pointers this reads and writes lie in the rows the public
    /// gradient function checked, and the columns and masks passed stay within them.
    #[inline(always)]
    unsafe fn walk<const FULL: bool>(&self, acc: *mut f32) {
        let g = &self.g;
        let (lo, hi) = g.interior();
        let mut a = [_mm512_setzero_ps(); 9];
        for ox in 0..lo {
            self.pixel::<FULL>(ox, true, &mut a);
        }
        match (g.stride, g.dilation) {
            (1, 1) => self.interior::<1, 1, FULL>(lo, hi, &mut a),
            (2, 1) => self.interior::<2, 1, FULL>(lo, hi, &mut a),
            (1, 2) => self.interior::<1, 2, FULL>(lo, hi, &mut a),
            (1, 4) => self.interior::<1, 4, FULL>(lo, hi, &mut a),
            _ => {
                for ox in lo..hi {
                    self.pixel::<FULL>(ox, false, &mut a);
                }
            }
        }
        for ox in hi.max(lo)..g.w_out {
            self.pixel::<FULL>(ox, true, &mut a);
        }
        for (k, v) in a.iter().enumerate() {
            if self.present[k / 3] {
                let p = acc.add(k * self.c);
                store::<FULL>(p, self.mask, _mm512_add_ps(load::<FULL>(p, self.mask), *v));
            }
        }
    }
}

/// # Safety
/// `dout` holds `g.w_out * c` values, present rows `g.w_in * c`, `acc` `9 * c`; AVX-512 CPU.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(crate) unsafe fn weight_grad_row(dout: *const f32, rows: [*const f32; 3], c: usize, g: DwRow, acc: *mut f32) {
    let present = rows.map(|r| !r.is_null());
    if !present.iter().any(|&p| p) {
        return;
    }
    for ct in (0..c).step_by(16) {
        let cols = (c - ct).min(16);
        let t = WTile {
            dout: dout.add(ct),
            rows: rows.map(|r| if r.is_null() { r } else { r.add(ct) }),
            present,
            c,
            g,
            mask: mask16(cols),
        };
        if cols == 16 {
            t.walk::<true>(acc.add(ct))
        } else {
            t.walk::<false>(acc.add(ct))
        }
    }
}
