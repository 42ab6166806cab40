//! The fs device driven as the guest's virtio-fs driver drives it: FUSE requests written
//! into guest memory by hand, served by the real file server over a temporary directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::devices::virtio::test_driver::{Buf, TestDriver};

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_SETATTR: u32 = 4;
const FUSE_SYMLINK: u32 = 6;
const FUSE_MKNOD: u32 = 8;
const FUSE_MKDIR: u32 = 9;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_SETXATTR: u32 = 21;
const FUSE_GETXATTR: u32 = 22;
const FUSE_LISTXATTR: u32 = 23;
const FUSE_REMOVEXATTR: u32 = 24;
const FUSE_INIT: u32 = 26;
const FUSE_OPENDIR: u32 = 27;
const FUSE_CREATE: u32 = 35;
const FUSE_READDIRPLUS: u32 = 44;
/// fuse_setattr_in.valid bits.
const FATTR_MODE: u32 = 1;
const FATTR_UID: u32 = 2;
const FATTR_GID: u32 = 4;
/// Where fuse_attr's uid sits in a fuse_entry_out (after 40 bytes of ids and timeouts)
/// and in a fuse_attr_out (after 16); gid follows it.
const ENTRY_ATTR_UID: usize = 40 + 68;
const ATTR_OUT_UID: usize = 16 + 68;
/// makedev(1, 3): /dev/null's numbers.
const DEV_NULL: u32 = (1 << 8) | 3;
/// The xattr that holds what the guest sees as a file's owner.
const OWNER_XATTR: &str = "user.hull.owner";
const ROOT: u64 = 1;
const REQUEST_QUEUE: usize = 1;
const REPLY_LEN: u32 = 8192;

struct Guest {
    driver: TestDriver,
    unique: u64,
}

/// A reply: the FUSE error (0 or a negative errno) and the body after the header.
struct Reply {
    error: i32,
    body: Vec<u8>,
}

impl Guest {
    fn new(shares: Arc<Shares>) -> Guest {
        let (sessions, starter) = sessions();
        // Ends with the device (its `Sessions`).
        starter.start().unwrap();
        let fs = Fs::new("hull", shares, sessions).unwrap();
        Guest {
            driver: TestDriver::with_features(Box::new(fs), VIRTIO_F_VERSION_1),
            unique: 0,
        }
    }

    /// Sends raw request bytes; returns the reply bytes the device wrote.
    fn raw(&mut self, request: &[u8]) -> Vec<u8> {
        self.raw_on(REQUEST_QUEUE, request)
    }

