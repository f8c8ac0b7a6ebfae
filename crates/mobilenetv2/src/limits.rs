//! Resource budgets for untrusted input (layer L0): every file this library reads and every
//! request body it parses is treated as hostile, so any allocation, read, loop or recursion
//! whose size comes from the input is checked against one of these numbers first.
//!
//! The numbers are chosen so that no input of at most 64 MB makes a command use more than
//! 1 GB of memory, while every real file (ImageNet photos, MobileNetV2 weights of any width,
//! MNIST-family datasets, training checkpoints) stays far inside them. `docs/security.md` lists
//! which budget guards which format.

use std::path::Path;

use crate::error::{Error, Result};

/// Bytes read from one weight, checkpoint, `.npy` or IDX file (after decompression).
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Bytes read from one image file.
pub const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;
/// Pixels of one decoded image (about 33.5 megapixels: 6,700 x 5,000).
pub const MAX_DECODED_PIXELS: u64 = 1 << 25;
/// Pixels per side of one decoded image (a 1 x 100,000 strip is still an image).
pub const MAX_IMAGE_SIDE: u32 = 1 << 20;
/// Bytes the image decoder may allocate for one image (8 bytes per pixel: 16-bit RGBA).
pub const MAX_DECODER_ALLOC: u64 = MAX_DECODED_PIXELS * 8;
/// Pixels of any resize output or crop window the preprocessing materialises (8192 x 8192,
/// the largest input a spec allows).
pub const MAX_RESIZED_PIXELS: u64 = 1 << 26;
/// Largest `Resize(size)` a weight file's preprocessing metadata may ask for.
pub const MAX_RESIZE: usize = 1 << 14;
/// Nesting depth of pickle tuples (a state dict nests three deep; torch's rebuild arguments
/// add two more).
pub const MAX_PICKLE_DEPTH: usize = 32;
/// Tensors in one weight file (torchvision's MobileNetV2 has 314; a checkpoint a few times that).
pub const MAX_TENSORS: usize = 1 << 16;
/// Bytes of JSON header or metadata in one file (a real safetensors header is ~30 KB).
pub const MAX_JSON_BYTES: u64 = 16 << 20;
/// Classes (logits per pixel or per anchor for the dense heads) a spec may ask for: ImageNet-21k
/// has 21,843, Open Images about 20,000; the classifier of 100,000 classes at width 1.0 is
/// 512 MB of float32 weights, so a file or a flag cannot make the model larger than that.
pub const MAX_CLASSES: usize = 100_000;
/// Directory levels a folder walk descends.
pub const MAX_WALK_DEPTH: usize = 32;
/// Files a folder walk collects.
pub const MAX_WALK_FILES: usize = 10_000_000;

/// Bytes of tensor data one weight load may allocate, given the size of the file: a float16
/// file becomes float32 (twice its size) and views may share storage, so four times the file
/// plus a constant, never more than the file budget allows.
pub fn load_alloc_budget(file_len: usize) -> usize {
    file_len.saturating_mul(4).saturating_add(1 << 20).min(4 * MAX_FILE_BYTES as usize)
}

/// A running budget: a unit (bytes, elements, steps) is charged before it is spent.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    left: usize,
    total: usize,
}

impl Budget {
    /// A budget of `total` units.
    pub fn new(total: usize) -> Budget {
        Budget { left: total, total }
    }

    /// Takes `n` units, or says how many the budget had.
    pub fn charge(&mut self, n: usize) -> std::result::Result<(), usize> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(self.total),
        }
    }
}

/// Reads a whole regular file of at most `max` bytes. Refuses what is not a regular file (a
/// FIFO, a device such as `/dev/zero`, a folder) before reading, and a file that grows past
/// `max` while it is read, so no read is unbounded.
pub fn read_file(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let not_regular = || Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    // Checked before opening too: opening a FIFO blocks until a writer comes.
    if !std::fs::metadata(path).map_err(|e| Error::io(path, e))?.is_file() {
        return Err(not_regular());
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    if meta.len() > max {
        return Err(too_large(path, meta.len(), max));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1).read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(too_large(path, buf.len() as u64, max));
    }
    Ok(buf)
}

fn too_large(path: &Path, len: u64, max: u64) -> Error {
    Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is {len} bytes, more than the {max} this reader accepts"),
        ),
    )
}

/// At most `max` characters of an untrusted string, for error messages.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}... ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_charges_until_empty() {
        let mut b = Budget::new(10);
        assert!(b.charge(4).is_ok());
        assert!(b.charge(6).is_ok());
        assert_eq!(b.charge(1), Err(10));
    }

    #[test]
    fn read_file_refuses_devices_fifos_and_large_files() {
        let e = read_file(Path::new("/dev/zero"), 1 << 20).unwrap_err().to_string();
        assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
        let dir = std::env::temp_dir().join(format!("mnv2-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        if made {
            let e = read_file(&fifo, 1 << 20).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        } else {
            eprintln!("mkfifo unavailable: FIFO case not run");
        }
        let big = dir.join("big");
        std::fs::write(&big, [0u8; 100]).unwrap();
        let e = read_file(&big, 99).unwrap_err().to_string();
        assert!(e.contains("more than the 99"), "{e}");
        assert_eq!(read_file(&big, 100).unwrap().len(), 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clip_bounds_messages() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip(&"x".repeat(10), 3), "xxx... (10 bytes)");
    }
}
