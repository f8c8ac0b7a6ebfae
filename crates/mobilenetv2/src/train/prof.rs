//! Time per kind of work in a training step, for finding where the time goes.
//!
//! Off unless [`enable`] was called (`MNV2_TRAIN_PROFILE=1` for `mnv2 train`, or the
//! `train_step` example): then every [`span`] adds its wall time to its category, and
//! [`report`] lists the totals. When off a span costs one relaxed atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);

/// Categories of work, in report order.
pub const NAMES: [&str; 15] = [
    "stem fwd",
    "pw fwd (gemm+stats)",
    "bn apply",
    "dw fwd (+stats)",
    "pool+classifier+loss",
    "pw bwd (gemms+sums)",
    "bn bwd",
    "dw bwd",
    "stem bwd",
    "optimizer",
    "data wait",
    "other",
    "seg head fwd",
    "seg loss",
    "seg head bwd",
];

static NANOS: [AtomicU64; NAMES.len()] = [const { AtomicU64::new(0) }; NAMES.len()];
static COUNT: [AtomicU64; NAMES.len()] = [const { AtomicU64::new(0) }; NAMES.len()];

/// Turns profiling on or off for the whole process.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Whether profiling is on.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Adds the time until the guard drops to category `cat` (an index of [`NAMES`]).
pub struct Span {
    cat: usize,
    t: Option<Instant>,
}

/// Starts timing category `cat` (an index of [`NAMES`]) until the returned guard drops.
pub fn span(cat: usize) -> Span {
    Span { cat, t: enabled().then(Instant::now) }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(t) = self.t {
            NANOS[self.cat].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            COUNT[self.cat].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sets every total back to zero.
pub fn reset() {
    for (n, c) in NANOS.iter().zip(&COUNT) {
        n.store(0, Ordering::Relaxed);
        c.store(0, Ordering::Relaxed);
    }
}

/// The totals as a table, per step when `steps > 0`.
pub fn report(steps: u64) -> String {
    let total: u64 = NANOS.iter().map(|n| n.load(Ordering::Relaxed)).sum();
    let mut s = String::new();
    for (i, name) in NAMES.iter().enumerate() {
        let ns = NANOS[i].load(Ordering::Relaxed);
        if ns == 0 {
            continue;
        }
        let ms = ns as f64 / 1e6 / steps.max(1) as f64;
        s += &format!("{name:>22}: {ms:8.2} ms/step {:5.1}%\n", 100.0 * ns as f64 / total.max(1) as f64);
    }
    s += &format!("{:>22}: {:8.2} ms/step\n", "total", total as f64 / 1e6 / steps.max(1) as f64);
    s
}
