//! The vsock device end to end on the host: a simulated guest driver on one side, real
//! unix sockets on the other.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use super::packet::{op, Header, HEADER_LEN, HOST_CID, SHUTDOWN_BOTH, TYPE_STREAM};
use super::*;
use crate::devices::virtio::test_driver::{Buf, TestDriver};

const CID: u64 = 3;
const RX_BUF: u32 = 4096 + HEADER_LEN as u32;

struct Guest {
    d: TestDriver,
    rx_posted: VecDeque<(u16, u64)>,
    event_posted: VecDeque<(u16, u64)>,
    muxer_fd: RawFd,
    reset_fd: RawFd,
    uds: PathBuf,
    _dir: tempfile::TempDir,
}

impl Guest {
    fn new() -> Self {
        Self::with(Vsock::new)
    }

    fn with(make: fn(u64, &std::path::Path) -> Result<Vsock, VsockError>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let dev = make(CID, &uds).unwrap();
        let d = TestDriver::new(Box::new(dev));
        let fds = d.transport.host_fds();
        let mut g = Guest {
            d,
            rx_posted: VecDeque::new(),
            event_posted: VecDeque::new(),
            muxer_fd: fds[0],
            reset_fd: fds[1],
            uds,
            _dir: dir,
        };
        g.post_rx(32);
        g
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = self.d.alloc(RX_BUF);
            let head = self.d.add_chain(
                RX,
                &[Buf {
                    addr,
                    len: RX_BUF,
                    write: true,
                }],
            );
            self.rx_posted.push_back((head, addr));
        }
        self.d.notify(RX);
    }

    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let mut hdr = hdr;
        hdr.len = payload.len() as u32;
        let h = self.d.alloc(HEADER_LEN as u32);
        self.d.write(h, &hdr.to_bytes());
        let mut bufs = vec![Buf {
            addr: h,
            len: HEADER_LEN as u32,
            write: false,
        }];
        if !payload.is_empty() {
            let p = self.d.alloc(payload.len() as u32);
            self.d.write(p, payload);
            bufs.push(Buf {
                addr: p,
                len: payload.len() as u32,
                write: false,
            });
        }
        self.d.add_chain(TX, &bufs);
        self.d.notify(TX);
        assert_eq!(self.d.take_used(TX).len(), 1, "TX packet was not consumed");
    }

    /// Packets the device put in RX buffers since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        for (head, len) in self.d.take_used(RX) {
            let (posted, addr) = self.rx_posted.pop_front().unwrap();
            assert_eq!(head, posted, "RX buffers are used in order");
            assert!(len as usize >= HEADER_LEN);
            let raw: [u8; HEADER_LEN] = self.d.read(addr, HEADER_LEN).try_into().unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(len as usize, HEADER_LEN + hdr.len as usize);
            let payload = self.d.read(addr + HEADER_LEN as u64, hdr.len as usize);
            out.push((hdr, payload));
        }
        out
    }

    /// Lets the device serve its host sockets until `f` is satisfied by what arrived.
    fn pump_until<F: Fn(&[(Header, Vec<u8>)]) -> bool>(&mut self, f: F) -> Vec<(Header, Vec<u8>)> {
        let mut got = Vec::new();
        for _ in 0..500 {
            self.d.host_event(self.muxer_fd);
            got.extend(self.recv());
            if f(&got) {
                return got;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let headers: Vec<Header> = got.iter().map(|(h, _)| *h).collect();
        panic!("device never produced the expected packets; got {headers:?}");
    }

    fn hdr(&self, op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 64 << 10,
            fwd_cnt: 0,
        }
    }

    /// A host client connects to guest port `port`; returns it and the host port.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut client = UnixStream::connect(&self.uds).unwrap();
        writeln!(client, "CONNECT {port}").unwrap();
        let got = self.pump_until(|p| p.iter().any(|(h, _)| h.op == op::REQUEST));
        let req = got.iter().find(|(h, _)| h.op == op::REQUEST).unwrap().0;
        assert_eq!(
            (req.src_cid, req.dst_cid, req.dst_port),
            (HOST_CID, CID, port)
        );
        assert!(req.src_port >= 1 << 30);
        let host_port = req.src_port;
        self.send(self.hdr(op::RESPONSE, port, host_port), &[]);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut line = vec![0u8; format!("OK {host_port}\n").len()];
        client.read_exact(&mut line).unwrap();
        assert_eq!(line, format!("OK {host_port}\n").as_bytes());
        (client, host_port)
    }
}

