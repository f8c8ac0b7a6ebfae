//! Detection datasets in the formats people have, read into one type, [`DetectionDataset`]:
//!
//! - **COCO** instances JSON ([`DetectionDataset::open_coco`]): `images` (`id`, `file_name`,
//!   `width`, `height`), `annotations` (`id`, `image_id`, `category_id`, `bbox` `[x, y, w, h]`,
//!   `area`, `iscrowd`, `segmentation` as polygons or RLE, whose shape is checked but which is
//!   not decoded or kept), `categories` (`id`, `name`). Classes are the categories sorted by id.
//! - **Pascal VOC** ([`DetectionDataset::open_voc`]): `ImageSets/Main/SPLIT.txt` (one image id
//!   a line), `Annotations/ID.xml` (`size`, `filename`, `object`s with `name`, `difficult`,
//!   `bndbox` `xmin ymin xmax ymax`), `JPEGImages/`. Classes are VOC's 20 unless given. VOC's
//!   1-based inclusive pixel coordinates become continuous ones: `(xmin - 1, ymin - 1, xmax, ymax)`.
//!
//! Boxes are `[x0, y0, x1, y1]` in pixels of the image (continuous coordinates: a box over the
//! whole image is `[0, 0, width, height]`). A box may overshoot its image by up to one pixel
//! (real files mix 0- and 1-based coordinates and round); it is clipped. Anything else wrong
//! with a record (a box further outside, a zero or negative size, an unknown category or
//! class name, an unknown image, a duplicate id, a missing image file, a bad `segmentation`,
//! an unreadable or truncated VOC XML file) stops the read with a one-line error naming the
//! file and the record, or, with [`BadAnnotations::Skip`], drops the record (an image with
//! its boxes) and counts it in [`DetectionDataset::skipped`]. A JSON file that does not parse
//! (truncated, a duplicate key, a wrong type) is always an error: its records cannot be trusted.
//!
//! Memory is bounded before reading: COCO JSON by [`MAX_COCO_JSON_BYTES`] (streamed, polygons
//! not kept), each VOC XML by [`MAX_VOC_XML_BYTES`], the split list by
//! [`crate::limits::MAX_FILE_BYTES`].

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

pub use super::coco::MAX_COCO_JSON_BYTES;
use super::coco::{read_json, InstancesFile, Segmentation};
use super::cocoeval::{DetectionResult, GroundTruth, GtAnnotation};
use super::detector::PixelDetection;
use crate::error::{Error, Result};
use crate::limits;

/// Bytes of one VOC annotation file (a real one is 1-3 KB).
pub const MAX_VOC_XML_BYTES: u64 = 1 << 20;

/// Messages of skipped records kept for the caller to show (the count goes on).
const MAX_SKIP_MESSAGES: usize = 100;

/// The 20 Pascal VOC object classes, in the order of the VOC devkit.
pub const VOC_CLASSES: &[&str] = crate::labels::VOC.split_at(1).1;

/// What to do with a malformed record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BadAnnotations {
    /// Stop with an error naming the file and the record.
    #[default]
    Stop,
    /// Leave the record out (a bad box alone; a bad image with its boxes) and count it.
    Skip,
}

/// The format a dataset was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetFormat {
    /// COCO instances JSON.
    Coco,
    /// Pascal VOC XML.
    Voc,
}

/// A class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Category {
    /// Its id in the file (COCO's `category_id`; for VOC, its index + 1).
    pub id: i64,
    /// Its name.
    pub name: String,
}

/// One annotated box.
#[derive(Clone, Debug, PartialEq)]
pub struct GtBox {
    /// The annotation's id (COCO's; for VOC, numbered from 1 in reading order).
    pub id: i64,
    /// `[x0, y0, x1, y1]` in pixels, inside the image, `x0 < x1`, `y0 < y1`.
    pub bbox: [f32; 4],
    /// Index into [`DetectionDataset::categories`].
    pub class: usize,
    /// COCO's `iscrowd`: a region of many objects (not a training target; ignored in evaluation).
    pub crowd: bool,
    /// VOC's `difficult` (ignored in evaluation).
    pub difficult: bool,
    /// COCO's `area` (the segment's), else the box's.
    pub area: f32,
}

