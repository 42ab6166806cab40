//! One process of a task as containerd sees it (a container's init or an exec): its state,
//! its stdio relays, and the wait for its exit.
//!
//! An exit is reported exactly once, and never before the process's start was: the agent's
//! exit event can overtake the Start reply (a fast `true`), so an exit that arrives first
//! waits in `pending` until Start has queued TaskStart and attached the output relays. The
//! first report wins; later ones (a duplicate frame, the VM's death) change nothing.

use std::sync::{Condvar, Mutex};

use containerd_shim::protos::types::task::Status;

use hull_host::agent::ProcessId;
use hull_host::lock;
use hull_host::stdio::{ProcessIo, Stdio};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal that killed it.
    pub status: u32,
    pub at_nanos: i64,
}

pub struct ProcessState {
    pub status: Status,
    pub pid: u32,
    /// The recorded exit: set once, after the output drained.
    pub exit: Option<Exit>,
    pub io: Option<ProcessIo>,
    /// Start is under way: an exit, even a forced one, waits for it.
    starting: bool,
    /// Start has been reported (or failed): an exit may be reported now.
    started: bool,
    /// The first exit heard of, not recorded yet (waiting for Start, or draining).
    pending: Option<Exit>,
    /// A report is under way: no second one may start.
    reporting: bool,
}

pub struct Process {
    pub container: String,
    /// `None` for the container's init process.
    pub exec: Option<String>,
    pub stdio: Stdio,
    /// An exec's OCI process (JSON), kept until Start.
    pub exec_spec: Option<Vec<u8>>,
    state: Mutex<ProcessState>,
    exited: Condvar,
}

impl Process {
    pub fn new(
        container: &str,
        exec: Option<&str>,
        stdio: Stdio,
        exec_spec: Option<Vec<u8>>,
    ) -> Self {
        Process {
            container: container.to_string(),
            exec: exec.map(String::from),
            stdio,
            exec_spec,
            state: Mutex::new(ProcessState {
                status: Status::CREATED,
                pid: 0,
                exit: None,
                io: None,
                starting: false,
                started: false,
                pending: None,
                reporting: false,
            }),
            exited: Condvar::new(),
        }
    }

    /// Its name in the guest.
    pub fn id(&self) -> ProcessId<'_> {
        ProcessId {
            container: &self.container,
            exec: self.exec.as_deref(),
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, ProcessState> {
        lock(&self.state)
    }

    /// The agent (or the VM's death, with `force`) says the process exited. Returns whether
    /// the caller must now [`Process::finish`] the report; `false` when one is under way or
    /// done, or when the exit waits for Start (`force` does not wait: the VM is gone, Start
    /// will never come).
    pub fn offer_exit(&self, exit: Exit, force: bool) -> bool {
        let mut s = lock(&self.state);
        if s.exit.is_some() || s.reporting {
            return false;
        }
        if s.pending.is_none() {
            s.pending = Some(exit);
        }
        if !s.started && (!force || s.starting) {
            return false;
        }
        s.reporting = true;
        true
    }

    /// Claims the start of a created process; `false` if it was started (or is being
    /// started) already. An exit waits for [`Process::mark_started`] from here on.
    pub fn begin_start(&self) -> bool {
        let mut s = lock(&self.state);
        if s.status != Status::CREATED || s.starting || s.started {
            return false;
        }
        s.starting = true;
        true
    }

    /// Records `exit` for a process that is being deleted without ever having reported one
    /// (never started, or its exit still waits): Wait returns; no event goes out (the
    /// Delete reply carries the status).
    pub fn settle(&self, exit: Exit) {
        if self.offer_exit(exit, true) {
            let _ = self.finish();
        }
    }

    /// Start was reported (or failed for good): returns whether an exit that arrived
    /// earlier must now be finished by the caller.
    pub fn mark_started(&self) -> bool {
        let mut s = lock(&self.state);
        s.started = true;
        s.starting = false;
        if s.pending.is_some() && s.exit.is_none() && !s.reporting {
            s.reporting = true;
            return true;
        }
        false
    }

    /// Drains the output and records the exit; returns the pid and exit to announce. Only
    /// for the caller that [`Process::offer_exit`] or [`Process::mark_started`] chose.
    pub fn finish(&self) -> Option<(u32, Exit)> {
        let io = lock(&self.state).io.take();
        if let Some(mut io) = io {
            io.drain();
        }
        let mut s = lock(&self.state);
        let exit = s.pending.take()?;
        s.exit = Some(exit);
        s.status = Status::STOPPED;
        self.exited.notify_all();
        Some((s.pid, exit))
    }

    /// An exit report is under way (it will record the exit shortly).
    pub fn is_reporting(&self) -> bool {
        let s = lock(&self.state);
        s.reporting && s.exit.is_none()
    }

    /// Blocks until the process's exit is recorded.
    pub fn wait(&self) -> Exit {
        let mut s = lock(&self.state);
        loop {
            if let Some(e) = s.exit {
                return e;
            }
            s = self
                .exited
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    pub fn close_stdin(&self) {
        if let Some(io) = lock(&self.state).io.as_ref() {
            io.close_stdin();
        }
    }

    /// Ends the relays of a process that is being deleted (a background child may still
    /// hold its output open).
    pub fn close_io(&self) {
        if let Some(io) = lock(&self.state).io.take() {
            io.close();
        }
    }
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const FIRST: Exit = Exit {
        status: 3,
        at_nanos: 10,
    };
    const LATER: Exit = Exit {
        status: 255,
        at_nanos: 20,
    };

    #[test]
    fn the_first_exit_is_recorded_once_and_wakes_waiters() {
        let p = Arc::new(Process::new("c", None, Stdio::default(), None));
        assert!(!p.mark_started());
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.wait())
        };
        assert!(p.offer_exit(FIRST, false));
        assert!(!p.offer_exit(LATER, true), "a report is under way");
        assert_eq!(p.finish(), Some((0, FIRST)));
        assert!(
            !p.offer_exit(LATER, true),
            "and done: the VM's death changes nothing"
        );
        assert_eq!(waiter.join().unwrap(), FIRST);
        assert_eq!(p.state().status, Status::STOPPED);
    }

    #[test]
    fn an_exit_before_start_waits_for_it() {
        let p = Process::new("c", Some("e"), Stdio::default(), None);
        assert!(!p.offer_exit(FIRST, false), "not reported before Start");
        assert!(p.state().exit.is_none());
        assert!(
            !p.offer_exit(LATER, false),
            "the first exit is the one kept"
        );
        assert!(
            p.mark_started(),
            "Start hands the pending exit to its caller"
        );
        assert_eq!(p.finish(), Some((0, FIRST)));
    }

    #[test]
    fn a_forced_exit_waits_for_a_start_under_way() {
        let p = Process::new("c", None, Stdio::default(), None);
        assert!(p.begin_start());
        assert!(!p.begin_start(), "one start at a time");
        assert!(
            !p.offer_exit(LATER, true),
            "TaskExit never overtakes TaskStart"
        );
        assert!(p.mark_started());
        assert_eq!(p.finish(), Some((0, LATER)));
    }

    #[test]
    fn a_dead_vm_reports_a_process_that_never_started() {
        let p = Process::new("c", None, Stdio::default(), None);
        assert!(p.offer_exit(LATER, true));
        assert_eq!(p.finish(), Some((0, LATER)));
        assert!(!p.mark_started());
    }
}
