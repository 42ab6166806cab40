//! Applying one image layer (a tar stream, gzip-compressed or not) onto a tree.
//!
//! The semantics are the OCI image spec's and containerd's applier's: entries are created
//! in order, replacing an entry of another kind; `.wh.NAME` removes `NAME` left by lower
//! layers; `.wh..wh..opq` empties its directory of what lower layers put there. The layer
//! is hostile input, so every path goes through [`Root`] (no symlink leads out of the tree,
//! nothing is followed at the last component), every byte goes through a [`Meter`] (caps on
//! size, entries, compression ratio and metadata), and entry kinds the guest cannot need
//! are refused. Device nodes and setuid bits are kept: they belong to the image and stay
//! in the importer's 0700 staging directory until they are sealed in its erofs image.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};

use crate::meter::{Breach, Gauge, Limits, Meter};
use crate::root::{self, InPath, Kind, Root, RootError};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("open layer {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: {breach}")]
    Cap { layer: PathBuf, breach: Breach },
    #[error("layer {layer}: reading the tar stream")]
    Read {
        layer: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}")]
    Path {
        layer: PathBuf,
        #[source]
        source: RootError,
    },
    #[error("layer {layer}: {entry}: {why}")]
    Entry {
        layer: PathBuf,
        entry: PathBuf,
        why: String,
    },
    #[error("layer {layer}: {entry}: {op}")]
    Write {
        layer: PathBuf,
        entry: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What applying a layer read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `sha256:<hex>` of the uncompressed tar stream: the layer's `diff_id`.
    pub diff_id: String,
    /// Uncompressed bytes.
    pub bytes: u64,
    pub entries: u64,
}

/// Where a multi-layer import stands against its [`Limits`].
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub limits: Limits,
    pub bytes: u64,
    pub entries: u64,
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Budget {
            limits,
            bytes: 0,
            entries: 0,
        }
    }
}

/// What an unpacked tar stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// An image layer: every entry kind a root filesystem has, whiteouts, owners.
    Layer,
    /// The outer archive of an image (an OCI layout or docker save tarball): regular
    /// files and directories only, private to the importer (0600/0700), names taken
    /// literally.
    Archive,
}

/// Applies the image layer read from `file` onto `root`, charging `budget`; `label` names
/// the layer in errors. Public for the fuzz target; imports go through
/// [`crate::archive::unpack_image`].
pub fn apply_layer(
    file: std::fs::File,
    label: &Path,
    root: &Root,
    budget: &mut Budget,
) -> Result<Applied, LayerError> {
    unpack(file, label, root, budget, Policy::Layer)
}

/// Unpacks the tar stream in `file` (gzip-compressed or not) onto `root` under `policy`.
pub fn unpack(
    file: std::fs::File,
    label: &Path,
    root: &Root,
    budget: &mut Budget,
    policy: Policy,
) -> Result<Applied, LayerError> {
    let layer = label;
    let (meter, gauge) =
        Meter::new(file, budget.limits, budget.bytes).map_err(|source| LayerError::Open {
            path: layer.to_path_buf(),
            source,
        })?;
    let mut applier = Applier {
        layer: layer.to_path_buf(),
        root,
        gauge: gauge.clone(),
        written: HashSet::new(),
        chown: policy == Policy::Layer && rustix::process::geteuid().is_root(),
        policy,
    };
    let mut archive = tar::Archive::new(meter);
    let mut entries = 0u64;
    let result = (|| {
        for entry in archive.entries().map_err(|e| applier.read_error(e))? {
            let entry = entry.map_err(|e| applier.read_error(e))?;
            entries += 1;
            if budget.entries + entries > budget.limits.max_entries {
                return Err(LayerError::Cap {
                    layer: applier.layer.clone(),
                    breach: Breach::Entries(budget.limits.max_entries),
                });
            }
            applier.entry(entry)?;
        }
        Ok(())
    })();
    result?;
    // The diff_id covers the whole stream, end-of-archive blocks and padding included.
    let mut rest = archive.into_inner();
    gauge.set_in_data(true);
    io::copy(&mut rest, &mut io::sink()).map_err(|e| applier.read_error(e))?;
    budget.bytes += gauge.unpacked();
    budget.entries += entries;
    Ok(Applied {
        diff_id: gauge.diff_id(),
        bytes: gauge.unpacked(),
        entries,
    })
}

