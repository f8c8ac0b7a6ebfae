//! torchvision parity: logits of every engine mode, ISA and thread count against
//! torchvision's, for every config in tests/data/parity (widths 0.35..1.4, odd and non-square
//! sizes, batches, ablations, output strides 16 and 8). Weights come from `Model::init` with
//! the seed the fixture script used, written to safetensors and loaded back, so the file path
//! is tested too.

mod common;

use common::*;
use mobilenetv2::engine::{Engine, Isa, Mode, Options};
use mobilenetv2::{Batch, Model};

/// The tolerance on logits.
const TOL: f32 = 1e-4;

#[test]
fn every_mode_matches_torchvision() {
    let dir = std::env::temp_dir().join(format!("mnv2-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut setups: Vec<(Mode, Option<Isa>)> = vec![(Mode::Reference, None)];
    for isa in mnv2_kernels::isa::available() {
        setups.push((Mode::Fast, Some(isa)));
        setups.push((Mode::Streaming, Some(isa)));
    }
    eprintln!("setups: {setups:?}");
    for cfg in parity_configs() {
        let made = Model::init(&cfg.spec, cfg.seed, true).unwrap();
        let file = dir.join(format!("{}.safetensors", cfg.name));
        made.save(&file).unwrap();
        let model = Model::load(&file).unwrap();
        assert_eq!(model.spec(), &cfg.spec, "{}: spec round trip", cfg.name);
        let plan_in = model.plan.input();
        let x = det_input(cfg.batch * 3 * plan_in.h * plan_in.w, cfg.seed);
        let dims = [cfg.batch, 3, plan_in.h, plan_in.w];
        let batch = Batch::from_nchw(&dims, &x).unwrap();
        let want = parity_logits(&cfg.name);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for &(mode, isa) in &setups {
            for threads in [1, 2] {
                let engine = Engine::new(&model, Options { mode, threads, isa, precision: None }).unwrap();
                let got = engine.run(&batch).unwrap();
                let err = max_abs_diff(&got.data, &want);
                let what =
                    format!("{} {mode:?} {} threads={threads}", cfg.name, isa.map_or("scalar-ref", |i| i.name()));
                eprintln!("{what}: max |diff| = {err:.3e} (max |logit| {scale:.3})");
                assert!(err <= TOL, "{what}: max |diff| {err} > {TOL}");
                // Logits are ~0.1 here, so also hold the error to 1e-4 of their scale.
                assert!(err <= 1e-4 * scale, "{what}: relative error {}", err / scale);
                let again = engine.run_nchw(&dims, &x).unwrap();
                assert_eq!(again.data, got.data, "{what}: NCHW and NHWC inputs differ");
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The tolerance on bf16 logits (absolute, against fp32).
const BF16_TOL: f32 = 2e-2;

/// bf16 precision (bf16 products, f32 sums in every 1x1 conv) stays within [`BF16_TOL`] of
/// torchvision's fp32 logits on every parity config, in fast and streaming mode; the
/// AVX512-BF16 kernels agree with the scalar twin the engine falls back to on other tiers;
/// and the difference to fp32 is not zero (the bf16 path really ran).
#[test]
fn bf16_logits_stay_near_torchvision() {
    use mobilenetv2::engine::Precision;
    let dir = std::env::temp_dir().join(format!("mnv2-parity-bf16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let best = mnv2_kernels::isa::best();
    let mut worst = (0f32, 0f32, String::new());
    for cfg in parity_configs() {
        let made = Model::init(&cfg.spec, cfg.seed, true).unwrap();
        let file = dir.join(format!("{}.safetensors", cfg.name));
        made.save(&file).unwrap();
        let model = Model::load(&file).unwrap();
        let plan_in = model.plan.input();
        let x = det_input(cfg.batch * 3 * plan_in.h * plan_in.w, cfg.seed);
        let batch = Batch::from_nchw(&[cfg.batch, 3, plan_in.h, plan_in.w], &x).unwrap();
        let want = parity_logits(&cfg.name);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let opts = |mode, threads, isa| Options { mode, threads, isa: Some(isa), precision: Some(Precision::Bf16) };
        let run = |o: Options| {
            let e = Engine::new(&model, o).unwrap();
            assert_eq!(e.precision(), Some(Precision::Bf16));
            (e.run(&batch).unwrap().data, e.kernels().1)
        };
        let (fast, kernels) = run(opts(Mode::Fast, 1, best));
        let err = max_abs_diff(&fast, &want);
        eprintln!(
            "{} bf16 fast {}: max |diff| to torchvision fp32 = {err:.3e} (max |logit| {scale:.3}); kernels {:?}",
            cfg.name,
            best.name(),
            kernels.iter().filter(|k| k.contains("bf16")).collect::<std::collections::BTreeSet<_>>()
        );
        assert!(err <= BF16_TOL, "{}: bf16 max |diff| {err} > {BF16_TOL}", cfg.name);
        assert!(err > 0.0, "{}: bf16 logits equal fp32 ones: the bf16 path did not run", cfg.name);
        if err > worst.0 {
            worst = (err, err / scale, cfg.name.clone());
        }
        let (streaming, _) = run(opts(Mode::Streaming, 2, best));
        let d = max_abs_diff(&streaming, &fast);
        assert!(d <= 1e-5 * scale.max(1.0), "{}: bf16 streaming vs fast {d}", cfg.name);
        // The scalar tier runs the bf16 twin: same rounded products, f32 sums (bit-exact per
        // GEMM, see mnv2-kernels). Its stem and depthwise kernels are the scalar f32 ones,
        // whose last-bit differences can flip a bf16 rounding of the next layer's input (one
        // bf16 step, 2^-8 relative): allow a few such flips, well under the fp32 gap.
        let (twin, twin_kernels) = run(opts(Mode::Fast, 1, Isa::Scalar));
        assert!(twin_kernels.iter().any(|k| k.starts_with("gemm_bf16") && k.ends_with("_scalar")));
        let d = max_abs_diff(&twin, &fast);
        eprintln!("{} bf16 {} vs scalar twin: max |diff| {d:.3e}", cfg.name, best.name());
        assert!(d <= 2e-3 * scale, "{}: bf16 kernels vs twin {d}", cfg.name);
    }
    println!(
        "bf16 vs torchvision fp32 over every parity config: max |diff| {:.3e} ({:.2e} of the largest logit, {})",
        worst.0, worst.1, worst.2
    );
    std::fs::remove_dir_all(&dir).ok();
}
