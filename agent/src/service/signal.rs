//! Signals to container processes, and the one case where the kernel would lose them: the
//! first process of a PID namespace (a container's init) only receives the signals it
//! has a handler for, and drops the rest, SIGKILL and SIGSTOP aside. A StopContainer that
//! arrives before the container's program has installed its SIGTERM handler would then
//! wait out its whole grace period for nothing. runc has the same rule, but on hardware the
//! handler is in place within milliseconds of Start; on a slow guest it can take seconds.
//!
//! So a signal that the kernel would drop is kept pending: a watcher sends it again as soon
//! as the process installs a handler for it, and gives up when the process exits or starts
//! ignoring the signal on purpose. A process that never handles the signal behaves as under
//! runc (Stop falls through to SIGKILL). Sending goes through a pidfd, so a PID reused after
//! the process is reaped can never receive the signal.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use super::container::{lock, Process};

/// How one process takes one signal, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Disposition {
    /// The process is PID 1 of its innermost PID namespace.
    ns_init: bool,
    caught: bool,
    ignored: bool,
}

impl Disposition {
    /// The kernel drops `sig` instead of delivering it.
    fn drops(self, sig: i32) -> bool {
        self.ns_init
            && !self.caught
            && !self.ignored
            && sig != libc::SIGKILL
            && sig != libc::SIGSTOP
    }
}

/// Parses the `NSpid`, `SigCgt` and `SigIgn` lines of a `/proc/PID/status` for `sig`.
fn disposition(status: &str, sig: i32) -> Option<Disposition> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let bit = |mask: &str| -> Option<bool> {
        let mask = u64::from_str_radix(mask, 16).ok()?;
        Some(mask & (1u64 << (sig - 1)) != 0)
    };
    Some(Disposition {
        ns_init: field("NSpid")?.split_whitespace().last()? == "1",
        caught: bit(field("SigCgt")?)?,
        ignored: bit(field("SigIgn")?)?,
    })
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo (NULL) and no flags; no memory is
    // written.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads how `pid` takes `sig` now, checking afterwards through `pidfd` that `pid` is still
/// the same process (so the status read was not a reused PID's).
fn current(pid: u32, pidfd: &OwnedFd, sig: i32) -> Option<Disposition> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    pidfd_send_signal(pidfd, 0).ok()?;
    disposition(&status, sig)
}

/// Sends `sig` to `p`. When `p` is a PID-namespace init with no handler for `sig` yet, the
/// signal is also kept pending and sent again once the handler is installed (see the module
/// comment); one watcher per process and signal, however often it is sent.
pub fn send(p: &Arc<Process>, sig: i32) -> io::Result<()> {
    let pidfd = pidfd_open(p.pid)?;
    let before = current(p.pid, &pidfd, sig);
    pidfd_send_signal(&pidfd, sig)?;
    if !before.is_some_and(|d| d.drops(sig)) {
        return Ok(());
    }
    let bit = 1u64 << (sig - 1);
    {
        let mut pending = lock(&p.pending_signals);
        if *pending & bit != 0 {
            return Ok(());
        }
        *pending |= bit;
    }
    let p = p.clone();
    std::thread::Builder::new()
        .name(format!("signal-{}-{sig}", p.pid))
        .spawn(move || {
            redeliver(&p, &pidfd, sig);
            *lock(&p.pending_signals) &= !bit;
        })
        .map(drop)
}

/// Waits until `p` handles `sig` and sends it, or until `p` exits or ignores `sig`.
fn redeliver(p: &Process, pidfd: &OwnedFd, sig: i32) {
    let mut step = Duration::from_millis(10);
    while p.wait_timeout(step).is_none() {
        match current(p.pid, pidfd, sig) {
            Some(d) if d.caught => {
                let _ = pidfd_send_signal(pidfd, sig);
                return;
            }
            Some(d) if d.drops(sig) => {}
            // It exited, or it ignores the signal on purpose.
            _ => return,
        }
        step = (step * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(nspid: &str, cgt: &str, ign: &str) -> String {
        format!(
            "Name:\tsh\nNSpid:\t{nspid}\nSigQ:\t0/63\nSigPnd:\t0000000000000000\n\
             SigBlk:\t0000000000000000\nSigIgn:\t{ign}\nSigCgt:\t{cgt}\n"
        )
    }

    #[test]
    fn an_init_without_a_handler_drops_all_but_kill_and_stop() {
        let s = status("4242\t1", "0000000000000000", "0000000000000000");
        let d = disposition(&s, libc::SIGTERM).unwrap();
        assert_eq!(
            d,
            Disposition {
                ns_init: true,
                caught: false,
                ignored: false
            }
        );
        assert!(d.drops(libc::SIGTERM));
        assert!(!d.drops(libc::SIGKILL) && !d.drops(libc::SIGSTOP));
    }

    #[test]
    fn a_handler_an_ignore_or_a_non_init_process_receives_the_signal_or_chose_not_to() {
        // SIGTERM is 15: bit 14, 0x4000.
        let caught = status("4242\t1", "0000000000004000", "0000000000000000");
        assert!(!disposition(&caught, libc::SIGTERM)
            .unwrap()
            .drops(libc::SIGTERM));
        assert!(disposition(&caught, libc::SIGINT)
            .unwrap()
            .drops(libc::SIGINT));
        let ignored = status("4242\t1", "0000000000000000", "0000000000004000");
        assert!(!disposition(&ignored, libc::SIGTERM)
            .unwrap()
            .drops(libc::SIGTERM));
        let not_init = status("4242\t7", "0000000000000000", "0000000000000000");
        assert!(!disposition(&not_init, libc::SIGTERM)
            .unwrap()
            .drops(libc::SIGTERM));
        // The agent's own namespace: NSpid has one level.
        let host = status("1", "0000000000000000", "0000000000000000");
        assert!(disposition(&host, libc::SIGTERM).unwrap().ns_init);
        // Signal 64 is the top bit.
        let rt = status("9\t1", "8000000000000000", "0000000000000000");
        assert!(disposition(&rt, 64).unwrap().caught);
    }

    #[test]
    fn a_status_without_the_lines_is_unknown() {
        assert_eq!(disposition("Name:\tsh\n", libc::SIGTERM), None);
        assert_eq!(disposition(&status("1", "zz", "0"), libc::SIGTERM), None);
    }
}
