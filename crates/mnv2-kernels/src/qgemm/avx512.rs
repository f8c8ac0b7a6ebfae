//! Quantisation of f32 rows to u8 codes with AVX-512 F/BW (no VNNI needed): 16 values per
//! step, round half to even, a saturating narrow store.

use std::arch::x86_64::*;

use crate::lanes::mask16;

/// `src` quantised to u8 codes (as i32 lanes, round half to even, saturated to 0..=255), 16
/// values at a time, handed to `store(offset, mask, codes)`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW; `store` must accept every offset below `src.len()`.
#[inline(always)]
unsafe fn quantize_chunks(src: &[f32], q: super::QParams, mut store: impl FnMut(usize, u16, __m512i)) {
    let inv = _mm512_set1_ps(1.0 / q.scale);
    let zo = _mm512_set1_epi32(q.zero);
    for (i, chunk) in src.chunks(16).enumerate() {
        let mask = mask16(chunk.len());
        let v = _mm512_maskz_loadu_ps(mask, chunk.as_ptr());
        let r =
            _mm512_max_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), zo), _mm512_setzero_si512());
        store(16 * i, mask, r);
    }
}

/// See `quantize_row`.
///
/// # Safety
/// The CPU must have AVX-512 F/BW; `dst` at least as long as `src`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
pub(crate) unsafe fn quantize_row(src: &[f32], dst: &mut [u8], q: super::QParams) {
    let dst = dst.as_mut_ptr();
    // The saturating narrow store clamps at 255.
    quantize_chunks(src, q, |at, mask, r| _mm512_mask_cvtusepi32_storeu_epi8(dst.add(at) as *mut i8, mask, r));
}
