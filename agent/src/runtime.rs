//! Container mechanics, run in a short-lived helper process.
//!
//! youki's `libcontainer` creates a container by cloning processes and running Rust code in
//! them before `exec`. That is only sound in a single-threaded process (a clone of a
//! multi-threaded one may inherit a lock another thread held, the allocator's included), and
//! the agent is multi-threaded (RPC workers, stream relays). So the agent does what
//! containerd does with runc: it runs itself as a helper (`hull-agent __runtime ...`),
//! single-threaded, which makes the libcontainer call and exits. The container's init is
//! cloned as a sibling of the helper, so it is the agent's own child and its exit reaches
//! the agent's reaper.
//!
//! The helper inherits the container's stdio as its own fds 0-2 and writes one result line
//! to fd 3: `ok <pid>\n` or `err <message>\n`. libcontainer says why something failed in
//! its tracing log rather than in the error it returns ("failed to prepare rootfs"), so the
//! helper logs warnings and errors to the file named by [`LOG_ENV`] and the agent adds the
//! first errors to the error it reports.

use std::fmt;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::notify_socket::NOTIFY_FILE;
use libcontainer::syscall::syscall::SyscallType;

use crate::reaper::Reaper;

/// The argv[1] that makes `hull-agent` the helper.
pub const HELPER_ARG: &str = "__runtime";
/// How long a helper may take before the agent gives up on it (and kills it).
const HELPER_TIMEOUT: Duration = Duration::from_secs(120);
/// The fd the helper writes its result line to.
const RESULT_FD: i32 = 3;
/// The environment variable naming the helper's log file.
const LOG_ENV: &str = "HULL_RUNTIME_LOG";
/// How many log lines a failure report carries.
const LOG_LINES: usize = 2;

/// What the agent asks of the helper.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create `id` from the bundle directory (config.json + rootfs); init waits for Start.
    Create {
        bundle: PathBuf,
        console_socket: Option<PathBuf>,
    },
    /// Start the created container's init.
    Start,
    /// Run the OCI process in `process_json` inside the running container.
    Exec {
        process_json: PathBuf,
        console_socket: Option<PathBuf>,
    },
    /// Kill what is left and remove the container's cgroup and state.
    Delete,
}

#[derive(Debug)]
pub enum RuntimeError {
    Spawn(std::io::Error),
    /// The helper reported a failure: libcontainer's message.
    Failed(String),
    /// The helper ended without a result line (killed, or crashed).
    NoResult(String),
    TimedOut,
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::Spawn(e) => write!(f, "cannot start the runtime helper: {e}"),
            RuntimeError::Failed(msg) => f.write_str(msg),
            RuntimeError::NoResult(how) => {
                write!(f, "the runtime helper ended without a result ({how})")
            }
            RuntimeError::TimedOut => write!(
                f,
                "the runtime helper did not finish within {} s and was killed",
                HELPER_TIMEOUT.as_secs()
            ),
        }
    }
}

impl std::error::Error for RuntimeError {}

/// Runs `op` on container `id` (state under `root`) in a helper with `stdio` as fds 0-2,
/// logging to `log`; the created or exec'd process's PID (0 for start and delete).
pub fn run(
    reaper: &Reaper,
    root: &Path,
    id: &str,
    op: &Op,
    stdio: [OwnedFd; 3],
    log: &Path,
) -> Result<u32, RuntimeError> {
    let (result_read, result_write) = crate::service::stdio::pipe().map_err(RuntimeError::Spawn)?;
    let result_write_fd = result_write.as_raw_fd();
    let [stdin, stdout, stderr] = stdio;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(helper_args(root, id, op))
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env(LOG_ENV, log);
    {
        use std::os::unix::process::CommandExt;
        let hook = move || {
            // SAFETY: dup2 onto fd 3 of the child; no memory is involved.
            if unsafe { libc::dup2(result_write_fd, RESULT_FD) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            crate::unblock_all_signals()
        };
        // SAFETY: the hook runs between fork and exec and only makes async-signal-safe
        // calls (dup2, sigprocmask) on fds and data that stay valid in the child.
        unsafe { cmd.pre_exec(hook) };
    }
    let child = cmd.spawn().map_err(RuntimeError::Spawn)?;
    drop(result_write);
    let pid = child.id() as libc::pid_t;
    // Never `child.wait()`: the reaper owns waitpid.
    drop(child);
    reaper.watch(pid);
    let exit = match reaper.wait(pid, Some(HELPER_TIMEOUT)) {
        Some(exit) => exit,
        None => {
            // SAFETY: kill has no memory effects; `pid` is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reaper.wait(pid, Some(Duration::from_secs(5)));
            return Err(RuntimeError::TimedOut);
        }
    };
    read_result(result_read, &exit, log)
}

/// The helper's command line for `op` on container `id`.
fn helper_args(root: &Path, id: &str, op: &Op) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![HELPER_ARG.into()];
    let (verb, path, console) = match op {
        Op::Create {
            bundle,
            console_socket,
        } => ("create", Some(bundle), console_socket.as_ref()),
        Op::Exec {
            process_json,
            console_socket,
        } => ("exec", Some(process_json), console_socket.as_ref()),
        Op::Start => ("start", None, None),
        Op::Delete => ("delete", None, None),
    };
    args.push(verb.into());
    args.push(root.as_os_str().to_owned());
    args.push(id.into());
    args.extend(path.map(|p| p.as_os_str().to_owned()));
    args.extend(console.map(|p| p.as_os_str().to_owned()));
    args
}

