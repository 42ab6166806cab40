//! Templates: a snapshot of a sandbox VM booted to agent-ready, made once per (kernel,
//! image, VM shape, hull release) and restored by every later sandbox of that kind.
//!
//! Layout: `<root>/<key>/{state,memory,meta.json}`, `<key>` being the first 16 bytes (hex)
//! of a SHA-256 over everything that makes a template different: the hull release, the
//! snapshot format version, the kernel's and image's identity (path, size, modification
//! time, inode: a rebuilt file is a new template), vCPUs and memory.
//!
//! Nothing in the cache is trusted blindly. Before a template is used, `meta.json` must
//! name the same key inputs, the state file must pass its own checks (magic, format
//! version, length, CRC, decodable, same VM shape) and the memory file must have the
//! guest's size and the CRC32 recorded when it was written (checked once per process and
//! file version: reading the sparse file costs a few tens of milliseconds). A template that
//! fails any check is removed and rebuilt, and the log says why.
//!
//! Concurrent starts (parallel tests, several CLI invocations) serialize on a lock file per
//! key, so one builds while the others wait and then use it.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use hull_vmm_api::snapshot::{self, MEMORY_FILE, STATE_FILE};

use crate::VmSpec;

/// Where templates live unless told otherwise.
pub const DEFAULT_ROOT: &str = "/var/cache/hull/templates";
const META_FILE: &str = "meta.json";
const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(transparent)]
    Io(#[from] crate::PathError),
    #[error("building the template")]
    Build(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let at = crate::PathError::at(op, path);
    move |source| TemplateError::Io(at(source))
}

/// Identity of a file on disk: a rebuilt kernel or image changes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

impl FileIdentity {
    pub fn of(path: &Path) -> Result<Self, TemplateError> {
        let m = std::fs::metadata(path).map_err(io("stat", path))?;
        // Absolute, so another process in another directory sees the same file; symlinks
        // kept (the image path is one, re-pointed by each image build).
        let path = std::path::absolute(path).map_err(io("resolve", path))?;
        Ok(FileIdentity {
            path,
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            inode: m.ino(),
        })
    }
}

/// Everything a template depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateKey {
    pub hull_version: String,
    pub snapshot_format: u32,
    pub kernel: FileIdentity,
    pub image: FileIdentity,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub drive_slots: u8,
    /// Older templates have no virtio-fs device: their key lacks the field and never
    /// matches a VM that has one.
    #[serde(default)]
    pub shared_fs: bool,
    /// Network devices; templates made before pods had networks have none.
    #[serde(default)]
    pub nics: u8,
}

impl TemplateKey {
    pub fn for_spec(spec: &VmSpec) -> Result<Self, TemplateError> {
        Ok(TemplateKey {
            hull_version: env!("CARGO_PKG_VERSION").to_string(),
            snapshot_format: snapshot::FORMAT_VERSION,
            kernel: FileIdentity::of(&spec.kernel)?,
            image: FileIdentity::of(&spec.image)?,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            drive_slots: spec.drive_slots,
            shared_fs: spec.shared_fs,
            nics: spec.nics,
        })
    }

    /// The directory name: 32 hex digits of the key's SHA-256.
    pub fn id(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&json);
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What `meta.json` records next to the snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateMeta {
    pub key: TemplateKey,
    pub memory_len: u64,
    pub memory_crc32: u32,
    /// How long the cold boot to agent-ready took when the template was made.
    pub boot_ms: u64,
}

/// A template ready to restore.
#[derive(Debug, Clone)]
pub struct Template {
    pub dir: PathBuf,
    pub meta: TemplateMeta,
    /// Made by this call (a cold boot happened) rather than found in the cache.
    pub built: bool,
}

/// Memory files already checked by this process: (path, inode, mtime).
static VERIFIED: Mutex<Option<HashSet<(PathBuf, u64, i64)>>> = Mutex::new(None);

pub struct TemplateCache {
    root: PathBuf,
}

impl TemplateCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        TemplateCache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir_for(&self, key: &TemplateKey) -> PathBuf {
        self.root.join(key.id())
    }