struct Applier<'a> {
    layer: PathBuf,
    root: &'a Root,
    gauge: Gauge,
    /// Paths this layer made, with their ancestors: an opaque directory keeps them.
    written: HashSet<PathBuf>,
    chown: bool,
    policy: Policy,
}

impl Applier<'_> {
    fn read_error(&self, source: io::Error) -> LayerError {
        match self.gauge.breach() {
            Some(breach) => LayerError::Cap {
                layer: self.layer.clone(),
                breach,
            },
            None => LayerError::Read {
                layer: self.layer.clone(),
                source,
            },
        }
    }

    fn refuse(&self, entry: &Path, why: impl Into<String>) -> LayerError {
        LayerError::Entry {
            layer: self.layer.clone(),
            entry: entry.to_path_buf(),
            why: why.into(),
        }
    }

    fn write_error(
        &self,
        entry: &InPath,
        op: &'static str,
    ) -> impl FnOnce(io::Error) -> LayerError {
        let layer = self.layer.clone();
        let entry = entry.as_path().to_path_buf();
        move |source| LayerError::Write {
            layer,
            entry,
            op,
            source,
        }
    }

    fn path_error(&self, source: RootError) -> LayerError {
        LayerError::Path {
            layer: self.layer.clone(),
            source,
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw = entry.path().map_err(|e| self.read_error(e))?.into_owned();
        let path = InPath::new(&raw).map_err(|e| self.path_error(e))?;
        let name = path.name().to_os_string();
        if self.policy == Policy::Archive {
            self.archive_entry(&raw, &path, &mut entry)?;
        } else if name == OPAQUE {
            self.opaque(&path.parent())?;
        } else if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT.as_bytes()) {
            self.whiteout(&path.with_name(OsStr::from_bytes(hidden)))?;
        } else {
            self.create(&raw, &path, &mut entry)?;
            self.remember(&path);
        }
        // Whatever the kind, the entry's data (if any) is read as data, never as metadata.
        self.gauge.set_in_data(true);
        let drained = io::copy(&mut entry, &mut io::sink());
        self.gauge.set_in_data(false);
        drained.map_err(|e| self.read_error(e))?;
        self.gauge.entry_done();
        Ok(())
    }

    /// Makes the entry `path` (anything but a whiteout).
    fn create<R: Read>(
        &mut self,
        raw: &Path,
        path: &InPath,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), LayerError> {
        let name = path.name().to_os_string();
        let kind = entry.header().entry_type();
        let meta = Meta::of(entry.header()).map_err(|why| self.refuse(raw, why))?;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let parent = self.replace(path, false)?;
                self.file(&parent, path, entry, &meta)?;
            }
            tar::EntryType::Directory => self.directory(path, &meta)?,
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.read_error(e))?
                    .ok_or_else(|| self.refuse(raw, "a symlink without a target"))?
                    .into_owned();
                let parent = self.replace(path, false)?;
                rustix::fs::symlinkat(&target, &parent, &name)
                    .map_err(|e| self.write_error(path, "create symlink")(e.into()))?;
                self.own_at(&parent, path, &meta)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.read_error(e))?
                    .ok_or_else(|| self.refuse(raw, "a hard link without a target"))?;
                let target = InPath::new(&target).map_err(|e| self.path_error(e))?;
                self.hard_link(path, &target)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                self.node(path, kind, entry.header(), &meta)?;
            }
            tar::EntryType::XGlobalHeader => {}
            other => return Err(self.refuse(raw, format!("entry type {other:?} is not supported"))),
        }
        Ok(())
    }

    /// An entry of an image's outer archive: a file or directory, nothing else.
    fn archive_entry<R: Read>(
        &mut self,
        raw: &Path,
        path: &InPath,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), LayerError> {
        let meta = Meta {
            mode: Mode::from_raw_mode(0o600),
            ..Meta::default()
        };
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let parent = self.replace(path, false)?;
                self.file(&parent, path, entry, &meta)
            }
            tar::EntryType::Directory => self.directory(
                path,
                &Meta {
                    mode: Mode::from_raw_mode(0o700),
                    ..meta
                },
            ),
            tar::EntryType::XGlobalHeader => Ok(()),
            other => Err(self.refuse(
                raw,
                format!(
                    "an image archive holds only files and directories, not a {}",
                    kind_name(other)
                ),
            )),
        }
    }

    fn remember(&mut self, path: &InPath) {
        let mut p = path.as_path();
        while self.written.insert(p.to_path_buf()) {
            match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                _ => break,
            }
        }
    }

    fn opaque(&mut self, dir: &InPath) -> Result<(), LayerError> {
        let Some(fd) = self.root.dir(dir, false).map_err(|e| self.path_error(e))? else {
            return Ok(());
        };
        let written = &self.written;
        root::clear_dir(&fd, |name| {
            written.contains(&dir.join(name).as_path().to_path_buf())
        })
        .map_err(self.write_error(dir, "empty opaque directory"))
    }

    fn whiteout(&mut self, hidden: &InPath) -> Result<(), LayerError> {
        if hidden.is_root() {
            return Err(self.refuse(hidden.as_path(), "a whiteout of the image's root"));
        }
        let Some(parent) = self
            .root
            .dir(&hidden.parent(), false)
            .map_err(|e| self.path_error(e))?
        else {
            return Ok(());
        };
        root::remove_at(&parent, hidden.name()).map_err(self.write_error(hidden, "remove"))
    }

    /// Opens `path`'s parent (creating it), and clears `path` unless both it and the new
    /// entry are directories.
    fn replace(&mut self, path: &InPath, new_is_dir: bool) -> Result<OwnedFd, LayerError> {
        let parent = self
            .root
            .dir(&path.parent(), true)
            .map_err(|e| self.path_error(e))?
            .ok_or_else(|| self.refuse(path.as_path(), "its parent directory cannot be made"))?;
        let existing =
            root::kind_at(&parent, path.name()).map_err(self.write_error(path, "stat"))?;
        if existing != Kind::Missing && !(new_is_dir && existing == Kind::Directory) {
            root::remove_at(&parent, path.name()).map_err(self.write_error(path, "replace"))?;
        }
        Ok(parent)
    }

    fn file<R: Read>(
        &mut self,
        parent: &OwnedFd,
        path: &InPath,
        data: &mut tar::Entry<'_, R>,
        meta: &Meta,
    ) -> Result<(), LayerError> {
        let fd = rustix::fs::openat(
            parent,
            path.name(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.write_error(path, "create")(e.into()))?;
        let mut file = std::fs::File::from(fd);
        self.gauge.set_in_data(true);
        let copied = io::copy(data, &mut file);
        self.gauge.set_in_data(false);
        copied.map_err(|e| match self.gauge.breach() {
            Some(_) => self.read_error(e),
            None => self.write_error(path, "write")(e),
        })?;
        self.own(&file, path, meta)?;
        rustix::fs::futimens(&file, &meta.times())
            .map_err(|e| self.write_error(path, "set times")(e.into()))
    }

    fn directory(&mut self, path: &InPath, meta: &Meta) -> Result<(), LayerError> {
        let fd = if path.is_root() {
            self.root.dir(path, false).map_err(|e| self.path_error(e))?
        } else {
            let parent = self.replace(path, true)?;
            match rustix::fs::mkdirat(&parent, path.name(), Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(self.write_error(path, "create directory")(e.into())),
            }
            let fd = rustix::fs::openat(
                &parent,
                path.name(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.write_error(path, "open directory")(e.into()))?;
            Some(fd)
        };
        let fd = fd.ok_or_else(|| self.refuse(path.as_path(), "the root is missing"))?;
        self.own(&fd, path, meta)
    }

    fn hard_link(&mut self, path: &InPath, target: &InPath) -> Result<(), LayerError> {
        if target.is_root() {
            return Err(self.refuse(path.as_path(), "a hard link to the image's root"));
        }
        let source = self
            .root
            .dir(&target.parent(), false)
            .map_err(|e| self.path_error(e))?
            .ok_or_else(|| {
                self.refuse(
                    path.as_path(),
                    format!(
                        "hard link target {} is not in the image",
                        target.as_path().display()
                    ),
                )
            })?;
        if root::kind_at(&source, target.name()).map_err(self.write_error(target, "stat"))?
            == Kind::Missing
        {
            return Err(self.refuse(
                path.as_path(),
                format!(
                    "hard link target {} is not in the image",
                    target.as_path().display()
                ),
            ));
        }
        if target == path {
            return Ok(());
        }
        let parent = self.replace(path, false)?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked as the symlink itself.
        rustix::fs::linkat(
            &source,
            target.name(),
            &parent,
            path.name(),
            AtFlags::empty(),
        )
        .map_err(|e| self.write_error(path, "create hard link")(e.into()))
    }

    fn node(
        &mut self,
        path: &InPath,
        kind: tar::EntryType,
        header: &tar::Header,
        meta: &Meta,
    ) -> Result<(), LayerError> {
        let (file_type, dev) = match kind {
            tar::EntryType::Fifo => (FileType::Fifo, 0),
            _ => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let ft = if kind == tar::EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                (ft, rustix::fs::makedev(major, minor))
            }
        };
        let parent = self.replace(path, false)?;
        rustix::fs::mknodat(
            &parent,
            path.name(),
            file_type,
            Mode::from_raw_mode(0o600),
            dev,
        )
        .map_err(|e| self.write_error(path, "create node")(e.into()))?;
        self.own_at(&parent, path, meta)?;
        // The node was just made by us in a directory only we write: chmodat (which has no
        // no-follow form for nodes) reaches that node.
        rustix::fs::chmodat(&parent, path.name(), meta.mode, AtFlags::empty())
            .map_err(|e| self.write_error(path, "set mode")(e.into()))
    }

    /// Sets owner, then mode (chown clears setuid bits), through the entry's descriptor.
    fn own(&self, fd: impl AsFd, path: &InPath, meta: &Meta) -> Result<(), LayerError> {
        if self.chown {
            rustix::fs::fchown(&fd, Some(meta.uid), Some(meta.gid))
                .map_err(|e| self.write_error(path, "set owner")(e.into()))?;
        }
        rustix::fs::fchmod(&fd, meta.mode).map_err(|e| self.write_error(path, "set mode")(e.into()))
    }

    /// Sets the owner and times of `path`'s last name itself (a symlink is not followed).
    fn own_at(&self, parent: &OwnedFd, path: &InPath, meta: &Meta) -> Result<(), LayerError> {
        if self.chown {
            rustix::fs::chownat(
                parent,
                path.name(),
                Some(meta.uid),
                Some(meta.gid),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.write_error(path, "set owner")(e.into()))?;
        }
        rustix::fs::utimensat(
            parent,
            path.name(),
            &meta.times(),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.write_error(path, "set times")(e.into()))
    }
}

