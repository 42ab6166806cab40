//! Running code inside another network namespace. `setns(2)` moves only the calling
//! thread, so the work runs on a thread of its own that enters the namespace and ends
//! with it; the caller's threads never change namespace.

use std::os::fd::AsRawFd;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening the network namespace {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("entering the network namespace {path} (setns; needs CAP_SYS_ADMIN)")]
    Enter {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a thread working in the network namespace {0} panicked")]
    Panicked(String),
}

/// Runs `f` on a new thread inside the network namespace at `path` (a pinned
/// `/var/run/netns/...` file or `/proc/<pid>/ns/net`) and returns what it returns.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| NetnsError::Open {
        path: name.clone(),
        source,
    })?;
    let thread_name = name.clone();
    std::thread::spawn(move || {
        // SAFETY: setns(2) on a descriptor we own, for this thread only (CLONE_NEWNET moves
        // just the caller); the thread ends when `f` returns.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetnsError::Enter {
                path: thread_name,
                source: std::io::Error::last_os_error(),
            });
        }
        drop(file);
        Ok(f())
    })
    .join()
    .map_err(|_| NetnsError::Panicked(name))?
}

/// Runs `f` on a new thread inside a new, empty network namespace (tests build their
/// networks there); returns what it returns.
pub fn run_in_new<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) of this thread's network namespace; the thread ends with `f`.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| std::io::Error::other("the thread in the new network namespace panicked"))?
}
