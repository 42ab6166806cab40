//! One vsock stream between a guest socket and a host unix stream: the state machine, the
//! credit accounting of virtio 1.2 section 5.10.6.3, and the bounded buffer that holds
//! guest data the host has not read yet.
//!
//! Flow control both ways:
//! - guest → host: we advertise [`BUF_ALLOC`] and count in `fwd_cnt` the bytes the host
//!   stream accepted. The guest never has more than `BUF_ALLOC` bytes in flight, so the
//!   buffer of unwritten data is bounded by it; a guest that overruns it is reset.
//! - host → guest: we read from the host stream only as much as the guest's advertised
//!   free space allows, and stop watching the stream for input while that is zero. The
//!   host writer then blocks in its own socket, and the VMM sleeps.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::epoll::EventSet;

use super::packet::{op, Header, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Receive buffer we advertise per connection: the most guest data the VMM holds for a
/// host stream that is not reading.
pub const BUF_ALLOC: u32 = 256 << 10;
/// We tell the guest about consumed data once its view of our free space drops below this.
const CREDIT_UPDATE_THRESHOLD: u32 = 64 << 10;
/// How long a host-initiated connection waits for the guest to accept it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection may take to hand its last bytes to the host.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection kept by a restored snapshot waits for a host client to adopt it
/// before it is reset.
pub const PARK_TIMEOUT: Duration = Duration::from_secs(30);

/// An idle, established host-initiated connection as a snapshot keeps it: its credit
/// counters, so a restored VMM can carry it on without the guest noticing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedConnection {
    pub host_port: u32,
    pub guest_port: u32,
    pub rx_from_guest: u32,
    pub fwd_cnt: u32,
    pub fwd_cnt_sent: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    pub tx_cnt: u32,
}

mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const RST: u8 = 4;
    pub const SHUTDOWN: u8 = 8;
    pub const CREDIT_UPDATE: u8 = 16;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent (or queued), waiting for the guest's RESPONSE.
    Connecting,
    Established,
    /// RST queued or sent; the connection goes away once it is out.
    Closed,
}

/// A packet the connection wants delivered to the guest; the payload of an RW packet is
/// in the buffer passed to [`Connection::next_rx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxPacket {
    pub op: u16,
    pub flags: u32,
    pub len: u32,
}

pub struct Connection {
    stream: UnixStream,
    state: State,
    /// Opened by a host client (CONNECT) rather than by the guest.
    host_initiated: bool,
    /// Kept by a restored snapshot, waiting for a host client to adopt it: `stream` is a
    /// placeholder nothing reads or writes, guest data waits in `tx_buf`.
    parked: bool,
    /// Guest data not yet accepted by the host stream, preceded by `reply_len` bytes of
    /// the handshake reply.
    tx_buf: VecDeque<u8>,
    reply_len: usize,
    /// Guest bytes received, and of those, handed to the host stream.
    rx_from_guest: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last heard from us.
    fwd_cnt_sent: Wrapping<u32>,
    /// The guest's receive buffer and how much of what we sent it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes we sent the guest.
    tx_cnt: Wrapping<u32>,
    pending: u8,
    shutdown_to_send: u32,
    /// The guest's SHUTDOWN flags so far.
    peer_shutdown: u32,
    /// The host stream reported input (or hang-up): worth trying a read.
    host_readable: bool,
    /// The host shut its write side (read returned 0).
    host_eof: bool,
    /// The host closed the stream entirely (EPOLLHUP/EPOLLERR or a failed write).
    host_hup: bool,
    deadline: Option<Instant>,
}

impl Connection {
    /// A host client asked for a guest port: a REQUEST goes to the guest.
    pub fn host_initiated(stream: UnixStream, now: Instant) -> Self {
        let mut c = Connection::new(stream, State::Connecting);
        c.host_initiated = true;
        c.pending = pending::REQUEST;
        c.deadline = Some(now + CONNECT_TIMEOUT);
        c
    }

    /// The guest's REQUEST `hdr` reached a host listener: a RESPONSE goes back.
    pub fn guest_initiated(stream: UnixStream, hdr: &Header) -> Self {
        let mut c = Connection::new(stream, State::Established);
        c.pending = pending::RESPONSE;
        c.update_peer_credit(hdr);
        c
    }

