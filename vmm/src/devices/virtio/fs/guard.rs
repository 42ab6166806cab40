//! The policy between the untrusted guest and a share's passthrough file server.
//!
//! fuse-backend-rs's `PassthroughFs` does what a FUSE request asks with the VMM's own
//! privileges. While the VMM runs as root, a guest could use a share to leave a device
//! node, a setuid-root binary or a file capability on the host, for any host user to
//! use. [`Guarded`] refuses those requests before they reach the host file system. It
//! also serves every request with the VMM's own credentials, because `PassthroughFs`
//! would otherwise switch its thread to the guest caller's uid and gid for each create
//! (`setresuid`), which an unprivileged VMM cannot do. Files the guest creates
//! therefore belong to the VMM on the host, and the guest sees the VMM's ids as root's.
//!
//! The guest kernel still checks its own callers' permissions (virtio-fs always mounts
//! with `default_permissions`), against the ids shown here.

use std::any::Any;
use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::api::BackendFileSystem;
use fuse_backend_rs::transport::FsCacheReqHandler;

/// A request the policy refuses. The guest gets EPERM and the host file system is not
/// touched. Each variant is a way a guest could gain privilege on the host.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A device node is a door into a host driver: a guest-made copy of `/dev/mem` or of
    /// a disk in a shared directory gives whoever on the host opens it that memory or
    /// disk. FIFOs, sockets and regular files made by mknod stay allowed.
    #[error("a character or block device node")]
    DeviceNode,
    /// A setuid file runs as its owner, which is the VMM's uid here: root while the
    /// VMM runs as root. Any host user who ran it would get those privileges.
    #[error("a set-user-ID mode")]
    SetUid,
    /// A setgid file runs with its group's privileges. On a directory the bit only
    /// makes new entries inherit the group, which Kubernetes fsGroup volumes rely on,
    /// so directories may have it.
    #[error("a set-group-ID mode on something other than a directory")]
    SetGidFile,
    /// The host kernel enforces these names: `security.capability` gives a binary file
    /// capabilities, other `security.*` names are LSM labels (SELinux, IMA/EVM), and
    /// `trusted.*` names are read by root-only host components such as overlayfs. The
    /// guest may still read them.
    #[error("an xattr in the trusted. or security. namespace")]
    PrivilegedXattr,
}

impl From<Refusal> for io::Error {
    fn from(refusal: Refusal) -> io::Error {
        // Debug only: a guest decides how often this happens.
        log::debug!("fs: refused {refusal}");
        io::Error::from_raw_os_error(libc::EPERM)
    }
}

/// mknod makes no device nodes.
fn check_mknod(mode: u32) -> Result<(), Refusal> {
    match mode & libc::S_IFMT {
        libc::S_IFCHR | libc::S_IFBLK => Err(Refusal::DeviceNode),
        _ => check_mode(mode, false),
    }
}

/// A mode for a new node or a chmod. `is_dir` says whether the node is a directory.
fn check_mode(mode: u32, is_dir: bool) -> Result<(), Refusal> {
    if mode & libc::S_ISUID != 0 {
        Err(Refusal::SetUid)
    } else if mode & libc::S_ISGID != 0 && !is_dir {
        Err(Refusal::SetGidFile)
    } else {
        Ok(())
    }
}

/// Refuses setxattr and removexattr of names the host kernel enforces.
fn check_xattr_write(name: &CStr) -> Result<(), Refusal> {
    let name = name.to_bytes();
    if name.starts_with(b"trusted.") || name.starts_with(b"security.") {
        Err(Refusal::PrivilegedXattr)
    } else {
        Ok(())
    }
}

/// The context the inner file system gets for a request: uid 0 and gid 0, so that
/// `PassthroughFs` never switches its thread's credentials. What the guest creates
/// belongs to the VMM, whatever uid the guest caller had.
fn as_vmm(ctx: &Context) -> Context {
    Context {
        uid: 0,
        gid: 0,
        pid: ctx.pid,
    }
}

/// The VMM's effective uid and gid. The guest sees them as root's.
#[derive(Clone, Copy, Debug)]
struct HostIds {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl HostIds {
    fn of_this_process() -> HostIds {
        HostIds {
            // SAFETY: geteuid and getegid have no preconditions and cannot fail.
            uid: unsafe { libc::geteuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getegid() },
        }
    }

    /// Shows the VMM's ids as 0, so that the guest's root owns what the guest made. When
    /// the VMM runs as root this changes nothing.
    fn show(self, st: &mut stat64) {
        if st.st_uid == self.uid {
            st.st_uid = 0;
        }
        if st.st_gid == self.gid {
            st.st_gid = 0;
        }
    }

