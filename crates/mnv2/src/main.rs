//! `mnv2`: the MobileNetV2 command line. A thin layer over the `mobilenetv2` library.
//!
//! Exit codes ([`exit`]): 0 success, 1 bad input or usage (a one-line error names the file or
//! the option and the problem), 2 internal failure (a bug: a panic or a broken invariant). A
//! closed stdout (e.g. `| head`) ends quietly with 0.

// The options' doc comments are their `--help` text, which names placeholders such as
// `<name>.png` and `percentile[:P]` as a user types them: not HTML, not links.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

mod cmd;
mod exit;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mnv2", version, about = "MobileNetV2: classify, run, inspect, convert, benchmark and train")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detect objects in photos with an SSD detector (TF frozen graph)
    Detect(cmd::detect::Args),
    /// Classify JPEG/PNG photos: the top-k classes, preprocessed as torchvision does
    Classify(cmd::classify::Args),
    /// Per-layer table of shapes, parameters and multiply-adds; activation memory
    Info(cmd::info::Args),
    /// The paper's numbers (Tables 2-7, TF-slim's MACs) beside the project's, with verdicts
    Paper(cmd::paper::Args),
    /// Write randomly initialised weights (torchvision's initialisation) from a seed
    Init(cmd::init::Args),
    /// Run a raw NCHW float32 .npy batch through the network and write the logits as .npy
    Run(cmd::run::Args),
    /// Convert weights (.pth, .pt, .safetensors, .onnx, .h5, .keras, .tflite) to the project's safetensors format
    Convert(cmd::convert::Args),
    /// Export weights for other engines: ONNX (fp32 with BatchNorm folded, or int8 as a QDQ graph)
    Export(cmd::export::Args),
    /// Download torchvision's ImageNet weights (sha256-checked) to the weights home, which the
    /// subcommands use when --weights is absent: $MNV2_HOME, else ~/.cache/mnv2
    Fetch(cmd::fetch::Args),
    /// Time inference: median and p90 latency, images/s, peak RSS, activation memory
    Bench(cmd::bench::Args),
    /// Post-training int8 quantisation, calibrated on images or an .npy batch
    Quantize(cmd::quantize::Args),
    /// Train or fine-tune: image folders or IDX files, checkpoints, metrics, curves
    Train(Box<cmd::train::Args>),
    /// Top-1, top-5 and the confusion matrix on labelled images; mIoU on segmentation masks
    Eval(cmd::eval::Args),
    /// Build datasets: `compose` pastes Fashion-MNIST items onto real photos (COCO boxes and
    /// RLE masks, VOC-style class masks)
    Dataset(cmd::dataset::Args),
    /// COCO box AP/AR of detections against ground truth, as pycocotools' COCOeval computes them
    CocoEval(cmd::coco_eval::Args),
    /// Segment photos with a DeepLab model: class-index PNGs (VOC palette), overlays, class fractions
    Segment(cmd::segment::Args),
    /// HTTP inference server: JSON API, Open Inference Protocol v2, metrics, a web page
    Serve(cmd::serve::Args),
}

fn main() {
    exit::install_panic_hook();
    exit::catch_file_size_signal();
    let cli = Cli::try_parse().unwrap_or_else(|e| exit::usage(e));
    let result = match cli.command {
        Command::Classify(a) => cmd::classify::main(a),
        Command::Detect(a) => cmd::detect::main(a),
        Command::Info(a) => cmd::info::main(a),
        Command::Init(a) => cmd::init::main(a),
        Command::Paper(a) => cmd::paper::main(a),
        Command::Run(a) => cmd::run::main(a),
        Command::Convert(a) => cmd::convert::main(a),
        Command::Bench(a) => cmd::bench::main(a),
        Command::Quantize(a) => cmd::quantize::main(a),
        Command::Train(a) => cmd::train::main(*a),
        Command::Eval(a) => cmd::eval::main(a),
        Command::Dataset(a) => cmd::dataset::main(a),
        Command::CocoEval(a) => cmd::coco_eval::main(a),
        Command::Export(a) => cmd::export::main(a),
        Command::Fetch(a) => cmd::fetch::main(a),
        Command::Segment(a) => cmd::segment::main(a),
        Command::Serve(a) => cmd::serve::main(a),
    };
    exit::finish(result)
}
