//! Disks the host attaches to drive slots while the VM runs (container root filesystems),
//! found by serial and mounted below the shared rootfs area.
//!
//! The host puts an image into an empty virtio-blk slot and raises a configuration
//! interrupt; the guest's virtio-blk driver updates the disk's capacity from a workqueue,
//! so the disk is looked for (by the serial the host chose, `/sys/block/vdX/serial`) until
//! it shows a non-zero size. Unmounting drops the disk's buffers (BLKFLSBUF) before the
//! host detaches it, so the next image in the same slot is never read from stale cache.
//!
//! Layout of one mount named `N` under the area `A`:
//! - `A/N/rootfs`: what containers use — the disk itself, or an overlay of it;
//! - `A/N/lower`: the disk, read-only, when an overlay is wanted;
//! - `A/N/rw`: a tmpfs holding the overlay's upper and work directories (writes to the
//!   container's root live in guest memory and vanish with it).
//!
//! The VM's virtio-fs file system (the host's read-write shares) is mounted once, on the
//! first request for it, never at boot: a template VM must not hold a FUSE session.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::validate::Invalid;
use super::AgentError;

/// How long a disk may take to show up with its capacity after the host attached it.
const FIND_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
/// Filesystems a drive may hold.
const FSTYPES: &[&str] = &["erofs", "ext4"];
/// `_IO(0x12, 97)`: drop a block device's buffer cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// What the host asks to be mounted.
#[derive(Debug, Clone)]
pub struct MountRequest<'a> {
    pub serial: &'a str,
    pub fstype: &'a str,
    pub name: &'a str,
    pub read_only: bool,
    pub writable_overlay: bool,
}

struct Mounted {
    device: PathBuf,
    /// Mount points, innermost (mounted last) first: the unmount order.
    mounts: Vec<PathBuf>,
    dir: PathBuf,
}

/// The drives mounted in this guest, by name, and the shared file system.
#[derive(Default)]
pub struct Storage {
    mounted: Mutex<HashMap<String, Mounted>>,
    /// The virtio-fs tag mounted and where.
    shared_fs: Mutex<Option<(String, PathBuf)>>,
}

/// Longest virtio-fs tag (the device's configuration field).
const TAG_LEN: usize = 36;

fn internal(what: String) -> AgentError {
    AgentError::Internal(what)
}

