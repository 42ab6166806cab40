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
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
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

/// Where one of a process's stdio streams is on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Target {
    /// Not wired: the process's stream is /dev/null (its output is dropped).
    #[default]
    Null,
    /// A descriptor of this process, shared (the CLI's own 0, 1 and 2).
    Inherit(RawFd),
    /// A named pipe whose other end the caller holds (containerd's FIFOs).
    Fifo(PathBuf),
    /// A file output is appended to (containerd's `file://` log paths).
    File(PathBuf),
}

/// A stdio name containerd may send that hull cannot honour.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{stream} {name:?}: hull writes to FIFOs and file:// paths only (no logging binaries)")]
pub struct UnsupportedTarget {
    pub stream: &'static str,
    pub name: String,
}

impl Target {
    /// containerd's name for a stream: empty (not wired), `file:///path`, or a FIFO's
    /// path. Logging URIs (`binary://`) and this process's descriptors are refused.
    pub fn from_containerd(stream: &'static str, name: &str) -> Result<Self, UnsupportedTarget> {
        if name.is_empty() {
            return Ok(Target::Null);
        }
        match name.strip_prefix("file://") {
            Some(p) => Ok(Target::File(PathBuf::from(p))),
            None if name.contains("://") => Err(UnsupportedTarget {
                stream,
                name: name.to_string(),
            }),
            None => Ok(Target::Fifo(PathBuf::from(name))),
        }
    }

    /// The name containerd gave (for its State call).
    pub fn containerd_name(&self) -> String {
        match self {
            Target::Null => String::new(),
            Target::Inherit(fd) => format!("fd://{fd}"),
            Target::Fifo(p) => p.to_string_lossy().into_owned(),
            Target::File(p) => format!("file://{}", p.display()),
        }
    }

    pub fn is_wired(&self) -> bool {
        *self != Target::Null
    }

    /// Opens the target for the relay: an inherited descriptor is duplicated (sharing its
    /// file offset, so output lands where the caller's own would); a FIFO's open blocks
    /// until its reader is there (containerd opens it before Create); a file is appended
    /// to, and made if missing.
    fn open(&self, write: bool) -> std::io::Result<File> {
        match self {
            Target::Null => File::open("/dev/null"),
            Target::Inherit(fd) => {
                // SAFETY: dup of a descriptor number has no memory effects; the result is
                // checked and owned by the File alone.
                let dup = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 0) };
                if dup < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: `dup` is a fresh descriptor nothing else owns.
                Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(dup) })
            }
            Target::Fifo(p) | Target::File(p) if write => {
                OpenOptions::new().append(true).create(true).open(p)
            }
            Target::Fifo(p) | Target::File(p) => File::open(p),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Null => write!(f, "nothing"),
            Target::Inherit(fd) => write!(f, "descriptor {fd}"),
            Target::Fifo(p) | Target::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A process's stdio on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: Target,
    pub stdout: Target,
    pub stderr: Target,
    /// One pty carries all three (the OCI process's `terminal`); stderr is not used.
    pub terminal: bool,
}

impl Stdio {
    /// containerd's names for a process's stdio (see [`Target::from_containerd`]).
    pub fn from_containerd(
        stdin: &str,
        stdout: &str,
        stderr: &str,
        terminal: bool,
    ) -> Result<Self, UnsupportedTarget> {
        Ok(Stdio {
            stdin: Target::from_containerd("stdin", stdin)?,
            stdout: Target::from_containerd("stdout", stdout)?,
            stderr: Target::from_containerd("stderr", stderr)?,
            terminal,
        })
    }

    /// This process's own stdio, as `hull run` and `hull exec` hand it over: stdin only
    /// when `interactive`; with a terminal, stdout carries stderr too.
    pub fn inherited(interactive: bool, terminal: bool) -> Self {
        Stdio {
            stdin: if interactive {
                Target::Inherit(0)
            } else {
                Target::Null
            },
            stdout: Target::Inherit(1),
            stderr: if terminal {
                Target::Null
            } else {
                Target::Inherit(2)
            },
            terminal,
        }
    }

    /// Which streams the agent is to open.
    pub fn wire(&self) -> hull_protocol::rpc::agent::Stdio {
        let mut s = hull_protocol::rpc::agent::Stdio::new();
        s.terminal = self.terminal;
        s.stdin = self.stdin.is_wired();
        s.stdout = self.stdout.is_wired();
        s.stderr = self.stderr.is_wired() && !self.terminal;
        s
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
        exec: Option<&str>,
        stdio: &Stdio,
    ) -> Result<ProcessIo, IoError> {
        let exec = exec.unwrap_or_default();
        let open = |kind: Kind| {
            endpoint
                .open_stream(&Header::new(kind, container, exec))
                .map_err(|source| IoError::Stream {
                    kind: kind.name(),
                    source,
                })
        };
        let label = if exec.is_empty() {
            container.to_string()
        } else {
            format!("{container}/{exec}")
        };
        let mut io = ProcessIo {
            outputs: Vec::new(),
            finished: channel(),
            streams: Vec::new(),
            stdin: Arc::new(Mutex::new(None)),
        };
        if stdio.terminal {
            // One pty stream both ways: a duplicate of it is the output side.
            let pty = open(Kind::Pty)?;
            if stdio.stdout.is_wired() {
                let reader = pty.try_clone().map_err(|e| IoError::Stream {
                    kind: "pty",
                    source: ConnectError::Io {
                        what: "duplicating the pty stream".into(),
                        source: e,
                    },
                })?;
                io.add_output(reader, &stdio.stdout, format!("{label} pty"));
            }
            io.add_input(&stdio.stdin, pty, &label);
            return Ok(io);
        }
        if stdio.stdin.is_wired() {
            io.add_input(&stdio.stdin, open(Kind::Stdin)?, &label);
        }
        for (kind, target) in [(Kind::Stdout, &stdio.stdout), (Kind::Stderr, &stdio.stderr)] {
            if target.is_wired() {
                io.add_output(open(kind)?, target, format!("{label} {}", kind.name()));
            }
        }
        Ok(io)
    }

