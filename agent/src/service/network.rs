//! ConfigureNetwork: interfaces up with addresses and MTU, then routes, over rtnetlink.
//!
//! Messages are built with `netlink-packet-route` (the rust-netlink crates libcontainer
//! already uses) and sent on `hull-net`'s blocking socket, one request and its ACK at a
//! time, so a kernel refusal comes back as the errno of the request that caused it.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd};

use hull_net::netlink::Netlink;
use hull_protocol::rpc::agent::{ConfigureNetworkRequest, Interface, Route};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::validate::Invalid;
use super::AgentError;

/// Most interfaces, addresses per interface and routes one request may carry.
const MAX_ITEMS: usize = 64;

/// An address or destination with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

pub fn parse_cidr(field: &str, text: &str) -> Result<Cidr, Invalid> {
    let bad = |why: &str| Invalid::new(field, format!("{text:?} {why}"));
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| bad("is not CIDR (like 10.0.0.2/24)"))?;
    let addr: IpAddr = addr.parse().map_err(|_| bad("has no valid IP address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| bad("has no valid prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad(&format!("has a prefix longer than {max}")));
    }
    Ok(Cidr { addr, prefix })
}

/// One checked interface: how to find it and what to give it.
#[derive(Debug)]
struct Planned {
    name: String,
    mac: String,
    addresses: Vec<Cidr>,
    mtu: u32,
}

#[derive(Debug)]
struct PlannedRoute {
    destination: Option<Cidr>,
    gateway: Option<IpAddr>,
    device: String,
}

fn plan(req: &ConfigureNetworkRequest) -> Result<(Vec<Planned>, Vec<PlannedRoute>), Invalid> {
    if req.interfaces.len() > MAX_ITEMS || req.routes.len() > MAX_ITEMS {
        return Err(Invalid::new(
            "interfaces/routes",
            format!("more than {MAX_ITEMS}"),
        ));
    }
    let ifaces = req
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, iface)| plan_interface(i, iface))
        .collect::<Result<_, _>>()?;
    let routes = req
        .routes
        .iter()
        .enumerate()
        .map(|(i, route)| plan_route(i, route))
        .collect::<Result<_, _>>()?;
    Ok((ifaces, routes))
}

/// `interfaces[i]`, checked.
fn plan_interface(i: usize, iface: &Interface) -> Result<Planned, Invalid> {
    let Interface {
        name,
        mac,
        addresses,
        mtu,
        ..
    } = iface;
    let field = |f: &str| format!("interfaces[{i}]{f}");
    if name.is_empty() && mac.is_empty() {
        return Err(Invalid::new(field(""), "names neither a name nor a MAC"));
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(Invalid::new(field(".name"), "longer than 15 bytes"));
    }
    if !mac.is_empty() && !is_mac(mac) {
        return Err(Invalid::new(
            field(".mac"),
            format!("{mac:?} is not like 02:00:00:00:00:01"),
        ));
    }
    if *mtu != 0 && !(68..=65535).contains(mtu) {
        return Err(Invalid::new(
            field(".mtu"),
            format!("{mtu} is outside 68..=65535"),
        ));
    }
    if addresses.len() > MAX_ITEMS {
        return Err(Invalid::new(
            field(".addresses"),
            format!("more than {MAX_ITEMS}"),
        ));
    }
    let addresses = addresses
        .iter()
        .enumerate()
        .map(|(j, a)| parse_cidr(&field(&format!(".addresses[{j}]")), a))
        .collect::<Result<_, _>>()?;
    Ok(Planned {
        name: name.clone(),
        mac: mac.to_ascii_lowercase(),
        addresses,
        mtu: *mtu,
    })
}

/// `routes[i]`, checked: a destination (or `default`), a gateway of its family, or a
/// device.
fn plan_route(i: usize, route: &Route) -> Result<PlannedRoute, Invalid> {
    let Route {
        destination,
        gateway,
        device,
        ..
    } = route;
    let destination = if destination == "default" {
        None
    } else {
        Some(parse_cidr(
            &format!("routes[{i}].destination"),
            destination,
        )?)
    };
    let gateway = if gateway.is_empty() {
        None
    } else {
        Some(gateway.parse::<IpAddr>().map_err(|_| {
            Invalid::new(
                format!("routes[{i}].gateway"),
                format!("{gateway:?} is not an IP address"),
            )
        })?)
    };
    if gateway.is_none() && device.is_empty() {
        return Err(Invalid::new(
            format!("routes[{i}]"),
            "needs a gateway or a device",
        ));
    }
    if let (Some(d), Some(g)) = (destination, gateway) {
        if d.addr.is_ipv4() != g.is_ipv4() {
            return Err(Invalid::new(
                format!("routes[{i}].gateway"),
                "is not of the destination's address family",
            ));
        }
    }
    Ok(PlannedRoute {
        destination,
        gateway,
        device: device.clone(),
    })
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `aa:bb:cc:dd:ee:ff` (checked by `is_mac`) as bytes.
fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (b, part) in out.iter_mut().zip(mac.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    out
}

/// The hardware address of interface `name` in this network namespace, as
/// `aa:bb:cc:dd:ee:ff` (SIOCGIFHWADDR: sysfs shows the namespace it was mounted in, which
/// for `hull-agent serve` is the host's).
fn current_mac(name: &str) -> Option<String> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a plain datagram socket, closed by OwnedFd below; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is a valid value of the type.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the NUL-terminated name in `req` and writes its
    // ifr_hwaddr member; `req` outlives the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if r != 0 {
        return None;
    }
    // SAFETY: the ioctl succeeded, so the union holds ifr_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    Some(
        data[..6]
            .iter()
            .map(|b| format!("{:02x}", *b as u8))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// The interface in this network namespace whose MAC is `mac`.
