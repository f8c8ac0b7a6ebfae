//! Fitting a file's tensors to a plan: which spec a state dict is (width, expansion,
//! classes from the tensor shapes), whether every tensor fits, and the float parameters.
//! The width candidates and the "first misfit" rule are shared by every importer.

use std::collections::BTreeMap;
use std::path::Path;

use super::{Data, Tensor, TensorFile};
use crate::error::{Error, Result};
use crate::names::{self, expected, is_bn_counter, Expected, Params};
use crate::plan::Plan;
use crate::spec::Spec;

/// Widths tried, in order, when a file does not say which it is.
pub const CANDIDATE_WIDTHS: [f64; 16] =
    [1.0, 0.35, 0.5, 0.75, 1.3, 1.4, 0.25, 0.6, 0.8, 0.9, 1.1, 1.2, 1.5, 1.75, 2.0, 0.1];

/// The first expected tensor a file does not have right, or `None` if all fit.
pub fn first_misfit(file: &TensorFile, exp: &[Expected]) -> Option<(usize, Error)> {
    misfit(&file.tensors, &file.path, exp)
}

fn misfit(tensors: &BTreeMap<String, Tensor>, path: &Path, exp: &[Expected]) -> Option<(usize, Error)> {
    for (i, e) in exp.iter().enumerate() {
        match tensors.get(&e.name) {
            None => {
                return Some((
                    i,
                    Error::MissingTensor { path: path.into(), name: e.name.clone(), expected: e.shape.clone() },
                ))
            }
            Some(t) if t.shape != e.shape => {
                return Some((
                    i,
                    Error::ShapeMismatch {
                        path: path.into(),
                        name: e.name.clone(),
                        expected: e.shape.clone(),
                        got: t.shape.clone(),
                    },
                ))
            }
            Some(_) => {}
        }
    }
    None
}

/// The float parameters of a plan from a file's tensors: every tensor known, every value finite.
pub fn float_params(mut tensors: BTreeMap<String, Tensor>, plan: &Plan, path: &Path) -> Result<Params> {
    let exp = expected(plan);
    if let Some((_, err)) = misfit(&tensors, path, &exp) {
        return Err(err);
    }
    // Every tensor must be one the plan needs (or BatchNorm's step counter).
    for name in tensors.keys() {
        if !is_bn_counter(name) && !exp.iter().any(|e| &e.name == name) {
            return Err(Error::UnknownTensor { path: path.into(), name: name.clone() });
        }
    }
    let mut params = BTreeMap::new();
    for e in &exp {
        let t = tensors.remove(&e.name).expect("checked by misfit");
        let values = match t.data {
            Data::F32(v) => v,
            other => {
                return Err(Error::DType {
                    path: path.into(),
                    name: e.name.clone(),
                    expected: "a floating point type".into(),
                    got: other.dtype().into(),
                })
            }
        };
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite { path: path.into(), name: e.name.clone(), index, value });
        }
        params.insert(e.name.clone(), values);
    }
    Ok(params)
}

/// Finds width, expansion and classes from tensor shapes (files without `mnv2` metadata).
pub fn infer_spec(file: &TensorFile) -> Result<Spec> {
    // The tensors that tell classes and expansion, named as Table 2's plan names them.
    let table2 = Plan::new(&Spec::default())?;
    let cls = &names::weight(&table2.layers[table2.classifier("a state dict")?.classifier]);
    let first_expand = table2.block(2).and_then(|b| b.expand).expect("Table 2's block 2 expands");
    let expand_weight = names::weight(&table2.layers[first_expand]);
    let classes = match file.tensors.get(cls) {
        Some(t) if t.shape.len() == 2 && t.shape[0] > 0 => t.shape[0],
        Some(t) => {
            return Err(Error::ShapeMismatch {
                path: file.path.clone(),
                name: cls.clone(),
                expected: vec![0, 1280],
                got: t.shape.clone(),
            })
        }
        None => {
            return Err(Error::NoConfig {
                path: file.path.clone(),
                detail: format!(
                    "there is no `{cls}` tensor, so this is not a torchvision MobileNetV2 state dict ({} tensors{})",
                    file.tensors.len(),
                    file.tensors.keys().next().map(|k| format!(", the first is `{k}`")).unwrap_or_default()
                ),
            })
        }
    };
    // The expansion rate is visible in the first expanding block: hidden = in * t.
    let expansion = file
        .tensors
        .get(&expand_weight)
        .filter(|t| t.shape.len() == 4 && t.shape[1] > 0 && t.shape[0] % t.shape[1] == 0)
        .map(|t| t.shape[0] / t.shape[1])
        .filter(|&t| t != 6 && (1..=32).contains(&t));
    let mut best: Option<(usize, Error)> = None;
    for width in CANDIDATE_WIDTHS {
        let spec = Spec { width, classes, expansion, ..Spec::default() };
        let plan = Plan::new(&spec)?;
        match first_misfit(file, &expected(&plan)) {
            None => return Ok(spec),
            Some((i, err)) => {
                if best.as_ref().is_none_or(|(b, _)| i > *b) {
                    best = Some((i, err));
                }
            }
        }
    }
    Err(best.expect("at least one candidate").1)
}
