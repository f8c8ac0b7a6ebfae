//! The `mobilenetv2` Python package's native module (`mobilenetv2._native`): thin PyO3
//! bindings over the library crate. Every computation is the library's (`Model::load`,
//! `Engine::run_nchw`, `Classifier`, `quant::calibrate`, `export::onnx`); this file converts
//! Python values in and out, releases the GIL while the engine runs, and turns the library's
//! errors into `mobilenetv2.Error` with the same one-line messages.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mobilenetv2::classify::{Classifier, Prediction};
use mobilenetv2::detect::{Detector, DetectorOptions, PixelDetection};
use mobilenetv2::engine::{Engine, Mode, Options, Precision};
use mobilenetv2::export::onnx;
use mobilenetv2::preprocess::{self, RgbImage};
use mobilenetv2::quant::{self, Method};
use mobilenetv2::segment::Segmenter;
use mobilenetv2::weights::safetensors_io::FloatStore;
use mobilenetv2::{Batch, Model, Spec};
use numpy::{
    Element, IntoPyArray, PyArray2, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList};

create_exception!(
    mobilenetv2,
    Error,
    PyValueError,
    "A failure of the engine or of its input: a file that cannot be read, weights that do not fit, \
     an input of the wrong shape. The message is the library's one line (it names the file)."
);

/// The library's error as a `mobilenetv2.Error` with the same message.
fn err(e: mobilenetv2::Error) -> PyErr {
    Error::new_err(e.to_string())
}

/// A `mobilenetv2.Error` with this message.
fn input_err(msg: impl Into<String>) -> PyErr {
    Error::new_err(msg.into())
}

/// Images run through the engine this many at a time by `classify`: the chunk `mnv2 classify`
/// uses (through `Classifier::classify_files`), so results are the CLI's bit for bit.
const CHUNK: usize = 8;

/// The default thread count: every core this process may use (at most the engine's maximum),
/// as the CLI's `--threads` default.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(mobilenetv2::engine::MAX_THREADS)
}

fn parse_mode(mode: &str) -> PyResult<Mode> {
    mode.parse::<Mode>().map_err(err)
}

/// `precision=`: `None` keeps the weights' own (int8 for an int8 file, else fp32).
fn parse_precision(precision: Option<&str>) -> PyResult<Option<Precision>> {
    precision.map(|p| p.parse::<Precision>().map_err(err)).transpose()
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Fast => "fast",
        Mode::Streaming => "streaming",
        Mode::Reference => "reference",
    }
}

/// MobileNetV2 weights compiled for inference.
///
/// Load one with ``Model.load(path)``; it reads every weights format the ``mnv2`` command line
/// reads (the project's safetensors, int8 safetensors, PyTorch ``.pth``, ONNX, TFLite, Keras
/// ``.h5``). A model is immutable and safe to share between threads: ``run`` and ``classify``
/// release the GIL while the engine computes, so several Python threads can use one model.
#[pyclass(name = "Model", module = "mobilenetv2", frozen)]
struct PyModel {
    /// The weights (kept for `quantize`, `export`, `save`), labels and preprocessing.
    model: Model,
    /// The engine `run` uses, built at load time.
    engine: Engine,
    /// The engine plus preprocessing `classify` uses, built on first use.
    classifier: OnceLock<std::result::Result<Classifier, String>>,
    options: Options,
}

impl PyModel {
    fn new(model: Model, options: Options) -> PyResult<PyModel> {
        let engine = Engine::new(&model, options).map_err(err)?;
        Ok(PyModel { model, engine, classifier: OnceLock::new(), options })
    }

    fn classifier(&self) -> PyResult<&Classifier> {
        self.classifier
            .get_or_init(|| Classifier::new(self.model.clone(), self.options).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| input_err(e.clone()))
    }
}

