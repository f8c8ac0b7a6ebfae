//! `data::compose`: determinism, and ground truth that is exact: boxes are the visible masks'
//! extents, areas their pixel counts, the RLE decodes (independently, here) to the class
//! masks' pixels, instances never overlap, and the two splits draw from different IDX files.
//! Items come from small IDX files written here; backgrounds are the test photos.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mobilenetv2::data::compose::{compose, compose_scene, ComposeConfig, Sources, Split};
use serde_json::Value;

#[path = "support/idx.rs"]
mod idx;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-compose-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n` 28x28 items, label = `labels[i % labels.len()]`: a bright blob (a rectangle with a
/// notch, so masks are not boxes) whose place and size vary with `i`.
fn write_items(dir: &Path, prefix: &str, n: usize, labels: &[u8]) {
    idx::write_idx(dir, prefix, n, |i| {
        let mut px = [0u8; 28 * 28];
        let (y0, x0, h, w) = (2 + i % 5, 3 + (i * 3) % 6, 14 + i % 9, 12 + (i * 5) % 10);
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                let notch = y < y0 + h / 3 && x > x0 + w / 3 && x < x0 + 2 * w / 3;
                if !notch {
                    px[y * 28 + x] = 120 + ((x * 7 + y * 3 + i) % 130) as u8;
                }
            }
        }
        (px, labels[i % labels.len()])
    });
}

/// IDX files (train labels 0..5, test labels 5..10) and three test photos as backgrounds.
fn sources(dir: &Path) -> Sources {
    let idx = dir.join("idx");
    std::fs::create_dir_all(&idx).unwrap();
    write_items(&idx, "train", 40, &[0, 1, 2, 3, 4]);
    write_items(&idx, "t10k", 15, &[5, 6, 7, 8, 9]);
    let bg = dir.join("bg");
    std::fs::create_dir_all(&bg).unwrap();
    let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/images");
    for f in ["chelsea.png", "camera.png", "rocket.jpg"] {
        std::fs::copy(photos.join(f), bg.join(f)).unwrap();
    }
    Sources::open(&idx, &bg).unwrap()
}

fn config(seed: u64) -> ComposeConfig {
    ComposeConfig { seed, train: 6, val: 4, items: (3, 7), ..ComposeConfig::for_size(96) }
}

fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let dir = tmp("det");
    let src = sources(&dir);
    let quiet = |_: Split, _: usize| {};
    compose(&config(7), &src, &dir.join("a"), &quiet).unwrap();
    // Another thread count must not change a byte.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| compose(&config(7), &src, &dir.join("b"), &quiet)).unwrap();
    compose(&config(8), &src, &dir.join("c"), &quiet).unwrap();
    let (a, b, c) = (files(&dir.join("a")), files(&dir.join("b")), files(&dir.join("c")));
    // dataset.json, two lists, two instances.json, an image and a mask per image.
    assert_eq!(a.len(), 1 + 2 + 2 + 2 * (6 + 4), "{:?}", a.keys().collect::<Vec<_>>());
    assert!(a == b, "same seed, different bytes");
    let differ = a.iter().filter(|(k, v)| c.get(*k) != Some(*v)).count();
    assert!(differ >= 20, "seed 8 changed only {differ} files");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// COCO's uncompressed RLE decoded here: column-major runs starting with zeros.
fn rle_decode(counts: &[u64], h: usize, w: usize) -> Vec<bool> {
    assert_eq!(counts.iter().sum::<u64>() as usize, h * w, "RLE counts do not sum to h*w");
    let mut col_major = Vec::with_capacity(h * w);
    for (i, &c) in counts.iter().enumerate() {
        col_major.extend(std::iter::repeat_n(i % 2 == 1, c as usize));
    }
    let mut out = vec![false; h * w];
    for (k, &v) in col_major.iter().enumerate() {
        out[(k % h) * w + k / h] = v;
    }
    out
}

fn read_palette_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let mut dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut r = dec.read_info().unwrap();
    assert_eq!(r.info().color_type, png::ColorType::Indexed, "{}", path.display());
    let (w, h) = (r.info().width as usize, r.info().height as usize);
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    r.next_frame(&mut buf).unwrap();
    buf.truncate(w * h);
    (w, h, buf)
}

#[test]
fn boxes_rle_and_class_masks_agree_exactly() {
    let dir = tmp("exact");
    let src = sources(&dir);
    let cfg = config(3);
    let out = dir.join("set");
    let summary = compose(&cfg, &src, &out, &|_, _| {}).unwrap();
    assert_eq!(summary.images, (6, 4));
    for (split, n, allowed) in [("train", 6, 1..=5), ("val", 4, 6..=10)] {
        let coco: Value =
            serde_json::from_slice(&std::fs::read(out.join(split).join("instances.json")).unwrap()).unwrap();
        assert_eq!(coco["images"].as_array().unwrap().len(), n);
        assert_eq!(coco["categories"].as_array().unwrap().len(), 10);
        let anns = coco["annotations"].as_array().unwrap();
        assert!(anns.len() >= n * 2, "{split}: only {} instances", anns.len());
        let list = std::fs::read_to_string(out.join(format!("ImageSets/Segmentation/{split}.txt"))).unwrap();
        assert_eq!(list.lines().count(), n);
        for img in coco["images"].as_array().unwrap() {
            let id = img["id"].as_u64().unwrap();
            let file = img["file_name"].as_str().unwrap();
            assert!(list.lines().any(|l| format!("{l}.png") == file));
            let (w, h, classes) = read_palette_png(&out.join(split).join("masks").join(file));
            assert_eq!((w, h), (96, 96));
            let photo = image::open(out.join(split).join("images").join(file)).unwrap();
            assert_eq!((photo.width(), photo.height()), (96, 96));
            let mut owner = vec![0u8; w * h]; // class painted by the annotations, 0 elsewhere
            for a in anns.iter().filter(|a| a["image_id"].as_u64() == Some(id)) {
                let cat = a["category_id"].as_u64().unwrap();
                assert!(allowed.contains(&cat), "{split}: category {cat} comes from the other split's items");
                let source = a["source"]["file"].as_str().unwrap();
                assert!(source.starts_with(if split == "train" { "train-" } else { "t10k-" }), "{source}");
                assert_eq!(a["iscrowd"], 0);
                let seg = &a["segmentation"];
                assert_eq!(seg["size"], serde_json::json!([96, 96]));
                let counts: Vec<u64> = seg["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
                let mask = rle_decode(&counts, h, w);
                let (mut x0, mut y0, mut x1, mut y1, mut area) = (w, h, 0, 0, 0u64);
                for (p, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
                    let (y, x) = (p / w, p % w);
                    (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
                    area += 1;
                    assert_eq!(owner[p], 0, "two instances claim pixel {p} of {split} image {id}");
                    owner[p] = cat as u8;
                }
                assert_eq!(a["area"].as_u64().unwrap(), area);
                assert!(area >= cfg.min_pixels as u64);
                let bbox: Vec<u64> = a["bbox"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
                assert_eq!(bbox, [x0, y0, x1 + 1 - x0, y1 + 1 - y0].map(|v| v as u64), "{split} image {id}");
                let full = a["unoccluded_area"].as_u64().unwrap();
                assert!(area as f64 >= cfg.min_visible * full as f64 && area <= full, "{area} of {full}");
            }
            assert_eq!(classes, owner, "{split} image {id}: class mask differs from the COCO masks");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn occlusion_happens_and_the_image_shows_the_masks() {
    let dir = tmp("occl");
    let src = sources(&dir);
    let cfg = ComposeConfig { items: (8, 12), ..config(11) };
    let (mut occluded, mut instances) = (0, 0);
    for i in 0..6 {
        let scene = compose_scene(&cfg, &src, Split::Train, i);
        assert_eq!(scene, compose_scene(&cfg, &src, Split::Train, i));
        for inst in &scene.instances {
            instances += 1;
            occluded += usize::from(inst.area < inst.unoccluded_area);
        }
        // Every instance pixel shows a tinted item value; the background photo elsewhere is
        // untouched by the items (checked by painting the instance map's complement).
        let classes = scene.class_map();
        assert_eq!(classes.iter().filter(|&&c| c > 0).count(), scene.instances.iter().map(|i| i.area).sum::<usize>());
    }
    assert!(occluded > 0, "no instance was partly occluded in {instances}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn existing_output_is_refused_and_failures_leave_nothing() {
    let dir = tmp("atomic");
    let src = sources(&dir);
    let out = dir.join("set");
    std::fs::create_dir_all(&out).unwrap();
    let e = compose(&config(1), &src, &out, &|_, _| {}).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    // A killed run's hidden folder (no process has this id: above Linux's pid_max) is
    // cleaned by the next run into the same parent folder.
    let dead = dir.join(".done.partial-999999999");
    std::fs::create_dir_all(dead.join("train/images")).unwrap();
    compose(&config(1), &src, &dir.join("done"), &|_, _| {}).unwrap();
    assert!(dir.join("done/dataset.json").is_file());
    assert!(!dead.exists() || !cfg!(target_os = "linux"));
    let e = compose(&ComposeConfig { scale: (50, 90), ..config(1) }, &src, &dir.join("x"), &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("item scale"), "{e}");
    assert!(!dir.join("x").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let e = Sources::open(&dir.join("idx"), &dir.join("idx")).unwrap_err().to_string();
    assert!(e.contains("no PNG or JPEG backgrounds"), "{e}");
    let e = Sources::open(&dir.join("bg"), &dir.join("bg")).unwrap_err().to_string();
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
