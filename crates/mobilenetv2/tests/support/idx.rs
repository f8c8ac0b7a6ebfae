//! IDX (MNIST-format) files written by tests: the one encoder, and a tiny training set on it.
//! Shared by the library's tests and the CLI's (`#[path]`-included from crates/mnv2/tests).

use std::path::{Path, PathBuf};

/// Writes `DIR/PREFIX-images-idx3-ubyte` and `DIR/PREFIX-labels-idx1-ubyte` holding `n` 28x28
/// gray items: item `i` is `item(i)` with label `i`'s; returns the images file.
pub fn write_idx(dir: &Path, prefix: &str, n: usize, item: impl Fn(usize) -> ([u8; 28 * 28], u8)) -> PathBuf {
    let mut img = vec![0u8, 0, 8, 3];
    for v in [n as u32, 28, 28] {
        img.extend(v.to_be_bytes());
    }
    let mut lab = vec![0u8, 0, 8, 1];
    lab.extend((n as u32).to_be_bytes());
    for i in 0..n {
        let (px, label) = item(i);
        img.extend(px);
        lab.push(label);
    }
    let p = dir.join(format!("{prefix}-images-idx3-ubyte"));
    std::fs::write(&p, img).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
    p
}

/// `n` 28x28 gray images in IDX files: class k is a bright square at a class-dependent place.
#[allow(dead_code)] // not every test that includes this file trains
pub fn idx_data(d: &Path, n: usize, classes: usize) -> PathBuf {
    write_idx(d, "train", n, |i| {
        let k = i % classes;
        let mut px = [0u8; 28 * 28];
        for y in 0..10 {
            for x in 0..10 {
                px[(2 + 2 * k + y) * 28 + 3 + x + (i * 7) % 5] = 200 + (i % 50) as u8;
            }
        }
        (px, k as u8)
    })
}

/// The inputs of `mnv2 dataset compose` for tests: IDX `train` (20) and `t10k` (10) files of
/// 28x28 blobs of ten classes under `DIR/idx`, and one background photo (chelsea.png) under
/// `DIR/bg`; returns the two folders.
#[allow(dead_code)] // not every test that includes this file composes
pub fn compose_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let idx = dir.join("idx");
    std::fs::create_dir_all(&idx).unwrap();
    for (prefix, n) in [("train", 20), ("t10k", 10)] {
        write_idx(&idx, prefix, n, |i| {
            let mut px = [0u8; 28 * 28];
            for y in 4..24 {
                for x in 4 + i % 4..20 + i % 5 {
                    px[y * 28 + x] = 180;
                }
            }
            (px, (i % 10) as u8)
        });
    }
    let bg = dir.join("bg");
    std::fs::create_dir_all(&bg).unwrap();
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/images/chelsea.png");
    std::fs::copy(photo, bg.join("chelsea.png")).unwrap();
    (idx, bg)
}