/// One image and its boxes.
#[derive(Clone, Debug, PartialEq)]
pub struct DetImage {
    /// Its id (COCO's; for VOC, its position in the split from 1).
    pub id: i64,
    /// The image file (checked to exist).
    pub path: PathBuf,
    /// Width in pixels, as the annotations say.
    pub width: u32,
    /// Height in pixels, as the annotations say.
    pub height: u32,
    /// Its boxes, in file order.
    pub boxes: Vec<GtBox>,
}

/// A detection dataset: classes, images and boxes, from COCO or VOC files.
#[derive(Clone, Debug)]
pub struct DetectionDataset {
    /// The format it was read from.
    pub format: DatasetFormat,
    /// What it was read from: the COCO JSON file, or the VOC root folder.
    pub source: PathBuf,
    /// The classes; a box's `class` indexes this.
    pub categories: Vec<Category>,
    /// The images, in file order (COCO) or split-list order (VOC).
    pub images: Vec<DetImage>,
    /// Records left out under [`BadAnnotations::Skip`] (boxes, and images with all their boxes).
    pub skipped: usize,
    /// The first messages of the skipped records, one line each.
    pub skip_messages: Vec<String>,
}

/// Collects errors: the first stops the read under `Stop`, each is counted under `Skip`.
struct Bad {
    mode: BadAnnotations,
    skipped: usize,
    messages: Vec<String>,
}

impl Bad {
    fn new(mode: BadAnnotations) -> Bad {
        Bad { mode, skipped: 0, messages: Vec::new() }
    }

    /// `Err(e)` under `Stop`; under `Skip`, counts `e` and returns `Ok`.
    fn record(&mut self, e: Error) -> Result<()> {
        match self.mode {
            BadAnnotations::Stop => Err(e),
            BadAnnotations::Skip => {
                self.skipped += 1;
                if self.messages.len() < MAX_SKIP_MESSAGES {
                    self.messages.push(e.to_string());
                }
                Ok(())
            }
        }
    }
}

/// A file name inside the image folder: relative, no `..`.
fn safe_relative(name: &str) -> std::result::Result<&Path, String> {
    let p = Path::new(name);
    if name.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("file name {:?} is not a plain path inside the image folder", limits::clip(name, 80)));
    }
    Ok(p)
}

/// Checks a box `[x0, y0, x1, y1]` against its image and clips up to one pixel of overshoot.
fn check_box(b: [f64; 4], width: u32, height: u32) -> std::result::Result<[f32; 4], String> {
    let [x0, y0, x1, y1] = b;
    if !b.iter().all(|v| v.is_finite()) {
        return Err(format!("box {b:?} is not finite"));
    }
    if x1 <= x0 || y1 <= y0 {
        return Err(format!("box [{x0}, {y0}, {x1}, {y1}] has a zero or negative size"));
    }
    let (w, h) = (width as f64, height as f64);
    if x0 < -1.0 || y0 < -1.0 || x1 > w + 1.0 || y1 > h + 1.0 {
        return Err(format!("box [{x0}, {y0}, {x1}, {y1}] lies outside the {width}x{height} image"));
    }
    let c = [x0.max(0.0), y0.max(0.0), x1.min(w), y1.min(h)];
    if c[2] <= c[0] || c[3] <= c[1] {
        return Err(format!("box [{x0}, {y0}, {x1}, {y1}] lies outside the {width}x{height} image"));
    }
    Ok(c.map(|v| v as f32))
}

fn image_size(w: Option<u64>, h: Option<u64>) -> std::result::Result<(u32, u32), String> {
    let (Some(w), Some(h)) = (w, h) else { return Err("`width` and `height` are required".into()) };
    let side = limits::MAX_IMAGE_SIDE as u64;
    if w == 0 || h == 0 || w > side || h > side || w * h > limits::MAX_DECODED_PIXELS {
        return Err(format!("size {w}x{h} is not an image this library reads"));
    }
    Ok((w as u32, h as u32))
}

