//! tc redirects joining a tap to a veth, as a pod's VM is joined to its CNI interface:
//! frames written into the tap come out of the veth's peer and the other way round, and
//! stop once the redirects are removed. Runs in a network namespace the test creates;
//! needs root.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use hull_net::netlink::Netlink;
use hull_net::{netns, tap, tc};

/// An EtherType for local experiments (IEEE 802), so no frame the kernel sends on its own
/// (IPv6 neighbour discovery, MLD) is mistaken for the test's.
const ETHERTYPE: u16 = 0x88b5;
/// The tap's default `virtio_net_hdr` length (TUNSETVNETHDRSZ not called).
const VNET_HDR: usize = 10;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn index(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name for the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}");
    i
}

/// A raw socket on interface `name` seeing every frame.
fn packet_socket(name: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2); the result is checked and owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto.into(),
        )
    };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields we need are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index(name) as i32;
    // SAFETY: bind(2) with a sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
    sock
}

fn frame(marker: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6]; // broadcast destination
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(marker);
    f.resize(64, 0);
    f
}

fn write_all(fd: &OwnedFd, bytes: &[u8]) {
    // SAFETY: write(2) of a live buffer to a descriptor we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(
        n,
        bytes.len() as isize,
        "write: {}",
        std::io::Error::last_os_error()
    );
}

/// Whether a frame holding `marker` arrives on `fd` (after `skip` header bytes) within
/// `within`.
fn arrives(fd: &OwnedFd, skip: usize, marker: &[u8], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) of one pollfd we own.
        if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
            continue;
        }
        // SAFETY: read(2) into a live buffer of the length given.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > skip as isize {
            let f = &buf[skip..n as usize];
            if f.len() >= 14 + marker.len()
                && f[12..14] == ETHERTYPE.to_be_bytes()
                && &f[14..14 + marker.len()] == marker
            {
                return true;
            }
        }
    }
    false
}

#[test]
fn a_tap_and_a_veth_joined_by_redirects_pass_frames_both_ways() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: creating network namespaces and taps needs root");
        return;
    }
    netns::run_in_new(|| {
        ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
        let tap = tap::create("tp0").unwrap();
        for dev in ["va", "vb", "tp0"] {
            ip(&["link", "set", dev, "up"]);
        }
        let (va, tp0) = (index("va"), index("tp0"));
        let mut nl = Netlink::open().unwrap();
        tc::redirect_ingress(&mut nl, va, tp0).unwrap();
        tc::redirect_ingress(&mut nl, tp0, va).unwrap();
        let peer = packet_socket("vb");

        // The guest sends: into the tap, out of the veth, seen by its peer.
        let mut out = vec![0u8; VNET_HDR];
        out.extend(frame(b"from-the-guest"));
        write_all(&tap, &out);
        assert!(arrives(&peer, 0, b"from-the-guest", Duration::from_secs(5)));
        // The pod's network sends: into the veth, out of the tap, read by the VMM.
        write_all(&peer, &frame(b"to-the-guest"));
        assert!(arrives(
            &tap,
            VNET_HDR,
            b"to-the-guest",
            Duration::from_secs(5)
        ));

        // A second redirect on the same interface is refused, not stacked.
        assert!(tc::redirect_ingress(&mut nl, va, tp0).is_err());

        tc::remove_ingress(&mut nl, va).unwrap();
        tc::remove_ingress(&mut nl, tp0).unwrap();
        write_all(&tap, &out);
        assert!(
            !arrives(&peer, 0, b"from-the-guest", Duration::from_secs(1)),
            "frames still pass once the redirects are gone"
        );
    })
    .unwrap();
}
