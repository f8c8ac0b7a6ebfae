//! Preprocessing against PIL and torchvision (fixture: tests/data/preprocess_expected.json,
//! written by scripts/fixtures/preprocess.py).
//!
//! * PNG photos: decode, `Resize(256)`, `CenterCrop(224)` and `ToTensor` + `Normalize` are
//!   bit-identical to torchvision's on PIL images (sha256 of every step), also for a
//!   non-square input, an upscale, a padded crop and the Keras-style direct resize.
//! * The resize alone is bit-identical to PIL's bilinear on pseudo-random images of awkward
//!   sizes.
//! * Every PNG colour type and bit depth converts to RGB exactly as PIL's `.convert("RGB")`.
//! * JPEGs: `image` decodes with zune-jpeg, PIL with libjpeg-turbo. Their IDCTs, chroma
//!   upsampling and YCbCr conversion round differently, so decoded pixels differ by a few
//!   levels (measured: at most 4 before and 2 after the resize on the photos). Those are
//!   checked with a tolerance; the resize itself is still exact.

use std::path::{Path, PathBuf};

use mobilenetv2::model::Preprocess;
use mobilenetv2::preprocess::{self, RgbImage};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> Value {
    let p = root().join("tests/data/preprocess_expected.json");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fixtures/preprocess.py)", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn image_path(rel: &str) -> PathBuf {
    root().join("tests/data/images").join(rel)
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(v: &Value) -> [f32; 3] {
    std::array::from_fn(|i| v[i].as_f64().unwrap() as f32)
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

/// The same pseudo-random bytes as `det_u8` in the fixture script.
fn det_u8(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64)
        .map(|i| {
            let mut h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(seed);
            h ^= h >> 29;
            h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            h ^= h >> 32;
            (h >> 40) as u8
        })
        .collect()
}

/// The fixture's `smooth_u8`: each pixel the floor mean of itself and its up, left and
/// up-left neighbours (wrapping around).
fn smooth_u8(w: usize, h: usize, seed: u64) -> Vec<u8> {
    let a = det_u8(w * h * 3, seed);
    let at = |y: usize, x: usize, c: usize| a[(y * w + x) * 3 + c] as u32;
    let mut out = vec![0u8; a.len()];
    for y in 0..h {
        let yu = (y + h - 1) % h;
        for x in 0..w {
            let xl = (x + w - 1) % w;
            for c in 0..3 {
                let s = at(y, x, c) + at(yu, x, c) + at(y, xl, c) + at(yu, xl, c);
                out[(y * w + x) * 3 + c] = (s / 4) as u8;
            }
        }
    }
    out
}

#[test]
fn resize_is_bit_identical_to_pil() {
    let fx = fixture();
    for case in fx["resize"].as_array().unwrap() {
        let (i, o) = (usizes(&case["input"]), usizes(&case["output"]));
        let seed = case["seed"].as_u64().unwrap();
        let data =
            if case["smooth"].as_bool().unwrap() { smooth_u8(i[0], i[1], seed) } else { det_u8(i[0] * i[1] * 3, seed) };
        let img = RgbImage::new(i[0], i[1], data).unwrap();
        let r = preprocess::resize_bilinear(&img, o[0], o[1]);
        assert_eq!((r.width, r.height), (o[0], o[1]));
        assert_eq!(sha256(&r.data), case["sha256"].as_str().unwrap(), "resize {i:?} -> {o:?} differs from PIL");
    }
}

#[test]
fn formats_convert_to_rgb_like_pil() {
    let fx = fixture();
    for case in fx["formats"].as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let img = preprocess::decode(&image_path(file)).unwrap_or_else(|e| panic!("{e}"));
        let size = usizes(&case["size"]);
        assert_eq!((img.width, img.height), (size[0], size[1]), "{file}");
        let want: Vec<u8> = usizes(&case["rgb"]).iter().map(|&v| v as u8).collect();
        let d = max_diff(&img.data, &want);
        eprintln!("{file} ({}): max |diff| {d}", case["mode"]);
        if case["exact"].as_bool().unwrap() {
            assert_eq!(img.data, want, "{file}: RGB differs from PIL's convert(\"RGB\")");
        } else {
            // zune-jpeg against libjpeg-turbo on a small, detailed JPEG (see the module doc).
            assert!(d <= 6, "{file}: max |diff| {d} from PIL");
            let mean = img.data.iter().zip(&want).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / want.len() as f64;
            assert!(mean < 1.0, "{file}: mean |diff| {mean}");
        }
    }
}

