//! Imported images: `hull image import FILE` takes an OCI image layout tarball or a
//! `docker save` archive, checks every blob's digest, applies the layers in order with
//! their whiteouts into one tree, copies that into an erofs image and files it by its
//! manifest's digest:
//!
//! - `<images>/sha256/<digest>/rootfs.erofs` and `config.json` (the image's own
//!   configuration: Env, Cmd, Entrypoint, WorkingDir, User);
//! - `<images>/refs.json`: `name:tag` to digest.
//!
//! Archives are untrusted input: entries are unpacked with tar's own checks (no absolute
//! paths, no `..`, nothing written through a symlink that leads out of the tree), blobs
//! must match their digests, and sizes are bounded.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)"
    )]
    Format(PathBuf),
    #[error("{file}: {why}")]
    Bad { file: String, why: String },
    #[error("blob {0} does not match its digest: the archive is corrupt")]
    Digest(String),
    #[error("image {0:?} is not imported (hull images lists them)")]
    NotFound(String),
    #[error("building the image")]
    Build(#[source] hull_shim::task::rootfs::RootfsError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

fn bad(file: &str, why: impl Into<String>) -> StoreError {
    StoreError::Bad {
        file: file.into(),
        why: why.into(),
    }
}

/// What an image says about how to run it (the OCI image config's `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RunConfig {
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

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
    std::fs::create_dir_all(store).map_err(io("create", store))?;
    let path = store.join("refs.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
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
    std::fs::write(&tmp, serde_json::to_vec_pretty(refs).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(io("write", &path))
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

/// Imports `archive` as `name` (or the name the archive gives, or its file stem); returns
/// the names it was filed under.
pub fn import(store: &Path, archive: &Path, name: Option<&str>) -> Result<Vec<String>, StoreError> {
    std::fs::create_dir_all(store).map_err(io("create", store))?;
    let stage = store.join(format!(".import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(io("create", &stage))?;
    let result = import_staged(store, archive, name, &stage);
    let _ = std::fs::remove_dir_all(&stage);
    result
}

fn import_staged(
    store: &Path,
    archive: &Path,
    name: Option<&str>,
    stage: &Path,
) -> Result<Vec<String>, StoreError> {
    let progress = crate::progress::step(format!("importing {}: unpacking", archive.display()));
    let files = stage.join("archive");
    unpack_archive(archive, &files)?;
    let image = if files.join("index.json").is_file() {
        oci_layout(&files)?
    } else if files.join("manifest.json").is_file() {
        docker_save(&files)?
    } else {
        return Err(StoreError::Format(archive.to_path_buf()));
    };
    let rootfs = stage.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(io("create", &rootfs))?;
    for (i, layer) in image.layers.iter().enumerate() {
        progress.set(format!(
            "importing {}: layer {} of {}",
            archive.display(),
            i + 1,
            image.layers.len()
        ));
        apply_layer(layer, &rootfs)?;
    }
    progress.set(format!(
        "importing {}: building its erofs image",
        archive.display()
    ));
    let digest = image.digest.clone();
    let dir = image_dir(store, &digest);
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let erofs = dir.join("rootfs.erofs");
    let tmp = dir.join(format!("rootfs.erofs.{}", std::process::id()));
    let size = hull_shim::task::rootfs::build_image(&rootfs, &tmp).map_err(StoreError::Build)?;
    std::fs::rename(&tmp, &erofs).map_err(io("rename into place", &erofs))?;
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::to_vec_pretty(&image.config).unwrap_or_default(),
    )
    .map_err(io("write", &config))?;
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

/// The outer archive's files, unpacked with tar's path checks.
fn unpack_archive(archive: &Path, to: &Path) -> Result<(), StoreError> {
    let f = File::open(archive).map_err(io("open", archive))?;
    let mut t = tar::Archive::new(BufReader::new(f));
    t.set_preserve_permissions(false);
    t.set_overwrite(true);
    std::fs::create_dir_all(to).map_err(io("create", to))?;
    t.unpack(to).map_err(io("unpack", archive))
}

/// An image found in an archive: its digest, names, configuration and layer files.
struct Found {
    digest: String,
    names: Vec<String>,
    config: RunConfig,
    layers: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
struct ImageConfig {
    #[serde(default)]
    config: RunConfig,
}

/// A blob of an OCI layout, checked against its digest.
fn blob(files: &Path, digest: &str) -> Result<PathBuf, StoreError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            bad(
                "index.json",
                format!("digest {digest:?} is not sha256:<64 hex>"),
            )
        })?;
    let path = files.join("blobs/sha256").join(hex);
    if sha256_file(&path)? != hex {
        return Err(StoreError::Digest(digest.into()));
    }
    Ok(path)
}

fn sha256_file(path: &Path) -> Result<String, StoreError> {
    let mut f = File::open(path).map_err(io("open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a JSON file of the archive (at most 4 MiB: these are small documents).
fn json<T: serde::de::DeserializeOwned>(path: &Path, label: &str) -> Result<T, StoreError> {
    let meta = std::fs::metadata(path).map_err(io("read", path))?;
    if meta.len() > 4 << 20 {
        return Err(bad(label, "larger than 4 MiB"));
    }
    let bytes = std::fs::read(path).map_err(io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(label, e.to_string()))
}

fn oci_layout(files: &Path) -> Result<Found, StoreError> {
    let index: Index = json(&files.join("index.json"), "index.json")?;
    let chosen = index
        .manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .ok_or_else(|| bad("index.json", "no linux/amd64 manifest"))?;
    if chosen.media_type.contains("index") {
        return Err(bad(
            "index.json",
            "nested image indexes are not supported yet",
        ));
    }
    let manifest: Manifest = json(&blob(files, &chosen.digest)?, "the manifest")?;
    let config: ImageConfig = json(&blob(files, &manifest.config.digest)?, "the image config")?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| blob(files, &l.digest))
        .collect::<Result<_, _>>()?;
    let names = chosen
        .annotations
        .get("io.containerd.image.name")
        .or_else(|| chosen.annotations.get("org.opencontainers.image.ref.name"))
        .into_iter()
        .cloned()
        .collect();
    Ok(Found {
        digest: chosen.digest.clone(),
        names,
        config: config.config,
        layers,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A path named by an archive's manifest, refused if it leaves the archive.
fn inside(files: &Path, rel: &str, label: &str) -> Result<PathBuf, StoreError> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(bad(label, format!("{rel:?} leaves the archive")));
    }
    Ok(files.join(p))
}

fn docker_save(files: &Path) -> Result<Found, StoreError> {
    let entries: Vec<SaveEntry> = json(&files.join("manifest.json"), "manifest.json")?;
    let e = entries
        .first()
        .ok_or_else(|| bad("manifest.json", "names no image"))?;
    let config_path = inside(files, &e.config, "manifest.json")?;
    let config: ImageConfig = json(&config_path, "the image config")?;
    // The image's identity: the digest of its config, as docker's image ID.
    let digest = format!("sha256:{}", sha256_file(&config_path)?);
    let layers = e
        .layers
        .iter()
        .map(|l| inside(files, l, "manifest.json"))
        .collect::<Result<_, _>>()?;
    Ok(Found {
        digest,
        names: e.repo_tags.clone().unwrap_or_default(),
        config: config.config,
        layers,
    })
}

/// Applies one layer (a tar, gzip-compressed or not) onto `rootfs`: whiteouts delete what
/// lower layers made, everything else is unpacked with tar's checks. Public for the fuzz
/// target.
pub fn apply_layer(layer: &Path, rootfs: &Path) -> Result<(), StoreError> {
    let mut f = File::open(layer).map_err(io("open", layer))?;
    let mut magic = [0u8; 2];
    let gz = f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let f = File::open(layer).map_err(io("open", layer))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    let mut t = tar::Archive::new(reader);
    t.set_preserve_permissions(true);
    t.set_preserve_ownerships(true);
    t.set_unpack_xattrs(false);
    t.set_overwrite(true);
    let label = layer.display().to_string();
    let mut written: Vec<PathBuf> = Vec::new();
    for entry in t.entries().map_err(io("read", layer))? {
        let mut entry = entry.map_err(io("read", layer))?;
        let path = entry.path().map_err(io("read", layer))?.into_owned();
        let rel: PathBuf = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(bad(&label, format!("{} leaves the image", path.display())));
        }
        let file_name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file_name == ".wh..wh..opq" {
            // Opaque directory: what lower layers put here is hidden.
            let dir = rootfs.join(rel.parent().unwrap_or(Path::new("")));
            if let Ok(children) = std::fs::read_dir(&dir) {
                for c in children.flatten() {
                    let p = c.path();
                    if !written.iter().any(|w| rootfs.join(w).starts_with(&p)) {
                        remove_any(&p);
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            let target = rootfs.join(rel.with_file_name(hidden));
            remove_any(&target);
            continue;
        }
        // A later layer's entry replaces a lower one of another kind.
        let target = rootfs.join(&rel);
        if let Ok(meta) = std::fs::symlink_metadata(&target) {
            if !(meta.is_dir() && entry.header().entry_type().is_dir()) {
                remove_any(&target);
            }
        }
        if !entry.unpack_in(rootfs).map_err(|e| {
            bad(
                &label,
                format!("{}: {}", path.display(), hull_vmm::error_chain(&e)),
            )
        })? {
            return Err(bad(&label, format!("{} leaves the image", path.display())));
        }
        written.push(rel);
    }
    Ok(())
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of (path, Some(contents) for a file / None for a directory).
    fn tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in entries {
            let mut h = tar::Header::new_gnu();
            match body {
                Some(text) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(text.len() as u64);
                    h.set_mode(0o644);
                    h.set_uid(0);
                    h.set_gid(0);
                    h.set_cksum();
                    b.append_data(&mut h, path, text.as_bytes()).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_uid(0);
                    h.set_gid(0);
                    h.set_cksum();
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts_and_opaque_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let l1 = dir.path().join("l1.tar");
        std::fs::write(
            &l1,
            tar_of(&[
                ("etc/", None),
                ("etc/keep", Some("1")),
                ("etc/gone", Some("1")),
                ("opq/", None),
                ("opq/old", Some("1")),
            ]),
        )
        .unwrap();
        let l2 = dir.path().join("l2.tar");
        std::fs::write(
            &l2,
            tar_of(&[
                ("etc/.wh.gone", Some("")),
                ("etc/keep", Some("2")),
                ("opq/new", Some("2")),
                ("opq/.wh..wh..opq", Some("")),
            ]),
        )
        .unwrap();
        apply_layer(&l1, &root).unwrap();
        apply_layer(&l2, &root).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("etc/keep")).unwrap(), "2");
        assert!(!root.join("etc/gone").exists());
        assert!(
            !root.join("etc/.wh.gone").exists(),
            "whiteouts are not files"
        );
        assert!(
            !root.join("opq/old").exists(),
            "an opaque directory hides lower entries"
        );
        assert_eq!(std::fs::read_to_string(root.join("opq/new")).unwrap(), "2");
    }

    #[test]
    fn entries_that_leave_the_image_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        // tar's builder refuses ".." itself, so write the header by hand.
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend_from_slice(&[b'x'; 512]);
        data.extend_from_slice(&[0u8; 1024]);
        let l = dir.path().join("bad.tar");
        std::fs::write(&l, data).unwrap();
        let e = apply_layer(&l, &root).unwrap_err();
        assert!(e.to_string().contains("leaves the image"), "{e}");
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn names_get_a_tag_and_manifest_paths_stay_inside() {
        assert_eq!(full_name("busybox"), "busybox:latest");
        assert_eq!(full_name("reg:5000/app"), "reg:5000/app:latest");
        assert_eq!(full_name("app:1.2"), "app:1.2");
        let dir = tempfile::tempdir().unwrap();
        assert!(inside(dir.path(), "abc/layer.tar", "m").is_ok());
        assert!(inside(dir.path(), "../x", "m").is_err());
        assert!(inside(dir.path(), "/etc/passwd", "m").is_err());
    }
}
