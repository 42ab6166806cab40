//! A blocking rtnetlink socket: one request at a time, each waiting for its ACK (so a kernel
//! refusal comes back as the errno of the request that caused it), and dumps collected
//! whole. Messages are `netlink-packet-route`'s types.

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Most messages one dump may return before it is cut off: a network namespace with more
/// links, addresses or routes than this is not one hull made or expects.
pub const MAX_DUMP: usize = 4096;

pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> std::io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { socket, seq: 0 })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> std::io::Result<u32> {
        let mut req = NetlinkMessage::from(msg);
        self.seq += 1;
        req.header.flags = flags | NLM_F_REQUEST;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.header.length as usize];
        req.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(self.seq)
    }

    /// Reads replies to request `seq`, handing each message to `each`, until `each` says
    /// the request is answered (`Some`).
    fn replies<T>(
        &mut self,
        seq: u32,
        mut each: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> std::io::Result<Option<T>>,
    ) -> std::io::Result<T> {
        let mut rx = vec![0u8; 64 << 10];
        loop {
            let n = self.socket.recv(&mut &mut rx[..], 0)?;
            let mut at = 0;
            while at < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..n])
                    .map_err(|e| std::io::Error::other(format!("netlink reply: {e}")))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == seq {
                    if let Some(done) = each(msg)? {
                        return Ok(done);
                    }
                }
                if len == 0 {
                    break;
                }
                at += len;
            }
        }
    }

    /// Sends one request and waits for its ACK.
    pub fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> std::io::Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.replies(seq, |msg| match msg.payload {
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(Some(())),
                Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
            },
            _ => Ok(None),
        })
    }

    /// Sends a dump request (`GetLink`, `GetAddress`, `GetRoute`, ...) and returns every
    /// message of the reply, at most [`MAX_DUMP`].
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> std::io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.replies(seq, |msg| match msg.payload {
            NetlinkPayload::Done(_) => Ok(Some(())),
            NetlinkPayload::Error(e) => Err(match e.code {
                Some(code) => std::io::Error::from_raw_os_error(-code.get()),
                None => std::io::Error::other("netlink dump ended with an ACK"),
            }),
            NetlinkPayload::InnerMessage(m) if out.len() < MAX_DUMP => {
                out.push(m);
                Ok(None)
            }
            NetlinkPayload::InnerMessage(_) => Err(std::io::Error::other(format!(
                "netlink dump has more than {MAX_DUMP} entries"
            ))),
            _ => Ok(None),
        })?;
        Ok(out)
    }
}
