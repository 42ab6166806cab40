//! Imported images: `hull image import FILE` unpacks an OCI image layout tarball or a
//! `docker save` archive with `hull-image` (digests, diff_ids, whiteouts, caps; every path
//! resolved beneath a directory descriptor), copies the tree into an erofs image and files
//! it by its manifest's digest:
//!
//! - `<images>/sha256/<digest>/rootfs.erofs` and `config.json` (the image's own
//!   configuration: Env, Cmd, Entrypoint, WorkingDir, User);
//! - `<images>/refs.json`: `name:tag` to digest.
//!
//! The store and everything in it is private to root (0700 directories, 0600 files):
//! images hold setuid files and device nodes, which no other user may reach.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] hull_host::PathError),
    #[error("importing {0}")]
    Unpack(PathBuf, #[source] Box<hull_image::ArchiveError>),
    #[error("image {0:?} is not imported (hull images lists them)")]
    NotFound(String),
    #[error("building the image")]
    Build(#[source] hull_host::rootfs::RootfsError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let at = hull_host::PathError::at(what, path);
    move |source| StoreError::Io(at(source))
}

pub use hull_image::RunConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    pub name: String,
    pub digest: String,
    pub size: u64,
    pub created: u64,
}

/// Normalizes `busybox` to `busybox:latest`.
pub fn full_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

fn refs_path(store: &Path) -> PathBuf {
    store.join("refs.json")
}

pub fn refs(store: &Path) -> BTreeMap<String, ImageRef> {
    std::fs::read(refs_path(store))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Holds `<store>/refs.lock` exclusively while alive: concurrent imports and removals
/// update `refs.json` one at a time, so none loses another's name.
struct RefsLock(#[allow(dead_code)] File);

fn lock_refs(store: &Path) -> Result<RefsLock, StoreError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    private_dir(store)?;
    let path = store.join("refs.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io("open", &path))?;
    // SAFETY: flock on a descriptor we own; it blocks until the lock is ours.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io("lock", &path)(std::io::Error::last_os_error()));
    }
    Ok(RefsLock(f))
}

fn write_refs(store: &Path, refs: &BTreeMap<String, ImageRef>) -> Result<(), StoreError> {
    let path = refs_path(store);
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    write_private(&tmp, &serde_json::to_vec_pretty(refs).unwrap_or_default())?;
    std::fs::rename(&tmp, &path).map_err(io("write", &path))
}

fn image_dir(store: &Path, digest: &str) -> PathBuf {
    store
        .join("sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The erofs image and run configuration of imported image `name`.
pub fn lookup(store: &Path, name: &str) -> Result<(PathBuf, RunConfig), StoreError> {
    let full = full_name(name);
    let r = refs(store)
        .remove(&full)
        .ok_or_else(|| StoreError::NotFound(name.into()))?;
    let dir = image_dir(store, &r.digest);
    let config = std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Ok((dir.join("rootfs.erofs"), config))
}

/// Removes the name; the image goes with its last name. False if there was no such name.
pub fn remove(store: &Path, name: &str) -> Result<bool, StoreError> {
    let full = full_name(name);
    let _lock = lock_refs(store)?;
    let mut all = refs(store);
    let Some(r) = all.remove(&full) else {
        return Ok(false);
    };
    write_refs(store, &all)?;
    if !all.values().any(|o| o.digest == r.digest) {
        let dir = image_dir(store, &r.digest);
        std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
    }
    Ok(true)
}

/// Imports `archive` as `name` (or the name the archive gives, or its file stem) within
/// `limits`; returns the names it was filed under. The archive is unpacked in a private
/// (0700) staging directory of the store, removed whatever happens.
pub fn import(
    store: &Path,
    archive: &Path,
    name: Option<&str>,
    limits: hull_image::Limits,
) -> Result<Vec<String>, StoreError> {
    private_dir(store)?;
    let stage = store.join(format!(".import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    private_dir(&stage)?;
    let result = import_staged(store, archive, name, limits, &stage);
    let _ = std::fs::remove_dir_all(&stage);
    result
}

/// The store's directories: 0700, narrowed if they existed (the host library's one helper).
fn private_dir(dir: &Path) -> Result<(), StoreError> {
    hull_host::private::private_dir(dir).map_err(io("create", dir))
}

fn import_staged(
    store: &Path,
    archive: &Path,
    name: Option<&str>,
    limits: hull_image::Limits,
    stage: &Path,
) -> Result<Vec<String>, StoreError> {
    let progress = crate::progress::step(format!("importing {}: unpacking", archive.display()));
    let image = hull_image::unpack_image(archive, stage, limits, &mut |i, n| {
        progress.set(format!("importing {}: layer {i} of {n}", archive.display()))
    })
    .map_err(|e| StoreError::Unpack(archive.to_path_buf(), Box::new(e)))?;
    progress.set(format!(
        "importing {}: building its erofs image",
        archive.display()
    ));
    let digest = image.digest.clone();
    let dir = image_dir(store, &digest);
    private_dir(&dir)?;
    let erofs = dir.join("rootfs.erofs");
    let tmp = dir.join(format!("rootfs.erofs.{}", std::process::id()));
    let size = hull_host::rootfs::build_image(&image.rootfs, &tmp).map_err(StoreError::Build)?;
    restrict(&tmp)?;
    std::fs::rename(&tmp, &erofs).map_err(io("rename into place", &erofs))?;
    let config = dir.join("config.json");
    write_private(
        &config,
        &serde_json::to_vec_pretty(&image.config).unwrap_or_default(),
    )?;
    let names: Vec<String> = match name {
        Some(n) => vec![full_name(n)],
        None if !image.names.is_empty() => image.names.iter().map(|n| full_name(n)).collect(),
        None => vec![full_name(
            &archive
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "imported".into()),
        )],
    };
    let _lock = lock_refs(store)?;
    let mut all = refs(store);
    for n in &names {
        all.insert(
            n.clone(),
            ImageRef {
                name: n.clone(),
                digest: digest.clone(),
                size,
                created: crate::state::now(),
            },
        );
    }
    write_refs(store, &all)?;
    Ok(names)
}

/// Makes `path` readable by its owner only.
fn restrict(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restrict", path))
}

/// Writes `path` created 0600 (no window where it is wider).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(io("write", path))
}
