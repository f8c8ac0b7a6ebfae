//! Copies to memory that will not be read again soon, bypassing the caches.
//!
//! The training step writes tensors far larger than the last-level cache (an expanded tensor
//! of a batch is tens of megabytes) and reads them back only in a later layer or in the
//! backward pass. A normal store first reads the destination line into the cache (write
//! allocate), so writing such a tensor costs two transfers; a non-temporal store costs one.
//! The producers compute a chunk into a small cached buffer (where BatchNorm statistics are
//! taken), then hand it to [`stream_copy`].
//!
//! Kernel: `copy_f32_stream_avx512` (aligned 64-byte non-temporal stores, a store fence at the
//! end so the data is visible to any thread that synchronises with this one afterwards); the
//! portable twin is a plain copy.

use crate::isa::{Isa, Tier};

/// `dst.copy_from_slice(src)`, with non-temporal stores on AVX-512.
pub fn stream_copy(tier: Tier, src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "stream_copy lengths");
    match tier {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: equal lengths checked above; the token proves AVX-512.
        Tier::Avx512(_) => unsafe { avx512(src, dst) },
        _ => dst.copy_from_slice(src),
    }
}

/// Name of the kernel `isa` runs.
pub fn kernel_name(isa: Isa) -> &'static str {
    match isa {
        Isa::Avx512 => "copy_f32_stream_avx512",
        _ => "copy_f32_plain",
    }
}

/// # Safety
/// `src` and `dst` have the same length; the CPU has AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn avx512(src: &[f32], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    // Elements before the first 64-byte boundary of dst.
    let head = (dst.as_ptr().align_offset(64)).min(n);
    dst[..head].copy_from_slice(&src[..head]);
    let body = (n - head) / 16 * 16;
    let (s, d) = (src.as_ptr().add(head), dst.as_mut_ptr().add(head));
    let mut i = 0;
    while i < body {
        _mm512_stream_ps(d.add(i), _mm512_loadu_ps(s.add(i)));
        i += 16;
    }
    dst[head + body..].copy_from_slice(&src[head + body..]);
    _mm_sfence();
}

/// Asks for `data` to be brought into the caches (L2 and up) ahead of its use; a hint with no
/// effect on results. Lets a row-by-row pass fetch the next row while it computes on this one.
pub fn prefetch(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        for line in data.chunks(16) {
            // SAFETY: a prefetch of an address inside a live slice; it reads nothing.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr() as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_length_and_offset_on_every_isa() {
        let src: Vec<f32> = (0..300).map(|i| i as f32 * 0.5 - 7.0).collect();
        for isa in Tier::host() {
            for off in 0..17 {
                for len in [0, 1, 15, 16, 17, 31, 33, 64, 100, 283 - off] {
                    let mut dst = vec![f32::NAN; 300];
                    stream_copy(isa, &src[off..off + len], &mut dst[off..off + len]);
                    assert_eq!(
                        &dst[off..off + len],
                        &src[off..off + len],
                        "{} off {off} len {len}",
                        kernel_name(isa.isa())
                    );
                    assert!(dst[..off].iter().chain(&dst[off + len..]).all(|v| v.is_nan()), "wrote outside");
                }
            }
        }
    }
}
