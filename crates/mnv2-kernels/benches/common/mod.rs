//! Shared by the kernel benchmarks (a folder, so cargo does not take it for a bench target).
//!
//! These are synthetic micro-shapes around the kernels' tiles; the benchmarks on MobileNetV2's
//! own layer shapes, taken from its plan, are in `crates/mobilenetv2/benches/layers.rs`.
#![allow(dead_code)]

use criterion::Criterion;
use mnv2_kernels::isa::{Needs, Tier};

/// The host's best tier (ignoring `MNV2_ISA`), which grants every kernel the host runs.
pub fn host_tier() -> Tier {
    *Tier::host().last().expect("scalar")
}

/// Whether the host runs a kernel with `needs` (prints a skip line otherwise).
pub fn runs(name: &str, needs: Needs) -> bool {
    let ok = needs.on_host();
    if !ok {
        eprintln!("SKIPPED {name} (host lacks {})", needs.name());
    }
    ok
}

/// (M, K, N) around the tiles: one register tile, a tile plus one row, a few tiles; narrow,
/// exact and ragged panels.
pub const GEMM_SHAPES: [(usize, usize, usize); 6] =
    [(14, 64, 32), (15, 64, 33), (112, 64, 64), (112, 256, 16), (448, 32, 96), (64, 512, 512)];

/// (input width, channels, stride) around the 16-channel tile.
pub const DW_SHAPES: [(usize, usize, usize); 5] = [(16, 16, 1), (17, 17, 1), (64, 64, 1), (64, 64, 2), (32, 256, 1)];

/// Short runs: 20 samples after 300 ms of warm-up, `measure_ms` of measurement.
pub fn quick(measure_ms: u64) -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_millis(measure_ms))
}
