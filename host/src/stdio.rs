//! A process's stdio between containerd's FIFOs (or files) and the agent's per-process
//! stream connections: one thread per direction, each a blocking copy, so nothing polls
//! and the transport's flow control is the backpressure end to end.
//!
//! - stdout/stderr: agent stream → FIFO. The agent closes the stream once the process and
//!   every holder of its pipe are gone, so the copy ending means all output was delivered.
//! - stdin: FIFO → agent stream; EOF on the FIFO (the client closed it) or CloseIO
//!   half-closes the stream, which the process reads as EOF.
//! - terminal: one pty stream carries both directions.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hull_protocol::rpc::{ConnectError, Endpoint};
use hull_protocol::stream::{Header, Kind};

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("open the agent's {kind} stream")]
    Stream {
        kind: &'static str,
        #[source]
        source: ConnectError,
    },
}

/// containerd's names for a process's stdio; an empty string means "not wired".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    pub fn agent_stdio(&self) -> hull_protocol::rpc::agent::Stdio {
        let mut s = hull_protocol::rpc::agent::Stdio::new();
        s.terminal = self.terminal;
        s.stdin = !self.stdin.is_empty();
        s.stdout = !self.stdout.is_empty();
        s.stderr = !self.stderr.is_empty() && !self.terminal;
        s
    }
}

/// The scheme of a descriptor of this process's own (`fd://1`): the CLI hands its stdio
/// over so. containerd never sends it, and [`is_supported`] refuses it from containerd.
const FD_SCHEME: &str = "fd://";

/// A URI such as `binary:///path?args` or `file:///path` names a logging target; hull
/// writes plain files and FIFOs only (and the CLI's own descriptors, `fd://N`).
fn local_path(name: &str) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.starts_with(FD_SCHEME) {
        return Some(PathBuf::from(name));
    }
    match name.strip_prefix("file://") {
        Some(p) => Some(PathBuf::from(p)),
        None if name.contains("://") => None,
        None => Some(PathBuf::from(name)),
    }
}

/// The relays of one process.
pub struct ProcessIo {
    outputs: Vec<JoinHandle<()>>,
    /// Each output relay sends once here when its copy has ended.
    finished: (Sender<()>, Receiver<()>),
    /// Every stream of the process, to end the relays when it is deleted.
    streams: Vec<UnixStream>,
    /// The write half towards the process's stdin, to half-close on CloseIO.
    stdin: Arc<Mutex<Option<UnixStream>>>,
}

impl ProcessIo {
    /// Opens the agent streams `paths` asks for and starts copying. Streams are opened
    /// here, before the process starts, so no early output is lost.
    pub fn attach(
        endpoint: &Endpoint,
        container: &str,
        exec: &str,
        paths: &StdioPaths,
    ) -> Result<ProcessIo, IoError> {
        let open = |kind: Kind| {
            endpoint
                .open_stream(&Header::new(kind, container, exec))
                .map_err(|source| IoError::Stream {
                    kind: kind.name(),
                    source,
                })
        };
        let mut outputs = Vec::new();
        let mut streams = Vec::new();
        let finished = channel();
        let stdin = Arc::new(Mutex::new(None));
        let label = if exec.is_empty() {
            container.to_string()
        } else {
            format!("{container}/{exec}")
        };
        if paths.terminal {
            let pty = open(Kind::Pty)?;
            streams.extend(pty.try_clone().ok());
            if let Some(out) = local_path(&paths.stdout) {
                let reader = pty.try_clone().map_err(|e| IoError::Stream {
                    kind: "pty",
                    source: ConnectError::Io {
                        what: "duplicating the pty stream".into(),
                        source: e,
                    },
                })?;
                outputs.push(spawn_output(
                    reader,
                    out,
                    format!("{label} pty"),
                    finished.0.clone(),
                ));
            }
            if let Some(input) = local_path(&paths.stdin) {
                *crate::lock(&stdin) = pty.try_clone().ok();
                spawn_input(input, pty, stdin.clone(), label.clone());
            }
            return Ok(ProcessIo {
                outputs,
                finished,
                streams,
                stdin,
            });
        }
        if let Some(input) = local_path(&paths.stdin) {
            let s = open(Kind::Stdin)?;
            streams.extend(s.try_clone().ok());
            *crate::lock(&stdin) = s.try_clone().ok();
            spawn_input(input, s, stdin.clone(), label.clone());
        }
        for (kind, path) in [(Kind::Stdout, &paths.stdout), (Kind::Stderr, &paths.stderr)] {
            if let Some(out) = local_path(path) {
                let s = open(kind)?;
                streams.extend(s.try_clone().ok());
                outputs.push(spawn_output(
                    s,
                    out,
                    format!("{label} {}", kind.name()),
                    finished.0.clone(),
                ));
            }
        }
        Ok(ProcessIo {
            outputs,
            finished,
            streams,
            stdin,
        })
    }

