//! [`Detector`]: a model with an SSD head ([`crate::plan::SsdHead`]) and the TF Object
//! Detection API's pre- and post-processing ([`SsdConfig`]): images in, boxes in pixels out.
//!
//! A detector is read from a TF Object Detection API frozen graph (`.pb`) or from the
//! project's safetensors file that [`Detector::save`] writes (`mnv2 convert model.pb
//! detector.safetensors`): the tensors and `spec` metadata of any [`Model`] plus a `detector`
//! entry holding the [`SsdConfig`] (input size and mapping, anchor box specs, box coder
//! scales, score function, NMS settings) and the labels, so the file alone rebuilds it.
//! [`Detector::load`] picks by the file's first bytes.
//!
//! ```no_run
//! use mobilenetv2::detect::{Detector, DetectorOptions};
//! use mobilenetv2::preprocess;
//! # fn main() -> mobilenetv2::Result<()> {
//! let detector = Detector::load("weights/ssdlite_mobilenet_v2_person.pb".as_ref(), DetectorOptions::default())?;
//! let image = preprocess::decode("weights/calib/astronaut.png".as_ref())?;
//! for d in detector.detect(&image)? {
//!     let [x0, y0, x1, y1] = d.bbox;
//!     println!("{} {:.3} at ({x0:.0}, {y0:.0})-({x1:.0}, {y1:.0})", detector.label(d.class), d.score);
//! }
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use super::anchors;
use super::nms::Detection;
use super::tfconfig::SsdConfig;
use super::tfimport;
use crate::draw::{self, LabelledBox};
use crate::engine::{Mode, Options, Precision};
use crate::error::{Error, Result};
use crate::plan::Shape;
use crate::preprocess::RgbImage;
use crate::qscheme::QuantSpec;
use crate::quant::Method;
use crate::weights::safetensors_io::FloatStore;
use crate::weights::tfgraph::TfGraph;
use crate::{Batch, Engine, Model};

/// The metadata key of a detector's post-processing in its safetensors file.
pub const DETECTOR_KEY: &str = "detector";

/// What a safetensors detector holds besides its model.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectorMeta {
    config: SsdConfig,
    labels: Vec<String>,
}

/// Whether the file at `path` is a TF GraphDef (a frozen graph) rather than safetensors or
/// another weights format, from its first bytes.
pub fn is_graph(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    if !f.metadata().map_err(|e| Error::io(path, e))?.is_file() {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(Error::io(path, e));
    }
    let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
    let head = &head[..n];
    let safetensors = head.len() >= 9 && head[8] == b'{';
    Ok(!safetensors && crate::weights::tfgraph::sniff(head))
}

/// How a [`Detector`] runs.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorOptions {
    /// Detections scoring below this are dropped (TF's own NMS keeps scores above 1e-8).
    pub threshold: f32,
    /// Threads (>= 1): a batch's images are shared out over them; one image is split by rows.
    pub threads: usize,
    /// The engine: fast (the default: the backbone's fused blocks, the tapped tensors
    /// materialised once, the head on the fast kernels), streaming, or the layer-by-layer
    /// reference (the oracle the tests compare the others with).
    pub mode: Mode,
    /// Number format of the fast engine (see [`Options::precision`]): `None` is the weights'
    /// own; bf16 runs the backbone's and the box predictors' 1x1 convs on the bf16 GEMMs.
    pub precision: Option<Precision>,
    /// Resize, anchors, box coder, scores and NMS; [`Detector::from_graph`] reads them from the
    /// graph, [`Default`] is `ssdlite_mobilenet_v2_coco.config`'s.
    pub config: SsdConfig,
    /// Names of the foreground classes (class `k` is `labels[k]`); empty: `class k`.
    pub labels: Vec<String>,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            threshold: 0.5,
            threads: 1,
            mode: Mode::Fast,
            precision: None,
            config: SsdConfig::default(),
            labels: Vec::new(),
        }
    }
}

