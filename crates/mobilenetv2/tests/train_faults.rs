//! Regression tests for the training faults of issue 17 (defects 6, 12 and 13), through the
//! library's `train::train` on a tiny model (width 0.35, 32x32, 8 IDX images made here):
//! - 6: `--resume` from a checkpoint whose EMA tensor has the wrong length is a one-line error
//!   naming the checkpoint (it was a panic in `copy_from_slice`, exit 101 in the CLI);
//! - 12: a run that diverges saves nothing non-finite (it used to write a checkpoint and final
//!   weights full of inf/NaN that every loader then refuses), and resume refuses optimizer
//!   state or EMA weights that are not finite;
//! - 13: an output folder that cannot be written to is refused before any training step (it
//!   was found only when the first metrics line or checkpoint was written).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[path = "support/idx.rs"]
mod idx;
use idx::idx_data;
use mobilenetv2::data::augment::Augment;
use mobilenetv2::train::{self, Config, Event, Method, Schedule};
use mobilenetv2::weights::{self, safetensors_io, Data, Tensor};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-train-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 8 images, batch 8: one step per epoch.
fn config(name: &str) -> Config {
    let d = dir(name);
    let data = mkdir(d.join("data"));
    idx_data(&data, 8, 2);
    Config {
        data,
        val: None,
        val_split: 0.0,
        init: None,
        width: 0.35,
        resolution: 32,
        epochs: 2,
        batch: 8,
        method: Method::Sgd { momentum: 0.9, nesterov: false },
        lr: 0.05,
        weight_decay: 4e-5,
        decay_all: false,
        schedule: Schedule::Constant,
        dropout: 0.0,
        label_smoothing: 0.0,
        augment: Augment::None,
        shuffle: false,
        seed: 5,
        freeze_backbone: 0,
        ema: None,
        bottleneck: Default::default(),
        shortcut: Default::default(),
        eval_every: 0,
        checkpoint_every: 0,
        skip_bad_images: false,
        max_steps: None,
        out: d.join("out"),
    }
}

fn mkdir(p: PathBuf) -> PathBuf {
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Runs `train` and returns its result with the events it reported.
fn run(cfg: &Config, resume: bool) -> (mobilenetv2::Result<PathBuf>, Vec<Event>) {
    let mut events = Vec::new();
    let r = train::train(cfg, resume, &mut |e| events.push(e));
    (r, events)
}

fn steps(events: &[Event]) -> usize {
    events.iter().filter(|e| matches!(e, Event::Step { .. })).count()
}

/// Trains the first of `cfg`'s two steps and returns the checkpoint it leaves.
fn first_step_checkpoint(cfg: &Config) -> PathBuf {
    let (r, events) = run(&Config { max_steps: Some(1), ..cfg.clone() }, false);
    r.unwrap();
    assert_eq!(steps(&events), 1);
    let ckpt = cfg.out.join("checkpoint.safetensors");
    assert!(ckpt.is_file());
    ckpt
}

/// Rewrites the checkpoint at `path` with `edit` applied to the first tensor whose name starts
/// with `prefix`; returns that tensor's name.
fn edit_checkpoint(path: &Path, prefix: &str, edit: impl FnOnce(&mut Vec<f32>)) -> String {
    let f = weights::load(path).unwrap();
    let mut tensors: BTreeMap<String, Tensor> = f.tensors;
    let name = tensors.keys().find(|k| k.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}* tensor")).clone();
    let t = tensors.get_mut(&name).unwrap();
    let Data::F32(v) = &mut t.data else { panic!("{name} is not f32") };
    edit(v);
    t.shape = vec![v.len()];
    safetensors_io::write(path, &tensors, &f.metadata).unwrap();
    name
}

fn assert_one_line_naming(e: &mobilenetv2::Error, path: &Path, needle: &str) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    assert!(msg.contains(&path.display().to_string()), "does not name {}: {msg}", path.display());
    assert!(msg.contains(needle), "does not say `{needle}`: {msg}");
}

