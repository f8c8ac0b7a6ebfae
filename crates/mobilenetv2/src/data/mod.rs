//! Labelled images for training and evaluation: a folder of class folders (torchvision's
//! ImageFolder: class index = position of the folder name in sorted order) or the IDX files of
//! the MNIST family (`*-images-idx3-ubyte[.gz]` with its `*-labels-idx1-ubyte[.gz]`).
//!
//! Images come out as 8-bit RGB ([`RgbImage`]); gray images are repeated over the three
//! channels. [`augment`] turns them into network inputs, [`loader`] does so on worker threads.
//! [`compose`] builds a detection and segmentation scene set from Fashion-MNIST items and photos.

pub mod augment;
pub mod compose;
pub mod loader;

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::limits::MAX_FILE_BYTES;
use crate::preprocess::{self, RgbImage};
use crate::rng::Rng;

/// What to do with an image file that cannot be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnBad {
    /// Warn, count it and leave it out.
    #[default]
    Skip,
    /// Stop with an error naming the file.
    Stop,
}

#[derive(Clone, Debug)]
enum Source {
    /// `n` gray images of `h x w`, row-major.
    Idx {
        pixels: Vec<u8>,
        h: usize,
        w: usize,
    },
    Files(Vec<PathBuf>),
}

/// A labelled set of images.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The images file or folder the dataset was opened from.
    pub path: PathBuf,
    /// Class names in label order (folder names, Fashion-MNIST's names, or the digits).
    pub classes: Vec<String>,
    /// Per sample, its class index into `classes`.
    pub labels: Vec<usize>,
    source: Source,
}

const FASHION: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// The file's bytes, gunzipped if it is gzip; both the file and what it expands to are bounded
/// by [`MAX_FILE_BYTES`] (a 4.7 MB gzip can expand to 4.5 GiB).
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    gunzip_bounded(path, crate::limits::read_file(path, MAX_FILE_BYTES)?)
}

/// `raw` gunzipped if it is gzip (at most [`MAX_FILE_BYTES`] out), else `raw`.
fn gunzip_bounded(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, "gzip", e.to_string()))?;
        if out.len() as u64 > MAX_FILE_BYTES {
            return Err(Error::format(path, "gzip", format!("expands to more than {MAX_FILE_BYTES} bytes")));
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An IDX file: its dimensions and the unsigned-byte payload.
fn read_idx(path: &Path, dims_wanted: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    parse_idx(path, read_maybe_gz(path)?, dims_wanted)
}

/// An IDX file's bytes (gzipped or not) with `dims_wanted` dimensions: its dimensions and its
/// payload; `path` only names it in errors. (Public for the fuzz target and corpus replay.)
pub fn parse_idx(path: &Path, bytes: Vec<u8>, dims_wanted: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = gunzip_bounded(path, bytes)?;
    let bad = |d: String| Error::format(path, "IDX", d);
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("no IDX magic number (00 00 type dims)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x} is not unsigned bytes (0x08)", bytes[2])));
    }
    let nd = bytes[3] as usize;
    if nd != dims_wanted {
        return Err(bad(format!("{nd} dimensions, expected {dims_wanted}")));
    }
    if bytes.len() < 4 + 4 * nd {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> =
        (0..nd).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let n = n.ok_or_else(|| bad(format!("header dimensions {dims:?} overflow")))?;
    let payload = &bytes[4 + 4 * nd..];
    if payload.len() != n {
        return Err(bad(format!("header says {dims:?} ({n} bytes) but {} bytes follow", payload.len())));
    }
    Ok((dims, payload.to_vec()))
}

/// The labels file next to an images file (`...-images-idx3-ubyte` -> `...-labels-idx1-ubyte`).
fn labels_path(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_str()?;
    name.contains("images-idx3").then(|| images.with_file_name(name.replace("images-idx3", "labels-idx1")))
}

fn find_idx(dir: &Path, prefix: &str) -> Option<PathBuf> {
    ["", ".gz"].iter().map(|ext| dir.join(format!("{prefix}-images-idx3-ubyte{ext}"))).find(|p| p.is_file())
}

impl Dataset {
    /// Whether `path` is what [`Dataset::open`] reads as IDX files: an images file (its name
    /// has `images-idx3`) or a folder holding `train-images-idx3-ubyte[.gz]`.
    pub fn is_idx(path: &Path) -> bool {
        if path.is_dir() {
            find_idx(path, "train").is_some()
        } else {
            path.is_file() && labels_path(path).is_some()
        }
    }

