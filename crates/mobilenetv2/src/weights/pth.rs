//! PyTorch `.pth`/`.pt` state dicts (placeholder until the reader lands).

use std::path::Path;

use super::TensorFile;
use crate::error::{Error, Result};

pub fn read(path: &Path, _bytes: &[u8]) -> Result<TensorFile> {
    Err(Error::Unsupported(format!(
        "{}: reading PyTorch files",
        path.display()
    )))
}
