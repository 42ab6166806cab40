//! The thread that serves one activation of the fs device: it owns the rings (through the
//! 0.17 views), runs each FUSE request against the shares, and raises the interrupt
//! itself. File operations block on the host (a FIFO opened without a writer blocks until
//! one comes), so they run here and never on the event loop: a stuck request stalls this
//! VM's shared directories, nothing else.
//!
//! Session threads are not created by whoever activates the device (the event loop, or a
//! vCPU writing the driver's status) but by one thread that exists for that,
//! `hull-fs-start` ([`SessionStarter`]): a thread keeps its creator's seccomp filter, and
//! only a creator that runs under the fs filter alone gives a session exactly that filter.
//! The VMM starts it right after entering its jail, before any other thread filters
//! itself; it waits for sessions and starts a `hull-fs` thread for each (a reset and a new
//! activation is a new session, while the old one may still be stuck in a request).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::Vfs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue_fuse::QueueT as _;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::view::{self, Mem17, Queue17};
use crate::devices::virtio::{Interrupt, INT_VRING};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    View(#[from] view::ViewError),
    #[error("creating the kick eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("the thread that starts fs sessions (hull-fs-start) is gone")]
    NoStarter,
}

/// A running session. Dropping it stops the thread after its current request; it is not
/// joined, so a request stuck on the host never holds up a reset or the VMM's exit.
pub struct Worker {
    kick: Arc<EventFd>,
    stop: Arc<AtomicBool>,
}

/// A session handed to `hull-fs-start`, with the eventfd that wakes it.
type NewSession = (Session, Arc<EventFd>);

/// Where the device hands its sessions to be started.
pub struct Sessions {
    tx: mpsc::Sender<NewSession>,
}

/// The receiving end of [`Sessions`], until [`SessionStarter::start`] runs it on its
/// thread.
pub struct SessionStarter {
    rx: mpsc::Receiver<NewSession>,
}

/// A device's way to start sessions and the starter that serves it.
pub fn sessions() -> (Sessions, SessionStarter) {
    let (tx, rx) = mpsc::channel();
    (Sessions { tx }, SessionStarter { rx })
}

impl SessionStarter {
    /// Starts `hull-fs-start` under the fs filter (when the VMM's filters are on). It
    /// starts a `hull-fs` thread for each session it is handed and ends with the device
    /// (every [`Sessions`] dropped).
    pub fn start(self) -> Result<JoinHandle<()>, crate::seccomp::SeccompError> {
        let rx = self.rx;
        crate::seccomp::spawn(
            crate::seccomp::ThreadKind::Fs,
            "hull-fs-start".into(),
            move || {
                for (session, kick) in rx {
                    let stop = session.stop.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("hull-fs".into())
                            .spawn(move || {
                                crate::seccomp::remember_thread_name();
                                session.run(&kick)
                            });
                    if let Err(e) = spawned {
                        stop.store(true, Ordering::SeqCst);
                        crate::guest_warn!("fs: cannot start a session thread: {e}");
                    }
                }
            },
        )
    }
}

struct Session {
    /// Owns the mappings the view points into.
    _mem: GuestMemoryMmap,
    view: Mem17,
    queues: Vec<Option<Queue17>>,
    server: Server<Arc<Vfs>>,
    interrupt: Arc<Interrupt>,
    started: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    /// Takes over the transport's ready queues (their current positions) and has
    /// `sessions`' starter run them on a thread of their own.
    pub fn start(
        queues: &[virtio_queue::Queue],
        mem: &GuestMemoryMmap,
        vfs: Arc<Vfs>,
        interrupt: Arc<Interrupt>,
        started: Arc<AtomicBool>,
        sessions: &Sessions,
    ) -> Result<Worker, WorkerError> {
        let kick = Arc::new(EventFd::new(0).map_err(WorkerError::EventFd)?);
        let stop = Arc::new(AtomicBool::new(false));
        let session = Session::new(queues, mem, vfs, interrupt, started, stop.clone())?;
        sessions
            .tx
            .send((session, kick.clone()))
            .map_err(|_| WorkerError::NoStarter)?;
        Ok(Worker { kick, stop })
    }

