//! Rows of an NHWC tensor held in `cap` slots: row `r` lives in slot `r % cap`. With `cap`
//! equal to the height it is the whole tensor; smaller, a ring that a streaming producer
//! refills while its consumer reads. A view may also hold only the slots from `first` on (a
//! thread's share of a tensor's rows).

use std::ops::Range;

/// Where rows `r0..r1` lie in a view's slice, if they are contiguous and inside it.
fn slots(r0: usize, r1: usize, row_len: usize, cap: usize, first: usize, len: usize) -> Range<usize> {
    assert!(r0 < r1 && r1 - r0 <= cap && r0 % cap + (r1 - r0) <= cap, "rows {r0}..{r1} wrap the ring of {cap}");
    let s = r0 % cap;
    assert!(s >= first, "rows {r0}..{r1} lie before this view (slot {first})");
    let range = (s - first) * row_len..(s - first + r1 - r0) * row_len;
    assert!(range.end <= len, "rows {r0}..{r1} lie past this view");
    range
}

/// The end of the run of rows from `r0` (before `r1`) that is contiguous in memory.
fn run_end(cap: usize, r0: usize, r1: usize) -> usize {
    r1.min(r0 - r0 % cap + cap)
}

/// Rows to read.
#[derive(Debug)]
pub struct Rows<'a, T> {
    data: &'a [T],
    /// Values per row.
    pub row_len: usize,
    /// Slots of the ring (the height for a whole tensor).
    pub cap: usize,
}

impl<T> Clone for Rows<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Rows<'_, T> {}

impl<'a, T> Rows<'a, T> {
    /// `cap` slots of `row_len` values at the start of `data`.
    pub fn new(data: &'a [T], row_len: usize, cap: usize) -> Rows<'a, T> {
        assert!(cap >= 1 && cap * row_len <= data.len(), "ring of {cap} rows of {row_len} in {} values", data.len());
        Rows { data, row_len, cap }
    }

    /// End of the run of rows from `r0` (before `r1`) that is contiguous in memory.
    pub fn run_end(&self, r0: usize, r1: usize) -> usize {
        run_end(self.cap, r0, r1)
    }

    /// Rows `r0..r1` (contiguous: see [`Rows::run_end`]).
    pub fn rows(&self, r0: usize, r1: usize) -> &'a [T] {
        &self.data[slots(r0, r1, self.row_len, self.cap, 0, self.data.len())]
    }
}

/// Rows to write: a whole tensor, a ring, or the rows `first..` of a tensor of `cap` rows.
#[derive(Debug)]
pub struct RowsMut<'a, T> {
    data: &'a mut [T],
    /// Values per row.
    pub row_len: usize,
    /// Slots of the ring (the height for a whole tensor).
    pub cap: usize,
    first: usize,
}

impl<'a, T> RowsMut<'a, T> {
    /// `cap` slots of `row_len` values at the start of `data`.
    pub fn new(data: &'a mut [T], row_len: usize, cap: usize) -> RowsMut<'a, T> {
        assert!(cap >= 1 && cap * row_len <= data.len(), "ring of {cap} rows of {row_len} in {} values", data.len());
        RowsMut { data, row_len, cap, first: 0 }
    }

    /// Rows `rows` of a tensor of `height` rows, `data` holding exactly those rows.
    pub fn window(data: &'a mut [T], row_len: usize, height: usize, rows: Range<usize>) -> RowsMut<'a, T> {
        assert!(rows.start <= rows.end && rows.end <= height.max(1), "rows {rows:?} of {height}");
        assert_eq!(data.len(), rows.len() * row_len, "a window holds its rows");
        RowsMut { data, row_len, cap: height.max(1), first: rows.start }
    }

    /// End of the run of rows from `r0` (before `r1`) that is contiguous in memory.
    pub fn run_end(&self, r0: usize, r1: usize) -> usize {
        run_end(self.cap, r0, r1)
    }

    /// Rows `r0..r1` to write (contiguous: see [`RowsMut::run_end`]).
    pub fn rows_mut(&mut self, r0: usize, r1: usize) -> &mut [T] {
        let range = slots(r0, r1, self.row_len, self.cap, self.first, self.data.len());
        &mut self.data[range]
    }

    /// The view as rows to read (whole tensors and rings only).
    pub fn as_rows(&self) -> Rows<'_, T> {
        assert_eq!(self.first, 0, "a window of a tensor is not read through its writer");
        Rows { data: self.data, row_len: self.row_len, cap: self.cap }
    }

    /// The rows a window holds (`first..`; all slots for a whole tensor or a ring).
    pub fn window_rows(&self) -> Range<usize> {
        let n = self.data.len().checked_div(self.row_len).unwrap_or(0);
        self.first..self.first + n
    }

    /// All the values the view holds.
    pub fn values_mut(&mut self) -> &mut [T] {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_runs() {
        let mut v = vec![0f32; 12];
        let mut r = RowsMut::new(&mut v, 3, 4);
        assert_eq!(r.run_end(0, 10), 4);
        assert_eq!(r.run_end(5, 10), 8);
        assert_eq!(r.run_end(6, 7), 7);
        r.rows_mut(5, 7).fill(1.0);
        assert_eq!(r.as_rows().rows(9, 10), &[1.0, 1.0, 1.0]);
        assert_eq!(&v[3..9], &[1.0; 6]);
    }

    #[test]
    fn windows_hold_only_their_rows() {
        let mut v = vec![0u8; 6];
        let mut w = RowsMut::window(&mut v, 2, 10, 4..7);
        assert_eq!(w.run_end(4, 10), 10);
        w.rows_mut(5, 7).fill(9);
        assert_eq!(v, [0, 0, 9, 9, 9, 9]);
        let mut w = RowsMut::window(&mut v, 2, 10, 4..7);
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.rows_mut(3, 4).len())).is_err());
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.rows_mut(6, 8).len())).is_err());
    }

    #[test]
    #[should_panic(expected = "wrap")]
    fn a_run_may_not_wrap() {
        let v = vec![0f32; 12];
        Rows::new(&v, 3, 4).rows(3, 5);
    }
}
