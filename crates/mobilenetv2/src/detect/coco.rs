//! COCO JSON files as they are on disk: the instances file (`images`, `annotations`,
//! `categories`) and the results file (a list of `{image_id, category_id, bbox, score}`),
//! read with a size budget and streamed, so memory is the records, never the text.
//!
//! Only the syntax is checked here (JSON, field types, duplicate keys); what the records mean
//! (boxes inside their image, known categories, unique ids) is checked by the readers that
//! use them ([`super::cocoeval`], [`super::dataset`]), which can name the record.

use std::fmt;
use std::io::{BufReader, Read};
use std::path::Path;

use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// Bytes of one COCO JSON file (annotations or detection results). COCO's largest official
/// file, `instances_train2017.json`, is 448 MB; the file is streamed into records (segmentation
/// polygons are checked, not kept), so memory is about the size of the records, not the text.
pub const MAX_COCO_JSON_BYTES: u64 = 1 << 30;

/// Reads a JSON file of at most `max` bytes into `T`, streaming (the text is never held whole).
/// Refuses what is not a regular file before opening it, like [`crate::limits::read_file`].
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path, max: u64, format: &'static str) -> Result<T> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
    }
    if meta.len() > max {
        return Err(Error::format(
            path,
            format,
            format!("the file is {} bytes, more than the {max} this reader accepts", meta.len()),
        ));
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 16, f.take(max)));
    let v = T::deserialize(&mut de).map_err(|e| Error::format(path, format, e.to_string()))?;
    de.end().map_err(|e| Error::format(path, format, e.to_string()))?;
    Ok(v)
}

/// A COCO instances file: only the fields the readers use; others are skipped unread.
#[derive(Debug, Deserialize)]
pub(crate) struct InstancesFile {
    pub images: Vec<ImageRecord>,
    #[serde(default)]
    pub annotations: Vec<AnnotationRecord>,
    pub categories: Vec<CategoryRecord>,
}

/// One entry of `images`.
#[derive(Debug, Deserialize)]
pub(crate) struct ImageRecord {
    pub id: i64,
    pub file_name: Option<String>,
    pub width: Option<u64>,
    pub height: Option<u64>,
}

/// One entry of `categories`.
#[derive(Debug, Deserialize)]
pub(crate) struct CategoryRecord {
    pub id: i64,
    pub name: Option<String>,
}

/// One entry of `annotations`.
#[derive(Debug, Deserialize)]
pub(crate) struct AnnotationRecord {
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    pub bbox: Vec<f64>,
    pub area: Option<f64>,
    pub iscrowd: Option<u8>,
    pub segmentation: Option<Segmentation>,
}

/// One entry of a results file.
#[derive(Debug, Deserialize)]
pub(crate) struct ResultRecord {
    pub image_id: i64,
    pub category_id: i64,
    pub bbox: Vec<f64>,
    pub score: f64,
}

/// What an annotation's `segmentation` holds, checked but not kept (polygons can be most of a
/// COCO file): the problem, if its shape is wrong, is reported by the reader with the record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Segmentation {
    /// A list of polygons, each of at least three finite (x, y) points.
    Polygons(usize),
    /// Run-length encoding of a `[height, width]` mask whose runs cover it exactly.
    Rle {
        /// The mask's height.
        height: u64,
        /// The mask's width.
        width: u64,
    },
    /// A shape that is not one of the above: why.
    Invalid(String),
}

impl<'de> Deserialize<'de> for Segmentation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(SegVisitor)
    }
}

struct SegVisitor;