    fn raw_on(&mut self, queue: usize, request: &[u8]) -> Vec<u8> {
        let d = &mut self.driver;
        let req = d.alloc(request.len().max(1) as u32);
        d.write(req, request);
        let reply = d.alloc(REPLY_LEN);
        let head = d.add_chain(
            queue,
            &[
                Buf {
                    addr: req,
                    len: request.len() as u32,
                    write: false,
                },
                Buf {
                    addr: reply,
                    len: REPLY_LEN,
                    write: true,
                },
            ],
        );
        d.notify(queue);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let used = d.take_used(queue);
            if let Some(&(h, len)) = used.first() {
                assert_eq!(h, head);
                return d.read(reply, len as usize);
            }
            assert!(Instant::now() < deadline, "the device never answered");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A request from the guest's root.
    fn call(&mut self, opcode: u32, node: u64, body: &[u8]) -> Reply {
        self.call_as((0, 0), opcode, node, body)
    }

    /// A request from a guest process with these uid and gid.
    fn call_as(&mut self, (uid, gid): (u32, u32), opcode: u32, node: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let mut req = Vec::new();
        req.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
        req.extend_from_slice(&opcode.to_le_bytes());
        req.extend_from_slice(&self.unique.to_le_bytes());
        req.extend_from_slice(&node.to_le_bytes());
        req.extend_from_slice(&uid.to_le_bytes());
        req.extend_from_slice(&gid.to_le_bytes());
        req.extend_from_slice(&1u32.to_le_bytes()); // pid
        req.extend_from_slice(&0u32.to_le_bytes()); // extension length, padding
        req.extend_from_slice(body);
        let out = self.raw(&req);
        assert!(out.len() >= 16, "short reply: {out:?}");
        assert_eq!(u32_at(&out, 0) as usize, out.len());
        assert_eq!(
            u64::from_le_bytes(out[8..16].try_into().unwrap()),
            self.unique
        );
        Reply {
            error: i32::from_le_bytes(out[4..8].try_into().unwrap()),
            body: out[16..].to_vec(),
        }
    }

    fn init(&mut self) {
        let mut body = Vec::new();
        body.extend_from_slice(&7u32.to_le_bytes());
        body.extend_from_slice(&31u32.to_le_bytes());
        body.extend_from_slice(&(128u32 << 10).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        let r = self.call(FUSE_INIT, 0, &body);
        assert_eq!(r.error, 0);
        assert_eq!(u32_at(&r.body, 0), 7, "FUSE major version");
    }

    /// The node ID of `name` in directory `parent`.
    fn lookup(&mut self, parent: u64, name: &str) -> Result<(u64, u64), i32> {
        let r = self.call(FUSE_LOOKUP, parent, &cstr(name));
        if r.error != 0 {
            return Err(r.error);
        }
        // fuse_entry_out: nodeid, generation, 2 timeouts, 2 nsec, then fuse_attr (ino, size).
        let size = u64::from_le_bytes(r.body[48..56].try_into().unwrap());
        Ok((u64::from_le_bytes(r.body[..8].try_into().unwrap()), size))
    }
}

/// A guest with one share, `vol`, of a fresh host directory; returns the share's node.
fn guest_with_share() -> (tempfile::TempDir, Guest, u64) {
    let dir = tempfile::tempdir().unwrap();
    let shares = Arc::new(Shares::new());
    shares.add("vol", dir.path()).unwrap();
    let mut g = Guest::new(shares);
    g.init();
    let (vol, _) = g.lookup(ROOT, "vol").unwrap();
    (dir, g, vol)
}

/// FUSE_CREATE body: fuse_create_in (flags, mode, umask, open flags), then the name.
fn create_in(name: &str, mode: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&((libc::O_WRONLY | libc::O_CREAT) as u32).to_le_bytes());
    b.extend_from_slice(&mode.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&cstr(name));
    b
}

/// FUSE_MKNOD body: fuse_mknod_in (mode, rdev, umask, padding), then the name.
fn mknod_in(name: &str, mode: u32, rdev: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&mode.to_le_bytes());
    b.extend_from_slice(&rdev.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&cstr(name));
    b
}

/// FUSE_MKDIR body: fuse_mkdir_in (mode, umask), then the name.
fn mkdir_in(name: &str, mode: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&mode.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&cstr(name));
    b
}

/// FUSE_SETATTR body: the 88-byte fuse_setattr_in with `valid`, mode, uid and gid.
fn setattr_in(valid: u32, mode: u32, (uid, gid): (u32, u32)) -> Vec<u8> {
    let mut b = vec![0u8; 88];
    b[..4].copy_from_slice(&valid.to_le_bytes());
    b[68..72].copy_from_slice(&mode.to_le_bytes());
    b[76..80].copy_from_slice(&uid.to_le_bytes());
    b[80..84].copy_from_slice(&gid.to_le_bytes());
    b
}

/// FUSE_SETXATTR body: fuse_setxattr_in (size, flags), the name, then the value.
fn setxattr_in(name: &str, value: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(value.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&cstr(name));
    b.extend_from_slice(value);
    b
}

/// The value of xattr `name` on the host path itself (not following a symlink).
fn host_xattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both names are NUL-terminated strings that outlive the call, and `buf` is
    // writable for the length passed.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn set_host_xattr(path: &std::path::Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: both names are NUL-terminated strings that outlive the call, and `value`
    // is readable for its length.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// FUSE_GETXATTR body: fuse_getxattr_in (size, padding), then the name.
fn getxattr_in(name: &str, size: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&cstr(name));
    b
}

/// The uid and gid of a fuse_entry_out.
fn entry_owner(body: &[u8]) -> (u32, u32) {
    (
        u32_at(body, ENTRY_ATTR_UID),
        u32_at(body, ENTRY_ATTR_UID + 4),
    )
}

/// The uid and gid of a fuse_attr_out.
fn attr_owner(body: &[u8]) -> (u32, u32) {
    (u32_at(body, ATTR_OUT_UID), u32_at(body, ATTR_OUT_UID + 4))
}

fn node_of(entry: &[u8]) -> u64 {
    u64::from_le_bytes(entry[..8].try_into().unwrap())
}

fn host_owner(path: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.uid(), meta.gid())
}

