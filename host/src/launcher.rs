//! How a `hull-vmm` process comes to exist: the privileged half of its jail.
//!
//! Every VMM is started by one long-lived thread of the host process (the shim, the CLI,
//! a detached run's supervisor) with `clone3`:
//!
//! - in new PID, mount, IPC and UTS namespaces (when jailed), so it sees no other
//!   process and its mounts never reach the host; the VMM builds the rest of its jail
//!   itself (`hull-vmm`'s `jail.rs`) once it holds its host resources;
//! - with `PR_SET_PDEATHSIG` = SIGKILL. The kernel sends it when the *thread* that
//!   forked dies, which is why one thread that lives as long as the process launches
//!   every VMM: a VMM started from a short-lived request thread would die with it;
//! - holding the read end of the process's lifeline pipe, whose write end only this
//!   process has: the VMM re-arms the death signal after its uid change (which clears
//!   it) and then checks the pipe, so a host that died in between is not missed;
//! - in its own session, with exactly the descriptors it is given (stdio, taps, the
//!   hand-over socket, its uid lease) and everything else closed on exec.
//!
//! A jailed VMM runs as the jail's uid and gid (`[jail]` in the host config), the same
//! for every VMM: what a guest writes into a shared directory is owned by it on the host,
//! and a pod that reuses a volume (a hostPath, a persistent volume) after its VM is gone
//! must find its files still its own. What separates one VMM from another is its PID
//! namespace (it cannot name another process), its jail (it cannot name another VM's
//! files), and being non-dumpable (no ptrace between them).

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{what}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} holds a NUL byte")]
    Nul(String),
    #[error("the launcher thread is gone")]
    ThreadGone,
    #[error("exec {program}")]
    Exec {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn os(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Os { what, source }
}

/// What jailed VMMs run as and may hold (`[jail]` in the host config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPolicy {
    pub uid: u32,
    pub gid: u32,
    pub max_open_files: u64,
    /// RLIMIT_NPROC: counted per uid, so it bounds the threads of all VMMs together.
    pub max_threads: u64,
}

/// The empty directory every jailed VMM mounts its root on, each in its own mount
/// namespace. One directory that hull never removes: a directory another namespace
/// still has a mount on cannot be removed (EBUSY), and a VMM's namespace outlives it by a
/// moment, so a per-VM directory could not be cleaned up right after the VMM ends.
pub const JAIL_MOUNTPOINT: &str = "/run/hull/jail";

/// The ids jailed VMMs run as by default: far above the ranges distributions give people
/// and services, and away from systemd's container ranges.
pub const DEFAULT_UID: u32 = 2_000_000_000;

impl Default for JailPolicy {
    fn default() -> Self {
        JailPolicy {
            uid: DEFAULT_UID,
            gid: DEFAULT_UID,
            max_open_files: hull_vmm_api::config::default_max_open_files(),
            max_threads: hull_vmm_api::config::default_max_threads(),
        }
    }
}

/// What to start.
pub struct Launch<'a> {
    pub program: &'a Path,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// Where the VMM's stderr (its log) goes; stdin and stdout are /dev/null.
    pub stderr: BorrowedFd<'a>,
    /// Descriptors the VMM inherits under the same numbers.
    pub inherit: Vec<BorrowedFd<'a>>,
    /// New PID, mount, IPC and UTS namespaces.
    pub namespaces: bool,
}

/// A started VMM: its pid in the host's namespace and a pidfd that names it for good.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    pidfd: OwnedFd,
    reaped: Option<ExitStatus>,
}