    /// Opens `path`: an IDX images file, a folder holding `train-images-idx3-ubyte[.gz]`, or a
    /// folder of class folders.
    pub fn open(path: &Path, on_bad: OnBad) -> Result<Dataset> {
        if path.is_file() {
            return Dataset::open_idx(path);
        }
        if !path.is_dir() {
            return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
        }
        if let Some(p) = find_idx(path, "train") {
            return Dataset::open_idx(&p);
        }
        Dataset::open_folder(path, on_bad)
    }

    /// The test split of an IDX folder (`t10k-*`), for `--val` given the same folder.
    pub fn open_test(path: &Path, on_bad: OnBad) -> Result<Dataset> {
        match (path.is_dir(), find_idx(path, "t10k")) {
            (true, Some(p)) => Dataset::open_idx(&p),
            _ => Dataset::open(path, on_bad),
        }
    }

    /// An IDX images file (`*-images-idx3-ubyte[.gz]`) with the labels file beside it.
    pub fn open_idx(images: &Path) -> Result<Dataset> {
        let lpath = labels_path(images).ok_or_else(|| {
            Error::format(images, "IDX", "the file name has no `images-idx3`, so its labels file cannot be found")
        })?;
        let (dims, pixels) = read_idx(images, 3)?;
        let (ldims, raw) = read_idx(&lpath, 1)?;
        if ldims[0] != dims[0] {
            return Err(Error::format(&lpath, "IDX", format!("{} labels for {} images", ldims[0], dims[0])));
        }
        if dims[0] == 0 {
            return Err(Error::format(images, "IDX", "no images"));
        }
        if dims[1] == 0 || dims[2] == 0 {
            return Err(Error::format(images, "IDX", format!("images of {}x{} pixels", dims[1], dims[2])));
        }
        let labels: Vec<usize> = raw.iter().map(|&l| l as usize).collect();
        let k = labels.iter().max().map_or(0, |m| m + 1);
        let classes = if k == 10 && images.to_string_lossy().contains("fashion") {
            FASHION.iter().map(|s| s.to_string()).collect()
        } else {
            (0..k).map(|i| i.to_string()).collect()
        };
        Ok(Dataset { path: images.into(), classes, labels, source: Source::Idx { pixels, h: dims[1], w: dims[2] } })
    }

