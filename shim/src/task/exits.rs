//! Process exits and OOM kills as the guest reports them, applied to the task table. The
//! guest is not trusted: a report must name one of this shim's processes, and what is kept
//! for later is bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use containerd_shim::protos::types::task::Status;

use super::events::{EventSender, TaskEvent};
use super::process::{now_nanos, Exit, Process};
use super::{Container, Table};
use hull_host::lock;
use hull_host::pod::{EventSink, PodEvent};

/// Exit and OOM reports from a pod's event thread, applied to the task table. What the
/// guest says is checked against the table: it can only speak of this shim's containers.
pub(super) struct Sink {
    table: Arc<Mutex<Table>>,
    events: EventSender,
    /// Exits of init processes heard of before their container entered the table (an init
    /// that died between CreateContainer and the end of Create); bounded.
    early: Mutex<HashMap<String, Exit>>,
    /// When each container's last TaskOOM went out: at most one a second each.
    last_oom: Mutex<HashMap<String, std::time::Instant>>,
}

/// Most early exits kept: a guest cannot grow the shim's memory with made-up ids.
const MAX_EARLY_EXITS: usize = 64;

impl Sink {
    pub(super) fn new(table: Arc<Mutex<Table>>, events: EventSender) -> Self {
        Sink {
            table,
            events,
            early: Mutex::new(HashMap::new()),
            last_oom: Mutex::new(HashMap::new()),
        }
    }

    /// Finishes `p`'s exit (drains its output, records it) and announces it.
    pub(super) fn finish(&self, p: &Process) {
        if let Some((pid, exit)) = p.finish() {
            self.events.send(TaskEvent::Exit {
                id: p.container.clone(),
                exec_id: p.exec.clone().unwrap_or_default(),
                pid,
                status: exit.status,
                exited_at_nanos: exit.at_nanos,
            });
        }
    }

    /// [`Sink::finish`] on a thread of its own (draining may take a moment, and the next
    /// event must not wait), or here if no thread can be had.
    pub(super) fn finish_soon(self: &Arc<Self>, p: Arc<Process>) {
        let sink = Arc::clone(self);
        let p2 = p.clone();
        let spawned = std::thread::Builder::new()
            .name("exit".into())
            .spawn(move || sink.finish(&p2));
        if spawned.is_err() {
            self.finish(&p);
        }
    }

    /// Takes an init exit that arrived before its container was known (call with the
    /// table locked: the lock order is table, then early exits).
    pub(super) fn take_early(&self, container: &str) -> Option<Exit> {
        lock(&self.early).remove(container)
    }

    /// Reports every process of `containers` that has not exited as exited with 255 (their
    /// VM is gone or going); returns how many had been running.
    pub(super) fn lose(&self, containers: &[Arc<Container>]) -> usize {
        let mut lost = 0;
        for c in containers {
            let mut procs = vec![c.init.clone()];
            procs.extend(lock(&c.execs).values().cloned());
            for p in procs {
                let running = {
                    let s = p.state();
                    s.exit.is_none() && s.status != Status::CREATED
                };
                let exit = Exit {
                    status: 255,
                    at_nanos: now_nanos(),
                };
                // Its VM is gone or going: output in flight goes with it.
                p.close_io();
                // A process that never started cannot start any more either.
                if p.offer_exit(exit, true) {
                    lost += usize::from(running);
                    self.finish(&p);
                }
            }
        }
        lost
    }

    /// Waits for the exits of `procs` that are being reported elsewhere (bounded: each has
    /// a reporter), so no TaskExit trails a TaskDelete.
    pub(super) fn wait_reported(&self, procs: &[Arc<Process>]) {
        for p in procs {
            if p.is_reporting() {
                p.wait();
            }
        }
    }
}

/// The pod's event thread holds the sink as a trait object; exits spawn through the Arc.
pub(super) struct SinkHandle(pub(super) Arc<Sink>);

impl EventSink for SinkHandle {
    fn event(&self, event: PodEvent) {
        match event {
            PodEvent::Exited {
                container,
                exec,
                status,
                at_nanos,
            } => self.exited(&container, exec.as_deref(), status, at_nanos),
            PodEvent::Oom { container } => self.oom(&container),
            PodEvent::VmGone { why } => self.vm_gone(&why),
        }
    }
}

impl SinkHandle {
    fn exited(&self, container: &str, exec: Option<&str>, status: i32, at_nanos: i64) {
        let exit = Exit {
            status: status.max(0) as u32,
            at_nanos,
        };
        let process = {
            let t = lock(&self.0.table);
            match (t.containers.get(container), exec) {
                (Some(c), None) => Some(c.init.clone()),
                (Some(c), Some(exec)) => lock(&c.execs).get(exec).cloned(),
                (None, _) => {
                    // Lock order: table, then early exits (Create takes them the same way).
                    if exec.is_none() && t.creating.contains(container) {
                        let mut early = lock(&self.0.early);
                        if early.len() < MAX_EARLY_EXITS {
                            early.entry(container.to_string()).or_insert(exit);
                        }
                    }
                    None
                }
            }
        };
        match process {
            Some(p) => {
                if p.offer_exit(exit, false) {
                    self.0.finish_soon(p);
                }
            }
            None => log::debug!(
                "exit of unknown process {container}/{} ignored",
                exec.unwrap_or_default()
            ),
        }
    }

    fn oom(&self, container: &str) {
        if !lock(&self.0.table).containers.contains_key(container) {
            log::debug!("OOM of unknown container {container} ignored");
            return;
        }
        let now = std::time::Instant::now();
        {
            let mut last = lock(&self.0.last_oom);
            if last
                .get(container)
                .is_some_and(|t| now.duration_since(*t) < std::time::Duration::from_secs(1))
            {
                return;
            }
            last.insert(container.to_string(), now);
        }
        self.0.events.send(TaskEvent::Oom {
            id: container.to_string(),
        });
    }

    fn vm_gone(&self, why: &str) {
        let containers: Vec<Arc<Container>> =
            lock(&self.0.table).containers.values().cloned().collect();
        let lost = self.0.lose(&containers);
        log::warn!("{why}; {lost} running process(es) reported exited with status 255");
    }
}