    /// The driver made buffers available.
    pub fn kick(&self) {
        if let Err(e) = self.kick.write(1) {
            log::error!("fs: cannot wake the fs thread: {e}");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.kick.write(1);
    }
}

/// Serves every available request of `queues` on the calling thread, as a worker would,
/// and moves the transport's queues to where the worker's ended. For the fuzz target,
/// which needs the device's guest-input path without a thread in between.
pub fn serve_in_place(
    queues: &mut [virtio_queue::Queue],
    mem: &GuestMemoryMmap,
    vfs: Arc<Vfs>,
    interrupt: Arc<Interrupt>,
) -> Result<(), WorkerError> {
    use virtio_queue::QueueT;
    let mut session = Session::new(
        queues,
        mem,
        vfs,
        interrupt,
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    )?;
    for (index, queue) in queues.iter_mut().enumerate() {
        session.drain(index);
        if let Some(q) = &session.queues[index] {
            queue.set_next_avail(q.next_avail());
            queue.set_next_used(q.next_used());
        }
    }
    Ok(())
}

impl Session {
    /// A session over the transport's ready queues, from their current positions.
    fn new(
        queues: &[virtio_queue::Queue],
        mem: &GuestMemoryMmap,
        vfs: Arc<Vfs>,
        interrupt: Arc<Interrupt>,
        started: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    ) -> Result<Session, WorkerError> {
        use virtio_queue::QueueT;
        let view = view::memory(mem)?;
        let mut mirrored = Vec::with_capacity(queues.len());
        for (i, q) in queues.iter().enumerate() {
            mirrored.push(if q.ready() {
                Some(view::queue(i, q)?)
            } else {
                None
            });
        }
        Ok(Session {
            _mem: mem.clone(),
            view,
            queues: mirrored,
            server: Server::new(vfs),
            interrupt,
            started,
            stop,
        })
    }

    fn run(mut self, kick: &EventFd) {
        loop {
            for index in 0..self.queues.len() {
                self.drain(index);
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = kick.read() {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("fs: waiting for requests: {e}");
                    return;
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Serves every available request of queue `index`.
    fn drain(&mut self, index: usize) {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let Some(queue) = self.queues[index].as_mut() else {
                return;
            };
            let chain = match queue.pop_descriptor_chain(&self.view) {
                Some(c) => c,
                // Empty: re-arm notifications and look once more (a buffer may have come
                // in between). Only once: a ring whose index runs ahead of what it holds
                // says "more" forever and must not spin this thread.
                None => match queue.enable_notification(&self.view) {
                    Ok(false) => return,
                    Ok(true) => match queue.pop_descriptor_chain(&self.view) {
                        Some(c) => c,
                        None => {
                            crate::guest_warn!("fs: queue {index}: the available ring is inconsistent; the queue stops");
                            self.queues[index] = None;
                            return;
                        }
                    },
                    Err(e) => {
                        crate::guest_warn!("fs: queue {index} unusable: {e}");
                        self.queues[index] = None;
                        return;
                    }
                },
            };
            self.started.store(true, Ordering::SeqCst);
            let head = chain.head_index();
            let len = serve(&self.server, &self.view, chain);
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let Some(queue) = self.queues[index].as_mut() else {
                return;
            };
            if let Err(e) = queue.add_used(&self.view, head, len) {
                crate::guest_warn!("fs: queue {index}: returning a buffer: {e}");
                self.queues[index] = None;
                return;
            }
            if queue.needs_notification(&self.view).unwrap_or(true) {
                self.interrupt.trigger(INT_VRING);
            }
        }
    }
}

/// Runs one FUSE request; returns the bytes written into the chain's writable part. A
/// malformed request gets no reply bytes (the guest's driver fails that request).
fn serve(
    server: &Server<Arc<Vfs>>,
    mem: &Mem17,
    chain: virtio_queue_fuse::DescriptorChain<&Mem17>,
) -> u32 {
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            log::debug!("fs: unreadable request: {e:?}");
            return 0;
        }
    };
    let writer = match VirtioFsWriter::new(mem, chain) {
        Ok(w) => w,
        Err(e) => {
            log::debug!("fs: unwritable reply buffer: {e:?}");
            return 0;
        }
    };
    match server.handle_message(reader, writer.into(), None, None) {
        Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
        Err(e) => {
            log::debug!("fs: request failed: {e:?}");
            0
        }
    }
}
