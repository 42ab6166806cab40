//! The VM description `hull-vmm` reads: one serde type ([`ConfigFile`]), written by the
//! host library as JSON into the sandbox's run directory and handed over with `--config`,
//! or written by a person as TOML. Every key is optional and unknown keys are refused; the
//! VMM applies the defaults and checks the whole of it before any KVM object exists.
//!
//! The defaults and limits a host needs before it starts a VMM live here too, once.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the guest kernel is built and cached by `kernel-config/build.sh`.
pub const DEFAULT_KERNEL: &str = "/var/cache/hull/kernel/vmlinux";
/// Where `resources/build-image.sh` puts the guest root image.
pub const DEFAULT_ROOT_IMAGE: &str = "/var/cache/hull/image/rootfs.erofs";
pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u32 = 128;
/// The guest needs room past the end of its kernel image for page tables, the memory map,
/// slab caches and PID 1; below this margin it panics early with an unhelpful message.
pub const MEMORY_MARGIN_MIB: u64 = 16;
/// Guest RAM is placed below the 32-bit MMIO gap and then above 4 GiB; we cap the total so a
/// typo (64000 instead of 640) fails here rather than as an mmap failure.
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;
/// The least memory a host asks for a sandbox VM: hull's kernel ends below 48 MiB and
/// the VMM wants [`MEMORY_MARGIN_MIB`] past it. The VMM checks the real kernel's end.
pub const MIN_MEMORY_MIB: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid {format} (fix or remove the offending key)")]
    Parse {
        path: PathBuf,
        format: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Longest `vsock.uds_path`: `sun_path` holds 107 bytes plus NUL, and guest-initiated
/// connections append `_<port>` (up to 11 bytes).
pub const MAX_VSOCK_PATH: usize = 107 - 11;

/// A console file's cap unless the configuration says otherwise: enough for several
/// verbose boots, small next to a sandbox's memory (run directories are on tmpfs).
pub const DEFAULT_CONSOLE_MAX_BYTES: u64 = 4 << 20;

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleOutput {
    Stdout,
    None,
    File(PathBuf),
}

impl Serialize for ConsoleOutput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ConsoleOutput::Stdout => s.serialize_str("stdout"),
            ConsoleOutput::None => s.serialize_str("none"),
            ConsoleOutput::File(p) => match p.to_str() {
                Some(p) => s.serialize_str(p),
                None => Err(serde::ser::Error::custom(format!(
                    "console path {} is not UTF-8",
                    p.display()
                ))),
            },
        }
    }
}

impl<'de> Deserialize<'de> for ConsoleOutput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ConsoleOutput::parse(&s))
    }
}

impl ConsoleOutput {
    /// `stdout`, `none`, or a file path.
    pub fn parse(s: &str) -> Self {
        match s {
            "stdout" | "-" => ConsoleOutput::Stdout,
            "none" | "off" => ConsoleOutput::None,
            path => ConsoleOutput::File(PathBuf::from(path)),
        }
    }
}

/// Whether to apply the work-arounds for hosts whose KVM emulates guest kernel mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuirksMode {
    /// Detect the host (see `quirks::detect_host`).
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for QuirksMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("quirks must be auto, on or off, not {other:?}")),
        }
    }
}

/// The on-disk format of a drive image. Only raw is supported, and it is always given
/// (defaulting to raw), never guessed from the image's first bytes: a guest that writes a
/// qcow2 header into its raw disk must not make the host read it as qcow2 next boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriveFormat {
    #[default]
    Raw,
}

/// The virtio-vsock device: the guest's context ID and the host unix socket of the hybrid
/// backend (Firecracker's `CONNECT <port>` protocol; guest connections to host port P go
/// to `<uds_path>_<P>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    #[serde(default = "default_guest_cid")]
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

/// A virtio-net interface backed by a tap: by name (opened, and created if missing, by the
/// VMM) or as a descriptor the caller already opened with IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR and passed down (a CNI plugin or the shim).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// What a snapshot calls this interface (default `net<N>`, N its place in the list);
    /// a restore matches devices by id, so the list may be reordered between the two.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub tap: Option<String>,
    #[serde(default)]
    pub tap_fd: Option<i32>,
    /// The guest's MAC address; without one the guest makes up its own.
    #[serde(default)]
    pub mac: Option<String>,
}