    /// A chown to 0 becomes a chown to the VMM's ids, the reverse of [`HostIds::show`].
    /// On a file the VMM owns that is a successful no-op. The host kernel decides every
    /// other chown, and refuses it while the VMM is unprivileged.
    fn chown_target(self, attr: &mut stat64, valid: SetattrValid) {
        if valid.contains(SetattrValid::UID) && attr.st_uid == 0 {
            attr.st_uid = self.uid;
        }
        if valid.contains(SetattrValid::GID) && attr.st_gid == 0 {
            attr.st_gid = self.gid;
        }
    }
}

/// A share's file system with the policy in front of it (see the module header).
pub struct Guarded<F> {
    inner: F,
    ids: HostIds,
}

impl<F> Guarded<F> {
    pub fn new(inner: F) -> Guarded<F> {
        Guarded {
            inner,
            ids: HostIds::of_this_process(),
        }
    }

    fn show(&self, mut entry: Entry) -> Entry {
        self.ids.show(&mut entry.attr);
        entry
    }

    fn show_attr(&self, (mut st, timeout): (stat64, Duration)) -> (stat64, Duration) {
        self.ids.show(&mut st);
        (st, timeout)
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64>> Guarded<F> {
    fn is_dir(&self, ctx: &Context, inode: u64) -> io::Result<bool> {
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }
}

/// Trait methods the policy has no rule for. They reach the inner file system with the
/// context of [`as_vmm`]. Nothing may be left to the trait's defaults, which answer
/// ENOSYS.
macro_rules! forward {
    ($(fn $name:ident(&self, ctx $(, $arg:ident: $ty:ty)*) $(-> $ret:ty)?;)*) => {$(
        fn $name(&self, ctx: &Context $(, $arg: $ty)*) $(-> $ret)? {
            self.inner.$name(&as_vmm(ctx) $(, $arg)*)
        }
    )*};
}

impl<F: FileSystem<Inode = u64, Handle = u64>> FileSystem for Guarded<F> {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.inner
            .lookup(&as_vmm(ctx), parent, name)
            .map(|e| self.show(e))
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let attr = self.inner.getattr(&as_vmm(ctx), inode, handle)?;
        Ok(self.show_attr(attr))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        mut attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let ctx = as_vmm(ctx);
        if valid.contains(SetattrValid::MODE) {
            // The type comes from the host: the mode's type bits are the guest's word.
            let is_dir = attr.st_mode & libc::S_ISGID != 0 && self.is_dir(&ctx, inode)?;
            check_mode(attr.st_mode, is_dir)?;
        }
        self.ids.chown_target(&mut attr, valid);
        let attr = self.inner.setattr(&ctx, inode, attr, handle, valid)?;
        Ok(self.show_attr(attr))
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.inner
            .symlink(&as_vmm(ctx), linkname, parent, name)
            .map(|e| self.show(e))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        check_mknod(mode)?;
        self.inner
            .mknod(&as_vmm(ctx), parent, name, mode, rdev, umask)
            .map(|e| self.show(e))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        check_mode(mode, true)?;
        self.inner
            .mkdir(&as_vmm(ctx), parent, name, mode, umask)
            .map(|e| self.show(e))
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.inner
            .link(&as_vmm(ctx), inode, newparent, newname)
            .map(|e| self.show(e))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        check_mode(args.mode, false)?;
        let (entry, handle, opts, passthrough) =
            self.inner.create(&as_vmm(ctx), parent, name, args)?;
        Ok((self.show(entry), handle, opts, passthrough))
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        check_xattr_write(name)?;
        self.inner.setxattr(&as_vmm(ctx), inode, name, value, flags)
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        check_xattr_write(name)?;
        self.inner.removexattr(&as_vmm(ctx), inode, name)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let ids = self.ids;
        let mut add_shown = |dir_entry: DirEntry<'_>, mut entry: Entry| {
            ids.show(&mut entry.attr);
            add_entry(dir_entry, entry)
        };
        self.inner
            .readdirplus(&as_vmm(ctx), inode, handle, size, offset, &mut add_shown)
    }