    /// The template for `spec`, made with `build` (a cold boot and a snapshot written into
    /// the directory it is given) when the cache has no valid one.
    pub fn get_or_build<E: std::error::Error + Send + Sync + 'static>(
        &self,
        spec: &VmSpec,
        build: impl FnOnce(&Path) -> Result<u64, E>,
    ) -> Result<Template, TemplateError> {
        let key = TemplateKey::for_spec(spec)?;
        let dir = self.dir_for(&key);
        crate::private::private_dir(&self.root).map_err(io("create", &self.root))?;
        let _lock = lock(&self.root.join(format!("{}.{LOCK_FILE}", key.id())))?;
        match validate(&dir, &key) {
            Ok(meta) => {
                return Ok(Template {
                    dir,
                    meta,
                    built: false,
                })
            }
            Err(Invalid::Missing) => {}
            Err(why) => {
                log::warn!("template {}: {why}; rebuilding it", dir.display());
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        let tmp = self.root.join(format!("{}.building", key.id()));
        let _ = std::fs::remove_dir_all(&tmp);
        crate::private::private_dir(&tmp).map_err(io("create", &tmp))?;
        log::info!(
            "template {}: none cached; booting a VM to make one",
            dir.display()
        );
        let boot_ms = match build(&tmp) {
            Ok(ms) => ms,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(TemplateError::Build(Box::new(e)));
            }
        };
        let finish = || -> Result<TemplateMeta, TemplateError> {
            let memory = tmp.join(MEMORY_FILE);
            let (memory_len, memory_crc32) = crc_file(&memory)?;
            let meta = TemplateMeta {
                key: key.clone(),
                memory_len,
                memory_crc32,
                boot_ms,
            };
            let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
            let meta_path = tmp.join(META_FILE);
            std::fs::write(&meta_path, json).map_err(io("write", &meta_path))?;
            std::fs::rename(&tmp, &dir).map_err(io("rename into place", &dir))?;
            Ok(meta)
        };
        let meta = match finish() {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        remember_verified(&dir.join(MEMORY_FILE));
        log::info!("template {}: made ({} ms boot)", dir.display(), boot_ms);
        self.prune_stale();
        Ok(Template {
            dir,
            meta,
            built: true,
        })
    }

    /// Removes templates no current input can use: made by another release or snapshot
    /// format, or for a kernel or image that has since changed or gone. Returns how many.
    pub fn prune_stale(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let dir = entry.path();
            let Ok(text) = std::fs::read(dir.join(META_FILE)) else {
                continue; // not a template, or one being built
            };
            let stale = match serde_json::from_slice::<TemplateMeta>(&text) {
                Ok(meta) => {
                    let k = &meta.key;
                    k.hull_version != env!("CARGO_PKG_VERSION")
                        || k.snapshot_format != snapshot::FORMAT_VERSION
                        || FileIdentity::of(&k.kernel.path).ok().as_ref() != Some(&k.kernel)
                        || FileIdentity::of(&k.image.path).ok().as_ref() != Some(&k.image)
                }
                Err(_) => true,
            };
            // Lock files stay: a process may be waiting on one, and a new file under the
            // same name would let two builders into one directory.
            if stale && std::fs::remove_dir_all(&dir).is_ok() {
                log::info!("template {}: stale, removed", dir.display());
                removed += 1;
            }
        }
        removed
    }

    /// Removes a template that validated but could not be restored (a host change its key
    /// does not cover, such as a kernel update that refuses some saved MSR), so the next
    /// start builds a new one instead of failing the same way.
    pub fn discard(&self, template: &Template) -> Result<(), TemplateError> {
        let id = template
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _lock = lock(&self.root.join(format!("{id}.{LOCK_FILE}")))?;
        match std::fs::remove_dir_all(&template.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io("remove", &template.dir)(e))
            }
            _ => Ok(()),
        }
    }

    /// The valid template for `spec`, if the cache has one (never builds).
    pub fn get(&self, spec: &VmSpec) -> Result<Option<Template>, TemplateError> {
        let key = TemplateKey::for_spec(spec)?;
        let dir = self.dir_for(&key);
        Ok(validate(&dir, &key).ok().map(|meta| Template {
            dir,
            meta,
            built: false,
        }))
    }
}

