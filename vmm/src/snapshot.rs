//! Snapshot files: a versioned state file and a sparse memory file, in one directory.
//!
//! The state file is `magic | format version (u32 LE) | payload length (u64 LE) | CRC32 of
//! the payload (u32 LE) | payload`, the payload being [`SnapshotState`] in postcard's
//! encoding. A reader checks the magic (is this a hull snapshot at all), the format version
//! (another release's layout is refused by name, never guessed at), the length and the CRC
//! (a truncated or corrupted file is refused) before decoding anything.
//!
//! The memory file is guest RAM in the layout of the booted VM's memfd (see
//! `vstate::memory`), with holes for zero pages.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::devices::serial::SerialSnapshot;
use crate::devices::virtio::mmio::TransportState;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::VmState;

/// File names inside a snapshot directory.
pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";

const MAGIC: &[u8; 8] = b"HULLSNAP";
/// The state file layout this build reads and writes. Bump it whenever [`SnapshotState`]
/// or anything inside it changes shape.
pub const FORMAT_VERSION: u32 = 2;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// No state file comes near this (a few hundred KiB with many vCPUs); a larger length field
/// is corruption, refused before allocating.
const MAX_PAYLOAD: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a hull snapshot state file")]
    NotASnapshot { path: PathBuf },
    #[error("{path} has snapshot format version {found} (written by hull {writer}); this hull-vmm reads version {FORMAT_VERSION}: take a new snapshot (or let the template be rebuilt) with this release")]
    Version {
        path: PathBuf,
        found: u32,
        writer: String,
    },
    #[error("{path} is corrupt ({why}); take a new snapshot")]
    Corrupt { path: PathBuf, why: String },
    #[error("encode the snapshot state")]
    Encode(#[source] postcard::Error),
    #[error("pause the VM before taking a snapshot")]
    NotPaused,
    #[error("vCPU {0} stopped before its state was saved")]
    VcpuGone(usize),
    #[error("vCPU {0} is still busy with another request; try again")]
    Busy(usize),
    #[error(transparent)]
    VcpuState(#[from] crate::vstate::vcpu_state::VcpuStateError),
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error(transparent)]
    Memory(#[from] crate::vstate::memory::MemoryError),
    #[error("virtio device type {device_type} cannot be snapshotted now: {reason}")]
    Device { device_type: u32, reason: String },
    #[error("the snapshot is of a VM with {what} {snapshot}, but this configuration asks for {config}; restore with the VM shape the snapshot was taken with")]
    Shape {
        what: &'static str,
        snapshot: String,
        config: String,
    },
}

/// What the VM looked like: a restore must build the same shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmShape {
    pub vcpus: u8,
    pub memory_mib: u32,
    /// virtio device types in MMIO slot order.
    pub devices: Vec<u32>,
}

impl VmShape {
    /// Checks that a VM built from the restore configuration matches the snapshot.
    pub fn check(&self, config: &VmShape) -> Result<(), SnapshotError> {
        let mismatch = |what, s: String, c: String| {
            Err(SnapshotError::Shape {
                what,
                snapshot: s,
                config: c,
            })
        };
        if self.vcpus != config.vcpus {
            return mismatch("vcpus", self.vcpus.to_string(), config.vcpus.to_string());
        }
        if self.memory_mib != config.memory_mib {
            return mismatch(
                "memory_mib",
                self.memory_mib.to_string(),
                config.memory_mib.to_string(),
            );
        }
        if self.devices != config.devices {
            return mismatch(
                "virtio devices",
                device_names(&self.devices),
                device_names(&config.devices),
            );
        }
        Ok(())
    }
}

fn device_names(types: &[u32]) -> String {
    let names: Vec<String> = types
        .iter()
        .map(|t| match *t {
            1 => "net".to_string(),
            2 => "block".to_string(),
            4 => "rng".to_string(),
            19 => "vsock".to_string(),
            other => format!("type {other}"),
        })
        .collect();
    format!("[{}]", names.join(", "))
}

/// Everything but guest RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    /// The hull release that wrote it (for messages; compatibility is the format version).
    pub hull_version: String,
    pub shape: VmShape,
    /// Whether the guest was booted with the emulated-host quirks (its command line has
    /// them, so the restored VMM must apply the matching recoveries).
    pub emulated_host: bool,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialSnapshot,
    pub transports: Vec<TransportState>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// Writes `state` to `path` (through a temporary file renamed into place, so a reader never
