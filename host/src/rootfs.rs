//! A container's root filesystem on its way into the guest: containerd's mounts (an
//! overlay of snapshot layers, or a bind) are mounted at `<bundle>/rootfs` as runc's shim
//! would, copied into an uncompressed erofs image with `mkfs.erofs`, and unmounted again.
//! The image is what a drive slot carries into the VM; the guest puts a writable overlay
//! over it unless the spec asks for a read-only root.
//!
//! Why an image and not virtio-fs (docs/shim.md): a block device costs the guest kernel one
//! request per block of metadata or data, where FUSE costs a round trip per lookup, open,
//! read and release, each one guest kernel work, which hosts whose KVM emulates guest
//! kernel code pay for by the instruction; and a guest restored from a template holds no
//! FUSE session that a new virtiofsd would have to take over. The price: the image is a
//! copy (made at native speed on the host), and writes to the root stay in the guest.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::PathError;
use std::process::Command;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs mount {index} ({kind}): unknown option {option:?}")]
    Option {
        index: usize,
        kind: String,
        option: String,
    },
    #[error("mount {kind} {source_path} on {target}")]
    Mount {
        kind: String,
        source_path: String,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] crate::PathError),
    #[error("the bundle has no rootfs: containerd passed no mounts and {0} is empty")]
    Empty(PathBuf),
    #[error("mkfs.erofs failed ({status}): {stderr}; is erofs-utils installed?")]
    Mkfs { status: String, stderr: String },
}

/// One of containerd's rootfs mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Mount flags by option name; `true` clears the flag instead of setting it.
const FLAGS: &[(&str, libc::c_ulong, bool)] = &[
    ("ro", libc::MS_RDONLY, false),
    ("rw", libc::MS_RDONLY, true),
    ("nosuid", libc::MS_NOSUID, false),
    ("suid", libc::MS_NOSUID, true),
    ("nodev", libc::MS_NODEV, false),
    ("dev", libc::MS_NODEV, true),
    ("noexec", libc::MS_NOEXEC, false),
    ("exec", libc::MS_NOEXEC, true),
    ("bind", libc::MS_BIND, false),
    ("rbind", libc::MS_BIND | libc::MS_REC, false),
    ("noatime", libc::MS_NOATIME, false),
    ("relatime", libc::MS_RELATIME, false),
    ("nodiratime", libc::MS_NODIRATIME, false),
];

/// Splits mount options into flags and the filesystem's own data string.
pub fn parse_options(index: usize, m: &HostMount) -> Result<(libc::c_ulong, String), RootfsError> {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in &m.options {
        match FLAGS.iter().find(|(name, _, _)| name == o) {
            Some((_, f, true)) => flags &= !f,
            Some((_, f, false)) => flags |= f,
            // Filesystem options are key=value (overlay's dirs, index=off) or bare words the
            // filesystem knows; a bare word we cannot place would be silently wrong.
            None if o.contains('=') || m.kind == "overlay" => data.push(o.as_str()),
            None => {
                return Err(RootfsError::Option {
                    index,
                    kind: m.kind.clone(),
                    option: o.clone(),
                })
            }
        }
    }
    Ok((flags, data.join(",")))
}

fn cstring(s: &[u8]) -> CString {
    CString::new(s.iter().copied().filter(|&b| b != 0).collect::<Vec<u8>>()).unwrap_or_default()
}

/// Mounts containerd's rootfs mounts on `target`, in order.
pub fn mount_all(mounts: &[HostMount], target: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(target).map_err(PathError::at("create", target))?;
    for (index, m) in mounts.iter().enumerate() {
        let (flags, data) = parse_options(index, m)?;
        let src = cstring(m.source.as_bytes());
        let dst = cstring(target.as_os_str().as_bytes());
        let kind = cstring(m.kind.as_bytes());
        let data_c = cstring(data.as_bytes());
        // SAFETY: every pointer is a NUL-terminated string that outlives the call; the
        // kernel copies them.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                kind.as_ptr(),
                flags & !libc::MS_RDONLY,
                if data.is_empty() {
                    std::ptr::null()
                } else {
                    data_c.as_ptr().cast()
                },
            )
        };
        if rc != 0 {
            let source = std::io::Error::last_os_error();
            return Err(RootfsError::Mount {
                kind: m.kind.clone(),
                source_path: m.source.clone(),
                target: target.to_path_buf(),
                source,
            });
        }
    }
    Ok(())
}

