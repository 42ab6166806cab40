//! VM configuration: a TOML or JSON file plus command-line overrides, validated as a whole
//! before any KVM object exists.
//!
//! Every rejection names the field, what is wrong with it and how to fix it; `hull-vmm`
//! exits with status 2 for all of them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub use hull_vmm_api::config::*;
use hull_vmm_api::snapshot::{DeviceId, VmShape};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "kernel: {path} does not exist; build it with kernel-config/build.sh or pass --kernel"
    )]
    KernelMissing { path: PathBuf },
    #[error("kernel: cannot read {path}")]
    KernelUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel: {path} is neither an x86_64 ELF vmlinux nor a bzImage ({detail}); pass an uncompressed vmlinux")]
    KernelFormat { path: PathBuf, detail: String },
    #[error("initrd: {path} does not exist; fix the path or drop --initrd")]
    InitrdMissing { path: PathBuf },
    #[error("drive {index}: image {path} does not exist; build it with resources/build-image.sh or fix the path")]
    ImageMissing { index: usize, path: PathBuf },
    #[error("drive {index}: only one drive may be the root device (drive {first} already is)")]
    TwoRoots { index: usize, first: usize },
    #[error("vcpus = 0: a VM needs at least one vCPU; set vcpus to 1 or more")]
    NoVcpus,
    #[error("vcpus = {requested}: this host has {host} CPUs; set vcpus to at most {host}")]
    TooManyVcpus { requested: u32, host: u32 },
    #[error("memory_mib = {mib} is too small for kernel {kernel}, whose image ends at {end_mib} MiB; set memory_mib to at least {min_mib}")]
    MemoryTooSmall {
        mib: u32,
        kernel: PathBuf,
        end_mib: u64,
        min_mib: u64,
    },
    #[error("memory_mib = {mib} is above the supported {max} MiB; lower memory_mib")]
    MemoryTooLarge { mib: u32, max: u32 },
    #[error(
        "console = {path}: the directory {dir} does not exist; create it or choose another path"
    )]
    ConsoleDir { path: PathBuf, dir: PathBuf },
    #[error("--net {0:?}: expected tap=NAME[,mac=MAC] or fd=N[,mac=MAC]")]
    NetFlag(String),
    #[error(
        "net {index}: give exactly one of tap (an interface name) and tap_fd (an open descriptor)"
    )]
    NetBackend { index: usize },
    #[error("net {index}: tap name {name:?} must be 1 to 15 bytes")]
    NetTapName { index: usize, name: String },
    #[error("net {index}: mac {mac:?} is not six hex bytes like 02:00:00:00:00:01")]
    NetMac { index: usize, mac: String },
    #[error("net {index}: mac {mac} is a multicast address; clear the low bit of its first byte")]
    NetMacMulticast { index: usize, mac: String },
    #[error("vsock.guest_cid = {0}: must be between 3 and 4294967294 (0-2 are reserved for the hypervisor, loopback and host)")]
    VsockCid(u64),
    #[error("vsock.uds_path = {path}: the directory {dir} does not exist; create it or choose another path")]
    VsockDir { path: PathBuf, dir: PathBuf },
    #[error("vsock.uds_path = {0}: too long for a unix socket once \"_<port>\" is appended (at most {max} bytes); choose a shorter path", max = MAX_VSOCK_PATH)]
    VsockPathTooLong(PathBuf),
    #[error("api_socket = {0}: longer than 107 bytes, the most a unix socket path holds; choose a shorter path")]
    ApiSocketTooLong(PathBuf),
    #[error(
        "api_socket = {path}: the directory {dir} does not exist; create it or choose another path"
    )]
    ApiSocketDir { path: PathBuf, dir: PathBuf },
    #[error("jail: uid {uid} and gid {gid}: a jailed VMM runs as neither uid 0 nor gid 0; choose ids from the host's range")]
    JailRoot { uid: u32, gid: u32 },
    #[error("jail.root = {0}: not a directory; the launcher creates an empty one per VM")]
    JailDir(PathBuf),
    #[error("shared_fs = {0:?}: the virtio-fs tag must be 1-36 bytes with no NUL")]
    SharedFsTag(String),
    #[error("{devices} virtio devices ({drive_slots} of them drive slots): a VM has at most {MAX_VIRTIO_DEVICES}; lower drive_slots or drop drives")]
    TooManyDevices { devices: u32, drive_slots: u32 },
    #[error("device id {0:?}: use 1 to {MAX_DEVICE_ID} characters of a-z, 0-9, _ and -")]
    DeviceId(String),
    #[error("device id {0:?} names two devices; give each drive and net a different id")]
    DuplicateDeviceId(String),
}

