//! `mnv2 paper`: every checkable number of the paper's Tables 2-7 (and TF-slim's multiply-add
//! table) beside the value the project computes, with the verdict of each
//! (`mobilenetv2::paper`). Exit code 1 if any number is a mismatch the project cannot explain.

use std::fmt::Write as _;

use anyhow::Result;
use mobilenetv2::paper::{rows, Verdict};

use super::out;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON: one object per row (source, item, paper, ours, verdict, why)
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> Result<()> {
    let rows = rows()?;
    let mismatches = rows.iter().filter(|r| r.verdict == Verdict::Mismatch).count();
    if a.json {
        out(&(serde_json::to_string_pretty(&rows)? + "\n"))?;
    } else {
        let mut s = String::new();
        let _ = writeln!(s, "{:<19} {:<86} {:>8} {:>16}  verdict", "source", "item", "paper", "ours");
        for r in &rows {
            let verdict = match &r.verdict {
                Verdict::Match(how) => format!("match ({how})"),
                Verdict::Close(how) => format!("close: {how}"),
                Verdict::Explained(why) => format!("explained: {why}"),
                Verdict::Mismatch => "MISMATCH".into(),
            };
            let _ = writeln!(s, "{:<19} {:<86} {:>8} {:>16}  {verdict}", r.source, r.item, r.paper, r.ours);
        }
        let count = |f: fn(&Verdict) -> bool| rows.iter().filter(|r| f(&r.verdict)).count();
        let _ = writeln!(
            s,
            "{} rows: {} match, {} close, {} explained, {mismatches} unexplained",
            rows.len(),
            count(|v| matches!(v, Verdict::Match(_))),
            count(|v| matches!(v, Verdict::Close(_))),
            count(|v| matches!(v, Verdict::Explained(_))),
        );
        out(&s)?;
    }
    if mismatches > 0 {
        anyhow::bail!("{mismatches} of the paper's numbers differ from the project's without an explanation");
    }
    Ok(())
}
