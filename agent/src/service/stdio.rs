//! A process's stdio on the agent side: pipes or a pty, and the relays that join them to
//! the host's stream connections.
//!
//! Each stream is attached at most once. Until it is attached the pipe buffers (and then
//! blocks the process): output is never dropped for want of a reader, and a process that
//! exits before the host attaches still has its output delivered.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hull_protocol::rpc::agent::Stdio;
use hull_protocol::stream::Kind;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// A stream connection from the host (a vsock or unix socket).
pub struct Connection(File);

impl Connection {
    pub fn new(fd: OwnedFd) -> Self {
        Connection(File::from(fd))
    }

    pub(super) fn try_clone(&self) -> io::Result<Connection> {
        Ok(Connection(self.0.try_clone()?))
    }

    pub(super) fn shutdown_write(&self) {
        // SAFETY: shutdown on a socket fd we own; no memory is passed.
        unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_WR) };
    }

    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) {
        let t = timeout.unwrap_or_default();
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: SO_RCVTIMEO reads a timeval from a valid pointer of the given size.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
    }

    /// Tells the host its stream is attached; nothing of the stream may precede this.
    pub fn accept(&mut self) -> io::Result<()> {
        self.0
            .write_all(hull_protocol::stream::reply_line(&Ok(())).as_bytes())
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The agent's ends of one process's stdio.
#[derive(Default)]
pub struct ProcessIo {
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    pty: Option<File>,
    /// A second handle on the pty master, kept for resizing after `pty` is attached.
    pty_control: Option<File>,
    terminal: bool,
}

/// Stdio set up for a process about to be created.
pub struct Prepared {
    /// The process's fds 0, 1, 2 (given to the runtime helper, which passes them on).
    pub child: [OwnedFd; 3],
    pub io: ProcessIo,
    /// For a terminal: the socket the runtime sends the pty master to.
    pub console: Option<Console>,
}

/// The listening socket libcontainer sends a new pty's master to; its file goes with it.
pub struct Console {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The longest path a unix socket can be bound to (`sun_path` less its NUL).
const SOCKET_PATH_MAX: usize = 107;

/// Binds a console socket with a name unique in this process in `dir`.
fn console_in(dir: &Path) -> io::Result<Console> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
    let len = path.as_os_str().len();
    if len > SOCKET_PATH_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the console socket {} would be {len} bytes long, over the {SOCKET_PATH_MAX} \
                 a unix socket path may have: give the agent a shorter --state-dir",
                path.display()
            ),
        ));
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(Console { listener, path })
}

impl Console {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the master the runtime sent (after the helper has exited, so it is queued).
    pub fn receive(self, io: &mut ProcessIo) -> io::Result<()> {
        self.listener.set_nonblocking(true)?;
        let (conn, _) = self.listener.accept().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the runtime did not send the pty master: {e}"),
            )
        })?;
        conn.set_nonblocking(false)?;
        let mut buf = [0u8; 64];
        let (_, file) = conn
            .recv_with_fd(&mut buf)
            .map_err(|e| io::Error::other(format!("receiving the pty master: {e}")))?;
        let master = file.ok_or_else(|| io::Error::other("the console socket carried no fd"))?;
        io.pty_control = Some(master.try_clone()?);
        io.pty = Some(master);
        Ok(())
    }
}

/// A pipe, both ends close-on-exec: (read, write).
pub fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned this fd; nothing else owns it.
    let read = unsafe { File::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let write = unsafe { File::from_raw_fd(fds[1]) };
    Ok((read, write))
}

fn dev_null(write: bool) -> io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?
        .into())
}

/// /dev/null as fds 0-2: the stdio of a runtime helper whose process has none of its own.
pub fn null_stdio() -> io::Result<[OwnedFd; 3]> {
    Ok([dev_null(false)?, dev_null(true)?, dev_null(true)?])
}

