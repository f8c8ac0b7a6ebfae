//! The library's modules stay in layers: each top-level module may use only modules of its own
//! layer or lower ones, and no two modules use each other, directly or around a loop. The table below is the architecture (docs/architecture.md draws it);
//! this test reads every source file's `crate::` paths, so a new upward edge, or a module
//! that is not in the table, fails here with the file that introduced it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first.
const LAYERS: &[(&str, &[&str])] = &[
    ("L0 foundations", &["error", "rng", "labels", "fsutil", "limits", "spec"]),
    ("L1 the one description", &["plan", "tensor"]),
    ("L2 pure functions of the plan", &["names", "layout", "fold", "accounting", "qscheme", "preprocess", "draw"]),
    ("L3 file formats", &["weights", "npy"]),
    ("L4 a network with weights", &["model"]),
    ("L5 execution", &["engine"]),
    ("L6 applications", &["classify", "quant", "export", "data", "detect", "segment", "paper"]),
    ("L7 training", &["train"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

/// The code of a source file without comments and without its `#[cfg(test)]` tail.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level module names a piece of code refers to through `crate::`, including those
/// inside `use crate::{a, b::c}` groups.
fn references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name = ident(part.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut modules = BTreeSet::new();
    let mut edges: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
        let top = first.trim_end_matches(".rs").to_string();
        if top == "lib" {
            continue;
        }
        modules.insert(top.clone());
        for r in references(&code(&std::fs::read_to_string(f).unwrap())) {
            if r != top {
                edges.entry((top.clone(), r)).or_insert_with(|| rel.to_path_buf());
            }
        }
    }
    let mut problems = Vec::new();
    for m in &modules {
        if layer_of(m).is_none() {
            problems.push(format!("module `{m}` is in no layer: add it to LAYERS in tests/layers.rs"));
        }
    }
    for ((from, to), file) in &edges {
        let (Some(a), Some(b)) = (layer_of(from), layer_of(to)) else { continue };
        if b > a {
            problems.push(format!(
                "{} uses crate::{to}: `{from}` ({}) may only use its layer or lower ones, `{to}` is in {}",
                file.display(),
                LAYERS[a].0,
                LAYERS[b].0
            ));
        }
    }
    if let Some(cycle) = find_cycle(&modules, &edges) {
        problems.push(format!("dependency cycle: {}", cycle.join(" -> ")));
    }
    println!("{} modules, {} edges between them", modules.len(), edges.len());
    assert!(problems.is_empty(), "layering violations:\n{}", problems.join("\n"));
}

/// A loop of modules each using the next, if there is one (depth-first search).
fn find_cycle(modules: &BTreeSet<String>, edges: &BTreeMap<(String, String), PathBuf>) -> Option<Vec<String>> {
    fn visit<'a>(
        m: &'a str,
        edges: &'a BTreeMap<(String, String), PathBuf>,
        state: &mut BTreeMap<&'a str, bool>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(true) => return None,
            Some(false) => {
                let start = stack.iter().position(|s| *s == m).unwrap();
                let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            None => {}
        }
        state.insert(m, false);
        stack.push(m);
        for (from, to) in edges.keys() {
            if from == m {
                if let Some(c) = visit(to, edges, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state.insert(m, true);
        None
    }
    let mut state = BTreeMap::new();
    modules.iter().find_map(|m| visit(m, edges, &mut state, &mut Vec::new()))
}

#[test]
fn the_cycle_finder_finds_a_loop() {
    let mods: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    let mut edges = BTreeMap::new();
    edges.insert(("a".to_string(), "b".to_string()), PathBuf::new());
    edges.insert(("b".to_string(), "c".to_string()), PathBuf::new());
    assert_eq!(find_cycle(&mods, &edges), None);
    edges.insert(("c".to_string(), "a".to_string()), PathBuf::new());
    assert_eq!(find_cycle(&mods, &edges).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn the_reference_scanner_sees_grouped_and_plain_paths() {
    let r = references("use crate::{error::Error, plan};\nfn f() { crate::model::Model::load(); }\n// crate::train\n");
    let c = references(&code("use crate::a;\n// crate::b\n#[cfg(test)]\nmod tests { use crate::c; }"));
    assert_eq!(r.into_iter().collect::<Vec<_>>(), ["error", "model", "plan", "train"]);
    assert_eq!(c.into_iter().collect::<Vec<_>>(), ["a"]);
}