fn payloads(pkts: &[(Header, Vec<u8>)]) -> Vec<u8> {
    pkts.iter()
        .filter(|(h, _)| h.op == op::RW)
        .flat_map(|(_, p)| p.clone())
        .collect()
}

#[test]
fn host_initiated_stream_carries_data_both_ways() {
    let mut g = Guest::new();
    let (mut client, host_port) = g.host_connect(1024);
    client.write_all(b"ping").unwrap();
    let got = g.pump_until(|p| payloads(p) == b"ping");
    assert_eq!(got[0].0.dst_port, 1024);
    g.send(g.hdr(op::RW, 1024, host_port), b"pong");
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}

#[test]
fn bytes_sent_right_after_the_connect_line_reach_the_guest() {
    let mut g = Guest::new();
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 7\nearly").unwrap();
    let got = g.pump_until(|p| p.iter().any(|(h, _)| h.op == op::REQUEST));
    let host_port = got[0].0.src_port;
    g.send(g.hdr(op::RESPONSE, 7, host_port), &[]);
    let got = g.pump_until(|p| !payloads(p).is_empty());
    assert_eq!(payloads(&got), b"early");
}

#[test]
fn guest_initiated_connection_reaches_the_host_listener() {
    let mut g = Guest::new();
    let listener = UnixListener::bind(format!("{}_5000", g.uds.display())).unwrap();
    g.send(g.hdr(op::REQUEST, 40000, 5000), &[]);
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RESPONSE, 5000, 40000)
    );
    let (mut host, _) = listener.accept().unwrap();
    g.send(g.hdr(op::RW, 40000, 5000), b"hello host");
    let mut buf = [0u8; 10];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");
    host.write_all(b"hello guest").unwrap();
    let got = g.pump_until(|p| payloads(p) == b"hello guest");
    assert_eq!(got[0].0.dst_port, 40000);
}

#[test]
fn guest_connection_to_a_port_nobody_listens_on_is_reset() {
    let mut g = Guest::new();
    g.send(g.hdr(op::REQUEST, 40000, 6000), &[]);
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.op, got[0].0.dst_port), (op::RST, 40000));
}

#[test]
fn packets_for_unknown_connections_get_rst_and_foreign_cids_are_dropped() {
    let mut g = Guest::new();
    g.send(g.hdr(op::RW, 1, 2), b"stray");
    let mut spoofed = g.hdr(op::REQUEST, 1, 2);
    spoofed.dst_cid = 7; // not the host: dropped, an RST from CID 2 would match nothing
    g.send(spoofed, &[]);
    let mut dgram = g.hdr(op::REQUEST, 1, 2);
    dgram.type_ = 2; // SEQPACKET: not offered
    g.send(dgram, &[]);
    let got = g.recv();
    assert_eq!(
        got.len(),
        2,
        "RSTs for the stray RW and the SEQPACKET request only"
    );
    assert!(got.iter().all(|(h, _)| h.op == op::RST));
    // An RST for nothing gets no answer (no RST ping-pong).
    g.send(g.hdr(op::RST, 1, 2), &[]);
    assert!(g.recv().is_empty());
}