/// Sets up pipes (or, for a terminal, a console socket in `console_dir`) as `stdio` asks;
/// streams not asked for are /dev/null.
pub fn prepare(stdio: &Stdio, console_dir: &Path) -> io::Result<Prepared> {
    let mut io = ProcessIo {
        terminal: stdio.terminal,
        ..ProcessIo::default()
    };
    if stdio.terminal {
        return Ok(Prepared {
            child: null_stdio()?,
            io,
            console: Some(console_in(console_dir)?),
        });
    }
    let stdin: OwnedFd = if stdio.stdin {
        let (r, w) = pipe()?;
        io.stdin = Some(w);
        r.into()
    } else {
        dev_null(false)?
    };
    let out = |wanted: bool, slot: &mut Option<File>| -> io::Result<OwnedFd> {
        if wanted {
            let (r, w) = pipe()?;
            *slot = Some(r);
            Ok(w.into())
        } else {
            dev_null(true)
        }
    };
    let stdout = out(stdio.stdout, &mut io.stdout)?;
    let stderr = out(stdio.stderr, &mut io.stderr)?;
    Ok(Prepared {
        child: [stdin, stdout, stderr],
        io,
        console: None,
    })
}

impl ProcessIo {
    /// Joins stream `kind` to `conn` and starts relaying; an error says why it cannot be.
    pub fn attach(
        &mut self,
        kind: Kind,
        mut conn: Connection,
        name: &str,
    ) -> Result<(), (String, Connection)> {
        let taken =
            |what: &str| format!("{what} of {name} is already attached or was not requested");
        match kind {
            Kind::Stdin => {
                let Some(pipe) = self.stdin.take() else {
                    return Err((taken("stdin"), conn));
                };
                if conn.accept().is_ok() {
                    spawn_relay(name, "stdin", move || relay_in(conn, pipe));
                }
            }
            Kind::Stdout | Kind::Stderr => {
                let slot = if kind == Kind::Stdout {
                    &mut self.stdout
                } else {
                    &mut self.stderr
                };
                let Some(pipe) = slot.take() else {
                    return Err((taken(kind.name()), conn));
                };
                if conn.accept().is_ok() {
                    spawn_relay(name, kind.name(), move || relay_out(pipe, conn));
                }
            }
            Kind::Pty => {
                if !self.terminal {
                    return Err((
                        format!("{name} has no terminal; attach stdin/stdout/stderr"),
                        conn,
                    ));
                }
                let Some(master) = self.pty.take() else {
                    return Err((taken("pty"), conn));
                };
                let clones = master.try_clone().and_then(|m| Ok((m, conn.try_clone()?)));
                let (master_in, conn_in) = match clones {
                    Ok(c) => c,
                    Err(e) => return Err((e.to_string(), conn)),
                };
                if conn.accept().is_err() {
                    return Ok(());
                }
                spawn_relay(name, "pty input", move || {
                    let mut master_in = master_in;
                    let mut conn_in = conn_in;
                    let _ = io::copy(&mut conn_in, &mut master_in);
                });
                spawn_relay(name, "pty output", move || relay_out(master, conn));
            }
            Kind::Events | Kind::Tcp => {
                return Err((format!("{} is not a process stream", kind.name()), conn))
            }
        }
        Ok(())
    }

