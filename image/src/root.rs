//! A directory that untrusted paths are resolved under.
//!
//! [`Root`] holds a descriptor of the directory an archive unpacks into. A path an archive
//! names is first reduced to [`InPath`] (plain names only: no `..`, a leading `/` dropped),
//! then its parent directory is opened from the root's descriptor with `openat2` and
//! `RESOLVE_BENEATH`: a symlink among the parents is followed only while it stays below
//! the root, and one that leads out (absolute, or climbing with `..`) fails with `EXDEV`.
//! The last component is only ever touched through that parent's descriptor with the
//! `*at` calls and without following symlinks, so no joined path string ever reaches the
//! kernel and nothing outside the root can be created, linked, changed or removed.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

/// Deepest directory nesting an archive may ask for (real images stay far below it).
pub const MAX_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("{path}: names a parent directory (..)")]
    ParentDir { path: PathBuf },
    #[error("{path}: nested deeper than {MAX_DEPTH} directories")]
    TooDeep { path: PathBuf },
    #[error("{path}: a parent is a symlink that leads out of the image")]
    Escapes { path: PathBuf },
    #[error("{path}: a parent is not a directory")]
    NotDirectory { path: PathBuf },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A path inside an image: one or more plain names, or none for the root itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InPath(PathBuf);

impl InPath {
    /// Reduces an archive's path to plain names: `.` and a leading `/` are dropped (as
    /// containerd does), `..` is refused.
    pub fn new(path: &Path) -> Result<InPath, RootError> {
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(n) => rel.push(n),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    return Err(RootError::ParentDir {
                        path: path.to_path_buf(),
                    })
                }
            }
        }
        if rel.components().count() > MAX_DEPTH {
            return Err(RootError::TooDeep { path: rel });
        }
        Ok(InPath(rel))
    }

    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// The last name (empty for the root).
    pub fn name(&self) -> &OsStr {
        self.0.file_name().unwrap_or_default()
    }

    pub fn parent(&self) -> InPath {
        InPath(self.0.parent().map(Path::to_path_buf).unwrap_or_default())
    }

    pub fn join(&self, name: &OsStr) -> InPath {
        InPath(self.0.join(name))
    }

    /// This path with its last name replaced.
    pub fn with_name(&self, name: &OsStr) -> InPath {
        self.parent().join(name)
    }
}

