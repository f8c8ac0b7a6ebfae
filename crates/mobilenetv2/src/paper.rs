//! The paper's checkable numbers beside the project's (layer L6): Table 2's network as the
//! text of section 4 counts it, Table 3's memory, Table 4's two MobileNetV2 rows, Tables 5
//! and 6 (SSD and SSDLite heads), Table 7 (Mobile DeepLabv3) and TF-slim's published
//! multiply-add table. Every value on the project's side is computed here from a [`Spec`]
//! through the plan and [`crate::accounting`]; nothing is copied from the paper but the
//! printed values themselves. `mnv2 paper` prints these rows.
//!
//! Each row says how it compares ([`Verdict`]): equal at the precision the paper prints (with
//! the rounding convention named), within a stated relative tolerance, or different for a
//! reason stated in one line (the paper's own inconsistencies). A [`Verdict::Mismatch`] is a
//! number the project cannot account for; the test `tests/paper.rs` fails on any.

use serde::Serialize;

use crate::accounting::{account, memory, multi_scale};
use crate::detect::heads::{self, DetectorCost, HeadKind};
use crate::error::Result;
use crate::plan::Plan;
use crate::spec::{HeadSpec, Spec};

/// How the project's number compares with the paper's.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "why", rename_all = "snake_case")]
pub enum Verdict {
    /// Equal at the paper's printed precision; the string names the rounding convention.
    Match(String),
    /// Within a relative tolerance that the string states, not equal at the printed digits.
    Close(String),
    /// Different, for the reason given.
    Explained(String),
    /// Different, and not accounted for.
    Mismatch,
}

/// One checkable number.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// Where the paper prints it ("Table 6", "Section 4", "TF-slim README").
    pub source: &'static str,
    /// What is counted, in words.
    pub item: String,
    /// The value as the paper prints it.
    pub paper: String,
    /// The project's exact value.
    pub ours: u64,
    /// The comparison.
    #[serde(flatten)]
    pub verdict: Verdict,
}

fn plan_of(spec: &Spec) -> Result<Plan> {
    Plan::new(spec)
}

/// `value / unit` rounded half away from zero to `decimals` digits, as a printed number.
fn rounded(value: u64, unit: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value as f64 / unit * scale).round() / scale
}

/// `value / unit` truncated to `decimals` digits.
fn truncated(value: u64, unit: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value as f64 / unit * scale).floor() / scale
}

/// A row compared at the printed precision: rounded, else truncated, else within `tol`
/// (relative), else `otherwise` (an explanation) or a mismatch.
fn row(
    source: &'static str,
    item: impl Into<String>,
    paper: (f64, f64, i32, &str),
    ours: u64,
    tol: f64,
    otherwise: Option<&str>,
) -> Row {
    let (printed, unit, decimals, suffix) = paper;
    let shown = format!("{printed:.*}{suffix}", decimals.max(0) as usize);
    let verdict = if rounded(ours, unit, decimals) == printed {
        Verdict::Match("rounded".into())
    } else if truncated(ours, unit, decimals) == printed {
        Verdict::Match("truncated".into())
    } else if ((ours as f64 / unit) / printed - 1.0).abs() <= tol {
        Verdict::Close(format!(
            "{:+.2}% (tolerance {:.1}%)",
            100.0 * ((ours as f64 / unit) / printed - 1.0),
            100.0 * tol
        ))
    } else if let Some(why) = otherwise {
        Verdict::Explained(why.into())
    } else {
        Verdict::Mismatch
    };
    Row { source, item: item.into(), paper: shown, ours, verdict }
}

