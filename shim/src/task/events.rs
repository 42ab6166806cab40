//! Task events to containerd, in the order they happen: handlers queue them on a channel
//! and one thread forwards them, so an RPC never waits on containerd and a TaskExit never
//! overtakes the TaskStart before it.

use std::sync::mpsc::{channel, Sender};

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;

/// What happened to a task, with what containerd needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    Create {
        id: String,
        bundle: String,
        pid: u32,
    },
    Start {
        id: String,
        pid: u32,
    },
    Exit {
        id: String,
        exec_id: String,
        pid: u32,
        status: u32,
        exited_at_nanos: i64,
    },
    Oom {
        id: String,
    },
    ExecAdded {
        id: String,
        exec_id: String,
    },
    ExecStarted {
        id: String,
        exec_id: String,
        pid: u32,
    },
    Paused {
        id: String,
    },
    Resumed {
        id: String,
    },
    Delete {
        id: String,
        pid: u32,
        status: u32,
        exited_at_nanos: i64,
    },
}

pub fn timestamp(nanos: i64) -> Timestamp {
    let mut t = Timestamp::new();
    t.seconds = nanos.div_euclid(1_000_000_000);
    t.nanos = nanos.rem_euclid(1_000_000_000) as i32;
    t
}

impl TaskEvent {
    /// The topic and the protobuf message containerd expects.
    pub fn encode(&self) -> (&'static str, Box<dyn MessageDyn>) {
        match self.clone() {
            TaskEvent::Create { id, bundle, pid } => {
                let mut e = TaskCreate::new();
                e.container_id = id;
                e.bundle = bundle;
                e.pid = pid;
                (topics::TASK_CREATE_EVENT_TOPIC, Box::new(e))
            }
            TaskEvent::Start { id, pid } => {
                let mut e = TaskStart::new();
                e.container_id = id;
                e.pid = pid;
                (topics::TASK_START_EVENT_TOPIC, Box::new(e))
            }
            TaskEvent::Exit {
                id,
                exec_id,
                pid,
                status,
                exited_at_nanos,
            } => {
                let mut e = TaskExit::new();
                // containerd names the process by `id`: the exec id, or the container's
                // own id for its init process.
                e.id = if exec_id.is_empty() {
                    id.clone()
                } else {
                    exec_id
                };
                e.container_id = id;
                e.pid = pid;
                e.exit_status = status;
                e.exited_at = Some(timestamp(exited_at_nanos)).into();
                (topics::TASK_EXIT_EVENT_TOPIC, Box::new(e))
            }
            TaskEvent::Oom { id } => {
                let mut e = TaskOOM::new();
                e.container_id = id;
                (topics::TASK_OOM_EVENT_TOPIC, Box::new(e))
            }
            TaskEvent::ExecAdded { id, exec_id } => {
                let mut e = TaskExecAdded::new();
                e.container_id = id;
                e.exec_id = exec_id;
                (topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e))
            }
            TaskEvent::ExecStarted { id, exec_id, pid } => {
                let mut e = TaskExecStarted::new();
                e.container_id = id;
                e.exec_id = exec_id;
                e.pid = pid;
                (topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e))
            }
            TaskEvent::Paused { id } => {
                let mut e = TaskPaused::new();
                e.container_id = id;
                (topics::TASK_PAUSED_EVENT_TOPIC, Box::new(e))
            }
            TaskEvent::Resumed { id } => {
                let mut e = TaskResumed::new();
                e.container_id = id;
                (topics::TASK_RESUMED_EVENT_TOPIC, Box::new(e))
            }
            TaskEvent::Delete {
                id,
                pid,
                status,
                exited_at_nanos,
            } => {
                let mut e = TaskDelete::new();
                e.id = id.clone();
                e.container_id = id;
                e.pid = pid;
                e.exit_status = status;
                e.exited_at = Some(timestamp(exited_at_nanos)).into();
                (topics::TASK_DELETE_EVENT_TOPIC, Box::new(e))
            }
        }
    }
}

/// What the forwarding thread is handed.
enum Queued {
    Event(TaskEvent),
    /// Answered once everything queued before it has been forwarded.
    Flush(Sender<()>),
}

/// Queues events for the forwarding thread.
#[derive(Clone)]
pub struct EventSender {
    tx: Sender<Queued>,
}

impl EventSender {
    /// Starts the thread that forwards to containerd through `publisher`.
    pub fn start(publisher: RemotePublisher, namespace: String) -> EventSender {
        let (tx, rx) = channel::<Queued>();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for queued in rx {
                    let event = match queued {
                        Queued::Event(e) => e,
                        Queued::Flush(done) => {
                            let _ = done.send(());
                            continue;
                        }
                    };
                    let (topic, message) = event.encode();
                    let ctx = containerd_shim::protos::ttrpc::context::with_timeout(
                        std::time::Duration::from_secs(10).as_nanos() as i64,
                    );
                    if let Err(e) = publisher.publish(ctx, topic, &namespace, message) {
                        log::warn!("publishing {topic}: {e}");
                    }
                }
            })
            .expect("spawn the event thread");
        EventSender { tx }
    }

    pub fn send(&self, event: TaskEvent) {
        log::debug!("event {event:?}");
        let _ = self.tx.send(Queued::Event(event));
    }

    /// Waits (at most `within`) until everything sent so far has been forwarded.
    pub fn flush(&self, within: std::time::Duration) {
        let (done, wait) = channel();
        if self.tx.send(Queued::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(within);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_of_an_init_process_names_the_container_as_the_process() {
        let (topic, msg) = TaskEvent::Exit {
            id: "c1".into(),
            exec_id: String::new(),
            pid: 7,
            status: 137,
            exited_at_nanos: 1_500_000_000,
        }
        .encode();
        assert_eq!(topic, "/tasks/exit");
        let e = msg.downcast_box::<TaskExit>().unwrap();
        assert_eq!((e.id.as_str(), e.container_id.as_str()), ("c1", "c1"));
        assert_eq!((e.pid, e.exit_status), (7, 137));
        assert_eq!(e.exited_at.seconds, 1);
        assert_eq!(e.exited_at.nanos, 500_000_000);
    }

    #[test]
    fn exec_exit_names_the_exec() {
        let (_, msg) = TaskEvent::Exit {
            id: "c1".into(),
            exec_id: "e1".into(),
            pid: 9,
            status: 0,
            exited_at_nanos: 0,
        }
        .encode();
        let e = msg.downcast_box::<TaskExit>().unwrap();
        assert_eq!((e.id.as_str(), e.container_id.as_str()), ("e1", "c1"));
    }
}
