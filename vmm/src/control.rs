//! The handle that acts on a running VM from any thread: pause, resume, snapshot, stop,
//! describe. The control API's server threads hold one ([`crate::api`]); the builder makes
//! it with what a snapshot reads besides the vCPUs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::builder::PlacedDevice;
use crate::devices::bus::lock;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::block::{Attachment, BlockError, DriveSlot};
use crate::devices::virtio::MmioTransport;
use crate::exit::{ExitEvent, ExitReason};
use crate::signals;
use crate::snapshot::{self, DeviceSnapshot, SnapshotError, SnapshotMeta, SnapshotState, VmShape};
use crate::vstate::memory::GuestRam;
use crate::vstate::pause::PauseGate;
use crate::vstate::vm::Vm;

/// Pauses, resumes, stops and describes a running VM from any thread (the control API's
/// server threads hold one).
#[derive(Clone)]
pub struct VmmControl {
    pub(crate) exit: ExitEvent,
    pub(crate) pause: Arc<PauseGate>,
    /// Serializes Pause, Resume and Snapshot: a Resume in the middle of a snapshot would
    /// let vCPUs run between the reads of their state and of guest memory.
    pub(crate) ops: Arc<Mutex<()>>,
    pub(crate) vcpu_threads: Arc<Vec<libc::pthread_t>>,
    pub(crate) started: Instant,
    pub(crate) vcpus: u8,
    pub(crate) memory_mib: u32,
    /// The drive slots, in slot order, with their transports (whose lock a change holds,
    /// so the device serves no request meanwhile).
    pub(crate) slots: Arc<Vec<(Arc<Mutex<MmioTransport>>, DriveSlot)>>,
    /// The virtio-fs device's shares (hull-vmm --shared-fs).
    pub(crate) shares: Option<Arc<crate::devices::virtio::fs::Shares>>,
    pub(crate) sources: Arc<SnapshotSources>,
}

/// Why a drive slot could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum DriveSlotError {
    #[error("drive slot {slot} does not exist: this VM has {count} (hull-vmm --drive-slots)")]
    NoSuchSlot { slot: u32, count: usize },
    #[error("drive slot {slot}")]
    Block {
        slot: u32,
        #[source]
        source: crate::devices::virtio::block::BlockError,
    },
}

/// Why a directory could not be shared or unshared.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("this VM has no virtio-fs device: start hull-vmm with --shared-fs TAG")]
    NoDevice,
    #[error(transparent)]
    Share(#[from] crate::devices::virtio::fs::ShareError),
}

/// What a snapshot reads besides the vCPUs.
pub(crate) struct SnapshotSources {
    pub(crate) vm: Arc<Vm>,
    pub(crate) ram: Arc<GuestRam>,
    pub(crate) devices: Vec<PlacedDevice>,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) msr_indices: Vec<u32>,
    pub(crate) shape: VmShape,
    pub(crate) emulated_host: bool,
}

/// What a snapshot wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Bytes of guest RAM written (non-zero pages); the file is the RAM's size, sparse.
    pub memory_bytes_written: u64,
    pub state_bytes: u64,
    pub took: Duration,
}

/// A point-in-time description of the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmMetrics {
    pub paused: bool,
    pub uptime: Duration,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The VMM's resident memory without the guest RAM mapping (anon + file), KiB.
    pub vmm_rss_kib: u64,
    /// Guest RAM resident in this process (shared memfd pages), KiB.
    pub guest_resident_kib: u64,
}

impl VmmControl {
    /// Stops every vCPU between two KVM_RUNs; returns once all are parked. Devices keep
    /// serving host I/O.
    pub fn pause(&self) {
        let _ops = lock(&self.ops);
        let sig = signals::kick_signal();
        self.pause.pause(|index| {
            if let Some(&t) = self.vcpu_threads.get(index) {
                // The gate only asks for vCPUs that have not reported their end, under the
                // lock each takes to report it before its thread returns.
                // SAFETY: `t` is a live thread; the kick signal's handler is installed.
                unsafe { libc::pthread_kill(t, sig) };
            }
        });
        log::info!("VM paused");
    }

    pub fn resume(&self) {
        let _ops = lock(&self.ops);
        self.pause.resume();
        log::info!("VM resumed");
    }

    pub fn is_paused(&self) -> bool {
        self.pause.is_paused()
    }

