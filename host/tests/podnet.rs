//! A pod's network namespace as CNI leaves it (a veth `eth0` with an address and a default
//! route), joined to a tap and released again. No VM: what the VMM and the guest get is
//! checked as data, the redirects in the namespace with `tc`. Needs root.

use std::path::PathBuf;
use std::process::Command;

use hull_host::podnet::{PodNetError, PodNetwork, MAX_ROUTES};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("run ip netns exec");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pinned network namespace, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn cni_interfaces_are_joined_to_taps_and_released() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let ns = Netns(format!("hull-podnet-{}", std::process::id()));
    let peer = Netns(format!("hull-podnet-peer-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["netns", "add", &peer.0]);
    // What the bridge plugin leaves: eth0 in the pod's namespace, its peer elsewhere.
    ip(&[
        "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "vpeer", "netns",
        &peer.0,
    ]);
    ip(&[
        "-n",
        &ns.0,
        "link",
        "set",
        "eth0",
        "address",
        "0a:58:0a:63:00:02",
        "mtu",
        "1400",
        "up",
    ]);
    ip(&["-n", &ns.0, "addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    ip(&[
        "-n",
        &ns.0,
        "route",
        "add",
        "default",
        "via",
        "10.99.0.1",
        "dev",
        "eth0",
    ]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);

    let path = PathBuf::from("/run/netns").join(&ns.0);
    let net = PodNetwork::connect(&path).unwrap();
    let ifaces = net.interfaces();
    assert_eq!(ifaces.len(), 1, "{ifaces:?}");
    let eth0 = &ifaces[0];
    assert_eq!(
        (eth0.name.as_str(), eth0.mac.as_str(), eth0.mtu),
        ("eth0", "0a:58:0a:63:00:02", 1400)
    );
    assert_eq!(eth0.addresses, ["10.99.0.2/24"]);
    let default = net
        .routes
        .iter()
        .find(|r| r.destination == "default")
        .unwrap_or_else(|| panic!("no default route in {:?}", net.routes));
    assert_eq!(
        (default.gateway.as_str(), default.device.as_str()),
        ("10.99.0.1", "eth0")
    );
    assert_eq!(net.taps().len(), 1);
    let links = in_ns(&ns.0, &["ip", "-o", "link", "show", "tap0_hull"]);
    assert!(
        links.contains("UP") && links.contains("mtu 1400"),
        "{links}"
    );
    for dev in ["eth0", "tap0_hull"] {
        let filters = in_ns(&ns.0, &["tc", "filter", "show", "dev", dev, "ingress"]);
        assert!(filters.contains("Egress Redirect"), "{dev}: {filters}");
    }
    // A second connect while the first holds the taps is refused, not doubled.
    assert!(PodNetwork::connect(&path).is_err());

    net.disconnect();
    let filters = in_ns(&ns.0, &["tc", "filter", "show", "dev", "eth0", "ingress"]);
    assert!(filters.trim().is_empty(), "{filters}");
    let links = in_ns(&ns.0, &["ip", "-o", "link"]);
    assert!(!links.contains("tap0_hull"), "{links}");
    drop(peer);
}

#[test]
fn a_namespace_with_loopback_only_gives_no_interfaces() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let ns = Netns(format!("hull-podnet-lo-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    let net = PodNetwork::connect(&PathBuf::from("/run/netns").join(&ns.0)).unwrap();
    assert!(net.joined.is_empty() && net.routes.is_empty(), "{net:?}");
    net.disconnect();
    assert!(PodNetwork::connect(std::path::Path::new("/run/netns/hull-no-such-ns")).is_err());
}

/// Whether anything hull adds to a namespace is in the calling thread's: a tap, or a
/// redirect on `dev`.
fn joined_here(dev: &str) -> bool {
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let filters = Command::new("tc")
        .args(["filter", "show", "dev", dev, "ingress"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&links.stdout).contains("_hull")
        || !String::from_utf8_lossy(&filters.stdout).trim().is_empty()
}

#[test]
fn the_namespace_hull_runs_in_is_refused_and_left_alone() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    // A spec naming hull's own namespace (`/proc/1/ns/net` on a node) would have every
    // node interface redirected into the VM. The "node" here is a namespace of the test's.
    hull_net::netns::run_in_new(|| {
        ip(&[
            "link", "add", "nodeif", "type", "veth", "peer", "name", "nodepeer",
        ]);
        ip(&["link", "set", "nodeif", "up"]);
        let e = PodNetwork::connect(std::path::Path::new("/proc/thread-self/ns/net")).unwrap_err();
        assert!(matches!(e, PodNetError::OwnNamespace { .. }), "{e}");
        assert!(e.to_string().contains("node's interfaces"), "{e}");
        assert!(!joined_here("nodeif"), "nothing may be changed");
    })
    .unwrap();
}

#[test]
fn a_namespace_with_too_many_routes_is_refused_before_anything_changes() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let ns = Netns(format!("hull-podnet-routes-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&[
        "-n", &ns.0, "link", "add", "eth0", "type", "veth", "peer", "name", "vpeer",
    ]);
    ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
    ip(&["-n", &ns.0, "addr", "add", "10.98.0.2/16", "dev", "eth0"]);
    for i in 0..=MAX_ROUTES {
        let dst = format!("10.{}.{}.0/24", 100 + i / 200, i % 200);
        ip(&[
            "-n",
            &ns.0,
            "route",
            "add",
            &dst,
            "via",
            "10.98.0.1",
            "dev",
            "eth0",
        ]);
    }
    let e = PodNetwork::connect(&PathBuf::from("/run/netns").join(&ns.0)).unwrap_err();
    assert!(matches!(e, PodNetError::TooManyRoutes { .. }), "{e}");
    let links = in_ns(&ns.0, &["ip", "-o", "link"]);
    let filters = in_ns(&ns.0, &["tc", "filter", "show", "dev", "eth0", "ingress"]);
    assert!(
        !links.contains("_hull") && filters.trim().is_empty(),
        "nothing may be changed: {links}{filters}"
    );
}
