//! Replays the committed corpus of the `serve_v2` fuzz target (tests/data/fuzz/serve_v2: the
//! seeds and any input the fuzzer found interesting) on stable: each request decodes or is
//! refused with a 4xx, and the seeds that are well-formed requests decode.

use std::path::PathBuf;

use mnv2_serve::v2::{decode_harness, InferData};

#[test]
fn serve_v2_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fuzz/serve_v2");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match decode_harness(&data) {
            None => {}
            Some(Ok(call)) => {
                let images = match call.input {
                    InferData::Tensor(t) => t.len(),
                    InferData::Images(i) => i.len(),
                };
                assert!((1..=4).contains(&images), "{name}: {images} images");
            }
            Some(Err(e)) => {
                assert!(e.status.is_client_error(), "{name}: {} {}", e.status, e.message);
                assert!(!e.message.contains('\n'), "{name}: a one-line error, got {:?}", e.message);
                assert!(
                    !name.starts_with("fp32_") && !name.starts_with("bytes_"),
                    "{name}: a seed is refused: {}",
                    e.message
                );
            }
        }
        n += 1;
    }
    assert!(n >= 4, "the corpus has {n} inputs");
}
