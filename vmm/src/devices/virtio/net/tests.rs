//! virtio-net through the MMIO transport: queue handling against a frame-preserving
//! socket pair, and a real tap in a network namespace of the test's own.

use std::os::fd::{AsRawFd, RawFd};
use std::process::Command;

use super::seqpacket::SeqPacket;
use super::*;
use crate::devices::virtio::test_driver::{Buf, TestDriver};
use crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX;

fn seqpacket_pair() -> (SeqPacket, SeqPacket) {
    SeqPacket::pair().unwrap()
}

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn setup(features: u64) -> (TestDriver, SeqPacket, RawFd) {
    let (dev_end, host_end) = seqpacket_pair();
    let fd = dev_end.as_raw_fd();
    let net = Net::new(dev_end, Some(MAC), true);
    let d = TestDriver::with_features(Box::new(net), features);
    (d, host_end, fd)
}

fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![fill; len];
    f[..VNET_HDR_LEN].fill(0);
    f
}

fn post_rx(d: &mut TestDriver, len: u32) -> (u16, u64) {
    let addr = d.alloc(len);
    let head = d.add_chain(
        RX,
        &[Buf {
            addr,
            len,
            write: true,
        }],
    );
    d.notify(RX);
    (head, addr)
}

#[test]
fn tx_frames_reach_the_backend_whole() {
    let (mut d, host, _) = setup(VIRTIO_F_VERSION_1 | features::MRG_RXBUF);
    let f = frame(1000, 0x11);
    // Header and frame in separate descriptors, as Linux sends them.
    let (h, p) = (d.alloc(12), d.alloc(988));
    d.write(h, &f[..12]);
    d.write(p, &f[12..]);
    d.add_chain(
        TX,
        &[
            Buf {
                addr: h,
                len: 12,
                write: false,
            },
            Buf {
                addr: p,
                len: 988,
                write: false,
            },
        ],
    );
    d.notify(TX);
    assert_eq!(d.take_used(TX).len(), 1);
    let mut got = vec![0u8; 2000];
    assert_eq!(host.recv_frame(&mut got).unwrap(), 1000);
    assert_eq!(&got[..1000], &f[..]);
}

#[test]
fn rx_frame_fills_one_buffer_with_num_buffers_one() {
    let (mut d, host, fd) = setup(VIRTIO_F_VERSION_1);
    let (head, addr) = post_rx(&mut d, 2048);
    host.send_frame(&frame(600, 0x22)).unwrap();
    d.host_event(fd);
    assert_eq!(d.take_used(RX), vec![(head, 600)]);
    let got = d.read(addr, 600);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert!(got[12..].iter().all(|b| *b == 0x22));
}

#[test]
fn large_frame_spreads_over_merged_buffers() {
    let (mut d, host, fd) = setup(VIRTIO_F_VERSION_1 | features::MRG_RXBUF);
    let bufs: Vec<_> = (0..4).map(|_| post_rx(&mut d, 4096)).collect();
    let mut f = frame(10_000, 0);
    for (i, b) in f.iter_mut().enumerate().skip(12) {
        *b = (i % 253) as u8;
    }
    host.send_frame(&f).unwrap();
    d.host_event(fd);
    let used = d.take_used(RX);
    assert_eq!(
        used,
        vec![
            (bufs[0].0, 4096),
            (bufs[1].0, 4096),
            (bufs[2].0, 10_000 - 8192)
        ]
    );
    let mut back = d.read(bufs[0].1, 4096);
    back.extend(d.read(bufs[1].1, 4096));
    back.extend(d.read(bufs[2].1, 10_000 - 8192));
    assert_eq!(u16::from_le_bytes([back[10], back[11]]), 3, "num_buffers");
    assert_eq!(&back[12..], &f[12..]);
}

