//! A 64-byte aligned, zero-initialised f32 buffer: packed weights and scratch rows, so vector
//! loads never split cache lines.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

pub struct AlignedVec {
    ptr: NonNull<f32>,
    len: usize,
}

// SAFETY: AlignedVec owns its allocation like a Vec<f32>.
unsafe impl Send for AlignedVec {}
unsafe impl Sync for AlignedVec {}

const ALIGN: usize = 64;

impl AlignedVec {
    pub fn zeros(len: usize) -> AlignedVec {
        if len == 0 {
            return AlignedVec { ptr: NonNull::dangling(), len: 0 };
        }
        let layout = Layout::from_size_align(len * 4, ALIGN).expect("buffer size overflows");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) } as *mut f32;
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedVec { ptr, len }
    }

    pub fn from_slice(v: &[f32]) -> AlignedVec {
        let mut a = AlignedVec::zeros(v.len());
        a.copy_from_slice(v);
        a
    }
}

impl Drop for AlignedVec {
    fn drop(&mut self) {
        if self.len > 0 {
            let layout = Layout::from_size_align(self.len * 4, ALIGN).unwrap();
            // SAFETY: allocated in `zeros` with this layout.
            unsafe { dealloc(self.ptr.as_ptr() as *mut u8, layout) }
        }
    }
}

impl Deref for AlignedVec {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: ptr is valid for len initialised floats (or dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for AlignedVec {
    fn clone(&self) -> Self {
        AlignedVec::from_slice(self)
    }
}

impl std::fmt::Debug for AlignedVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedVec[{}]", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut v = AlignedVec::zeros(37);
        assert_eq!(v.as_ptr() as usize % 64, 0);
        assert!(v.iter().all(|x| *x == 0.0));
        v[36] = 1.0;
        let w = v.clone();
        assert_eq!(w[36], 1.0);
        assert_eq!(AlignedVec::zeros(0).len(), 0);
    }
}