/// One detection in pixels of the image it was found in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelDetection {
    /// `[x0, y0, x1, y1]` in pixels of the original image, clipped to it.
    pub bbox: [f32; 4],
    /// The class's sigmoid score, in (0, 1).
    pub score: f32,
    /// 0-based among the foreground classes (TF's `detection_classes` is this + 1).
    pub class: usize,
}

/// TF's two raw outputs for one image, all anchors of all maps in the graph's order.
#[derive(Clone, Debug, PartialEq)]
pub struct RawOutputs {
    /// `[anchors, 4]` box encodings (ty, tx, th, tw).
    pub box_encodings: Vec<f32>,
    /// `[anchors, classes]` class logits, background first.
    pub class_logits: Vec<f32>,
}

/// A model with an SSD head and its post-processing.
pub struct Detector {
    engine: Engine,
    model: Model,
    options: DetectorOptions,
    anchors: Vec<[f32; 4]>,
    /// Box predictor layers, then class predictor layers, in map order.
    taps: Vec<usize>,
}

impl Detector {
    /// A detector on `model` (which must have an SSD head) with `options`.
    pub fn new(model: Model, options: DetectorOptions) -> Result<Detector> {
        let plan = &model.plan;
        let ssd = plan.ssd("a detector")?;
        let pre = &options.config.preprocess;
        let input = plan.input();
        if (pre.height, pre.width) != (input.h, input.w) {
            return Err(Error::Input(format!(
                "the detector resizes to {}x{} but the model's input is {}x{}",
                pre.height, pre.width, input.h, input.w
            )));
        }
        if options.config.classes + 1 != plan.spec.classes {
            return Err(Error::Input(format!(
                "the post-processing has {} foreground classes, the model {} logits per anchor",
                options.config.classes, plan.spec.classes
            )));
        }
        let per_location = anchors::anchors_per_location(&options.config.box_specs);
        if per_location != ssd.anchors {
            return Err(Error::Input(format!(
                "the anchor generator makes {per_location:?} anchors per location, the head predicts {:?}",
                ssd.anchors
            )));
        }
        let grids: Vec<(usize, usize)> =
            ssd.maps.iter().map(|&m| (plan.layers[m].output.h, plan.layers[m].output.w)).collect();
        let anchors = anchors::generate(&options.config.box_specs, &grids, input.h, input.w, [1.0, 1.0])?;
        let taps = ssd.boxes.iter().chain(&ssd.classes).copied().collect();
        let engine = Engine::new(
            &model,
            Options {
                mode: options.mode,
                threads: options.threads.max(1),
                precision: options.precision,
                ..Options::default()
            },
        )?;
        Ok(Detector { engine, model, options, anchors, taps })
    }

    /// The detector of a TF Object Detection API frozen graph: network and settings from the
    /// graph. Without `options.labels`, a one-class graph's class is labelled `person`.
    pub fn from_graph(path: &Path, options: DetectorOptions) -> Result<Detector> {
        let g = TfGraph::read_path(path)?;
        let config = SsdConfig::from_graph(&g)?;
        let model = tfimport::model(&g, config.preprocess.height, config.preprocess.width)?;
        let mut labels = options.labels.clone();
        if labels.is_empty() && config.classes == 1 {
            // The graph holds no label map; its one-class models are the OD API's person detectors.
            labels = vec!["person".to_string()];
        }
        Detector::new(model, DetectorOptions { config, labels, ..options })
    }

    /// The detector of a file: a frozen graph ([`Detector::from_graph`]) or the project's
    /// safetensors detector ([`Detector::from_safetensors`]), told apart by the first bytes.
    /// `options.threshold`, `options.threads` and `options.mode` apply; the post-processing and (unless
    /// `options.labels` is given) the labels are the file's.
    pub fn load(path: &Path, options: DetectorOptions) -> Result<Detector> {
        if is_graph(path)? {
            Detector::from_graph(path, options)
        } else {
            Detector::from_safetensors(path, options)
        }
    }

