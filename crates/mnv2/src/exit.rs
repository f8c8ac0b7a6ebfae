//! How `mnv2` ends: the exit code and the one-line message of every failure.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success, `--help`, `--version`, or a closed stdout (e.g. `mnv2 info \| head`) |
//! | 1 | bad usage (an unknown option, a value clap rejects) or bad input (a missing, corrupt or unsuitable file, an invalid value); one line on stderr names the option or the file and the problem |
//! | 2 | internal failure: a bug in mnv2 (a panic, or a broken invariant marked [`Internal`]), never the user's input |

use std::io::ErrorKind;

use crate::cmd::Internal;

/// Exit code of bad usage and bad input.
pub const INPUT: i32 = 1;
/// Exit code of an internal failure.
pub const INTERNAL: i32 = 2;

/// Makes exceeding the file-size limit (`ulimit -f`, RLIMIT_FSIZE) an ordinary write error.
/// By default the kernel kills the process with SIGXFSZ; with the signal caught, the write
/// that crosses the limit fails with EFBIG instead, so it reads like a full disk: one line
/// naming the file, the previous file kept, the temporary file removed (tests/train_cli.rs).
pub fn catch_file_size_signal() {
    #[cfg(unix)]
    {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Registration only fails for signals that cannot be caught; SIGXFSZ can.
        let _ = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, flag);
    }
}

/// Makes a panic anywhere (any thread) an internal failure: one line, exit code 2.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let p = info.payload();
        let what = p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str));
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!(
            "error: internal failure (a bug in mnv2, please report it): {}{at}",
            one_line(what.unwrap_or("panic"))
        );
        std::process::exit(INTERNAL);
    }));
    // The test of this contract (tests/cli.rs) needs a panic no input can cause.
    if std::env::var_os("__MNV2_TEST_PANIC").is_some() {
        panic!("panic requested by __MNV2_TEST_PANIC");
    }
}

/// Ends the process on a command-line parse failure: help and version on stdout with code 0,
/// anything else as one line on stderr with code 1 (clap itself would use 2, which here means
/// an internal failure).
pub fn usage(e: clap::Error) -> ! {
    use clap::error::ErrorKind as K;
    match e.kind() {
        K::DisplayHelp | K::DisplayVersion => {
            let _ = e.print();
            std::process::exit(0)
        }
        K::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            std::process::exit(INPUT)
        }
        _ => {
            eprintln!("{}", clap_one_line(&e.render().to_string()));
            std::process::exit(INPUT)
        }
    }
}

/// clap's multi-line message as one line: continuation lines (indented `[possible values..]`)
/// join with a space, separate statements with "; ", the "For more information" hint goes.
fn clap_one_line(text: &str) -> String {
    let mut s = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with("For more information") {
            continue;
        }
        if !s.is_empty() {
            s += if line.starts_with(' ') && !t.starts_with("tip:") { " " } else { "; " };
        }
        s += t;
    }
    s
}

/// Ends the process with the result of a subcommand.
pub fn finish(result: anyhow::Result<()>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let (code, message) = report(&e);
            if let Some(m) = message {
                eprintln!("error: {m}");
            }
            std::process::exit(code)
        }
    }
}

/// The exit code of an error and the line to print (none for a closed stdout).
fn report(e: &anyhow::Error) -> (i32, Option<String>) {
    let broken_pipe =
        e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == ErrorKind::BrokenPipe));
    if broken_pipe {
        return (0, None);
    }
    let internal = e.chain().any(|c| c.downcast_ref::<Internal>().is_some());
    (if internal { INTERNAL } else { INPUT }, Some(chain_line(e)))
}

/// The error and its causes on one line, as anyhow's `{:#}` does, except that a cause whose
/// message its parent already includes is not repeated: the library's `Error::Io` shows the OS
/// error in its message and also returns it as `source()`, which `{:#}` printed twice.
fn chain_line(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for cause in e.chain() {
        let m = one_line(&cause.to_string());
        if m.is_empty() || s.contains(&m) {
            continue;
        }
        if !s.is_empty() {
            s += ": ";
        }
        s += &m;
    }
    s
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error(path: &str) -> anyhow::Error {
        let path = std::path::PathBuf::from(path);
        // What `Model::load` returns for a missing file.
        let source = std::io::Error::from(ErrorKind::NotFound);
        anyhow::Error::new(mobilenetv2::Error::Io { path, source })
    }

    #[test]
    fn the_os_error_is_said_once() {
        let (code, m) = report(&io_error("/no/w.pth"));
        let m = m.unwrap();
        assert_eq!(code, INPUT);
        assert!(m.starts_with("/no/w.pth: "), "{m}");
        let os = std::io::Error::from(ErrorKind::NotFound).to_string();
        assert_eq!(m.matches(&os).count(), 1, "{m}");
        // A context above it keeps its own words.
        let (_, m) = report(&io_error("/no/w.pth").context("loading the weights"));
        assert_eq!(m.unwrap(), format!("loading the weights: /no/w.pth: {os}"));
    }

    #[test]
    fn codes() {
        assert_eq!(report(&anyhow::anyhow!("bad")).0, INPUT);
        assert_eq!(report(&anyhow::Error::new(Internal("invariant".into())).context("bench")).0, INTERNAL);
        let pipe = anyhow::Error::new(std::io::Error::from(ErrorKind::BrokenPipe)).context("writing stdout");
        assert_eq!(report(&pipe), (0, None));
    }

    #[test]
    fn clap_messages_become_one_line() {
        let text = "error: invalid value 'tanh' for '--bottleneck <BOTTLENECK>'\n  [possible values: linear, relu6]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_one_line(text),
            "error: invalid value 'tanh' for '--bottleneck <BOTTLENECK>' [possible values: linear, relu6]"
        );
        let text = "error: unexpected argument '--wieghts' found\n\n  tip: a similar argument exists: '--weights'\n\nUsage: mnv2 run --weights <WEIGHTS>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_one_line(text),
            "error: unexpected argument '--wieghts' found; tip: a similar argument exists: '--weights'; Usage: mnv2 run --weights <WEIGHTS>"
        );
    }
}
