//! A scene dataset built from real content (`mnv2 dataset compose`): Fashion-MNIST items pasted
//! at random scales, positions and overlaps onto random crops of real photographs and textures,
//! with exact boxes and per-pixel instance masks, for detection and segmentation.
//!
//! Everything is a function of the seed: image `i` of a split draws from its own generator
//! (seeded from the seed, the split and `i`), so the output is the same byte for byte whatever
//! the number of threads.
//!
//! How an image is made:
//! * **Background**: one of the background photos (sorted by file name), a random square crop
//!   of 40-100 % of its shorter side, mirrored with probability 1/2, resized (PIL bilinear) to
//!   `size x size`.
//! * **Items**: `items.0..=items.1` draws; each takes a random item of the split's IDX file
//!   (train items for `train`, the test file's (`t10k`) items for `val`, so the splits share no
//!   item), scales it to a side in `scale.0..=scale.1` (aspect jittered 0.8-1.25), tints it
//!   with a random colour and places it wholly inside the image.
//! * **Mask**: an item's pixels are those whose scaled intensity exceeds
//!   [`ComposeConfig::threshold`] (Fashion-MNIST items are light on black). They are pasted
//!   with a hard mask (alpha 1 inside, 0 outside), so the image and the masks agree exactly;
//!   later items occlude earlier ones.
//! * **Occlusion rule**: a placement is refused if it would leave any earlier item with less
//!   than [`ComposeConfig::min_visible`] of its own pixels visible or fewer than
//!   [`ComposeConfig::min_pixels`] pixels (and an item smaller than `min_pixels` is refused);
//!   up to [`ComposeConfig::tries`] placements are drawn, then the item is left out. So no
//!   annotation is ever dropped after the fact: every pasted item is annotated, and every
//!   annotated pixel shows its item.
//!
//! Written per split (`DIR/train`, `DIR/val`):
//! * `images/NNNNNN.png`: RGB, `NNNNNN` the COCO image id (from 1); `.jpg` with
//!   [`ComposeConfig::jpeg_quality`];
//! * `masks/NNNNNN.png`: VOC-style class masks, 8-bit palette PNG (VOC's palette), 0 =
//!   background, `1..=10` the Fashion-MNIST classes (no ignore label: every pixel is exact);
//! * `instances.json`: COCO instances: `images`, `annotations` (`bbox` `[x, y, w, h]` of the
//!   visible mask in pixels, `area` = visible pixel count, `iscrowd` 0, `segmentation` as
//!   uncompressed RLE `{"counts", "size": [h, w]}` in column-major order as COCO's, and
//!   `unoccluded_area` and `source` (the IDX file and item index) as extra fields),
//!   `categories` (ids 1..=10 with the dataset's class names);
//! * `DIR/ImageSets/Segmentation/{train,val}.txt`: the image names per split, one per line;
//! * `DIR/dataset.json`: the configuration, the backgrounds and the counts.
//!
//! The whole tree is written into a hidden sibling folder (`.DIR.partial-PID`) and renamed to
//! `DIR` when complete, so a half-written dataset never looks like one; such folders left by
//! killed runs are removed by the next run (on Linux, once their process is gone).

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::preprocess::{self, RgbImage};
use crate::rng::Rng;
use crate::segment::Segmentation;

use super::Dataset;

/// Options of [`compose`]. [`ComposeConfig::default`] is the dataset of the issue: 20000 train
/// and 2000 val images at 320x320.
#[derive(Clone, Debug, PartialEq)]
pub struct ComposeConfig {
    /// Seed of everything random.
    pub seed: u64,
    /// Training images.
    pub train: usize,
    /// Validation images.
    pub val: usize,
    /// Side of the square images, in pixels.
    pub size: usize,
    /// Item draws per image, inclusive range.
    pub items: (usize, usize),
    /// An item's longer side after scaling, in pixels, inclusive range.
    pub scale: (usize, usize),
    /// A scaled item's pixel belongs to its mask when its intensity exceeds this.
    pub threshold: u8,
    /// Smallest visible fraction of an item's own mask that occlusion may leave.
    pub min_visible: f64,
    /// Smallest visible pixel count of an item.
    pub min_pixels: usize,
    /// Placements drawn per item before it is left out.
    pub tries: usize,
    /// Write the images as JPEG of this quality (1..=100) instead of PNG: a 320x320 photo is
    /// about 180 kB as PNG, so the default 22000 images take about 4 GB; the masks stay PNG
    /// and the ground truth stays exact (it describes the composition, before compression).
    pub jpeg_quality: Option<u8>,
}

