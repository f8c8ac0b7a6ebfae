//! Object detection with SSD / SSDLite on MobileNetV2 (paper §6.2, Tables 5 and 6), the way the
//! TF Object Detection API builds and runs it, so that its exported models run here unchanged.
//!
//! The pure parts, each reproducing TF's arithmetic in TF's operation order and each tested
//! against TensorFlow running the real exported model (tests/ssdlite_post.rs):
//!
//! - [`resize`]: TF1's legacy `ResizeBilinear` and the `(2/255) x - 1` input mapping;
//! - [`anchors`]: the multiple-grid anchor generator;
//! - [`boxcoder`]: the Faster R-CNN box coder (scales 10, 10, 5, 5);
//! - [`postprocess`], [`nms`]: sigmoid scores and per-class NMS, clipped to the image;
//! - [`tfconfig`]: all of the above read from a frozen graph's constants;
//! - [`tfimport`]: the graph's MobileNetV2 backbone on the plan;
//! - [`heads`]: parameter and multiply-add accounting of the SSDLite and SSD heads (from the plan);
//! - [`detector`]: [`Detector`], the model and all of the above: images in, boxes in pixels out.
//!
//! Measuring a detector:
//!
//! - [`cocoeval`]: COCO box evaluation, equal to pycocotools' `COCOeval` (tests/coco_eval.rs);
//! - [`dataset`]: [`DetectionDataset`], boxes from COCO JSON or Pascal VOC XML, bad records
//!   stopped or skipped ([`BadAnnotations`]).
//!
//! Training one:
//!
//! - [`loss`]: the SSD loss of `ssdlite_mobilenet_v2_coco.config` (argmax matcher, sigmoid
//!   classification, smooth L1, hard example mining) and its gradient;
//! - [`augment`]: SSD augmentation (`ssd_random_crop`, flip, photometric jitter) ending in the
//!   detector's resize; the loop is `crate::train::detrun` (`mnv2 train --task detection`).

pub mod anchors;
pub mod augment;
pub mod boxcoder;
mod coco;
pub mod cocoeval;
pub mod dataset;
pub mod detector;
pub mod heads;
pub mod loss;
pub mod nms;
pub mod postprocess;
pub mod resize;
pub mod tfconfig;
pub mod tfimport;

pub use anchors::{AnchorGenerator, BoxSpec};
pub use boxcoder::BoxCoder;
pub use dataset::{BadAnnotations, DetectionDataset};
pub use detector::{draw_png, is_graph, Detector, DetectorOptions, PixelDetection, RawOutputs};
pub use nms::{Detection, Nms};
pub use postprocess::{PostProcess, ScoreFn};
pub use resize::TfPreprocess;
pub use tfconfig::SsdConfig;