/// sees half a file).
pub fn write_state(path: &Path, state: &SnapshotState) -> Result<(), SnapshotError> {
    let payload = postcard::to_stdvec(state).map_err(SnapshotError::Encode)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    let tmp = path.with_extension("tmp");
    let written = create_private(&tmp)
        .map_err(io_err("create", &tmp))
        .and_then(|mut f| {
            f.write_all(&out).map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(io_err("sync", &tmp))
        })
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err("rename into place", path)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Reads and checks a state file (see the module docs for what is checked, in which order).
pub fn read_state(path: &Path) -> Result<SnapshotState, SnapshotError> {
    let mut bytes = Vec::new();
    // Never more than a valid file can hold: a huge file is refused by its length check.
    File::open(path)
        .map_err(io_err("open", path))?
        .take(HEADER_LEN as u64 + MAX_PAYLOAD + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    decode_state(path, &bytes)
}

/// [`read_state`] on bytes already read; `path` names them in errors.
pub fn decode_state(path: &Path, bytes: &[u8]) -> Result<SnapshotState, SnapshotError> {
    let corrupt = |why: String| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot {
            path: path.to_path_buf(),
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "{} bytes, shorter than the header",
            bytes.len()
        )));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    let version = u32_at(8);
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap_or([0; 8]));
    let crc = u32_at(20);
    let payload = &bytes[HEADER_LEN..];
    if version != FORMAT_VERSION {
        // The hull version is the payload's first field in every format: a string.
        let writer = postcard::take_from_bytes::<String>(payload)
            .map(|(v, _)| v)
            .unwrap_or_else(|_| "unknown".into());
        return Err(SnapshotError::Version {
            path: path.to_path_buf(),
            found: version,
            writer,
        });
    }
    if len > MAX_PAYLOAD || len != payload.len() as u64 {
        return Err(corrupt(format!(
            "the header announces {len} bytes of state, the file holds {}",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    let state: SnapshotState =
        postcard::from_bytes(payload).map_err(|e| corrupt(format!("cannot decode: {e}")))?;
    // The CRC says the bytes are what was written, not that a writer was sane: the parts
    // a restore indexes must agree with the shape.
    if state.vcpus.len() != usize::from(state.shape.vcpus)
        || state.transports.len() != state.shape.devices.len()
    {
        return Err(corrupt(format!(
            "{} vCPU states and {} device states for a VM of {} vCPUs and {} devices",
            state.vcpus.len(),
            state.transports.len(),
            state.shape.vcpus,
            state.shape.devices.len()
        )));
    }
    Ok(state)
}

/// Creates (or truncates) `path` readable and writable by its owner only, whatever the
/// process umask (the virtio-fs server sets it to 0): snapshots hold the guest's memory.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode through open(2): narrow it too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> SnapshotState {
        SnapshotState {
            hull_version: "0.1.0".into(),
            shape: VmShape {
                vcpus: 0,
                memory_mib: 256,
                devices: vec![],
            },
            emulated_host: true,
            vm: VmState {
                clock: Default::default(),
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
            },
            vcpus: vec![],
            serial: SerialSnapshot::default(),
            transports: vec![],
        }
    }

    fn written() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        write_state(&path, &sample()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        (dir, path, bytes)
    }

    #[test]
    fn a_state_file_round_trips() {
        let (_d, path, _) = written();
        let s = read_state(&path).unwrap();
        assert_eq!(s.shape, sample().shape);
        assert!(s.emulated_host);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn another_format_version_is_refused_by_name() {
        let (_d, path, mut bytes) = written();
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        let e = decode_state(&path, &bytes).unwrap_err().to_string();
        assert!(
            e.contains("format version 7 (written by hull 0.1.0)"),
            "{e}"
        );
        assert!(e.contains("reads version 2"), "{e}");
    }

    #[test]
    fn foreign_truncated_and_corrupt_files_are_refused() {
        let (_d, path, bytes) = written();
        let e = decode_state(&path, b"{\"not\": \"a snapshot\"}").unwrap_err();
        assert!(matches!(e, SnapshotError::NotASnapshot { .. }), "{e}");
        let e = decode_state(&path, &bytes[..bytes.len() - 3]).unwrap_err();
        assert!(e.to_string().contains("the header announces"), "{e}");
        let e = decode_state(&path, &bytes[..10]).unwrap_err();
        assert!(e.to_string().contains("shorter than the header"), "{e}");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let e = decode_state(&path, &flipped).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        let mut huge = bytes;
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_state(&path, &huge).is_err());
    }

    #[test]
    fn parts_that_disagree_with_the_shape_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let mut s = sample();
        s.shape.vcpus = 2;
        write_state(&path, &s).unwrap();
        let e = read_state(&path).unwrap_err().to_string();
        assert!(
            e.contains("0 vCPU states and 0 device states for a VM of 2 vCPUs"),
            "{e}"
        );
    }

    #[test]
    fn a_different_shape_names_the_field() {
        let s = VmShape {
            vcpus: 1,
            memory_mib: 256,
            devices: vec![2, 19, 4],
        };
        let mut c = s.clone();
        c.devices = vec![2, 4];
        let e = s.check(&c).unwrap_err().to_string();
        assert!(e.contains("virtio devices [block, vsock, rng]"), "{e}");
        assert!(e.contains("asks for [block, rng]"), "{e}");
        c = s.clone();
        c.memory_mib = 512;
        assert!(s
            .check(&c)
            .unwrap_err()
            .to_string()
            .contains("memory_mib 256"));
        assert!(s.check(&s).is_ok());
    }
}