    /// Copies what the agent sends on `from` to `to` (ended by [`ProcessIo::close`]).
    fn add_output(&mut self, from: UnixStream, to: &Target, label: String) {
        self.streams.extend(from.try_clone().ok());
        let done = self.finished.0.clone();
        self.outputs
            .push(spawn_output(from, to.clone(), label, done));
    }

    /// Copies `from` to the agent's stream `to` when stdin is wired; keeps the stream for
    /// [`ProcessIo::close`] either way.
    fn add_input(&mut self, from: &Target, to: UnixStream, label: &str) {
        self.streams.extend(to.try_clone().ok());
        if from.is_wired() {
            *crate::lock(&self.stdin) = to.try_clone().ok();
            spawn_input(from.clone(), to, self.stdin.clone(), label.to_string());
        }
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

    /// After the process exited, waits for the output copies to finish (the agent is
    /// closing its streams), at most [`exit_drain`]: a background child that keeps the pipe
    /// open does not hold the exit back longer than that.
    pub fn drain(&mut self) {
        let within = exit_drain();
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

/// How long an exited process's output may still take to arrive. The guest closes its end
/// of each stream right after the exit; on a host whose KVM emulates guest kernel code that
/// takes seconds when the host is busy (a 5 s wait cut an exec's output short with two
/// guests running on two cores), so there the wait is a minute; on hardware KVM, where it
/// only matters for a background child holding the pipe, 5 s.
pub fn exit_drain() -> Duration {
    static DRAIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *DRAIN.get_or_init(|| {
        let mode = hull_vmm_api::host::detect_by_module(std::path::Path::new("/sys/module"));
        if mode.is_some_and(|m| m.is_emulated()) {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(5)
        }
    })
}

fn spawn_output(
    mut from: UnixStream,
    to: Target,
    label: String,
    done: Sender<()>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        relay_output(&mut from, &to, &label);
        let _ = done.send(());
    })
}

fn relay_output(from: &mut UnixStream, to: &Target, label: &str) {
    let mut out = match to.open(true) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("{label}: open {to}: {e}; output dropped");
            drain_stream(from);
            return;
        }
    };
    if let Err(e) = copy(from, &mut out) {
        log::debug!("{label}: copy ended: {e}");
    }
}

fn spawn_input(
    from: Target,
    mut to: UnixStream,
    shared: Arc<Mutex<Option<UnixStream>>>,
    label: String,
) {
    std::thread::spawn(move || {
        let mut input = match from.open(false) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("{label} stdin: open {from}: {e}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_names_fifos_and_files_and_nothing_else() {
        let t = |name| Target::from_containerd("stdout", name);
        assert_eq!(t("/run/x/stdout"), Ok(Target::Fifo("/run/x/stdout".into())));
        assert_eq!(
            t("file:///var/log/c"),
            Ok(Target::File("/var/log/c".into()))
        );
        assert_eq!(t(""), Ok(Target::Null));
        let e = t("binary:///usr/bin/logger").unwrap_err();
        assert!(e.to_string().contains("no logging binaries"), "{e}");
        assert!(
            t("fd://1").is_err(),
            "containerd may not name the shim's descriptors"
        );
        for name in ["/run/x/stdout", "file:///var/log/c", ""] {
            assert_eq!(t(name).unwrap().containerd_name(), name);
        }
    }

    #[test]
    fn a_terminal_carries_no_separate_stderr() {
        let s = Stdio::from_containerd("/i", "/o", "/e", true)
            .unwrap()
            .wire();
        assert!(s.terminal && s.stdin && s.stdout && !s.stderr);
        let s = Stdio::default().wire();
        assert!(!s.stdin && !s.stdout && !s.stderr && !s.terminal);
        let cli = Stdio::inherited(false, false);
        assert_eq!(cli.stdin, Target::Null);
        assert_eq!(cli.stderr, Target::Inherit(2));
        assert_eq!(Stdio::inherited(true, true).stderr, Target::Null);
    }

    #[test]
    fn output_copy_reaches_the_file_and_stdin_eof_half_closes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::write(&out, b"").unwrap();
        let (mut agent_side, shim_side) = UnixStream::pair().unwrap();
        let (tx, rx) = channel();
        let h = spawn_output(shim_side, Target::File(out.clone()), "t".into(), tx);
        agent_side.write_all(b"hello\n").unwrap();
        drop(agent_side);
        rx.recv().unwrap();
        h.join().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"hello\n");

        let input = dir.path().join("in");
        std::fs::write(&input, b"typed").unwrap();
        let (mut agent_side, shim_side) = UnixStream::pair().unwrap();
        let shared = Arc::new(Mutex::new(shim_side.try_clone().ok()));
        spawn_input(Target::Fifo(input), shim_side, shared, "t".into());
        let mut got = Vec::new();
        agent_side.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"typed", "EOF arrives after the file's bytes");
    }
}
