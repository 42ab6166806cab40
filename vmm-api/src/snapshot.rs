//! Snapshot files as both sides see them: the framing of the state file, the metadata at
//! the head of its payload ([`SnapshotMeta`]: who wrote it, the VM's shape) and the names
//! of the files in a snapshot directory. The VMM appends the machine state after the
//! metadata; a host reads the metadata alone ([`read_meta`]) to judge a template without
//! knowing the VMM's types.
//!
//! The state file is `magic | format version (u32 LE) | payload length (u64 LE) | CRC32 of
//! the payload (u32 LE) | payload`, the payload being postcard's encoding of a struct whose
//! first field is [`SnapshotMeta`]. A reader checks the magic (is this a hull snapshot at
//! all), the format version (another release's layout is refused by name, never guessed
//! at), the length and the CRC (a truncated or corrupted file is refused) before decoding
//! anything.
//!
//! The memory file is guest RAM in the layout of the booted VM's memfd, with holes for
//! zero pages.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// File names inside a snapshot directory.
pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";

const MAGIC: &[u8; 8] = b"HULLSNAP";
/// The state file layout this build reads and writes. Bump it whenever the payload or
/// anything inside it changes shape. 3: devices are kept by id with typed state.
pub const FORMAT_VERSION: u32 = 3;
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
    #[error("{path} has snapshot format version {found} (written by hull {writer}); this hull reads version {FORMAT_VERSION}: take a new snapshot (templates are rebuilt by themselves)")]
    Version {
        path: PathBuf,
        found: u32,
        writer: String,
    },
    #[error("{path} is corrupt ({why}); take a new snapshot")]
    Corrupt { path: PathBuf, why: String },
    #[error("encode the snapshot state")]
    Encode(#[source] postcard::Error),
    #[error("the snapshot is of a VM with {what} {snapshot}, but this configuration asks for {config}; restore with the VM shape the snapshot was taken with")]
    Shape {
        what: &'static str,
        snapshot: String,
        config: String,
    },
}

/// A virtio device as a snapshot names it: a stable id (what the restore matches on, so
/// the order in which a VMM creates its devices does not matter) and its virtio type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId {
    /// `root`, `drive<N>` (the configuration's other drives, in order), `slot<N>`,
    /// `net<N>`, `vsock`, `rng`, `fs`.
    pub name: String,
    /// The virtio device ID (`virtio_bindings::virtio_ids`).
    pub device_type: u32,
}

impl DeviceId {
    pub fn new(name: impl Into<String>, device_type: u32) -> Self {
        DeviceId {
            name: name.into(),
            device_type,
        }
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, type_name(self.device_type))
    }
}

/// The virtio device type's name, for messages.
pub fn type_name(device_type: u32) -> String {
    match device_type {
        1 => "net".into(),
        2 => "block".into(),
        4 => "rng".into(),
        19 => "vsock".into(),
        26 => "fs".into(),
        other => format!("type {other}"),
    }
}

/// What the VM looked like: a restore must build the same shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmShape {
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Every virtio device, in no particular order.
    pub devices: Vec<DeviceId>,
}

impl VmShape {
    /// Checks that a VM built from the restore configuration (`config`) matches the
    /// snapshot (`self`): the same vCPUs and memory, and the same device ids with the
    /// same types, whatever order either lists them in.
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
        let by_name = |devices: &[DeviceId]| -> BTreeMap<String, u32> {
            devices
                .iter()
                .map(|d| (d.name.clone(), d.device_type))
                .collect()
        };
        let (snap, conf) = (by_name(&self.devices), by_name(&config.devices));
        if snap != conf {
            return mismatch("virtio devices", device_list(&snap), device_list(&conf));
        }
        Ok(())
    }
}

fn device_list(devices: &BTreeMap<String, u32>) -> String {
    let names: Vec<String> = devices
        .iter()
        .map(|(name, t)| format!("{name} ({})", type_name(*t)))
        .collect();
    format!("[{}]", names.join(", "))
}

/// The head of every state file's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The hull release that wrote it (for messages; compatibility is the format version).
    /// The first field in every format version, so another version's writer can be named.
    pub hull_version: String,
    pub shape: VmShape,
    /// Whether the guest was booted with the emulated-host quirks (its command line has
    /// them, so the restored VMM must apply the matching recoveries).
    pub emulated_host: bool,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// Writes `state` (whose first field is a [`SnapshotMeta`]) to `path`, through a temporary