impl Default for ComposeConfig {
    fn default() -> Self {
        ComposeConfig::for_size(320)
    }
}

impl ComposeConfig {
    /// The defaults at another image side: items 2..=8 per image, scaled to 1/10..2/5 of the side.
    pub fn for_size(size: usize) -> ComposeConfig {
        ComposeConfig {
            seed: 0,
            train: 20_000,
            val: 2_000,
            size,
            items: (2, 8),
            scale: ((size / 10).max(8), (size * 2 / 5).max(8)),
            threshold: 32,
            min_visible: 0.3,
            min_pixels: 16,
            tries: 10,
            jpeg_quality: None,
        }
    }

    /// Checks the ranges; the error says which option is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(Error::Input(s));
        if !(16..=4096).contains(&self.size) {
            return bad(format!("image size {} is outside 16..=4096", self.size));
        }
        if self.items.0 > self.items.1 || self.items.1 > 1000 {
            return bad(format!("items per image {}..{} is not a range within 0..=1000", self.items.0, self.items.1));
        }
        if self.scale.0 < 4 || self.scale.0 > self.scale.1 || self.scale.1 * 5 > self.size * 4 {
            return bad(format!(
                "item scale {}..{} must be a range from 4 up to 4/5 of the image side {}",
                self.scale.0, self.scale.1, self.size
            ));
        }
        if !(0.0..=1.0).contains(&self.min_visible) {
            return bad(format!("minimum visible fraction {} is outside [0, 1]", self.min_visible));
        }
        if self.jpeg_quality.is_some_and(|q| !(1..=100).contains(&q)) {
            return bad(format!("JPEG quality {} is outside 1..=100", self.jpeg_quality.unwrap_or(0)));
        }
        if self.train == 0 && self.val == 0 {
            return bad("no images to make (--train 0 --val 0)".into());
        }
        Ok(())
    }
}

/// One split's items: 8-bit gray `h x w` images with labels, from an IDX file.
#[derive(Clone, Debug)]
pub struct Items {
    /// The images file, recorded in each annotation's `source`.
    pub file: PathBuf,
    /// Class per item.
    pub labels: Vec<usize>,
    /// Items' pixels, `labels.len() * h * w`, row-major.
    pub pixels: Vec<u8>,
    /// Item height.
    pub h: usize,
    /// Item width.
    pub w: usize,
}

impl Items {
    fn from_dataset(ds: &Dataset) -> Result<Items> {
        let (mut pixels, mut hw) = (Vec::new(), (0, 0));
        for i in 0..ds.len() {
            let img = ds.image(i)?;
            hw = (img.height, img.width);
            pixels.extend(img.data.chunks_exact(3).map(|p| p[0]));
        }
        Ok(Items { file: ds.path.clone(), labels: ds.labels.clone(), pixels, h: hw.0, w: hw.1 })
    }

    fn item(&self, i: usize) -> &[u8] {
        &self.pixels[i * self.h * self.w..(i + 1) * self.h * self.w]
    }
}

/// What [`compose`] pastes from and onto.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Class names, in label order (category id = label + 1).
    pub classes: Vec<String>,
    /// Items of the train split (the IDX train file).
    pub train: Items,
    /// Items of the val split (the IDX test file, `t10k`).
    pub val: Items,
    /// Background photos: file name and pixels.
    pub backgrounds: Vec<(String, RgbImage)>,
}

