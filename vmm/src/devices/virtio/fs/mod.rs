//! virtio-fs (virtio 1.2 section 5.11): host directories shared live, both ways, with the
//! guest. The FUSE server runs inside the VMM (fuse-backend-rs, as in Kata's built-in
//! VMM) rather than in a vhost-user `virtiofsd`: such a daemon maps guest RAM from the
//! memfd, and a VM restored from a template has private copy-on-write RAM it could not
//! see (docs/virtio-fs.md).
//!
//! One FUSE file system per VM; each shared directory is a top-level name in it
//! ([`shares`]), added and removed through the control API while the guest runs, and
//! served through a policy ([`guard`]) that keeps the guest from leaving device nodes,
//! setuid files or privileged xattrs on the host. The host owner of what the guest makes
//! is the VMM; the guest owner is kept in an xattr ([`owner`]). A template VM has the
//! device, so its driver's queues are set up at boot, but never mounts it: a FUSE session
//! cannot survive a restore, so a snapshot of a VM whose guest has spoken FUSE is refused
//! ([`VirtioDevice::snapshot_blocker`]).

mod guard;
mod owner;
pub mod shares;
mod view;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::{read_config_bytes, Interrupt, UsedQueues, VirtioDevice, VIRTIO_F_VERSION_1};
pub use shares::{ShareError, Shares};
use worker::Worker;
pub use worker::{sessions, SessionStarter, Sessions};

/// The device's request path on the calling thread, for the fuzz target.
#[doc(hidden)]
pub fn serve_in_place(
    queues: &mut [Queue],
    mem: &GuestMemoryMmap,
    shares: &Shares,
    interrupt: Arc<Interrupt>,
) -> Result<(), worker::WorkerError> {
    worker::serve_in_place(queues, mem, shares.vfs(), interrupt)
}

pub const VIRTIO_ID_FS: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;
/// Queue 0 is the high-priority queue (FORGET, INTERRUPT), queue 1 the one request queue.
const QUEUE_SIZES: [u16; 2] = [128, 128];
const REQUEST_QUEUES: u32 = 1;
/// The tag field of the configuration space (the name `mount -t virtiofs` takes).
pub const TAG_LEN: usize = 36;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?}: use 1-{TAG_LEN} bytes, no NUL")]
    BadTag(String),
}

pub struct Fs {
    config: [u8; TAG_LEN + 4],
    shares: Arc<Shares>,
    interrupt: Option<Arc<Interrupt>>,
    worker: Option<Worker>,
    /// Set once the guest sent its first request, by the worker.
    started: Arc<AtomicBool>,
    /// A session could not start (logged once per activation).
    failed: bool,
    /// Where sessions are started (see `worker`: not on the thread that activates).
    sessions: Sessions,
}

impl Fs {
    /// A device serving `shares`, whose sessions `sessions`' starter runs.
    pub fn new(tag: &str, shares: Arc<Shares>, sessions: Sessions) -> Result<Fs, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(FsError::BadTag(tag.into()));
        }
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&REQUEST_QUEUES.to_le_bytes());
        Ok(Fs {
            config,
            shares,
            interrupt: None,
            worker: None,
            started: Arc::new(AtomicBool::new(false)),
            failed: false,
            sessions,
        })
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, _acked_features: u64) {
        self.worker = None;
        self.failed = false;
    }

    fn set_interrupt(&mut self, interrupt: Arc<Interrupt>) {
        self.interrupt = Some(interrupt);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> UsedQueues {
        if self.worker.is_none() && !self.failed {
            if !has_requests(queues, mem) {
                // A restore serves every ready queue once, before the VMM enters its
                // jail and starts the session starter: a session begins with the
                // guest's first request.
                return UsedQueues::default();
            }
            let Some(interrupt) = self.interrupt.clone() else {
                log::error!("fs: no interrupt line; the device cannot serve");
                self.failed = true;
                return UsedQueues::default();
            };
            match Worker::start(
                queues,
                mem,
                self.shares.vfs(),
                interrupt,
                self.started.clone(),
                &self.sessions,
            ) {
                Ok(w) => self.worker = Some(w),
                Err(e) => {
                    crate::guest_warn!("fs: cannot serve the guest: {}", crate::error_chain(&e));
                    self.failed = true;
                }
            }
        }
        if let Some(w) = &self.worker {
            w.kick();
        }
        // The worker returns buffers and raises the interrupt itself.
        UsedQueues::default()
    }

    fn reset(&mut self) {
        self.worker = None;
        self.failed = false;
    }

    fn snapshot_blocker(&self) -> Option<String> {
        self.started.load(Ordering::SeqCst).then(|| {
            "the guest has used its virtio-fs device, and a FUSE session cannot be restored: \
             snapshot a VM that never mounted it (a template)"
                .into()
        })
    }
}

/// Whether the guest has made any request available on a ready queue.
fn has_requests(queues: &[Queue], mem: &GuestMemoryMmap) -> bool {
    use virtio_queue::QueueT;
    queues.iter().any(|q| {
        q.ready()
            && q.avail_idx(mem, Ordering::Acquire)
                .is_ok_and(|avail| avail.0 != q.next_avail())
    })
}

#[cfg(test)]
mod tests;