    /// A connection a snapshot kept, parked until a host client adopts it (or
    /// [`PARK_TIMEOUT`] passes and it is reset).
    pub fn parked(saved: &SavedConnection, placeholder: UnixStream, now: Instant) -> Self {
        let mut c = Connection::new(placeholder, State::Established);
        c.host_initiated = true;
        c.parked = true;
        c.rx_from_guest = Wrapping(saved.rx_from_guest);
        c.fwd_cnt = Wrapping(saved.fwd_cnt);
        c.fwd_cnt_sent = Wrapping(saved.fwd_cnt_sent);
        c.peer_buf_alloc = saved.peer_buf_alloc;
        c.peer_fwd_cnt = Wrapping(saved.peer_fwd_cnt);
        c.tx_cnt = Wrapping(saved.tx_cnt);
        c.deadline = Some(now + PARK_TIMEOUT);
        c
    }

    /// What a snapshot keeps of this connection: only an established, host-initiated one
    /// with nothing in flight either way (no buffered guest data, no unread host input, no
    /// packet owed to the guest, no half-close). Anything else cannot be carried on by
    /// another host client, and a restore resets it.
    pub fn save(&self, host_port: u32, guest_port: u32) -> Option<SavedConnection> {
        let idle = self.state == State::Established
            && self.host_initiated
            && !self.parked
            && self.tx_buf.is_empty()
            && self.pending == 0
            && self.shutdown_to_send == 0
            && self.peer_shutdown == 0
            && !self.host_readable
            && !self.host_eof
            && !self.host_hup;
        idle.then_some(SavedConnection {
            host_port,
            guest_port,
            rx_from_guest: self.rx_from_guest.0,
            fwd_cnt: self.fwd_cnt.0,
            fwd_cnt_sent: self.fwd_cnt_sent.0,
            peer_buf_alloc: self.peer_buf_alloc,
            peer_fwd_cnt: self.peer_fwd_cnt.0,
            tx_cnt: self.tx_cnt.0,
        })
    }

    pub fn is_parked(&self) -> bool {
        self.parked && self.state != State::Closed
    }

    /// A host client takes over a parked connection: it gets `OK <host_port>` and then
    /// whatever the guest sent meanwhile.
    pub fn adopt(&mut self, stream: UnixStream, host_port: u32) {
        self.stream = stream;
        self.parked = false;
        self.deadline = None;
        let reply = super::handshake::ok_reply(host_port);
        self.reply_len = reply.len();
        let guest_data: Vec<u8> = self.tx_buf.drain(..).collect();
        self.tx_buf.extend(reply);
        self.tx_buf.extend(guest_data);
        self.flush();
    }

