//! Where the CLI keeps things: running sandboxes' sockets and logs under `/run/hull/cli`
//! (short paths: unix sockets live there), images and per-container copies under
//! `/var/lib/hull`. `$HULL_ROOT` moves both below one directory (tests use it).

use std::path::{Path, PathBuf};

fn root() -> Option<PathBuf> {
    std::env::var_os("HULL_ROOT").map(PathBuf::from)
}

pub fn run() -> PathBuf {
    root().map_or_else(|| PathBuf::from("/run/hull/cli"), |r| r.join("run"))
}

pub fn images() -> PathBuf {
    root().map_or_else(
        || PathBuf::from("/var/lib/hull/images"),
        |r| r.join("images"),
    )
}

pub fn containers() -> PathBuf {
    root().map_or_else(
        || PathBuf::from("/var/lib/hull/containers"),
        |r| r.join("containers"),
    )
}

/// Whether the sandbox whose run directory is `dir` still has its VMM: the pid recorded
/// there is alive and its command line names the directory.
pub fn sandbox_alive(dir: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(dir.join("vmm.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return false;
    };
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
        .unwrap_or(false)
}
