//! The virtio-fs threads: `hull-fs-start`, which starts a `hull-fs` thread for each
//! activation of the device, and those session threads, which run the guest's FUSE
//! requests through the guard (`devices/virtio/fs/guard.rs`) and fuse-backend-rs's
//! passthrough file system as file system calls on the shared directories.
//!
//! No argument filter on the file calls: the guest picks the names, modes and flags, the
//! guard refuses what must not reach the host (device nodes, set-user-ID modes, privileged
//! xattrs), and the jail's mount namespace holds nothing but the shares and /proc.
//!
//! Not here: `setresuid`/`setresgid`, which the passthrough would call to act as a guest
//! user other than root; the guard hands it every request as uid 0 (a jailed VMM could
//! not switch ids anyway). `name_to_handle_at`/`open_by_handle_at`: file handles are off.
//! `capget`: the passthrough asks for CAP_FSETID only with FUSE_HANDLE_KILLPRIV_V2, which
//! is off.

use seccompiler::SeccompRule;

use super::{allow, allow_arg, thread_creation};

pub(super) fn rules() -> Vec<(i64, Vec<SeccompRule>)> {
    let mut rules = thread_creation();
    rules.extend([
        // Waiting for the guest's kick (an eventfd), file data (the passthrough reads and
        // writes through vectored calls at an offset).
        allow(libc::SYS_read),
        allow(libc::SYS_preadv),
        allow(libc::SYS_pwritev),
        allow(libc::SYS_pread64),
        allow(libc::SYS_pwrite64),
        allow(libc::SYS_lseek),
        // Lookups: inodes are kept as O_PATH descriptors and reopened through
        // /proc/self/fd; directories are read from descriptors.
        allow(libc::SYS_openat),
        allow(libc::SYS_newfstatat),
        allow(libc::SYS_statx),
        allow(libc::SYS_readlinkat),
        allow(libc::SYS_getdents64),
        allow(libc::SYS_fstatfs),
        allow(libc::SYS_dup),
        // Creating, linking, renaming, removing.
        allow(libc::SYS_mkdirat),
        allow(libc::SYS_mknodat),
        allow(libc::SYS_symlinkat),
        allow(libc::SYS_linkat),
        allow(libc::SYS_renameat2),
        allow(libc::SYS_unlinkat),
        // Attributes: modes, owners (refused by the host kernel for what the VMM does not
        // own), times, sizes, space, flushes.
        allow(libc::SYS_fchmod),
        allow(libc::SYS_fchmodat),
        allow(libc::SYS_fchownat),
        allow(libc::SYS_utimensat),
        allow(libc::SYS_ftruncate),
        allow(libc::SYS_fallocate),
        allow(libc::SYS_fsync),
        allow(libc::SYS_fdatasync),
        // Extended attributes through /proc/self/fd paths (the passthrough's user xattrs;
        // the guard's owner record without following a symlink).
        allow(libc::SYS_getxattr),
        allow(libc::SYS_setxattr),
        allow(libc::SYS_listxattr),
        allow(libc::SYS_removexattr),
        allow(libc::SYS_lgetxattr),
        allow(libc::SYS_lsetxattr),
        // The guest's umask, applied per request around a create.
        allow(libc::SYS_umask),
        // The guard's view of the VMM's own ids.
        allow(libc::SYS_geteuid),
        allow(libc::SYS_getegid),
        // Open flags the passthrough adjusts after an open, duplicates.
        allow_arg(
            libc::SYS_fcntl,
            1,
            &[
                libc::F_GETFL as u64,
                libc::F_SETFL as u64,
                libc::F_DUPFD_CLOEXEC as u64,
            ],
        ),
    ]);
    rules
}
