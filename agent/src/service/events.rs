//! The event stream: OOM kills and process exits, fanned out to every attached host
//! connection as length-prefixed protobuf frames.
//!
//! Publishing never blocks (it runs on the reaper's thread): each subscriber has a bounded
//! queue and a writer thread; a subscriber that falls [`QUEUE`] events behind is dropped
//! (the host reconnects). Events published while nobody listens are kept, up to
//! [`BACKLOG`], for the next subscriber.

use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Mutex;

use hull_protocol::rpc::agent::Event;
use hull_protocol::stream::write_frame;
use protobuf::Message;

use super::stdio::Connection;

const QUEUE: usize = 1024;
const BACKLOG: usize = 256;

#[derive(Default)]
pub struct Events {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    subscribers: Vec<SyncSender<Vec<u8>>>,
    backlog: VecDeque<Vec<u8>>,
}

impl Events {
    pub fn publish(&self, event: &Event) {
        let Ok(bytes) = event.write_to_bytes() else {
            return;
        };
        let mut inner = hull_protocol::lock(&self.inner);
        inner
            .subscribers
            .retain(|tx| match tx.try_send(bytes.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            });
        if inner.subscribers.is_empty() {
            if inner.backlog.len() == BACKLOG {
                inner.backlog.pop_front();
            }
            inner.backlog.push_back(bytes);
        }
    }

    /// Streams every later event (and the backlog) to `conn` until it goes away.
    pub fn subscribe(&self, mut conn: Connection) {
        if conn.accept().is_err() {
            return;
        }
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        {
            let mut inner = hull_protocol::lock(&self.inner);
            for old in inner.backlog.drain(..) {
                let _ = tx.try_send(old);
            }
            inner.subscribers.push(tx);
        }
        let _ = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                for frame in rx {
                    if write_frame(&mut conn, &frame).is_err() {
                        break;
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_protocol::rpc::agent::OomEvent;
    use hull_protocol::stream::read_frame;
    use std::os::unix::net::UnixStream;

    fn oom(id: &str) -> Event {
        let mut e = Event::new();
        let mut o = OomEvent::new();
        o.container_id = id.into();
        e.set_oom(o);
        e
    }

    #[test]
    fn backlog_then_live_events() {
        let events = Events::default();
        events.publish(&oom("early"));
        let (a, mut host) = UnixStream::pair().unwrap();
        events.subscribe(Connection::new(a.into()));
        assert_eq!(
            hull_protocol::stream::read_reply(&mut host).unwrap(),
            Ok(())
        );
        events.publish(&oom("late"));
        for want in ["early", "late"] {
            let frame = read_frame(&mut host).unwrap().unwrap();
            assert_eq!(
                Event::parse_from_bytes(&frame).unwrap().oom().container_id,
                want
            );
        }
    }
}
