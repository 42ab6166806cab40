//! A pod's network, handed to its VM. CNI made the pod's interfaces (usually one veth,
//! `eth0`) in the pod's network namespace on the node; for each, hull creates a tap in that
//! namespace and joins the two with tc redirects both ways (Kata's "tcfilter" model). The
//! VMM gets the tap's descriptor; the guest's interface takes the CNI interface's MAC,
//! addresses, MTU and routes, so the pod's IP is the guest's and the node's routing,
//! bridge and port mappings work unchanged.
//!
//! What is read from the namespace (names, addresses, routes) came from CNI plugins and is
//! bounded before it reaches the guest: at most [`MAX_INTERFACES`] interfaces and
//! [`MAX_ROUTES`] routes, as the agent's ConfigureNetwork also enforces.

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use hull_net::netlink::Netlink;
use hull_net::{netns, tap, tc};
use hull_protocol::rpc::agent::{Interface, Route};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// Most interfaces of a pod the VM is given (each is a tap and a virtio-net device).
pub const MAX_INTERFACES: usize = 4;
/// Most routes passed to the guest.
pub const MAX_ROUTES: usize = 64;
/// Most addresses of one interface (the agent's ConfigureNetwork takes no more).
pub const MAX_ADDRESSES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("the pod's network namespace {netns}: {what}")]
    Netlink {
        netns: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the pod's network namespace {netns}: {source}")]
    Tap {
        netns: String,
        #[source]
        source: tap::TapError,
    },
    #[error("the pod's network namespace {netns} has {count} interfaces; a hull pod takes at most {MAX_INTERFACES}")]
    TooManyInterfaces { netns: String, count: usize },
    #[error("the pod's network namespace {netns}: {interface} has more than {MAX_ADDRESSES} addresses; a hull pod takes at most {MAX_ADDRESSES}")]
    TooManyAddresses { netns: String, interface: String },
    #[error("the pod's network namespace {netns} has more than {MAX_ROUTES} routes through its interfaces; a hull pod takes at most {MAX_ROUTES}")]
    TooManyRoutes { netns: String },
    #[error("{netns} is the network namespace hull itself runs in (the node's), not a pod's: joining it would take over the node's interfaces; give the task a network namespace of its own")]
    OwnNamespace { netns: String },
    #[error("reading {path}")]
    Stat {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The identity of a namespace file: (device, inode).
fn namespace_id(path: &Path) -> Result<(u64, u64), PodNetError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|source| PodNetError::Stat {
        path: path.display().to_string(),
        source,
    })?;
    Ok((m.dev(), m.ino()))
}

/// One CNI interface joined to a tap.
#[derive(Debug)]
pub struct Joined {
    /// The CNI interface, as the guest will configure its own.
    pub interface: Interface,
    /// The tap's queue, for the VMM.
    pub tap: OwnedFd,
    index: u32,
}

/// The pod's interfaces joined to taps, and the routes the guest gets.
#[derive(Debug)]
pub struct PodNetwork {
    pub netns: PathBuf,
    pub joined: Vec<Joined>,
    pub routes: Vec<Route>,
}

/// The tap hull makes for the pod's interface `index` (`tap0_hull`, ...).
fn tap_name(index: usize) -> String {
    format!("tap{index}_hull")
}

impl PodNetwork {
    /// Joins every Ethernet interface in the network namespace at `netns` to a new tap.
    /// A namespace with loopback only (a CNI that gave the pod no interface) gives an
    /// empty network. On failure nothing is left joined.
    /// The namespace hull itself runs in is refused: a spec naming it (`/proc/1/ns/net`,
    /// `--with-ns network:...`) would otherwise have every node interface redirected
    /// into a VM.
    pub fn connect(netns: &Path) -> Result<PodNetwork, PodNetError> {
        let ns = netns.display().to_string();
        if namespace_id(netns)? == namespace_id(Path::new("/proc/thread-self/ns/net"))? {
            return Err(PodNetError::OwnNamespace { netns: ns });
        }
        let path = netns.to_path_buf();
        let (joined, routes) = netns::run_in(netns, move || join_all(&ns))??;
        Ok(PodNetwork {
            netns: path,
            joined,
            routes,
        })
    }

    /// The tap descriptors, in interface order (the VM's `net0`, `net1`, ...).
    pub fn taps(&self) -> Vec<&OwnedFd> {
        self.joined.iter().map(|j| &j.tap).collect()
    }