    /// The detector of a file written by [`Detector::save`]: the model from its tensors and
    /// `spec`, the post-processing and labels from its `detector` metadata.
    pub fn from_safetensors(path: &Path, options: DetectorOptions) -> Result<Detector> {
        let file = crate::weights::load(path)?;
        let meta_err = |value: &str, detail: String| Error::Metadata {
            path: path.into(),
            key: DETECTOR_KEY.into(),
            value: crate::limits::clip(value, 200),
            detail,
        };
        let Some(text) = file.metadata.get(DETECTOR_KEY).cloned() else {
            return Err(Error::format(
                path,
                "detector",
                format!(
                    "no `{DETECTOR_KEY}` metadata: not a detector (`mnv2 convert GRAPH.pb OUT.safetensors` makes one)"
                ),
            ));
        };
        let text = text.as_str();
        let meta: DetectorMeta = serde_json::from_str(text).map_err(|e| meta_err(text, e.to_string()))?;
        if !meta.labels.is_empty() && meta.labels.len() != meta.config.classes {
            return Err(meta_err(
                &format!("{} labels", meta.labels.len()),
                format!("the detector has {} foreground classes", meta.config.classes),
            ));
        }
        let model = Model::from_file(file)?;
        let labels = if options.labels.is_empty() { meta.labels } else { options.labels.clone() };
        Detector::new(model, DetectorOptions { config: meta.config, labels, ..options })
            .map_err(|e| meta_err(text, e.to_string()))
    }

    /// Writes the detector in the project's format (atomically): safetensors with the model's
    /// tensors and metadata, plus a `detector` entry with the post-processing and labels, from
    /// which [`Detector::from_safetensors`] rebuilds the same detector. Float tensors are stored
    /// as `store` (f16 halves the file but changes the outputs).
    pub fn save(&self, path: &Path, store: FloatStore) -> Result<()> {
        let mut metadata = self.model.metadata();
        let meta = DetectorMeta { config: self.options.config.clone(), labels: self.options.labels.clone() };
        metadata.insert(DETECTOR_KEY.into(), serde_json::to_string(&meta).expect("the detector config serialises"));
        crate::weights::safetensors_io::write_as(path, &self.model.tensors(), &metadata, store)
    }

    /// Activation ranges of the backbone for int8 inference ([`crate::quant::calibrate`]),
    /// measured on `photos` as the detector feeds them to the network (the graph's resize and
    /// mapping). The head stays in f32 (on int8-grid weights in the file).
    pub fn calibrate(&self, photos: &[RgbImage], method: Method) -> Result<QuantSpec> {
        if self.model.quant.is_some() {
            return Err(Error::Unsupported("calibrating a detector that is already int8".into()));
        }
        let pre = &self.options.config.preprocess;
        let shape = Shape::new(pre.height, pre.width, 3);
        let batches = photos
            .chunks(8)
            .map(|c| Batch::new(c.len(), shape, c.iter().flat_map(|im| pre.apply(im)).collect()))
            .collect::<Result<Vec<_>>>()?;
        crate::quant::calibrate(&self.model, &batches, method)
    }

    /// Writes the detector as an int8 model file (atomically): the int8 format of
    /// [`crate::weights::int8`] with the quantisation `spec` (from [`Detector::calibrate`]) and
    /// the `detector` entry of [`Detector::save`], so [`Detector::load`] rebuilds it running
    /// its backbone on the int8 kernels.
    pub fn save_int8(&self, path: &Path, spec: &QuantSpec) -> Result<()> {
        let mut metadata = self.model.metadata();
        let meta = DetectorMeta { config: self.options.config.clone(), labels: self.options.labels.clone() };
        metadata.insert(DETECTOR_KEY.into(), serde_json::to_string(&meta).expect("the detector config serialises"));
        crate::weights::int8::write(path, &self.model.plan, &self.model.params, spec, &metadata)
    }

    /// The instruction set and kernels its engine runs (none in reference mode).
    pub fn kernels(&self) -> (Option<crate::engine::Isa>, Vec<&'static str>) {
        self.engine.kernels()
    }