impl Child {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// The exit status once it has exited (reaped here), `None` while it runs.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.reaped.is_some() {
            return Ok(self.reaped);
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing into `status`.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        match r {
            0 => Ok(None),
            r if r == self.pid => {
                self.reaped = Some(ExitStatus::from_raw(status));
                Ok(self.reaped)
            }
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// Waits for the exit and reaps.
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(s) = self.reaped {
            return Ok(s);
        }
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child, writing into `status`.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                let s = ExitStatus::from_raw(status);
                self.reaped = Some(s);
                return Ok(s);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// SIGKILL, through the pidfd: never another process that reused the pid.
    pub fn kill(&mut self) -> std::io::Result<()> {
        if self.reaped.is_some() {
            return Ok(());
        }
        // SAFETY: pidfd_send_signal with a pidfd we own and no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // ESRCH: it has exited and waits to be reaped.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The read end of the process's lifeline pipe, which every VMM inherits and names in
/// its jail configuration; the write end is never closed.
pub fn lifeline() -> Result<RawFd, LaunchError> {
    static LIFELINE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
    if let Some((read, _)) = LIFELINE.get() {
        return Ok(read.as_raw_fd());
    }
    let (read, write) = pipe()?;
    Ok(LIFELINE.get_or_init(|| (read, write)).0.as_raw_fd())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(os("make a pipe")(std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 just made this descriptor for us.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let write = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((read, write))
}

/// Everything the child needs, made before the clone: the child allocates nothing.
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    null: OwnedFd,
    stderr: RawFd,
    inherit: Vec<RawFd>,
    flags: u64,
}

fn cstring(s: &OsStr, what: &str) -> Result<CString, LaunchError> {
    CString::new(s.as_bytes()).map_err(|_| LaunchError::Nul(what.to_string()))
}

/// Starts `l` from the launcher thread.
pub fn launch(l: Launch<'_>) -> Result<Child, LaunchError> {
    let mut argv = vec![cstring(l.program.as_os_str(), "the program path")?];
    for a in &l.args {
        argv.push(cstring(a, "an argument")?);
    }
    let mut envp = Vec::new();
    for (k, v) in &l.env {
        let mut kv = k.clone();
        kv.push("=");
        kv.push(v);
        envp.push(cstring(&kv, "an environment variable")?);
    }
    let null = std::fs::File::open("/dev/null").map_err(os("open /dev/null"))?;
    let mut inherit: Vec<RawFd> = l.inherit.iter().map(|f| f.as_raw_fd()).collect();
    inherit.push(lifeline()?);
    let flags = libc::CLONE_PIDFD as u64
        | CLONE_CLEAR_SIGHAND
        | if l.namespaces {
            (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS)
                as u64
        } else {
            0
        };
    let prepared = Prepared {
        program: cstring(l.program.as_os_str(), "the program path")?,
        argv,
        envp,
        null: null.into(),
        stderr: l.stderr.as_raw_fd(),
        inherit,
        flags,
    };
    let program = l.program.to_path_buf();
    // The descriptors named in `prepared` stay open: this thread waits for the result.
    on_launcher_thread(move || spawn(&prepared, &program))?
}

/// Not in every libc release yet: `CLONE_CLEAR_SIGHAND` (Linux 5.5).
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

fn spawn(p: &Prepared, program: &Path) -> Result<Child, LaunchError> {
    let argv: Vec<*const libc::c_char> = p
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = p
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let (err_read, err_write) = pipe()?;
    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: p.flags,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with no stack behaves as fork; the child runs only `exec_child`,
    // which makes raw system calls on memory prepared above and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: we are the child of a clone without CLONE_VM; see `exec_child`.
        unsafe { exec_child(p, &argv, &envp, err_write.as_raw_fd()) }
    }
    if pid < 0 {
        return Err(os("clone3 a VMM process")(std::io::Error::last_os_error()));
    }
    drop(err_write);
    // SAFETY: clone3 stored a pidfd it made for us.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut child = Child {
        pid: pid as i32,
        pidfd,
        reaped: None,
    };
    // The pipe closes on a successful exec; an errno arrives if it failed.
    let mut errno = [0u8; 4];
    let mut f = std::fs::File::from(err_read);
    match std::io::Read::read(&mut f, &mut errno) {
        Ok(4) => {
            let _ = child.wait();
            Err(LaunchError::Exec {
                program: program.to_path_buf(),
                source: std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno)),
            })
        }
        _ => Ok(child),
    }
}