/// file renamed into place so a reader never sees half a file.
pub fn write_state<T: Serialize>(path: &Path, state: &T) -> Result<(), SnapshotError> {
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

/// Reads and checks a state file and decodes all of it as `T`.
pub fn read_state<T: DeserializeOwned>(path: &Path) -> Result<T, SnapshotError> {
    let bytes = read_file(path)?;
    decode_state(path, &bytes)
}

/// Reads and checks a state file and decodes only its [`SnapshotMeta`].
pub fn read_meta(path: &Path) -> Result<SnapshotMeta, SnapshotError> {
    decode_meta(path, &read_file(path)?)
}

/// [`read_meta`] on bytes already read; `path` names them in errors.
pub fn decode_meta(path: &Path, bytes: &[u8]) -> Result<SnapshotMeta, SnapshotError> {
    let payload = checked_payload(path, bytes)?;
    postcard::take_from_bytes::<SnapshotMeta>(payload)
        .map(|(meta, _)| meta)
        .map_err(|e| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            why: format!("cannot decode: {e}"),
        })
}

fn read_file(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let mut bytes = Vec::new();
    // Never more than a valid file can hold: a huge file is refused by its length check.
    File::open(path)
        .map_err(io_err("open", path))?
        .take(HEADER_LEN as u64 + MAX_PAYLOAD + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    Ok(bytes)
}

/// [`read_state`] on bytes already read; `path` names them in errors.
pub fn decode_state<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, SnapshotError> {
    let payload = checked_payload(path, bytes)?;
    postcard::from_bytes(payload).map_err(|e| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        why: format!("cannot decode: {e}"),
    })
}

/// The payload, once magic, version, length and CRC are checked (in that order).
fn checked_payload<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], SnapshotError> {
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
    Ok(payload)
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

    /// A payload shaped like the VMM's: the metadata, then machine state.
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Payload {
        meta: SnapshotMeta,
        rest: Vec<u32>,
    }

    fn sample() -> Payload {
        Payload {
            meta: SnapshotMeta {
                hull_version: "0.1.0".into(),
                shape: VmShape {
                    vcpus: 1,
                    memory_mib: 256,
                    devices: vec![DeviceId::new("root", 2), DeviceId::new("vsock", 19)],
                },
                emulated_host: true,
            },
            rest: vec![7, 8, 9],
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
    fn a_state_file_round_trips_and_its_meta_reads_alone() {
        let (_d, path, _) = written();
        assert_eq!(read_state::<Payload>(&path).unwrap(), sample());
        assert_eq!(read_meta(&path).unwrap(), sample().meta);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn another_format_version_is_refused_by_name() {
        let (_d, path, mut bytes) = written();
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        let e = decode_state::<Payload>(&path, &bytes)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("format version 7 (written by hull 0.1.0)"),
            "{e}"
        );
        assert!(
            e.contains(&format!("reads version {FORMAT_VERSION}")),
            "{e}"
        );
    }

    #[test]
    fn foreign_truncated_and_corrupt_files_are_refused() {
        let (_d, path, bytes) = written();
        let e = decode_state::<Payload>(&path, b"{\"not\": \"a snapshot\"}").unwrap_err();
        assert!(matches!(e, SnapshotError::NotASnapshot { .. }), "{e}");
        let e = decode_state::<Payload>(&path, &bytes[..bytes.len() - 3]).unwrap_err();
        assert!(e.to_string().contains("the header announces"), "{e}");
        let e = decode_state::<Payload>(&path, &bytes[..10]).unwrap_err();
        assert!(e.to_string().contains("shorter than the header"), "{e}");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let e = decode_state::<Payload>(&path, &flipped).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        let mut huge = bytes;
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_state::<Payload>(&path, &huge).is_err());
    }

    #[test]
    fn devices_match_by_id_in_any_order_and_a_difference_is_named() {
        let s = VmShape {
            vcpus: 1,
            memory_mib: 256,
            devices: vec![
                DeviceId::new("root", 2),
                DeviceId::new("vsock", 19),
                DeviceId::new("rng", 4),
            ],
        };
        let mut c = s.clone();
        c.devices.reverse();
        assert!(s.check(&c).is_ok(), "the order does not matter");
        c.devices.retain(|d| d.name != "vsock");
        let e = s.check(&c).unwrap_err().to_string();
        assert!(
            e.contains("virtio devices [rng (rng), root (block), vsock (vsock)]"),
            "{e}"
        );
        assert!(e.contains("asks for [rng (rng), root (block)]"), "{e}");
        let mut c = s.clone();
        c.devices[1].device_type = 1;
        let e = s.check(&c).unwrap_err().to_string();
        assert!(e.contains("vsock (net)"), "{e}");
        let mut c = s.clone();
        c.memory_mib = 512;
        assert!(s
            .check(&c)
            .unwrap_err()
            .to_string()
            .contains("memory_mib 256"));
    }
}
