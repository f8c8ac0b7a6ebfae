//! `mnv2 coco-eval`: COCO box AP/AR of a detections file against a ground-truth file, the
//! numbers and the table of pycocotools' `COCOeval.summarize()`. All the work is in
//! `mobilenetv2::detect::cocoeval`; this file parses and prints.

use std::path::PathBuf;

use anyhow::Result;
use mobilenetv2::detect::cocoeval::{self, CocoEval};

use super::out;

#[derive(clap::Args)]
pub struct Args {
    /// Ground truth: a COCO instances JSON file (images, annotations, categories)
    #[arg(value_name = "GT.json")]
    gt: PathBuf,
    /// Detections: a COCO results JSON file ([{image_id, category_id, bbox: [x, y, w, h], score}])
    #[arg(value_name = "DETECTIONS.json")]
    detections: PathBuf,
    /// Print JSON: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
    /// "per_category": [{"id", "AP"}], "ignored_detections"} (AP/AR as pycocotools' stats[0..12]; -1: no ground truth)
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> Result<()> {
    let gt = cocoeval::GroundTruth::load(&a.gt)?;
    let dets = cocoeval::load_detections(&a.detections, &gt)?;
    let e = cocoeval::evaluate(&gt, &dets)?;
    out(&report(&e, a.json)?)
}

/// The table (pycocotools' lines, then a note of ignored detections) or the JSON object.
pub fn report(e: &CocoEval, json: bool) -> Result<String> {
    if json {
        let mut v = e.stats_json();
        let per: Vec<_> = e
            .category_ids
            .iter()
            .zip(e.category_ap())
            .map(|(id, ap)| serde_json::json!({"id": id, "AP": ap}))
            .collect();
        v["per_category"] = serde_json::json!(per);
        v["ignored_detections"] = serde_json::json!(e.ignored_detections);
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let mut s = e.summary_table();
    if e.ignored_detections > 0 {
        s +=
            &format!("{} detections of categories the ground truth does not list were ignored\n", e.ignored_detections);
    }
    Ok(s)
}
