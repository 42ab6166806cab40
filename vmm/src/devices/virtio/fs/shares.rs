//! The host directories a VM's virtio-fs device exports, each under its own name at the
//! root of the one FUSE file system the guest mounts (fuse-backend-rs's `Vfs`, the same
//! arrangement Kata's built-in VMM uses). The control API adds and removes them while the
//! guest runs; the template VM never has any.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuse_backend_rs::api::{Vfs, VfsOptions};
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::guard::Guarded;

/// How long the guest may trust a looked-up name or attributes before asking again. The
/// host writes to these directories too, so they stay short (Kata's `auto` policy).
const ENTRY_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("share name {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ - (not . or ..)")]
    BadName(String),
    #[error("share {name:?}: {path}: give an absolute path")]
    Relative { name: String, path: PathBuf },
    #[error("share {name:?}: {path} is not a directory")]
    NotDirectory { name: String, path: PathBuf },
    #[error("share {name:?}: {path}")]
    Open {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("share {name:?} already exports {existing}")]
    Exists { name: String, existing: PathBuf },
    #[error("share {name:?}: the file server refused it: {reason}")]
    Mount { name: String, reason: String },
}

/// The exported directories and the file system the device serves them from.
pub struct Shares {
    vfs: Arc<Vfs>,
    names: Mutex<HashMap<String, PathBuf>>,
}

impl Default for Shares {
    fn default() -> Self {
        Self::new()
    }
}

impl Shares {
    pub fn new() -> Self {
        let opts = VfsOptions {
            // Both sides write: no write-back cache in the guest.
            no_writeback: true,
            no_open: false,
            no_opendir: false,
            ..VfsOptions::default()
        };
        let mut vfs = Vfs::new(opts);
        // An unshared name leaves no empty directory behind at the root.
        vfs.set_remove_pseudo_root();
        Shares {
            vfs: Arc::new(vfs),
            names: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn vfs(&self) -> Arc<Vfs> {
        self.vfs.clone()
    }

    /// Exports `dir` at `/<name>` of the guest's mount.
    pub fn add(&self, name: &str, dir: &Path) -> Result<(), ShareError> {
        check_name(name)?;
        if !dir.is_absolute() {
            return Err(ShareError::Relative {
                name: name.into(),
                path: dir.into(),
            });
        }
        let meta = std::fs::metadata(dir).map_err(|source| ShareError::Open {
            name: name.into(),
            path: dir.into(),
            source,
        })?;
        let root_dir = dir.to_str().ok_or_else(|| ShareError::Open {
            name: name.into(),
            path: dir.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not UTF-8"),
        })?;
        self.export(name, dir, &meta, root_dir)
    }

    /// Exports the directory the host opened as `fd` (a jailed VMM opens no path; `dir`
    /// only names it). The file server opens its root through this process's
    /// `/proc/self/fd`, and keeps its own descriptor: `fd` is closed after.
    pub fn add_opened(&self, name: &str, dir: &Path, fd: OwnedFd) -> Result<(), ShareError> {
        check_name(name)?;
        let meta = fd
            .try_clone()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata())
            .map_err(|source| ShareError::Open {
                name: name.into(),
                path: dir.into(),
                source,
            })?;
        // The trailing slash has the magic link followed even under O_NOFOLLOW, without
        // the search permission on the directory that a trailing "." would need.
        let root_dir = format!("/proc/self/fd/{}/", fd.as_raw_fd());
        self.export(name, dir, &meta, &root_dir)
    }

    fn export(
        &self,
        name: &str,
        dir: &Path,
        meta: &std::fs::Metadata,
        root_dir: &str,
    ) -> Result<(), ShareError> {
        if !meta.is_dir() {
            return Err(ShareError::NotDirectory {
                name: name.into(),
                path: dir.into(),
            });
        }
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = names.get(name) {
            return Err(ShareError::Exists {
                name: name.into(),
                existing: existing.clone(),
            });
        }
        let cfg = Config {
            root_dir: root_dir.to_string(),
            // Under a Vfs the root is opened by `import` here and validated by the Vfs.
            do_import: false,
            cache_policy: CachePolicy::Auto,
            entry_timeout: ENTRY_TIMEOUT,
            attr_timeout: ENTRY_TIMEOUT,
            writeback: false,
            xattr: true,
            ..Config::default()
        };
        let mount_err = |reason: String| ShareError::Mount {
            name: name.into(),
            reason,
        };
        let fs = PassthroughFs::<()>::new(cfg).map_err(|e| mount_err(e.to_string()))?;
        fs.import().map_err(|e| mount_err(e.to_string()))?;
        // The guest reaches the host directory only through the policy (guard.rs).
        self.vfs
            .mount(Box::new(Guarded::new(fs)), &format!("/{name}"))
            .map_err(|e| mount_err(format!("{e:?}")))?;
        names.insert(name.into(), dir.into());
        log::info!("fs: sharing {} as {name}", dir.display());
        Ok(())
    }

    /// Stops exporting `name`; false if it was not exported. Files the guest still holds
    /// open there fail from now on.
    pub fn remove(&self, name: &str) -> Result<bool, ShareError> {
        check_name(name)?;
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.remove(name).is_none() {
            return Ok(false);
        }
        if let Err(e) = self.vfs.umount(&format!("/{name}")) {
            crate::guest_warn!("fs: unsharing {name}: {e:?}");
        }
        log::info!("fs: {name} no longer shared");
        Ok(true)
    }

    pub fn len(&self) -> usize {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn check_name(name: &str) -> Result<(), ShareError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ShareError::BadName(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_plain_component() {
        for bad in ["", ".", "..", "a/b", "../x", "a b", &"x".repeat(65)] {
            assert!(
                matches!(check_name(bad), Err(ShareError::BadName(_))),
                "{bad:?}"
            );
        }
        for good in ["v0", "pod-1.data", "A_b"] {
            check_name(good).unwrap();
        }
    }

    #[test]
    fn add_checks_the_directory_and_refuses_a_second_export_under_one_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let shares = Shares::new();
        assert!(matches!(
            shares.add("a", Path::new("rel")),
            Err(ShareError::Relative { .. })
        ));
        assert!(matches!(
            shares.add("a", &file),
            Err(ShareError::NotDirectory { .. })
        ));
        assert!(matches!(
            shares.add("a", &dir.path().join("missing")),
            Err(ShareError::Open { .. })
        ));
        shares.add("a", dir.path()).unwrap();
        assert!(matches!(
            shares.add("a", dir.path()),
            Err(ShareError::Exists { .. })
        ));
        assert_eq!(shares.len(), 1);
        assert!(shares.remove("a").unwrap());
        assert!(!shares.remove("a").unwrap());
        // The name is free again.
        shares.add("a", dir.path()).unwrap();
    }
}
