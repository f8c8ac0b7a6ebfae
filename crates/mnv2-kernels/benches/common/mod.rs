//! Shared by the kernel benchmarks (a folder, so cargo does not take it for a bench target).
#![allow(dead_code)]

use criterion::Criterion;

/// (M, K, N): pixels, input channels, output channels of MobileNetV2's distinct 1x1 layers
/// (width 1.0, 224x224).
pub const POINTWISE_SHAPES: [(usize, usize, usize); 12] = [
    (12544, 32, 16),
    (12544, 16, 96),
    (3136, 24, 144),
    (3136, 144, 24),
    (784, 32, 192),
    (784, 192, 32),
    (196, 64, 384),
    (196, 384, 64),
    (196, 96, 576),
    (49, 160, 960),
    (49, 960, 160),
    (49, 320, 1280),
];

/// Short runs: 20 samples after 300 ms of warm-up, `measure_ms` of measurement.
pub fn quick(measure_ms: u64) -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_millis(measure_ms))
}
