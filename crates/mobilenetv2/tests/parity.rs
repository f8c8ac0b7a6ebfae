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
                let engine = Engine::new(&model, Options { mode, threads, isa }).unwrap();
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
