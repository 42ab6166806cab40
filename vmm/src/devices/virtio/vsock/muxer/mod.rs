//! The hybrid vsock backend: guest streams multiplexed onto host unix sockets, the way
//! Firecracker's users know it.
//!
//! - Host → guest: a client connects to `uds_path`, sends `CONNECT <port>\n`; the guest
//!   gets a REQUEST from a host port we allocate, and once it answers the client reads
//!   `OK <host port>\n` followed by the stream.
//! - Guest → host: a guest connection to CID 2, port P becomes a connection to the unix
//!   socket `<uds_path>_<P>`, or an RST when nothing listens there.
//!
//! Every host descriptor sits in the muxer's own epoll, whose single fd the event loop
//! watches; interest is recomputed after every change, so a connection that cannot make
//! progress (no guest credit, no RX buffers) is not polled and the VMM sleeps.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, BUF_ALLOC};
use super::packet::{op, Header, HOST_CID, TYPE_STREAM};

mod clients;
mod persist;
pub use persist::MuxerState;

/// Connections per VM; requests beyond it are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// Host clients that connected but have not finished their CONNECT line.
pub const MAX_HANDSHAKES: usize = 64;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// RSTs for packets that match no connection, waiting for RX buffers; more are dropped
/// (the guest times out instead).
const MAX_ORPHAN_RSTS: usize = 1024;
/// How often deadlines are checked while any is pending.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Host ports we allocate for host-initiated connections: [2^30, 2^31), as Firecracker.
const LOCAL_PORT_MIN: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("vsock socket {0}: a VMM is already listening there; choose another uds_path")]
    InUse(PathBuf),
    #[error("vsock socket {0}: the path exists and is not a socket; remove it or choose another uds_path")]
    NotASocket(PathBuf),
    #[error("vsock socket {path}: cannot listen")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock: create epoll or timer")]
    Setup(#[source] std::io::Error),
}

type ConnKey = (u32, u32); // (host port, guest port)

struct PendingHandshake {
    stream: UnixStream,
    deadline: Instant,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    /// The listener accepts nothing until [`Muxer::publish`] (a restored VM: see
    /// `Vsock::for_restore`): host clients that connect early wait in its backlog.
    unpublished: bool,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    /// The listener is out of the epoll set after accept ran out of descriptors.
    listener_paused: bool,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// Current epoll interest of each registered connection stream.
    watched: HashMap<RawFd, EventSet>,
    handshakes: HashMap<RawFd, PendingHandshake>,
    rxq: VecDeque<ConnKey>,
    in_rxq: HashSet<ConnKey>,
    orphan_rsts: VecDeque<ConnKey>,
    local_port_last: u32,
}

