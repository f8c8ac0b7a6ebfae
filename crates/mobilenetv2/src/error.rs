//! The library's error type: one variant per kind of failure, each carrying what its one-line
//! message needs (the file, the tensor, what was expected and what was found).

use std::path::PathBuf;

/// The library's result type: `Ok(T)` or an [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the library reports. Its `Display` is one line naming the file (or the
/// request) and the problem, ready for a user; variants carry the same facts as fields for
/// callers that act on them. New variants may be added (`#[non_exhaustive]`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A [`Spec`](crate::Spec) that describes no valid network (a width multiplier or
    /// resolution out of range, an unknown tap, weights that do not fit a new configuration).
    #[error("invalid network spec: {0}")]
    InvalidSpec(String),

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A file that is truncated, corrupt or not in the format it claims.
    #[error("{}: not a valid {format} file: {detail}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The format it was read as (`"ONNX"`, `"safetensors"`, `"HDF5"`, ...).
        format: &'static str,
        /// What is wrong, for the message.
        detail: String,
    },

    /// A pickle that asks for something a state dict never needs.
    #[error("{}: refusing to load: the pickle uses {what}, which a plain state dict never needs (only tensors, dicts and the torch rebuild functions are allowed)", path.display())]
    UnsafePickle {
        /// The file.
        path: PathBuf,
        /// The global or opcode that was refused (e.g. `os.system`).
        what: String,
    },

    /// A weight file lacks a tensor the network needs.
    #[error("{}: missing tensor `{name}` (expected shape {expected:?})", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's torchvision name (e.g. `features.0.0.weight`).
        name: String,
        /// The shape the plan expects, in PyTorch layout.
        expected: Vec<usize>,
    },

    /// A weight file holds a tensor that is not part of the network.
    #[error("{}: unknown tensor `{name}`: it is not part of a MobileNetV2 with this configuration", path.display())]
    UnknownTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name in the file.
        name: String,
    },

    /// A tensor whose shape differs from the one the plan expects.
    #[error("{}: tensor `{name}` has shape {got:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor's torchvision name.
        name: String,
        /// The shape the plan expects, in PyTorch layout (OIHW for convolutions).
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },

    /// A tensor stored in an element type the reader does not accept there.
    #[error("{}: tensor `{name}` has dtype {got}, expected {expected}", path.display())]
    DType {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The accepted element type(s), e.g. `float32`.
        expected: String,
        /// The element type in the file.
        got: String,
    },

    /// A weight that is NaN or infinite.
    #[error("{}: tensor `{name}` holds a non-finite value ({value}) at index {index}", path.display())]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The flat (row-major) index of the first non-finite value.
        index: usize,
        /// That value.
        value: f32,
    },

    /// A weight file whose tensors fit no MobileNetV2 configuration.
    #[error("{}: the tensors fit no MobileNetV2 configuration: {detail}", path.display())]
    NoConfig {
        /// The file.
        path: PathBuf,
        /// Why the closest configuration does not fit.
        detail: String,
    },

    /// A metadata entry of a weight file (`spec`, `labels`, `preprocess`, `quantization`)
    /// that cannot be parsed or contradicts the tensors.
    #[error("{}: metadata `{key}` = `{value}` is invalid: {detail}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// Its value (or a summary of it).
        value: String,
        /// What is wrong with it.
        detail: String,
    },

    /// A batch whose image shape is not the one the network takes.
    #[error("input: input is {}, the plan expects {}", hwc(.got), hwc(.expected))]
    BatchShape {
        /// The plan's input shape, `[height, width, channels]`.
        expected: [usize; 3],
        /// The batch's image shape, `[height, width, channels]`.
        got: [usize; 3],
    },

    /// A buffer whose length is not a whole number of images of the given shape.
    #[error("input: {values} values do not make {images} images of {}", hwc(.shape))]
    BatchLen {
        /// The number of values given.
        values: usize,
        /// The number of images they should make.
        images: usize,
        /// One image's shape, `[height, width, channels]`.
        shape: [usize; 3],
    },

    /// A thread count of zero, or more than the engine supports.
    #[error("input: {}", threads_message(.got, .max))]
    Threads {
        /// The requested number of threads.
        got: usize,
        /// The most the engine supports.
        max: usize,
    },

    /// A class label not below the number of classes.
    #[error("input: label {label} is out of range for {classes} classes")]
    LabelOutOfRange {
        /// The label.
        label: usize,
        /// The classifier's number of classes.
        classes: usize,
    },

    /// Any other bad argument or input data (option values, image sizes, empty datasets,
    /// non-finite inputs); the string says what and why.
    #[error("input: {0}")]
    Input(String),

    /// An image file that cannot be decoded.
    #[error("{}: cannot read image: {detail}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's complaint.
        detail: String,
    },

    /// A valid request the library does not implement (e.g. feature taps in the fast engine,
    /// an ISA the CPU lacks, a layer shape training has no kernel for).
    #[error("not implemented: {0}")]
    Unsupported(String),
}

/// `HxWxC`, as [`crate::plan::Shape`] displays itself.
fn hwc(s: &[usize; 3]) -> String {
    format!("{}x{}x{}", s[0], s[1], s[2])
}

fn threads_message(got: &usize, max: &usize) -> String {
    if *got == 0 {
        "threads must be at least 1".into()
    } else {
        format!("{got} threads is more than the supported {max}")
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, format: &'static str, detail: impl Into<String>) -> Self {
        Error::Format { path: path.into(), format, detail: detail.into() }
    }
}