impl Guest {
    /// The uid and gid the guest sees for `node` (GETATTR).
    fn owner(&mut self, node: u64) -> (u32, u32) {
        let r = self.call(FUSE_GETATTR, node, &[0u8; 16]);
        assert_eq!(r.error, 0, "getattr");
        attr_owner(&r.body)
    }

    /// The uid and gid the guest sees for `name` in `parent` (LOOKUP).
    fn owner_of(&mut self, parent: u64, name: &str) -> (u32, u32) {
        let r = self.call(FUSE_LOOKUP, parent, &cstr(name));
        assert_eq!(r.error, 0, "lookup {name}");
        entry_owner(&r.body)
    }

    /// Each name in `dir` with the uid and gid READDIRPLUS shows for it.
    fn readdirplus(&mut self, dir: u64) -> Vec<(String, (u32, u32))> {
        let r = self.call(FUSE_OPENDIR, dir, &[0u8; 8]);
        assert_eq!(r.error, 0, "opendir");
        let fh = u64::from_le_bytes(r.body[..8].try_into().unwrap());
        // fuse_read_in: fh, offset, size, read_flags, lock_owner, flags, padding.
        let mut read_in = Vec::new();
        read_in.extend_from_slice(&fh.to_le_bytes());
        read_in.extend_from_slice(&0u64.to_le_bytes());
        read_in.extend_from_slice(&4096u32.to_le_bytes());
        read_in.extend_from_slice(&[0u8; 20]);
        let r = self.call(FUSE_READDIRPLUS, dir, &read_in);
        assert_eq!(r.error, 0, "readdirplus");
        // fuse_direntplus: a 128-byte fuse_entry_out, then fuse_dirent (ino, off,
        // namelen, type, name), padded to 8 bytes.
        let mut seen = Vec::new();
        let mut at = 0;
        while at < r.body.len() {
            let namelen = u32_at(&r.body, at + 128 + 16) as usize;
            let name = &r.body[at + 152..at + 152 + namelen];
            seen.push((
                String::from_utf8(name.to_vec()).unwrap(),
                entry_owner(&r.body[at..]),
            ));
            at += (152 + namelen).next_multiple_of(8);
        }
        seen
    }
}

fn euid_egid() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    // SAFETY: as above.
    let gid = unsafe { libc::getegid() };
    (uid, gid)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

#[test]
fn config_space_holds_the_tag_and_one_request_queue() {
    let new = |tag: &str| Fs::new(tag, Arc::new(Shares::new()), sessions().0);
    let fs = new("hull").unwrap();
    let mut cfg = [0u8; TAG_LEN + 4];
    fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..5], b"hull\0");
    assert_eq!(u32_at(&cfg, TAG_LEN), 1);
    assert!(new("").is_err());
    assert!(new(&"t".repeat(TAG_LEN + 1)).is_err());
}

#[test]
fn guest_reads_host_files_and_host_sees_guest_writes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), b"from host").unwrap();
    let shares = Arc::new(Shares::new());
    shares.add("vol", dir.path()).unwrap();
    let mut g = Guest::new(shares.clone());
    assert!(g.driver.transport.snapshot_blocker().is_none());
    g.init();
    assert!(
        g.driver.transport.snapshot_blocker().is_some(),
        "a VM that spoke FUSE must refuse a snapshot"
    );

    let (vol, _) = g.lookup(ROOT, "vol").unwrap();
    let (file, size) = g.lookup(vol, "hello.txt").unwrap();
    assert_eq!(size, 9);
    // OPEN read-only, then READ it all.
    let r = g.call(FUSE_OPEN, file, &[0u8; 8]);
    assert_eq!(r.error, 0);
    let fh = u64::from_le_bytes(r.body[..8].try_into().unwrap());
    let mut read_in = Vec::new();
    read_in.extend_from_slice(&fh.to_le_bytes());
    read_in.extend_from_slice(&0u64.to_le_bytes()); // offset
    read_in.extend_from_slice(&4096u32.to_le_bytes()); // size
    read_in.extend_from_slice(&[0u8; 20]); // read_flags, lock_owner, flags, padding
    let r = g.call(FUSE_READ, file, &read_in);
    assert_eq!(r.error, 0);
    assert_eq!(r.body, b"from host");

    // CREATE a file and WRITE to it: the host sees the bytes.
    let mut create_in = Vec::new();
    create_in.extend_from_slice(&((libc::O_WRONLY | libc::O_CREAT) as u32).to_le_bytes());
    create_in.extend_from_slice(&0o644u32.to_le_bytes());
    create_in.extend_from_slice(&0o022u32.to_le_bytes());
    create_in.extend_from_slice(&0u32.to_le_bytes());
    create_in.extend_from_slice(&cstr("guest.txt"));
    let r = g.call(FUSE_CREATE, vol, &create_in);
    assert_eq!(r.error, 0, "create failed");
    let node = u64::from_le_bytes(r.body[..8].try_into().unwrap());
    // fuse_entry_out is 128 bytes; fuse_open_out follows with the handle.
    let fh = u64::from_le_bytes(r.body[128..136].try_into().unwrap());
    let data = b"from guest";
    let mut write_in = Vec::new();
    write_in.extend_from_slice(&fh.to_le_bytes());
    write_in.extend_from_slice(&0u64.to_le_bytes());
    write_in.extend_from_slice(&(data.len() as u32).to_le_bytes());
    write_in.extend_from_slice(&[0u8; 20]);
    write_in.extend_from_slice(data);
    let r = g.call(FUSE_WRITE, node, &write_in);
    assert_eq!(r.error, 0);
    assert_eq!(u32_at(&r.body, 0), data.len() as u32);
    assert_eq!(std::fs::read(dir.path().join("guest.txt")).unwrap(), data);
}