impl DetectionDataset {
    /// Reads a COCO instances file whose `file_name`s are relative to `images_dir`.
    pub fn open_coco(annotations: &Path, images_dir: &Path, mode: BadAnnotations) -> Result<DetectionDataset> {
        const FMT: &str = "COCO annotations";
        let f: InstancesFile = read_json(annotations, MAX_COCO_JSON_BYTES, FMT)?;
        let err = |d: String| Error::format(annotations, FMT, d);
        let mut bad = Bad::new(mode);

        let mut cats: Vec<Category> = Vec::with_capacity(f.categories.len());
        let mut seen = HashSet::new();
        for c in f.categories {
            if !seen.insert(c.id) {
                bad.record(err(format!("category {}: the id is listed twice", c.id)))?;
                continue;
            }
            cats.push(Category { id: c.id, name: c.name.unwrap_or_else(|| c.id.to_string()) });
        }
        cats.sort_by_key(|c| c.id);
        let class_of: HashMap<i64, usize> = cats.iter().enumerate().map(|(k, c)| (c.id, k)).collect();

        let mut images: Vec<DetImage> = Vec::with_capacity(f.images.len());
        let mut index: HashMap<i64, usize> = HashMap::with_capacity(f.images.len());
        let mut dropped: HashSet<i64> = HashSet::new();
        for im in f.images {
            if index.contains_key(&im.id) || dropped.contains(&im.id) {
                // The first record of the id stands (or was dropped); this one goes.
                bad.record(err(format!("image {}: the id is listed twice", im.id)))?;
                continue;
            }
            let checked = (|| {
                let (width, height) = image_size(im.width, im.height)?;
                let name = im.file_name.as_deref().ok_or("`file_name` is required")?;
                let path = images_dir.join(safe_relative(name)?);
                if !path.is_file() {
                    return Err(format!("image file {} does not exist", path.display()));
                }
                Ok(DetImage { id: im.id, path, width, height, boxes: Vec::new() })
            })();
            match checked {
                Ok(d) => {
                    index.insert(im.id, images.len());
                    images.push(d);
                }
                Err(d) => {
                    bad.record(err(format!("image {}: {d}", im.id)))?;
                    dropped.insert(im.id);
                }
            }
        }

        let mut ann_ids = HashSet::with_capacity(f.annotations.len());
        for a in f.annotations {
            if dropped.contains(&a.image_id) {
                // Its image was skipped (and counted): so are its boxes, silently.
                continue;
            }
            let checked = (|| {
                if !ann_ids.insert(a.id) {
                    return Err("the id is used twice".to_string());
                }
                let &i = index.get(&a.image_id).ok_or("its image is not among the images")?;
                let &class = class_of.get(&a.category_id).ok_or(format!("category {} is not listed", a.category_id))?;
                let im = &images[i];
                let [x, y, w, h] = super::cocoeval::box4(&a.bbox)?;
                let bbox = check_box([x, y, x + w, y + h], im.width, im.height)
                    .map_err(|e| format!("{e} (bbox [x, y, w, h] = {:?})", a.bbox))?;
                let crowd = match a.iscrowd.unwrap_or(0) {
                    0 => false,
                    1 => true,
                    v => return Err(format!("iscrowd is {v}, not 0 or 1")),
                };
                let area = a.area.unwrap_or(w * h);
                if !(area.is_finite() && area >= 0.0 && (area as f32).is_finite()) {
                    return Err(format!("area {area:e} is not a finite non-negative number (as f32)"));
                }
                match &a.segmentation {
                    Some(Segmentation::Invalid(why)) => return Err(format!("segmentation: {why}")),
                    Some(Segmentation::Rle { height, width })
                        if (*height, *width) != (im.height as u64, im.width as u64) =>
                    {
                        return Err(format!(
                            "segmentation: RLE size [{height}, {width}] is not the image's [{}, {}]",
                            im.height, im.width
                        ))
                    }
                    _ => {}
                }
                Ok((i, GtBox { id: a.id, bbox, class, crowd, difficult: false, area: area as f32 }))
            })();
            match checked {
                Ok((i, b)) => images[i].boxes.push(b),
                Err(d) => bad.record(err(format!("annotation {} (image {}): {d}", a.id, a.image_id)))?,
            }
        }
        Ok(DetectionDataset {
            format: DatasetFormat::Coco,
            source: annotations.to_path_buf(),
            categories: cats,
            images,
            skipped: bad.skipped,
            skip_messages: bad.messages,
        })
    }