#[test]
fn a_guest_that_stops_reading_parks_the_connection() {
    let mut g = Guest::new();
    let (client, _) = g.host_connect(1024);
    client.set_nonblocking(true).unwrap();
    // The host writes far more than the guest's 64 KiB of credit.
    let chunk = vec![0x5au8; 64 << 10];
    let mut written = 0;
    while written < 1 << 20 {
        match (&client).write(&chunk) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    let got = g.pump_until(|p| payloads(p).len() == 64 << 10);
    assert!(got.iter().all(|(h, _)| h.op == op::RW));
    // No credit: the muxer's epoll has nothing to report, so the event loop sleeps.
    let mut pfd = libc::pollfd {
        fd: g.muxer_fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    assert_eq!(ready, 0, "muxer still polled with no guest credit");
    g.d.host_event(g.muxer_fd);
    assert!(g.recv().is_empty());
}

#[test]
fn without_rx_buffers_packets_wait_for_the_guest() {
    let mut g = Guest::new();
    let (mut client, host_port) = g.host_connect(1024);
    let mut credit = g.hdr(op::CREDIT_UPDATE, 1024, host_port);
    credit.buf_alloc = 1 << 20;
    g.send(credit, &[]);
    // Use up every posted RX buffer.
    let posted = g.rx_posted.len();
    let chunk = vec![1u8; 4096];
    for _ in 0..posted {
        client.write_all(&chunk).unwrap();
    }
    client.write_all(b"tail").unwrap();
    let got = g.pump_until(|p| p.len() == posted);
    assert_eq!(payloads(&got).len(), posted * 4096);
    g.d.host_event(g.muxer_fd);
    assert!(g.recv().is_empty(), "no buffers, no packets");
    g.post_rx(4);
    let got = g.pump_until(|p| !p.is_empty());
    assert_eq!(payloads(&got), b"tail");
}

#[test]
fn guest_close_resets_and_the_host_reads_eof() {
    let mut g = Guest::new();
    let (mut client, host_port) = g.host_connect(1024);
    g.send(g.hdr(op::RW, 1024, host_port), b"last");
    let mut shut = g.hdr(op::SHUTDOWN, 1024, host_port);
    shut.flags = SHUTDOWN_BOTH;
    g.send(shut, &[]);
    let got = g.recv();
    assert_eq!(got.last().unwrap().0.op, op::RST);
    let mut all = Vec::new();
    client.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"last");
}

#[test]
fn many_connections_are_independent() {
    let mut g = Guest::new();
    let mut clients = Vec::new();
    for port in 0..20u32 {
        let (c, host_port) = g.host_connect(2000 + port);
        clients.push((c, host_port, 2000 + port));
    }
    g.post_rx(32);
    for (c, _, port) in &mut clients {
        c.write_all(format!("to {port}").as_bytes()).unwrap();
    }
    let got = g.pump_until(|p| p.iter().filter(|(h, _)| h.op == op::RW).count() == 20);
    for (h, p) in &got {
        assert_eq!(p, format!("to {}", h.dst_port).as_bytes());
    }
    for (_, host_port, port) in &clients {
        g.send(
            g.hdr(op::RW, *port, *host_port),
            format!("from {port}").as_bytes(),
        );
    }
    for (c, _, port) in &mut clients {
        let want = format!("from {port}");
        let mut buf = vec![0u8; want.len()];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, want.as_bytes());
    }
}

#[test]
fn transport_reset_drops_connections_and_posts_an_event() {
    let mut g = Guest::new();
    let (mut client, _) = g.host_connect(1024);
    let addr = g.d.alloc(8);
    let head = g.d.add_chain(
        EVENT,
        &[Buf {
            addr,
            len: 8,
            write: true,
        }],
    );
    g.event_posted.push_back((head, addr));
    g.d.notify(EVENT);
    assert!(g.d.take_used(EVENT).is_empty(), "no event before a reset");
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live u64 to the device's eventfd, which stays open
    // for the test's duration.
    let n = unsafe { libc::write(g.reset_fd, (&one as *const u64).cast(), 8) };
    assert_eq!(n, 8);
    g.d.host_event(g.reset_fd);
    assert_eq!(g.d.take_used(EVENT), vec![(head, 4)]);
    assert_eq!(g.d.read(addr, 4), EVENT_TRANSPORT_RESET.to_le_bytes());
    let mut buf = [0u8; 1];
    assert_eq!(
        client.read(&mut buf).unwrap(),
        0,
        "host client sees the close"
    );
}

/// A restored VM serves host clients only after the guest has handled the reset (it
/// refills the event buffer and notifies): a client accepted before the guest drops its
/// stale connections would be dropped silently. One that connects early waits.
#[test]
fn a_restored_device_serves_host_clients_once_the_guest_handled_the_reset() {
    let mut g = Guest::with(Vsock::for_restore);
    let mut early = UnixStream::connect(&g.uds).expect("the socket is bound at once");
    writeln!(early, "CONNECT 1024").unwrap();
    let unanswered = |g: &mut Guest| {
        for _ in 0..10 {
            g.d.host_event(g.muxer_fd);
            std::thread::sleep(Duration::from_millis(2));
        }
        g.recv().iter().all(|(h, _)| h.op != op::REQUEST)
    };
    assert!(unanswered(&mut g), "served before the reset");
    let mut heads = Vec::new();
    for _ in 0..3 {
        let addr = g.d.alloc(8);
        let write = true;
        heads.push(g.d.add_chain(
            EVENT,
            &[Buf {
                addr,
                len: 8,
                write,
            }],
        ));
    }
    g.d.notify(EVENT);
    assert!(
        unanswered(&mut g),
        "an early event-queue notification started serving"
    );
    // SAFETY: writes 8 bytes from a live u64 to the device's eventfd, open for the test.
    let n = unsafe { libc::write(g.reset_fd, (&1u64 as *const u64).cast(), 8) };
    assert_eq!(n, 8);
    g.d.host_event(g.reset_fd);
    assert_eq!(g.d.take_used(EVENT), vec![(heads[0], 4)]);
    assert!(
        unanswered(&mut g),
        "served before the guest handled the event"
    );
    // The driver is two buffers ahead of the device: the device asks to hear of the next.
    assert_eq!(g.d.avail_event(EVENT), 3);
    let addr = g.d.alloc(8);
    g.d.add_chain(
        EVENT,
        &[Buf {
            addr,
            len: 8,
            write: true,
        }],
    );
    g.d.notify(EVENT);
    // The early client is served now, and new ones too.
    let got = g.pump_until(|p| p.iter().any(|(h, _)| h.op == op::REQUEST));
    assert_eq!(
        got.iter()
            .find(|(h, _)| h.op == op::REQUEST)
            .unwrap()
            .0
            .dst_port,
        1024
    );
    let (_client, _) = g.host_connect(1025);
}