#[test]
fn names_outside_the_shares_do_not_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let shares = Arc::new(Shares::new());
    shares.add("vol", dir.path()).unwrap();
    let mut g = Guest::new(shares.clone());
    g.init();
    let (vol, _) = g.lookup(ROOT, "vol").unwrap();
    // ".." at a share's root is the root itself (a guest kernel never sends it; a
    // hostile one must not reach the host directory above).
    let (up, _) = g.lookup(vol, "..").unwrap();
    assert_eq!(up, vol);
    let own_name = dir.path().file_name().unwrap().to_str().unwrap();
    assert_eq!(g.lookup(up, own_name).map(|_| ()), Err(-libc::ENOENT));
    assert_eq!(g.lookup(vol, "a/b").map(|_| ()), Err(-libc::EINVAL));
    assert_eq!(g.lookup(ROOT, "etc").map(|_| ()), Err(-libc::ENOENT));
    // A share removed while the guest runs disappears from its root, and what the guest
    // had looked up in it stops resolving.
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    shares.remove("vol").unwrap();
    assert_eq!(g.lookup(ROOT, "vol").map(|_| ()), Err(-libc::ENOENT));
    assert!(g.lookup(vol, "f").is_err());
}

#[test]
fn garbage_requests_get_an_empty_answer_and_the_device_keeps_serving() {
    let shares = Arc::new(Shares::new());
    let mut g = Guest::new(shares);
    assert!(
        g.raw(&[0xff; 7]).is_empty(),
        "a request shorter than a FUSE header"
    );
    let mut huge = vec![0u8; 40];
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    huge[4..8].copy_from_slice(&FUSE_INIT.to_le_bytes());
    let _ = g.raw(&huge);
    g.init();
}

#[test]
fn an_available_index_running_ahead_of_the_ring_stops_the_queue_without_spinning() {
    let mut g = Guest::new(Arc::new(Shares::new()));
    // Claims far more buffers than the ring holds: the device must give up on that queue,
    // not loop on it, and go on serving the other (a spinning worker never answers).
    g.driver.set_avail_idx(REQUEST_QUEUE, 1000);
    g.driver.notify(REQUEST_QUEUE);
    // Let the worker take that notification before the next request is there.
    std::thread::sleep(Duration::from_millis(300));
    assert!(g.driver.take_used(REQUEST_QUEUE).is_empty());
    let mut init = vec![0u8; 56];
    init[..4].copy_from_slice(&56u32.to_le_bytes());
    init[4..8].copy_from_slice(&FUSE_INIT.to_le_bytes());
    init[40..44].copy_from_slice(&7u32.to_le_bytes());
    init[44..48].copy_from_slice(&31u32.to_le_bytes());
    let reply = g.raw_on(0, &init);
    assert_eq!(i32::from_le_bytes(reply[4..8].try_into().unwrap()), 0);
}