/// One image to classify, taken from Python while the GIL is held.
enum Source {
    /// A file: decoded (and named in errors) by the library.
    Path(PathBuf),
    /// Encoded JPEG or PNG bytes, with the name errors use.
    Bytes(Vec<u8>, String),
    /// Decoded pixels.
    Pixels(RgbImage),
}

impl Source {
    /// The name in the result's `image` field: the path as given, else `None`.
    fn name(&self) -> Option<String> {
        match self {
            Source::Path(p) => Some(p.display().to_string()),
            _ => None,
        }
    }

    fn decode(self) -> mobilenetv2::Result<RgbImage> {
        match self {
            Source::Path(p) => preprocess::decode(&p),
            Source::Bytes(b, name) => preprocess::decode_bytes(&b, Path::new(&name)),
            Source::Pixels(img) => Ok(img),
        }
    }
}

/// A `HxWx3` uint8 array as an image (any strides; the pixels are copied once).
fn pixels(arr: &Bound<'_, PyUntypedArray>, what: &str) -> PyResult<RgbImage> {
    let py = arr.py();
    if !arr.dtype().is_equiv_to(&u8::get_dtype(py)) {
        return Err(input_err(format!("{what}: an image array must be uint8, got {}", arr.dtype())));
    }
    let shape = arr.shape();
    if shape.len() != 3 || shape[2] != 3 {
        return Err(input_err(format!("{what}: an image array must be HxWx3 (RGB), got shape {shape:?}")));
    }
    let typed = arr.cast::<PyArrayDyn<u8>>().map_err(|e| input_err(format!("{what}: {e}")))?;
    let view = typed.try_readonly().map_err(|e| input_err(format!("{what}: {e}")))?;
    let data: Vec<u8> = view.as_array().iter().copied().collect();
    RgbImage::new(shape[1], shape[0], data).map_err(err)
}

/// One element of `classify`'s list (or the single image) as a [`Source`].
fn source(obj: &Bound<'_, PyAny>, i: usize) -> PyResult<Source> {
    let py = obj.py();
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Source::Bytes(b.as_bytes().to_vec(), format!("<bytes #{i}>")));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Source::Bytes(b.to_vec(), format!("<bytearray #{i}>")));
    }
    if let Ok(a) = obj.cast::<PyUntypedArray>() {
        return Ok(Source::Pixels(pixels(a, &format!("<array #{i}>"))?));
    }
    if let Ok(p) = obj.extract::<PathBuf>() {
        return Ok(Source::Path(p));
    }
    // A PIL image: PIL's own conversion to RGB, then its pixels through numpy.
    if obj.hasattr("convert")? && obj.hasattr("mode")? {
        let rgb = obj.call_method1("convert", ("RGB",))?;
        let arr = py.import("numpy")?.call_method1("asarray", (rgb,))?;
        let a = arr.cast::<PyUntypedArray>().map_err(|e| input_err(format!("<image #{i}>: {e}")))?;
        return Ok(Source::Pixels(pixels(a, &format!("<PIL image #{i}>"))?));
    }
    Err(input_err(format!(
        "image #{i}: expected a path (str or os.PathLike), JPEG/PNG bytes, a PIL image or an HxWx3 uint8 \
         numpy array, got {}",
        obj.get_type().name()?
    )))
}

/// `images` as sources: one image, or a list or tuple of them.
fn sources(images: &Bound<'_, PyAny>) -> PyResult<Vec<Source>> {
    if images.cast::<PyList>().is_ok() || images.cast::<pyo3::types::PyTuple>().is_ok() {
        images.try_iter()?.enumerate().map(|(i, o)| source(&o?, i)).collect()
    } else {
        Ok(vec![source(images, 0)?])
    }
}

fn prediction<'py>(py: Python<'py>, p: &Prediction) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("index", p.index)?;
    d.set_item("label", p.label.as_deref())?;
    d.set_item("prob", p.prob)?;
    Ok(d)
}