fn name_by_mac(mac: &str) -> Option<String> {
    interface_names()
        .into_iter()
        .find(|n| current_mac(n).is_some_and(|m| m.eq_ignore_ascii_case(mac)))
}

/// Every interface of this network namespace (if_nameindex).
fn interface_names() -> Vec<String> {
    // SAFETY: if_nameindex allocates an array ending in a zero entry, freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Vec::new();
    }
    let mut names = Vec::new();
    let mut i = 0;
    loop {
        // SAFETY: the array is terminated by an entry with index 0, which we stop at, so
        // entry `i` is within it.
        let ptr = unsafe { list.add(i) };
        // SAFETY: `ptr` points at a live, initialized entry of the array.
        let entry = unsafe { &*ptr };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        // SAFETY: if_name is a NUL-terminated string owned by the array.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.if_name) };
        names.push(name.to_string_lossy().into_owned());
        i += 1;
    }
    // SAFETY: `list` came from if_nameindex and is freed once.
    unsafe { libc::if_freenameindex(list) };
    names
}

fn index_of(name: &str) -> Result<u32, AgentError> {
    let c =
        std::ffi::CString::new(name).map_err(|_| AgentError::invalid("name", "contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(AgentError::NotFound(format!("network interface {name:?}")));
    }
    Ok(index)
}

/// Applies `req`: each interface found (by MAC first, else by name), given its MTU, brought
/// up and given its addresses; then each route. An address or route that already exists
/// is an error (EEXIST), so a repeated request says so instead of silently passing.
pub fn configure(req: &ConfigureNetworkRequest) -> Result<(), AgentError> {
    let (ifaces, routes) = plan(req)?;
    let mut nl = Netlink::open().map_err(fail("opening an rtnetlink socket".into()))?;
    for iface in &ifaces {
        configure_interface(&mut nl, iface)?;
    }
    for r in &routes {
        add_route(&mut nl, r)?;
    }
    Ok(())
}

/// Brings the guest's loopback up, as every Linux network namespace a pod gets has it: a
/// pod's containers reach each other on `localhost` (sidecars), and kubectl port-forward
/// reaches the pod's ports on 127.0.0.1 ([`super::forward`]).
pub fn loopback_up() -> Result<(), AgentError> {
    let mut nl = Netlink::open().map_err(fail("opening an rtnetlink socket".into()))?;
    let mut link = LinkMessage::default();
    link.header.index = index_of("lo")?;
    link.header.flags |= LinkFlags::Up;
    link.header.change_mask |= LinkFlags::Up;
    nl.request(RouteNetlinkMessage::SetLink(link), 0)
        .map_err(fail("bringing lo up".into()))
}

fn fail(what: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |e| AgentError::FailedPrecondition(format!("{what}: {e}"))
}

/// Finds the interface (by name when there is one, else by MAC), gives it its MAC (a
/// guest restored from a template keeps the template's until told), brings it up with its
/// MTU and adds its addresses.
fn configure_interface(nl: &mut Netlink, iface: &Planned) -> Result<(), AgentError> {
    let name = if iface.name.is_empty() {
        name_by_mac(&iface.mac).ok_or_else(|| {
            AgentError::NotFound(format!("network interface with MAC {}", iface.mac))
        })?
    } else {
        iface.name.clone()
    };
    let index = index_of(&name)?;
    let has_mac = current_mac(&name).is_some_and(|m| m.eq_ignore_ascii_case(&iface.mac));
    if !iface.mac.is_empty() && !has_mac {
        // Most drivers (virtio-net without VIRTIO_NET_F_CTRL_MAC_ADDR) change the
        // address only while the link is down.
        let mut down = LinkMessage::default();
        down.header.index = index;
        down.header.change_mask |= LinkFlags::Up;
        nl.request(RouteNetlinkMessage::SetLink(down), 0)
            .map_err(fail(format!("taking {name} down to change its MAC")))?;
        let mut addr = LinkMessage::default();
        addr.header.index = index;
        addr.attributes
            .push(LinkAttribute::Address(mac_bytes(&iface.mac).to_vec()));
        nl.request(RouteNetlinkMessage::SetLink(addr), 0)
            .map_err(fail(format!("setting the MAC of {name} to {}", iface.mac)))?;
    }
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags |= LinkFlags::Up;
    link.header.change_mask |= LinkFlags::Up;
    if iface.mtu != 0 {
        link.attributes.push(LinkAttribute::Mtu(iface.mtu));
    }
    nl.request(RouteNetlinkMessage::SetLink(link), 0)
        .map_err(fail(format!("bringing {name} up")))?;
    for a in &iface.addresses {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = a.prefix;
        msg.header.family = family(a.addr);
        msg.attributes.push(AddressAttribute::Local(a.addr));
        msg.attributes.push(AddressAttribute::Address(a.addr));
        if a.addr.is_ipv6() {
            // CNI's IPAM assigned the address and the node's side already checked it for
            // duplicates; without NODAD it stays tentative (unusable) for a second or more.
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        nl.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(fail(format!("adding {}/{} to {name}", a.addr, a.prefix)))?;
    }
    Ok(())
}

fn add_route(nl: &mut Netlink, r: &PlannedRoute) -> Result<(), AgentError> {
    let mut msg = RouteMessage::default();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Static;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if r.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    let fam = r
        .destination
        .map(|d| d.addr)
        .or(r.gateway)
        .map(family)
        .unwrap_or(AddressFamily::Inet);
    msg.header.address_family = fam;
    if let Some(d) = r.destination {
        msg.header.destination_prefix_length = d.prefix;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(d.addr)));
    }
    if let Some(g) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    if !r.device.is_empty() {
        msg.attributes
            .push(RouteAttribute::Oif(index_of(&r.device)?));
    }
    let what = match r.destination {
        Some(d) => format!("{}/{}", d.addr, d.prefix),
        None => "default".to_owned(),
    };
    nl.request(
        RouteNetlinkMessage::NewRoute(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map_err(fail(format!("adding the route to {what}")))?;
    Ok(())
}

fn family(a: IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ifaces: Vec<Interface>, routes: Vec<Route>) -> ConfigureNetworkRequest {
        let mut r = ConfigureNetworkRequest::new();
        r.interfaces = ifaces;
        r.routes = routes;
        r
    }

    fn iface(name: &str, mac: &str, addrs: &[&str], mtu: u32) -> Interface {
        let mut i = Interface::new();
        i.name = name.into();
        i.mac = mac.into();
        i.addresses = addrs.iter().map(|s| s.to_string()).collect();
        i.mtu = mtu;
        i
    }

    fn route(dest: &str, gw: &str, dev: &str) -> Route {
        let mut r = Route::new();
        r.destination = dest.into();
        r.gateway = gw.into();
        r.device = dev.into();
        r
    }

    #[test]
    fn mac_text_becomes_bytes_and_lo_has_a_readable_address() {
        assert_eq!(mac_bytes("02:aa:BB:00:00:07"), [2, 0xaa, 0xbb, 0, 0, 7]);
        assert_eq!(current_mac("lo").as_deref(), Some("00:00:00:00:00:00"));
        assert!(interface_names().iter().any(|n| n == "lo"));
        assert_eq!(current_mac("nosuch-if0"), None);
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("f", "10.0.0.2/24").unwrap().prefix, 24);
        assert_eq!(parse_cidr("f", "fd00::2/64").unwrap().prefix, 64);
        for bad in ["10.0.0.2", "10.0.0.2/33", "fd00::/129", "x/1", "10.0.0.1/x"] {
            assert!(parse_cidr("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plans_name_the_bad_field() {
        let cases = [
            (req(vec![iface("", "", &[], 0)], vec![]), "interfaces[0]"),
            (
                req(vec![iface("eth0", "zz:00", &[], 0)], vec![]),
                "interfaces[0].mac",
            ),
            (
                req(vec![iface("eth0", "", &["10.0.0.1"], 0)], vec![]),
                "interfaces[0].addresses[0]",
            ),
            (
                req(vec![iface("eth0", "", &[], 10)], vec![]),
                "interfaces[0].mtu",
            ),
            (req(vec![], vec![route("default", "", "")]), "routes[0]"),
            (
                req(vec![], vec![route("10.0.0.0/8", "fd00::1", "")]),
                "routes[0].gateway",
            ),
            (
                req(vec![], vec![route("10.0.0.0", "10.0.0.1", "")]),
                "routes[0].destination",
            ),
        ];
        for (r, field) in cases {
            assert_eq!(plan(&r).unwrap_err().field, field);
        }
        let ok = req(
            vec![iface(
                "eth0",
                "02:00:00:00:00:01",
                &["10.0.0.2/24", "fd00::2/64"],
                1500,
            )],
            vec![
                route("default", "10.0.0.1", ""),
                route("10.1.0.0/16", "", "eth0"),
            ],
        );
        let (ifaces, routes) = plan(&ok).unwrap();
        assert_eq!(
            (ifaces.len(), ifaces[0].addresses.len(), routes.len()),
            (1, 2, 2)
        );
        assert_eq!(routes[0].destination, None);
    }
}