/// Defect 6: an EMA tensor one value short was copied with `copy_from_slice`, which panicked.
#[test]
fn resume_with_a_wrong_size_ema_tensor_is_an_error_naming_the_checkpoint() {
    let cfg = Config { ema: Some(0.99), ..config("ema-size") };
    let ckpt = first_step_checkpoint(&cfg);
    let name = edit_checkpoint(&ckpt, "ema.", |v| {
        v.pop();
    });
    let (r, events) = run(&cfg, true);
    let e = r.expect_err("a short EMA tensor was accepted");
    assert_one_line_naming(&e, &ckpt, "EMA");
    assert!(e.to_string().contains(name.trim_start_matches("ema.")), "does not name the tensor: {e}");
    assert_eq!(steps(&events), 0, "trained on from a bad checkpoint");
}

/// Defect 12, saving: a learning rate of 1e300 (finite as f64, infinite as the f32 the update
/// uses) makes every weight inf or NaN after the first step, whose loss is still finite. The
/// checkpoint after that step and the final weights must not be written.
#[test]
fn diverged_weights_are_never_saved() {
    let cfg = Config { lr: 1e300, epochs: 1, ema: Some(0.99), ..config("diverge") };
    let (r, events) = run(&cfg, false);
    assert_eq!(steps(&events), 1, "the diverging step did not run");
    let e = r.expect_err("non-finite weights were saved");
    let msg = e.to_string();
    assert!(!msg.contains('\n') && msg.contains("non-finite") && msg.contains("diverged"), "{msg}");
    for f in ["checkpoint.safetensors", "final.safetensors"] {
        assert!(!cfg.out.join(f).exists(), "{f} was written from non-finite weights");
    }
    // The same run with a sane rate saves both, so the refusal above is the divergence's.
    let sane = Config { lr: 0.05, ..cfg.clone() };
    let (r, _) = run(&sane, false);
    let out = r.unwrap();
    assert!(out.is_file() && sane.out.join("checkpoint.safetensors").is_file());
}

/// Defect 12, resuming: optimizer state or EMA weights holding NaN or infinity are refused at
/// load, before a step; they used to be loaded and spread into the weights.
#[test]
fn resume_refuses_non_finite_optimizer_state_and_ema() {
    for (case, prefix, needle, bad) in [
        ("optim-nan", "optim.0.", "optimizer state", f32::NAN),
        ("optim-inf", "optim.0.", "optimizer state", f32::INFINITY),
        ("ema-nan", "ema.", "EMA", f32::NAN),
        ("ema-inf", "ema.", "EMA", f32::NEG_INFINITY),
    ] {
        let cfg = Config { ema: Some(0.99), ..config(case) };
        let ckpt = first_step_checkpoint(&cfg);
        edit_checkpoint(&ckpt, prefix, |v| {
            let mid = v.len() / 2;
            v[mid] = bad;
        });
        let (r, events) = run(&cfg, true);
        let Err(e) = r else { panic!("{case}: a non-finite checkpoint was resumed") };
        assert_one_line_naming(&e, &ckpt, needle);
        assert!(e.to_string().contains("non-finite"), "{case}: {e}");
        assert_eq!(steps(&events), 0, "{case}: trained on from a non-finite checkpoint");
    }
}

/// Defect 13: an output folder that exists but cannot be written to is refused at start,
/// before the data is read or a step is run. Permissions do not stop root (the tests may run
/// as root), so where a 0555 folder is still writable the test uses `/proc`, a folder no one
/// can create files in.
#[test]
fn unwritable_output_folder_is_refused_before_training() {
    let mut cfg = config("readonly");
    let ro = mkdir(cfg.out.clone());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let writable = std::fs::write(ro.join("probe"), b"").is_ok();
    if writable {
        if !Path::new("/proc/self").is_dir() {
            println!("SKIPPED: no unwritable folder here (root ignores 0555 and there is no /proc)");
            return;
        }
        println!("a 0555 folder is writable here (root): using /proc as the unwritable output folder");
        cfg.out = PathBuf::from("/proc");
    }
    let (r, events) = run(&cfg, false);
    let e = r.expect_err("an unwritable output folder was accepted");
    assert_one_line_naming(&e, &cfg.out, "not writable");
    assert!(events.is_empty(), "training started before the output folder was checked: {events:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
