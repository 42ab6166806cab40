//! Host clients of the hybrid vsock socket: accepting them, reading their `CONNECT <port>`
//! or `ADOPT <port>` line (bounded in number and time), and turning each into a
//! connection to the guest.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

use super::{Muxer, PendingHandshake, HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, MAX_HANDSHAKES};
use crate::devices::virtio::vsock::connection::Connection;
use crate::devices::virtio::vsock::handshake::{self, HandshakeError, Request};

impl Muxer {
    pub(super) fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::guest_warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        // Out of descriptors: the listener would stay readable and spin
                        // the loop. Stop watching it; the sweep tries again later.
                        let fd = self.listener.as_raw_fd();
                        let _ = self
                            .epoll
                            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                        self.listener_paused = true;
                        self.arm_timer();
                    }
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES {
                crate::guest_warn!(
                    "vsock: {MAX_HANDSHAKES} clients are mid-handshake; refusing another"
                );
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            // Edge-triggered: the line is only peeked at until complete, so a level-
            // triggered registration would report a partial line over and over.
            let events = EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(events, fd as u64),
                )
                .is_err()
            {
                continue;
            }
            self.arm_timer();
            self.handshakes.insert(
                fd,
                PendingHandshake {
                    stream,
                    deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                },
            );
        }
    }

    /// Reads a client's CONNECT line. It peeks first and consumes exactly the line, so
    /// bytes the client sends after it stay in the socket for the guest.
    pub(super) fn continue_handshake(&mut self, fd: RawFd, events: EventSet) {
        let Some(h) = self.handshakes.get(&fd) else {
            return;
        };
        let mut buf = [0u8; handshake::MAX_LINE];
        // SAFETY: `buf` is a live, writable buffer of the given length; MSG_PEEK leaves
        // the data queued.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let result = match n {
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) {
                    return;
                }
                Err(HandshakeError::Eof)
            }
            0 => Err(HandshakeError::Eof),
            n => handshake::parse(&buf[..n as usize]),
        };
        let hung_up =
            events.intersects(EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR);
        let (request, len) = match result {
            Ok(None) if hung_up => {
                crate::guest_warn!("vsock: dropping host client: {}", HandshakeError::Eof);
                self.drop_handshake(fd);
                return;
            }
            Ok(None) => return,
            Ok(Some(done)) => done,
            Err(e) => {
                crate::guest_warn!("vsock: dropping host client: {e}");
                self.drop_handshake(fd);
                return;
            }
        };
        let mut line = vec![0u8; len];
        if (&h.stream).read_exact(&mut line).is_err() {
            self.drop_handshake(fd);
            return;
        }
        let Some(PendingHandshake { stream, .. }) = self.drop_handshake(fd) else {
            return;
        };
        let port = match request {
            Request::Adopt(port) => return self.adopt(stream, port),
            Request::Connect(port) => port,
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            crate::guest_warn!(
                "vsock: {MAX_CONNECTIONS} connections open; refusing CONNECT {port}"
            );
            return;
        }
        let Some(local_port) = self.allocate_local_port(port) else {
            crate::guest_warn!("vsock: no free host port for CONNECT {port}");
            return;
        };
        log::debug!("vsock: host connects to guest port {port} from {local_port}");
        let key = (local_port, port);
        self.conns
            .insert(key, Connection::host_initiated(stream, Instant::now()));
        self.sync(key);
    }

    /// `ADOPT <port>`: hands the client a parked connection to guest `port` (the oldest
    /// host port first), or closes it when there is none.
    fn adopt(&mut self, stream: UnixStream, port: u32) {
        let key = self
            .conns
            .iter()
            .filter(|(k, c)| k.1 == port && c.is_parked())
            .map(|(k, _)| *k)
            .min();
        let Some(key) = key else {
            log::debug!("vsock: ADOPT {port}: no kept connection to that port; closing");
            return;
        };
        log::info!("vsock: host client adopted the kept connection to guest port {port}");
        if let Some(c) = self.conns.get_mut(&key) {
            c.adopt(stream, key.0);
        }
        self.sync(key);
    }

    pub(super) fn drop_handshake(&mut self, fd: RawFd) -> Option<PendingHandshake> {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.handshakes.remove(&fd)
    }
}