/// Why a cached template cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    Missing,
    Stale(String),
    Corrupt(String),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Missing => write!(f, "not there"),
            Invalid::Stale(why) => write!(f, "stale ({why})"),
            Invalid::Corrupt(why) => write!(f, "corrupt ({why})"),
        }
    }
}

/// Checks a template directory against `key` (see the module docs for what is checked).
pub fn validate(dir: &Path, key: &TemplateKey) -> Result<TemplateMeta, Invalid> {
    let meta_path = dir.join(META_FILE);
    let text = match std::fs::read(&meta_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
            return Err(Invalid::Missing)
        }
        Err(e) => return Err(Invalid::Corrupt(format!("{}: {e}", meta_path.display()))),
    };
    let meta: TemplateMeta = serde_json::from_slice(&text)
        .map_err(|e| Invalid::Corrupt(format!("{}: {e}", meta_path.display())))?;
    if meta.key != *key {
        return Err(Invalid::Stale(
            "made for another kernel, image, VM shape or release".into(),
        ));
    }
    // The framing and CRC cover the whole file; the VMM decodes the machine state when it
    // restores, and a template it cannot restore is discarded (`Sandbox::start`).
    let state = snapshot::read_meta(&dir.join(STATE_FILE)).map_err(|e| match e {
        snapshot::SnapshotError::Version { .. } => Invalid::Stale(e.to_string()),
        other => Invalid::Corrupt(hull_vmm_api::error_chain(&other)),
    })?;
    if state.shape.vcpus != key.vcpus || state.shape.memory_mib != key.memory_mib {
        return Err(Invalid::Corrupt(
            "the state file's VM shape differs from meta.json".into(),
        ));
    }
    let memory = dir.join(MEMORY_FILE);
    let m = std::fs::metadata(&memory)
        .map_err(|e| Invalid::Corrupt(format!("{}: {e}", memory.display())))?;
    let want = u64::from(key.memory_mib) << 20;
    if m.len() != want || meta.memory_len != want {
        return Err(Invalid::Corrupt(format!(
            "memory file holds {} bytes, the guest has {want}",
            m.len()
        )));
    }
    if !already_verified(&memory, &m) {
        let (_, crc) = crc_file(&memory).map_err(|e| Invalid::Corrupt(e.to_string()))?;
        if crc != meta.memory_crc32 {
            return Err(Invalid::Corrupt("memory file checksum mismatch".into()));
        }
        remember_verified(&memory);
    }
    Ok(meta)
}

fn verified_key(path: &Path, m: &std::fs::Metadata) -> (PathBuf, u64, i64) {
    (
        path.to_path_buf(),
        m.ino(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
    )
}

fn already_verified(path: &Path, m: &std::fs::Metadata) -> bool {
    let set = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
    set.as_ref()
        .is_some_and(|s| s.contains(&verified_key(path, m)))
}

fn remember_verified(path: &Path) {
    if let Ok(m) = std::fs::metadata(path) {
        let mut set = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
        set.get_or_insert_with(HashSet::new)
            .insert(verified_key(path, &m));
    }
}

const CRC_BLOCK: usize = 1 << 20;

/// Length and CRC32 of a file, in 1 MiB blocks. A block that is entirely a hole (most of
/// a sparse memory file) is not read: the CRC of a zero block, computed once, is combined
/// in instead, so checking a 128 MiB template reads only its ~20 MiB of data.
fn crc_file(path: &Path) -> Result<(u64, u32), TemplateError> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).map_err(io("open", path))?;
    let len = f.metadata().map_err(io("stat", path))?.len();
    let zero_block = {
        let mut h = crc32fast::Hasher::new();
        h.update(&vec![0u8; CRC_BLOCK]);
        h
    };
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CRC_BLOCK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(CRC_BLOCK as u64) as usize;
        if n == CRC_BLOCK && is_hole(&f, at, n as u64) {
            hasher.combine(&zero_block);
        } else {
            f.read_exact_at(&mut buf[..n], at)
                .map_err(io("read", path))?;
            hasher.update(&buf[..n]);
        }
        at += n as u64;
    }
    Ok((len, hasher.finalize()))
}