    forward! {
        fn forget(&self, ctx, inode: u64, count: u64);
        fn batch_forget(&self, ctx, requests: Vec<(u64, u64)>);
        fn readlink(&self, ctx, inode: u64) -> io::Result<Vec<u8>>;
        fn unlink(&self, ctx, parent: u64, name: &CStr) -> io::Result<()>;
        fn rmdir(&self, ctx, parent: u64, name: &CStr) -> io::Result<()>;
        fn rename(&self, ctx, olddir: u64, oldname: &CStr, newdir: u64, newname: &CStr,
            flags: u32) -> io::Result<()>;
        fn open(&self, ctx, inode: u64, flags: u32, fuse_flags: u32)
            -> io::Result<(Option<u64>, OpenOptions, Option<u32>)>;
        fn read(&self, ctx, inode: u64, handle: u64, w: &mut dyn ZeroCopyWriter, size: u32,
            offset: u64, lock_owner: Option<u64>, flags: u32) -> io::Result<usize>;
        fn write(&self, ctx, inode: u64, handle: u64, r: &mut dyn ZeroCopyReader, size: u32,
            offset: u64, lock_owner: Option<u64>, delayed_write: bool, flags: u32,
            fuse_flags: u32) -> io::Result<usize>;
        fn flush(&self, ctx, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()>;
        fn fsync(&self, ctx, inode: u64, datasync: bool, handle: u64) -> io::Result<()>;
        fn fallocate(&self, ctx, inode: u64, handle: u64, mode: u32, offset: u64, length: u64)
            -> io::Result<()>;
        fn release(&self, ctx, inode: u64, flags: u32, handle: u64, flush: bool,
            flock_release: bool, lock_owner: Option<u64>) -> io::Result<()>;
        fn statfs(&self, ctx, inode: u64) -> io::Result<statvfs64>;
        fn getxattr(&self, ctx, inode: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply>;
        fn listxattr(&self, ctx, inode: u64, size: u32) -> io::Result<ListxattrReply>;
        fn opendir(&self, ctx, inode: u64, flags: u32) -> io::Result<(Option<u64>, OpenOptions)>;
        fn readdir(&self, ctx, inode: u64, handle: u64, size: u32, offset: u64,
            add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>) -> io::Result<()>;
        fn fsyncdir(&self, ctx, inode: u64, datasync: bool, handle: u64) -> io::Result<()>;
        fn releasedir(&self, ctx, inode: u64, flags: u32, handle: u64) -> io::Result<()>;
        fn setupmapping(&self, ctx, inode: u64, handle: u64, foffset: u64, len: u64, flags: u64,
            moffset: u64, vu_req: &mut dyn FsCacheReqHandler) -> io::Result<()>;
        fn removemapping(&self, ctx, inode: u64, requests: Vec<RemovemappingOne>,
            vu_req: &mut dyn FsCacheReqHandler) -> io::Result<()>;
        fn access(&self, ctx, inode: u64, mask: u32) -> io::Result<()>;
        fn lseek(&self, ctx, inode: u64, handle: u64, offset: u64, whence: u32)
            -> io::Result<u64>;
        fn getlk(&self, ctx, inode: u64, handle: u64, owner: u64, lock: FileLock, flags: u32)
            -> io::Result<FileLock>;
        fn setlk(&self, ctx, inode: u64, handle: u64, owner: u64, lock: FileLock, flags: u32)
            -> io::Result<()>;
        fn setlkw(&self, ctx, inode: u64, handle: u64, owner: u64, lock: FileLock, flags: u32)
            -> io::Result<()>;
        fn ioctl(&self, ctx, inode: u64, handle: u64, flags: u32, cmd: u32, data: IoctlData,
            out_size: u32) -> io::Result<IoctlData<'_>>;
        fn bmap(&self, ctx, inode: u64, block: u64, blocksize: u32) -> io::Result<u64>;
        fn poll(&self, ctx, inode: u64, handle: u64, khandle: u64, flags: u32, events: u32)
            -> io::Result<u32>;
    }
}

impl<F: BackendFileSystem<Inode = u64, Handle = u64> + 'static> BackendFileSystem for Guarded<F> {
    fn mount(&self) -> io::Result<(Entry, u64)> {
        let (root, max_ino) = self.inner.mount()?;
        Ok((self.show(root), max_ino))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_owned_by(uid: u32, gid: u32) -> stat64 {
        // SAFETY: stat64 is plain integers, for which all zeroes is a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_uid = uid;
        st.st_gid = gid;
        st
    }

    #[test]
    fn an_unprivileged_vmm_shows_its_own_ids_as_root_and_takes_a_chown_to_root_as_its_own() {
        let ids = HostIds {
            uid: 1500,
            gid: 1600,
        };
        let mut own = stat_owned_by(1500, 1600);
        ids.show(&mut own);
        assert_eq!((own.st_uid, own.st_gid), (0, 0));
        let mut other = stat_owned_by(1000, 1500);
        ids.show(&mut other);
        assert_eq!((other.st_uid, other.st_gid), (1000, 1500));

        let mut to_root = stat_owned_by(0, 0);
        ids.chown_target(&mut to_root, SetattrValid::UID | SetattrValid::GID);
        assert_eq!((to_root.st_uid, to_root.st_gid), (1500, 1600));
        let mut only_uid = stat_owned_by(0, 0);
        ids.chown_target(&mut only_uid, SetattrValid::UID);
        assert_eq!((only_uid.st_uid, only_uid.st_gid), (1500, 0));
        let mut to_other = stat_owned_by(1000, 1000);
        ids.chown_target(&mut to_other, SetattrValid::UID | SetattrValid::GID);
        assert_eq!((to_other.st_uid, to_other.st_gid), (1000, 1000));
    }

    #[test]
    fn only_writes_of_trusted_and_security_xattrs_are_refused() {
        for name in [
            c"trusted.overlay.opaque",
            c"security.capability",
            c"security.selinux",
        ] {
            assert!(check_xattr_write(name).is_err(), "{name:?}");
        }
        for name in [
            c"user.x",
            c"system.posix_acl_access",
            c"securityx",
            c"trusted",
        ] {
            assert!(check_xattr_write(name).is_ok(), "{name:?}");
        }
    }
}