/// A validated VM description. Only [`VmConfig::validate`] makes one.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub kernel_format: KernelFormat,
    pub initrd: Option<PathBuf>,
    pub cmdline_extra: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub console: ConsoleOutput,
    pub console_max_bytes: u64,
    pub quirks: QuirksMode,
    pub drives: Vec<DriveConfig>,
    pub vsock: Option<VsockConfig>,
    pub entropy: bool,
    pub net: Vec<NetConfig>,
    pub api_socket: Option<PathBuf>,
    pub drive_slots: u8,
    pub shared_fs: Option<String>,
    /// Confine the VMM before the guest runs ([`crate::jail`]).
    pub jail: Option<hull_vmm_api::config::JailConfig>,
    /// The inherited descriptor hand-over socket ([`hull_vmm_api::handoff`]).
    pub handoff_fd: Option<i32>,
}

/// Most virtio-mmio devices a VM can have: one interrupt pin each.
pub const MAX_VIRTIO_DEVICES: u32 =
    crate::arch::x86_64::layout::IOAPIC_PINS - crate::arch::x86_64::layout::VIRTIO_IRQ_BASE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// Uncompressed ELF `vmlinux`; `end` is the highest physical address it occupies.
    Elf {
        end: u64,
    },
    BzImage,
}

impl VmConfig {
    /// Applies defaults and checks every field against the files on disk and this host.
    /// `host_cpus` is passed in so tests can pin it.
    pub fn validate(file: ConfigFile, host_cpus: u32) -> Result<Self, ConfigError> {
        let kernel = file.kernel.unwrap_or_else(|| PathBuf::from(DEFAULT_KERNEL));
        let kernel_format = inspect_kernel(&kernel)?;
        if let Some(initrd) = &file.initrd {
            if !initrd.exists() {
                return Err(ConfigError::InitrdMissing {
                    path: initrd.clone(),
                });
            }
        }
        let vcpus = check_vcpus(file.vcpus.unwrap_or(u32::from(DEFAULT_VCPUS)), host_cpus)?;
        let memory_mib = file.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        check_memory(memory_mib, &kernel, kernel_format)?;
        let drives = check_drives(file.drive, file.initrd.is_none())?;
        let console = file.console.unwrap_or(ConsoleOutput::Stdout);
        if let ConsoleOutput::File(path) = &console {
            check_parent(path).map_err(|dir| ConfigError::ConsoleDir {
                path: path.clone(),
                dir,
            })?;
        }
        if let Some(v) = &file.vsock {
            validate_vsock(v)?;
        }
        for (index, n) in file.net.iter().enumerate() {
            validate_net(index, n)?;
        }
        if let Some(path) = &file.api_socket {
            validate_api_socket(path)?;
        }
        if let Some(jail) = &file.jail {
            if jail.uid == 0 || jail.gid == 0 {
                return Err(ConfigError::JailRoot {
                    uid: jail.uid,
                    gid: jail.gid,
                });
            }
            if !jail.root.is_dir() {
                return Err(ConfigError::JailDir(jail.root.clone()));
            }
        }
        if let Some(tag) = &file.shared_fs {
            let fits = (1..=crate::devices::virtio::fs::TAG_LEN).contains(&tag.len());
            if !fits || tag.contains('\0') {
                return Err(ConfigError::SharedFsTag(tag.clone()));
            }
        }
        let config = VmConfig {
            kernel,
            kernel_format,
            initrd: file.initrd,
            cmdline_extra: file.cmdline_extra.unwrap_or_default(),
            vcpus,
            memory_mib,
            console,
            console_max_bytes: file.console_max_bytes.unwrap_or(DEFAULT_CONSOLE_MAX_BYTES),
            quirks: file.quirks.unwrap_or_default(),
            drives,
            vsock: file.vsock,
            entropy: file.entropy.unwrap_or(true),
            net: file.net,
            api_socket: file.api_socket,
            drive_slots: check_drive_slots(file.drive_slots.unwrap_or(0))?,
            shared_fs: file.shared_fs,
            jail: file.jail,
            handoff_fd: file.handoff_fd,
        };
        config.check_device_count()?;
        config.check_device_ids()?;
        Ok(config)
    }

