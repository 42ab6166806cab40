//! tc ingress redirects: every frame arriving on one interface leaves through another.
//! Two of them, one each way, join a VM's tap to the interface CNI made for the pod (Kata's
//! "tcfilter" model): no bridge, no addresses on the tap, and the pod's interface keeps its
//! MAC and addresses for the guest to take over.
//!
//! The filter is `u32 match u8 0 0` (every frame) with `mirred egress redirect`, what
//! `tc filter add dev A parent ffff: protocol all u32 match u8 0 0 action mirred egress
//! redirect dev B` installs; u32 rather than matchall because kernels without
//! `cls_matchall` (this project's test hosts among them) still have it.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::netlink::Netlink;

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.parent = TcHandle::INGRESS;
    m.header.handle = INGRESS_HANDLE;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// Redirects every frame arriving on interface `from` out of interface `to`: an ingress
/// qdisc on `from` and one filter in it.
pub fn redirect_ingress(nl: &mut Netlink, from: u32, to: u32) -> std::io::Result<()> {
    nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(from)),
        NLM_F_CREATE | NLM_F_EXCL,
    )?;
    let mut filter = TcMessage::with_index(from as i32);
    filter.header.parent = INGRESS_HANDLE;
    // Priority 1, protocol ETH_P_ALL in network byte order.
    filter.header.info = (1 << 16) | u32::from((libc::ETH_P_ALL as u16).to_be());
    filter.attributes.push(TcAttribute::Kind("u32".into()));
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    filter.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    nl.request(
        RouteNetlinkMessage::NewTrafficFilter(filter),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Removes interface `index`'s ingress qdisc and the filters in it.
pub fn remove_ingress(nl: &mut Netlink, index: u32) -> std::io::Result<()> {
    nl.request(
        RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
        0,
    )
}
