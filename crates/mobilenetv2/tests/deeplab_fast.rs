//! Mobile DeepLabv3 on the fast engine (fused dilated backbone, the last block's output
//! materialised once, the head on the fast kernels) and the streaming one, against the
//! layer-by-layer reference engine; and the activation memory of each at 512x512, OS 16
//! (the paper's section 5 argument; printed with `-- --nocapture`).

use mobilenetv2::engine::{Engine, Mode, Options};
use mobilenetv2::plan::Shape;
use mobilenetv2::rng::Rng;
use mobilenetv2::spec::HeadSpec;
use mobilenetv2::{Batch, Model, Spec};

fn spec(width: f64, res: usize, os: usize, aspp: bool) -> Spec {
    Spec { classes: 21, output_stride: os, head: HeadSpec::DeepLab { aspp }, ..Spec::new(width, res) }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// Upsampled logits (and `head.logits` before the upsampling) of the fast and streaming
/// engines on 1 and 2 threads, batches of 2 and 1, within 1e-4 of the reference engine's
/// relative to the largest logit (f32 sums in another order through ~60 layers), at OS 16
/// and 8, with and without ASPP, at an odd input size (TF 'SAME' padding on odd maps).
#[test]
fn fast_engine_matches_reference_engine() {
    let (h, w) = (71, 58);
    let mut rng = Rng::new(7);
    let data: Vec<f32> = (0..2 * h * w * 3).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect();
    let batch = Batch::new(2, Shape::new(h, w, 3), data).unwrap();
    for (os, aspp) in [(16, false), (8, false), (16, true)] {
        let model = Model::init(&spec(0.5, h, os, aspp), 3, true).unwrap();
        let opts = |mode, threads| Options { mode, threads, ..Options::default() };
        let reference = Engine::new(&model, opts(Mode::Reference, 1)).unwrap();
        let plan = reference.plan_for(batch.shape).unwrap();
        let head = plan.deeplab("test").unwrap().clone();
        let want = reference.run_taps(&batch, &plan, &[head.logits, head.upsample]).unwrap();
        let scale = want[0].data.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 1e-2, "the logits are not degenerate ({scale})");
        for (mode, threads) in [(Mode::Fast, 1), (Mode::Fast, 2), (Mode::Streaming, 2)] {
            let e = Engine::new(&model, opts(mode, threads)).unwrap();
            let got = e.run_taps(&batch, &plan, &[head.logits, head.upsample]).unwrap();
            let one = e.run(&Batch::new(1, batch.shape, batch.image(1).to_vec()).unwrap()).unwrap();
            let err = [
                max_abs(&got[0].data, &want[0].data),
                max_abs(&got[1].data, &want[1].data),
                max_abs(&one.data, want[1].image(1)),
            ];
            println!(
                "OS {os}{} {mode:?} x{threads}: max |fast - reference| logits {:.2e}, upsampled {:.2e}, one image {:.2e} (largest logit {scale:.2})",
                if aspp { " + ASPP" } else { "" },
                err[0],
                err[1],
                err[2]
            );
            assert!(
                err.iter().all(|&e| e <= 1e-4 * scale.max(1.0)),
                "OS {os} aspp {aspp} {mode:?} x{threads}: {err:?}"
            );
        }
    }
}

/// bf16 precision on DeepLab (backbone and head 1x1 convs on the bf16 GEMMs): fast and
/// streaming within 2e-2 of the largest logit of the f32 reference, and not equal to it.
#[test]
fn bf16_deeplab_stays_near_the_reference() {
    use mobilenetv2::engine::Precision;
    let (h, w) = (65, 49);
    let mut rng = Rng::new(11);
    let data: Vec<f32> = (0..h * w * 3).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect();
    let batch = Batch::new(1, Shape::new(h, w, 3), data).unwrap();
    for (os, aspp) in [(16, true), (8, false)] {
        let model = Model::init(&spec(0.5, h, os, aspp), 5, true).unwrap();
        let reference = Engine::new(&model, Options { mode: Mode::Reference, ..Options::default() }).unwrap();
        let want = reference.run(&batch).unwrap();
        let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        for mode in [Mode::Fast, Mode::Streaming] {
            let o = Options { mode, threads: 2, precision: Some(Precision::Bf16), ..Options::default() };
            let e = Engine::new(&model, o).unwrap();
            assert!(e.kernels().1.iter().any(|k| k.starts_with("gemm_bf16")));
            let err = max_abs(&e.run(&batch).unwrap().data, &want.data);
            println!("OS {os} {mode:?} bf16: max |bf16 - f32 reference| {err:.2e} (largest logit {scale:.2})");
            assert!(err > 0.0 && err <= 2e-2 * scale, "OS {os} {mode:?} bf16: {err}");
        }
    }
}