fn kind_name(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Symlink => "symlink".into(),
        tar::EntryType::Link => "hard link".into(),
        tar::EntryType::Char => "character device".into(),
        tar::EntryType::Block => "block device".into(),
        tar::EntryType::Fifo => "FIFO".into(),
        other => format!("{other:?} entry"),
    }
}

/// An entry's owner, mode and modification time, range-checked.
#[derive(Debug, Clone, Copy)]
struct Meta {
    uid: rustix::fs::Uid,
    gid: rustix::fs::Gid,
    mode: Mode,
    mtime: i64,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            uid: rustix::fs::Uid::ROOT,
            gid: rustix::fs::Gid::ROOT,
            mode: Mode::from_raw_mode(0o600),
            mtime: 0,
        }
    }
}

impl Meta {
    fn of(h: &tar::Header) -> Result<Meta, String> {
        let id = |v: io::Result<u64>, what: &str| -> Result<u32, String> {
            let v = v.map_err(|e| format!("unreadable {what}: {e}"))?;
            u32::try_from(v)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| format!("{what} {v} is out of range"))
        };
        let uid = id(h.uid(), "uid")?;
        let gid = id(h.gid(), "gid")?;
        let mode = h.mode().map_err(|e| format!("unreadable mode: {e}"))? & 0o7777;
        let mtime = h
            .mtime()
            .ok()
            .and_then(|t| i64::try_from(t).ok())
            .unwrap_or(0);
        Ok(Meta {
            uid: rustix::fs::Uid::from_raw(uid),
            gid: rustix::fs::Gid::from_raw(gid),
            mode: Mode::from_raw_mode(mode),
            mtime,
        })
    }

    fn times(&self) -> Timestamps {
        let t = rustix::fs::Timespec {
            tv_sec: self.mtime,
            tv_nsec: 0,
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A tar of hand-written headers: (path, type, link target, data).
    fn tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, kind, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..path.len()].copy_from_slice(path.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn apply(root: &Path, bytes: &[u8]) -> Result<Applied, LayerError> {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        let mut budget = Budget::new(Limits::default());
        apply_layer(
            f,
            Path::new("test"),
            &Root::open(root).unwrap(),
            &mut budget,
        )
    }

    const F: tar::EntryType = tar::EntryType::Regular;
    const D: tar::EntryType = tar::EntryType::Directory;

    #[test]
    fn layers_apply_in_order_with_whiteouts_and_opaque_directories() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        apply(
            root,
            &tar(&[
                ("etc/", D, "", b""),
                ("etc/keep", F, "", b"1"),
                ("etc/gone", F, "", b"1"),
                ("opq/old", F, "", b"1"),
            ]),
        )
        .unwrap();
        let applied = apply(
            root,
            &tar(&[
                ("etc/.wh.gone", F, "", b""),
                ("etc/keep", F, "", b"2"),
                ("opq/new", F, "", b"2"),
                ("opq/.wh..wh..opq", F, "", b""),
                ("nothere/.wh.x", F, "", b""),
            ]),
        )
        .unwrap();
        assert_eq!(applied.entries, 5);
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
        // opq/ had no entry of its own: made 0755 whatever the umask.
        assert_eq!(
            std::fs::metadata(root.join("opq")).unwrap().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn many_empty_entries_are_not_taken_for_metadata() {
        let t = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..5000).map(|i| format!("d/f{i}")).collect();
        let entries: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), F, "", &b""[..]))
            .collect();
        // 5,000 headers are 2.5 MiB read with no entry data between them.
        let applied = apply(t.path(), &tar(&entries)).unwrap();
        assert_eq!(applied.entries, 5000);
    }

    #[test]
    fn a_huge_gnu_long_name_is_stopped_before_it_is_held_in_memory() {
        let t = tempfile::tempdir().unwrap();
        let long = vec![b'a'; 4 << 20];
        let bytes = tar(&[
            ("././@LongLink", tar::EntryType::GNULongName, "", &long),
            ("x", F, "", b"x"),
        ]);
        let e = apply(t.path(), &bytes).unwrap_err();
        assert!(
            matches!(
                e,
                LayerError::Cap {
                    breach: Breach::Metadata(_),
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn the_diff_id_covers_the_whole_stream() {
        use sha2::Digest;
        let t = tempfile::tempdir().unwrap();
        let bytes = tar(&[("a", F, "", b"hello")]);
        let applied = apply(t.path(), &bytes).unwrap();
        let want = crate::meter::hex(&sha2::Sha256::digest(&bytes));
        assert_eq!(applied.diff_id, format!("sha256:{want}"));
        assert_eq!(applied.bytes, bytes.len() as u64);
    }
}