fn classification<'py>(py: Python<'py>, image: Option<&str>, top: &[Prediction]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("image", image)?;
    let list = PyList::empty(py);
    for p in top {
        list.append(prediction(py, p)?)?;
    }
    d.set_item("top", list)?;
    Ok(d)
}

/// A float32 NCHW array's dims and values, read in place (no copy).
fn nchw<'a>(x: &'a Bound<'_, PyAny>) -> PyResult<numpy::PyReadonlyArrayDyn<'a, f32>> {
    let py = x.py();
    let arr = x.cast::<PyUntypedArray>().map_err(|_| {
        input_err(format!(
            "x must be a numpy array (N x 3 x H x W, float32), got {}",
            x.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    if !arr.dtype().is_equiv_to(&f32::get_dtype(py)) {
        return Err(input_err(format!("x must be float32, got {} (use x.astype(numpy.float32))", arr.dtype())));
    }
    if arr.ndim() != 4 {
        return Err(input_err(format!("x must be 4-D (N x 3 x H x W), got shape {:?}", arr.shape())));
    }
    if arr.shape()[1] != 3 {
        return Err(input_err(format!("x must have 3 channels in axis 1 (NCHW), got shape {:?}", arr.shape())));
    }
    if !arr.is_c_contiguous() {
        return Err(input_err(
            "x must be C-contiguous: it is read in place, without a copy (use numpy.ascontiguousarray(x))",
        ));
    }
    let typed = arr.cast::<PyArrayDyn<f32>>().map_err(|e| input_err(format!("x: {e}")))?;
    typed.try_readonly().map_err(|e| input_err(format!("x: {e}")))
}

#[pymethods]
impl PyModel {
    /// Model.load(path, threads=None, mode="fast", precision=None)
    ///
    /// Loads weights from a file in any format the ``mnv2`` command line reads: the project's
    /// safetensors (float or int8), PyTorch ``.pth`` state dicts (torchvision's names), ONNX,
    /// TFLite and Keras ``.h5``. The configuration (width, resolution, classes) comes from the
    /// file.
    ///
    /// ``threads``: worker threads of the engine (default: every core this process may use).
    /// ``mode``: ``"fast"`` (fused SIMD blocks), ``"streaming"`` (least memory) or
    /// ``"reference"`` (scalar, layer by layer; slow). ``precision``: ``"fp32"``, ``"bf16"``
    /// (bf16 products with f32 sums in the 1x1 convolutions: AVX512-BF16 CPUs) or ``"int8"``
    /// (an int8 file); default: the file's own. Raises ``mobilenetv2.Error`` naming the file
    /// when it cannot be read or does not hold MobileNetV2 weights.
    #[staticmethod]
    #[pyo3(signature = (path, threads=None, mode="fast", precision=None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        threads: Option<usize>,
        mode: &str,
        precision: Option<&str>,
    ) -> PyResult<PyModel> {
        let precision = parse_precision(precision)?;
        let options = Options { mode: parse_mode(mode)?, threads: threads.unwrap_or_else(cores), isa: None, precision };
        py.detach(|| Model::load(&path)).map_err(err).and_then(|m| PyModel::new(m, options))
    }

    /// Model.init(width=1.0, resolution=224, classes=1000, seed=0, threads=None, mode="fast", precision=None)
    ///
    /// A model with random weights (He initialisation, seeded): for tests and for training
    /// elsewhere. ``resolution`` is ``N`` or ``"HxW"``; ``precision`` as in ``Model.load``.
    #[staticmethod]
    #[pyo3(signature = (width=1.0, resolution=None, classes=1000, seed=0, threads=None, mode="fast", precision=None))]
    #[allow(clippy::too_many_arguments)]
    fn init(
        width: f64,
        resolution: Option<&Bound<'_, PyAny>>,
        classes: usize,
        seed: u64,
        threads: Option<usize>,
        mode: &str,
        precision: Option<&str>,
    ) -> PyResult<PyModel> {
        let (h, w) = match resolution {
            None => (224, 224),
            Some(r) => match r.extract::<usize>() {
                Ok(n) => (n, n),
                Err(_) => Spec::parse_resolution(&r.extract::<String>()?).map_err(err)?,
            },
        };
        let spec = Spec { classes, height: h, width_px: w, ..Spec::new(width, h) };
        let precision = parse_precision(precision)?;
        let options = Options { mode: parse_mode(mode)?, threads: threads.unwrap_or_else(cores), isa: None, precision };
        PyModel::new(Model::init(&spec, seed, false).map_err(err)?, options)
    }

    /// model.run(x) -> numpy.ndarray
    ///
    /// Logits of an ``N x 3 x H x W`` float32 batch (PyTorch's layout, already normalised):
    /// an ``N x classes`` float32 array. Any ``N`` (0 included) and any ``H x W`` the network
    /// accepts. ``x`` must be C-contiguous; it is read in place, without a copy, and the GIL
    /// is released while the engine runs (do not modify ``x`` from another thread meanwhile).
    /// Bit-identical to ``mnv2 run`` on the same values.
    fn run<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let arr = nchw(x)?;
        let dims = arr.shape().to_vec();
        let values = arr.as_slice().map_err(|e| input_err(format!("x: {e}")))?;
        let classes = self.model.spec().classes;
        let logits = if dims[0] == 0 {
            Vec::new()
        } else {
            let out = py.detach(|| self.engine.run_nchw(&dims, values)).map_err(err)?;
            out.data
        };
        let n = dims[0];
        logits.into_pyarray(py).reshape([n, classes])
    }

    /// model.classify(images, top=5) -> list[dict]
    ///
    /// The ``top`` most probable classes of each image, preprocessed exactly as torchvision's
    /// evaluation transform (resize, center crop, normalise), as ``mnv2 classify --json``
    /// prints them: ``[{"image": path or None, "top": [{"index", "label", "prob"}, ...]}]``,
    /// most probable first, one entry per image in order.
    ///
    /// ``images``: one image or a list of them; each a path (``str`` or ``os.PathLike``),
    /// JPEG/PNG ``bytes``, a PIL image, or an ``H x W x 3`` uint8 numpy array (RGB). The
    /// ``image`` field is the path as given, ``None`` for in-memory images. The GIL is released
    /// while images are decoded and the engine runs.
    #[pyo3(signature = (images, top=5))]
    fn classify<'py>(&self, py: Python<'py>, images: &Bound<'py, PyAny>, top: usize) -> PyResult<Bound<'py, PyList>> {
        if top == 0 {
            return Err(input_err("top must be at least 1"));
        }
        let sources = sources(images)?;
        let classifier = self.classifier()?;
        let results: Vec<(Option<String>, Vec<Prediction>)> = py
            .detach(|| -> mobilenetv2::Result<_> {
                let mut out = Vec::with_capacity(sources.len());
                let mut it = sources.into_iter().peekable();
                while it.peek().is_some() {
                    let chunk: Vec<Source> = it.by_ref().take(CHUNK).collect();
                    let names: Vec<Option<String>> = chunk.iter().map(Source::name).collect();
                    let decoded = chunk.into_iter().map(Source::decode).collect::<mobilenetv2::Result<Vec<_>>>()?;
                    out.extend(names.into_iter().zip(classifier.classify_images(&decoded, top)?));
                }
                Ok(out)
            })
            .map_err(err)?;
        let list = PyList::empty(py);
        for (name, top) in &results {
            list.append(classification(py, name.as_deref(), top)?)?;
        }
        Ok(list)
    }

    /// model.quantize(calib, method="percentile:99.9", images=100) -> Model
    ///
    /// An int8 model calibrated on ``calib`` (post-training quantisation, as ``mnv2
    /// quantize``): a directory of JPEG/PNG images (searched recursively, sorted), a list of
    /// image paths, or an ``N x 3 x H x W`` float32 array of preprocessed images. At most
    /// ``images`` images are used. ``method``: ``"minmax"``, ``"percentile[:P]"`` or
    /// ``"mse"``. Save it with ``save``; it runs on the int8 kernels.
    #[pyo3(signature = (calib, method="percentile:99.9", images=100))]
    fn quantize(&self, py: Python<'_>, calib: &Bound<'_, PyAny>, method: &str, images: usize) -> PyResult<PyModel> {
        if images == 0 {
            return Err(input_err("images must be at least 1"));
        }
        if self.model.quant.is_some() {
            return Err(input_err(format!("{}: already quantised", self.model.source.display())));
        }
        let method: Method = method.parse().map_err(err)?;
        let spec = self.model.spec().clone();
        let batches: Vec<Batch> = if calib.cast::<PyUntypedArray>().is_ok() {
            let arr = nchw(calib)?;
            let b = Batch::from_nchw(arr.shape(), arr.as_slice().map_err(|e| input_err(e.to_string()))?)
                .and_then(|b| b.check_finite().map(|_| b))
                .map_err(err)?;
            let n = b.n.min(images);
            vec![Batch::new(n, b.shape, b.data[..n * b.shape.len()].to_vec()).map_err(err)?]
        } else {
            let mut files: Vec<PathBuf> = match calib.extract::<PathBuf>() {
                Ok(dir) => {
                    let is_image = |p: &Path| {
                        p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
                    };
                    let files = mobilenetv2::fsutil::walk_files(&dir, is_image).map_err(err)?;
                    if files.is_empty() {
                        return Err(input_err(format!("{}: no JPEG or PNG images found", dir.display())));
                    }
                    files
                }
                Err(_) => calib.extract::<Vec<PathBuf>>().map_err(|_| {
                    input_err("calib must be a directory, a list of image paths or an N x 3 x H x W float32 array")
                })?,
            };
            files.truncate(images);
            let pre = &self.model.preprocess;
            py.detach(|| {
                files
                    .chunks(CHUNK)
                    .map(|c| preprocess::load_batch(c, pre, spec.height, spec.width_px))
                    .collect::<mobilenetv2::Result<Vec<_>>>()
            })
            .map_err(err)?
        };
        let model = &self.model;
        let qspec = py.detach(|| quant::calibrate(model, &batches, method)).map_err(err)?;
        let mut q = self.model.clone();
        q.quant = Some(qspec);
        PyModel::new(q, self.options)
    }

    /// model.save(path, dtype="f32")
    ///
    /// Writes the project's format (safetensors with torchvision's names and the
    /// configuration in its metadata), atomically. ``dtype="f16"`` halves the file (weights
    /// are widened back when loaded); an int8 model is written in the int8 format.
    #[pyo3(signature = (path, dtype="f32"))]
    fn save(&self, py: Python<'_>, path: PathBuf, dtype: &str) -> PyResult<()> {
        let store = match dtype {
            "f32" => FloatStore::F32,
            "f16" => FloatStore::F16,
            _ => return Err(input_err(format!("unknown dtype `{dtype}` (expected f32 or f16)"))),
        };
        py.detach(|| self.model.save_as(&path, store)).map_err(err)
    }

    /// model.export(path, format="onnx", dynamic_batch=False, opset=None, resolution=None)
    ///
    /// Writes the model for another engine, as ``mnv2 export``: ONNX (fp32 with BatchNorm
    /// folded, or an int8 model as a QDQ graph). ``dynamic_batch`` makes the batch dimension
    /// symbolic; ``opset``: 11 to 21 (default 17; 13 or later for an int8 model);
    /// ``resolution`` (``N`` or ``"HxW"``) changes the input size.
    #[pyo3(signature = (path, format="onnx", dynamic_batch=false, opset=None, resolution=None))]
    fn export(
        &self,
        py: Python<'_>,
        path: PathBuf,
        format: &str,
        dynamic_batch: bool,
        opset: Option<i64>,
        resolution: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if format != "onnx" {
            return Err(input_err(format!("unknown export format `{format}` (expected onnx)")));
        }
        let resized;
        let model = match resolution {
            None => &self.model,
            Some(r) => {
                let (height, width_px) = match r.extract::<usize>() {
                    Ok(n) => (n, n),
                    Err(_) => Spec::parse_resolution(&r.extract::<String>()?).map_err(err)?,
                };
                resized = self.model.with_spec(&Spec { height, width_px, ..self.model.spec().clone() }).map_err(err)?;
                &resized
            }
        };
        let opts = onnx::Options { dynamic_batch, opset: opset.unwrap_or(onnx::DEFAULT_OPSET) };
        py.detach(|| onnx::write(model, &path, opts)).map_err(err)
    }

    /// The input size the weights were made for, ``(height, width)``.
    #[getter]
    fn input_size(&self) -> (usize, usize) {
        let s = self.model.spec();
        (s.height, s.width_px)
    }

    /// The number of classes (the length of each row ``run`` returns).
    #[getter]
    fn classes(&self) -> usize {
        self.model.spec().classes
    }

    /// The width multiplier (1.0 for the paper's main network).
    #[getter]
    fn width(&self) -> f64 {
        self.model.spec().width
    }

    /// The class names (ImageNet's for 1000 classes), or ``None``.
    #[getter]
    fn labels(&self) -> Option<Vec<String>> {
        let classes = self.model.spec().classes;
        let labels: Vec<String> = (0..classes).map_while(|i| self.model.label(i).map(str::to_owned)).collect();
        (labels.len() == classes && classes > 0).then_some(labels)
    }

    /// Whether the model is int8 (quantised).
    #[getter]
    fn quantized(&self) -> bool {
        self.model.quant.is_some()
    }

    /// The engine's worker threads.
    #[getter]
    fn threads(&self) -> usize {
        self.options.threads
    }

    /// The engine mode: ``"fast"``, ``"streaming"`` or ``"reference"``.
    #[getter]
    fn mode(&self) -> &'static str {
        mode_name(self.options.mode)
    }

    /// The engine's number format: ``"fp32"``, ``"bf16"`` or ``"int8"``.
    #[getter]
    fn precision(&self) -> &'static str {
        self.engine.precision().map_or("fp32", |p| p.name())
    }

    /// Where the weights came from (the file loaded, or ``<init seed N>``).
    #[getter]
    fn source(&self) -> String {
        self.model.source.display().to_string()
    }

    fn __repr__(&self) -> String {
        let s = self.model.spec();
        format!(
            "mobilenetv2.Model(source={:?}, width={}, input={}x{}, classes={}, {}, threads={}, mode={}, precision={})",
            self.model.source.display().to_string(),
            s.width,
            s.height,
            s.width_px,
            s.classes,
            if self.model.quant.is_some() { "int8" } else { "float32" },
            self.options.threads,
            mode_name(self.options.mode),
            self.precision()
        )
    }
}