    /// Reads the Pascal VOC split `split` (`ImageSets/Main/SPLIT.txt`) under `root` (the folder
    /// holding `Annotations/`, `ImageSets/` and `JPEGImages/`). `classes`: the class names in
    /// order, VOC's 20 ([`VOC_CLASSES`]) when `None`; an object of another name is a bad record.
    pub fn open_voc(
        root: &Path,
        split: &str,
        classes: Option<&[String]>,
        mode: BadAnnotations,
    ) -> Result<DetectionDataset> {
        let names: Vec<String> = match classes {
            Some(c) => c.to_vec(),
            None => VOC_CLASSES.iter().map(|s| s.to_string()).collect(),
        };
        let class_of: HashMap<&str, usize> = names.iter().enumerate().map(|(k, n)| (n.as_str(), k)).collect();
        let list_path = root
            .join("ImageSets")
            .join("Main")
            .join(format!("{}.txt", safe_relative(split).map_err(Error::Input)?.display()));
        let list = limits::read_file(&list_path, limits::MAX_FILE_BYTES)?;
        let list =
            String::from_utf8(list).map_err(|_| Error::format(&list_path, "VOC image list", "not UTF-8 text"))?;
        let mut bad = Bad::new(mode);
        let mut images = Vec::new();
        let mut seen = HashSet::new();
        let mut next_box_id = 1i64;
        for (line_no, line) in list.lines().enumerate() {
            let Some(id) = line.split_whitespace().next() else { continue };
            let list_err =
                |d: String| Error::format(&list_path, "VOC image list", format!("line {}: {d}", line_no + 1));
            if let Err(d) = safe_relative(id) {
                bad.record(list_err(d))?;
                continue;
            }
            if !seen.insert(id.to_string()) {
                bad.record(list_err(format!("image {id} is listed twice")))?;
                continue;
            }
            let xml_path = root.join("Annotations").join(format!("{id}.xml"));
            match read_voc_xml(&xml_path, root, id, &class_of, &mut bad, &mut next_box_id) {
                Ok(mut im) => {
                    im.id = images.len() as i64 + 1;
                    images.push(im)
                }
                Err(e) => bad.record(e)?,
            }
        }
        let categories = names.into_iter().enumerate().map(|(k, name)| Category { id: k as i64 + 1, name }).collect();
        Ok(DetectionDataset {
            format: DatasetFormat::Voc,
            source: root.to_path_buf(),
            categories,
            images,
            skipped: bad.skipped,
            skip_messages: bad.messages,
        })
    }

