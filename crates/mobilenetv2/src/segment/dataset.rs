//! Segmentation datasets: images with per-pixel class masks, in PASCAL VOC's layout or the
//! layout `mnv2 dataset compose` writes.
//!
//! * **VOC** (`ROOT/JPEGImages/`): the split's names in `ROOT/ImageSets/Segmentation/SPLIT.txt`
//!   (one per line), the image `ROOT/JPEGImages/NAME.jpg` (`.jpeg` or `.png` also taken) and
//!   the mask `ROOT/SegmentationClass/NAME.png`.
//! * **Composed** (`ROOT/SPLIT/images/`): the names in `ROOT/ImageSets/Segmentation/SPLIT.txt`,
//!   the image `ROOT/SPLIT/images/NAME.png` (or `.jpg`) and the mask `ROOT/SPLIT/masks/NAME.png`; class
//!   names from `ROOT/dataset.json`.
//!
//! Masks are 8-bit PNGs whose pixel values are class indices: palette PNGs (VOC's; the palette
//! is only for viewing, the indices are the labels) or grey. 255 is the ignore label. A mask
//! whose size differs from its image's, a label that is neither below the number of classes
//! nor 255, a colour (RGB) mask and a missing file are errors naming the file.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::limits::{self, MAX_DECODED_PIXELS, MAX_IMAGE_FILE_BYTES, MAX_JSON_BYTES};
use crate::preprocess::{self, RgbImage};

use super::metric::IGNORE;

/// PASCAL VOC 2012's 21 segmentation classes, background first.
pub const VOC_CLASSES: [&str; 21] = crate::labels::VOC;

/// Which layout a dataset was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// PASCAL VOC: `JPEGImages/`, `SegmentationClass/`.
    Voc,
    /// `mnv2 dataset compose`: `SPLIT/images/`, `SPLIT/masks/`.
    Composed,
}

/// An image with its class mask.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The photo.
    pub image: RgbImage,
    /// `height * width` class indices (255 = ignore), rows top to bottom.
    pub mask: Vec<u8>,
}

/// One split of a segmentation dataset: the files, checked to exist when opened.
#[derive(Clone, Debug)]
pub struct SegmentationSet {
    /// The dataset's root folder.
    pub root: PathBuf,
    /// The split's name (`train`, `val`, ...).
    pub split: String,
    /// The layout found.
    pub layout: Layout,
    /// Image names in list order.
    pub names: Vec<String>,
    /// Class names (background first): VOC's 21, or the composed set's.
    pub class_names: Vec<String>,
    images: Vec<PathBuf>,
    masks: Vec<PathBuf>,
}

fn missing(path: &Path, what: &str) -> Error {
    Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, format!("{what} not found")))
}

impl SegmentationSet {
    /// Opens split `split` of the dataset at `root` (either layout); every listed image and
    /// mask must exist.
    pub fn open(root: &Path, split: &str) -> Result<SegmentationSet> {
        if split.is_empty() || split.contains(['/', '\\']) || split.starts_with('.') {
            return Err(Error::Input(format!("split name `{split}` is not a plain name")));
        }
        let list = root.join("ImageSets/Segmentation").join(format!("{split}.txt"));
        let (layout, class_names) = if root.join("JPEGImages").is_dir() {
            (Layout::Voc, VOC_CLASSES.iter().map(|s| s.to_string()).collect())
        } else if root.join(split).join("images").is_dir() {
            (Layout::Composed, composed_classes(root)?)
        } else {
            return Err(Error::Input(format!(
                "{}: neither a VOC dataset (JPEGImages/, SegmentationClass/) nor a composed one ({split}/images/, {split}/masks/)",
                root.display()
            )));
        };
        if !list.is_file() {
            return Err(missing(&list, "the split's list (ImageSets/Segmentation/SPLIT.txt)"));
        }
        let text = limits::read_file(&list, MAX_JSON_BYTES)?;
        let text = String::from_utf8(text).map_err(|_| Error::format(&list, "image list", "not UTF-8 text"))?;
        let (mut names, mut images, mut masks) = (Vec::new(), Vec::new(), Vec::new());
        for (n, line) in text.lines().enumerate() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.is_empty() {
                continue;
            }
            if name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(Error::format(
                    &list,
                    "image list",
                    format!("line {}: `{name}` is not a plain file name", n + 1),
                ));
            }
            let (image, mask) = match layout {
                Layout::Voc => {
                    let dir = root.join("JPEGImages");
                    let image = ["jpg", "jpeg", "png"]
                        .iter()
                        .map(|e| dir.join(format!("{name}.{e}")))
                        .find(|p| p.is_file())
                        .ok_or_else(|| missing(&dir.join(format!("{name}.jpg")), "image"))?;
                    (image, root.join("SegmentationClass").join(format!("{name}.png")))
                }
                Layout::Composed => {
                    let dir = root.join(split).join("images");
                    let image = ["png", "jpg"]
                        .iter()
                        .map(|e| dir.join(format!("{name}.{e}")))
                        .find(|p| p.is_file())
                        .ok_or_else(|| missing(&dir.join(format!("{name}.png")), "image"))?;
                    (image, root.join(split).join("masks").join(format!("{name}.png")))
                }
            };
            if !image.is_file() {
                return Err(missing(&image, "image"));
            }
            if !mask.is_file() {
                return Err(missing(&mask, "mask"));
            }
            names.push(name.to_string());
            images.push(image);
            masks.push(mask);
        }
        if names.is_empty() {
            return Err(Error::format(&list, "image list", "no image names"));
        }
        Ok(SegmentationSet { root: root.into(), split: split.into(), layout, names, class_names, images, masks })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are no images (never, for an opened set).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The image file of sample `i`.
    pub fn image_path(&self, i: usize) -> &Path {
        &self.images[i]
    }

    /// The mask file of sample `i`.
    pub fn mask_path(&self, i: usize) -> &Path {
        &self.masks[i]
    }

    /// Sample `i`, checked: the mask has the image's size and every label is below `classes`
    /// or 255 (errors name the mask file).
    pub fn load(&self, i: usize, classes: usize) -> Result<Sample> {
        let image = preprocess::decode(&self.images[i])?;
        let (w, h, mask) = read_mask(&self.masks[i])?;
        let path = &self.masks[i];
        if (w, h) != (image.width, image.height) {
            return Err(Error::format(
                path,
                "mask",
                format!(
                    "mask is {w}x{h} but its image {} is {}x{}",
                    self.images[i].display(),
                    image.width,
                    image.height
                ),
            ));
        }
        check_labels(path, &mask, classes)?;
        Ok(Sample { image, mask })
    }
}

