//! Filesystem helpers shared by every writer and every folder walk.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A 64-bit value no other process can predict: the standard library seeds its hash keys from
/// the operating system's random source.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// The prefix of the temporary files [`write_atomic`] makes for `name`: `.NAME.tmp-`.
fn temp_prefix(name: &OsStr) -> String {
    format!(".{}.tmp-", name.to_string_lossy())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over the target, so a crash or a full disk never leaves a half-written file.
///
/// The temporary file (`.NAME.tmp-PID-RANDOM`) is created with `create_new`, so a file or a
/// symlink planted at that name is never opened or followed, and its name cannot be guessed.
/// Temporary files of `path` left by processes that no longer run (killed mid-write) are
/// removed first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path")))?;
    remove_stale_temps(dir, name);
    let (mut f, tmp) = loop {
        let tmp = dir.join(format!("{}{}-{:016x}", temp_prefix(name), std::process::id(), random_u64()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (f, tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(path, e)),
        }
    };
    let result = (|| {
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Removes `.NAME.tmp-PID[-RANDOM]` regular files in `dir` whose process is gone. Only where
/// that can be known (Linux's `/proc`); best effort, errors ignored.
fn remove_stale_temps(dir: &Path, name: &OsStr) {
    if !cfg!(target_os = "linux") || !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = temp_prefix(name);
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(prefix.as_str())) else { continue };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let alive = Path::new("/proc").join(pid).exists();
        // `file_type` does not follow symlinks: a planted link is left alone.
        if !alive && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Every file under `dir` (following symlinks) that `keep` accepts, sorted. Each folder is
/// entered once, however many links lead to it, so symlink cycles end; depth and count are
/// bounded by [`crate::limits::MAX_WALK_DEPTH`] and [`crate::limits::MAX_WALK_FILES`].
pub fn walk_files(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    use crate::limits::{MAX_WALK_DEPTH, MAX_WALK_FILES};
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let real = std::fs::canonicalize(&d).map_err(|e| Error::io(&d, e))?;
        if !seen.insert(real) {
            continue;
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&d)
            .map_err(|e| Error::io(&d, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(&d, e))?;
        entries.sort();
        for p in entries.into_iter().rev() {
            if p.is_dir() {
                if depth + 1 > MAX_WALK_DEPTH {
                    return Err(Error::Input(format!("{}: folders nest more than {MAX_WALK_DEPTH} deep", p.display())));
                }
                stack.push((p, depth + 1));
            } else if p.is_file() && keep(&p) {
                if out.len() >= MAX_WALK_FILES {
                    return Err(Error::Input(format!("{}: more than {MAX_WALK_FILES} files", dir.display())));
                }
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mnv2-fsutil-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// Defect 9: the old temp name `.NAME.tmp-PID` was predictable and opened with `create`,
    /// which follows a symlink planted there and truncates its target.
    #[cfg(unix)]
    #[test]
    fn write_atomic_never_follows_a_planted_symlink() {
        let d = scratch("symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let out = d.join("w.bin");
        std::os::unix::fs::symlink(&victim, d.join(format!(".w.bin.tmp-{}", std::process::id()))).unwrap();
        write_atomic(&out, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        // The planted link is neither followed nor (being a link, not a stale temp) removed.
        assert_eq!(names(&d), [format!(".w.bin.tmp-{}", std::process::id()), "victim".into(), "w.bin".into()]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Defect 15: temp files of writers killed mid-write are removed by the next write.
    #[test]
    fn stale_temps_of_dead_writers_are_removed() {
        let d = scratch("stale");
        let out = d.join("m.safetensors");
        // PIDs above the kernel's maximum (4194304) never run.
        std::fs::write(d.join(".m.safetensors.tmp-99999999"), b"half").unwrap();
        std::fs::write(d.join(".m.safetensors.tmp-99999998-00ff00ff00ff00ff"), b"half").unwrap();
        // A live process's temp (ours) and other files stay.
        let live = format!(".m.safetensors.tmp-{}-0123456789abcdef", std::process::id());
        std::fs::write(d.join(&live), b"in progress").unwrap();
        std::fs::write(d.join(".other.tmp-99999999"), b"x").unwrap();
        write_atomic(&out, b"data").unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(names(&d), [live, ".other.tmp-99999999".into(), "m.safetensors".into()]);
        } else {
            eprintln!("no /proc: stale temp cleanup is not run on this OS");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Defect 7: two folders linking to each other made the walk loop forever.
    #[cfg(unix)]
    #[test]
    fn walk_ends_on_symlink_cycles() {
        let d = scratch("walk");
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/x.jpg"), b"").unwrap();
        std::fs::write(d.join("a/y.txt"), b"").unwrap();
        std::os::unix::fs::symlink(d.join("a"), d.join("a/b/up")).unwrap();
        std::os::unix::fs::symlink(d.join("a/b"), d.join("a/self")).unwrap();
        std::os::unix::fs::symlink(".", d.join("a/here")).unwrap();
        let files = walk_files(&d, |p| p.extension().is_some_and(|e| e == "jpg")).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].ends_with("x.jpg"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
