//! Views of activation buffers that several threads, or several blocks of a streaming
//! chain, share: a whole tensor, or a ring of its rows.

use std::ops::Range;

/// A raw view of a buffer that several threads write in disjoint parts.
pub(super) struct SharedBuf<T = f32> {
    ptr: *mut T,
    len: usize,
}

impl<T> Clone for SharedBuf<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedBuf<T> {}

// SAFETY: used only to hand disjoint row ranges of one buffer to pool threads, and to read
// whole buffers after a barrier has ordered the writes before the reads.
unsafe impl<T: Send> Send for SharedBuf<T> {}
unsafe impl<T: Sync> Sync for SharedBuf<T> {}

impl<T> SharedBuf<T> {
    pub fn new(v: &mut [T]) -> SharedBuf<T> {
        SharedBuf { ptr: v.as_mut_ptr(), len: v.len() }
    }

    /// # Safety
    /// No other thread may access `range` while the slice lives.
    pub unsafe fn slice_mut<'a>(self, range: Range<usize>) -> &'a mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len())
    }

    /// # Safety
    /// No thread may write `range` while the slice lives.
    pub unsafe fn slice<'a>(self, range: Range<usize>) -> &'a [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        std::slice::from_raw_parts(self.ptr.add(range.start), range.len())
    }
}

/// Rows of an NHWC tensor held in `cap` slots: row `r` lives in slot `r % cap`. With `cap`
/// equal to the height it is the whole tensor; smaller, a ring that a streaming producer
/// refills while its consumer reads.
pub(super) struct Rows<T = f32> {
    buf: SharedBuf<T>,
    pub row_len: usize,
    pub cap: usize,
}

impl<T> Clone for Rows<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Rows<T> {}

impl<T> Rows<T> {
    pub fn new(buf: SharedBuf<T>, row_len: usize, cap: usize) -> Rows<T> {
        assert!(cap >= 1 && cap * row_len <= buf.len, "ring of {cap} rows of {row_len} in {} values", buf.len);
        Rows { buf, row_len, cap }
    }

    /// End of the run of rows from `r0` (before `r1`) that is contiguous in memory.
    pub fn run_end(&self, r0: usize, r1: usize) -> usize {
        r1.min(r0 - r0 % self.cap + self.cap)
    }

    fn range(&self, r0: usize, r1: usize) -> Range<usize> {
        assert!(r0 < r1 && self.run_end(r0, r1) == r1 && r1 - r0 <= self.cap, "rows {r0}..{r1} wrap the ring");
        let s = r0 % self.cap;
        s * self.row_len..(s + r1 - r0) * self.row_len
    }

    /// # Safety
    /// No thread may write these rows while the slice lives.
    pub unsafe fn rows<'a>(self, r0: usize, r1: usize) -> &'a [T] {
        self.buf.slice(self.range(r0, r1))
    }

    /// # Safety
    /// No other thread may access these rows while the slice lives.
    pub unsafe fn rows_mut<'a>(self, r0: usize, r1: usize) -> &'a mut [T] {
        self.buf.slice_mut(self.range(r0, r1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_runs() {
        let mut v = vec![0f32; 12];
        let r = Rows::new(SharedBuf::new(&mut v), 3, 4);
        assert_eq!(r.run_end(0, 10), 4);
        assert_eq!(r.run_end(5, 10), 8);
        assert_eq!(r.run_end(6, 7), 7);
        // SAFETY: single thread.
        unsafe {
            r.rows_mut(5, 7).fill(1.0);
            assert_eq!(r.rows(9, 10), &[1.0, 1.0, 1.0]);
        }
    }
}