    /// Sets the terminal size.
    pub fn resize(&self, rows: u16, columns: u16) -> Result<(), String> {
        let master = self
            .pty_control
            .as_ref()
            .ok_or("the process has no terminal")?;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; the fd is a pty master.
        let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc != 0 {
            return Err(format!("resizing the pty: {}", io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn spawn_relay(name: &str, what: &str, f: impl FnOnce() + Send + 'static) {
    let _ = std::thread::Builder::new()
        .name(format!("{what} {name}"))
        .spawn(f);
}

/// Process output → host, then the host sees end of stream.
fn relay_out(mut from: File, mut conn: Connection) {
    // A pty master reads EIO once the last slave fd is closed: that is its end of stream.
    let _ = io::copy(&mut from, &mut conn);
    conn.shutdown_write();
}

/// Host → process input; the host's shutdown of its side closes the process's stdin.
fn relay_in(mut conn: Connection, mut to: File) {
    let _ = io::copy(&mut conn, &mut to);
    drop(to);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn expect_ok(host: &mut UnixStream) {
        assert_eq!(hull_protocol::stream::read_reply(host).unwrap(), Ok(()));
    }

    fn conn_pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Connection::new(a.into()), b)
    }

    #[test]
    fn pipes_relay_both_ways_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let stdio = Stdio {
            stdin: true,
            stdout: true,
            stderr: false,
            ..Stdio::default()
        };
        let Prepared { child, mut io, .. } = prepare(&stdio, dir.path()).unwrap();
        let [stdin, stdout, _stderr] = child;
        let (c_out, mut host_out) = conn_pair();
        assert!(io.attach(Kind::Stdout, c_out, "p").is_ok());
        let (c_in, mut host_in) = conn_pair();
        assert!(io.attach(Kind::Stdin, c_in, "p").is_ok());
        expect_ok(&mut host_out);
        expect_ok(&mut host_in);
        // The "process": copies its stdin to its stdout.
        let mut p_in = File::from(stdin);
        let mut p_out = File::from(stdout);
        host_in.write_all(b"hello").unwrap();
        host_in.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        p_in.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
        p_out.write_all(b"world").unwrap();
        drop(p_out);
        let mut out = Vec::new();
        host_out.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"world");
        // Each stream once; stderr was not asked for.
        let err = |io: &mut ProcessIo, kind| {
            let (c, _h) = conn_pair();
            io.attach(kind, c, "p")
                .err()
                .map(|(reason, _)| reason)
                .unwrap_or_default()
        };
        assert!(err(&mut io, Kind::Stdout).contains("already attached"));
        assert!(err(&mut io, Kind::Stderr).contains("not requested"));
        assert!(err(&mut io, Kind::Pty).contains("no terminal"));
        assert!(io.resize(10, 10).is_err());
    }

    #[test]
    fn output_written_before_attach_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let stdio = Stdio {
            stdout: true,
            ..Stdio::default()
        };
        let Prepared { child, mut io, .. } = prepare(&stdio, dir.path()).unwrap();
        let [_, stdout, _] = child;
        let mut p_out = File::from(stdout);
        p_out.write_all(b"early").unwrap();
        drop(p_out);
        let (c, mut host) = conn_pair();
        assert!(io.attach(Kind::Stdout, c, "p").is_ok());
        expect_ok(&mut host);
        let mut out = Vec::new();
        host.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"early");
    }

    #[test]
    fn console_sockets_have_short_unique_names_and_go_with_their_console() {
        let dir = tempfile::tempdir().unwrap();
        let tty = Stdio {
            terminal: true,
            ..Stdio::default()
        };
        let a = prepare(&tty, dir.path()).unwrap().console.unwrap();
        let b = prepare(&tty, dir.path()).unwrap().console.unwrap();
        assert_ne!(a.path(), b.path());
        for c in [&a, &b] {
            assert_eq!(c.path().parent(), Some(dir.path()));
            assert!(c.path().exists());
        }
        let (a_path, b_path) = (a.path().to_owned(), b.path().to_owned());
        drop(a);
        assert!(!a_path.exists() && b_path.exists());
        drop(b);
        assert!(!b_path.exists());
    }

    #[test]
    fn a_console_directory_too_long_for_a_socket_is_refused_by_name() {
        let long = Path::new("/tmp").join("d".repeat(110));
        let tty = Stdio {
            terminal: true,
            ..Stdio::default()
        };
        let err = prepare(&tty, &long).err().unwrap().to_string();
        assert!(
            err.contains("over the 107") && err.contains("--state-dir"),
            "{err}"
        );
    }
}