    /// Reads the split `split` of the dataset under `dir`, whichever layout it has:
    /// - `dir/SPLIT/instances.json` with the images in `dir/SPLIT/images/` (`mnv2 dataset compose`);
    /// - `dir/annotations/instances_SPLIT.json` with the images in `dir/SPLIT/` (COCO 2017);
    /// - `dir/ImageSets/Main/SPLIT.txt` with `Annotations/` and `JPEGImages/` (Pascal VOC, its 20 classes).
    pub fn open(dir: &Path, split: &str, mode: BadAnnotations) -> Result<DetectionDataset> {
        let split_p = safe_relative(split).map_err(Error::Input)?;
        let composed = dir.join(split_p).join("instances.json");
        if composed.is_file() {
            return DetectionDataset::open_coco(&composed, &dir.join(split_p).join("images"), mode);
        }
        let coco = dir.join("annotations").join(format!("instances_{split}.json"));
        if coco.is_file() {
            return DetectionDataset::open_coco(&coco, &dir.join(split_p), mode);
        }
        if dir.join("ImageSets").join("Main").join(format!("{split}.txt")).is_file() {
            return DetectionDataset::open_voc(dir, split, None, mode);
        }
        Err(Error::Input(format!(
            "{}: no detection dataset for split `{split}`: expected {split}/instances.json, \
             annotations/instances_{split}.json (COCO) or ImageSets/Main/{split}.txt (Pascal VOC)",
            dir.display()
        )))
    }

    /// Number of boxes, over all images.
    pub fn num_boxes(&self) -> usize {
        self.images.iter().map(|i| i.boxes.len()).sum()
    }

    /// COCO results records of what a detector found in image `image` (an index into
    /// [`DetectionDataset::images`]): boxes as `[x, y, w, h]`, the detector's class `k` as the
    /// `k`-th category (the TF Object Detection API's contiguous numbering of the categories by
    /// id). A class past the categories is an error.
    pub fn results_for(&self, image: usize, found: &[PixelDetection]) -> Result<Vec<DetectionResult>> {
        let im = &self.images[image];
        found
            .iter()
            .map(|d| {
                let cat = self.categories.get(d.class).ok_or_else(|| {
                    Error::Input(format!(
                        "the detector's class {} has no category: the dataset has {}",
                        d.class,
                        self.categories.len()
                    ))
                })?;
                let [x0, y0, x1, y1] = d.bbox.map(|v| v as f64);
                Ok(DetectionResult {
                    image_id: im.id,
                    category_id: cat.id,
                    bbox: [x0, y0, x1 - x0, y1 - y0],
                    score: d.score as f64,
                })
            })
            .collect()
    }

    /// The dataset as ground truth for [`super::cocoeval::evaluate`]: boxes as `[x, y, w, h]`,
    /// crowd and difficult boxes as `iscrowd` (pycocotools' only way to ignore a box: a
    /// detection on it neither counts nor hurts), areas as read. For a COCO dataset, evaluating
    /// against its JSON with [`GroundTruth::load`] is exact; this goes through the clipped
    /// `f32` boxes.
    pub fn to_ground_truth(&self) -> GroundTruth {
        let images = self.images.iter().map(|i| i.id).collect();
        let categories = self.categories.iter().map(|c| c.id).collect();
        let anns = self
            .images
            .iter()
            .flat_map(|im| {
                im.boxes.iter().map(move |b| {
                    let [x0, y0, x1, y1] = b.bbox.map(|v| v as f64);
                    GtAnnotation {
                        id: b.id,
                        image_id: im.id,
                        category_id: self.categories[b.class].id,
                        bbox: [x0, y0, x1 - x0, y1 - y0],
                        area: b.area as f64,
                        iscrowd: b.crowd || b.difficult,
                    }
                })
            })
            .collect();
        GroundTruth::new(images, categories, anns).expect("a dataset's ids are unique and its boxes known")
    }
}