    /// Every device needs an interrupt pin of its own.
    fn check_device_count(&self) -> Result<(), ConfigError> {
        let devices = self.virtio_plan().len() as u32;
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices {
                devices,
                drive_slots: u32::from(self.drive_slots),
            });
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }

    /// Every virtio device this configuration asks for, with its stable id, in the order
    /// a booted VM places them on the MMIO bus: disks first, the root leading (so it is
    /// /dev/vda), then drive slots, net, vsock, entropy and virtio-fs. The one definition
    /// of device ids: the builder creates what this lists and a snapshot is matched
    /// against it by id.
    pub fn virtio_plan(&self) -> Vec<(DeviceId, VirtioPlan<'_>)> {
        use virtio_bindings::virtio_ids as ids;
        let mut plan = Vec::new();
        let mut drives: Vec<(usize, &DriveConfig)> = self.drives.iter().enumerate().collect();
        drives.sort_by_key(|(_, d)| !d.root);
        for (index, d) in drives {
            let name = match (&d.id, d.root) {
                (Some(id), _) => id.clone(),
                (None, true) => "root".into(),
                (None, false) => format!("drive{index}"),
            };
            plan.push((
                DeviceId::new(name, ids::VIRTIO_ID_BLOCK),
                VirtioPlan::Drive(d),
            ));
        }
        for n in 0..self.drive_slots {
            let id = DeviceId::new(format!("slot{n}"), ids::VIRTIO_ID_BLOCK);
            plan.push((id, VirtioPlan::DriveSlot));
        }
        for (index, n) in self.net.iter().enumerate() {
            let name = n.id.clone().unwrap_or_else(|| format!("net{index}"));
            plan.push((
                DeviceId::new(name, ids::VIRTIO_ID_NET),
                VirtioPlan::Net(index, n),
            ));
        }
        if let Some(v) = &self.vsock {
            let id = DeviceId::new("vsock", ids::VIRTIO_ID_VSOCK);
            plan.push((id, VirtioPlan::Vsock(v)));
        }
        if self.entropy {
            plan.push((
                DeviceId::new("rng", ids::VIRTIO_ID_RNG),
                VirtioPlan::Entropy,
            ));
        }
        if let Some(tag) = &self.shared_fs {
            plan.push((DeviceId::new("fs", ids::VIRTIO_ID_FS), VirtioPlan::Fs(tag)));
        }
        plan
    }

    /// The VM shape this configuration builds (what a snapshot must match to restore
    /// into it).
    pub fn shape(&self) -> VmShape {
        VmShape {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            devices: self.virtio_plan().into_iter().map(|(id, _)| id).collect(),
        }
    }

    /// Given ids are well formed and no two devices share one.
    fn check_device_ids(&self) -> Result<(), ConfigError> {
        let given = self
            .drives
            .iter()
            .map(|d| &d.id)
            .chain(self.net.iter().map(|n| &n.id));
        if let Some(bad) = given.flatten().find(|id| !valid_device_id(id)) {
            return Err(ConfigError::DeviceId(bad.clone()));
        }
        let mut seen = std::collections::HashSet::new();
        for (id, _) in self.virtio_plan() {
            if !seen.insert(id.name.clone()) {
                return Err(ConfigError::DuplicateDeviceId(id.name));
            }
        }
        Ok(())
    }
}