/// The child's side: death signal, signal mask, session, stdio, inherited descriptors,
/// exec. Only system calls: this process is a copy of a multi-threaded one.
///
/// # Safety
/// Call only in the child of `clone3` without `CLONE_VM`, with `argv` and `envp`
/// null-terminated arrays of pointers into `p`.
unsafe fn exec_child(
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    err: RawFd,
) -> ! {
    // Each call below is a plain system call on descriptors and memory this copy of the
    // process owns; none allocates or takes a lock.
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let none = [0u64; 1];
    // SAFETY: an empty 8-byte kernel signal set, read by rt_sigprocmask.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            none.as_ptr(),
            std::ptr::null::<u64>(),
            8usize,
        )
    };
    // SAFETY: setsid has no preconditions.
    unsafe { libc::setsid() };
    let null = p.null.as_raw_fd();
    for (from, to) in [(null, 0), (null, 1), (p.stderr, 2)] {
        // SAFETY: dup2 of descriptors this process holds.
        if unsafe { libc::dup2(from, to) } < 0 {
            // SAFETY: as `fail` requires.
            unsafe { fail(err) };
        }
    }
    for &fd in &p.inherit {
        // SAFETY: F_SETFD on a descriptor this process holds.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            // SAFETY: as `fail` requires.
            unsafe { fail(err) };
        }
    }
    // SAFETY: `argv` and `envp` are null-terminated arrays of NUL-terminated strings in
    // `p`, which outlives the call.
    unsafe { libc::execve(p.program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    // SAFETY: as `fail` requires.
    unsafe { fail(err) }
}

/// Reports errno to the parent and exits.
///
/// # Safety
/// As [`exec_child`].
unsafe fn fail(err: RawFd) -> ! {
    let e = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
        .to_ne_bytes();
    // SAFETY: a write of four bytes we own to the error pipe.
    unsafe { libc::write(err, e.as_ptr().cast(), 4) };
    // SAFETY: _exit ends this process without running anything of the parent's.
    unsafe { libc::_exit(127) }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `f` on the process's launcher thread (started on first use, never ended) and
/// returns its result.
fn on_launcher_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LaunchError> {
    static JOBS: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("vmm-launcher".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("start the VMM launcher thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    crate::lock(jobs)
        .send(job)
        .map_err(|_| LaunchError::ThreadGone)?;
    rx.recv().map_err(|_| LaunchError::ThreadGone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn sh<'a>(script: &str, stderr: &'a std::fs::File) -> Launch<'a> {
        Launch {
            program: Path::new("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: vec![("HULL_TEST".into(), "yes".into())],
            stderr: stderr.as_fd(),
            inherit: Vec::new(),
            namespaces: false,
        }
    }

    #[test]
    fn a_launched_program_gets_its_environment_stdio_and_exit_status() {
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut child = launch(sh("echo \"$HULL_TEST\" >&2; exit 7", out.as_file())).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(7));
        assert_eq!(std::fs::read_to_string(out.path()).unwrap(), "yes\n");
    }

    #[test]
    fn a_missing_program_is_an_exec_error() {
        let out = tempfile::tempfile().unwrap();
        let mut l = sh("true", &out);
        l.program = Path::new("/nonexistent/hull-vmm");
        let e = launch(l).unwrap_err();
        assert!(matches!(e, LaunchError::Exec { .. }), "{e}");
    }

    #[test]
    fn kill_ends_the_child_and_wait_reports_the_signal() {
        let out = tempfile::tempfile().unwrap();
        let mut child = launch(sh("sleep 30", &out)).unwrap();
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn only_named_descriptors_are_inherited() {
        let out = tempfile::NamedTempFile::new().unwrap();
        let kept = tempfile::tempfile().unwrap();
        let hidden = tempfile::tempfile().unwrap();
        let script = format!(
            "test -e /proc/self/fd/{} && echo kept >&2; test -e /proc/self/fd/{} && echo leaked >&2; true",
            kept.as_raw_fd(),
            hidden.as_raw_fd()
        );
        let mut l = sh(&script, out.as_file());
        l.inherit.push(kept.as_fd());
        launch(l).unwrap().wait().unwrap();
        assert_eq!(std::fs::read_to_string(out.path()).unwrap(), "kept\n");
    }

    #[test]
    fn a_child_in_namespaces_is_pid_1_of_its_own() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: new namespaces need root");
            return;
        }
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut l = sh("echo $$ >&2", out.as_file());
        l.namespaces = true;
        launch(l).unwrap().wait().unwrap();
        assert_eq!(std::fs::read_to_string(out.path()).unwrap(), "1\n");
    }
}