impl Sources {
    /// Opens an IDX folder holding `train-images-idx3-ubyte[.gz]` and `t10k-images-idx3-ubyte[.gz]`
    /// (with their labels) and a folder of background photos (every `.png`, `.jpg` and `.jpeg`
    /// directly in it, by sorted name).
    pub fn open(idx_dir: &Path, backgrounds: &Path) -> Result<Sources> {
        let missing = |what: &str| {
            Error::Input(format!(
                "{}: no {what}-images-idx3-ubyte[.gz] (Fashion-MNIST: bash scripts/train/fetch_fashion_mnist.sh)",
                idx_dir.display()
            ))
        };
        let train = Dataset::open_idx(&super::find_idx(idx_dir, "train").ok_or_else(|| missing("train"))?)?;
        let val = Dataset::open_idx(&super::find_idx(idx_dir, "t10k").ok_or_else(|| missing("t10k"))?)?;
        let classes = if train.classes.len() >= val.classes.len() { &train.classes } else { &val.classes };
        if classes.len() > 254 {
            return Err(Error::Input(format!(
                "{}: {} classes, at most 254 fit a class mask",
                idx_dir.display(),
                classes.len()
            )));
        }
        let classes = classes.clone();
        let mut files: Vec<PathBuf> = std::fs::read_dir(backgrounds)
            .map_err(|e| Error::io(backgrounds, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Input(format!(
                "{}: no PNG or JPEG backgrounds (bash scripts/fetch_backgrounds.sh puts real ones in data/backgrounds)",
                backgrounds.display()
            )));
        }
        let mut bgs = Vec::with_capacity(files.len());
        for f in files {
            let img = preprocess::decode(&f)?;
            if img.width < 8 || img.height < 8 {
                return Err(Error::Image {
                    path: f,
                    detail: format!("{}x{} is too small for a background", img.width, img.height),
                });
            }
            bgs.push((f.file_name().unwrap_or_default().to_string_lossy().into_owned(), img));
        }
        Ok(Sources { classes, train: Items::from_dataset(&train)?, val: Items::from_dataset(&val)?, backgrounds: bgs })
    }
}

/// One annotated instance of a composed image.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// Class label (category id - 1).
    pub label: usize,
    /// Index of the item in its split's IDX file.
    pub item: usize,
    /// Tight box of the visible mask: `[x, y, w, h]` in pixels.
    pub bbox: [usize; 4],
    /// Visible pixels.
    pub area: usize,
    /// Pixels of the item's own mask before occlusion.
    pub unoccluded_area: usize,
    /// COCO uncompressed RLE of the visible mask, column-major, starting with a run of zeros.
    pub rle: Vec<u32>,
}

/// One composed image with its ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    /// The image, `size x size`.
    pub image: RgbImage,
    /// File name of the background photo.
    pub background: String,
    /// Per pixel, row-major: 0 for background, else the index into `instances` plus 1.
    pub instance_map: Vec<u16>,
    /// The instances, in paste order (later ones on top).
    pub instances: Vec<Instance>,
    /// Items drawn but left out by the occlusion rule (no placement among the tries fitted).
    pub left_out: usize,
}

impl Scene {
    /// The class mask: 0 background, label + 1 on each instance's visible pixels.
    pub fn class_map(&self) -> Vec<u8> {
        self.instance_map
            .iter()
            .map(|&id| if id == 0 { 0 } else { self.instances[id as usize - 1].label as u8 + 1 })
            .collect()
    }
}

/// The splits of a composed dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Items from the IDX train file.
    Train,
    /// Items from the IDX test file.
    Val,
}

