//! Nothing hull writes on the host is readable by other users: container images hold
//! setuid files and device nodes, volumes hold Kubernetes Secrets, snapshots hold guest
//! memory, sockets reach the agent.
//!
//! The shim and the CLI run with umask 077 ([`restrict_umask`]), so every file they make
//! is 0600 and every directory 0700 whatever umask they were started with; directories
//! that may predate that (`/run/hull/shim`, a template cache) are narrowed by
//! [`private_dir`]. hull-vmm sets its modes explicitly (its virtio-fs server runs it with
//! umask 0).

use std::io;
use std::path::{Path, PathBuf};

/// Makes this process create files 0600 and directories 0700 from now on (children inherit
/// it). Called first thing by the shim and the CLI.
pub fn restrict_umask() {
    // SAFETY: umask only changes this process's file-mode creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
}

/// Makes `dir` (and missing parents) and narrows it to 0700 even if it existed.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Removes a container's host files (its disk images) and then the directories that held
/// them, once empty. Best effort: what is already gone is fine.
pub fn remove_files_and_dirs(files: &[PathBuf]) {
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_dir_narrows_an_existing_directory() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn removing_files_takes_their_emptied_directories() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("root.erofs"), "").unwrap();
        std::fs::write(b.join("volume-0.erofs"), "").unwrap();
        std::fs::write(b.join("someone-else"), "").unwrap();
        remove_files_and_dirs(&[a.join("root.erofs"), b.join("volume-0.erofs")]);
        assert!(!a.exists());
        assert!(
            b.join("someone-else").exists(),
            "a non-empty directory stays"
        );
    }
}