/// TF-slim's README table (research/slim/nets/mobilenet/README.md): width, resolution and
/// MACs in millions, truncated, with 1001 classes.
#[rustfmt::skip]
const SLIM_MACS: [(f64, usize, u64); 22] = [
    (1.4, 224, 582), (1.3, 224, 509),
    (1.0, 224, 300), (1.0, 192, 221), (1.0, 160, 154), (1.0, 128, 99), (1.0, 96, 56),
    (0.75, 224, 209), (0.75, 192, 153), (0.75, 160, 107), (0.75, 128, 69), (0.75, 96, 39),
    (0.5, 224, 97), (0.5, 192, 71), (0.5, 160, 50), (0.5, 128, 32), (0.5, 96, 18),
    (0.35, 224, 59), (0.35, 192, 43), (0.35, 160, 30), (0.35, 128, 20), (0.35, 96, 11),
];

/// Every checkable row, computed.
pub fn rows() -> Result<Vec<Row>> {
    let mut out = Vec::new();
    let (m, b) = (1e6, 1e9);

    // Section 4 and Table 4: the network of Table 2 (torchvision's 1000 classes; "params"
    // without BatchNorm, as TF-slim counts).
    let base = account(&plan_of(&Spec::default())?);
    out.push(row(
        "Section 4, Table 4",
        "MobileNetV2 1.0 @224: multiply-adds",
        (300.0, m, 0, "M"),
        base.madds,
        0.0,
        None,
    ));
    out.push(row(
        "Section 4, Table 4",
        "MobileNetV2 1.0 @224: parameters (conv and FC weights and biases, no BatchNorm)",
        (3.4, m, 1, "M"),
        base.params_no_bn,
        0.0,
        None,
    ));
    let blocks = plan_of(&Spec::default())?.blocks.len() as u64;
    out.push(row(
        "Section 4",
        "residual bottleneck layers (\"19\" in the text)",
        (19.0, 1.0, 0, ""),
        blocks,
        0.0,
        Some("Table 2 lists 1+2+3+4+3+3+1 = 17 bottlenecks; 19 is their count with the first and last convolutions (torchvision's 19 `features`)"),
    ));
    let wide = Spec { classes: 1001, ..Spec::new(1.4, 224) };
    let wide_acc = account(&plan_of(&wide)?);
    let released = "TF-slim's released mobilenet_v2_1.4_224 has 582M MACs and 6.06M parameters (its README), as computed here; the paper's Table 4 row is of another 1.4 model";
    out.push(row(
        "Table 4",
        "MobileNetV2 (1.4) @224: multiply-adds",
        (585.0, m, 0, "M"),
        wide_acc.madds,
        0.0,
        Some(released),
    ));
    out.push(row(
        "Table 4",
        "MobileNetV2 (1.4) @224: parameters (no BatchNorm, 1001 classes)",
        (6.9, m, 1, "M"),
        wide_acc.params_no_bn,
        0.0,
        Some(released),
    ));
    let small = account(&plan_of(&Spec { classes: 1001, ..Spec::new(0.35, 96) })?);
    out.push(row(
        "Section 4",
        "smallest model (0.35 @96): multiply-adds (\"7\" in the text)",
        (7.0, m, 0, "M"),
        small.madds,
        0.0,
        Some(
            "\"7 multiply adds\" is a typo in every version; TF-slim's README gives 11M for 0.35 @96, as computed here",
        ),
    ));
    out.push(row(
        "Section 4",
        "smallest model (0.35): parameters (no BatchNorm, 1001 classes)",
        (1.7, m, 1, "M"),
        small.params_no_bn,
        0.0,
        None,
    ));

    // Table 3: the largest tensor to materialise, 16-bit activations, "K" = 1000 bytes.
    let mem = memory(&plan_of(&Spec::default())?);
    out.push(row(
        "Table 3",
        "max memory to materialise, 16-bit activations (arXiv v4; the CVPR version prints 200K)",
        (400.0, 1e3, 0, "K"),
        mem.table3_max_bytes_f16,
        0.005,
        None,
    ));

    // Tables 5 and 6: SSD and SSDLite heads at 320 on 80 classes plus background.
    let lite = DetectorCost::of(&plan_of(&heads::spec(HeadKind::SsdLite, 81, 1.0, 320))?)?;
    let ssd = DetectorCost::of(&plan_of(&heads::spec(HeadKind::Ssd, 81, 1.0, 320))?)?;
    out.push(row(
        "Table 5",
        "SSD head @320: parameters (no BatchNorm)",
        (14.8, m, 1, "M"),
        ssd.head().params_no_bn(),
        0.0,
        None,
    ));
    out.push(row("Table 5", "SSD head @320: multiply-adds", (1.25, b, 2, "B"), ssd.head().madds, 0.01, None));
    out.push(row(
        "Table 5",
        "SSDLite head @320: parameters (no BatchNorm)",
        (2.1, m, 1, "M"),
        lite.head().params_no_bn(),
        0.0,
        None,
    ));
    let coco91 = DetectorCost::of(&plan_of(&heads::spec(HeadKind::SsdLite, 91, 1.0, 320))?)?.head().madds;
    let why = format!(
        "0.35B matches no multiply-add count of this head ({:.3}B; {:.3}B with TF's 90 COCO classes); twice the MACs, i.e. FLOPs, is {:.3}B",
        lite.head().madds as f64 / b,
        coco91 as f64 / b,
        2.0 * lite.head().madds as f64 / b
    );
    out.push(row("Table 5", "SSDLite head @320: multiply-adds", (0.35, b, 2, "B"), lite.head().madds, 0.0, Some(&why)));
    out.push(row("Table 6", "MNet V2 + SSDLite @320: parameters", (4.3, m, 1, "M"), lite.total().params(), 0.0, None));
    out.push(row("Table 6", "MNet V2 + SSDLite @320: multiply-adds", (0.8, b, 1, "B"), lite.total().madds, 0.0, None));

    // Table 7: Mobile DeepLabv3 (MNet V2*), 21 classes, at TF DeepLab's 513x513 evaluation crop.
    let deeplab = |os: usize, aspp: bool| Spec {
        classes: 21,
        output_stride: os,
        head: HeadSpec::DeepLab { aspp },
        ..Spec::new(1.0, 513)
    };
    let aspp_why = "the parameters match exactly, so the three atrous branches are as the paper describes; no counting convention tried (bilinear resizes, BatchNorm and bias adds, the last 1x1 conv) makes the ASPP rows agree with the others: the table's own";
    // (output stride, ASPP, multi-scale + flips, params in M, MAdds in B as printed, decimals)
    for (os, aspp, mf, params, madds, decimals) in [
        (16, true, false, 4.52, 5.8, 1),
        (8, true, true, 4.52, 387.0, 0),
        (16, false, false, 2.11, 2.75, 2),
        (8, false, true, 2.11, 152.6, 1),
    ] {
        let spec = deeplab(os, aspp);
        let a = account(&plan_of(&spec)?);
        let name = format!("OS {os}{}{}", if aspp { " + ASPP" } else { "" }, if mf { " + MF" } else { "" });
        out.push(row("Table 7", format!("{name}: parameters"), (params, m, 2, "M"), a.params, 0.0, None));
        let cost = if mf { multi_scale(&spec)?.madds } else { a.madds };
        let name = format!("{name}: multiply-adds @513");
        out.push(row("Table 7", name, (madds, b, decimals, "B"), cost, 0.005, aspp.then_some(aspp_why)));
    }

    // TF-slim's README: 22 width x resolution rows, MACs truncated to millions.
    for (w, res, macs) in SLIM_MACS {
        let a = account(&plan_of(&Spec { classes: 1001, ..Spec::new(w, res) })?);
        out.push(row(
            "TF-slim README",
            format!("MobileNetV2 {w} @{res}: MACs"),
            (macs as f64, m, 0, "M"),
            a.madds,
            0.0,
            None,
        ));
    }
    Ok(out)
}