/// One VOC annotation file: the image (boxes that are bad go to `bad`), or the error that
/// makes the whole file unusable.
fn read_voc_xml(
    path: &Path,
    root: &Path,
    id: &str,
    class_of: &HashMap<&str, usize>,
    bad: &mut Bad,
    next_box_id: &mut i64,
) -> Result<DetImage> {
    const FMT: &str = "Pascal VOC annotation";
    let err = |d: String| Error::format(path, FMT, d);
    let bytes = limits::read_file(path, MAX_VOC_XML_BYTES)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| err("not UTF-8 text".into()))?;
    let doc = roxmltree::Document::parse(text).map_err(|e| err(e.to_string()))?;
    let ann = doc.root_element();
    if ann.tag_name().name() != "annotation" {
        return Err(err(format!("the root element is <{}>, not <annotation>", ann.tag_name().name())));
    }
    let size = only_child(ann, "size").map_err(err)?.ok_or_else(|| err("<size> is missing".into()))?;
    let num = |parent: roxmltree::Node, tag: &str| -> std::result::Result<f64, String> {
        let t = only_child(parent, tag)?.ok_or(format!("<{tag}> is missing"))?;
        let s = t.text().unwrap_or("").trim();
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or(format!("<{tag}> is {:?}, not a number", limits::clip(s, 40)))
    };
    let int = |v: f64, tag: &str| -> std::result::Result<u64, String> {
        if v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
            Ok(v as u64)
        } else {
            Err(format!("<{tag}> is {v}, not a pixel count"))
        }
    };
    let w = num(size, "width").and_then(|v| int(v, "width")).map_err(err)?;
    let h = num(size, "height").and_then(|v| int(v, "height")).map_err(err)?;
    let (width, height) = image_size(Some(w), Some(h)).map_err(err)?;
    let file = match only_child(ann, "filename").map_err(err)? {
        Some(n) => n.text().unwrap_or("").trim().to_string(),
        None => format!("{id}.jpg"),
    };
    let image_path = root.join("JPEGImages").join(safe_relative(&file).map_err(err)?);
    if !image_path.is_file() {
        return Err(err(format!("image file {} does not exist", image_path.display())));
    }
    let mut boxes = Vec::new();
    for (n, obj) in ann.children().filter(|c| c.has_tag_name("object")).enumerate() {
        let checked = (|| {
            let name_node = only_child(obj, "name")?.ok_or("<name> is missing")?;
            let name = name_node.text().unwrap_or("").trim();
            let &class =
                class_of.get(name).ok_or(format!("class {:?} is not one of the classes", limits::clip(name, 40)))?;
            let difficult = match only_child(obj, "difficult")? {
                None => false,
                Some(d) => match d.text().unwrap_or("").trim() {
                    "0" => false,
                    "1" => true,
                    v => return Err(format!("<difficult> is {:?}, not 0 or 1", limits::clip(v, 20))),
                },
            };
            let bb = only_child(obj, "bndbox")?.ok_or("<bndbox> is missing")?;
            let (xmin, ymin, xmax, ymax) = (num(bb, "xmin")?, num(bb, "ymin")?, num(bb, "xmax")?, num(bb, "ymax")?);
            if xmax < xmin || ymax < ymin {
                return Err(format!("box xmin {xmin} ymin {ymin} xmax {xmax} ymax {ymax} has a zero or negative size"));
            }
            let bbox = check_box([xmin - 1.0, ymin - 1.0, xmax, ymax], width, height)
                .map_err(|e| format!("{e} (xmin {xmin} ymin {ymin} xmax {xmax} ymax {ymax})"))?;
            let area = (bbox[2] - bbox[0]) * (bbox[3] - bbox[1]);
            Ok::<_, String>(GtBox { id: 0, bbox, class, crowd: false, difficult, area })
        })();
        match checked {
            Ok(mut b) => {
                b.id = *next_box_id;
                *next_box_id += 1;
                boxes.push(b);
            }
            Err(d) => bad.record(err(format!("object {n}: {d}")))?,
        }
    }
    Ok(DetImage { id: 0, path: image_path, width, height, boxes })
}

/// The one child element `tag` of `parent`: `None` if absent, an error if repeated (XML's
/// duplicate key).
fn only_child<'a, 'i>(
    parent: roxmltree::Node<'a, 'i>,
    tag: &str,
) -> std::result::Result<Option<roxmltree::Node<'a, 'i>>, String> {
    let mut it = parent.children().filter(|c| c.has_tag_name(tag));
    let first = it.next();
    if it.next().is_some() {
        return Err(format!("<{}> has more than one <{tag}>", parent.tag_name().name()));
    }
    Ok(first)
}
