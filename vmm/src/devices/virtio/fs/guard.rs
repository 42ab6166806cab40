//! The policy between the untrusted guest and a share's passthrough file server.
//!
//! fuse-backend-rs's `PassthroughFs` does what a FUSE request asks with the VMM's own
//! privileges. While the VMM runs as root, a guest could use a share to leave a device
//! node, a setuid-root binary or a file capability on the host, for any host user to
//! use. [`Guarded`] refuses those requests before they reach the host file system. It
//! also serves every request with the VMM's own credentials, because `PassthroughFs`
//! would otherwise switch its thread to the guest caller's uid and gid for each create
//! (`setresuid`), which an unprivileged VMM cannot do. Files the guest creates
//! therefore belong to the VMM on the host.
//!
//! The guest kernel still checks its own callers' permissions (virtio-fs always mounts
//! with `default_permissions`), against the ids shown here. So that a guest user may go on
//! writing what it made, the guard keeps the guest owner of each file and directory the
//! VMM owns in an xattr on it ([`super::owner`]): set to the creator's ids by a create,
//! changed by a guest chown, shown in every attribute the guest gets. What has no record
//! (host-made files, FIFOs, sockets, symlinks, or any file on a host file system without
//! user xattrs) shows the VMM's ids as root's.

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

use super::owner::{self, Owner, MAX_RECORD_LEN, OWNER_XATTR};

/// The most a listxattr can return (the kernel's XATTR_LIST_MAX).
const XATTR_LIST_MAX: u32 = 65536;

/// A request the policy refuses. The guest gets EPERM and the host file system is not
/// touched. Each variant is a way a guest could gain privilege on the host, or over files
/// other guest users own.
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
    /// `user.hull.*` holds the owner the guest sees ([`super::owner`]). A guest that
    /// could write it would make itself the owner of any file it can name; it cannot
    /// read or list it either, so that nothing in the guest depends on it.
    #[error("an xattr in hull's own user.hull. namespace")]
    OwnerRecord,
}

impl From<Refusal> for io::Error {
    fn from(refusal: Refusal) -> io::Error {
        // Debug only: a guest decides how often this happens.
        log::debug!("fs: refused {refusal}");
        io::Error::from_raw_os_error(libc::EPERM)
    }
}