/// Peak activation bytes of one 512x512 image at OS 16 (the paper's chosen head, 21
/// classes): the fused engine materialises only block outputs (and the head's small
/// tensors), the streaming one not even the high-resolution block outputs, while the
/// layer-by-layer engine holds whole expanded tensors (`Engine::activation_bytes`: its widest
/// layer's input, the block input and the output). The fused engines' figures include the
/// upsampled logits (512x512x21 floats, 22 MB: the output).
#[test]
fn activation_bytes_at_512_os16() {
    let model = Model::init(&spec(1.0, 512, 16, false), 1, false).unwrap();
    let shape = Shape::new(512, 512, 3);
    let bytes = |mode| {
        let e = Engine::new(&model, Options { mode, threads: 1, ..Options::default() }).unwrap();
        e.activation_bytes(shape).unwrap()
    };
    let (reference, fast, streaming) = (bytes(Mode::Reference), bytes(Mode::Fast), bytes(Mode::Streaming));
    let output = 512 * 512 * 21 * 4;
    println!(
        "512x512 OS 16, one image: peak activation bytes layer by layer {reference} (at features.2's depthwise \
         conv), fast {fast}, streaming {streaming}; the fused engines' include the upsampled logits ({output}), \
         without which {} and {}",
        fast - output,
        streaming - output
    );
    assert!(fast >= output && streaming >= output);
    assert!(streaming < fast && fast < reference, "reference {reference}, fast {fast}, streaming {streaming}");
    assert!(streaming - output < reference / 4, "streaming's own tensors are a small fraction");
}

/// An int8 segmenter (calibrated on the images it then runs, `quant::calibrate`, saved and
/// loaded back): the backbone on the int8 kernels, the head in f32 on the dequantised
/// features. Fast and streaming agree exactly; against fp32 the logits stay within 5% of the
/// largest logit (1.8% measured) and the per-pixel classes agree on at least 95% of the pixels
/// (100% measured).
#[test]
fn int8_segmenter_runs_on_the_fast_engine() {
    use mobilenetv2::quant::{self, Method};
    let (h, w) = (65, 57);
    let mut rng = Rng::new(11);
    let data: Vec<f32> = (0..4 * h * w * 3).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect();
    let batch = Batch::new(4, Shape::new(h, w, 3), data).unwrap();
    let model = Model::init(&spec(0.5, h, 16, false), 5, true).unwrap();
    let q = quant::calibrate(&model, std::slice::from_ref(&batch), Method::MinMax).unwrap();
    let path = std::env::temp_dir().join(format!("mnv2-deeplab-int8-{}.safetensors", std::process::id()));
    quant::save(&model, &q, &path).unwrap();
    let int8 = Model::load(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert!(int8.quant.is_some());
    let fp32 = Engine::new(&model, Options::default()).unwrap().run(&batch).unwrap();
    let run =
        |mode| Engine::new(&int8, Options { mode, threads: 2, ..Options::default() }).unwrap().run(&batch).unwrap();
    let (fast, streaming) = (run(Mode::Fast), run(Mode::Streaming));
    assert_eq!(fast.data, streaming.data, "streaming int8 = fast int8");
    let scale = fp32.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = max_abs(&fast.data, &fp32.data);
    let argmax = |v: &[f32]| -> Vec<usize> {
        v.chunks_exact(21).map(|p| (0..21).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap()).collect()
    };
    let (a, b) = (argmax(&fast.data), argmax(&fp32.data));
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
    println!(
        "int8 DeepLab OS 16: max |int8 - fp32| {err:.3} (largest logit {scale:.2}); classes agree on {:.1}% of pixels",
        100.0 * agree
    );
    assert!(err <= 0.05 * scale, "{err} vs {scale}");
    assert!(agree >= 0.95, "{agree}");
}
