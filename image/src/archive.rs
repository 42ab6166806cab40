//! Image archives: an OCI image layout or a `docker save` tarball, unpacked into a staging
//! directory and flattened into one root filesystem tree.
//!
//! The outer archive may hold only regular files and directories: a symlink, hard link,
//! device or FIFO there is refused, so a manifest can never point a blob at a host file
//! (`blobs/sha256/<x> -> /dev/zero`). Manifests, configs and blobs are opened beneath the
//! unpacked archive with no symlink followed at all. Every blob is checked against its
//! digest, and every layer's uncompressed stream against the config's `diff_ids`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layer::{self, Budget, LayerError, Policy};
use crate::meter::{hex, Limits};
use crate::root::{InPath, Root, RootError};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not an OCI image layout (index.json) or a docker save archive (manifest.json)")]
    Format(PathBuf),
    /// The file is no tar archive at all. The tar reader's own message is left out: it may
    /// quote the file's bytes, and the file may be anything (`/etc/shadow`).
    #[error("{0}: not an OCI image layout or a docker save archive (not a readable tar archive)")]
    NotTar(PathBuf),
    #[error("{archive}")]
    Unpack {
        archive: PathBuf,
        #[source]
        source: LayerError,
    },
    #[error("{file}: {why}")]
    Bad { file: String, why: String },
    #[error("{file}")]
    Open {
        file: String,
        #[source]
        source: RootError,
    },
    #[error("read {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {0} does not match its digest: the archive is corrupt")]
    Digest(String),
    #[error("layer {index} unpacks to {actual}, but the image config's diff_ids say {expected}: the archive is corrupt")]
    DiffId {
        index: usize,
        expected: String,
        actual: String,
    },
    #[error("applying layer {index}")]
    Layer {
        index: usize,
        #[source]
        source: LayerError,
    },
}

fn bad(file: &str, why: impl Into<String>) -> ArchiveError {
    ArchiveError::Bad {
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

/// An image unpacked into a tree.
#[derive(Debug)]
pub struct Unpacked {
    /// The manifest's digest (OCI layout) or the config's (docker save).
    pub digest: String,
    /// The names the archive gives the image.
    pub names: Vec<String>,
    pub config: RunConfig,
    /// The flattened root filesystem, inside the staging directory.
    pub rootfs: PathBuf,
    /// Uncompressed bytes of all layers.
    pub bytes: u64,
}

/// Makes `dir` with mode 0700 (and its missing parents with 0700 too).
pub fn private_dir(dir: &Path) -> Result<(), ArchiveError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| ArchiveError::Create {
            path: dir.to_path_buf(),
            source,
        })
}

/// Unpacks image archive `archive` in `stage` (a private directory the caller made and
/// removes afterwards) and applies its layers in order into `stage/rootfs`. `progress` is
/// told (layer number, layer count) before each layer.
pub fn unpack_image(
    archive: &Path,
    stage: &Path,
    limits: Limits,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Unpacked, ArchiveError> {
    let files_dir = stage.join("archive");
    private_dir(&files_dir)?;
    let files = open_root(&files_dir)?;
    let file = std::fs::File::open(archive).map_err(|source| ArchiveError::Read {
        file: archive.display().to_string(),
        source,
    })?;
    let mut budget = Budget::new(limits);
    layer::unpack(file, archive, &files, &mut budget, Policy::Archive).map_err(|source| {
        match source {
            LayerError::Read { .. } => ArchiveError::NotTar(archive.to_path_buf()),
            source => ArchiveError::Unpack {
                archive: archive.to_path_buf(),
                source,
            },
        }
    })?;
    let found = if exists(&files, "index.json") {
        oci_layout(&files)?
    } else if exists(&files, "manifest.json") {
        docker_save(&files)?
    } else {
        return Err(ArchiveError::Format(archive.to_path_buf()));
    };
    if found.diff_ids.len() != found.layers.len() {
        return Err(bad(
            "the image config",
            format!(
                "rootfs.diff_ids names {} layers, the manifest {}",
                found.diff_ids.len(),
                found.layers.len()
            ),
        ));
    }
    let rootfs_dir = stage.join("rootfs");
    private_dir(&rootfs_dir)?;
    // The tree's top is the image's `/`: 0755 unless a layer says otherwise. The staging
    // directory around it stays 0700.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rootfs_dir, std::fs::Permissions::from_mode(0o755)).map_err(
            |source| ArchiveError::Create {
                path: rootfs_dir.clone(),
                source,
            },
        )?;
    }
    let rootfs = open_root(&rootfs_dir)?;
    // Layers are charged afresh: the outer archive's bytes were a different budget.
    let mut budget = Budget::new(limits);
    for (index, (blob, expected)) in found.layers.iter().zip(&found.diff_ids).enumerate() {
        progress(index + 1, found.layers.len());
        let label = blob.as_path();
        let file = files.open_file(blob).map_err(|source| ArchiveError::Open {
            file: label.display().to_string(),
            source,
        })?;
        let applied = layer::apply_layer(file, label, &rootfs, &mut budget)
            .map_err(|source| ArchiveError::Layer { index, source })?;
        if &applied.diff_id != expected {
            return Err(ArchiveError::DiffId {
                index,
                expected: expected.clone(),
                actual: applied.diff_id,
            });
        }
    }
    Ok(Unpacked {
        digest: found.digest,
        names: found.names,
        config: found.config,
        rootfs: rootfs_dir,
        bytes: budget.bytes,
    })
}