/// What to create for one virtio device of [`VmConfig::virtio_plan`].
#[derive(Debug, Clone, Copy)]
pub enum VirtioPlan<'a> {
    Drive(&'a DriveConfig),
    DriveSlot,
    /// The interface's place in the configuration's list, for messages.
    Net(usize, &'a NetConfig),
    Vsock(&'a VsockConfig),
    Entropy,
    Fs(&'a str),
}

fn check_vcpus(vcpus: u32, host_cpus: u32) -> Result<u8, ConfigError> {
    if vcpus == 0 {
        return Err(ConfigError::NoVcpus);
    }
    if vcpus > host_cpus || vcpus > u32::from(u8::MAX) {
        return Err(ConfigError::TooManyVcpus {
            requested: vcpus,
            host: host_cpus.min(u32::from(u8::MAX)),
        });
    }
    Ok(vcpus as u8)
}

/// Room for the kernel and [`MEMORY_MARGIN_MIB`] past its end, below [`MAX_MEMORY_MIB`].
fn check_memory(mib: u32, kernel: &Path, format: KernelFormat) -> Result<(), ConfigError> {
    if mib > MAX_MEMORY_MIB {
        return Err(ConfigError::MemoryTooLarge {
            mib,
            max: MAX_MEMORY_MIB,
        });
    }
    let kernel_end = match format {
        KernelFormat::Elf { end } => end,
        // A bzImage is loaded at 1 MiB and decompresses itself; its size on disk is a
        // lower bound of what it needs.
        KernelFormat::BzImage => crate::arch::x86_64::layout::HIMEM_START + file_len(kernel)? * 4,
    };
    let end_mib = kernel_end.div_ceil(1 << 20);
    let min_mib = end_mib + MEMORY_MARGIN_MIB;
    if u64::from(mib) < min_mib {
        return Err(ConfigError::MemoryTooSmall {
            mib,
            kernel: kernel.to_path_buf(),
            end_mib,
            min_mib,
        });
    }
    Ok(())
}

/// The drives, hull's image leading as the root when nothing else can be booted (no root
/// disk and no initrd), so extra `--drive`s never silently take the root's place. Each
/// image must exist, and at most one drive is the root.
fn check_drives(
    mut drives: Vec<DriveConfig>,
    no_initrd: bool,
) -> Result<Vec<DriveConfig>, ConfigError> {
    if no_initrd && !drives.iter().any(|d| d.root) {
        let image = DriveConfig {
            id: None,
            path: PathBuf::from(DEFAULT_ROOT_IMAGE),
            read_only: true,
            root: true,
            fstype: Some("erofs".into()),
            serial: None,
            format: DriveFormat::Raw,
        };
        drives.insert(0, image);
    }
    let mut root = None;
    for (index, d) in drives.iter().enumerate() {
        if !d.path.exists() {
            return Err(ConfigError::ImageMissing {
                index,
                path: d.path.clone(),
            });
        }
        if d.root {
            if let Some(first) = root {
                return Err(ConfigError::TwoRoots { index, first });
            }
            root = Some(index);
        }
    }
    Ok(drives)
}

fn check_drive_slots(slots: u32) -> Result<u8, ConfigError> {
    u8::try_from(slots).map_err(|_| ConfigError::TooManyDevices {
        devices: slots,
        drive_slots: slots,
    })
}

/// The directory `path` would be made in, when it does not exist (`Err`).
fn check_parent(path: &Path) -> Result<(), PathBuf> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Err(dir.to_path_buf()),
        _ => Ok(()),
    }
}

fn validate_net(index: usize, n: &NetConfig) -> Result<(), ConfigError> {
    match (&n.tap, n.tap_fd) {
        (Some(name), None) => {
            if name.is_empty() || name.len() > 15 || name.contains(['/', '\0', ' ']) {
                return Err(ConfigError::NetTapName {
                    index,
                    name: name.clone(),
                });
            }
        }
        (None, Some(fd)) if fd >= 0 => {}
        _ => return Err(ConfigError::NetBackend { index }),
    }
    if let Some(mac) = &n.mac {
        let parsed = parse_mac(mac).ok_or_else(|| ConfigError::NetMac {
            index,
            mac: mac.clone(),
        })?;
        if parsed[0] & 1 != 0 {
            return Err(ConfigError::NetMacMulticast {
                index,
                mac: mac.clone(),
            });
        }
    }
    Ok(())
}

fn validate_api_socket(path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().len() > 107 {
        return Err(ConfigError::ApiSocketTooLong(path.to_path_buf()));
    }
    check_parent(path).map_err(|dir| ConfigError::ApiSocketDir {
        path: path.to_path_buf(),
        dir,
    })
}

fn validate_vsock(v: &VsockConfig) -> Result<(), ConfigError> {
    if !(3..=u64::from(u32::MAX - 1)).contains(&v.guest_cid) {
        return Err(ConfigError::VsockCid(v.guest_cid));
    }
    if v.uds_path.as_os_str().len() > MAX_VSOCK_PATH {
        return Err(ConfigError::VsockPathTooLong(v.uds_path.clone()));
    }
    check_parent(&v.uds_path).map_err(|dir| ConfigError::VsockDir {
        path: v.uds_path.clone(),
        dir,
    })
}

fn file_len(path: &Path) -> Result<u64, ConfigError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| ConfigError::KernelUnreadable {
            path: path.to_path_buf(),
            source,
        })
}

