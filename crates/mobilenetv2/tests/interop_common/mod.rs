//! Helpers of the interop tests (`tests/interop_*.rs`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use mobilenetv2::engine::{Engine, Options};
use mobilenetv2::{Batch, Model};

#[path = "../common/mod.rs"]
mod common;
pub use common::{det_input, max_abs_diff, root};

/// tests/data/interop/...
pub fn data(rel: &str) -> PathBuf {
    root().join("tests/data/interop").join(rel)
}

pub fn npy(path: &Path) -> mobilenetv2::npy::Array {
    mobilenetv2::npy::read(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Logits of the fast engine for an NCHW batch.
pub fn logits_nchw(model: &Model, dims: &[usize], x: &[f32]) -> Vec<f32> {
    let engine = Engine::new(model, Options::default()).unwrap();
    engine.run_nchw(dims, x).unwrap().data
}

/// Logits of the fast engine for an NHWC batch.
pub fn logits_nhwc(model: &Model, batch: &Batch) -> Vec<f32> {
    Engine::new(model, Options::default()).unwrap().run(batch).unwrap().data
}

/// Truncations and byte flips of a valid file: every one must load or fail with an error,
/// never panic. Returns how many were refused.
pub fn mangle(bytes: &[u8], ext: &str, load: impl Fn(&Path) -> Result<(), String>) -> usize {
    let dir = std::env::temp_dir().join(format!("mnv2-mangle-{}-{ext}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("m.{ext}"));
    let mut refused = 0;
    let n = bytes.len();
    let mut cases: Vec<Vec<u8>> =
        [0, 1, 7, 8, 16, 64, n / 3, n / 2, n - 1].iter().map(|&k| bytes[..k.min(n)].to_vec()).collect();
    let mut state = 0x1234_5678_9abc_def0u64;
    for _ in 0..40 {
        let mut b = bytes.to_vec();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Mostly the structure at the start, sometimes anywhere.
            let at =
                if state.is_multiple_of(2) { (state >> 8) as usize % n.min(4096) } else { (state >> 8) as usize % n };
            b[at] ^= 1 << ((state >> 3) % 8);
        }
        cases.push(b);
    }
    for case in cases {
        std::fs::write(&path, &case).unwrap();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(&path))) {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => {
                assert!(!msg.contains('\n'), "a one-line error: {msg}");
                assert!(msg.contains("m."), "the error names the file: {msg}");
                refused += 1;
            }
            Err(_) => panic!("loading a mangled .{ext} panicked"),
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    refused
}
