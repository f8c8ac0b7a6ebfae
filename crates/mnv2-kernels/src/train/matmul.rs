//! `C = A B` (or `C += A B`) for f32 matrices given by strides, on the `gemm` crate.
//!
//! Strides let one call read a transposed operand in place: the pointwise convolution's
//! forward (`X = A W^T`), input gradient (`dA = dX W`) and weight gradient (`dW = dX^T A`) all
//! use the PyTorch-layout weights and the NHWC activations as they lie.

/// A matrix view: element `(i, j)` is at `offset + i * rs + j * cs` of the slice.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major `rows x cols` with rows `cols` apart.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Mat<'a> {
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose, without moving data.
    pub fn t(self) -> Mat<'a> {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    fn check(&self, what: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "{what}: {}x{} view with strides ({}, {}) overruns {} values",
                self.rows,
                self.cols,
                self.rs,
                self.cs,
                self.data.len()
            );
        }
    }
}

/// `dst = a * b` (`accumulate == false`) or `dst += a * b`, with `dst` row-major with row
/// stride `ldd`. `threads > 1` lets the `gemm` crate split the output over the rayon pool.
///
/// Panics if the shapes disagree or a view overruns its slice.
pub fn matmul(dst: &mut [f32], ldd: usize, a: Mat, b: Mat, accumulate: bool, threads: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    a.check("lhs");
    b.check("rhs");
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldd >= n && dst.len() >= (m - 1) * ldd + n, "dst too short");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * ldd..r * ldd + n].fill(0.0);
            }
        }
        return;
    }
    let par = if threads > 1 { ::gemm::Parallelism::Rayon(threads) } else { ::gemm::Parallelism::None };
    // SAFETY: every index the product touches was bounds-checked above through the views'
    // last elements; dst is exclusively borrowed and does not alias the inputs.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(seed: u64, n: usize) -> Vec<f32> {
        crate::test_vals::uniform(seed, n, -1.0, 2.0)
    }

    #[test]
    fn transposed_views_match_naive() {
        for (m, k, n) in [(1, 1, 1), (7, 5, 3), (300, 17, 33), (9, 1000, 12)] {
            let a = vals(1, m * k);
            let bt = vals(2, n * k); // b stored transposed: n x k
            let mut c = vals(3, m * n);
            let c0 = c.clone();
            matmul(&mut c, n, Mat::row_major(&a, m, k), Mat::row_major(&bt, n, k).t(), true, 2);
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k).map(|p| a[i * k + p] as f64 * bt[j * k + p] as f64).sum();
                    let want = c0[i * n + j] as f64 + s;
                    assert!((c[i * n + j] as f64 - want).abs() < 1e-4, "{m}x{k}x{n} at {i},{j}");
                }
            }
            // A^T stored k x m, read back through a transposed view.
            let at: Vec<f32> = (0..k * m).map(|p| a[(p % m) * k + p / m]).collect();
            let mut d = vec![f32::NAN; m * n];
            matmul(&mut d, n, Mat::row_major(&at, k, m).t(), Mat::row_major(&bt, n, k).t(), false, 1);
            for i in 0..m {
                for j in 0..n {
                    let want = c[i * n + j] - c0[i * n + j];
                    assert!((d[i * n + j] - want).abs() < 1e-4, "{m}x{k}x{n} at {i},{j}: {} vs {want}", d[i * n + j]);
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "overruns")]
    fn overrun_panics() {
        let a = vec![0.0; 5];
        let mut d = vec![0.0; 4];
        matmul(&mut d, 2, Mat::row_major(&a, 2, 3), Mat::row_major(&a, 3, 2), false, 1);
    }
}