fn open_root(dir: &Path) -> Result<Root, ArchiveError> {
    Root::open(dir).map_err(|source| ArchiveError::Open {
        file: dir.display().to_string(),
        source,
    })
}

fn exists(files: &Root, name: &str) -> bool {
    files.open_file(&in_path(name)).is_ok()
}

fn in_path(rel: &str) -> InPath {
    InPath::new(Path::new(rel)).unwrap_or_else(|_| InPath::new(Path::new("")).expect("root"))
}

/// An image found in an archive: its digest, names, configuration and layer blobs.
struct Found {
    digest: String,
    names: Vec<String>,
    config: RunConfig,
    diff_ids: Vec<String>,
    layers: Vec<InPath>,
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
    #[serde(default)]
    rootfs: RootFs,
}

#[derive(Deserialize, Default)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Largest JSON document (index, manifest, config) read from an archive.
const MAX_JSON: u64 = 4 << 20;

/// Reads JSON file `rel` of the archive.
fn json<T: serde::de::DeserializeOwned>(
    files: &Root,
    rel: &InPath,
    label: &str,
) -> Result<T, ArchiveError> {
    let f = files.open_file(rel).map_err(|source| ArchiveError::Open {
        file: label.into(),
        source,
    })?;
    let mut bytes = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ArchiveError::Read {
            file: label.into(),
            source,
        })?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(bad(label, format!("larger than {MAX_JSON} bytes")));
    }
    // serde_json's messages name a line and column, never the document's text.
    serde_json::from_slice(&bytes).map_err(|e| bad(label, e.to_string()))
}

fn sha256(files: &Root, rel: &InPath, label: &str) -> Result<String, ArchiveError> {
    let mut f = files.open_file(rel).map_err(|source| ArchiveError::Open {
        file: label.into(),
        source,
    })?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|source| ArchiveError::Read {
        file: label.into(),
        source,
    })?;
    Ok(hex(&h.finalize()))
}

/// Blob `digest` of an OCI layout, checked against its digest.
fn blob(files: &Root, digest: &str) -> Result<InPath, ArchiveError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| {
            bad(
                "index.json",
                format!("digest {digest:?} is not sha256:<64 hex>"),
            )
        })?;
    let rel = in_path(&format!("blobs/sha256/{hex}"));
    if sha256(files, &rel, digest)? != hex {
        return Err(ArchiveError::Digest(digest.into()));
    }
    Ok(rel)
}

fn checked_diff_ids(ids: Vec<String>) -> Result<Vec<String>, ArchiveError> {
    for id in &ids {
        let ok = id.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if !ok {
            return Err(bad(
                "the image config",
                format!("diff_id {id:?} is not sha256:<64 hex>"),
            ));
        }
    }
    Ok(ids)
}

fn oci_layout(files: &Root) -> Result<Found, ArchiveError> {
    let index: Index = json(files, &in_path("index.json"), "index.json")?;
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
    let manifest: Manifest = json(files, &blob(files, &chosen.digest)?, "the manifest")?;
    let config: ImageConfig = json(
        files,
        &blob(files, &manifest.config.digest)?,
        "the image config",
    )?;
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
        diff_ids: checked_diff_ids(config.rootfs.diff_ids)?,
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

/// A path named by a docker save manifest: plain names inside the archive.
pub fn inside(rel: &str) -> Result<InPath, ArchiveError> {
    InPath::new(Path::new(rel))
        .ok()
        .filter(|p| !p.is_root() && !rel.starts_with('/'))
        .ok_or_else(|| bad("manifest.json", format!("{rel:?} leaves the archive")))
}

fn docker_save(files: &Root) -> Result<Found, ArchiveError> {
    let entries: Vec<SaveEntry> = json(files, &in_path("manifest.json"), "manifest.json")?;
    let e = entries
        .first()
        .ok_or_else(|| bad("manifest.json", "names no image"))?;
    let config_path = inside(&e.config)?;
    let config: ImageConfig = json(files, &config_path, "the image config")?;
    // The image's identity: the digest of its config, as docker's image ID.
    let digest = format!(
        "sha256:{}",
        sha256(files, &config_path, "the image config")?
    );
    let layers = e
        .layers
        .iter()
        .map(|l| inside(l))
        .collect::<Result<_, _>>()?;
    Ok(Found {
        digest,
        names: e.repo_tags.clone().unwrap_or_default(),
        config: config.config,
        diff_ids: checked_diff_ids(config.rootfs.diff_ids)?,
        layers,
    })
}
