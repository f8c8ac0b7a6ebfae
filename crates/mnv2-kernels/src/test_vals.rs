//! Deterministic test data for the kernel tests (no `rand` dependency): a 64-bit LCG whose
//! top 24 bits give values uniform in `[lo, lo + span)`.

pub(crate) fn uniform(seed: u64, n: usize, lo: f32, span: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * span + lo
        })
        .collect()
}