/// An SSDLite / SSD object detector (MobileNetV2 backbone) from a TF Object Detection API
/// frozen graph, as ``mnv2 detect`` runs it.
///
/// ``Detector.load(path, threshold=0.5, threads=None, precision=None)``; ``detector.detect(images)`` returns,
/// per image, ``{"image", "size": [W, H], "detections": [{"box": [x0, y0, x1, y1], "score",
/// "class", "label"}]}`` (boxes in pixels of the original image), what ``mnv2 detect --json``
/// prints. Thread-safe; the GIL is released while the engine runs.
#[pyclass(name = "Detector", module = "mobilenetv2", frozen)]
struct PyDetector {
    detector: Detector,
}

fn detection<'py>(py: Python<'py>, det: &Detector, d: &PixelDetection) -> PyResult<Bound<'py, PyDict>> {
    let o = PyDict::new(py);
    o.set_item("box", d.bbox.to_vec())?;
    o.set_item("score", d.score)?;
    o.set_item("class", d.class)?;
    o.set_item("label", det.label(d.class))?;
    Ok(o)
}

#[pymethods]
impl PyDetector {
    /// Detector.load(path, threshold=0.5, threads=None, precision=None)
    ///
    /// Reads a TF Object Detection API SSD frozen graph (``.pb``), or the same detector saved
    /// by ``mnv2 convert GRAPH.pb OUT.safetensors``: the backbone, the head, the anchors, the
    /// box coder and the NMS settings all come from the file. Detections scoring below
    /// ``threshold`` are dropped. ``precision`` as in ``Model.load``.
    #[staticmethod]
    #[pyo3(signature = (path, threshold=0.5, threads=None, precision=None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        threshold: f32,
        threads: Option<usize>,
        precision: Option<&str>,
    ) -> PyResult<PyDetector> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(input_err(format!("threshold {threshold} must be in [0, 1]")));
        }
        let precision = parse_precision(precision)?;
        let options =
            DetectorOptions { threshold, threads: threads.unwrap_or_else(cores), precision, ..Default::default() };
        let detector = py.detach(|| Detector::load(&path, options)).map_err(err)?;
        Ok(PyDetector { detector })
    }

    /// detector.detect(images) -> list[dict]
    ///
    /// Objects in each image (one image or a list; paths, JPEG/PNG bytes, PIL images or
    /// HxWx3 uint8 arrays), in order: ``{"image": path or None, "size": [W, H], "detections":
    /// [{"box": [x0, y0, x1, y1], "score", "class", "label"}, ...]}``.
    fn detect<'py>(&self, py: Python<'py>, images: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let sources = sources(images)?;
        let det = &self.detector;
        let results = py
            .detach(|| -> mobilenetv2::Result<Vec<_>> {
                sources
                    .into_iter()
                    .map(|s| {
                        let name = s.name();
                        let image = s.decode()?;
                        let found = det.detect(&image)?;
                        Ok((name, (image.width, image.height), found))
                    })
                    .collect()
            })
            .map_err(err)?;
        let list = PyList::empty(py);
        for (name, (w, h), found) in &results {
            let o = PyDict::new(py);
            o.set_item("image", name.as_deref())?;
            o.set_item("size", vec![*w, *h])?;
            let rows = PyList::empty(py);
            for d in found {
                rows.append(detection(py, det, d)?)?;
            }
            o.set_item("detections", rows)?;
            list.append(o)?;
        }
        Ok(list)
    }

    /// Detections scoring below this are dropped.
    #[getter]
    fn threshold(&self) -> f32 {
        self.detector.options().threshold
    }

    /// The input size of the network, ``(height, width)``.
    #[getter]
    fn input_size(&self) -> (usize, usize) {
        let s = self.detector.model().spec();
        (s.height, s.width_px)
    }

    fn __repr__(&self) -> String {
        let (h, w) = self.input_size();
        format!(
            "mobilenetv2.Detector(source={:?}, input={h}x{w}, threshold={}, threads={})",
            self.detector.model().source.display().to_string(),
            self.detector.options().threshold,
            self.detector.options().threads
        )
    }
}

