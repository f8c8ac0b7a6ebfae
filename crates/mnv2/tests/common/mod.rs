//! Helpers shared by the CLI test binaries: running `mnv2`, scratch files, the repository's
//! fixtures and weights, and the checks of the one-line error contract (see src/exit.rs).
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::{Command, Output};

/// `mnv2` as built for these tests, not yet run.
pub fn mnv2_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mnv2"))
}

/// Runs `mnv2` with these arguments and waits for it.
pub fn mnv2(args: &[&str]) -> Output {
    mnv2_cmd().args(args).output().expect("mnv2 runs")
}

/// A path in this test binary's scratch folder (one per binary and process).
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mnv2-{}-{}", env!("CARGO_CRATE_NAME"), std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A path relative to the repository root, as a string for an argument list.
pub fn repo(rel: &str) -> String {
    root().join(rel).to_string_lossy().into_owned()
}

/// A test photo from tests/data/images.
pub fn photo(name: &str) -> String {
    repo(&format!("tests/data/images/{name}"))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Success, or the test fails with mnv2's stderr.
pub fn ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// torchvision's real weights, fetched by scripts/fetch_assets.sh (CI runs it first).
pub fn real_weights() -> String {
    let p = root().join("weights/mobilenet_v2-b0353104.pth");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch_assets.sh to fetch torchvision's ImageNet weights",
        p.display()
    );
    p.to_str().unwrap().to_owned()
}

/// Small random weights with 1000 classes (so ImageNet labels apply), for the error tests:
/// they need a model that loads, not a good one. One file per test, as tests run in parallel.
pub fn small_weights(test: &str) -> String {
    let w = tmp(&format!("small-{test}.safetensors"));
    ok(&mnv2(&["init", "--width", "0.35", "--resolution", "96", "--out", w.to_str().unwrap()]));
    w.to_str().unwrap().to_owned()
}

/// Exit code 1, one line on stderr that mentions `needle`, nothing on stdout, no panic.
pub fn assert_input_error(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
    assert!(e.contains(needle), "`{needle}` not in: {e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(o.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&o.stdout));
}

/// Exit code 1 and exactly one `error:` line, which mentions `needle`; other stderr lines
/// (progress notes) are allowed. No panic.
pub fn assert_one_error_line(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains(needle), "`{needle}` not in: {e}");
    assert!(!e.contains("panicked"), "{e}");
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{e}");
    assert!(errors[0].contains(needle), "{e}");
}
