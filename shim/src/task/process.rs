//! One process of a task as containerd sees it (a container's init or an exec): its state,
//! its stdio relays, and the wait for its exit.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use containerd_shim::protos::types::task::Status;

use super::io::{ProcessIo, StdioPaths};
use crate::lock;

/// After a process exits, how long its output may still take to arrive before TaskExit is
/// sent anyway (a background child holding the pipe open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal that killed it.
    pub status: u32,
    pub at_nanos: i64,
}

pub struct ProcessState {
    pub status: Status,
    pub pid: u32,
    pub exit: Option<Exit>,
    pub io: Option<ProcessIo>,
}

pub struct Process {
    pub container: String,
    /// Empty for the container's init process.
    pub exec: String,
    pub stdio: StdioPaths,
    /// An exec's OCI process (JSON), kept until Start.
    pub exec_spec: Option<Vec<u8>>,
    state: Mutex<ProcessState>,
    exited: Condvar,
}

impl Process {
    pub fn new(container: &str, exec: &str, stdio: StdioPaths, exec_spec: Option<Vec<u8>>) -> Self {
        Process {
            container: container.to_string(),
            exec: exec.to_string(),
            stdio,
            exec_spec,
            state: Mutex::new(ProcessState {
                status: Status::CREATED,
                pid: 0,
                exit: None,
                io: None,
            }),
            exited: Condvar::new(),
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, ProcessState> {
        lock(&self.state)
    }

    /// Records the exit once (later reports are ignored) after the output has drained;
    /// returns the pid and exit when this call recorded it.
    pub fn exited(&self, exit: Exit) -> Option<(u32, Exit)> {
        let io = {
            let mut s = lock(&self.state);
            if s.exit.is_some() {
                return None;
            }
            s.io.take()
        };
        if let Some(mut io) = io {
            io.drain(OUTPUT_DRAIN);
        }
        let mut s = lock(&self.state);
        if s.exit.is_some() {
            return None;
        }
        s.exit = Some(exit);
        s.status = Status::STOPPED;
        self.exited.notify_all();
        Some((s.pid, exit))
    }

    /// Blocks until the process has exited.
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

    #[test]
    fn wait_returns_the_first_recorded_exit() {
        let p = Arc::new(Process::new("c", "", StdioPaths::default(), None));
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.wait())
        };
        let first = Exit {
            status: 3,
            at_nanos: 10,
        };
        assert!(p.exited(first).is_some());
        assert!(
            p.exited(Exit {
                status: 255,
                at_nanos: 20
            })
            .is_none(),
            "a second report (the VM going away later) changes nothing"
        );
        assert_eq!(waiter.join().unwrap(), first);
        assert_eq!(p.state().status, Status::STOPPED);
    }
}
