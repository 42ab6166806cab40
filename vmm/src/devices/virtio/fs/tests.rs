//! The fs device driven as the guest's virtio-fs driver drives it: FUSE requests written
//! into guest memory by hand, served by the real file server over a temporary directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::devices::virtio::test_driver::{Buf, TestDriver};

const FUSE_LOOKUP: u32 = 1;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_INIT: u32 = 26;
const FUSE_CREATE: u32 = 35;
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
        let fs = Fs::new("hull", shares).unwrap();
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

    fn call(&mut self, opcode: u32, node: u64, body: &[u8]) -> Reply {
        self.unique += 1;
        let mut req = Vec::new();
        req.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
        req.extend_from_slice(&opcode.to_le_bytes());
        req.extend_from_slice(&self.unique.to_le_bytes());
        req.extend_from_slice(&node.to_le_bytes());
        req.extend_from_slice(&0u32.to_le_bytes()); // uid
        req.extend_from_slice(&0u32.to_le_bytes()); // gid
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
    let fs = Fs::new("hull", Arc::new(Shares::new())).unwrap();
    let mut cfg = [0u8; TAG_LEN + 4];
    fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..5], b"hull\0");
    assert_eq!(u32_at(&cfg, TAG_LEN), 1);
    assert!(Fs::new("", Arc::new(Shares::new())).is_err());
    assert!(Fs::new(&"t".repeat(TAG_LEN + 1), Arc::new(Shares::new())).is_err());
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