/// A snapshot keeps an idle host connection: in the restored device a new host client
/// adopts it (`ADOPT`, no REQUEST to the guest) and data flows both ways on the guest's
/// old ports; a connection with data in flight is reset instead; nothing is left to adopt
/// twice.
#[test]
fn a_restored_device_hands_a_kept_connection_to_an_adopting_client() {
    let mut old = Guest::new();
    let (mut idle, idle_port) = old.host_connect(1024);
    idle.write_all(b"before").unwrap();
    old.pump_until(|p| payloads(p) == b"before");
    old.send(old.hdr(op::RW, 1024, idle_port), b"reply");
    let mut buf = [0u8; 5];
    idle.read_exact(&mut buf).unwrap();
    let (busy, busy_port) = old.host_connect(1025);
    // Half closed by the guest: not idle, so not kept.
    let mut shut = old.hdr(op::SHUTDOWN, 1025, busy_port);
    shut.flags = super::packet::SHUTDOWN_SEND;
    old.send(shut, &[]);
    let saved = old.d.transport.save_state().device;

    let mut new = Guest::with(Vsock::for_restore);
    let mut st = new.d.transport.save_state();
    st.device = saved;
    new.d.transport.restore_state(&st).unwrap();
    // SAFETY: writes 8 bytes from a live u64 to the device's eventfd, open for the test.
    let n = unsafe { libc::write(new.reset_fd, (&1u64 as *const u64).cast(), 8) };
    assert_eq!(n, 8);
    new.d.host_event(new.reset_fd);
    assert!(
        new.uds.exists(),
        "no transport reset needed: the socket is published at once"
    );
    let rsts = new.recv();
    assert!(
        rsts.iter()
            .any(|(h, _)| h.op == op::RST && (h.src_port, h.dst_port) == (busy_port, 1025)),
        "the busy connection was not reset: {rsts:?}"
    );
    assert!(!rsts.iter().any(|(h, _)| h.dst_port == 1024), "{rsts:?}");

    let mut client = UnixStream::connect(&new.uds).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"ADOPT 1024\n").unwrap();
    for _ in 0..20 {
        new.d.host_event(new.muxer_fd);
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut line = vec![0u8; format!("OK {idle_port}\n").len()];
    client.read_exact(&mut line).unwrap();
    assert_eq!(line, format!("OK {idle_port}\n").as_bytes());
    assert!(new.recv().iter().all(|(h, _)| h.op != op::REQUEST));
    client.write_all(b"after").unwrap();
    let got = new.pump_until(|p| payloads(p) == b"after");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (idle_port, 1024));
    new.send(new.hdr(op::RW, 1024, idle_port), b"still here");
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");

    // Nothing left to adopt: the second client is closed.
    let mut second = UnixStream::connect(&new.uds).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    second.write_all(b"ADOPT 1024\n").unwrap();
    for _ in 0..20 {
        new.d.host_event(new.muxer_fd);
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut rest = Vec::new();
    assert_eq!(second.read_to_end(&mut rest).unwrap(), 0);
    drop(busy);
}

#[test]
fn a_bad_tx_packet_is_skipped_and_the_next_one_served() {
    let mut g = Guest::new();
    let short = g.d.alloc(10);
    g.d.add_chain(
        TX,
        &[Buf {
            addr: short,
            len: 10,
            write: false,
        }],
    );
    // Announces 100 payload bytes, carries none.
    let mut liar = g.hdr(op::RW, 1, 2);
    liar.len = 100;
    let h = g.d.alloc(HEADER_LEN as u32);
    g.d.write(h, &liar.to_bytes());
    g.d.add_chain(
        TX,
        &[Buf {
            addr: h,
            len: HEADER_LEN as u32,
            write: false,
        }],
    );
    g.d.notify(TX);
    assert_eq!(g.d.take_used(TX).len(), 2);
    g.send(g.hdr(op::REQUEST, 40000, 6000), &[]);
    assert_eq!(g.recv()[0].0.op, op::RST);
}

