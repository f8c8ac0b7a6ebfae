//! Mobile DeepLabv3 exported to ONNX (the upsampled per-pixel logits; Resize linear with
//! align_corners) reproduces the engine: ONNX Runtime ran the graphs the exporter writes
//! (scripts/fixtures/deeplab_onnx.py; each export must hash as the one it ran) for two random
//! segmenters, OS 16 and OS 8 with ASPP, and the fast engine's logits on the same input agree
//! within 1e-4 absolute. The measured worst errors are printed (`-- --nocapture`).

use std::path::PathBuf;

use mobilenetv2::engine::{Engine, Options};
use mobilenetv2::export::onnx;
use mobilenetv2::spec::HeadSpec;
use mobilenetv2::{npy, Batch, Model, Spec};
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn onnx_runtime_reproduces_the_segmenter() {
    let dir = root().join("tests/data/deeplab_onnx");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let (h, w) = (41, 34);
    for (name, aspp, os) in [("os16", false, 16), ("os8_aspp", true, 8)] {
        // As `mnv2 init --width 0.5 --classes 5 --resolution 41x34 --seed 3 --randomize-bn` makes it.
        let spec = Spec {
            width: 0.5,
            classes: 5,
            height: h,
            width_px: w,
            head: HeadSpec::DeepLab { aspp },
            output_stride: os,
            ..Spec::default()
        };
        let model = Model::init(&spec, 3, true).unwrap();
        let opts = onnx::Options { dynamic_batch: true, ..onnx::Options::default() };
        let bytes = onnx::to_bytes(&model, opts).unwrap();
        let hash: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hash,
            meta["cases"][name]["onnx_sha256"].as_str().unwrap(),
            "{name}: the exporter changed: rerun scripts/fixtures/deeplab_onnx.py"
        );
        let want = npy::read(&dir.join(format!("{name}.logits.npy"))).unwrap();
        assert_eq!(want.shape, [1, 5, h, w]);
        let mut x = vec![0f32; 3 * h * w];
        for c in 0..3 {
            for y in 0..h {
                for xx in 0..w {
                    x[(c * h + y) * w + xx] = ((3 * y + 5 * xx + 70 * c) % 255) as f32 / 127.5 - 1.0;
                }
            }
        }
        let input = Batch::from_nchw(&[1, 3, h, w], &x).unwrap();
        let logits = Engine::new(&model, Options::default()).unwrap().run(&input).unwrap();
        // NHWC against ONNX Runtime's NCHW.
        let mut err = 0f32;
        for c in 0..5 {
            for p in 0..h * w {
                err = err.max((logits.data[p * 5 + c] - want.data[c * h * w + p]).abs());
            }
        }
        let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        println!("{name}: max |engine - ONNX Runtime| {err:.2e} (largest logit {scale:.2})");
        assert!(err <= 1e-4, "{name}: {err}");
    }
}
