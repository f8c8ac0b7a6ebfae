//! Fuzzes the IDX reader (gzipped or not): header, sizes, payload, then the first image
//! through the evaluation preprocessing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilenetv2::model::Preprocess;
use mobilenetv2::preprocess::{self, RgbImage};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok((dims, px)) = mobilenetv2::data::parse_idx(Path::new("fuzz-images-idx3-ubyte"), data.to_vec(), 3) else {
        return;
    };
    let (h, w) = (dims[1], dims[2]);
    if dims[0] == 0 || h == 0 || w == 0 || h.saturating_mul(w) > 1 << 20 {
        return;
    }
    let rgb = px[..h * w].iter().flat_map(|&v| [v, v, v]).collect();
    let img = RgbImage::new(w, h, rgb).unwrap();
    let _ = preprocess::transform(&img, &Preprocess::imagenet(32), 32, 32);
});