    pub fn interfaces(&self) -> Vec<Interface> {
        self.joined.iter().map(|j| j.interface.clone()).collect()
    }

    /// The backends of the VM's network devices: each tap with its interface's MAC.
    pub fn nics(&self) -> Vec<crate::vmm_process::Nic<'_>> {
        self.joined
            .iter()
            .map(|j| crate::vmm_process::Nic {
                tap: j.tap.as_fd(),
                mac: Some(&j.interface.mac),
            })
            .collect()
    }

    /// The interfaces and routes as the guest configures them: the VM's network device
    /// `i` is the guest's `eth<i>` whatever CNI called the interface it stands for.
    pub fn for_guest(&self) -> (Vec<Interface>, Vec<Route>) {
        let guest_name = |cni: &str| {
            self.joined
                .iter()
                .position(|j| j.interface.name == cni)
                .map(|i| format!("eth{i}"))
        };
        let interfaces = self
            .joined
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let mut iface = j.interface.clone();
                iface.name = format!("eth{i}");
                iface
            })
            .collect();
        let routes = self
            .routes
            .iter()
            .filter_map(|r| {
                let mut r = r.clone();
                r.device = guest_name(&r.device)?;
                Some(r)
            })
            .collect();
        (interfaces, routes)
    }

    /// Removes the redirects from the pod's interfaces. The taps go when the last
    /// descriptor to them closes (this one and the VMM's). A namespace that is gone already
    /// took everything with it.
    pub fn disconnect(self) {
        let indexes: Vec<u32> = self.joined.iter().map(|j| j.index).collect();
        drop(self.joined);
        if indexes.is_empty() || !self.netns.exists() {
            return;
        }
        let ns = self.netns.display().to_string();
        let done = netns::run_in(&self.netns, move || {
            let mut nl = Netlink::open()?;
            for i in indexes {
                // A veth deleted under us (CNI DEL ran first) is fine.
                match tc::remove_ingress(&mut nl, i) {
                    Err(e) if e.raw_os_error() != Some(libc::ENODEV) => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        });
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("{ns}: removing the pod's tc redirects: {e}"),
            Err(e) => log::warn!("{ns}: {e}"),
        }
    }
}

/// In the pod's namespace: every Ethernet interface joined to a tap, and the routes.
fn join_all(ns: &str) -> Result<(Vec<Joined>, Vec<Route>), PodNetError> {
    let nl_err = |what: &str| netlink_err(ns, what.to_string());
    let mut nl = Netlink::open().map_err(nl_err("opening an rtnetlink socket"))?;
    let mut links: Vec<LinkMessage> = nl
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(nl_err("listing interfaces"))?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .filter(|l| l.header.link_layer_type == LinkLayerType::Ether)
        .filter(|l| !name_of(l).ends_with("_hull"))
        .collect();
    // In CNI's order (eth0, eth1, ...), not the interfaces' index order: containerd
    // attaches a pod's networks concurrently, so eth1 can be made first. The guest's
    // eth<i> is the VM's device i, so the pod's eth0 (its IP) stays the guest's eth0.
    links.sort_by_key(|l| {
        let name = name_of(l);
        (name.len(), name)
    });
    if links.len() > MAX_INTERFACES {
        return Err(PodNetError::TooManyInterfaces {
            netns: ns.to_string(),
            count: links.len(),
        });
    }
    let addresses: Vec<AddressMessage> = nl
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(nl_err("listing addresses"))?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => Some(a),
            _ => None,
        })
        .collect();
    // Everything that can be refused is read before anything is changed.
    for l in &links {
        if addresses
            .iter()
            .filter(|a| a.header.index == l.header.index)
            .count()
            > MAX_ADDRESSES
        {
            return Err(PodNetError::TooManyAddresses {
                netns: ns.to_string(),
                interface: name_of(l),
            });
        }
    }
    let names: Vec<(u32, String)> = links.iter().map(|l| (l.header.index, name_of(l))).collect();
    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let dump = nl
            .dump(RouteNetlinkMessage::GetRoute(req))
            .map_err(nl_err("listing routes"))?;
        for m in dump {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                if let Some(route) = route_for_guest(&r, &names) {
                    if routes.len() == MAX_ROUTES {
                        return Err(PodNetError::TooManyRoutes {
                            netns: ns.to_string(),
                        });
                    }
                    routes.push(route);
                }
            }
        }
    }
    let mut joined: Vec<Joined> = Vec::new();
    for (i, link) in links.iter().enumerate() {
        match join(&mut nl, ns, i, link, &addresses) {
            Ok(j) => joined.push(j),
            Err(e) => {
                for j in &joined {
                    let _ = tc::remove_ingress(&mut nl, j.index);
                }
                return Err(e);
            }
        }
    }
    Ok((joined, routes))
}

