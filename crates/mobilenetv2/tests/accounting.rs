//! Exact accounting against torchvision (hook-counted, tests/data/accounting.json) and the
//! TF-slim README's published MACs and parameter table.

mod common;

use mobilenetv2::accounting::account;
use mobilenetv2::{Plan, Spec};
use serde_json::Value;

/// The slim README's checkpoint table (research/slim/nets/mobilenet/README.md): width,
/// resolution, MACs in millions (truncated), parameters in millions (no BatchNorm, 1001
/// classes). The README lists widths 1.4 and 1.3 at 224 only.
#[rustfmt::skip]
const SLIM_README: [(f64, usize, u64, f64); 22] = [
    (1.4, 224, 582, 6.06), (1.3, 224, 509, 5.34),
    (1.0, 224, 300, 3.47), (1.0, 192, 221, 3.47), (1.0, 160, 154, 3.47), (1.0, 128, 99, 3.47), (1.0, 96, 56, 3.47),
    (0.75, 224, 209, 2.61), (0.75, 192, 153, 2.61), (0.75, 160, 107, 2.61), (0.75, 128, 69, 2.61), (0.75, 96, 39, 2.61),
    (0.5, 224, 97, 1.95), (0.5, 192, 71, 1.95), (0.5, 160, 50, 1.95), (0.5, 128, 32, 1.95), (0.5, 96, 18, 1.95),
    (0.35, 224, 59, 1.66), (0.35, 192, 43, 1.66), (0.35, 160, 30, 1.66), (0.35, 128, 20, 1.66), (0.35, 96, 11, 1.66),
];

fn slim_spec(width: f64, res: usize) -> Spec {
    Spec { classes: 1001, ..Spec::new(width, res) }
}

#[test]
fn all_30_width_resolution_rows_match_torchvision() {
    let text = std::fs::read_to_string(common::root().join("tests/data/accounting.json")).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(rows.len(), 30);
    for r in rows {
        let (w, res) = (r["width"].as_f64().unwrap(), r["resolution"].as_u64().unwrap() as usize);
        let a = account(&Plan::new(&slim_spec(w, res)).unwrap());
        assert_eq!(a.madds, r["madds_1001"].as_u64().unwrap(), "MACs at {w}/{res}");
        let tv = account(&Plan::new(&Spec::new(w, res)).unwrap());
        assert_eq!(tv.params, r["params_1000"].as_u64().unwrap(), "params at {w}");
    }
}

#[test]
fn slim_readme_table_reproduced() {
    for (w, res, macs_m, params_m) in SLIM_README {
        let a = account(&Plan::new(&slim_spec(w, res)).unwrap());
        assert_eq!(a.madds / 1_000_000, macs_m, "MACs(M) at {w}/{res}: {}", a.madds);
        let p = (a.params_no_bn as f64 / 1e4).round() / 100.0;
        assert_eq!(p, params_m, "params(M) at {w}: {}", a.params_no_bn);
    }
}

#[test]
fn paper_headline_numbers() {
    let a = account(&Plan::new(&Spec::default()).unwrap());
    assert_eq!(a.params, 3_504_872);
    assert_eq!(a.madds, 300_774_272);
    assert_eq!(account(&Plan::new(&Spec::new(1.4, 224)).unwrap()).params, 6_108_776);
}
