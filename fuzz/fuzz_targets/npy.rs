//! Fuzzes the `.npy` reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = mobilenetv2::npy::parse(Path::new("fuzz.npy"), data);
});
