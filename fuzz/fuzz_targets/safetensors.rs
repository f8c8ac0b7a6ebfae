//! Fuzzes the safetensors reader (header JSON, offsets, dtypes) and, when it accepts the
//! bytes, the model fit and metadata validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = mobilenetv2::weights::safetensors_io::read(Path::new("fuzz.safetensors"), data) {
        let _ = mobilenetv2::Model::from_file(file);
    }
});
