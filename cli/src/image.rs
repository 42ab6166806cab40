//! Images the CLI runs: those imported into the store ([`crate::store`]), and the built-in
//! `busybox`: a root filesystem made from Debian's `busybox-static` (`/bin/busybox` and a
//! link per applet, `/etc/passwd` and `/etc/group`), copied once into an erofs image under
//! the state directory and reused by every run. An imported image of the same name wins.

use std::path::{Path, PathBuf};

/// The one image name this build knows, with or without the `:latest` tag.
pub const BUSYBOX: &str = "busybox";
const BUSYBOX_BINARY: &str = "/bin/busybox";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("unknown image {0:?}: import it first (hull image import FILE), or use the built-in busybox")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{BUSYBOX_BINARY} is missing: apt-get install busybox-static")]
    NoBusybox,
    #[error(transparent)]
    Io(#[from] hull_host::PathError),
    #[error("building the image")]
    Build(#[source] hull_host::rootfs::RootfsError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let at = hull_host::PathError::at(what, path);
    move |source| ImageError::Io(at(source))
}

/// The erofs image of `name` and how the image says to run it.
pub fn resolve(store: &Path, name: &str) -> Result<(PathBuf, crate::store::RunConfig), ImageError> {
    match crate::store::lookup(store, name) {
        Ok(found) => return Ok(found),
        Err(crate::store::StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if name != BUSYBOX && name != "busybox:latest" {
        return Err(ImageError::Unknown(name.into()));
    }
    let config = crate::store::RunConfig {
        env: vec![crate::oci::DEFAULT_PATH.into()],
        cmd: vec!["sh".into()],
        ..Default::default()
    };
    Ok((root_image(store, name)?, config))
}

/// The built-in busybox's erofs image, made under `store` the first time.
fn root_image(store: &Path, name: &str) -> Result<PathBuf, ImageError> {
    if name != BUSYBOX && name != "busybox:latest" {
        return Err(ImageError::Unknown(name.into()));
    }
    let dir = store.join(BUSYBOX);
    let image = dir.join("rootfs.erofs");
    if image.exists() {
        return Ok(image);
    }
    if !Path::new(BUSYBOX_BINARY).exists() {
        return Err(ImageError::NoBusybox);
    }
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    // Built beside and renamed into place: concurrent first runs each build their own and
    // the last rename wins, with the same bytes.
    let tree = tempdir_in(&dir)?;
    let result = busybox_tree(&tree).and_then(|()| {
        let tmp = dir.join(format!("rootfs.erofs.{}", std::process::id()));
        hull_host::rootfs::build_image(&tree, &tmp).map_err(ImageError::Build)?;
        std::fs::rename(&tmp, &image).map_err(io("rename into place", &image))
    });
    let _ = std::fs::remove_dir_all(&tree);
    result.map(|()| image)
}

fn tempdir_in(dir: &Path) -> Result<PathBuf, ImageError> {
    let p = dir.join(format!("tree.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).map_err(io("create", &p))?;
    Ok(p)
}

/// Lays out a busybox root filesystem in `root`.
fn busybox_tree(root: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev", "run"] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).map_err(io("create", &p))?;
    }
    let tmp = root.join("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))
        .map_err(io("chmod", &tmp))?;
    let bin = root.join("bin/busybox");
    std::fs::copy(BUSYBOX_BINARY, &bin).map_err(io("copy busybox to", &bin))?;
    let list = std::process::Command::new(BUSYBOX_BINARY)
        .arg("--list")
        .output()
        .map_err(io("run", Path::new(BUSYBOX_BINARY)))?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = root.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &link).map_err(io("link", &link))?;
    }
    let passwd = root.join("etc/passwd");
    std::fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .map_err(io("write", &passwd))?;
    let group = root.join("etc/group");
    std::fs::write(&group, "root:x:0:\nnogroup:x:65534:\n").map_err(io("write", &group))?;
    // The tree is the image: world-readable as any image's, whatever hull's own umask.
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).map_err(io("chmod", p))
    };
    mode(root, 0o755)?;
    for d in ["bin", "etc", "root", "proc", "sys", "dev", "run"] {
        mode(&root.join(d), if d == "root" { 0o700 } else { 0o755 })?;
    }
    mode(&passwd, 0o644)?;
    mode(&group, 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_built_in_image_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let e = resolve(dir.path(), "alpine").unwrap_err();
        assert!(e.to_string().contains("unknown image \"alpine\""), "{e}");
    }

    #[test]
    fn the_busybox_tree_has_the_shell_and_users() {
        if !Path::new(BUSYBOX_BINARY).exists() {
            eprintln!("skipped: no {BUSYBOX_BINARY}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        busybox_tree(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(std::fs::read_to_string(dir.path().join("etc/passwd"))
            .unwrap()
            .starts_with("root:x:0:0"));
    }
}
