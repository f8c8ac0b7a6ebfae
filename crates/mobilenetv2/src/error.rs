//! The library's error type: one variant per kind of failure, each carrying what its one-line
//! message needs (the file, the tensor, what was expected and what was found).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid network spec: {0}")]
    InvalidSpec(String),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file that is truncated, corrupt or not in the format it claims.
    #[error("{}: not a valid {format} file: {detail}", path.display())]
    Format { path: PathBuf, format: &'static str, detail: String },

    /// A pickle that asks for something a state dict never needs.
    #[error("{}: refusing to load: the pickle uses {what}, which a plain state dict never needs (only tensors, dicts and the torch rebuild functions are allowed)", path.display())]
    UnsafePickle { path: PathBuf, what: String },

    #[error("{}: missing tensor `{name}` (expected shape {expected:?})", path.display())]
    MissingTensor { path: PathBuf, name: String, expected: Vec<usize> },

    #[error("{}: unknown tensor `{name}`: it is not part of a MobileNetV2 with this configuration", path.display())]
    UnknownTensor { path: PathBuf, name: String },

    #[error("{}: tensor `{name}` has shape {got:?}, expected {expected:?}", path.display())]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<usize>, got: Vec<usize> },

    #[error("{}: tensor `{name}` has dtype {got}, expected {expected}", path.display())]
    DType { path: PathBuf, name: String, expected: String, got: String },

    #[error("{}: tensor `{name}` holds a non-finite value ({value}) at index {index}", path.display())]
    NonFinite { path: PathBuf, name: String, index: usize, value: f32 },

    /// A weight file whose tensors fit no MobileNetV2 configuration.
    #[error("{}: the tensors fit no MobileNetV2 configuration: {detail}", path.display())]
    NoConfig { path: PathBuf, detail: String },

    #[error("{}: metadata `{key}` = `{value}` is invalid: {detail}", path.display())]
    Metadata { path: PathBuf, key: String, value: String, detail: String },

    #[error("input: {0}")]
    Input(String),

    #[error("{}: cannot read image: {detail}", path.display())]
    Image { path: PathBuf, detail: String },

    #[error("not implemented: {0}")]
    Unsupported(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, format: &'static str, detail: impl Into<String>) -> Self {
        Error::Format { path: path.into(), format, detail: detail.into() }
    }
}
