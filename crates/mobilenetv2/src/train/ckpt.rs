//! What the step-based training loops (segmentation, detection) share: their resumable
//! checkpoint (the model's tensors, the optimizer's state, the step, the RNG, the training
//! time and the run's config, written atomically) and their metrics (`metrics.jsonl`, one
//! [`Metrics`] line per evaluation, redrawn into `curves.png`).

use std::collections::BTreeMap;
use std::path::Path;

use super::net::Net;
use super::optim::Optimizer;
use super::plot;
use super::run::{Event, Metrics};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::rng::Rng;
use crate::weights::{self, Tensor};

/// The loop state a checkpoint restores besides the tensors.
pub(crate) struct Resumed {
    /// Steps done.
    pub step: u64,
    /// The loop's RNG.
    pub rng: Rng,
    /// Seconds spent training so far.
    pub train_seconds: f64,
    /// The checkpoint's metadata (the loop's own keys).
    pub metadata: BTreeMap<String, String>,
}

/// Writes `model` with `net`'s values, `opt`'s state and the loop state to `path`
/// (atomically), tagged `format`; `extra` adds metadata. Refuses non-finite weights.
#[allow(clippy::too_many_arguments)]
pub(crate) fn save(
    path: &Path,
    format: &str,
    model: &Model,
    net: &Net,
    opt: &Optimizer,
    step: u64,
    rng: &Rng,
    train_seconds: f64,
    extra: &[(&str, String)],
) -> Result<()> {
    if net.params.iter().any(|v| !v.is_finite()) {
        return Err(Error::Input("training diverged: the weights hold non-finite values; not saved".into()));
    }
    let mut model = model.clone();
    net.store(&mut model);
    let mut tensors: BTreeMap<String, Tensor> =
        model.tensors().into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect();
    for (slot, buf) in opt.state.iter().enumerate() {
        for t in net.tensors.iter().filter(|t| t.trainable()) {
            tensors.insert(
                format!("optim.{slot}.{}", t.name),
                Tensor::f32(t.shape.clone(), buf[t.offset..t.offset + t.len].to_vec()),
            );
        }
    }
    let mut meta = model.metadata();
    meta.insert("format".into(), format.into());
    meta.insert("step".into(), step.to_string());
    meta.insert("optim_steps".into(), opt.steps.to_string());
    meta.insert("rng".into(), serde_json::to_string(&rng.state()).expect("serialises"));
    meta.insert("train_seconds".into(), train_seconds.to_string());
    for (k, v) in extra {
        meta.insert((*k).into(), v.clone());
    }
    weights::safetensors_io::write(path, &tensors, &meta)
}

/// Reads a checkpoint `save` wrote with `format` into `net` (values of a model of the same
/// plan) and `opt` (fresh, of the same method); `hint` says what may differ when sizes do not
/// match (e.g. "another --crop/--width?").
pub(crate) fn load(path: &Path, format: &str, net: &mut Net, opt: &mut Optimizer, hint: &str) -> Result<Resumed> {
    let file = weights::load(path)?;
    let bad = |what: String| Error::format(path, "checkpoint", what);
    let meta = |k: &str| file.metadata.get(k).cloned().ok_or_else(|| bad(format!("no `{k}` in the metadata")));
    if meta("format")? != format {
        return Err(bad(format!("not a `{format}` training checkpoint")));
    }
    let num = |k: &str| -> Result<u64> { meta(k)?.parse().map_err(|e| bad(format!("metadata `{k}`: {e}"))) };
    let (step, optim_steps) = (num("step")?, num("optim_steps")?);
    let rng: [u64; 4] = serde_json::from_str(&meta("rng")?).map_err(|e| bad(format!("metadata `rng`: {e}")))?;
    let train_seconds: f64 = meta("train_seconds")?.parse().map_err(|e| bad(format!("train_seconds: {e}")))?;
    let get = |name: &str| -> Result<Vec<f32>> {
        match file.tensors.get(name).map(|t| &t.data) {
            Some(weights::Data::F32(v)) => Ok(v.clone()),
            _ => Err(bad(format!("missing or non-float tensor `{name}`"))),
        }
    };
    for t in net.tensors.clone() {
        let v = get(&format!("model.{}", t.name))?;
        if v.len() != t.len {
            return Err(bad(format!("`{}` has {} values, expected {} ({hint})", t.name, v.len(), t.len)));
        }
        let dst = if t.trainable() { &mut net.params } else { &mut net.stats };
        dst[t.offset..t.offset + t.len].copy_from_slice(&v);
        if t.trainable() {
            for (slot, buf) in opt.state.iter_mut().enumerate() {
                let v = get(&format!("optim.{slot}.{}", t.name))?;
                if v.len() != t.len {
                    return Err(bad(format!("optimizer state of `{}` has the wrong size", t.name)));
                }
                buf[t.offset..t.offset + t.len].copy_from_slice(&v);
            }
        }
    }
    opt.steps = optim_steps;
    Ok(Resumed { step, rng: Rng::from_state(rng), train_seconds, metadata: file.metadata })
}

/// The metrics already in `OUT/metrics.jsonl` (a resumed run's history).
pub(crate) fn read_metrics(out: &Path) -> Vec<Metrics> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

/// Appends `m` to `OUT/metrics.jsonl` (the file rewritten atomically), redraws `curves.png`
/// from `history` + `m` and reports it.
pub(crate) fn record(out: &Path, history: &mut Vec<Metrics>, m: Metrics, on: &mut dyn FnMut(Event)) -> Result<()> {
    let line = serde_json::to_string(&m).expect("metrics serialise") + "\n";
    let path = out.join("metrics.jsonl");
    let mut all = std::fs::read(&path).unwrap_or_default();
    all.extend_from_slice(line.as_bytes());
    crate::fsutil::write_atomic(&path, &all)?;
    history.push(m.clone());
    if let Err(e) = plot::curves(&out.join("curves.png"), history) {
        on(Event::Note(format!("warning: could not draw the curves: {e}")));
    }
    on(Event::Eval(m));
    Ok(())
}
