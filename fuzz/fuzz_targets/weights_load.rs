//! Fuzzes `weights::load`, the path every command and `--resume` (the checkpoint reader) goes
//! through: format sniffing, the bounded file read, every format's reader, then the model fit
//! and the metadata checks (spec, preprocess, labels, quantization).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("mnv2-fuzz-load-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(file) = mobilenetv2::weights::load(&path) {
        let _ = mobilenetv2::Model::from_file(file);
    }
});