#[test]
fn a_guest_cannot_make_device_nodes_but_can_make_fifos() {
    let (dir, mut g, vol) = guest_with_share();
    let r = g.call(
        FUSE_MKNOD,
        vol,
        &mknod_in("null", libc::S_IFCHR | 0o666, DEV_NULL),
    );
    assert_eq!(r.error, -libc::EPERM, "a character device");
    let r = g.call(
        FUSE_MKNOD,
        vol,
        &mknod_in("loop0", libc::S_IFBLK | 0o660, 7 << 8),
    );
    assert_eq!(r.error, -libc::EPERM, "a block device");
    assert!(!dir.path().join("null").exists());
    assert!(!dir.path().join("loop0").exists());

    let r = g.call(FUSE_MKNOD, vol, &mknod_in("pipe", libc::S_IFIFO | 0o644, 0));
    assert_eq!(r.error, 0, "a FIFO");
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::symlink_metadata(dir.path().join("pipe")).unwrap();
    assert!(meta.file_type().is_fifo());
}

#[test]
fn a_guest_cannot_write_trusted_or_security_xattrs_but_can_read_them_and_write_user_ones() {
    let (dir, mut g, vol) = guest_with_share();
    let file = dir.path().join("bin");
    std::fs::write(&file, b"#!/bin/sh\n").unwrap();
    let (node, _) = g.lookup(vol, "bin").unwrap();

    let r = g.call(FUSE_SETXATTR, node, &setxattr_in("trusted.hull", b"x"));
    assert_eq!(r.error, -libc::EPERM, "trusted.hull");
    // A version 2 vfs_cap_data permitting CAP_NET_RAW (13): valid, so only the policy
    // stops it.
    let mut cap = 0x0200_0000u32.to_le_bytes().to_vec();
    cap.extend_from_slice(&(1u32 << 13).to_le_bytes());
    cap.extend_from_slice(&[0u8; 12]);
    let r = g.call(
        FUSE_SETXATTR,
        node,
        &setxattr_in("security.capability", &cap),
    );
    assert_eq!(r.error, -libc::EPERM, "security.capability");
    assert_eq!(host_xattr(&file, "trusted.hull"), None);
    assert_eq!(host_xattr(&file, "security.capability"), None);

    let r = g.call(FUSE_SETXATTR, node, &setxattr_in("user.x", b"1"));
    assert_eq!(r.error, 0, "user.x");
    assert_eq!(host_xattr(&file, "user.x").as_deref(), Some(&b"1"[..]));

    // One the host set: the guest reads it but cannot remove it.
    std::fs::write(dir.path().join("labelled"), b"").unwrap();
    let (labelled, _) = g.lookup(vol, "labelled").unwrap();
    set_host_xattr(&dir.path().join("labelled"), "trusted.hull", b"host");
    let mut getxattr_in = Vec::new();
    getxattr_in.extend_from_slice(&64u32.to_le_bytes()); // size, padding
    getxattr_in.extend_from_slice(&0u32.to_le_bytes());
    getxattr_in.extend_from_slice(&cstr("trusted.hull"));
    let r = g.call(FUSE_GETXATTR, labelled, &getxattr_in);
    assert_eq!((r.error, r.body.as_slice()), (0, &b"host"[..]));
    let r = g.call(FUSE_REMOVEXATTR, labelled, &cstr("trusted.hull"));
    assert_eq!(r.error, -libc::EPERM);
    assert_eq!(
        host_xattr(&dir.path().join("labelled"), "trusted.hull").as_deref(),
        Some(&b"host"[..])
    );
}

#[test]
fn a_guest_cannot_create_setuid_or_setgid_files_but_can_make_setgid_directories() {
    let (dir, mut g, vol) = guest_with_share();
    let r = g.call(FUSE_CREATE, vol, &create_in("suid", libc::S_IFREG | 0o4755));
    assert_eq!(r.error, -libc::EPERM, "create setuid");
    let r = g.call(FUSE_CREATE, vol, &create_in("sgid", libc::S_IFREG | 0o2755));
    assert_eq!(r.error, -libc::EPERM, "create setgid");
    let r = g.call(
        FUSE_MKNOD,
        vol,
        &mknod_in("node", libc::S_IFREG | 0o2755, 0),
    );
    assert_eq!(r.error, -libc::EPERM, "mknod setgid");
    let r = g.call(FUSE_MKDIR, vol, &mkdir_in("suid-dir", 0o4755));
    assert_eq!(r.error, -libc::EPERM, "mkdir setuid");
    for name in ["suid", "sgid", "node", "suid-dir"] {
        assert!(!dir.path().join(name).exists(), "{name}");
    }

    // Allowed through; mkdir(2) itself ignores the bit (`mkdir -m 2775` follows with a
    // chmod, which the next test allows on directories).
    let r = g.call(FUSE_MKDIR, vol, &mkdir_in("group", 0o2775));
    assert_eq!(r.error, 0, "mkdir setgid");
    assert!(dir.path().join("group").is_dir());
}