    /// A folder of class folders (torchvision's ImageFolder); `on_bad` decides whether an
    /// empty or unreadable class folder is an error.
    pub fn open_folder(dir: &Path, on_bad: OnBad) -> Result<Dataset> {
        // Folder names as the OS gives them (not necessarily UTF-8); lossy text only as labels.
        let mut folders: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name())
            .filter(|n| !n.as_encoded_bytes().starts_with(b"."))
            .collect();
        folders.sort();
        let classes: Vec<String> = folders.iter().map(|f| f.to_string_lossy().into_owned()).collect();
        if classes.is_empty() {
            return Err(Error::Input(format!(
                "{}: no class folders (expected one folder of images per class, or IDX files)",
                dir.display()
            )));
        }
        let (mut files, mut labels, mut bad) = (Vec::new(), Vec::new(), 0usize);
        for (k, class) in classes.iter().enumerate() {
            let cdir = dir.join(&folders[k]);
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&cdir)
                .map_err(|e| Error::io(&cdir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect();
            entries.sort();
            let before = files.len();
            for p in entries {
                // Headers only: cheap, and catches files that are not images at all.
                match image::image_dimensions(&p) {
                    Ok(_) => {
                        files.push(p);
                        labels.push(k);
                    }
                    Err(e) => match on_bad {
                        OnBad::Stop => {
                            return Err(Error::Image {
                                path: p,
                                detail: format!("{e} (use --bad-images skip to leave it out)"),
                            })
                        }
                        OnBad::Skip => {
                            eprintln!("warning: {}: cannot read image, skipped: {e}", p.display());
                            bad += 1;
                        }
                    },
                }
            }
            if files.len() == before {
                return Err(Error::Input(format!("{}: class folder `{class}` has no readable images", cdir.display())));
            }
        }
        if bad > 0 {
            eprintln!("warning: {}: {bad} unreadable image(s) skipped", dir.display());
        }
        Ok(Dataset { path: dir.into(), classes, labels, source: Source::Files(files) })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image `i` as 8-bit RGB (gray repeated over three channels).
    pub fn image(&self, i: usize) -> Result<RgbImage> {
        match &self.source {
            Source::Idx { pixels, h, w } => {
                let px = &pixels[i * h * w..(i + 1) * h * w];
                RgbImage::new(*w, *h, px.iter().flat_map(|&v| [v, v, v]).collect())
            }
            Source::Files(files) => preprocess::decode(&files[i]),
        }
    }

    /// Where image `i` comes from, for messages.
    pub fn describe(&self, i: usize) -> String {
        match &self.source {
            Source::Idx { .. } => format!("{} image {i}", self.path.display()),
            Source::Files(f) => f[i].display().to_string(),
        }
    }

    /// Deterministic split of the indices: `(train, held out)` with `fraction` held out.
    pub fn split(&self, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        Rng::new(seed ^ 0x5151_7e57).shuffle(&mut idx);
        let held = ((self.len() as f64) * fraction).round() as usize;
        let mut val = idx.split_off(self.len() - held.min(self.len()));
        idx.sort();
        val.sort();
        (idx, val)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_header_errors_are_clear() {
        let dir = std::env::temp_dir().join(format!("mnv2-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("x-images-idx3-ubyte");
        let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        bytes.extend([1u8; 12]);
        std::fs::write(&img, &bytes).unwrap();
        std::fs::write(dir.join("x-labels-idx1-ubyte"), [0u8, 0, 8, 1, 0, 0, 0, 2, 1, 0]).unwrap();
        let d = Dataset::open_idx(&img).unwrap();
        assert_eq!((d.len(), d.classes.len()), (2, 2));
        assert_eq!(d.image(1).unwrap().data.len(), 2 * 3 * 3);
        std::fs::write(&img, &bytes[..20]).unwrap();
        let e = Dataset::open_idx(&img).unwrap_err().to_string();
        assert!(e.contains("x-images-idx3-ubyte") && e.contains("bytes follow"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn idx_pair(dir: &Path, images: &[u8], labels: &[u8]) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let img = dir.join("h-images-idx3-ubyte");
        std::fs::write(&img, images).unwrap();
        std::fs::write(dir.join("h-labels-idx1-ubyte"), labels).unwrap();
        img
    }

    /// Defect 5: a 0x0 image size used to panic later in the loader thread, and a size
    /// product that overflows was unchecked; both are header errors naming the file now.
    #[test]
    fn idx_zero_and_overflowing_sizes_are_errors() {
        let dir = std::env::temp_dir().join(format!("mnv2-idx5-{}", std::process::id()));
        let labels = [0u8, 0, 8, 1, 0, 0, 0, 2, 1, 0];
        let img = idx_pair(&dir, &[0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0], &labels);
        let e = Dataset::open_idx(&img).unwrap_err().to_string();
        assert!(e.contains("h-images-idx3-ubyte") && e.contains("0x0"), "{e}");
        let img = idx_pair(
            &dir,
            &[0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &labels,
        );
        let e = Dataset::open_idx(&img).unwrap_err().to_string();
        assert!(e.contains("h-images-idx3-ubyte"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Defect 8: a small gzip that expands past the file budget is refused after reading
    /// the budget, not expanded whole (a 4.7 MB gzip expanded to 4.5 GiB).
    #[test]
    fn idx_gzip_bombs_are_bounded() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("mnv2-idx8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&[0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0]).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(MAX_FILE_BYTES >> 20) + 1 {
            gz.write_all(&zeros).unwrap();
        }
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 2 << 20, "{}", bomb.len());
        let img = dir.join("b-images-idx3-ubyte.gz");
        std::fs::write(&img, &bomb).unwrap();
        let e = read_idx(&img, 3).unwrap_err().to_string();
        assert!(e.contains("b-images-idx3-ubyte.gz") && e.contains("expands to more than"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Defect 14: a class folder whose name is not UTF-8 made the dataset unopenable (the
    /// lossy name was joined back into a path that does not exist).
    #[cfg(unix)]
    #[test]
    fn non_utf8_class_folders_open() {
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir().join(format!("mnv2-utf8-{}", std::process::id()));
        let odd = dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        std::fs::create_dir_all(&odd).unwrap();
        std::fs::create_dir_all(dir.join("dog")).unwrap();
        let png = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/images/formats/rgba8.png");
        std::fs::copy(&png, odd.join("a.png")).unwrap();
        std::fs::copy(&png, dir.join("dog/b.png")).unwrap();
        let d = Dataset::open_folder(&dir, OnBad::Stop).unwrap();
        assert_eq!(d.classes, ["caf\u{fffd}", "dog"]);
        assert_eq!(d.labels, [0, 1]);
        assert!(d.image(0).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
