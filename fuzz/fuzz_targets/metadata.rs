//! Fuzzes the weights metadata a file carries (`spec`, `preprocess`, `labels`,
//! `quantization`, as JSON strings) against a valid small network's tensors: whatever the
//! strings say, loading gives a model or an error naming the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mobilenetv2::weights::TensorFile;
use mobilenetv2::{Model, Spec};
use std::collections::BTreeMap;
use std::sync::OnceLock;

fn base() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::init(&Spec::new(0.35, 96), 1, false).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let m = base();
    let mut metadata: BTreeMap<String, String> = BTreeMap::new();
    // Fields separated by 0xff: key byte (which entry) then the value.
    for part in data.split(|&b| b == 0xff) {
        let Some((&k, v)) = part.split_first() else { continue };
        let key = ["spec", "preprocess", "labels", "quantization"][k as usize % 4];
        metadata.insert(key.into(), String::from_utf8_lossy(v).into_owned());
    }
    let file = TensorFile { path: "fuzz.safetensors".into(), tensors: m.tensors(), metadata };
    if let Ok(model) = Model::from_file(file) {
        if let Ok(img) = mobilenetv2::preprocess::RgbImage::new(3, 2, vec![9; 18]) {
            let s = model.spec();
            let _ = mobilenetv2::preprocess::transform(&img, &model.preprocess, s.height, s.width_px);
        }
    }
});