/// A Mobile DeepLabv3 semantic segmenter (MobileNetV2 backbone, DeepLab head), as ``mnv2
/// segment`` runs it.
///
/// ``Segmenter.load(path, threads=None, precision=None)`` reads weights with a DeepLab spec (safetensors);
/// ``segmenter.segment(images, multi_scale=False)`` returns, per image, ``{"image", "width",
/// "height", "mask", "classes"}``: ``mask`` is an ``H x W`` uint8 numpy array of class indices
/// at the photo's size (what ``mnv2 segment`` writes as a palette PNG), ``classes`` the share
/// of pixels per class present, ``[{"class", "label", "fraction"}]`` (no ``label`` for a class
/// without a name). Thread-safe; the GIL is
/// released while the engine runs.
#[pyclass(name = "Segmenter", module = "mobilenetv2", frozen)]
struct PySegmenter {
    segmenter: Segmenter,
    threads: usize,
}

#[pymethods]
impl PySegmenter {
    /// Segmenter.load(path, threads=None, precision=None)
    ///
    /// Reads a DeepLab model (the project's safetensors with a DeepLab spec). It runs on the
    /// fast engine with ``threads`` threads; ``precision`` as in ``Model.load``.
    #[staticmethod]
    #[pyo3(signature = (path, threads=None, precision=None))]
    fn load(py: Python<'_>, path: PathBuf, threads: Option<usize>, precision: Option<&str>) -> PyResult<PySegmenter> {
        let threads = threads.unwrap_or_else(cores);
        let precision = parse_precision(precision)?;
        let segmenter = py
            .detach(|| {
                let model = Model::load(&path)?;
                Segmenter::new(model, Options { threads, precision, ..Options::default() })
                    .map_err(|e| mobilenetv2::Error::Input(format!("{}: {e}", path.display())))
            })
            .map_err(err)?;
        Ok(PySegmenter { segmenter, threads })
    }