#[test]
fn photos_match_torchvision() {
    let fx = fixture();
    let mean = f32s(&fx["mean"]);
    let std = f32s(&fx["std"]);
    let rows = usizes(&fx["crop_rows"]);
    for p in fx["photos"].as_array().unwrap() {
        let file = p["file"].as_str().unwrap();
        let lossless = file.ends_with(".png");
        let img = preprocess::decode(&image_path(file)).unwrap();
        let size = usizes(&p["size"]);
        assert_eq!((img.width, img.height), (size[0], size[1]), "{file}");
        let rs = usizes(&p["resized_size"]);
        let (rh, rw) = preprocess::resized_size(img.height, img.width, 256);
        assert_eq!((rw, rh), (rs[0], rs[1]), "{file}: Resize(256) size");
        let resized = preprocess::resize_bilinear(&img, rw, rh);
        let pre = Preprocess { resize: Some(256), mean, std };
        let crop = preprocess::transform(&img, &pre, 224, 224).unwrap();
        assert_eq!(crop, preprocess::center_crop(&resized, 224, 224));
        let tensor = preprocess::to_tensor(&crop, &pre);
        assert_eq!(tensor.len(), 224 * 224 * 3);

        let row_diff = rows
            .iter()
            .map(|&r| {
                let want: Vec<u8> = usizes(&p["crop_rows"][r.to_string()]).iter().map(|&v| v as u8).collect();
                max_diff(&crop.data[r * 224 * 3..][..224 * 3], &want)
            })
            .max()
            .unwrap();
        let mean_diff = (0..3)
            .map(|c| {
                let m = crop.data.iter().skip(c).step_by(3).map(|&v| v as f64).sum::<f64>() / (224.0 * 224.0);
                (m - p["crop_mean"][c].as_f64().unwrap()).abs()
            })
            .fold(0f64, f64::max);
        eprintln!(
            "{file}: decode {}, crop rows max |diff| {row_diff}, channel means |diff| {mean_diff:.4}",
            if sha256(&img.data) == p["decoded_sha256"] { "identical" } else { "differs" }
        );
        if lossless {
            assert_eq!(sha256(&img.data), p["decoded_sha256"], "{file}: decode");
            assert_eq!(sha256(&resized.data), p["resized_sha256"], "{file}: resize");
            assert_eq!(sha256(&crop.data), p["crop_sha256"], "{file}: crop");
            assert_eq!(sha256(&f32_bytes(&tensor)), p["tensor_sha256"], "{file}: normalised tensor");
        } else {
            assert!(row_diff <= 3, "{file}: crop rows max |diff| {row_diff}");
            // zune-jpeg's chroma upsampling and colour conversion round differently from
            // libjpeg-turbo's, which shifts channel means by up to ~0.2 of a level.
            assert!(mean_diff < 0.5, "{file}: channel means differ by {mean_diff}");
        }

        for v in p["variants"].as_array().unwrap() {
            let crop_hw = usizes(&v["crop"]);
            let pre = Preprocess {
                resize: v["resize"].as_u64().map(|r| r as usize),
                mean: f32s(&v["mean"]),
                std: f32s(&v["std"]),
            };
            let c = preprocess::transform(&img, &pre, crop_hw[0], crop_hw[1]).unwrap();
            assert_eq!((c.height, c.width), (crop_hw[0], crop_hw[1]));
            assert_eq!(sha256(&c.data), v["crop_sha256"], "{file}: {v}");
            let t = preprocess::to_tensor(&c, &pre);
            assert_eq!(sha256(&f32_bytes(&t)), v["tensor_sha256"], "{file}: {v}");
        }
    }
}

#[test]
fn load_batch_stacks_images_and_names_the_failing_one() {
    let pre = Preprocess::imagenet(224);
    let files = [image_path("chelsea.png"), image_path("camera.png")];
    let b = preprocess::load_batch(&files, &pre, 224, 224).unwrap();
    assert_eq!(b.n, 2);
    let one = preprocess::load(&files[1], &pre, 224, 224).unwrap();
    assert_eq!(b.image(1), &one[..]);

    let missing = image_path("no-such-photo.jpg");
    let e = preprocess::load_batch(&[files[0].clone(), missing.clone()], &pre, 224, 224).unwrap_err();
    assert!(matches!(&e, mobilenetv2::Error::Image { path, .. } if path == &missing), "{e}");
}

#[test]
fn truncated_and_corrupt_files_are_errors_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("mnv2-preprocess-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["rocket.jpg", "grace_hopper.jpg", "chelsea.png", "formats/progressive420.jpg"] {
        let bytes = std::fs::read(image_path(name)).unwrap();
        // PIL, like `image`, accepts a PNG whose IEND (and even the zlib stream's end) is
        // missing once every pixel has been decoded, so PNGs are cut into their pixel data.
        // A JPEG must reach its end-of-image marker (PIL: "image file is truncated").
        let mut cuts = vec![bytes.len() * 2 / 3, 100, 3];
        if name.ends_with(".jpg") {
            cuts.extend([bytes.len() - 1, bytes.len() - 2]);
        }
        for keep in cuts {
            let p = dir.join(format!("cut{keep}-{}", name.replace('/', "-")));
            std::fs::write(&p, &bytes[..keep]).unwrap();
            let e = preprocess::decode(&p).err().unwrap_or_else(|| panic!("{name} cut to {keep} bytes decodes"));
            let msg = e.to_string();
            assert!(matches!(e, mobilenetv2::Error::Image { .. }), "{msg}");
            assert!(msg.starts_with(&p.display().to_string()), "{msg}");
            assert_eq!(msg.lines().count(), 1, "{msg}");
        }
        // A flipped byte in the middle of a PNG fails its CRC; JPEGs may decode to noise
        // (the format has no checksum), but must not panic.
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        let p = dir.join(format!("flip-{}", name.replace('/', "-")));
        std::fs::write(&p, &bad).unwrap();
        let r = preprocess::decode(&p);
        if name.ends_with(".png") {
            assert!(r.is_err());
        }
    }
    let p = dir.join("text.jpg");
    std::fs::write(&p, "not an image at all").unwrap();
    let e = preprocess::decode(&p).unwrap_err().to_string();
    assert!(e.contains("not a JPEG or PNG"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn jpeg_variants_pass_the_completeness_check() {
    for name in [
        "formats/baseline420.jpg",
        "formats/baseline422.jpg",
        "formats/baseline444.jpg",
        "formats/progressive420.jpg",
        "formats/restart420.jpg",
        "formats/gray.jpg",
    ] {
        let img = preprocess::decode(Path::new(&image_path(name))).unwrap();
        assert_eq!((img.width, img.height), (41, 27), "{name}");
    }
}