/// Identifies the kernel image format and, for ELF, where its loadable segments end.
pub fn inspect_kernel(path: &Path) -> Result<KernelFormat, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::KernelMissing {
            path: path.to_path_buf(),
        });
    }
    let unreadable = |source| ConfigError::KernelUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let format = |detail: String| ConfigError::KernelFormat {
        path: path.to_path_buf(),
        detail,
    };
    let mut f = File::open(path).map_err(unreadable)?;
    let mut head = vec![0u8; 0x210];
    let n = read_up_to(&mut f, &mut head).map_err(unreadable)?;
    head.truncate(n);
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    if head.len() < 64 || &head[..4] != b"\x7fELF" {
        return Err(format("no ELF magic and no bzImage header".into()));
    }
    let elf = ElfHeader::parse(&head).map_err(format)?;
    let mut end = 0u64;
    for i in 0..u64::from(elf.phnum) {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(elf.phoff + i * u64::from(elf.phentsize)))
            .map_err(unreadable)?;
        f.read_exact(&mut ph)
            .map_err(|_| format(format!("program header {i} is truncated")))?;
        let p_type = u32::from_le_bytes(ph[0..4].try_into().unwrap_or_default());
        if p_type != 1 {
            continue; // not PT_LOAD
        }
        let paddr = u64::from_le_bytes(ph[24..32].try_into().unwrap_or_default());
        let memsz = u64::from_le_bytes(ph[40..48].try_into().unwrap_or_default());
        let seg_end = paddr
            .checked_add(memsz)
            .ok_or_else(|| format(format!("program header {i} wraps the address space")))?;
        end = end.max(seg_end);
    }
    if end == 0 {
        return Err(format("no loadable segments".into()));
    }
    Ok(KernelFormat::Elf { end })
}