    /// segmenter.segment(images, multi_scale=False) -> list[dict]
    ///
    /// The class of every pixel of each image (one image or a list; paths, JPEG/PNG bytes, PIL
    /// images or HxWx3 uint8 arrays), in order. ``multi_scale``: TF DeepLab's multi-scale +
    /// flip inference (12 passes, the paper's Table 7 "MF").
    #[pyo3(signature = (images, multi_scale=false))]
    fn segment<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        multi_scale: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let sources = sources(images)?;
        let seg = &self.segmenter;
        let results = py
            .detach(|| -> mobilenetv2::Result<Vec<_>> {
                sources
                    .into_iter()
                    .map(|s| {
                        let name = s.name();
                        let found = match s {
                            Source::Path(p) => seg.segment_file(&p, multi_scale)?.1,
                            other => {
                                let photo = other.decode()?;
                                if multi_scale {
                                    seg.segment_image_multi_scale(&photo)?
                                } else {
                                    seg.segment_image(&photo)?
                                }
                            }
                        };
                        Ok((name, found))
                    })
                    .collect()
            })
            .map_err(err)?;
        let list = PyList::empty(py);
        for (name, s) in results {
            let o = PyDict::new(py);
            o.set_item("image", name)?;
            o.set_item("width", s.width)?;
            o.set_item("height", s.height)?;
            let classes = PyList::empty(py);
            for f in seg.fractions(&s) {
                let c = PyDict::new(py);
                c.set_item("class", f.class)?;
                // As `mnv2 segment --json`: no label key for a class without a name.
                if let Some(label) = f.label {
                    c.set_item("label", label)?;
                }
                c.set_item("fraction", f.fraction)?;
                classes.append(c)?;
            }
            let (h, w) = (s.height, s.width);
            o.set_item("mask", s.classes.into_pyarray(py).reshape([h, w])?)?;
            o.set_item("classes", classes)?;
            list.append(o)?;
        }
        Ok(list)
    }

    /// The number of classes (background included).
    #[getter]
    fn classes(&self) -> usize {
        self.segmenter.model().spec().classes
    }

    fn __repr__(&self) -> String {
        let m = self.segmenter.model();
        format!(
            "mobilenetv2.Segmenter(source={:?}, width={}, classes={}, threads={})",
            m.source.display().to_string(),
            m.spec().width,
            m.spec().classes,
            self.threads
        )
    }
}

/// The native half of the `mobilenetv2` package (import `mobilenetv2`, not this).
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_class::<PyDetector>()?;
    m.add_class::<PySegmenter>()?;
    m.add("Error", m.py().get_type::<Error>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