impl Split {
    /// `train` or `val`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform integer in `lo..=hi`.
fn between(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + rng.below(hi - lo + 1)
}

/// COCO's uncompressed RLE of `mask(i)` over an `h x w` image, column-major: alternating
/// run lengths, the first one of zeros (possibly 0).
pub fn rle_encode(h: usize, w: usize, mask: impl Fn(usize) -> bool) -> Vec<u32> {
    let (mut counts, mut cur, mut run) = (Vec::new(), false, 0u32);
    for x in 0..w {
        for y in 0..h {
            let v = mask(y * w + x);
            if v != cur {
                counts.push(run);
                run = 0;
                cur = v;
            }
            run += 1;
        }
    }
    counts.push(run);
    counts
}

/// Image `index` of `split`: a pure function of the configuration, the sources and the
/// arguments.
pub fn compose_scene(cfg: &ComposeConfig, src: &Sources, split: Split, index: usize) -> Scene {
    let items = match split {
        Split::Train => &src.train,
        Split::Val => &src.val,
    };
    let mut rng = Rng::new(mix(mix(cfg.seed) ^ split as u64) ^ index as u64);
    let n = cfg.size;
    // Background: a square crop of 40..100 % of the shorter side, maybe mirrored, resized.
    let b = rng.below(src.backgrounds.len());
    let (bg_name, bg) = &src.backgrounds[b];
    let short = bg.width.min(bg.height);
    let side = ((short as f64) * (0.4 + 0.6 * rng.uniform())).round().clamp(1.0, short as f64) as usize;
    let (x0, y0) = (rng.below(bg.width - side + 1), rng.below(bg.height - side + 1));
    let flip = rng.below(2) == 1;
    let mut crop = Vec::with_capacity(side * side * 3);
    for y in y0..y0 + side {
        for x in 0..side {
            let sx = if flip { x0 + side - 1 - x } else { x0 + x };
            crop.extend_from_slice(&bg.data[(y * bg.width + sx) * 3..][..3]);
        }
    }
    let crop = RgbImage { width: side, height: side, data: crop };
    let mut image = if side == n { crop } else { preprocess::resize_bilinear(&crop, n, n) };

    let mut map = vec![0u16; n * n];
    let mut visible: Vec<usize> = Vec::new();
    let mut placed: Vec<(usize, usize, usize)> = Vec::new(); // (label, item, unoccluded area)
    let draws = between(&mut rng, cfg.items.0, cfg.items.1);
    let mut left_out = 0;
    for _ in 0..draws {
        let j = rng.below(items.labels.len());
        let gray = items.item(j);
        let src_img =
            RgbImage { width: items.w, height: items.h, data: gray.iter().flat_map(|&v| [v, v, v]).collect() };
        let tint = [0.35 + 0.65 * rng.uniform(), 0.35 + 0.65 * rng.uniform(), 0.35 + 0.65 * rng.uniform()];
        let mut accepted = false;
        for _ in 0..cfg.tries {
            let long = between(&mut rng, cfg.scale.0, cfg.scale.1);
            let aspect = 0.8 * (1.25f64 / 0.8).powf(rng.uniform());
            let (w, h) = if aspect >= 1.0 {
                (((long as f64) / aspect).round().max(1.0) as usize, long)
            } else {
                (long, ((long as f64) * aspect).round().max(1.0) as usize)
            };
            let (px, py) = (rng.below(n - w + 1), rng.below(n - h + 1));
            let scaled = preprocess::resize_bilinear(&src_img, w, h);
            let mask: Vec<bool> = scaled.data.chunks_exact(3).map(|p| p[0] > cfg.threshold).collect();
            let own = mask.iter().filter(|&&m| m).count();
            if own < cfg.min_pixels.max(1) {
                continue;
            }
            let mut covered = vec![0usize; visible.len()];
            for (k, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
                let id = map[(py + k / w) * n + px + k % w];
                if id > 0 {
                    covered[id as usize - 1] += 1;
                }
            }
            let ok = covered.iter().enumerate().all(|(i, &c)| {
                let left = visible[i] - c;
                c == 0 || (left >= cfg.min_pixels && left as f64 >= cfg.min_visible * placed[i].2 as f64)
            });
            if !ok {
                continue;
            }
            let id = placed.len() as u16 + 1;
            for (k, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
                let p = (py + k / w) * n + px + k % w;
                map[p] = id;
                let v = scaled.data[k * 3] as f64;
                for (c, t) in tint.iter().enumerate() {
                    image.data[p * 3 + c] = (v * t).round() as u8;
                }
            }
            for (v, c) in visible.iter_mut().zip(&covered) {
                *v -= c;
            }
            visible.push(own);
            placed.push((items.labels[j], j, own));
            accepted = true;
            break;
        }
        left_out += usize::from(!accepted);
    }
    let mut instances = Vec::with_capacity(placed.len());
    for (i, &(label, item, unoccluded_area)) in placed.iter().enumerate() {
        let id = i as u16 + 1;
        let (mut x0, mut y0, mut x1, mut y1, mut area) = (n, n, 0, 0, 0);
        for (p, _) in map.iter().enumerate().filter(|(_, &v)| v == id) {
            let (y, x) = (p / n, p % n);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            area += 1;
        }
        debug_assert_eq!(area, visible[i]);
        let rle = rle_encode(n, n, |p| map[p] == id);
        instances.push(Instance { label, item, bbox: [x0, y0, x1 + 1 - x0, y1 + 1 - y0], area, unoccluded_area, rle });
    }
    Scene { image, background: bg_name.clone(), instance_map: map, instances, left_out }
}

/// An RGB PNG (fast compression: the set is large and written often), or a JPEG of quality `q`.
fn encode(img: &RgbImage, jpeg_quality: Option<u8>) -> Result<Vec<u8>> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let mut out = Vec::new();
    let (w, h, t) = (img.width as u32, img.height as u32, image::ExtendedColorType::Rgb8);
    match jpeg_quality {
        None => PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Sub)
            .write_image(&img.data, w, h, t),
        Some(q) => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q).write_image(&img.data, w, h, t),
    }
    .map_err(|e| Error::Input(format!("cannot encode a composed image: {e}")))?;
    Ok(out)
}