impl Storage {
    /// Finds the disk with `req.serial`, mounts it as asked below `area`, and returns the
    /// directory containers use as their root.
    pub fn mount(
        &self,
        area: &Path,
        sys_block: &Path,
        req: &MountRequest<'_>,
    ) -> Result<PathBuf, AgentError> {
        check(req)?;
        if super::container::lock(&self.mounted).contains_key(req.name) {
            return Err(AgentError::AlreadyExists(format!(
                "drive mount {:?}",
                req.name
            )));
        }
        let device = find_disk(sys_block, req.serial, FIND_TIMEOUT)?;
        let dir = area.join(req.name);
        let rootfs = dir.join("rootfs");
        let mut done: Vec<PathBuf> = Vec::new();
        let result = (|| {
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| internal(format!("create {}: {e}", rootfs.display())))?;
            let disk_ro = req.read_only || req.writable_overlay;
            let disk_at = if req.writable_overlay {
                dir.join("lower")
            } else {
                rootfs.clone()
            };
            mkdir(&disk_at)?;
            let flags = if disk_ro { libc::MS_RDONLY } else { 0 } | libc::MS_NODEV;
            mount(Some(&device), &disk_at, req.fstype, flags, "")?;
            done.push(disk_at.clone());
            if req.writable_overlay {
                let rw = dir.join("rw");
                mkdir(&rw)?;
                mount(None, &rw, "tmpfs", libc::MS_NODEV, "mode=0755")?;
                done.push(rw.clone());
                let (upper, work) = (rw.join("upper"), rw.join("work"));
                mkdir(&upper)?;
                mkdir(&work)?;
                let options = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    disk_at.display(),
                    upper.display(),
                    work.display()
                );
                mount(None, &rootfs, "overlay", 0, &options)?;
                done.push(rootfs.clone());
            }
            Ok(())
        })();
        if let Err(e) = result {
            for m in done.iter().rev() {
                let _ = unmount(m);
            }
            flush_buffers(&device);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        done.reverse();
        super::container::lock(&self.mounted).insert(
            req.name.to_string(),
            Mounted {
                device,
                mounts: done,
                dir,
            },
        );
        Ok(rootfs)
    }

    /// Unmounts what [`Storage::mount`] mounted under `name` and drops the disk's buffers;
    /// the host may detach the disk afterwards.
    pub fn unmount(&self, name: &str) -> Result<(), AgentError> {
        let m = super::container::lock(&self.mounted)
            .remove(name)
            .ok_or_else(|| AgentError::NotFound(format!("drive mount {name:?}")))?;
        for (i, point) in m.mounts.iter().enumerate() {
            if let Err(e) = unmount(point) {
                // Keep what is still mounted on record, so a retry can finish the job.
                super::container::lock(&self.mounted).insert(
                    name.to_string(),
                    Mounted {
                        device: m.device.clone(),
                        mounts: m.mounts[i..].to_vec(),
                        dir: m.dir.clone(),
                    },
                );
                return Err(e);
            }
        }
        flush_buffers(&m.device);
        let _ = std::fs::remove_dir_all(&m.dir);
        Ok(())
    }

    /// Mounts the virtio-fs file system tagged `tag` at `dir`, once; returns `dir`.
    pub fn mount_shared_fs(&self, dir: &Path, tag: &str) -> Result<PathBuf, AgentError> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(Invalid::new("tag", format!("{tag:?}: give 1-{TAG_LEN} bytes")).into());
        }
        let mut shared = super::container::lock(&self.shared_fs);
        match &*shared {
            Some((t, at)) if t == tag => return Ok(at.clone()),
            Some((t, at)) => {
                return Err(AgentError::AlreadyExists(format!(
                    "the shared file system {t:?} is mounted at {}",
                    at.display()
                )))
            }
            None => {}
        }
        mkdir(dir)?;
        mount(Some(Path::new(tag)), dir, "virtiofs", libc::MS_NODEV, "")?;
        *shared = Some((tag.to_string(), dir.to_path_buf()));
        Ok(dir.to_path_buf())
    }

    /// Unmounts everything (DestroySandbox); returns the names that would not go.
    pub fn unmount_all(&self) -> Vec<String> {
        let names: Vec<String> = super::container::lock(&self.mounted)
            .keys()
            .cloned()
            .collect();
        let mut stuck: Vec<String> = names
            .into_iter()
            .filter(|n| self.unmount(n).is_err())
            .collect();
        let mut shared = super::container::lock(&self.shared_fs);
        if let Some((tag, at)) = shared.take() {
            if unmount(&at).is_err() {
                stuck.push(format!("shared file system {tag}"));
                *shared = Some((tag, at));
            }
        }
        stuck
    }
}

fn check(req: &MountRequest<'_>) -> Result<(), Invalid> {
    hull_protocol::stream::validate_id("name", req.name)
        .map_err(|e| Invalid::new("name", e.to_string()))?;
    if req.serial.is_empty() || req.serial.len() > 20 || !req.serial.is_ascii() {
        return Err(Invalid::new(
            "serial",
            "must be 1 to 20 ASCII bytes (the serial given to AttachDrive)",
        ));
    }
    if !FSTYPES.contains(&req.fstype) {
        return Err(Invalid::new(
            "fstype",
            format!("{:?} is not one of {FSTYPES:?}", req.fstype),
        ));
    }
    if req.fstype == "erofs" && !req.read_only && !req.writable_overlay {
        return Err(Invalid::new(
            "read_only",
            "erofs is read-only: set read_only or writable_overlay",
        ));
    }
    Ok(())
}

/// The `/dev` node of the virtio disk whose serial is `serial` and whose capacity is no
/// longer zero, looked for until `within` has passed.
pub fn find_disk(sys_block: &Path, serial: &str, within: Duration) -> Result<PathBuf, AgentError> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(name) = scan(sys_block, serial) {
            return Ok(Path::new("/dev").join(name));
        }
        if Instant::now() >= deadline {
            return Err(AgentError::NotFound(format!(
                "disk with serial {serial:?} (waited {within:?}; was it attached to a drive slot?)"
            )));
        }
        std::thread::sleep(POLL);
    }
}

fn scan(sys_block: &Path, serial: &str) -> Option<String> {
    for entry in std::fs::read_dir(sys_block).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("vd") {
            continue;
        }
        let dir = entry.path();
        // Cheap first: the capacity is a cached value, the serial is a request to the device.
        let sectors: u64 = std::fs::read_to_string(dir.join("size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if sectors == 0 {
            continue;
        }
        let found = std::fs::read(dir.join("serial"))
            .map(|raw| serial_text(&raw) == serial)
            .unwrap_or(false);
        if found {
            return Some(name);
        }
    }
    None
}

