//! Fuzzes image decoding and preprocessing: any JPEG or PNG bytes, any size and aspect ratio,
//! through torchvision's resize + center crop and Keras's straight resize.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilenetv2::model::Preprocess;
use mobilenetv2::preprocess;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = preprocess::decode_bytes(data, Path::new("fuzz.img")) {
        for (pre, h, w) in [(Preprocess::imagenet(224), 224, 224), (Preprocess::tf(), 96, 128)] {
            if let Ok(out) = preprocess::transform(&img, &pre, h, w) {
                assert_eq!(out.data.len(), h * w * 3);
                let _ = preprocess::to_tensor(&out, &pre);
            }
        }
    }
});