    fn new(stream: UnixStream, state: State) -> Self {
        Connection {
            stream,
            state,
            host_initiated: false,
            parked: false,
            tx_buf: VecDeque::new(),
            reply_len: 0,
            rx_from_guest: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            pending: 0,
            shutdown_to_send: 0,
            peer_shutdown: 0,
            host_readable: false,
            host_eof: false,
            host_hup: false,
            deadline: None,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn fwd_cnt(&self) -> u32 {
        self.fwd_cnt.0
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether everything is said and the connection can be dropped.
    pub fn is_finished(&self) -> bool {
        self.state == State::Closed && self.pending & pending::RST == 0
    }

    /// Bytes of guest data held for the host (bounded by [`BUF_ALLOC`]).
    pub fn buffered(&self) -> usize {
        self.tx_buf.len() - self.reply_len
    }

    /// The guest's free receive space as far as we know.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Queues an RST; the host stream is dropped with the connection once it is sent.
    pub fn reset(&mut self) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.pending = pending::RST;
            self.deadline = None;
            // The host learns at once, even if the guest takes long to collect the RST.
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    /// The deadline passed: a guest that never answered, or a host that never read.
    pub fn expire(&mut self, now: Instant) -> bool {
        if self.deadline.is_some_and(|d| d <= now) {
            log::debug!("vsock: connection timed out");
            self.reset();
            return true;
        }
        false
    }

    /// Events the host stream should be watched for. None at all once the host hung up:
    /// EPOLLHUP is reported regardless of interest, so the muxer must deregister it, and
    /// what is left in the socket is read as credit allows.
    pub fn interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.host_hup || self.state == State::Closed || self.parked {
            return e;
        }
        if self.wants_host_input() && !self.host_readable {
            e |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }

    pub fn watchable(&self) -> bool {
        !self.host_hup && self.state != State::Closed && !self.parked
    }

    fn wants_host_input(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.shutdown_to_send & SHUTDOWN_SEND == 0
            && self.peer_credit() > 0
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_rx(&self) -> bool {
        self.pending != 0 || (self.host_readable && self.wants_host_input())
    }

    /// The host stream is ready.
    pub fn host_event(&mut self, events: EventSet) {
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.host_hup = true;
            self.host_readable = true;
            if self.host_eof || self.peer_shutdown & SHUTDOWN_RCV != 0 {
                // Nothing left to read for the guest: the close is complete.
                self.reset();
                return;
            }
        }
        if events.contains(EventSet::IN) {
            self.host_readable = true;
        }
        if events.contains(EventSet::OUT) {
            self.flush();
        }
    }

    /// A packet from the guest for this connection.
    pub fn guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        self.update_peer_credit(hdr);
        match hdr.op {
            op::RESPONSE if self.state == State::Connecting => {
                self.state = State::Established;
                self.deadline = None;
                let port = hdr.dst_port;
                let reply = super::handshake::ok_reply(port);
                self.reply_len = reply.len();
                self.tx_buf.extend(reply);
                self.flush();
            }
            op::RW if self.state == State::Established => self.guest_data(payload),
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => self.pending |= pending::CREDIT_UPDATE,
            op::SHUTDOWN => {
                self.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                self.flush();
            }
            op::RST => {
                // The guest is gone: drop without answering.
                self.state = State::Closed;
                self.pending = 0;
            }
            other => {
                log::debug!("vsock: unexpected op {other} in state {:?}", self.state);
                self.reset();
            }
        }
        self.check_done();
    }

    fn guest_data(&mut self, payload: &[u8]) {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            log::debug!("vsock: guest sent data after shutting down its send side");
            self.reset();
            return;
        }
        if self.buffered() + payload.len() > BUF_ALLOC as usize {
            crate::guest_warn!("vsock: guest overran the advertised receive buffer; resetting");
            self.reset();
            return;
        }
        self.rx_from_guest += Wrapping(payload.len() as u32);
        if self.host_hup {
            // The host closed; its last bytes are still being delivered before the RST.
            // What the guest sends meanwhile has nowhere to go: count it as consumed so
            // the guest never stalls waiting for credit.
            self.fwd_cnt += Wrapping(payload.len() as u32);
            self.note_forwarded();
            return;
        }
        let mut rest = payload;
        if self.tx_buf.is_empty() && !self.parked {
            match self.stream.write(rest) {
                Ok(n) => {
                    self.fwd_cnt += Wrapping(n as u32);
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vsock: host stream write failed: {e}");
                    self.host_gone();
                    return;
                }
            }
        }
        self.tx_buf.extend(rest);
        self.note_forwarded();
    }

    /// Writes buffered bytes to the host stream until it would block.
    fn flush(&mut self) {
        while !self.tx_buf.is_empty() && !self.host_hup && !self.parked {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    let reply = n.min(self.reply_len);
                    self.reply_len -= reply;
                    self.fwd_cnt += Wrapping((n - reply) as u32);
                    self.tx_buf.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::debug!("vsock: host stream write failed: {e}");
                    self.host_gone();
                    return;
                }
            }
        }
        self.note_forwarded();
        if self.tx_buf.is_empty() && self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_hup {
            // The guest sends no more and all it sent is out: the host reads EOF.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        self.check_done();
    }