impl<'de> Visitor<'de> for SegVisitor {
    type Value = Segmentation;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of polygons or an RLE object {size, counts}")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Segmentation, A::Error> {
        let mut n = 0usize;
        let mut problem = None;
        while let Some(p) = seq.next_element::<Polygon>()? {
            if problem.is_none() {
                if p.len % 2 != 0 || p.len < 6 {
                    problem = Some(format!("polygon {n} has {} numbers, not an even count of at least 6", p.len));
                } else if !p.finite {
                    problem = Some(format!("polygon {n} holds a non-finite coordinate"));
                }
            }
            n += 1;
        }
        Ok(problem.map(Segmentation::Invalid).unwrap_or(Segmentation::Polygons(n)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Segmentation, A::Error> {
        let mut size: Option<Vec<u64>> = None;
        let mut counts: Option<Counts> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "size" => {
                    if size.is_some() {
                        return Err(de::Error::duplicate_field("size"));
                    }
                    size = Some(map.next_value()?);
                }
                "counts" => {
                    if counts.is_some() {
                        return Err(de::Error::duplicate_field("counts"));
                    }
                    counts = Some(map.next_value()?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let (Some(size), Some(counts)) = (size, counts) else {
            return Ok(Segmentation::Invalid("an RLE segmentation needs both `size` and `counts`".into()));
        };
        let [height, width] = size[..] else {
            return Ok(Segmentation::Invalid(format!("RLE `size` has {} numbers, not [height, width]", size.len())));
        };
        let total = match counts {
            Counts::Runs(sum) => sum,
            Counts::Compressed(s) => match rle_string_total(&s) {
                Ok(t) => t,
                Err(e) => return Ok(Segmentation::Invalid(format!("RLE `counts` string: {e}"))),
            },
        };
        if Some(total) != (height as u128).checked_mul(width as u128) {
            return Ok(Segmentation::Invalid(format!(
                "RLE runs cover {total} pixels, not the {height}x{width} = {} of its `size`",
                height as u128 * width as u128
            )));
        }
        Ok(Segmentation::Rle { height, width })
    }
}

/// A polygon's length and whether every coordinate is finite, without keeping it.
struct Polygon {
    len: usize,
    finite: bool,
}

impl<'de> Deserialize<'de> for Polygon {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Polygon;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a polygon: a list of x, y numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Polygon, A::Error> {
                let mut p = Polygon { len: 0, finite: true };
                while let Some(v) = seq.next_element::<f64>()? {
                    p.len += 1;
                    p.finite &= v.is_finite();
                }
                Ok(p)
            }
        }
        d.deserialize_seq(V)
    }
}

/// RLE `counts`: the uncompressed list of runs (summed as it is read) or COCO's compressed string.
enum Counts {
    Runs(u128),
    Compressed(String),
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Counts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("RLE counts: a list of run lengths or a compressed string")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Counts, A::Error> {
                let mut sum = 0u128;
                while let Some(v) = seq.next_element::<u64>()? {
                    sum += v as u128;
                }
                Ok(Counts::Runs(sum))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<Counts, E> {
                Ok(Counts::Compressed(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> std::result::Result<Counts, E> {
                Ok(Counts::Compressed(s))
            }
        }
        d.deserialize_any(V)
    }
}

/// The pixels a compressed COCO RLE string covers: the sum of its runs, decoded the way the
/// COCO mask API encodes them (5 bits per character from `'0'`, a continuation bit, sign
/// extension, and runs after the second stored as differences from the run two before).
pub(crate) fn rle_string_total(s: &str) -> std::result::Result<u128, String> {
    let b = s.as_bytes();
    let mut runs: Vec<i64> = Vec::new();
    let mut p = 0usize;
    while p < b.len() {
        let mut x: i64 = 0;
        let mut k = 0u32;
        loop {
            let Some(&ch) = b.get(p) else { return Err("ends inside a number".into()) };
            if !(48..48 + 64).contains(&ch) {
                return Err(format!("character {:?} at {p} is not in the encoding's range", ch as char));
            }
            if k >= 60 {
                return Err(format!("the number at {p} is too long"));
            }
            let c = (ch - 48) as i64;
            x |= (c & 0x1f) << (5 * k);
            let more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        let m = runs.len();
        if m > 2 {
            x = x.checked_add(runs[m - 2]).ok_or("a run overflows")?;
        }
        if x < 0 {
            return Err(format!("run {m} is negative ({x})"));
        }
        runs.push(x);
    }
    Ok(runs.iter().map(|&r| r as u128).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(json: &str) -> std::result::Result<Segmentation, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn polygons_and_rle_shapes() {
        assert_eq!(seg("[[0,0,1,0,1,1]]").unwrap(), Segmentation::Polygons(1));
        assert!(matches!(seg("[[0,0,1,0,1]]").unwrap(), Segmentation::Invalid(m) if m.contains("5 numbers")));
        assert!(matches!(seg("[[0,0,1,0]]").unwrap(), Segmentation::Invalid(_)));
        assert_eq!(seg(r#"{"size":[2,3],"counts":[1,4,1]}"#).unwrap(), Segmentation::Rle { height: 2, width: 3 });
        assert!(
            matches!(seg(r#"{"size":[2,3],"counts":[1,4]}"#).unwrap(), Segmentation::Invalid(m) if m.contains("cover 5"))
        );
        assert!(matches!(seg(r#"{"size":[2],"counts":[6]}"#).unwrap(), Segmentation::Invalid(_)));
        assert!(matches!(seg(r#"{"counts":[6]}"#).unwrap(), Segmentation::Invalid(_)));
        let e = seg(r#"{"size":[2,3],"counts":[6],"counts":[6]}"#).unwrap_err().to_string();
        assert!(e.contains("duplicate field `counts`"), "{e}");
        assert!(seg("3").is_err());
    }

    #[test]
    fn compressed_rle_strings() {
        // Strings pycocotools' `mask.encode` writes (runs after the third are stored as the
        // difference from the run two before): a 2x3 mask, runs [1, 4, 1]; a 4x4 mask with a
        // 2x2 square, runs [5, 2, 2, 2, 5]; a 40x50 mask whose last 30 columns are set, runs
        // [800, 1200] (several characters per number); a 30x40 mask with a 17x25 rectangle.
        assert_eq!(rle_string_total("141").unwrap(), 6);
        assert_eq!(rle_string_total("52203").unwrap(), 16);
        assert_eq!(rle_string_total("Pi0`U1").unwrap(), 2000);
        assert_eq!(rle_string_total("i4a0=00000000000000000000000000000000000000000000000Y9").unwrap(), 1200);
        assert!(rle_string_total("X").unwrap_err().contains("ends inside"));
        assert!(rle_string_total("1~").unwrap_err().contains("not in the encoding"));
    }
}