    /// The detector's network (its plan has the SSD head).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The engine it runs (its options, precision and kernels).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The options it was made with (threshold, threads, post-processing, labels).
    pub fn options(&self) -> &DetectorOptions {
        &self.options
    }

    /// The anchors, normalised (ymin, xmin, ymax, xmax).
    pub fn anchors(&self) -> &[[f32; 4]] {
        &self.anchors
    }

    /// The name of a foreground class.
    pub fn label(&self, class: usize) -> String {
        self.options.labels.get(class).cloned().unwrap_or_else(|| format!("class {class}"))
    }

    /// The raw box encodings and class logits of each image, after the graph's resize.
    pub fn raw_outputs(&self, images: &[RgbImage]) -> Result<Vec<RawOutputs>> {
        let pre = &self.options.config.preprocess;
        let shape = Shape::new(pre.height, pre.width, 3);
        let data: Vec<f32> = images.iter().flat_map(|im| pre.apply(im)).collect();
        self.network_outputs(&Batch::new(images.len(), shape, data)?)
    }

    /// The raw box encodings and class logits of each image of a network input (NHWC, the
    /// model's input size, already resized and mapped).
    pub fn network_outputs(&self, input: &Batch) -> Result<Vec<RawOutputs>> {
        let outs = self.engine.run_taps(input, &self.model.plan, &self.taps)?;
        let maps = self.taps.len() / 2;
        Ok((0..input.n)
            .map(|b| {
                let cat = |o: &[Batch]| o.iter().flat_map(|t| t.image(b).iter().copied()).collect::<Vec<f32>>();
                RawOutputs { box_encodings: cat(&outs[..maps]), class_logits: cat(&outs[maps..]) }
            })
            .collect())
    }

    /// The detections of each image, sorted by score, in pixels of that image.
    pub fn detect_batch(&self, images: &[RgbImage]) -> Result<Vec<Vec<PixelDetection>>> {
        let raw = self.raw_outputs(images)?;
        let post = &self.options.config.post;
        let logits = self.model.plan.spec.classes;
        Ok(raw
            .iter()
            .zip(images)
            .map(|(r, im)| {
                let found = post.run(&self.anchors, &r.box_encodings, &r.class_logits, logits);
                to_pixels(&found, im.width, im.height, self.options.threshold)
            })
            .collect())
    }

    /// The detections of one image, sorted by score, in pixels of the image.
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<PixelDetection>> {
        Ok(self.detect_batch(std::slice::from_ref(image))?.pop().unwrap_or_default())
    }
}

/// Normalised (ymin, xmin, ymax, xmax) detections to `[x0, y0, x1, y1]` pixels, those scoring
/// at least `threshold`, sorted by score (stable: TF's order among equal scores).
fn to_pixels(found: &[Detection], width: usize, height: usize, threshold: f32) -> Vec<PixelDetection> {
    let (w, h) = (width as f32, height as f32);
    let mut out: Vec<PixelDetection> = found
        .iter()
        .filter(|d| d.score >= threshold)
        .map(|d| PixelDetection {
            bbox: [d.bbox[1] * w, d.bbox[0] * h, d.bbox[3] * w, d.bbox[2] * h],
            score: d.score,
            class: d.class,
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// Writes `image` as a PNG at `path` (atomically) with each detection's box drawn in a colour
/// per class and labelled with `label(class)` and its score (two decimals), in the font of
/// [`crate::draw`].
pub fn draw_png(
    image: &RgbImage,
    found: &[PixelDetection],
    label: &dyn Fn(usize) -> String,
    path: &Path,
) -> Result<()> {
    let boxes: Vec<LabelledBox> = found
        .iter()
        .map(|d| LabelledBox {
            bbox: d.bbox,
            colour: draw::PALETTE[d.class % draw::PALETTE.len()],
            label: format!("{} {:.2}", label(d.class), d.score),
        })
        .collect();
    draw::write_png(&draw::boxes(image, &boxes)?, path)
}
