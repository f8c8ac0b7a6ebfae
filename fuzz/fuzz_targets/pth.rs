//! Fuzzes the PyTorch reader (zip and legacy containers, the pickle machine, the strided
//! gather): any bytes must give tensors or an error, never a panic, a stack overflow, a hang
//! or an out-of-memory. Use the dictionary: `-dict=fuzz/pth.dict`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = mobilenetv2::weights::pth::read(Path::new("fuzz.pth"), data) {
        let _ = mobilenetv2::Model::from_file(file);
    }
});