/// Longest device id.
pub const MAX_DEVICE_ID: usize = 32;

/// Whether `id` can name a device: 1 to [`MAX_DEVICE_ID`] of `a-z 0-9 _ -`.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

pub fn default_guest_cid() -> u64 {
    3
}

/// A virtio-blk disk backed by a raw image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// What a snapshot calls this disk (default `root` for the root disk, `drive<N>` for
    /// the others, N its place in the list); a restore matches devices by id, so the list
    /// may be reordered between the two.
    #[serde(default)]
    pub id: Option<String>,
    pub path: PathBuf,
    #[serde(default = "default_true")]
    pub read_only: bool,
    /// This disk is the guest's `/` (it becomes `root=/dev/vdX`).
    #[serde(default)]
    pub root: bool,
    /// Filesystem type passed as `rootfstype=` when `root` is set.
    #[serde(default)]
    pub fstype: Option<String>,
    /// Serial number reported by VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub format: DriveFormat,
}

fn default_true() -> bool {
    true
}

/// The file format: every key optional, unknown keys rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline_extra: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
    pub console: Option<ConsoleOutput>,
    /// Most bytes written to a console file (default [`DEFAULT_CONSOLE_MAX_BYTES`]); past
    /// it the guest's output is dropped after one closing note.
    pub console_max_bytes: Option<u64>,
    pub quirks: Option<QuirksMode>,
    #[serde(default)]
    pub drive: Vec<DriveConfig>,
    pub vsock: Option<VsockConfig>,
    /// Attach a virtio-rng device (default true).
    pub entropy: Option<bool>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// The control API's unix socket (pause, resume, shutdown, metrics; docs/control-api.md).
    pub api_socket: Option<PathBuf>,
    /// Empty virtio-blk devices whose backing the control API attaches and detaches while
    /// the VM runs (container root filesystems; default 0).
    pub drive_slots: Option<u32>,
    /// Attach a virtio-fs device with this tag (what `mount -t virtiofs TAG` names); the
    /// control API shares host directories through it while the VM runs.
    pub shared_fs: Option<String>,
    /// Confine the VMM before its vCPUs start (docs/security.md, "the VMM's jail"). The
    /// host's launcher sets it, together with the namespaces the process starts in.
    #[serde(default)]
    pub jail: Option<JailConfig>,
    /// An inherited unix datagram socket on which the host hands over open descriptors
    /// that control calls name by token ([`crate::handoff`]).
    #[serde(default)]
    pub handoff_fd: Option<i32>,
}

/// What a jailed VMM becomes once it holds every host resource it needs: an unprivileged
/// uid and gid, no capabilities, `no_new_privs`, a root that holds only its devices and a
/// private `/proc`, and bounded resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// An empty directory the VMM mounts its jail on, in its own mount namespace: the
    /// host never sees what is mounted there. Every VMM may use the same one.
    pub root: PathBuf,
    /// Not 0: the ids the VMM runs as.
    pub uid: u32,
    pub gid: u32,
    /// An inherited pipe's read end whose write end only the launching process holds:
    /// the VMM re-arms its parent-death signal after dropping privileges (which clears
    /// it) and then exits at once if this pipe shows the launcher already gone.
    #[serde(default)]
    pub lifeline_fd: Option<i32>,
    /// RLIMIT_NOFILE: host descriptors the guest can make the VMM hold (vsock
    /// connections, shared files the guest has looked up).
    #[serde(default = "default_max_open_files")]
    pub max_open_files: u64,
    /// RLIMIT_NPROC: the threads (vCPUs, devices, the control API) of every process of
    /// the VMM's uid together.
    #[serde(default = "default_max_threads")]
    pub max_threads: u64,
}

pub const fn default_max_open_files() -> u64 {
    4096
}

pub const fn default_max_threads() -> u64 {
    65_536
}

impl ConfigFile {
    /// Reads a `.json` file as JSON and anything else as TOML.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| LoadError::Parse {
                path: path.to_path_buf(),
                format: "JSON",
                source: Box::new(e),
            })
        } else {
            toml::from_str(&text).map_err(|e| LoadError::Parse {
                path: path.to_path_buf(),
                format: "TOML",
                source: Box::new(e),
            })
        }
    }
}