#[test]
fn a_guest_cannot_chmod_a_file_setuid_or_setgid_but_can_chmod_a_directory_setgid() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, mut g, vol) = guest_with_share();
    let file = dir.path().join("tool");
    std::fs::write(&file, b"").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(dir.path().join("group")).unwrap();
    let (tool, _) = g.lookup(vol, "tool").unwrap();
    let (group, _) = g.lookup(vol, "group").unwrap();
    let mode_of = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;

    for mode in [0o4755, 0o2755, 0o6755] {
        let r = g.call(
            FUSE_SETATTR,
            tool,
            &setattr_in(FATTR_MODE, libc::S_IFREG | mode, (0, 0)),
        );
        assert_eq!(r.error, -libc::EPERM, "{mode:o}");
        assert_eq!(mode_of(&file), 0o755);
    }
    // A guest that claims the file is a directory is not believed.
    let r = g.call(
        FUSE_SETATTR,
        tool,
        &setattr_in(FATTR_MODE, libc::S_IFDIR | 0o2755, (0, 0)),
    );
    assert_eq!(r.error, -libc::EPERM);
    assert_eq!(mode_of(&file), 0o755);

    let r = g.call(
        FUSE_SETATTR,
        tool,
        &setattr_in(FATTR_MODE, libc::S_IFREG | 0o700, (0, 0)),
    );
    assert_eq!(r.error, 0, "a plain chmod");
    assert_eq!(mode_of(&file), 0o700);
    let r = g.call(
        FUSE_SETATTR,
        group,
        &setattr_in(FATTR_MODE, libc::S_IFDIR | 0o2775, (0, 0)),
    );
    assert_eq!(r.error, 0, "a setgid directory");
    assert_eq!(mode_of(&dir.path().join("group")), 0o2775);
}

#[test]
fn what_a_guest_user_creates_belongs_to_the_vmm_on_the_host_and_to_that_user_in_the_guest() {
    let (dir, mut g, vol) = guest_with_share();
    let user = (1000, 1000);
    let r = g.call_as(
        user,
        FUSE_CREATE,
        vol,
        &create_in("mine", libc::S_IFREG | 0o644),
    );
    assert_eq!(r.error, 0, "create");
    assert_eq!(entry_owner(&r.body), user, "the create's reply");
    let file = node_of(&r.body);
    let r = g.call_as(user, FUSE_MKDIR, vol, &mkdir_in("subdir", 0o755));
    assert_eq!(r.error, 0, "mkdir");
    assert_eq!(entry_owner(&r.body), user, "the mkdir's reply");
    let subdir = node_of(&r.body);
    // A create without O_EXCL of a name that exists (the guest's entry cache can be a
    // second old) opens that file and leaves its owner.
    let r = g.call_as(
        (2000, 2000),
        FUSE_CREATE,
        vol,
        &create_in("mine", libc::S_IFREG | 0o644),
    );
    assert_eq!(r.error, 0, "a create that opens");
    assert_eq!(entry_owner(&r.body), user, "the open's reply");

    for name in ["mine", "subdir"] {
        let path = dir.path().join(name);
        assert_eq!(host_owner(&path), euid_egid(), "{name}: the host owner");
        assert_eq!(
            host_xattr(&path, OWNER_XATTR).as_deref(),
            Some(&b"1000:1000"[..]),
            "{name}: the record"
        );
        assert_eq!(g.owner_of(vol, name), user, "{name}: lookup");
    }
    assert_eq!(g.owner(file), user, "getattr of the file");
    assert_eq!(g.owner(subdir), user, "getattr of the directory");
    let listed = g.readdirplus(vol);
    for name in ["mine", "subdir"] {
        assert!(
            listed.contains(&(name.to_string(), user)),
            "{name} in {listed:?}"
        );
    }
}

