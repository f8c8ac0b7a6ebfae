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