/// An rtnetlink failure in namespace `ns` while doing `what`.
fn netlink_err(ns: &str, what: String) -> impl FnOnce(std::io::Error) -> PodNetError {
    let netns = ns.to_string();
    move |source| PodNetError::Netlink {
        netns,
        what,
        source,
    }
}

fn name_of(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Interface `link` joined to tap number `i`; the interface described for the guest.
fn join(
    nl: &mut Netlink,
    ns: &str,
    i: usize,
    link: &LinkMessage,
    addresses: &[AddressMessage],
) -> Result<Joined, PodNetError> {
    let name = name_of(link);
    let index = link.header.index;
    let mut mac = String::new();
    let mut mtu = 0;
    for a in &link.attributes {
        match a {
            LinkAttribute::Address(b) if b.len() == 6 => {
                mac = b
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            }
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    let addrs = addresses
        .iter()
        .filter(|a| a.header.index == index)
        .filter_map(|a| {
            a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) if !is_link_local(ip) => {
                    Some(format!("{ip}/{}", a.header.prefix_len))
                }
                _ => None,
            })
        })
        .collect();
    let tap_name = tap_name(i);
    let tap = tap::create(&tap_name).map_err(|source| PodNetError::Tap {
        netns: ns.to_string(),
        source,
    })?;
    let failed = |what: String| netlink_err(ns, what);
    let tap_index = index_of(nl, &tap_name).map_err(failed(format!("finding {tap_name}")))?;
    let mut up = LinkMessage::default();
    up.header.index = tap_index;
    up.header.flags |= LinkFlags::Up;
    up.header.change_mask |= LinkFlags::Up;
    if mtu != 0 {
        up.attributes.push(LinkAttribute::Mtu(mtu));
    }
    nl.request(RouteNetlinkMessage::SetLink(up), 0)
        .map_err(failed(format!("bringing {tap_name} up")))?;
    tc::redirect_ingress(nl, index, tap_index)
        .map_err(failed(format!("redirecting {name} to {tap_name}")))?;
    if let Err(e) = tc::redirect_ingress(nl, tap_index, index) {
        let _ = tc::remove_ingress(nl, index);
        return Err(failed(format!("redirecting {tap_name} to {name}"))(e));
    }
    let mut interface = Interface::new();
    interface.name = name;
    interface.mac = mac;
    interface.addresses = addrs;
    interface.mtu = mtu;
    Ok(Joined {
        interface,
        tap,
        index,
    })
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn index_of(nl: &mut Netlink, name: &str) -> std::io::Result<u32> {
    nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) if name_of(&l) == name => Some(l.header.index),
            _ => None,
        })
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENODEV))
}

/// A route of the main table through one of the pod's interfaces, for the guest; the
/// kernel's own (local, broadcast, link-local multicast, prefix routes it adds with an
/// address) are left to the guest's kernel.
fn route_for_guest(r: &RouteMessage, names: &[(u32, String)]) -> Option<Route> {
    use netlink_packet_route::route::{RouteProtocol, RouteType};
    if r.header.table != RouteHeader::RT_TABLE_MAIN
        || r.header.kind != RouteType::Unicast
        || r.header.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let mut destination = None;
    let mut gateway = None;
    let mut device = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => destination = address(d),
            RouteAttribute::Gateway(g) => gateway = address(g),
            RouteAttribute::Oif(i) => {
                device = names.iter().find(|(n, _)| n == i).map(|(_, s)| s.clone())
            }
            _ => {}
        }
    }
    let device = device?;
    let mut route = Route::new();
    route.destination = match destination {
        Some(d) => format!("{d}/{}", r.header.destination_prefix_length),
        None => "default".into(),
    };
    route.gateway = gateway.map(|g| g.to_string()).unwrap_or_default();
    route.device = device;
    if is_link_local_route(&route) {
        return None;
    }
    Some(route)
}

fn is_link_local_route(r: &Route) -> bool {
    r.destination.starts_with("fe80:") || r.destination.starts_with("ff00:")
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
