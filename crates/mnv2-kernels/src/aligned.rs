//! A 64-byte aligned, zero-initialised buffer (f32 by default; also the integer types of the
//! int8 kernels): packed weights and scratch rows, so vector loads never split cache lines.
//! And `grown`, the per-thread staging areas the kernels keep between calls.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::thread::LocalKey;

/// Element types whose all-zero bit pattern is the value zero.
///
/// # Safety
/// Implementors must be plain data for which all-zero bytes are a valid value.
pub unsafe trait Zeroable: Copy + Send + Sync + 'static {}
// SAFETY: all-zero bytes are 0 for each of these.
unsafe impl Zeroable for f32 {}
unsafe impl Zeroable for i8 {}
unsafe impl Zeroable for i16 {}
unsafe impl Zeroable for u8 {}
unsafe impl Zeroable for i32 {}
unsafe impl Zeroable for u16 {}
unsafe impl Zeroable for u32 {}

/// A zero-initialised buffer aligned to 64 bytes (a cache line, an AVX-512 vector), which
/// dereferences to a slice.
pub struct AlignedVec<T: Zeroable = f32> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: AlignedVec owns its allocation like a Vec<T>.
unsafe impl<T: Zeroable> Send for AlignedVec<T> {}
unsafe impl<T: Zeroable> Sync for AlignedVec<T> {}

const ALIGN: usize = 64;

impl<T: Zeroable> AlignedVec<T> {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.checked_mul(size_of::<T>()).expect("buffer size overflows"), ALIGN)
            .expect("buffer size overflows")
    }

    /// `len` zeros.
    pub fn zeros(len: usize) -> AlignedVec<T> {
        if len == 0 {
            return AlignedVec { ptr: NonNull::dangling(), len: 0 };
        }
        let layout = Self::layout(len);
        // SAFETY: layout has non-zero size; zeroed bytes are valid T (Zeroable).
        let raw = unsafe { alloc_zeroed(layout) } as *mut T;
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedVec { ptr, len }
    }

    /// A copy of `v`.
    pub fn from_slice(v: &[T]) -> AlignedVec<T> {
        let mut a = AlignedVec::zeros(v.len());
        a.copy_from_slice(v);
        a
    }
}

impl<T: Zeroable> Drop for AlignedVec<T> {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `zeros` with this layout.
            unsafe { dealloc(self.ptr.as_ptr() as *mut u8, Self::layout(self.len)) }
        }
    }
}

impl<T: Zeroable> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr is valid for len initialised values (or dangling with len 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> Clone for AlignedVec<T> {
    fn clone(&self) -> Self {
        AlignedVec::from_slice(self)
    }
}

impl<T: Zeroable> std::fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedVec<{}>[{}]", std::any::type_name::<T>(), self.len)
    }
}

/// This thread's scratch area `area` grown (never shrunk) to at least `len` values, new ones
/// `fill`: a pointer to it, valid until this thread next grows that area. The kernels stage
/// rows this way, one area per kind of kernel, and declare its size for the engine's
/// activation accounting.
pub(crate) fn grown<T: Clone>(area: &'static LocalKey<RefCell<Vec<T>>>, len: usize, fill: T) -> *mut T {
    area.with_borrow_mut(|v| {
        if v.len() < len {
            v.resize(len, fill);
        }
        v.as_mut_ptr()
    })
}

/// [`grown`] for an area of 64-byte aligned values: grown (never shrunk) to at least `len`
/// values, all zero after a growth (what it held is not kept: its users fill what they read).
/// A pointer to it, valid until this thread next grows that area.
pub(crate) fn grown_aligned<T: Zeroable>(area: &'static LocalKey<RefCell<AlignedVec<T>>>, len: usize) -> *mut T {
    area.with_borrow_mut(|v| {
        if v.len() < len {
            *v = AlignedVec::zeros(len);
        }
        v.as_mut_ptr()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut v = AlignedVec::<f32>::zeros(37);
        assert_eq!(v.as_ptr() as usize % 64, 0);
        assert!(v.iter().all(|x| *x == 0.0));
        v[36] = 1.0;
        let w = v.clone();
        assert_eq!(w[36], 1.0);
        assert_eq!(AlignedVec::<f32>::zeros(0).len(), 0);
        let b = AlignedVec::<u8>::zeros(5);
        assert_eq!(b.as_ptr() as usize % 64, 0);
        assert_eq!(&b[..], &[0; 5]);
    }
}