/// The helper's result line: `ok <pid>` or `err <message>`. It was written before the
/// helper exited; it is read without blocking, as the container's processes may still
/// hold the pipe's write end.
fn read_result(
    mut file: std::fs::File,
    exit: &crate::reaper::Exit,
    log: &Path,
) -> Result<u32, RuntimeError> {
    set_nonblocking(&file);
    let mut text = Vec::new();
    let _ = file.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().next().unwrap_or("");
    if let Some(pid) = line.strip_prefix("ok ") {
        return pid
            .trim()
            .parse()
            .map_err(|_| RuntimeError::NoResult(format!("unreadable result {line:?}")));
    }
    if let Some(msg) = line.strip_prefix("err ") {
        return Err(RuntimeError::Failed(with_log(msg, log)));
    }
    Err(RuntimeError::NoResult(if exit.signal != 0 {
        format!("killed by signal {}", exit.signal)
    } else {
        format!("exit status {}", exit.status)
    }))
}

fn set_nonblocking(fd: &std::fs::File) {
    // SAFETY: fcntl on an fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
}

/// Starts a created container from the agent itself, when no poststart hook has to run
/// (those need the helper, which waits for their processes). What libcontainer's start does
/// is tell init to go through its notify socket and record the state; its own version
/// `chdir`s to reach the socket, which a multi-threaded agent cannot allow (two starts at
/// once would cross), so the socket is reached through the state directory's fd. Saves a
/// process and an exec, which on an emulated guest kernel is seconds.
pub fn start(root: &Path, id: &str, log: &Path) -> Result<(), RuntimeError> {
    let failed = |what: String| RuntimeError::Failed(with_log(&what, log));
    let dir = root.join(id);
    let mut container = Container::load(dir.clone()).map_err(|e| failed(describe(&e)))?;
    if !container.can_start() {
        return Err(failed(format!(
            "the container is {:?}, not created",
            container.status()
        )));
    }
    let dirfd = std::fs::File::open(&dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
    let socket = format!("/proc/self/fd/{}/{NOTIFY_FILE}", dirfd.as_raw_fd());
    std::os::unix::net::UnixStream::connect(&socket)
        .and_then(|mut s| s.write_all(b"start container"))
        .map_err(|e| failed(format!("telling init to start: {e}")))?;
    container
        .set_status(ContainerStatus::Running)
        .save()
        .map_err(|e| failed(describe(&e)))
}

/// `msg` with the first errors of the helper's log, which name the cause.
fn with_log(msg: &str, log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("ERROR"))
        .collect();
    if lines.is_empty() {
        return msg.to_owned();
    }
    // The first errors are the innermost: the failing syscall and its errno.
    let tail = lines[..lines.len().min(LOG_LINES)].join(" | ");
    format!("{msg} (runtime log: {tail})")
}

/// The helper's `main`: `args` are what follows [`HELPER_ARG`].
pub fn helper_main(args: &[String]) -> i32 {
    if let Some(path) = std::env::var_os(LOG_ENV) {
        if let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::sync::Mutex::new(file))
                .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
                .without_time()
                .with_target(false)
                .try_init();
        }
    }
    // SAFETY: fd 3 was set up by the agent for this process alone.
    let mut result = unsafe { std::fs::File::from_raw_fd(RESULT_FD) };
    let outcome = helper(args);
    let line = match &outcome {
        Ok(pid) => format!("ok {pid}\n"),
        Err(msg) => format!("err {}\n", msg.replace('\n', " ")),
    };
    let _ = result.write_all(line.as_bytes());
    i32::from(outcome.is_err())
}

fn helper(args: &[String]) -> Result<i32, String> {
    let usage = || {
        format!(
            "usage: hull-agent {HELPER_ARG} create|start|exec|delete ROOT ID [...]; got {args:?}"
        )
    };
    let (op, root, id) = match args {
        [op, root, id, ..] => (op.as_str(), PathBuf::from(root), id.clone()),
        _ => return Err(usage()),
    };
    let rest = &args[3..];
    let builder = || {
        ContainerBuilder::new(id.clone(), SyscallType::Linux)
            .with_root_path(root.clone())
            .map_err(|e| format!("container state directory {}: {e}", root.display()))
    };
    match (op, rest) {
        ("create", [bundle, console @ ..]) => {
            let container = builder()?
                .with_console_socket(console.first().map(PathBuf::from))
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .as_sibling(true)
                .build()
                .map_err(|e| describe(&e))?;
            Ok(container.pid().map(|p| p.as_raw()).unwrap_or(0))
        }
        ("exec", [process, console @ ..]) => {
            let pid = builder()?
                .with_console_socket(console.first().map(PathBuf::from))
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .as_sibling(true)
                .build()
                .map_err(|e| describe(&e))?;
            Ok(pid.as_raw())
        }
        ("start", []) => {
            let mut container = Container::load(root.join(&id)).map_err(|e| describe(&e))?;
            container.start().map_err(|e| describe(&e))?;
            Ok(0)
        }
        ("delete", []) => {
            let mut container = Container::load(root.join(&id)).map_err(|e| describe(&e))?;
            container.delete(true).map_err(|e| describe(&e))?;
            Ok(0)
        }
        _ => Err(usage()),
    }
}

/// libcontainer's error with its causes, which carry the useful part ("failed to exec:
/// No such file or directory").
fn describe(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}