/// Whether `[at, at + n)` of `f` holds no data (SEEK_DATA finds none before its end).
fn is_hole(f: &File, at: u64, n: u64) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on a descriptor we own; it moves only this descriptor's offset, which
    // read_exact_at (pread) does not use.
    let data = unsafe { libc::lseek(f.as_raw_fd(), at as i64, libc::SEEK_DATA) };
    if data < 0 {
        // ENXIO: no data after `at` at all; anything else: assume data and read.
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
    }
    data as u64 >= at + n
}

/// An exclusive `flock` on `path`, released when dropped.
struct Lock(File);

fn lock(path: &Path) -> Result<Lock, TemplateError> {
    use std::os::fd::AsRawFd;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(Lock(f));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(io("lock", path)(e));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking a descriptor we own (closing it would too).
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake kernel and image, and a "build" that writes a valid-looking template without
    /// a VM (the state file comes from a real snapshot encoder).
    struct Fixture {
        _dir: tempfile::TempDir,
        spec: VmSpec,
        cache: TemplateCache,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        let image = dir.path().join("rootfs.erofs");
        std::fs::write(&kernel, b"kernel").unwrap();
        std::fs::write(&image, b"image").unwrap();
        let spec = VmSpec {
            kernel,
            image,
            vcpus: 1,
            memory_mib: 2,
            drive_slots: 0,
            shared_fs: false,
            console_log: false,
            nics: 0,
            jail: None,
        };
        let cache = TemplateCache::new(dir.path().join("templates"));
        Fixture {
            _dir: dir,
            spec,
            cache,
        }
    }

    fn fake_build(spec: &VmSpec) -> impl FnOnce(&Path) -> Result<u64, std::io::Error> + '_ {
        move |dir: &Path| {
            // What the VMM writes: the metadata, then machine state (here a stand-in).
            let state = (
                snapshot::SnapshotMeta {
                    hull_version: "test".into(),
                    shape: snapshot::VmShape {
                        vcpus: spec.vcpus,
                        memory_mib: spec.memory_mib,
                        devices: vec![],
                    },
                    emulated_host: false,
                },
                vec![0u8; 512],
            );
            snapshot::write_state(&dir.join(STATE_FILE), &state).unwrap();
            let mem = File::create(dir.join(MEMORY_FILE)).unwrap();
            mem.set_len(u64::from(spec.memory_mib) << 20).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&mem, b"guest page", 8192).unwrap();
            Ok(1234)
        }
    }

    #[test]
    fn the_crc_of_a_sparse_file_skips_holes_and_matches_a_full_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let f = File::create(&path).unwrap();
        f.set_len(5 * CRC_BLOCK as u64 + 123).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"data", 2 * CRC_BLOCK as u64 + 7).unwrap();
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(
            crc_file(&path).unwrap(),
            (whole.len() as u64, crc32fast::hash(&whole))
        );
        assert!(is_hole(&f, 0, CRC_BLOCK as u64));
        assert!(!is_hole(&f, 2 * CRC_BLOCK as u64, CRC_BLOCK as u64));
    }

    #[test]
    fn a_template_is_built_once_then_reused() {
        let f = fixture();
        let t = f.cache.get_or_build(&f.spec, fake_build(&f.spec)).unwrap();
        assert!(t.built);
        assert_eq!(t.meta.boot_ms, 1234);
        let again = f
            .cache
            .get_or_build(&f.spec, |_| -> Result<u64, std::io::Error> {
                panic!("rebuilt a valid template")
            })
            .unwrap();
        assert!(!again.built);
        assert_eq!(again.dir, t.dir);
        assert!(f.cache.get(&f.spec).unwrap().is_some());
    }

    #[test]
    fn a_rebuilt_kernel_or_another_shape_is_another_template() {
        let f = fixture();
        let a = TemplateKey::for_spec(&f.spec).unwrap();
        let mut bigger = f.spec.clone();
        bigger.memory_mib = 4;
        assert_ne!(a.id(), TemplateKey::for_spec(&bigger).unwrap().id());
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&f.spec.kernel, b"kernel, rebuilt").unwrap();
        assert_ne!(a.id(), TemplateKey::for_spec(&f.spec).unwrap().id());
    }

    #[test]
    fn templates_of_a_changed_image_are_pruned() {
        let f = fixture();
        let old = f.cache.get_or_build(&f.spec, fake_build(&f.spec)).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&f.spec.image, b"image, rebuilt").unwrap();
        let new = f.cache.get_or_build(&f.spec, fake_build(&f.spec)).unwrap();
        assert!(new.built);
        assert_ne!(old.dir, new.dir);
        assert!(!old.dir.exists(), "the old image's template was kept");
        assert!(new.dir.exists());
        assert_eq!(f.cache.prune_stale(), 0);
    }

    #[test]
    fn corrupt_templates_are_detected_and_rebuilt() {
        let f = fixture();
        let t = f.cache.get_or_build(&f.spec, fake_build(&f.spec)).unwrap();
        let key = TemplateKey::for_spec(&f.spec).unwrap();

        // A flipped byte in the memory file (a new file version, so it is re-checked).
        let mem = t.dir.join(MEMORY_FILE);
        let bytes = std::fs::read(&mem).unwrap();
        let mut flipped = bytes.clone();
        flipped[8192] ^= 1;
        std::fs::remove_file(&mem).unwrap();
        std::fs::write(&mem, &flipped).unwrap();
        assert_eq!(
            validate(&t.dir, &key).unwrap_err(),
            Invalid::Corrupt("memory file checksum mismatch".into())
        );
        let rebuilt = f.cache.get_or_build(&f.spec, fake_build(&f.spec)).unwrap();
        assert!(rebuilt.built);

        // A truncated state file.
        let state = rebuilt.dir.join(STATE_FILE);
        let s = std::fs::read(&state).unwrap();
        std::fs::write(&state, &s[..s.len() / 2]).unwrap();
        let why = validate(&rebuilt.dir, &key).unwrap_err();
        assert!(
            matches!(why, Invalid::Corrupt(ref w) if w.contains("is corrupt")),
            "{why}"
        );
        assert!(
            f.cache
                .get_or_build(&f.spec, fake_build(&f.spec))
                .unwrap()
                .built
        );

        // meta.json that is not JSON, and one for another key.
        let dir = f.cache.dir_for(&key);
        std::fs::write(dir.join(META_FILE), b"{").unwrap();
        assert!(matches!(validate(&dir, &key), Err(Invalid::Corrupt(_))));
        assert!(
            f.cache
                .get_or_build(&f.spec, fake_build(&f.spec))
                .unwrap()
                .built
        );
        let mut other = key.clone();
        other.vcpus = 2;
        assert!(matches!(validate(&dir, &other), Err(Invalid::Stale(_))));
    }

    #[test]
    fn a_failed_build_leaves_nothing_behind() {
        let f = fixture();
        let e = f
            .cache
            .get_or_build(&f.spec, |_| {
                Err(std::io::Error::other("the guest never answered"))
            })
            .unwrap_err();
        let chain = hull_vmm_api::error_chain(&e);
        assert!(chain.contains("the guest never answered"), "{chain}");
        assert!(f.cache.get(&f.spec).unwrap().is_none());
        let left: Vec<_> = std::fs::read_dir(f.cache.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