    /// Queues a credit update once the guest's view of our free space gets low.
    fn note_forwarded(&mut self) {
        let unannounced = (self.fwd_cnt - self.fwd_cnt_sent).0;
        let guest_view_used = (self.rx_from_guest - self.fwd_cnt_sent).0;
        let guest_view_free = BUF_ALLOC.saturating_sub(guest_view_used);
        if unannounced > 0 && guest_view_free < CREDIT_UPDATE_THRESHOLD {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    fn host_gone(&mut self) {
        self.host_hup = true;
        self.tx_buf.clear();
        self.reply_len = 0;
        self.reset();
    }

    /// Both directions are finished: reset (the orderly end of a vsock stream).
    fn check_done(&mut self) {
        if self.state != State::Established {
            return;
        }
        let guest_done = self.peer_shutdown & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty();
        let host_done = self.host_eof || self.peer_shutdown & SHUTDOWN_RCV != 0;
        if guest_done && (host_done || self.peer_shutdown == SHUTDOWN_BOTH) {
            self.reset();
        } else if self.peer_shutdown == SHUTDOWN_BOTH && self.deadline.is_none() {
            self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
        }
    }

    /// The next packet for the guest, if any, with at most `buf.len()` bytes of payload
    /// read from the host into `buf`. Also the moment the guest learns our `fwd_cnt`.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<RxPacket> {
        let pkt = self.next_rx_inner(buf)?;
        self.fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !pending::CREDIT_UPDATE;
        Some(pkt)
    }

    fn next_rx_inner(&mut self, buf: &mut [u8]) -> Option<RxPacket> {
        let control = |op, flags| Some(RxPacket { op, flags, len: 0 });
        if self.pending & pending::RST != 0 {
            self.pending = 0;
            return control(op::RST, 0);
        }
        if self.pending & pending::REQUEST != 0 {
            self.pending &= !pending::REQUEST;
            return control(op::REQUEST, 0);
        }
        if self.pending & pending::RESPONSE != 0 {
            self.pending &= !pending::RESPONSE;
            return control(op::RESPONSE, 0);
        }
        if self.host_readable && self.wants_host_input() && !buf.is_empty() {
            let n = buf.len().min(self.peer_credit() as usize);
            match self.stream.read(&mut buf[..n]) {
                Ok(0) => {
                    self.host_readable = false;
                    self.host_eof = true;
                    if self.host_hup {
                        self.reset();
                        return self.next_rx_inner(buf);
                    }
                    self.shutdown_to_send |= SHUTDOWN_SEND;
                    self.pending |= pending::SHUTDOWN;
                    self.check_done();
                    return self.next_rx_inner(buf);
                }
                Ok(n) => {
                    self.tx_cnt += Wrapping(n as u32);
                    return Some(RxPacket {
                        op: op::RW,
                        flags: 0,
                        len: n as u32,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.host_readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vsock: host stream read failed: {e}");
                    self.host_gone();
                    return self.next_rx_inner(buf);
                }
            }
        }
        if self.pending & pending::SHUTDOWN != 0 {
            self.pending &= !pending::SHUTDOWN;
            return control(op::SHUTDOWN, self.shutdown_to_send);
        }
        if self.pending & pending::CREDIT_UPDATE != 0 {
            return control(op::CREDIT_UPDATE, 0);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::TYPE_STREAM;
    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn hdr(op: u16, flags: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5000,
            dst_port: 1 << 30,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn established() -> (Connection, UnixStream) {
        let (ours, theirs) = pair();
        let mut c = Connection::host_initiated(ours, Instant::now());
        let mut buf = [0u8; 64];
        assert_eq!(c.next_rx(&mut buf).unwrap().op, op::REQUEST);
        c.guest_packet(&hdr(op::RESPONSE, 0, 4096, 0), &[]);
        let mut line = [0u8; 14];
        (&theirs).read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");
        (c, theirs)
    }

    #[test]
    fn host_data_is_limited_by_guest_credit() {
        let (mut c, mut host) = established();
        host.write_all(&[7u8; 10000]).unwrap();
        c.host_event(EventSet::IN);
        let mut buf = vec![0u8; 8192];
        let p = c.next_rx(&mut buf).unwrap();
        assert_eq!((p.op, p.len), (op::RW, 4096), "guest advertised 4096 bytes");
        assert!(!c.has_rx(), "no credit left: nothing more to send");
        assert_eq!(
            c.interest(),
            EventSet::empty(),
            "stream not watched without credit"
        );
        c.guest_packet(&hdr(op::CREDIT_UPDATE, 0, 4096, 4096), &[]);
        assert!(c.has_rx());
        assert_eq!(c.next_rx(&mut buf).unwrap().len, 4096);
    }

    #[test]
    fn guest_data_reaches_the_host_and_credit_is_returned() {
        let (mut c, host) = established();
        let chunk = vec![1u8; 60 << 10];
        for _ in 0..4 {
            c.guest_packet(&hdr(op::RW, 0, 4096, 0), &chunk);
            // Drain the host side as a reader would.
            let mut sink = vec![0u8; 1 << 20];
            while let Ok(n) = (&host).read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
            c.host_event(EventSet::OUT);
        }
        assert_eq!(c.fwd_cnt() as usize, 4 * chunk.len());
        assert!(
            c.has_rx(),
            "guest's view of our buffer is low: credit update due"
        );
        let p = c.next_rx(&mut []).unwrap();
        assert_eq!(p.op, op::CREDIT_UPDATE);
    }

    #[test]
    fn a_guest_that_overruns_our_buffer_is_reset() {
        let (mut c, _host) = established(); // the host never reads
        let chunk = vec![0u8; 64 << 10];
        for _ in 0..16 {
            c.guest_packet(&hdr(op::RW, 0, 4096, 0), &chunk);
        }
        assert!(c.buffered() <= BUF_ALLOC as usize);
        assert_eq!(c.next_rx(&mut []).unwrap().op, op::RST);
        assert!(c.is_finished());
    }

    #[test]
    fn host_half_close_sends_shutdown_send_and_keeps_receiving() {
        let (mut c, host) = established();
        host.shutdown(Shutdown::Write).unwrap();
        c.host_event(EventSet::IN);
        let mut buf = [0u8; 64];
        let p = c.next_rx(&mut buf).unwrap();
        assert_eq!((p.op, p.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
        c.guest_packet(&hdr(op::RW, 0, 4096, 0), b"reply");
        let mut got = [0u8; 5];
        (&host).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"reply");
        // The guest closes: everything done, RST ends it.
        c.guest_packet(&hdr(op::SHUTDOWN, SHUTDOWN_BOTH, 4096, 0), &[]);
        assert_eq!(c.next_rx(&mut buf).unwrap().op, op::RST);
        assert!(c.is_finished());
        let mut rest = [0u8; 1];
        assert_eq!((&host).read(&mut rest).unwrap(), 0, "host reads EOF");
    }

    #[test]
    fn host_close_delivers_what_was_written_then_resets() {
        let (mut c, host) = established();
        (&host).write_all(b"last words").unwrap();
        drop(host);
        c.host_event(EventSet::IN | EventSet::HANG_UP);
        assert_eq!(c.interest(), EventSet::empty());
        let mut buf = [0u8; 64];
        let p = c.next_rx(&mut buf).unwrap();
        assert_eq!((p.op, &buf[..p.len as usize]), (op::RW, &b"last words"[..]));
        assert_eq!(c.next_rx(&mut buf).unwrap().op, op::RST);
        assert!(c.is_finished());
    }

    #[test]
    fn host_close_after_its_half_close_resets_and_guest_data_does_not_stall() {
        let (mut c, host) = established();
        host.shutdown(Shutdown::Write).unwrap();
        c.host_event(EventSet::IN);
        let mut buf = [0u8; 64];
        assert_eq!(c.next_rx(&mut buf).unwrap().op, op::SHUTDOWN);
        drop(host);
        c.host_event(EventSet::HANG_UP);
        assert_eq!(c.next_rx(&mut buf).unwrap().op, op::RST);
        assert!(c.is_finished());
    }

    #[test]
    fn guest_data_after_the_host_closed_is_consumed_while_the_rest_drains() {
        let (mut c, host) = established();
        (&host).write_all(b"tail").unwrap();
        drop(host);
        c.host_event(EventSet::IN | EventSet::HANG_UP);
        let chunk = vec![0u8; 64 << 10];
        for _ in 0..8 {
            c.guest_packet(&hdr(op::RW, 0, 4096, 0), &chunk);
        }
        assert_eq!(c.buffered(), 0, "nothing held for a host that is gone");
        assert_eq!(c.fwd_cnt(), 8 * (64 << 10), "credit keeps flowing");
        let mut buf = [0u8; 64];
        let p = c.next_rx(&mut buf).unwrap();
        assert_eq!((p.op, p.len), (op::RW, 4));
        assert_eq!(c.next_rx(&mut buf).unwrap().op, op::RST);
    }

    #[test]
    fn an_empty_rx_buffer_is_not_mistaken_for_eof() {
        let (mut c, host) = established();
        (&host).write_all(b"data").unwrap();
        c.host_event(EventSet::IN);
        assert_eq!(c.next_rx(&mut []), None);
        let mut buf = [0u8; 64];
        assert_eq!(c.next_rx(&mut buf).unwrap().len, 4);
    }

    #[test]
    fn reset_closes_the_host_stream_at_once() {
        let (mut c, host) = established();
        c.reset();
        let mut b = [0u8; 1];
        assert_eq!(
            (&host).read(&mut b).unwrap(),
            0,
            "host sees EOF before the RST is out"
        );
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn guest_reset_drops_without_answer() {
        let (mut c, _host) = established();
        c.guest_packet(&hdr(op::RST, 0, 0, 0), &[]);
        assert!(c.is_finished());
        assert_eq!(c.next_rx(&mut []), None);
    }

    #[test]
    fn an_unanswered_request_expires() {
        let (ours, _theirs) = pair();
        let t0 = Instant::now();
        let mut c = Connection::host_initiated(ours, t0);
        assert!(!c.expire(t0));
        assert!(c.expire(t0 + CONNECT_TIMEOUT));
        assert_eq!(c.next_rx(&mut []).unwrap().op, op::RST);
    }

    #[test]
    fn guest_shutdown_send_reaches_the_host_as_eof_after_the_data() {
        let (mut c, host) = established();
        c.guest_packet(&hdr(op::RW, 0, 4096, 0), b"bye");
        c.guest_packet(&hdr(op::SHUTDOWN, SHUTDOWN_SEND, 4096, 0), &[]);
        let mut all = Vec::new();
        host.set_nonblocking(false).unwrap();
        (&host).read_to_end(&mut all).unwrap();
        assert_eq!(all, b"bye");
    }
}