#[test]
fn listening_socket_path_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    // A stale socket (nobody listening) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    let live = Vsock::new(CID, &path).unwrap();
    // A live one is refused, as is a regular file.
    assert!(matches!(
        Vsock::new(CID, &path),
        Err(VsockError::Muxer(MuxerError::InUse(_)))
    ));
    drop(live);
    assert!(!path.exists(), "socket removed when the device goes away");
    std::fs::write(&path, b"x").unwrap();
    assert!(matches!(
        Vsock::new(CID, &path),
        Err(VsockError::Muxer(MuxerError::NotASocket(_)))
    ));
    assert!(matches!(
        Vsock::new(2, &dir.path().join("other")),
        Err(VsockError::BadCid(2))
    ));
}

#[test]
fn config_space_holds_the_cid() {
    let g = Guest::new();
    let mut cfg = [0u8; 8];
    let mut t = g.d.transport;
    crate::devices::bus::BusDevice::read(
        &mut t,
        crate::devices::virtio::mmio::reg::CONFIG,
        &mut cfg,
    );
    assert_eq!(u64::from_le_bytes(cfg), CID);
    let _ = g.muxer_fd.as_raw_fd();
}

#[test]
fn a_partial_connect_line_does_not_keep_the_muxer_ready() {
    let mut g = Guest::new();
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 12").unwrap();
    g.d.host_event(g.muxer_fd); // accept
    g.d.host_event(g.muxer_fd); // peek: incomplete
    let mut pfd = libc::pollfd {
        fd: g.muxer_fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    assert_eq!(
        ready, 0,
        "an incomplete line must not leave the muxer readable"
    );
    // The rest of the line arrives: the request goes out.
    client.write_all(b"34\n").unwrap();
    let got = g.pump_until(|p| p.iter().any(|(h, _)| h.op == op::REQUEST));
    assert_eq!(got[0].0.dst_port, 1234);
}

#[test]
fn a_client_that_hangs_up_mid_line_is_dropped() {
    let mut g = Guest::new();
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 12").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    for _ in 0..3 {
        g.d.host_event(g.muxer_fd);
    }
    let mut b = [0u8; 1];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Closed with the partial line unread: EOF or a reset, never a timeout.
    match client.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the VMM kept the client: {other:?}"),
    }
}

#[test]
fn a_guest_that_ignores_its_credit_is_reset_and_buffers_stay_bounded() {
    let mut g = Guest::new();
    let (client, host_port) = g.host_connect(1024);
    // The host client never reads. What the socket does not take waits in the VMM, up to
    // the BUF_ALLOC the device advertised; a guest that sends on regardless is reset
    // instead of growing the VMM's buffer.
    let chunk = vec![9u8; 32 << 10];
    let hdr = g.hdr(op::RW, 1024, host_port);
    let mut sent = 0usize;
    let mut reset = false;
    for _ in 0..80 {
        g.send(hdr, &chunk);
        sent += chunk.len();
        g.d.host_event(g.muxer_fd);
        if g.recv().iter().any(|(h, _)| h.op == op::RST) {
            reset = true;
            break;
        }
    }
    assert!(
        reset,
        "{sent} bytes sent on {} of credit, never reset",
        connection::BUF_ALLOC
    );
    drop(client);
}

#[test]
fn hostile_credit_values_from_the_guest_never_overflow() {
    let mut g = Guest::new();
    let (mut client, host_port) = g.host_connect(1024);
    for (buf_alloc, fwd_cnt) in [
        (u32::MAX, u32::MAX),
        (u32::MAX, 0),
        (0, u32::MAX),
        (1, u32::MAX - 10),
        (u32::MAX, 1 << 31),
    ] {
        let mut credit = g.hdr(op::CREDIT_UPDATE, 1024, host_port);
        credit.buf_alloc = buf_alloc;
        credit.fwd_cnt = fwd_cnt;
        g.send(credit, &[]);
        g.d.host_event(g.muxer_fd);
        let _ = g.recv();
    }
    // Whatever the guest claimed, data flows only into buffers the guest posted, and an
    // honest update restores the stream.
    let mut credit = g.hdr(op::CREDIT_UPDATE, 1024, host_port);
    credit.fwd_cnt = 0;
    g.send(credit, &[]);
    client.write_all(b"still here").unwrap();
    let got = g.pump_until(|p| payloads(p).ends_with(b"still here"));
    assert!(payloads(&got).len() <= g.rx_posted.len() * 4096 + 4096 * 32);
}
