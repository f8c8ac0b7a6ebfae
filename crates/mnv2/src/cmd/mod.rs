//! One module per subcommand.

pub mod args;
pub mod bench;
pub mod classify;
pub mod coco_eval;
pub mod convert;
pub mod dataset;
pub mod detect;
pub mod eval;
pub mod export;
pub mod fetch;
pub mod info;
pub mod init;
pub mod paper;
pub mod quantize;
pub mod run;
pub mod segment;
pub mod serve;
pub mod train;

use std::io::Write;

use anyhow::Result;

/// Marks an error as a failure of the program rather than of its input (exit code 2).
#[derive(Debug)]
pub struct Internal(pub String);

impl std::fmt::Display for Internal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Internal {}

/// Prints to stdout, passing a broken pipe up as an error that main ends quietly on.
pub fn out(text: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())?;
    o.flush()?;
    Ok(())
}