#[test]
fn without_rx_buffers_the_frame_waits_and_order_is_kept() {
    let (mut d, host, fd) = setup(VIRTIO_F_VERSION_1 | features::MRG_RXBUF);
    host.send_frame(&frame(100, 1)).unwrap();
    host.send_frame(&frame(100, 2)).unwrap();
    d.host_event(fd);
    assert!(d.take_used(RX).is_empty());
    let (_, a1) = post_rx(&mut d, 2048);
    let (_, a2) = post_rx(&mut d, 2048);
    let used = d.take_used(RX);
    assert_eq!(used.len(), 2);
    assert_eq!(d.read(a1 + 12, 1), [1]);
    assert_eq!(d.read(a2 + 12, 1), [2]);
}

#[test]
fn a_frame_too_big_for_an_unmerged_buffer_is_dropped_alone() {
    let (mut d, host, fd) = setup(VIRTIO_F_VERSION_1);
    host.send_frame(&frame(3000, 1)).unwrap();
    host.send_frame(&frame(100, 2)).unwrap();
    let (head, addr) = post_rx(&mut d, 2048);
    d.host_event(fd);
    assert_eq!(d.take_used(RX), vec![(head, 100)]);
    assert_eq!(d.read(addr + 12, 1), [2]);
}

#[test]
fn bad_tx_chains_are_skipped() {
    let (mut d, host, _) = setup(VIRTIO_F_VERSION_1);
    let h = d.alloc(12);
    // Header only, no frame; then a chain past RAM; then a good one.
    d.add_chain(
        TX,
        &[Buf {
            addr: h,
            len: 12,
            write: false,
        }],
    );
    d.add_chain(
        TX,
        &[Buf {
            addr: u64::MAX - 10,
            len: 100,
            write: false,
        }],
    );
    let good = frame(64, 7);
    let g = d.alloc(64);
    d.write(g, &good);
    d.add_chain(
        TX,
        &[Buf {
            addr: g,
            len: 64,
            write: false,
        }],
    );
    d.notify(TX);
    assert_eq!(d.take_used(TX).len(), 3);
    let mut got = [0u8; 128];
    assert_eq!(host.recv_frame(&mut got).unwrap(), 64);
    assert!(
        host.recv_frame(&mut got).is_err(),
        "only the good frame went out"
    );
}