struct ElfHeader {
    phoff: u64,
    phentsize: u16,
    phnum: u16,
}

impl ElfHeader {
    fn parse(h: &[u8]) -> Result<Self, String> {
        if h[4] != 2 {
            return Err("ELF file is not 64-bit".into());
        }
        if h[5] != 1 {
            return Err("ELF file is not little-endian".into());
        }
        let machine = u16::from_le_bytes([h[18], h[19]]);
        if machine != 62 {
            return Err(format!("ELF machine is {machine}, not x86_64 (62)"));
        }
        let phoff = u64::from_le_bytes(h[32..40].try_into().map_err(|_| "short header")?);
        let phentsize = u16::from_le_bytes([h[54], h[55]]);
        let phnum = u16::from_le_bytes([h[56], h[57]]);
        if phentsize < 56 {
            return Err(format!(
                "program header size {phentsize} is smaller than 56"
            ));
        }
        Ok(ElfHeader {
            phoff,
            phentsize,
            phnum,
        })
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal x86_64 ELF with one PT_LOAD segment at `paddr` of `memsz` bytes.
    pub(crate) fn tiny_elf(paddr: u64, memsz: u64) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[6] = 1;
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&62u16.to_le_bytes());
        e[24..32].copy_from_slice(&paddr.to_le_bytes()); // entry
        e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        e[52..54].copy_from_slice(&64u16.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut e[64..];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes());
        ph[8..16].copy_from_slice(&0u64.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&paddr.to_le_bytes());
        ph[24..32].copy_from_slice(&paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&120u64.to_le_bytes()); // filesz
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        e
    }

    struct Fixture {
        dir: tempfile::TempDir,
        kernel: PathBuf,
        image: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, tiny_elf(16 << 20, 20 << 20)).unwrap();
        let image = dir.path().join("root.img");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        Fixture { dir, kernel, image }
    }

    fn file_for(f: &Fixture) -> ConfigFile {
        ConfigFile {
            kernel: Some(f.kernel.clone()),
            drive: vec![DriveConfig {
                id: None,
                path: f.image.clone(),
                read_only: true,
                root: true,
                fstype: None,
                serial: None,
                format: DriveFormat::Raw,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn accepts_defaults_around_a_valid_kernel_and_image() {
        let f = fixture();
        let cfg = VmConfig::validate(file_for(&f), 2).unwrap();
        assert_eq!(cfg.vcpus, 1);
        assert_eq!(cfg.memory_mib, 128);
        assert_eq!(cfg.kernel_format, KernelFormat::Elf { end: 36 << 20 });
        assert_eq!(cfg.console, ConsoleOutput::Stdout);
    }

    #[test]
    fn rejects_unknown_key_naming_it() {
        let f = fixture();
        let p = f.dir.path().join("vm.toml");
        std::fs::write(&p, "vcpus = 1\nmemroy_mib = 64\n").unwrap();
        let err = ConfigFile::load(&p).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("memroy_mib"), "{chain}");
    }

    #[test]
    fn reads_json_when_the_extension_says_so() {
        let f = fixture();
        let p = f.dir.path().join("vm.json");
        std::fs::write(&p, r#"{"vcpus": 2, "memory_mib": 256, "console": "none"}"#).unwrap();
        let file = ConfigFile::load(&p).unwrap();
        assert_eq!(file.vcpus, Some(2));
        assert_eq!(file.console, Some(ConsoleOutput::None));
    }

    #[test]
    fn rejects_missing_kernel() {
        let f = fixture();
        let mut file = file_for(&f);
        file.kernel = Some(f.dir.path().join("nope"));
        assert!(matches!(
            VmConfig::validate(file, 2),
            Err(ConfigError::KernelMissing { .. })
        ));
    }

    #[test]
    fn rejects_non_elf_kernel() {
        let f = fixture();
        let mut file = file_for(&f);
        let bogus = f.dir.path().join("bogus");
        std::fs::File::create(&bogus)
            .unwrap()
            .write_all(&[0x55u8; 4096])
            .unwrap();
        file.kernel = Some(bogus);
        let err = VmConfig::validate(file, 2).unwrap_err();
        assert!(matches!(err, ConfigError::KernelFormat { .. }));
        assert!(err.to_string().contains("vmlinux"));
    }

    #[test]
    fn rejects_elf_for_another_machine() {
        let f = fixture();
        let mut elf = tiny_elf(16 << 20, 1 << 20);
        elf[18..20].copy_from_slice(&183u16.to_le_bytes()); // aarch64
        std::fs::write(&f.kernel, elf).unwrap();
        let err = VmConfig::validate(file_for(&f), 2).unwrap_err();
        assert!(err.to_string().contains("not x86_64"), "{err}");
    }

    #[test]
    fn rejects_missing_image() {
        let f = fixture();
        let mut file = file_for(&f);
        file.drive[0].path = f.dir.path().join("missing.erofs");
        assert!(matches!(
            VmConfig::validate(file, 2),
            Err(ConfigError::ImageMissing { index: 0, .. })
        ));
    }

    #[test]
    fn rejects_zero_vcpus() {
        let f = fixture();
        let mut file = file_for(&f);
        file.vcpus = Some(0);
        assert!(matches!(
            VmConfig::validate(file, 2),
            Err(ConfigError::NoVcpus)
        ));
    }

    #[test]
    fn rejects_more_vcpus_than_the_host_has() {
        let f = fixture();
        let mut file = file_for(&f);
        file.vcpus = Some(3);
        let err = VmConfig::validate(file, 2).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::TooManyVcpus {
                requested: 3,
                host: 2
            }
        ));
    }

    #[test]
    fn rejects_memory_below_kernel_end_plus_margin() {
        let f = fixture();
        let mut file = file_for(&f);
        file.memory_mib = Some(40); // kernel ends at 36 MiB, needs 52
        let err = VmConfig::validate(file, 2).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::MemoryTooSmall {
                    mib: 40,
                    end_mib: 36,
                    min_mib: 52,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn rejects_absurd_memory() {
        let f = fixture();
        let mut file = file_for(&f);
        file.memory_mib = Some(u32::MAX);
        assert!(matches!(
            VmConfig::validate(file, 2),
            Err(ConfigError::MemoryTooLarge { .. })
        ));
    }

    #[test]
    fn rejects_two_root_drives() {
        let f = fixture();
        let mut file = file_for(&f);
        file.drive.push(file.drive[0].clone());
        assert!(matches!(
            VmConfig::validate(file, 2),
            Err(ConfigError::TwoRoots { index: 1, first: 0 })
        ));
    }

    #[test]
    fn rejects_console_file_in_missing_directory() {
        let f = fixture();
        let mut file = file_for(&f);
        file.console = Some(ConsoleOutput::parse("/nonexistent-dir/console.log"));
        assert!(matches!(
            VmConfig::validate(file, 2),
            Err(ConfigError::ConsoleDir { .. })
        ));
    }

    #[test]
    fn vsock_and_entropy_are_validated_and_defaulted() {
        let f = fixture();
        let cfg = VmConfig::validate(file_for(&f), 2).unwrap();
        assert!(cfg.entropy, "entropy device on by default");
        assert!(cfg.vsock.is_none());

        let toml = format!(
            "kernel = {:?}\n[vsock]\nuds_path = {:?}\n",
            f.kernel,
            f.dir.path().join("v.sock")
        );
        let path = f.dir.path().join("vm.toml");
        std::fs::write(&path, toml).unwrap();
        let mut file = ConfigFile::load(&path).unwrap();
        file.drive = file_for(&f).drive;
        let cfg = VmConfig::validate(file, 2).unwrap();
        assert_eq!(cfg.vsock.unwrap().guest_cid, 3);

        for (cid, dir) in [(2u64, f.dir.path()), (1 << 32, f.dir.path())] {
            let mut file = file_for(&f);
            file.vsock = Some(VsockConfig {
                guest_cid: cid,
                uds_path: dir.join("v.sock"),
            });
            assert!(matches!(
                VmConfig::validate(file, 2),
                Err(ConfigError::VsockCid(c)) if c == cid
            ));
        }
        let mut file = file_for(&f);
        file.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/nonexistent-dir/v.sock".into(),
        });
        assert!(matches!(
            VmConfig::validate(file, 2),
            Err(ConfigError::VsockDir { .. })
        ));
        let mut file = file_for(&f);
        file.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: PathBuf::from(format!("/tmp/{}", "x".repeat(100))),
        });
        assert!(matches!(
            VmConfig::validate(file, 2),
            Err(ConfigError::VsockPathTooLong(_))
        ));
    }

    #[test]
    fn api_socket_path_is_checked() {
        let f = fixture();
        let mut file = file_for(&f);
        file.api_socket = Some("/nonexistent-dir/vm.api".into());
        assert!(matches!(
            VmConfig::validate(file, 2),
            Err(ConfigError::ApiSocketDir { .. })
        ));
        let mut file = file_for(&f);
        file.api_socket = Some(PathBuf::from(format!("/tmp/{}", "x".repeat(110))));
        assert!(matches!(
            VmConfig::validate(file, 2),
            Err(ConfigError::ApiSocketTooLong(_))
        ));
        let mut file = file_for(&f);
        file.api_socket = Some(f.dir.path().join("vm.api"));
        assert_eq!(
            VmConfig::validate(file, 2).unwrap().api_socket,
            Some(f.dir.path().join("vm.api"))
        );
    }

    #[test]
    fn drive_format_is_raw_or_rejected() {
        let f = fixture();
        let path = f.dir.path().join("vm.toml");
        std::fs::write(&path, "[[drive]]\npath = \"/x\"\nformat = \"raw\"\n").unwrap();
        assert_eq!(
            ConfigFile::load(&path).unwrap().drive[0].format,
            DriveFormat::Raw
        );
        std::fs::write(&path, "[[drive]]\npath = \"/x\"\nformat = \"qcow2\"\n").unwrap();
        let e = ConfigFile::load(&path).unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains("qcow2") && chain.contains("raw"), "{chain}");
    }

    #[test]
    fn net_entries_need_one_backend_and_a_unicast_mac() {
        let f = fixture();
        let net = |tap: Option<&str>, tap_fd: Option<i32>, mac: Option<&str>| {
            let mut file = file_for(&f);
            file.net = vec![NetConfig {
                id: None,
                tap: tap.map(Into::into),
                tap_fd,
                mac: mac.map(Into::into),
            }];
            VmConfig::validate(file, 2)
        };
        assert!(net(Some("tap0"), None, Some("02:00:00:00:00:01")).is_ok());
        assert!(net(None, Some(5), None).is_ok());
        assert!(matches!(
            net(Some("tap0"), Some(5), None),
            Err(ConfigError::NetBackend { index: 0 })
        ));
        assert!(matches!(
            net(None, None, None),
            Err(ConfigError::NetBackend { .. })
        ));
        assert!(matches!(
            net(Some("a-very-long-tap-name"), None, None),
            Err(ConfigError::NetTapName { .. })
        ));
        assert!(matches!(
            net(Some("tap0"), None, Some("02:00:00:00:01")),
            Err(ConfigError::NetMac { .. })
        ));
        assert!(matches!(
            net(Some("tap0"), None, Some("01:00:5e:00:00:01")),
            Err(ConfigError::NetMacMulticast { .. })
        ));
        assert_eq!(
            parse_mac("02:AB:cd:00:00:ff"),
            Some([2, 0xab, 0xcd, 0, 0, 0xff])
        );
    }
}