#[test]
fn a_guest_chown_of_what_the_vmm_owns_changes_the_record_not_the_host_owner() {
    let (dir, mut g, vol) = guest_with_share();
    let r = g.call_as(
        (1000, 1000),
        FUSE_CREATE,
        vol,
        &create_in("f", libc::S_IFREG | 0o644),
    );
    assert_eq!(r.error, 0, "create");
    let file = node_of(&r.body);
    let path = dir.path().join("f");

    let r = g.call(
        FUSE_SETATTR,
        file,
        &setattr_in(FATTR_UID | FATTR_GID, 0, (2000, 3000)),
    );
    assert_eq!(r.error, 0, "chown 2000:3000");
    assert_eq!(attr_owner(&r.body), (2000, 3000), "the chown's reply");
    assert_eq!(g.owner(file), (2000, 3000), "getattr");
    assert_eq!(host_owner(&path), euid_egid(), "the host owner");
    assert_eq!(
        host_xattr(&path, OWNER_XATTR).as_deref(),
        Some(&b"2000:3000"[..])
    );

    // chgrp keeps the uid; a mode in the same request reaches the host.
    let r = g.call(
        FUSE_SETATTR,
        file,
        &setattr_in(FATTR_GID | FATTR_MODE, libc::S_IFREG | 0o600, (0, 4000)),
    );
    assert_eq!(r.error, 0, "chgrp 4000 and chmod 600");
    assert_eq!(attr_owner(&r.body), (2000, 4000));
    assert_eq!(
        host_xattr(&path, OWNER_XATTR).as_deref(),
        Some(&b"2000:4000"[..])
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600);
    assert_eq!(host_owner(&path), euid_egid());
}

#[test]
fn host_files_show_a_well_formed_record_and_otherwise_root() {
    let (dir, mut g, vol) = guest_with_share();
    std::fs::write(dir.path().join("none"), b"").unwrap();
    let records: [(&str, &[u8]); 6] = [
        ("good", b"1234:5678"),
        ("word", b"abc"),
        ("three", b"1:2:3"),
        ("long", &[b'7'; 100]),
        ("signed", b"+1:2"),
        ("overflow", b"4294967296:1"),
    ];
    for (name, record) in records {
        let path = dir.path().join(name);
        std::fs::write(&path, b"").unwrap();
        set_host_xattr(&path, OWNER_XATTR, record);
    }
    for name in [
        "none", "good", "word", "three", "long", "signed", "overflow",
    ] {
        let shown = if name == "good" { (1234, 5678) } else { (0, 0) };
        assert_eq!(g.owner_of(vol, name), shown, "{name}");
        let (node, _) = g.lookup(vol, name).unwrap();
        assert_eq!(g.owner(node), shown, "{name}: getattr");
    }
}

#[test]
fn a_guest_can_neither_write_read_nor_list_the_owner_record() {
    let (dir, mut g, vol) = guest_with_share();
    let path = dir.path().join("f");
    std::fs::write(&path, b"").unwrap();
    set_host_xattr(&path, OWNER_XATTR, b"1000:1000");
    let (node, _) = g.lookup(vol, "f").unwrap();

    let r = g.call(FUSE_SETXATTR, node, &setxattr_in(OWNER_XATTR, b"0:0"));
    assert_eq!(r.error, -libc::EPERM, "setxattr");
    let r = g.call(FUSE_SETXATTR, node, &setxattr_in("user.hull.x", b"1"));
    assert_eq!(r.error, -libc::EPERM, "setxattr of another user.hull. name");
    let r = g.call(FUSE_REMOVEXATTR, node, &cstr(OWNER_XATTR));
    assert_eq!(r.error, -libc::EPERM, "removexattr");
    assert_eq!(
        host_xattr(&path, OWNER_XATTR).as_deref(),
        Some(&b"1000:1000"[..])
    );
    assert_eq!(host_xattr(&path, "user.hull.x"), None);
    for size in [0, 64] {
        let r = g.call(FUSE_GETXATTR, node, &getxattr_in(OWNER_XATTR, size));
        assert_eq!(r.error, -libc::ENODATA, "getxattr, size {size}");
    }

    let r = g.call(FUSE_SETXATTR, node, &setxattr_in("user.x", b"1"));
    assert_eq!(r.error, 0, "user.x");
    // Both listxattr requests: the size-0 probe and the read.
    let r = g.call(FUSE_LISTXATTR, node, &0u64.to_le_bytes());
    assert_eq!(r.error, 0, "listxattr probe");
    let needed = u32_at(&r.body, 0);
    assert_eq!(needed as usize, b"user.x\0".len());
    let mut listxattr_in = needed.to_le_bytes().to_vec();
    listxattr_in.extend_from_slice(&0u32.to_le_bytes());
    let r = g.call(FUSE_LISTXATTR, node, &listxattr_in);
    assert_eq!(r.error, 0, "listxattr");
    assert_eq!(r.body, b"user.x\0");
}

