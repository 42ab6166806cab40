//! The reaper: the one place that calls `waitpid` in the agent.
//!
//! The agent is PID 1 in the guest (and a child subreaper when served on the host), so
//! every orphan ends up as its child. One thread (the signal loop) calls [`Reaper::reap`] on
//! each SIGCHLD; everything that wants a process's exit status registers the PID with
//! [`Reaper::watch`] and blocks in [`Reaper::wait`] or gets a callback. Nothing else may
//! call `waitpid` (std's `Child::wait` included), or it would steal statuses from here;
//! only power-off reaps on its own, on the way out.
//!
//! A process can exit before whoever started it has registered it (a container init that
//! fails early): the exits of unwatched processes are kept for a while, bounded, so a late
//! `watch` still finds them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many exits of processes nobody watched are kept for a late `watch`.
const UNCLAIMED_KEPT: usize = 1024;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: libc::pid_t,
    /// The exit code, or 128 + the signal for a process killed by a signal (the shell's
    /// convention, which containerd and Docker report too).
    pub status: i32,
    /// The killing signal; 0 when the process exited.
    pub signal: i32,
    /// Unix time of the reap, in nanoseconds.
    pub at_nanos: i64,
}

impl Exit {
    pub fn from_wait_status(pid: libc::pid_t, raw: libc::c_int) -> Exit {
        let (status, signal) = if libc::WIFSIGNALED(raw) {
            let sig = libc::WTERMSIG(raw);
            (128 + sig, sig)
        } else {
            (libc::WEXITSTATUS(raw), 0)
        };
        let at_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        Exit {
            pid,
            status,
            signal,
            at_nanos,
        }
    }
}

type Callback = Box<dyn FnOnce(Exit) + Send>;

enum Watch {
    /// Someone will call `wait`; the exit is parked here until then.
    Pending,
    Exited(Exit),
    Callback(Callback),
}

#[derive(Default)]
struct State {
    watched: HashMap<libc::pid_t, Watch>,
    unclaimed: VecDeque<Exit>,
}

#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
    exited: Condvar,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, State> {
        hull_protocol::lock(&self.state)
    }

    /// Reaps every child that has exited. Called by the signal loop on SIGCHLD.
    pub fn reap(&self) {
        loop {
            let mut raw = 0;
            // SAFETY: waitpid with a valid out-pointer; WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            self.record(Exit::from_wait_status(pid, raw));
        }
    }

    fn record(&self, exit: Exit) {
        let mut state = self.lock();
        match state.watched.remove(&exit.pid) {
            Some(Watch::Pending) | Some(Watch::Exited(_)) => {
                state.watched.insert(exit.pid, Watch::Exited(exit));
                self.exited.notify_all();
            }
            Some(Watch::Callback(cb)) => {
                drop(state);
                cb(exit);
            }
            None => {
                if state.unclaimed.len() == UNCLAIMED_KEPT {
                    state.unclaimed.pop_front();
                }
                state.unclaimed.push_back(exit);
            }
        }
    }

    /// Registers interest in `pid`'s exit, to be collected with [`Reaper::wait`].
    pub fn watch(&self, pid: libc::pid_t) {
        let mut state = self.lock();
        let entry = match take_unclaimed(&mut state, pid) {
            Some(exit) => Watch::Exited(exit),
            None => Watch::Pending,
        };
        state.watched.insert(pid, entry);
    }

    /// Calls `callback` (on the reaping thread, or right here if it already exited) when
    /// `pid` exits.
    pub fn on_exit(&self, pid: libc::pid_t, callback: impl FnOnce(Exit) + Send + 'static) {
        let mut state = self.lock();
        if let Some(exit) = take_unclaimed(&mut state, pid) {
            drop(state);
            callback(exit);
            return;
        }
        state
            .watched
            .insert(pid, Watch::Callback(Box::new(callback)));
    }

    /// Blocks until the watched `pid` has exited, at most `timeout`; `None` on timeout or
    /// when `pid` is not watched.
    pub fn wait(&self, pid: libc::pid_t, timeout: Option<Duration>) -> Option<Exit> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let mut state = self.lock();
        loop {
            match state.watched.get(&pid) {
                Some(Watch::Exited(exit)) => {
                    let exit = *exit;
                    state.watched.remove(&pid);
                    return Some(exit);
                }
                Some(Watch::Pending) => {}
                Some(Watch::Callback(_)) | None => return None,
            }
            state = match deadline {
                None => self.exited.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.exited
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

/// Takes a kept exit of `pid`, unless `pid` is (again) a live or unreaped child: then any kept
/// exit belongs to an earlier process that had the same PID.
fn take_unclaimed(state: &mut State, pid: libc::pid_t) -> Option<Exit> {
    if is_child(pid) {
        state.unclaimed.retain(|e| e.pid != pid);
        return None;
    }
    let at = state.unclaimed.iter().rposition(|e| e.pid == pid)?;
    state.unclaimed.remove(at)
}

/// Whether `pid` is a child of this process that has not been reaped yet (peeks without
/// reaping).
fn is_child(pid: libc::pid_t) -> bool {
    // SAFETY: siginfo_t is plain data filled in by the kernel.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer; WNOWAIT leaves a zombie in place, WNOHANG never blocks.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn exit(pid: i32, status: i32) -> Exit {
        Exit {
            pid,
            status,
            signal: 0,
            at_nanos: 1,
        }
    }

    #[test]
    fn status_conventions() {
        // 3 << 8: exited with 3; 9: killed by SIGKILL.
        assert_eq!(Exit::from_wait_status(1, 3 << 8).status, 3);
        let killed = Exit::from_wait_status(1, libc::SIGKILL);
        assert_eq!((killed.status, killed.signal), (137, libc::SIGKILL));
    }

    #[test]
    fn exit_before_watch_is_kept() {
        let r = Reaper::default();
        r.record(exit(42, 7));
        r.watch(42);
        assert_eq!(r.wait(42, Some(Duration::ZERO)).map(|e| e.status), Some(7));
        // Collected once.
        assert_eq!(r.wait(42, Some(Duration::ZERO)), None);
    }

    #[test]
    fn wait_blocks_until_the_exit() {
        let r = Arc::new(Reaper::default());
        r.watch(5);
        let r2 = r.clone();
        let t = std::thread::spawn(move || r2.wait(5, None));
        std::thread::sleep(Duration::from_millis(20));
        r.record(exit(5, 0));
        assert_eq!(t.join().unwrap().map(|e| e.pid), Some(5));
        r.watch(6);
        assert_eq!(r.wait(6, Some(Duration::from_millis(10))), None);
    }

    #[test]
    fn callbacks_run_once_even_for_early_exits() {
        let r = Reaper::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        r.on_exit(9, move |e| tx.send(e.status).unwrap());
        r.record(exit(9, 1));
        r.record(exit(10, 2));
        r.on_exit(10, move |e| tx2.send(e.status).unwrap());
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn unclaimed_exits_are_bounded() {
        let r = Reaper::default();
        for pid in 0..(UNCLAIMED_KEPT as i32 + 10) {
            r.record(exit(pid, 0));
        }
        assert_eq!(r.lock().unclaimed.len(), UNCLAIMED_KEPT);
        r.watch(0);
        assert_eq!(r.wait(0, Some(Duration::ZERO)), None);
    }
}
