//! Where the CLI keeps things: running sandboxes' sockets and logs under `/run/hull/cli`
//! (short paths: unix sockets live there), images and per-container copies under
//! `/var/lib/hull`. `$HULL_ROOT` moves both below one directory (tests use it).

use std::path::PathBuf;

fn root() -> Option<PathBuf> {
    std::env::var_os("HULL_ROOT").map(PathBuf::from)
}

pub fn run() -> PathBuf {
    root().map_or_else(|| PathBuf::from("/run/hull/cli"), |r| r.join("run"))
}

/// Container `name`'s read-only volume copies: on tmpfs beside the run directories (a
/// leading dot: no container name starts with one).
pub fn volumes(name: &str) -> PathBuf {
    run().join(format!(".volumes-{name}"))
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