/// mknod makes no device nodes but the overlayfs whiteout, a character device 0:0: it
/// names no driver, and Linux lets unprivileged users make it (since 5.8).
fn check_mknod(mode: u32, rdev: u32) -> Result<(), Refusal> {
    match mode & libc::S_IFMT {
        libc::S_IFCHR if rdev == 0 => check_mode(mode, false),
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

/// Refuses setxattr and removexattr of names the host kernel enforces, and of hull's own.
fn check_xattr_write(name: &CStr) -> Result<(), Refusal> {
    let name = name.to_bytes();
    if name.starts_with(b"trusted.") || name.starts_with(b"security.") {
        Err(Refusal::PrivilegedXattr)
    } else if owner::is_reserved(name) {
        Err(Refusal::OwnerRecord)
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

/// The VMM's effective uid and gid. Where no record says otherwise, the guest sees them
/// as root's.
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

    /// Whether the VMM owns a host inode with these attributes: its guest owner is then
    /// the record's, or root.
    fn own(self, st: &stat64) -> bool {
        st.st_uid == self.uid
    }

    /// What the guest sees of a host inode without a record: the VMM's ids as 0, so that
    /// the guest's root owns what the guest made; other ids as they are. When the VMM
    /// runs as root this changes nothing.
    fn without_record(self, st: &stat64) -> Owner {
        let map = |id, vmm| if id == vmm { 0 } else { id };
        Owner {
            uid: map(st.st_uid, self.uid),
            gid: map(st.st_gid, self.gid),
        }
    }
}

fn set_owner(st: &mut stat64, owner: Owner) {
    st.st_uid = owner.uid;
    st.st_gid = owner.gid;
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
}

/// How the guard reads and writes owner records. `ctx` is always the squashed context of
/// [`as_vmm`]; each record lookup is one getxattr on the host.
impl<F: FileSystem<Inode = u64, Handle = u64>> Guarded<F> {
    fn is_dir(&self, ctx: &Context, inode: u64) -> io::Result<bool> {
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    /// The owner the guest sees of `inode`, whose host attributes are `st`: a
    /// well-formed record on a file or directory the VMM owns, else
    /// [`HostIds::without_record`].
    fn shown_owner(&self, ctx: &Context, inode: u64, st: &stat64) -> Owner {
        if self.ids.own(st) && owner::can_hold_record(st.st_mode) {
            if let Some(owner) = self.read_record(ctx, inode) {
                return owner;
            }
        }
        self.ids.without_record(st)
    }

    /// The record on `inode`, if it has a well-formed one. No record, a host file
    /// system without xattrs and a value longer than any record (ERANGE) all read as
    /// none: the value is the host's, and nothing it holds is an error to the guest.
    fn read_record(&self, ctx: &Context, inode: u64) -> Option<Owner> {
        match self
            .inner
            .getxattr(ctx, inode, OWNER_XATTR, MAX_RECORD_LEN as u32)
        {
            Ok(GetxattrReply::Value(record)) => Owner::parse(&record),
            Ok(GetxattrReply::Count(_)) | Err(_) => None,
        }
    }

    fn write_record(&self, ctx: &Context, inode: u64, owner: Owner) -> io::Result<()> {
        self.inner
            .setxattr(ctx, inode, OWNER_XATTR, &owner.to_record(), 0)
    }

    fn show(&self, ctx: &Context, mut entry: Entry) -> Entry {
        let owner = self.shown_owner(ctx, entry.inode, &entry.attr);
        set_owner(&mut entry.attr, owner);
        entry
    }

    fn show_attr(
        &self,
        ctx: &Context,
        inode: u64,
        (mut st, timeout): (stat64, Duration),
    ) -> (stat64, Duration) {
        let owner = self.shown_owner(ctx, inode, &st);
        set_owner(&mut st, owner);
        (st, timeout)
    }

    /// The reply to a request that made `entry` in `parent`: the guest caller becomes
    /// the owner of a new file or directory, through a record. Where the record cannot
    /// be written (another type of node, a host file system without user xattrs) the
    /// object stays and shows as root's.
    fn show_new(&self, ctx: &Context, caller: &Context, parent: u64, mut entry: Entry) -> Entry {
        if self.ids.own(&entry.attr) && owner::can_hold_record(entry.attr.st_mode) {
            let owner = Owner {
                uid: caller.uid,
                gid: self.new_group(ctx, parent, caller.gid),
            };
            match self.write_record(ctx, entry.inode, owner) {
                Ok(()) => {
                    set_owner(&mut entry.attr, owner);
                    return entry;
                }
                // Debug only: a guest decides how often this happens.
                Err(e) => log::debug!("fs: no owner record on a new inode: {e}"),
            }
        }
        let owner = self.ids.without_record(&entry.attr);
        set_owner(&mut entry.attr, owner);
        entry
    }

    /// The group of a new object: the caller's, or, in a set-group-ID directory, the
    /// directory's group as the guest sees it. That is what the guest kernel expects, and
    /// what the host kernel does with host ids.
    fn new_group(&self, ctx: &Context, parent: u64, caller_gid: u32) -> u32 {
        match self.inner.getattr(ctx, parent, None) {
            Ok((st, _)) if st.st_mode & libc::S_ISGID != 0 => {
                self.shown_owner(ctx, parent, &st).gid
            }
            Ok(_) => caller_gid,
            Err(e) => {
                log::debug!("fs: attributes of a new inode's parent: {e}");
                caller_gid
            }
        }
    }

    /// A chown of an inode the VMM owns, whose host attributes are `st`: the record
    /// changes, the host owner never does (an unprivileged VMM cannot chown, and a root
    /// one must not give the file to some host user). The guest kernel has already
    /// checked that its caller may make this chown. An id left out of `valid` keeps its
    /// shown value. A chown that changes nothing succeeds on anything; one that needs a
    /// record where none can be kept is refused with EPERM, as chown is where it is not
    /// allowed.
    fn chown_by_record(
        &self,
        ctx: &Context,
        inode: u64,
        st: &stat64,
        attr: &stat64,
        valid: SetattrValid,
    ) -> io::Result<()> {
        let shown = self.shown_owner(ctx, inode, st);
        let wanted = Owner {
            uid: if valid.contains(SetattrValid::UID) {
                attr.st_uid
            } else {
                shown.uid
            },
            gid: if valid.contains(SetattrValid::GID) {
                attr.st_gid
            } else {
                shown.gid
            },
        };
        if wanted == shown {
            return Ok(());
        }
        let eperm = || io::Error::from_raw_os_error(libc::EPERM);
        if !owner::can_hold_record(st.st_mode) {
            log::debug!("fs: chown of a node that cannot hold an owner record");
            return Err(eperm());
        }
        self.write_record(ctx, inode, wanted).map_err(|e| {
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                log::debug!("fs: chown without user xattrs on the host: {e}");
                eperm()
            } else {
                e
            }
        })
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
        let ctx = as_vmm(ctx);
        self.inner
            .lookup(&ctx, parent, name)
            .map(|e| self.show(&ctx, e))
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let ctx = as_vmm(ctx);
        let attr = self.inner.getattr(&ctx, inode, handle)?;
        Ok(self.show_attr(&ctx, inode, attr))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        mut valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let ctx = as_vmm(ctx);
        if valid.contains(SetattrValid::MODE) {
            // The type comes from the host: the mode's type bits are the guest's word.
            let is_dir = attr.st_mode & libc::S_ISGID != 0 && self.is_dir(&ctx, inode)?;
            check_mode(attr.st_mode, is_dir)?;
        }
        let ids = SetattrValid::UID | SetattrValid::GID;
        if valid.intersects(ids) {
            let (st, _) = self.inner.getattr(&ctx, inode, handle)?;
            // On what the VMM does not own, the host kernel decides.
            if self.ids.own(&st) {
                self.chown_by_record(&ctx, inode, &st, &attr, valid)?;
                valid.remove(ids);
            }
        }
        let attr = self.inner.setattr(&ctx, inode, attr, handle, valid)?;
        Ok(self.show_attr(&ctx, inode, attr))
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let vmm = as_vmm(ctx);
        self.inner
            .symlink(&vmm, linkname, parent, name)
            .map(|e| self.show_new(&vmm, ctx, parent, e))
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
        check_mknod(mode, rdev)?;
        let vmm = as_vmm(ctx);
        self.inner
            .mknod(&vmm, parent, name, mode, rdev, umask)
            .map(|e| self.show_new(&vmm, ctx, parent, e))
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
        let vmm = as_vmm(ctx);
        self.inner
            .mkdir(&vmm, parent, name, mode, umask)
            .map(|e| self.show_new(&vmm, ctx, parent, e))
    }

    /// A new name, not a new inode: the inode keeps its owner.
    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let ctx = as_vmm(ctx);
        self.inner
            .link(&ctx, inode, newparent, newname)
            .map(|e| self.show(&ctx, e))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        check_mode(args.mode, false)?;
        let vmm = as_vmm(ctx);
        // Only a file this request made gets a record. The guest's entry cache is up to a
        // second old, so a create without O_EXCL may open a file someone else made, which
        // keeps its owner: O_EXCL tells the two apart.
        let exclusive = CreateIn {
            flags: args.flags | libc::O_EXCL as u32,
            ..args
        };
        match self.inner.create(&vmm, parent, name, exclusive) {
            Ok((entry, handle, opts, passthrough)) => Ok((
                self.show_new(&vmm, ctx, parent, entry),
                handle,
                opts,
                passthrough,
            )),
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    && args.flags & libc::O_EXCL as u32 == 0 =>
            {
                let (entry, handle, opts, passthrough) =
                    self.inner.create(&vmm, parent, name, args)?;
                Ok((self.show(&vmm, entry), handle, opts, passthrough))
            }
            Err(e) => Err(e),
        }
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

    /// hull's own names read as absent.
    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if owner::is_reserved(name.to_bytes()) {
            return Err(io::Error::from_raw_os_error(libc::ENODATA));
        }
        self.inner.getxattr(&as_vmm(ctx), inode, name, size)
    }

    /// The list without hull's own names. The whole list is read, so that the length a
    /// size-0 probe gets and the ERANGE check are those of what the guest receives.
    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let names = match self.inner.listxattr(&as_vmm(ctx), inode, XATTR_LIST_MAX)? {
            ListxattrReply::Names(names) => owner::without_reserved(&names),
            ListxattrReply::Count(_) => return Err(io::Error::from_raw_os_error(libc::EIO)),
        };
        if size == 0 {
            Ok(ListxattrReply::Count(names.len() as u32))
        } else if names.len() > size as usize {
            Err(io::Error::from_raw_os_error(libc::ERANGE))
        } else {
            Ok(ListxattrReply::Names(names))
        }
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
        let ctx = as_vmm(ctx);
        let mut add_shown =
            |dir_entry: DirEntry<'_>, entry: Entry| add_entry(dir_entry, self.show(&ctx, entry));
        self.inner
            .readdirplus(&ctx, inode, handle, size, offset, &mut add_shown)
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
        Ok((self.show(&as_vmm(&Context::new()), root), max_ino))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuse_backend_rs::abi::fuse_abi::ROOT_ID;
    use fuse_backend_rs::passthrough::{Config, PassthroughFs};

    fn stat_owned_by(uid: u32, gid: u32) -> stat64 {
        // SAFETY: stat64 is plain integers, for which all zeroes is a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_uid = uid;
        st.st_gid = gid;
        st
    }

    const UNPRIVILEGED: HostIds = HostIds {
        uid: 1500,
        gid: 1600,
    };

    #[test]
    fn without_a_record_an_unprivileged_vmm_shows_its_own_ids_as_root() {
        let own = UNPRIVILEGED.without_record(&stat_owned_by(1500, 1600));
        assert_eq!(own, Owner { uid: 0, gid: 0 });
        let other = UNPRIVILEGED.without_record(&stat_owned_by(1000, 1500));
        assert_eq!(
            other,
            Owner {
                uid: 1000,
                gid: 1500
            }
        );
        assert!(UNPRIVILEGED.own(&stat_owned_by(1500, 0)));
        assert!(!UNPRIVILEGED.own(&stat_owned_by(0, 1600)));
    }

    /// A guarded passthrough of `dir` as a VMM running as uid 1500, gid 1600.
    fn unprivileged_share(dir: &std::path::Path) -> Guarded<PassthroughFs> {
        let fs = PassthroughFs::<()>::new(Config {
            root_dir: dir.to_str().unwrap().into(),
            xattr: true,
            ..Config::default()
        })
        .unwrap();
        fs.init(FsOptions::empty()).unwrap();
        Guarded {
            inner: fs,
            ids: UNPRIVILEGED,
        }
    }

    fn owner_of(st: &stat64) -> (u32, u32) {
        (st.st_uid, st.st_gid)
    }

    #[test]
    fn an_unprivileged_vmm_reads_and_changes_records_only_on_what_it_owns() {
        use std::os::unix::fs::{chown, MetadataExt};
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: giving host files to uid 1500 needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for name in ["own", "bare", "other"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        chown(dir.path().join("own"), Some(1500), Some(1600)).unwrap();
        chown(dir.path().join("bare"), Some(1500), Some(4000)).unwrap();
        chown(dir.path().join("other"), Some(3000), Some(3000)).unwrap();
        let fs = unprivileged_share(dir.path());
        let ctx = Context::new();
        let record = |name: &str| {
            let node = fs
                .inner
                .lookup(&ctx, ROOT_ID, &cstring(name))
                .unwrap()
                .inode;
            fs.inner
                .setxattr(&ctx, node, OWNER_XATTR, b"1000:1000", 0)
                .unwrap();
            node
        };
        let own = record("own");
        let other = record("other");

        let shown = |name: &str| owner_of(&fs.lookup(&ctx, ROOT_ID, &cstring(name)).unwrap().attr);
        assert_eq!(shown("own"), (1000, 1000), "a record on the VMM's file");
        assert_eq!(shown("bare"), (0, 4000), "the VMM's file without a record");
        assert_eq!(shown("other"), (3000, 3000), "a record on another's file");

        let chown_in_guest = |node, uid| {
            let attr = stat_owned_by(uid, 0);
            fs.setattr(&ctx, node, attr, None, SetattrValid::UID)
                .map(|(st, _)| owner_of(&st))
        };
        assert_eq!(chown_in_guest(own, 2000).unwrap(), (2000, 1000));
        let meta = std::fs::metadata(dir.path().join("own")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (1500, 1600),
            "the host owner stays"
        );
        // What the VMM does not own is the host kernel's to decide (root here says yes).
        assert_eq!(chown_in_guest(other, 2000).unwrap(), (2000, 3000));
        let meta = std::fs::metadata(dir.path().join("other")).unwrap();
        assert_eq!(meta.uid(), 2000);
    }

    fn cstring(s: &str) -> std::ffi::CString {
        std::ffi::CString::new(s).unwrap()
    }

    #[test]
    fn mknod_refuses_device_nodes_but_the_whiteout() {
        assert!(check_mknod(libc::S_IFCHR | 0o600, 0).is_ok());
        assert!(check_mknod(libc::S_IFCHR | 0o666, (1 << 8) | 3).is_err());
        assert!(check_mknod(libc::S_IFBLK | 0o600, 0).is_err());
        assert!(check_mknod(libc::S_IFCHR | 0o4600, 0).is_err());
        assert!(check_mknod(libc::S_IFIFO | 0o600, 0).is_ok());
    }

    #[test]
    fn only_writes_of_trusted_security_and_hull_xattrs_are_refused() {
        for name in [
            c"trusted.overlay.opaque",
            c"security.capability",
            c"security.selinux",
            c"user.hull.owner",
            c"user.hull.other",
        ] {
            assert!(check_xattr_write(name).is_err(), "{name:?}");
        }
        for name in [
            c"user.x",
            c"system.posix_acl_access",
            c"securityx",
            c"trusted",
            c"user.hullx",
        ] {
            assert!(check_xattr_write(name).is_ok(), "{name:?}");
        }
    }
}
