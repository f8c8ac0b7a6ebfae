//! Weight files: named tensors in and out, whatever the format.
//!
//! Every reader returns a [`TensorFile`]: tensors by name in PyTorch layout (OIHW convolution
//! weights) plus string metadata. [`crate::model::Model`] then fits them to a plan.

pub(crate) mod fit;
pub(crate) mod graph;
pub(crate) mod init;
pub mod int8;
pub mod keras;
pub mod onnx;
pub mod pth;
pub mod safetensors_io;
pub mod tfgraph;
pub mod tflite;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Values of a tensor, in the element type of the file (floats widened to f32).
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Floating point (f16, bf16 and f64 files are converted).
    F32(Vec<f32>),
    /// 64-bit integers (BatchNorm's `num_batches_tracked` in PyTorch files).
    I64(Vec<i64>),
    /// 32-bit integers, as stored.
    I32(Vec<i32>),
    /// Signed bytes (the int8 format's weights).
    I8(Vec<i8>),
    /// Unsigned bytes, as stored.
    U8(Vec<u8>),
}

impl Data {
    /// The element type's name, as safetensors and numpy spell it (`float32`, `int8`, ...).
    pub fn dtype(&self) -> &'static str {
        match self {
            Data::F32(_) => "float32",
            Data::I64(_) => "int64",
            Data::I32(_) => "int32",
            Data::I8(_) => "int8",
            Data::U8(_) => "uint8",
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::I8(v) => v.len(),
            Data::U8(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One named tensor of a weight file: its shape and row-major values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first (PyTorch layout after import: OIHW for convolutions).
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Data,
}

impl Tensor {
    /// An f32 tensor; `values.len()` must be the product of `shape`.
    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        Tensor { shape, data: Data::F32(values) }
    }

    /// The number of values the shape holds.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Tensors by name plus string metadata, as read from one file.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    /// The file it was read from (for error messages).
    pub path: PathBuf,
    /// Tensors by name (torchvision's after import).
    pub tensors: BTreeMap<String, Tensor>,
    /// String metadata (`spec`, `labels`, `preprocess`, `quantization` for the project's own
    /// files; what importers could learn from other formats).
    pub metadata: BTreeMap<String, String>,
}

/// The on-disk formats the project reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// safetensors (the project's own format).
    Safetensors,
    /// PyTorch >= 1.6 zip archive (`torch.save` default).
    TorchZip,
    /// PyTorch legacy sequential pickles (`_use_new_zipfile_serialization=False`, and every
    /// file written before 1.6, such as torchvision's ImageNet MobileNetV2 weights).
    TorchLegacy,
}

/// Guesses the format from the first bytes of a file.
pub fn sniff(path: &Path, head: &[u8]) -> Result<Format> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(Format::TorchZip);
    }
    // Legacy torch: a sequence of pickles starting with the pickled magic number: PROTO
    // (0x80) and a protocol version 2..=5 (the reader checks the number itself).
    if head.len() >= 3 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Ok(Format::TorchLegacy);
    }
    if head.len() >= 9 && head[8] == b'{' {
        return Ok(Format::Safetensors);
    }
    let detail = if head.is_empty() {
        "the file is empty".to_string()
    } else {
        "unrecognised header: expected safetensors, a PyTorch .pth/.pt (zip or legacy), ONNX, Keras .h5/.keras or TFLite file".into()
    };
    Err(Error::format(path, "weights", detail))
}

/// Reads a weight file in any supported format (safetensors, PyTorch `.pth`/`.pt`, ONNX, Keras
/// `.h5`/`.keras`, TFLite), found from its first bytes.
pub fn load(path: &Path) -> Result<TensorFile> {
    // safetensors is read tensor by tensor, without the whole file in memory.
    let mut head = [0u8; 9];
    // A FIFO would block the open and a device (`/dev/zero`) never end: regular files only.
    if !std::fs::metadata(path).map_err(|e| Error::io(path, e))?.is_file() {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(Error::io(path, e));
    }
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(|e| Error::io(path, e))?;
    if n == 9 && head[8] == b'{' {
        return safetensors_io::read_path(path);
    }
    let bytes = crate::limits::read_file(path, crate::limits::MAX_FILE_BYTES)?;
    if tflite::sniff(&bytes) {
        return tflite::read(path, &bytes);
    }
    if keras::hdf5::sniff(&bytes) {
        return keras::read_h5(path, &bytes);
    }
    if bytes.starts_with(b"PK\x03\x04") && keras::is_archive(&bytes) {
        return keras::read_archive(path, &bytes);
    }
    let safetensors = bytes.len() >= 9 && bytes[8] == b'{';
    if !safetensors && (onnx::sniff(&bytes) || path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))) {
        return onnx::read(path, &bytes);
    }
    match sniff(path, &bytes[..bytes.len().min(16)])? {
        Format::Safetensors => safetensors_io::read(path, &bytes),
        Format::TorchZip | Format::TorchLegacy => pth::read(path, &bytes),
    }
}

/// f16 bits to f32 (IEEE 754 half precision).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// f32 to the nearest f16 bits (ties to even); overflow gives infinity, NaN stays NaN.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 | (man >> 13) as u16 } else { 0 };
    }
    // Unbiased exponent, rebiased for f16.
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // Subnormal (or zero) in f16: shift the full mantissa (with its implicit 1) right.
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut q = m >> shift;
        if rest > half || (rest == half && q & 1 == 1) {
            q += 1;
        }
        return sign | q as u16;
    }
    let mut q = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && q & 1 == 1) {
        q += 1; // may carry into the exponent, up to infinity: still correct
    }
    sign | q as u16
}

/// bf16 bits to f32.
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
    }

    #[test]
    fn f16_round_trip_and_rounding() {
        // Every finite f16 survives f16 -> f32 -> f16.
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert!(f16_to_f32(f32_to_f16(f)).is_nan());
            } else {
                assert_eq!(f32_to_f16(f), h, "{h:#06x} {f}");
            }
        }
        // Ties go to even; overflow to infinity; tiny values to zero.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(70000.0), 0x7c00);
        assert_eq!(f32_to_f16(-1e-10), 0x8000);
        assert_eq!(f32_to_f16(0.1), 0x2e66);
    }

    #[test]
    fn sniff_rejects_garbage_and_empty() {
        let p = Path::new("x.bin");
        assert!(sniff(p, b"").unwrap_err().to_string().contains("empty"));
        assert!(sniff(p, b"hello world!!").is_err());
        assert_eq!(sniff(p, b"PK\x03\x04rest").unwrap(), Format::TorchZip);
    }
}
