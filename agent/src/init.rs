//! PID 1 duties: pseudo-filesystems, console, signals, reaping, boot options.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("block signals: {0}")]
    Signals(#[source] std::io::Error),
}

/// (source, target, fstype, flags, data). /dev first: it holds the console.
const MOUNTS: &[(&str, &str, &str, libc::c_ulong, &str)] = &[
    ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
    (
        "proc",
        "/proc",
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    ),
    (
        "sysfs",
        "/sys",
        "sysfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    ),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "nsdelegate",
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    ),
    (
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
];

pub fn mount_pseudo_filesystems() -> Result<(), InitError> {
    for &(source, target, fstype, flags, data) in MOUNTS {
        let c = |s: &str| CString::new(s).unwrap_or_default();
        let (src, tgt, fst, dat) = (c(source), c(target), c(fstype), c(data));
        // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                fst.as_ptr(),
                flags,
                dat.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EBUSY) {
                continue; // already mounted (kernel automount)
            }
            return Err(InitError::Mount {
                fstype,
                target,
                source,
            });
        }
    }
    Ok(())
}

/// Makes /dev/console stdin, stdout and stderr (the kernel may have found no console on a
/// read-only root before devtmpfs was mounted).
pub fn attach_console() {
    let Ok(console) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 on a valid open descriptor onto 0-2; no memory is involved.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}

/// Writes one line to the console in a single write, so lines never interleave.
pub fn console_line(line: &str) {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    let _ = std::io::stdout().lock().write_all(buf.as_bytes());
}

/// The kernel's list of online CPUs ("0", "0-1", ...), for the ready line.
pub fn online_cpus() -> String {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

pub fn read_cmdline() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

/// What PID 1 does once it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterReady {
    /// Keep running (the normal sandbox lifetime).
    #[default]
    Wait,
    /// Power off at once: a boot check and the boot benchmark.
    Poweroff,
}

/// `hull.*` options from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootOptions {
    pub after_ready: AfterReady,
    /// `hull.run=PROGRAM,ARG,...`: run this once ready, then power off with the VM. Used
    /// by the device self-test and for debugging a guest without the RPC service.
    pub run: Option<Vec<String>>,
}

impl BootOptions {
    /// Parses the options hull understands; unknown `hull.*` keys are reported on the
    /// console and otherwise ignored, so an old agent still boots under a newer VMM.
    pub fn from_cmdline(cmdline: &str) -> Self {
        let mut opts = BootOptions::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some(rest) = word.strip_prefix("hull.") else {
                continue;
            };
            match rest.split_once('=') {
                Some(("ready", "poweroff")) => opts.after_ready = AfterReady::Poweroff,
                Some(("ready", "wait")) => opts.after_ready = AfterReady::Wait,
                Some(("run", argv)) if !argv.is_empty() => {
                    opts.run = Some(argv.split(',').map(str::to_string).collect());
                }
                _ => console_line(&format!("hull-agent: ignoring unknown option {word}")),
            }
        }
        opts
    }
}

pub struct SignalSet(libc::sigset_t);

const HANDLED: [libc::c_int; 4] = [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGPWR];

/// Blocks the signals PID 1 handles so they queue for `wait_signal`.
pub fn block_signals() -> Result<SignalSet, InitError> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in HANDLED {
        // SAFETY: as above; `sig` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(InitError::Signals(std::io::Error::last_os_error()));
    }
    Ok(SignalSet(set))
}

pub enum Event {
    Child,
    Shutdown,
    Other,
}

pub fn wait_signal(set: &SignalSet) -> Event {
    // SAFETY: siginfo_t is plain data filled in by the kernel.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set.0` is an initialised sigset and `info` a valid out-pointer.
    let sig = unsafe { libc::sigwaitinfo(&set.0, &mut info) };
    match sig {
        libc::SIGCHLD => Event::Child,
        libc::SIGTERM | libc::SIGINT | libc::SIGPWR => Event::Shutdown,
        _ => Event::Other,
    }
}

/// Reaps every exited child without blocking.
pub fn reap_all() {
    while reap_one() > 0 {}
}

/// One non-blocking waitpid: the reaped PID, 0 if children remain but none exited, or a
/// negative value (ECHILD) when there are no children at all.
fn reap_one() -> libc::pid_t {
    let mut status = 0;
    // SAFETY: waitpid with a valid out-pointer; WNOHANG never blocks.
    unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) }
}

/// Reaps children for up to `limit`, returning early once none are left.
pub fn reap_for(limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match reap_one() {
            pid if pid < 0 => return,
            0 => std::thread::sleep(Duration::from_millis(10)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_waiting() {
        assert_eq!(
            BootOptions::from_cmdline("console=ttyS0 quiet").after_ready,
            AfterReady::Wait
        );
    }

    #[test]
    fn reads_ready_poweroff_among_other_options() {
        let o = BootOptions::from_cmdline("console=ttyS0 hull.ready=poweroff root=/dev/vda\n");
        assert_eq!(o.after_ready, AfterReady::Poweroff);
    }

    #[test]
    fn run_option_splits_program_and_arguments() {
        let o = BootOptions::from_cmdline("quiet hull.run=/bin/t,devices,1234 hull.ready=wait");
        assert_eq!(
            o.run,
            Some(vec!["/bin/t".into(), "devices".into(), "1234".into()])
        );
        assert_eq!(BootOptions::from_cmdline("hull.run=").run, None);
    }

    #[test]
    fn later_option_wins_and_unknown_hull_keys_are_ignored() {
        let o = BootOptions::from_cmdline("hull.ready=poweroff hull.bogus=1 hull.ready=wait");
        assert_eq!(o.after_ready, AfterReady::Wait);
    }
}