impl Muxer {
    /// Listens on `uds_path`, replacing a stale socket left by a VMM that died.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        Self::bind(guest_cid, uds_path, false)
    }

    /// Like [`Muxer::new`], but nothing is accepted until [`Muxer::publish`]: a host
    /// client that connects early is served only once the guest is ready for it. (The
    /// socket is bound at its path at once: a jailed VMM cannot rename it later.)
    pub fn new_staged(guest_cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        Self::bind(guest_cid, uds_path, true)
    }

    fn bind(guest_cid: u64, uds_path: &Path, staged: bool) -> Result<Self, MuxerError> {
        prepare_socket_path(uds_path)?;
        let listener = UnixListener::bind(uds_path)
            .and_then(|l| restrict_socket(uds_path).map(|()| l))
            .map_err(|source| MuxerError::Bind {
                path: uds_path.to_path_buf(),
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| MuxerError::Bind {
                path: uds_path.to_path_buf(),
                source,
            })?;
        let epoll = Epoll::new().map_err(MuxerError::Setup)?;
        let timer = TimerFd::new()
            .map_err(|e| MuxerError::Setup(std::io::Error::from_raw_os_error(e.errno())))?;
        let watched = if staged {
            vec![timer.as_raw_fd()]
        } else {
            vec![listener.as_raw_fd(), timer.as_raw_fd()]
        };
        for fd in watched {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, fd as u64),
                )
                .map_err(MuxerError::Setup)?;
        }
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            unpublished: staged,
            listener,
            epoll,
            timer,
            timer_armed: false,
            listener_paused: false,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            watched: HashMap::new(),
            handshakes: HashMap::new(),
            rxq: VecDeque::new(),
            in_rxq: HashSet::new(),
            orphan_rsts: VecDeque::new(),
            local_port_last: LOCAL_PORT_MIN - 1,
        })
    }

    /// Starts accepting host clients (a no-op once it does). A failure leaves the
    /// listener idle, and says so: host clients would wait forever otherwise.
    pub fn publish(&mut self) {
        if !self.unpublished {
            return;
        }
        let fd = self.listener.as_raw_fd();
        match self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, fd as u64),
        ) {
            Ok(()) => {
                self.unpublished = false;
                log::info!("vsock: accepting on {}", self.uds_path.display());
            }
            Err(e) => log::error!(
                "vsock: cannot start accepting on {}: {e}",
                self.uds_path.display()
            ),
        }
    }

    pub fn is_published(&self) -> bool {
        !self.unpublished
    }

    /// The descriptor the event loop watches for the whole backend.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Serves whatever the host side has ready, without blocking.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                crate::guest_warn!("vsock: epoll wait failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            let set = ev.event_set();
            if fd == self.listener.as_raw_fd() {
                self.accept_clients();
            } else if fd == self.timer.as_raw_fd() {
                let _ = self.timer.wait();
                self.timer_armed = false;
                self.sweep(Instant::now());
                self.rearm_after_sweep();
            } else if self.handshakes.contains_key(&fd) {
                self.continue_handshake(fd, set);
            } else if let Some(&key) = self.by_fd.get(&fd) {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.host_event(set);
                }
                self.sync(key);
            } else {
                // Stale registration: nothing owns it any more.
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..MAX_CONNECTIONS + 1 {
            self.local_port_last =
                (self.local_port_last.wrapping_add(1) & !(1 << 31)) | LOCAL_PORT_MIN;
            if !self.conns.contains_key(&(self.local_port_last, peer_port)) {
                return Some(self.local_port_last);
            }
        }
        None
    }

    /// A packet from the guest's TX queue.
    pub fn guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            log::debug!(
                "vsock: dropping packet {}:{} -> {}:{} type {}",
                hdr.src_cid,
                hdr.src_port,
                hdr.dst_cid,
                hdr.dst_port,
                hdr.type_
            );
            // Only a packet addressed to us can be answered: an RST from CID 2 for a
            // packet sent elsewhere would match no guest socket.
            if hdr.op != op::RST && hdr.src_cid == self.guest_cid && hdr.dst_cid == HOST_CID {
                self.orphan_rst((hdr.dst_port, hdr.src_port));
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.op == op::REQUEST {
            self.guest_connect(key, hdr);
            return;
        }
        match self.conns.get_mut(&key) {
            Some(c) => {
                c.guest_packet(hdr, payload);
                self.sync(key);
            }
            None if hdr.op != op::RST => self.orphan_rst(key),
            None => {}
        }
    }

    fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        if self.conns.contains_key(&key) {
            log::debug!("vsock: guest re-requested a live connection {key:?}; resetting it");
            if let Some(c) = self.conns.get_mut(&key) {
                c.reset();
            }
            self.sync(key);
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            crate::guest_warn!("vsock: {MAX_CONNECTIONS} connections open; refusing the guest's");
            self.orphan_rst(key);
            return;
        }
        let path = PathBuf::from(format!("{}_{}", self.uds_path.display(), key.0));
        match connect_nonblocking(&path) {
            Ok(stream) => {
                log::debug!(
                    "vsock: guest port {} connected to {}",
                    key.1,
                    path.display()
                );
                self.conns
                    .insert(key, Connection::guest_initiated(stream, hdr));
                self.sync(key);
            }
            Err(e) => {
                log::debug!("vsock: guest connect to {}: {e}", path.display());
                self.orphan_rst(key);
            }
        }
    }

    fn orphan_rst(&mut self, key: ConnKey) {
        if self.orphan_rsts.len() < MAX_ORPHAN_RSTS {
            self.orphan_rsts.push_back(key);
        }
    }

    /// Brings a connection's epoll interest and RX queueing in line with its state, and
    /// drops it once finished.
    fn sync(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get(&key) else {
            return;
        };
        let fd = c.stream().as_raw_fd();
        if c.is_finished() || !c.watchable() {
            if self.watched.remove(&fd).is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                self.by_fd.remove(&fd);
            }
        } else {
            let want = c.interest();
            let op = match self.watched.get(&fd) {
                None => Some(ControlOperation::Add),
                Some(cur) if *cur != want => Some(ControlOperation::Modify),
                Some(_) => None,
            };
            if let Some(op) = op {
                match self.epoll.ctl(op, fd, EpollEvent::new(want, fd as u64)) {
                    Ok(()) => {
                        self.watched.insert(fd, want);
                        self.by_fd.insert(fd, key);
                    }
                    Err(e) => {
                        // Unwatched, the connection would never make progress.
                        crate::guest_warn!("vsock: cannot watch a host stream ({e}); resetting it");
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.reset();
                        }
                        return self.sync(key);
                    }
                }
            }
        }
        let Some(c) = self.conns.get(&key) else {
            return;
        };
        if c.is_finished() {
            self.conns.remove(&key);
            return;
        }
        let (has_deadline, has_rx) = (c.deadline().is_some(), c.has_rx());
        if has_deadline {
            self.arm_timer();
        }
        if has_rx && self.in_rxq.insert(key) {
            self.rxq.push_back(key);
        }
    }

    /// Whether a packet may be waiting for the guest.
    pub fn has_rx(&self) -> bool {
        !self.orphan_rsts.is_empty() || !self.rxq.is_empty()
    }

    /// The next packet for the guest: its header, with up to `buf.len()` payload bytes
    /// placed in `buf`.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<Header> {
        if let Some((local, peer)) = self.orphan_rsts.pop_front() {
            return Some(self.header(local, peer, op::RST, 0, 0, 0));
        }
        while let Some(key) = self.rxq.pop_front() {
            self.in_rxq.remove(&key);
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            let pkt = c.next_rx(buf);
            let fwd_cnt = c.fwd_cnt();
            self.sync(key);
            if let Some(p) = pkt {
                return Some(self.header(key.0, key.1, p.op, p.flags, p.len, fwd_cnt));
            }
        }
        None
    }

    fn header(&self, local: u32, peer: u32, op: u16, flags: u32, len: u32, fwd: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local,
            dst_port: peer,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: fwd,
        }
    }

    /// The packet with `hdr` could not be written to the guest: its connection has lost
    /// bytes and cannot continue.
    pub fn rx_failed(&mut self, hdr: &Header) {
        let key = (hdr.src_port, hdr.dst_port);
        if let Some(c) = self.conns.get_mut(&key) {
            c.reset();
        }
        self.sync(key);
    }

    /// Drops every connection and pending handshake (device reset, transport reset): host
    /// clients see their streams close.
    pub fn reset_all(&mut self) {
        for (fd, _) in self.watched.drain() {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        let fds: Vec<RawFd> = self.handshakes.keys().copied().collect();
        for fd in fds {
            self.drop_handshake(fd);
        }
        self.conns.clear();
        self.by_fd.clear();
        self.rxq.clear();
        self.in_rxq.clear();
        self.orphan_rsts.clear();
    }

    /// Expires handshakes and connections whose deadline passed.
    pub fn sweep(&mut self, now: Instant) {
        if self.listener_paused {
            let fd = self.listener.as_raw_fd();
            let ev = EpollEvent::new(EventSet::IN, fd as u64);
            if self.epoll.ctl(ControlOperation::Add, fd, ev).is_ok() {
                self.listener_paused = false;
            }
        }
        let stale: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in stale {
            crate::guest_warn!(
                "vsock: host client sent no CONNECT line within {HANDSHAKE_TIMEOUT:?}"
            );
            self.drop_handshake(fd);
        }
        let expired: Vec<ConnKey> = self
            .conns
            .iter_mut()
            .filter_map(|(k, c)| c.expire(now).then_some(*k))
            .collect();
        for key in expired {
            self.sync(key);
        }
    }

    /// Starts the periodic sweep if it is not running (O(1); called whenever something
    /// gets a deadline). The sweep stops itself once nothing has one.
    fn arm_timer(&mut self) {
        if !self.timer_armed && self.timer.reset(SWEEP_INTERVAL, None).is_ok() {
            self.timer_armed = true;
        }
    }

    /// After a sweep: run again only while something still has a deadline.
    fn rearm_after_sweep(&mut self) {
        let needed = self.listener_paused
            || !self.handshakes.is_empty()
            || self.conns.values().any(|c| c.deadline().is_some());
        if needed {
            self.arm_timer();
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // A jailed VMM cannot reach the path; its host removes the run directory.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Makes `path` free for a listener: a socket nobody listens on (left by a VMM that was
/// killed) is removed; a live one or any other file is an error.
/// Narrows a socket hull-vmm just bound to 0600. The virtio-fs server runs the VMM with
/// umask 0 (it applies the guest's own umask per request), so a fresh socket would be
/// world-connectable; the sandbox's run directory (0700) covers the moment in between.
pub fn restrict_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

pub(crate) fn prepare_socket_path(path: &Path) -> Result<(), MuxerError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(MuxerError::NotASocket(path.to_path_buf()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(MuxerError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|source| MuxerError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Connects to a unix stream socket without ever blocking the event loop: a listener
/// whose backlog is full answers EAGAIN, which the guest sees as a refused connection.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: an all-zero sockaddr_un is a valid value of the type.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket creation; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and own exclusively.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is an initialised sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}