/// What [`compose`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Images per split (train, val).
    pub images: (usize, usize),
    /// Annotated instances per split (train, val).
    pub instances: (usize, usize),
    /// Items drawn but left out by the occlusion rule, per split.
    pub left_out: (usize, usize),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Writes the dataset to `out` (which must not exist yet): see the module documentation for
/// the layout. `progress(split, done)` is called as images are written (from worker threads).
/// Runs on the current rayon pool.
pub fn compose(
    cfg: &ComposeConfig,
    src: &Sources,
    out: &Path,
    progress: &(dyn Fn(Split, usize) + Sync),
) -> Result<Summary> {
    cfg.validate()?;
    if out.exists() {
        return Err(Error::Input(format!("{}: already exists (remove it or choose another folder)", out.display())));
    }
    let name = out.file_name().ok_or_else(|| Error::Input(format!("{}: not a folder name", out.display())))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let prefix = format!(".{}.partial-", name.to_string_lossy());
    remove_dead_partials(parent, &prefix);
    let tmp = parent.join(format!("{prefix}{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    let result = write_all(cfg, src, &tmp, progress);
    match result {
        Ok(summary) => {
            std::fs::rename(&tmp, out).map_err(io(out))?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Removes the hidden folders `PREFIX<pid>` that runs killed before they finished left, when
/// their process no longer runs (Linux's /proc tells; elsewhere nothing is removed). A
/// symlink with that name is left alone.
fn remove_dead_partials(parent: &Path, prefix: &str) {
    if !cfg!(target_os = "linux") || !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(prefix)) else { continue };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if !Path::new("/proc").join(pid).exists() && e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn write_all(
    cfg: &ComposeConfig,
    src: &Sources,
    root: &Path,
    progress: &(dyn Fn(Split, usize) + Sync),
) -> Result<Summary> {
    let sets = root.join("ImageSets/Segmentation");
    std::fs::create_dir_all(&sets).map_err(io(&sets))?;
    let mut counts = Vec::new();
    for (split, n) in [(Split::Train, cfg.train), (Split::Val, cfg.val)] {
        let dir = root.join(split.name());
        for sub in ["images", "masks"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io(&dir))?;
        }
        let done = std::sync::atomic::AtomicUsize::new(0);
        let left = std::sync::atomic::AtomicUsize::new(0);
        let items = match split {
            Split::Train => &src.train,
            Split::Val => &src.val,
        };
        let source = items.file.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let json_err = |e: serde_json::Error| Error::Input(format!("cannot write COCO JSON: {e}"));
        // instances.json is streamed: annotations are written chunk by chunk as the images are
        // made (memory stays bounded by a chunk), the small image entries are kept for the end.
        let path = dir.join("instances.json");
        let file = std::fs::File::create(&path).map_err(io(&path))?;
        let mut coco = std::io::BufWriter::new(file);
        let categories: Vec<Value> = src
            .classes
            .iter()
            .enumerate()
            .map(|(k, name)| json!({"id": k + 1, "name": name, "supercategory": "fashion"}))
            .collect();
        let info = json!({"description": "mnv2 dataset compose: Fashion-MNIST items on real photographs",
                          "seed": cfg.seed, "split": split.name()});
        let head = format!(
            "{{\"info\":{},\"categories\":{},\"annotations\":[",
            serde_json::to_string(&info).map_err(json_err)?,
            serde_json::to_string(&categories).map_err(json_err)?
        );
        let mut images: Vec<String> = Vec::with_capacity(n);
        let mut annotations = 0usize;
        const CHUNK: usize = 256;
        for chunk in (0..n).step_by(CHUNK) {
            let per_image: Vec<(String, Vec<String>)> = (chunk..(chunk + CHUNK).min(n))
                .into_par_iter()
                .map(|i| -> Result<_> {
                    let scene = compose_scene(cfg, src, split, i);
                    let id = i + 1;
                    let ext = if cfg.jpeg_quality.is_some() { "jpg" } else { "png" };
                    let file = format!("{id:06}.{ext}");
                    let path = dir.join("images").join(&file);
                    std::fs::write(&path, encode(&scene.image, cfg.jpeg_quality)?).map_err(io(&path))?;
                    let mask = Segmentation {
                        width: cfg.size,
                        height: cfg.size,
                        num_classes: src.classes.len() + 1,
                        classes: scene.class_map(),
                    };
                    let path = dir.join("masks").join(format!("{id:06}.png"));
                    std::fs::write(&path, mask.to_png()?).map_err(io(&path))?;
                    let image = json!({"id": id, "file_name": file, "width": cfg.size, "height": cfg.size,
                                       "background": scene.background});
                    let anns = scene
                        .instances
                        .iter()
                        .map(|a| {
                            serde_json::to_string(&json!({
                                "image_id": id, "category_id": a.label + 1, "bbox": a.bbox, "area": a.area,
                                "iscrowd": 0, "segmentation": {"counts": a.rle, "size": [cfg.size, cfg.size]},
                                "unoccluded_area": a.unoccluded_area, "source": {"file": source, "index": a.item}}))
                            .map_err(json_err)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    progress(split, d);
                    left.fetch_add(scene.left_out, std::sync::atomic::Ordering::Relaxed);
                    Ok((serde_json::to_string(&image).map_err(json_err)?, anns))
                })
                .collect::<Result<_>>()?;
            let mut text = if chunk == 0 { head.clone() } else { String::new() };
            for (image, anns) in per_image {
                images.push(image);
                for a in anns {
                    annotations += 1;
                    // `a` is an object `{...}` without an id: the id goes first.
                    let sep = if annotations > 1 { "," } else { "" };
                    text.push_str(&format!("{sep}{{\"id\":{annotations},{}", &a[1..]));
                }
            }
            coco.write_all(text.as_bytes()).map_err(io(&path))?;
        }
        if n == 0 {
            coco.write_all(head.as_bytes()).map_err(io(&path))?;
        }
        coco.write_all(format!("],\"images\":[{}]}}", images.join(",")).as_bytes()).map_err(io(&path))?;
        coco.flush().map_err(io(&path))?;
        drop(coco);
        let list: String = (1..=n).map(|id| format!("{id:06}\n")).collect();
        let path = sets.join(format!("{}.txt", split.name()));
        std::fs::write(&path, list).map_err(io(&path))?;
        counts.push((n, annotations, left.into_inner()));
    }
    let meta = json!({
        "generator": "mnv2 dataset compose",
        "seed": cfg.seed, "size": cfg.size, "items_per_image": [cfg.items.0, cfg.items.1],
        "item_scale": [cfg.scale.0, cfg.scale.1], "threshold": cfg.threshold, "min_visible": cfg.min_visible,
        "min_pixels": cfg.min_pixels, "tries": cfg.tries, "jpeg_quality": cfg.jpeg_quality,
        "classes": src.classes,
        "backgrounds": src.backgrounds.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "train": {"images": counts[0].0, "instances": counts[0].1, "left_out": counts[0].2, "items_file": src.train.file.file_name().map(|f| f.to_string_lossy().into_owned())},
        "val": {"images": counts[1].0, "instances": counts[1].1, "left_out": counts[1].2, "items_file": src.val.file.file_name().map(|f| f.to_string_lossy().into_owned())},
    });
    let path = root.join("dataset.json");
    let text = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Input(format!("cannot write JSON: {e}")))?;
    std::fs::write(&path, text).map_err(io(&path))?;
    Ok(Summary {
        images: (counts[0].0, counts[1].0),
        instances: (counts[0].1, counts[1].1),
        left_out: (counts[0].2, counts[1].2),
    })
}