/// An open directory that archive paths resolve under. See the module documentation.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a path names, looked up without following a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    Directory,
    Other,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(rustix::io::Errno) -> RootError {
    let path = path.to_path_buf();
    move |e| RootError::Io {
        op,
        path,
        source: e.into(),
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);
const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

impl Root {
    /// Opens `dir` (which the caller made, so it is trusted) as a root.
    pub fn open(dir: &Path) -> Result<Root, RootError> {
        let fd = rustix::fs::open(dir, DIR_FLAGS, Mode::empty()).map_err(io_err("open", dir))?;
        Ok(Root {
            fd,
            path: dir.to_path_buf(),
        })
    }

    /// The host path of the root, for messages and for tools that take a path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens directory `rel` beneath the root; with `create`, makes missing directories
    /// (0755, owned by the importer) on the way. `Ok(None)` when it is missing and `create`
    /// is false.
    pub fn dir(&self, rel: &InPath, create: bool) -> Result<Option<OwnedFd>, RootError> {
        if rel.is_root() {
            let fd = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
                .map_err(io_err("open", &self.path))?;
            return Ok(Some(fd));
        }
        use rustix::io::Errno;
        match rustix::fs::openat2(&self.fd, rel.as_path(), DIR_FLAGS, Mode::empty(), BENEATH) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) if create => {
                let Some(parent) = self.dir(&rel.parent(), true)? else {
                    return Ok(None);
                };
                match rustix::fs::mkdirat(&parent, rel.name(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err("create directory", rel.as_path())(e)),
                }
                // The name exists now; a symlink there (a dangling one made EEXIST) is
                // refused rather than followed.
                let fd = rustix::fs::openat(
                    &parent,
                    rel.name(),
                    DIR_FLAGS | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(|e| self.resolve_error(rel, e))?;
                // 0755 whatever the importer's umask (hull runs with 077): a directory
                // the archive implies but does not list is the image's, read by its users.
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
                    .map_err(io_err("set mode", rel.as_path()))?;
                Ok(Some(fd))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.resolve_error(rel, e)),
        }
    }

    fn resolve_error(&self, rel: &InPath, e: rustix::io::Errno) -> RootError {
        use rustix::io::Errno;
        let path = rel.as_path().to_path_buf();
        match e {
            Errno::XDEV | Errno::LOOP => RootError::Escapes { path },
            Errno::NOTDIR => RootError::NotDirectory { path },
            Errno::NOSYS => RootError::Io {
                op: "resolve (openat2 needs Linux 5.6 or later)",
                path,
                source: e.into(),
            },
            e => io_err("open", rel.as_path())(e),
        }
    }

    /// Opens `rel` read-only for a regular file of the archive itself (a blob, a manifest):
    /// no symlink at all is followed, so a manifest cannot point at a host file.
    pub fn open_file(&self, rel: &InPath) -> Result<std::fs::File, RootError> {
        let fd = rustix::fs::openat2(
            &self.fd,
            rel.as_path(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .map_err(|e| self.resolve_error(rel, e))?;
        let st = rustix::fs::fstat(&fd).map_err(io_err("stat", rel.as_path()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(RootError::Io {
                op: "open (not a regular file)",
                path: rel.as_path().to_path_buf(),
                source: io::ErrorKind::InvalidInput.into(),
            });
        }
        Ok(std::fs::File::from(fd))
    }
}

/// What `name` in directory `dir` is, without following a symlink.
pub fn kind_at(dir: impl AsFd, name: &OsStr) -> io::Result<Kind> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(match rustix::fs::FileType::from_raw_mode(st.st_mode) {
            rustix::fs::FileType::Directory => Kind::Directory,
            _ => Kind::Other,
        }),
        Err(rustix::io::Errno::NOENT) => Ok(Kind::Missing),
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` from `dir` whatever it is; a directory goes with everything in it. Never
/// follows a symlink: a symlink is removed, not what it points at.
pub fn remove_at(dir: impl AsFd, name: &OsStr) -> io::Result<()> {
    remove_at_depth(dir.as_fd(), name, 0)
}

fn remove_at_depth(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr, depth: usize) -> io::Result<()> {
    match kind_at(dir, name)? {
        Kind::Missing => Ok(()),
        Kind::Other => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
        Kind::Directory => {
            if depth > MAX_DEPTH + 1 {
                return Err(io::Error::other("directory tree too deep to remove"));
            }
            let sub = rustix::fs::openat(dir, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty())?;
            clear_dir_depth(sub.as_fd(), |_| false, depth + 1)?;
            Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
        }
    }
}

/// Removes everything in `dir` except the names `keep` says to keep.
pub fn clear_dir(dir: impl AsFd, keep: impl Fn(&OsStr) -> bool) -> io::Result<()> {
    clear_dir_depth(dir.as_fd(), keep, 0)
}

fn clear_dir_depth(
    dir: std::os::fd::BorrowedFd<'_>,
    keep: impl Fn(&OsStr) -> bool,
    depth: usize,
) -> io::Result<()> {
    let mut names: Vec<OsString> = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." && !keep(name) {
            names.push(name.to_os_string());
        }
    }
    for name in names {
        remove_at_depth(dir, &name, depth)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_lose_dots_and_leading_slashes_and_refuse_parents() {
        assert_eq!(
            InPath::new(Path::new("./a/b")).unwrap().as_path(),
            Path::new("a/b")
        );
        assert_eq!(
            InPath::new(Path::new("/etc/x")).unwrap().as_path(),
            Path::new("etc/x")
        );
        assert!(InPath::new(Path::new(".")).unwrap().is_root());
        assert!(matches!(
            InPath::new(Path::new("a/../../b")),
            Err(RootError::ParentDir { .. })
        ));
        let deep = "d/".repeat(MAX_DEPTH + 1);
        assert!(matches!(
            InPath::new(Path::new(&deep)),
            Err(RootError::TooDeep { .. })
        ));
    }

    #[test]
    fn parents_through_a_symlink_out_of_the_root_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let root_dir = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&root_dir).unwrap();
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::os::unix::fs::symlink(&outside, root_dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", root_dir.join("rel")).unwrap();
        std::fs::create_dir(root_dir.join("real")).unwrap();
        std::os::unix::fs::symlink("real", root_dir.join("inside")).unwrap();
        let root = Root::open(&root_dir).unwrap();
        for p in ["abs/sub", "rel/sub", "abs/new/dir"] {
            let e = root
                .dir(&InPath::new(Path::new(p)).unwrap(), true)
                .unwrap_err();
            assert!(matches!(e, RootError::Escapes { .. }), "{p}: {e}");
        }
        assert!(!outside.join("new").exists());
        // A symlink that stays inside is followed, as it would be in the guest.
        let made = root
            .dir(&InPath::new(Path::new("inside/x")).unwrap(), true)
            .unwrap();
        assert!(made.is_some());
        assert!(root_dir.join("real/x").is_dir());
    }

    #[test]
    fn remove_at_takes_a_symlink_not_its_target() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), "x").unwrap();
        let d = t.path().join("d");
        std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
        std::os::unix::fs::symlink(&target, d.join("sub/link")).unwrap();
        let dir = rustix::fs::open(&d, DIR_FLAGS, Mode::empty()).unwrap();
        remove_at(&dir, OsStr::new("sub")).unwrap();
        assert!(!d.join("sub").exists());
        assert!(target.join("keep").exists());
    }
}
