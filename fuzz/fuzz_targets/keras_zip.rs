//! Fuzzes the .keras zip archive, then HDF5: any bytes must give a model or an
//! error, never a panic, a hang or an out-of-memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = mobilenetv2::weights::keras::read_archive(Path::new("fuzz"), data) {
        let _ = mobilenetv2::Model::from_file(file);
    }
});