/// A serial as sysfs shows it: NUL padding and the trailing newline dropped.
fn serial_text(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).trim_end().to_string()
}

fn mkdir(p: &Path) -> Result<(), AgentError> {
    std::fs::create_dir_all(p).map_err(|e| internal(format!("create {}: {e}", p.display())))
}

fn cstr(p: &Path) -> Result<CString, AgentError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| internal(format!("{} holds a NUL byte", p.display())))
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), AgentError> {
    let src = cstr(source.unwrap_or(Path::new(fstype)))?;
    let dst = cstr(target)?;
    let fs = CString::new(fstype).map_err(|_| internal("fstype holds a NUL byte".into()))?;
    let data = CString::new(data).map_err(|_| internal("options hold a NUL byte".into()))?;
    // SAFETY: all four strings are NUL-terminated and outlive the call; the kernel copies
    // them.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fs.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(internal(format!(
            "mount {} ({fstype}) on {}: {e}",
            source.map(|s| s.display().to_string()).unwrap_or_default(),
            target.display()
        )));
    }
    Ok(())
}

fn unmount(target: &Path) -> Result<(), AgentError> {
    let dst = cstr(target)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(dst.as_ptr(), 0) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(AgentError::FailedPrecondition(format!(
            "unmount {}: {e} (is a container still using it?)",
            target.display()
        )));
    }
    Ok(())
}

/// Drops the block device's cached buffers, so the disk the host puts into this slot next
/// is read from the device.
fn flush_buffers(device: &Path) {
    match std::fs::File::open(device) {
        Ok(f) => {
            // SAFETY: BLKFLSBUF takes no argument; `f` is an open block device.
            if unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF, 0) } != 0 {
                eprintln!(
                    "hull-agent: BLKFLSBUF {}: {}",
                    device.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
        Err(e) => eprintln!("hull-agent: open {}: {e}", device.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(name: &'a str, serial: &'a str, fstype: &'a str) -> MountRequest<'a> {
        MountRequest {
            serial,
            fstype,
            name,
            read_only: true,
            writable_overlay: false,
        }
    }

    #[test]
    fn rejects_bad_names_serials_and_filesystems() {
        assert!(check(&req("c1", "hull-c1", "erofs")).is_ok());
        assert!(check(&req("../x", "s", "erofs")).is_err());
        assert!(check(&req("c1", "", "erofs")).is_err());
        assert!(check(&req("c1", &"x".repeat(21), "erofs")).is_err());
        assert!(check(&req("c1", "s", "nfs")).is_err());
        let mut rw = req("c1", "s", "erofs");
        rw.read_only = false;
        assert!(check(&rw).is_err(), "a writable erofs mount is refused");
        rw.writable_overlay = true;
        assert!(check(&rw).is_ok());
    }

    #[test]
    fn a_shared_fs_tag_is_checked_before_anything_is_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::default();
        for bad in ["", "a\0b", &"t".repeat(TAG_LEN + 1)] {
            let e = storage
                .mount_shared_fs(&dir.path().join("fs"), bad)
                .unwrap_err();
            assert!(e.to_string().contains("tag"), "{e}");
        }
        assert!(!dir.path().join("fs").exists(), "nothing was made");
        assert!(storage.unmount_all().is_empty());
    }

    #[test]
    fn serial_text_drops_padding() {
        assert_eq!(serial_text(b"hull-c1\0\0\0"), "hull-c1");
        assert_eq!(serial_text(b"hull-c1\n"), "hull-c1");
    }

    /// A fake /sys/block: vda (root, no serial match), vdb (serial matches, capacity 0:
    /// not attached yet), vdc (matches, attached).
    #[test]
    fn finds_the_disk_by_serial_once_it_has_a_capacity() {
        let sys = tempfile::tempdir().unwrap();
        let disk = |name: &str, serial: &str, size: &str| {
            let d = sys.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("serial"), serial).unwrap();
            std::fs::write(d.join("size"), size).unwrap();
        };
        disk("vda", "root", "4096\n");
        disk("vdb", "hull-c1", "0\n");
        disk("loop0", "hull-c1", "8\n");
        assert!(find_disk(sys.path(), "hull-c1", Duration::from_millis(50)).is_err());
        disk("vdc", "hull-c1\0\0", "8\n");
        assert_eq!(
            find_disk(sys.path(), "hull-c1", Duration::ZERO).unwrap(),
            Path::new("/dev/vdc")
        );
    }
}