#[test]
fn mknod_makes_whiteouts_and_fifos_shown_as_root_but_no_devices() {
    let (dir, mut g, vol) = guest_with_share();
    let user = (1000, 1000);
    let r = g.call_as(
        user,
        FUSE_MKNOD,
        vol,
        &mknod_in("whiteout", libc::S_IFCHR | 0o600, 0),
    );
    assert_eq!(r.error, 0, "a character device 0:0");
    assert_eq!(
        entry_owner(&r.body),
        (0, 0),
        "a whiteout cannot hold a record"
    );
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(dir.path().join("whiteout")).unwrap();
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), 0);
    let r = g.call_as(
        user,
        FUSE_MKNOD,
        vol,
        &mknod_in("null", libc::S_IFCHR | 0o666, DEV_NULL),
    );
    assert_eq!(r.error, -libc::EPERM, "a character device 1:3");
    assert!(!dir.path().join("null").exists());

    let r = g.call_as(
        user,
        FUSE_MKNOD,
        vol,
        &mknod_in("pipe", libc::S_IFIFO | 0o644, 0),
    );
    assert_eq!(r.error, 0, "a FIFO");
    assert_eq!(entry_owner(&r.body), (0, 0), "a FIFO cannot hold a record");
    assert_eq!(g.owner_of(vol, "pipe"), (0, 0));
    // Its owner cannot change, then; a chown to what it shows is a no-op that succeeds.
    let pipe = node_of(&r.body);
    let r = g.call(
        FUSE_SETATTR,
        pipe,
        &setattr_in(FATTR_UID | FATTR_GID, 0, (0, 0)),
    );
    assert_eq!(r.error, 0, "chown of the FIFO to 0:0");
    let r = g.call(FUSE_SETATTR, pipe, &setattr_in(FATTR_UID, 0, (1000, 0)));
    assert_eq!(r.error, -libc::EPERM, "chown of the FIFO to 1000");
    assert_eq!(host_owner(&dir.path().join("pipe")), euid_egid());
    let mut symlink_in = cstr("link");
    symlink_in.extend_from_slice(&cstr("pipe"));
    let r = g.call_as(user, FUSE_SYMLINK, vol, &symlink_in);
    assert_eq!(r.error, 0, "a symlink");
    assert_eq!(
        entry_owner(&r.body),
        (0, 0),
        "a symlink cannot hold a record"
    );

    // A regular file made by mknod is recorded like a created one.
    let r = g.call_as(
        user,
        FUSE_MKNOD,
        vol,
        &mknod_in("plain", libc::S_IFREG | 0o644, 0),
    );
    assert_eq!(r.error, 0, "a regular file");
    assert_eq!(entry_owner(&r.body), user);
}

#[test]
fn what_is_made_in_a_setgid_directory_takes_the_directorys_shown_group() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, mut g, vol) = guest_with_share();
    // Two setgid directories of host group 4000: one recorded as group 4000, one as
    // 4500 (the guest's view, not the host's, decides).
    for (name, record) in [("shared", "0:4000"), ("relabelled", "0:4500")] {
        let path = dir.path().join(name);
        std::fs::create_dir(&path).unwrap();
        std::os::unix::fs::chown(&path, None, Some(4000)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o2775)).unwrap();
        set_host_xattr(&path, OWNER_XATTR, record.as_bytes());
    }
    let user = (1000, 1000);
    for (name, gid) in [("shared", 4000), ("relabelled", 4500)] {
        let (parent, _) = g.lookup(vol, name).unwrap();
        assert_eq!(g.owner(parent), (0, gid), "{name}");
        let r = g.call_as(
            user,
            FUSE_CREATE,
            parent,
            &create_in("f", libc::S_IFREG | 0o644),
        );
        assert_eq!(r.error, 0, "{name}: create");
        assert_eq!(entry_owner(&r.body), (1000, gid), "{name}: the reply");
        let file = node_of(&r.body);
        assert_eq!(g.owner(file), (1000, gid), "{name}: getattr");
        let path = dir.path().join(name).join("f");
        let record = format!("1000:{gid}");
        assert_eq!(
            host_xattr(&path, OWNER_XATTR).as_deref(),
            Some(record.as_bytes()),
            "{name}"
        );
        let r = g.call_as(user, FUSE_MKDIR, parent, &mkdir_in("d", 0o755));
        assert_eq!(r.error, 0, "{name}: mkdir");
        assert_eq!(
            entry_owner(&r.body),
            (1000, gid),
            "{name}: the mkdir's reply"
        );
    }
}
