//! A tiny IDX (MNIST-format) training set written by tests: shared by the library's training
//! tests and the CLI's (`#[path]`-included from crates/mnv2/tests).

use std::path::{Path, PathBuf};

/// `n` 28x28 gray images in IDX files: class k is a bright square at a class-dependent place.
pub fn idx_data(d: &Path, n: usize, classes: usize) -> PathBuf {
    let mut img = vec![0u8, 0, 8, 3];
    for v in [n as u32, 28, 28] {
        img.extend(v.to_be_bytes());
    }
    let mut lab = vec![0u8, 0, 8, 1];
    lab.extend((n as u32).to_be_bytes());
    for i in 0..n {
        let k = i % classes;
        let mut px = [0u8; 28 * 28];
        for y in 0..10 {
            for x in 0..10 {
                px[(2 + 2 * k + y) * 28 + 3 + x + (i * 7) % 5] = 200 + (i % 50) as u8;
            }
        }
        img.extend(px);
        lab.push(k as u8);
    }
    let p = d.join("train-images-idx3-ubyte");
    std::fs::write(&p, img).unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte"), lab).unwrap();
    p
}