/// The class names of a composed dataset: `background` then `dataset.json`'s `classes`.
fn composed_classes(root: &Path) -> Result<Vec<String>> {
    let path = root.join("dataset.json");
    if !path.is_file() {
        return Err(missing(&path, "dataset.json of a composed dataset"));
    }
    let bytes = limits::read_file(&path, MAX_JSON_BYTES)?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::format(&path, "JSON", e.to_string()))?;
    let classes = v["classes"]
        .as_array()
        .and_then(|a| a.iter().map(|c| c.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>())
        .ok_or_else(|| Error::format(&path, "JSON", "no `classes` array of names"))?;
    Ok(std::iter::once("background".to_string()).chain(classes).collect())
}

/// Errors naming `path` if a label is neither below `classes` nor 255.
pub fn check_labels(path: &Path, mask: &[u8], classes: usize) -> Result<()> {
    if let Some((i, &v)) = mask.iter().enumerate().find(|(_, &v)| v != IGNORE && v as usize >= classes) {
        return Err(Error::format(
            path,
            "mask",
            format!("label {v} at pixel {i} is neither below the {classes} classes nor 255 (ignore)"),
        ));
    }
    Ok(())
}

/// An 8-bit palette or grey PNG's indices: `(width, height, indices)`. Colour masks (RGB, where
/// the class is encoded as a colour) and other bit depths are errors naming the file.
pub fn read_mask(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let bytes = limits::read_file(path, MAX_IMAGE_FILE_BYTES)?;
    let bad = |d: String| Error::format(path, "mask PNG", d);
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec.read_info().map_err(|e| bad(e.to_string()))?;
    let info = reader.info();
    let (w, h) = (info.width as usize, info.height as usize);
    let (color, depth) = (info.color_type, info.bit_depth);
    if !matches!(color, png::ColorType::Indexed | png::ColorType::Grayscale) {
        return Err(bad(format!(
            "colour type {color:?}: a class mask must be a palette or grey PNG whose values are class indices"
        )));
    }
    if depth != png::BitDepth::Eight {
        return Err(bad(format!("bit depth {depth:?}: class masks must have 8 bits per pixel")));
    }
    if w as u64 * h as u64 > MAX_DECODED_PIXELS {
        return Err(bad(format!("{w}x{h} is more than the {MAX_DECODED_PIXELS} pixels allowed")));
    }
    let mut buf = vec![0u8; reader.output_buffer_size().ok_or_else(|| bad("image too large".into()))?];
    let frame = reader.next_frame(&mut buf).map_err(|e| bad(e.to_string()))?;
    let stride = frame.line_size;
    let mut out = Vec::with_capacity(w * h);
    for row in buf.chunks(stride).take(h) {
        out.extend_from_slice(&row[..w]);
    }
    if out.len() != w * h {
        return Err(bad("truncated image data".into()));
    }
    Ok((w, h, out))
}