/// Unmounts everything on `target` (lazily: nothing in the host uses it after the copy).
pub fn unmount_all(target: &Path) {
    let dst = cstring(target.as_os_str().as_bytes());
    for _ in 0..8 {
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) } != 0 {
            break;
        }
    }
}

/// Copies the tree at `dir` into an uncompressed erofs image at `image` (ownership, modes
/// and xattrs kept, so the guest sees the image's own users); returns its size in bytes.
pub fn build_image(dir: &Path, image: &Path) -> Result<u64, RootfsError> {
    let empty = std::fs::read_dir(dir)
        .map_err(PathError::at("read", dir))?
        .next()
        .is_none();
    if empty {
        return Err(RootfsError::Empty(dir.to_path_buf()));
    }
    let t = Instant::now();
    let tmp = image.with_extension("tmp");
    let out = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg("-T0")
        .arg(&tmp)
        .arg(dir)
        .output()
        .map_err(PathError::at("run mkfs.erofs for", dir))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(RootfsError::Mkfs {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    std::fs::rename(&tmp, image).map_err(PathError::at("rename into place", image))?;
    let len = std::fs::metadata(image).map(|m| m.len()).unwrap_or(0);
    log::info!(
        "rootfs image {} ({} KiB) built in {:.1} ms",
        image.display(),
        len >> 10,
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(len)
}

/// A read-only volume's source copied into `image`: a directory as the image's root, a
/// file as the one entry of the image (whose name is returned).
pub fn build_volume_image(source: &Path, image: &Path) -> Result<Option<String>, RootfsError> {
    if source.is_dir() {
        return build_image(source, image).map(|_| None);
    }
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let stage = image.with_extension("d");
    let io = PathError::at;
    std::fs::create_dir_all(&stage)
        .and_then(|()| {
            // The image's root: traversable in the guest whatever hull's umask (077).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&stage, std::fs::Permissions::from_mode(0o755))
        })
        .map_err(io("create", &stage))?;
    let copied = std::fs::copy(source, stage.join(&name))
        .map_err(|e| RootfsError::from(io("copy", source)(e)));
    let built = copied.and_then(|_| build_image(&stage, image));
    let _ = std::fs::remove_dir_all(&stage);
    built.map(|_| Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: &str, options: &[&str]) -> HostMount {
        HostMount {
            kind: kind.into(),
            source: "x".into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = parse_options(
            0,
            &m(
                "overlay",
                &["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l"],
            ),
        )
        .unwrap();
        assert_eq!(flags, 0);
        assert_eq!(data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l");
        let (flags, data) = parse_options(0, &m("bind", &["ro", "rbind"])).unwrap();
        assert_eq!(flags, libc::MS_RDONLY | libc::MS_BIND | libc::MS_REC);
        assert!(data.is_empty());
        let (flags, _) = parse_options(0, &m("bind", &["ro", "rw", "rbind"])).unwrap();
        assert_eq!(flags & libc::MS_RDONLY, 0, "a later rw clears ro");
    }

    #[test]
    fn unknown_bare_option_is_refused_by_name() {
        let e = parse_options(2, &m("bind", &["rbind", "frobnicate"])).unwrap_err();
        assert!(e.to_string().contains("frobnicate"), "{e}");
    }

    #[test]
    fn empty_tree_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = build_image(d.path(), &d.path().join("x.erofs")).unwrap_err();
        assert!(matches!(e, RootfsError::Empty(_)));
    }

    #[test]
    fn builds_an_erofs_image_of_a_tree() {
        if Command::new("mkfs.erofs").arg("--help").output().is_err() {
            eprintln!("skipped: mkfs.erofs is not installed (apt-get install erofs-utils)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("bin/hello"), b"hello").unwrap();
        let image = d.path().join("root.erofs");
        let len = build_image(&tree, &image).unwrap();
        assert!(len >= 4096);
        let head = std::fs::read(&image).unwrap();
        // The erofs superblock sits at 1024 with magic 0xE0F5E1E2 (little endian).
        assert_eq!(&head[1024..1028], &0xE0F5_E1E2u32.to_le_bytes());
    }
}