    /// Ends every relay of the process: its streams are shut down both ways.
    pub fn close(self) {
        for s in &self.streams {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Half-closes the process's stdin (CloseIO): it reads EOF.
    pub fn close_stdin(&self) {
        if let Some(s) = crate::lock(&self.stdin).take() {
            let _ = s.shutdown(Shutdown::Write);
        }
    }

    /// Waits up to `within` for the output copies to finish (the process exited: the agent
    /// is closing its streams). A background child that keeps the pipe open does not hold
    /// the exit back longer than that.
    pub fn drain(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut left = self.outputs.len();
        while left > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            if self.finished.1.recv_timeout(wait).is_err() {
                log::debug!("{left} output stream(s) still open {within:?} after the exit");
                break;
            }
            left -= 1;
        }
        // Finished relays are joined; one still copying keeps running on its own.
        for h in self.outputs.drain(..) {
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

fn spawn_output(
    mut from: UnixStream,
    to: PathBuf,
    label: String,
    done: Sender<()>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        relay_output(&mut from, &to, &label);
        let _ = done.send(());
    })
}

fn relay_output(from: &mut UnixStream, to: &Path, label: &str) {
    // A FIFO's open blocks until containerd has its read end open (it does before Create);
    // a file:// target is appended to.
    let mut out = match open_target(to, true) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("{label}: open {}: {e}; output dropped", to.display());
            drain_stream(from);
            return;
        }
    };
    if let Err(e) = copy(from, &mut out) {
        log::debug!("{label}: copy ended: {e}");
    }
}

fn spawn_input(
    from: PathBuf,
    mut to: UnixStream,
    shared: Arc<Mutex<Option<UnixStream>>>,
    label: String,
) {
    std::thread::spawn(move || {
        let mut input = match open_target(&from, false) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("{label} stdin: open {}: {e}", from.display());
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        };
        if let Err(e) = copy(&mut input, &mut to) {
            log::debug!("{label} stdin: copy ended: {e}");
        }
        // The client closed stdin: the process reads EOF (CloseIO may have done it first).
        if crate::lock(&shared).take().is_some() {
            let _ = to.shutdown(Shutdown::Write);
        }
    });
}

/// Reads what a stream sends and throws it away, so the process never blocks on a full
/// pipe nobody reads.
fn drain_stream(s: &mut UnixStream) {
    let mut buf = [0u8; 8192];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

fn copy(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 32 << 10];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Whether `path` names something hull can write to (a FIFO or a file, not a logging URI).
pub fn is_supported(name: &str) -> bool {
    name.is_empty() || (!name.starts_with(FD_SCHEME) && local_path(name).is_some())
}

/// Opens a stdio target: `fd://N` is a duplicate of this process's descriptor N (sharing
/// its file offset, so output lands where the caller's own would), anything else a path.
fn open_target(path: &Path, write: bool) -> std::io::Result<File> {
    if let Some(n) = path.to_str().and_then(|p| p.strip_prefix(FD_SCHEME)) {
        let fd: std::os::fd::RawFd = n.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{path:?}: not a descriptor"),
            )
        })?;
        // SAFETY: dup of a descriptor number has no memory effects; the result is checked
        // and owned by the File alone.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh descriptor nothing else owns.
        return Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(dup) });
    }
    if write {
        OpenOptions::new().append(true).create(true).open(path)
    } else {
        File::open(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_are_paths_and_other_uris_are_not_supported() {
        assert_eq!(
            local_path("/run/x/stdout"),
            Some(PathBuf::from("/run/x/stdout"))
        );
        assert_eq!(
            local_path("file:///var/log/c"),
            Some(PathBuf::from("/var/log/c"))
        );
        assert_eq!(local_path("binary:///usr/bin/logger"), None);
        assert!(
            !is_supported("fd://1"),
            "containerd may not name the shim's descriptors"
        );
        assert!(is_supported("/run/x/stdout"));
        assert_eq!(local_path(""), None);
        assert!(is_supported(""));
        assert!(!is_supported("binary:///x"));
    }

    #[test]
    fn a_terminal_carries_no_separate_stderr() {
        let p = StdioPaths {
            stdin: "/i".into(),
            stdout: "/o".into(),
            stderr: "/e".into(),
            terminal: true,
        };
        let s = p.agent_stdio();
        assert!(s.terminal && s.stdin && s.stdout && !s.stderr);
        let s = StdioPaths::default().agent_stdio();
        assert!(!s.stdin && !s.stdout && !s.stderr && !s.terminal);
    }

    #[test]
    fn output_copy_reaches_the_file_and_stdin_eof_half_closes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::write(&out, b"").unwrap();
        let (mut agent_side, shim_side) = UnixStream::pair().unwrap();
        let (tx, rx) = channel();
        let h = spawn_output(shim_side, out.clone(), "t".into(), tx);
        agent_side.write_all(b"hello\n").unwrap();
        drop(agent_side);
        rx.recv().unwrap();
        h.join().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"hello\n");

        let input = dir.path().join("in");
        std::fs::write(&input, b"typed").unwrap();
        let (mut agent_side, shim_side) = UnixStream::pair().unwrap();
        let shared = Arc::new(Mutex::new(shim_side.try_clone().ok()));
        spawn_input(input, shim_side, shared, "t".into());
        let mut got = Vec::new();
        agent_side.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"typed", "EOF arrives after the file's bytes");
    }
}