    /// Writes a snapshot of the paused VM into `dir` (created if missing): the state file
    /// and the memory file. The VM stays paused; resume it or shut it down after.
    pub fn snapshot(&self, dir: &Path) -> Result<SnapshotInfo, SnapshotError> {
        let t0 = Instant::now();
        let _ops = lock(&self.ops);
        if !self.is_paused() {
            return Err(SnapshotError::NotPaused);
        }
        let src = &self.sources;
        // Every transport is locked first and stays locked until guest memory is written:
        // the event loop cannot complete a request (used ring, interrupt) between the
        // moment the vCPUs and the irqchip are read and the moment the RAM holding the
        // ring is.
        let locked: Vec<_> = src.devices.iter().map(|d| lock(&d.transport)).collect();
        blocker(&src.devices, &locked)?;
        let vcpus = self.save_vcpus()?;
        let vm = src.vm.save_state()?;
        let devices = src
            .devices
            .iter()
            .zip(&locked)
            .map(|(d, t)| DeviceSnapshot {
                id: d.id.clone(),
                mmio_slot: d.mmio_slot,
                transport: t.save_state(),
            })
            .collect();
        let serial = lock(&src.serial).snapshot();
        private_dir(dir)?;
        // The state file is written last and marks the snapshot complete: an older one is
        // removed first, so a failure in between never pairs new memory with old state.
        let state_path = dir.join(snapshot::STATE_FILE);
        match std::fs::remove_file(&state_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("remove the old", &state_path)(e))
            }
            _ => {}
        }
        let memory_path = dir.join(snapshot::MEMORY_FILE);
        let written = write_memory(&src.ram, &memory_path);
        // A device serving from its own thread (virtio-fs) may have taken a request that
        // was in flight when the vCPUs paused: ask again now that memory is written.
        let late = blocker(&src.devices, &locked);
        drop(locked);
        if late.is_err() {
            let _ = std::fs::remove_file(&memory_path);
        }
        late?;
        let memory_bytes_written = written?;
        let state = SnapshotState {
            meta: SnapshotMeta {
                hull_version: env!("CARGO_PKG_VERSION").to_string(),
                shape: src.shape.clone(),
                emulated_host: src.emulated_host,
            },
            vm,
            vcpus,
            serial,
            devices,
        };
        snapshot::write_state(&state_path, &state)?;
        let state_bytes = std::fs::metadata(&state_path).map(|m| m.len()).unwrap_or(0);
        let info = SnapshotInfo {
            memory_bytes_written,
            state_bytes,
            took: t0.elapsed(),
        };
        log::info!(
            "snapshot written to {}: {} KiB of guest memory, {} bytes of state, {:.1} ms",
            dir.display(),
            info.memory_bytes_written >> 10,
            info.state_bytes,
            info.took.as_secs_f64() * 1e3
        );
        Ok(info)
    }

    /// Every vCPU's state, each read on its own (parked) thread.
    fn save_vcpus(&self) -> Result<Vec<crate::vstate::vcpu_state::VcpuState>, SnapshotError> {
        let mut vcpus = Vec::with_capacity(usize::from(self.vcpus));
        for index in 0..usize::from(self.vcpus) {
            let (tx, rx) = std::sync::mpsc::channel();
            let msrs = self.sources.msr_indices.clone();
            let job = Box::new(move |fd: &kvm_ioctls::VcpuFd| {
                let _ = tx.send(crate::vstate::vcpu_state::save(fd, index as u8, &msrs));
            });
            self.pause.run_parked(index, job).map_err(|e| match e {
                crate::vstate::pause::PauseError::NotPaused => SnapshotError::NotPaused,
                crate::vstate::pause::PauseError::Busy(i) => SnapshotError::Busy(i),
                crate::vstate::pause::PauseError::Ended(i) => SnapshotError::VcpuGone(i),
            })?;
            vcpus.push(rx.recv().map_err(|_| SnapshotError::VcpuGone(index))??);
        }
        Ok(vcpus)
    }

    /// Puts the disk image `a.path` into drive slot `slot` and tells the guest its new
    /// capacity; returns the capacity in 512-byte sectors. The guest finds the disk by
    /// `a.serial` (VIRTIO_BLK_T_GET_ID). `opened` is the image as the host opened it
    /// (a jailed VMM opens no path); without it `a.path` is opened here.
    pub fn attach_drive(
        &self,
        slot: u32,
        a: &Attachment,
        opened: Option<std::fs::File>,
    ) -> Result<u64, DriveSlotError> {
        self.with_slot(slot, |t, drive| {
            let sectors = match opened {
                Some(file) => drive.attach_opened(a, file)?,
                None => drive.attach(a)?,
            };
            t.config_changed();
            log::info!(
                "drive slot {slot}: attached {} ({} sectors, {}, serial {:?})",
                a.path.display(),
                sectors,
                if a.read_only {
                    "read-only"
                } else {
                    "read-write"
                },
                a.serial
            );
            Ok(sectors)
        })
    }

    /// Empties drive slot `slot` (the guest must have stopped using it) and tells the
    /// guest; returns whether it held anything.
    pub fn detach_drive(&self, slot: u32) -> Result<bool, DriveSlotError> {
        self.with_slot(slot, |t, drive| {
            let held = drive.detach()?;
            t.config_changed();
            if let Some(a) = &held {
                log::info!("drive slot {slot}: detached {}", a.path.display());
            }
            Ok(held.is_some())
        })
    }

    /// Shares host directory `dir` with the guest as `/<name>` of its virtio-fs mount.
    /// `opened` is the directory as the host opened it (a jailed VMM opens no path);
    /// `dir` then only names it.
    pub fn add_share(
        &self,
        name: &str,
        dir: &Path,
        opened: Option<std::os::fd::OwnedFd>,
    ) -> Result<(), ShareError> {
        let shares = self.shares.as_ref().ok_or(ShareError::NoDevice)?;
        match opened {
            Some(fd) => Ok(shares.add_opened(name, dir, fd)?),
            None => Ok(shares.add(name, dir)?),
        }
    }

    /// Stops sharing `name`; returns whether it was shared.
    pub fn remove_share(&self, name: &str) -> Result<bool, ShareError> {
        let shares = self.shares.as_ref().ok_or(ShareError::NoDevice)?;
        Ok(shares.remove(name)?)
    }

    fn with_slot<T>(
        &self,
        slot: u32,
        f: impl FnOnce(&mut MmioTransport, &DriveSlot) -> Result<T, BlockError>,
    ) -> Result<T, DriveSlotError> {
        let (transport, drive) =
            self.slots
                .get(slot as usize)
                .ok_or(DriveSlotError::NoSuchSlot {
                    slot,
                    count: self.slots.len(),
                })?;
        // A snapshot holds every transport lock while it reads state: a slot never
        // changes in the middle of one.
        let mut t = lock(transport);
        f(&mut t, drive).map_err(|source| DriveSlotError::Block { slot, source })
    }

    /// Ends the VM as SIGTERM would: orderly, exit status 0.
    pub fn shutdown(&self) {
        self.exit.signal(ExitReason::Shutdown);
    }

    pub fn metrics(&self) -> VmmMetrics {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        VmmMetrics {
            paused: self.is_paused(),
            uptime: self.started.elapsed(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            vmm_rss_kib: kib("RssAnon:") + kib("RssFile:"),
            guest_resident_kib: kib("RssShmem:"),
        }
    }
}