#[test]
fn offloads_and_mac_are_offered_and_config_holds_the_mac() {
    let (mut d, _host, _) = setup(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    let mut mac = [0u8; 6];
    crate::devices::bus::BusDevice::read(
        &mut d.transport,
        crate::devices::virtio::mmio::reg::CONFIG,
        &mut mac,
    );
    assert_eq!(mac, MAC);
    let (dev_end, _h) = seqpacket_pair();
    let plain = Net::new(dev_end, None, false);
    let f = plain.avail_features();
    assert_eq!(
        f & (features::CSUM | features::HOST_TSO4 | features::MAC),
        0
    );
}

/// Runs `ip` with `args` in the current (test-private) network namespace.
fn ip(args: &str) {
    let ok = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip {args} failed");
}

/// Moves this thread into a new network namespace; false when not permitted.
fn private_netns() -> bool {
    // SAFETY: unshare takes flags only; it affects the calling thread.
    let ok = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0;
    if !ok {
        eprintln!("skipped: cannot create a network namespace (needs root)");
    }
    ok
}

fn ipv4_udp_frame(
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(payload);
    f
}

#[test]
fn real_tap_in_a_private_namespace_carries_udp_both_ways() {
    if !private_netns() {
        return;
    }
    let tap = Tap::open("hulltest0").unwrap();
    assert!(
        tap.supports_offload(),
        "a Linux tap accepts csum/TSO offload"
    );
    ip("link set hulltest0 up");
    ip("addr add 10.0.0.1/24 dev hulltest0");
    ip("neigh add 10.0.0.2 lladdr 02:00:00:00:00:02 dev hulltest0");
    // sysfs shows the namespace it was mounted in; ask iproute2 in ours.
    let out = Command::new("ip")
        .args(["-br", "link", "show", "hulltest0"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let host_mac: Vec<u8> = text
        .split_whitespace()
        .nth(2)
        .unwrap()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let sock = std::net::UdpSocket::bind("10.0.0.1:9000").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();

    let fd = tap.as_raw_fd();
    let net = Net::new(tap, Some(MAC), true);
    let mut d = TestDriver::with_features(
        Box::new(net),
        VIRTIO_F_VERSION_1 | features::MRG_RXBUF | features::CSUM,
    );
    // Guest -> host: a UDP datagram to the host's socket.
    let f = ipv4_udp_frame(
        host_mac.try_into().unwrap(),
        [10, 0, 0, 2],
        [10, 0, 0, 1],
        9000,
        b"hello from the guest side",
    );
    let a = d.alloc(f.len() as u32);
    d.write(a, &f);
    d.add_chain(
        TX,
        &[Buf {
            addr: a,
            len: f.len() as u32,
            write: false,
        }],
    );
    d.notify(TX);
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello from the guest side");
    assert_eq!(from.to_string(), "10.0.0.2:40000");

    // Host -> guest: the reply arrives in an RX buffer (among whatever else the host's
    // stack sends on a fresh interface, such as IPv6 neighbour discovery).
    let mut bufs: Vec<_> = (0..16).map(|_| post_rx(&mut d, 2048)).collect();
    sock.send_to(b"hello guest", "10.0.0.2:40000").unwrap();
    let mut found = false;
    for _ in 0..200 {
        d.host_event(fd);
        for (head, len) in d.take_used(RX) {
            let i = bufs.iter().position(|b| b.0 == head).unwrap();
            let (_, addr) = bufs.remove(i);
            found |= d
                .read(addr, len as usize)
                .windows(11)
                .any(|w| w == b"hello guest");
            bufs.push(post_rx(&mut d, 2048));
        }
        if found {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(found, "the reply never reached the RX queue");
}

#[test]
fn a_frame_larger_than_the_whole_ring_is_dropped_not_waited_for() {
    let (mut d, host, fd) = setup(VIRTIO_F_VERSION_1 | features::MRG_RXBUF);
    // 64 buffers of 64 bytes: 4 KiB of ring for a 10 KB frame.
    for _ in 0..crate::devices::virtio::test_driver::QUEUE_SIZE {
        let addr = d.alloc(64);
        d.add_chain(
            RX,
            &[Buf {
                addr,
                len: 64,
                write: true,
            }],
        );
    }
    host.send_frame(&frame(10_000, 1)).unwrap();
    host.send_frame(&frame(40, 2)).unwrap();
    d.host_event(fd);
    let used = d.take_used(RX);
    assert_eq!(
        used.len(),
        1,
        "the small frame after the impossible one: {used:?}"
    );
    assert_eq!(used[0].1, 40);
}

#[test]
fn a_bad_chain_inside_a_merged_frame_keeps_the_ring_consistent() {
    let (mut d, host, fd) = setup(VIRTIO_F_VERSION_1 | features::MRG_RXBUF);
    let a = d.alloc(1536);
    let ha = d.add_chain(
        RX,
        &[Buf {
            addr: a,
            len: 1536,
            write: true,
        }],
    );
    let b = d.alloc(1536);
    let hb = d.add_chain(
        RX,
        &[Buf {
            addr: b,
            len: 1536,
            write: false,
        }],
    ); // not writable
    d.notify(RX);
    host.send_frame(&frame(3000, 9)).unwrap();
    d.host_event(fd);
    assert!(
        d.take_used(RX).is_empty(),
        "no buffer returned while the frame waits"
    );
    let c = d.alloc(4096);
    let hc = d.add_chain(
        RX,
        &[Buf {
            addr: c,
            len: 4096,
            write: true,
        }],
    );
    d.notify(RX);
    let used = d.take_used(RX);
    assert_eq!(used, vec![(hb, 0), (ha, 1536), (hc, 3000 - 1536)]);
    let hdr = d.read(a, 12);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 2, "num_buffers");
}
