//! NumPy `.npy` files of little-endian float32 (versions 1.0, 2.0 and 3.0 of the format).

use std::path::Path;

use crate::error::{Error, Result};

/// A float32 array read from or written to `.npy`.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Dimensions, outermost first (C order).
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    if let Some(r) = rest.strip_prefix('(') {
        return Some(&r[..r.find(')')?]);
    }
    if let Some(r) = rest.strip_prefix('\'') {
        return Some(&r[..r.find('\'')?]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// Parses `.npy` bytes (`path` names the file in errors); only little-endian float32 in
/// C order is accepted.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Array> {
    let bad = |d: &str| Error::format(path, "npy", d.to_string());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
        v => return Err(bad(&format!("unsupported format version {v}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| bad("truncated header"))
        .and_then(|h| std::str::from_utf8(h).map_err(|_| bad("header is not text")))?;
    let descr = header_value(header, "descr").ok_or_else(|| bad("header has no 'descr'"))?;
    if descr != "<f4" {
        return Err(Error::DType {
            path: path.into(),
            name: "array".into(),
            expected: "float32 ('<f4')".into(),
            got: format!("'{descr}'"),
        });
    }
    if header_value(header, "fortran_order") != Some("False") {
        return Err(bad("Fortran-ordered arrays are not supported"));
    }
    let shape_s = header_value(header, "shape").ok_or_else(|| bad("header has no 'shape'"))?;
    let shape = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad(&format!("bad shape ({shape_s})"))))
        .collect::<Result<Vec<_>>>()?;
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("shape overflows"))?;
    let body = &bytes[start + hlen..];
    let need = n.checked_mul(4).ok_or_else(|| bad(&format!("shape {shape:?} overflows")))?;
    if body.len() != need {
        return Err(bad(&format!(
            "shape {shape:?} needs {need} data bytes, the file has {} (truncated or corrupt)",
            body.len()
        )));
    }
    let data = body.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    Ok(Array { shape, data })
}

/// Reads a `.npy` file of little-endian float32.
pub fn read(path: &Path) -> Result<Array> {
    let bytes = crate::limits::read_file(path, crate::limits::MAX_FILE_BYTES)?;
    parse(path, &bytes)
}

/// The array as `.npy` 1.0 bytes (`<f4`, C order).
pub fn to_bytes(a: &Array) -> Vec<u8> {
    let shape = match a.shape.len() {
        1 => format!("({},)", a.shape[0]),
        _ => format!("({})", a.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending in a newline.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(a.data.iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// Writes atomically.
pub fn write(path: &Path, a: &Array) -> Result<()> {
    crate::fsutil::write_atomic(path, &to_bytes(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let p = Path::new("t.npy");
        let a = Array { shape: vec![2, 3], data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] };
        let b = to_bytes(&a);
        assert_eq!((b.len() - 24) % 64, 0);
        assert_eq!(parse(p, &b).unwrap(), a);
        let e = parse(p, &b[..b.len() - 3]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut f8 = b.clone();
        let at = f8.windows(3).position(|w| w == b"<f4").unwrap();
        f8[at + 2] = b'8';
        assert!(parse(p, &f8).unwrap_err().to_string().contains("float32"));
        assert!(parse(p, b"garbage").is_err());
    }

    /// Defect 11: a shape whose element count fits but whose byte count (`n * 4`) overflows
    /// used to overflow (a panic in debug builds, a wrong comparison in release).
    #[test]
    fn byte_count_overflow_is_an_error() {
        let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}", usize::MAX / 2);
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((header.len() as u16).to_le_bytes());
        b.extend(header.as_bytes());
        let e = parse(Path::new("o.npy"), &b).unwrap_err().to_string();
        assert!(e.starts_with("o.npy: ") && e.contains("overflows"), "{e}");
    }
}