/// The first device that cannot be snapshotted now, as an error.
fn blocker(
    devices: &[PlacedDevice],
    locked: &[std::sync::MutexGuard<'_, MmioTransport>],
) -> Result<(), SnapshotError> {
    devices
        .iter()
        .zip(locked)
        .try_for_each(|(d, t)| match t.snapshot_blocker() {
            Some(reason) => Err(SnapshotError::Device {
                device: d.id.clone(),
                reason,
            }),
            None => Ok(()),
        })
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| {
        SnapshotError::File(hull_vmm_api::snapshot::SnapshotError::Io { op, path, source })
    }
}

/// Creates `dir` (and its parents) for the owner only.
fn private_dir(dir: &Path) -> Result<(), SnapshotError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create", dir))
}

/// Writes guest RAM to `path` (through a temporary file renamed into place); returns the
/// bytes of non-zero pages written.
fn write_memory(ram: &GuestRam, path: &Path) -> Result<u64, SnapshotError> {
    let tmp: PathBuf = path.with_extension("tmp");
    let written = snapshot::create_private(&tmp)
        .map_err(io_err("create", &tmp))
        .and_then(|file| {
            let n = crate::vstate::memory::write_snapshot_memory(ram, &file, &tmp)?;
            file.sync_all().map_err(io_err("sync", &tmp))?;
            Ok(n)
        })
        .and_then(|n| {
            std::fs::rename(&tmp, path)
                .map_err(io_err("rename into place", path))
                .map(|()| n)
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
