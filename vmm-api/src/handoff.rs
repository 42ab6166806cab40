//! Descriptor hand-over from the host to a confined VMM.
//!
//! A jailed `hull-vmm` sees no host path (docs/security.md, "the VMM's jail"), so the host
//! opens every file a control call needs (a drive image, a share's directory, a snapshot
//! directory) and passes the open descriptor over a unix datagram socket pair made when
//! the VMM is launched. The call then names the descriptor by the token it was sent with.
//! Only the launching process holds the other end: nothing else can put a descriptor in
//! front of the VMM.
//!
//! Each message is the token (8 bytes, little-endian) with exactly one descriptor
//! attached (SCM_RIGHTS). The host sends before it calls, so the descriptor is already
//! queued when the call arrives; the VMM reads without waiting and keeps descriptors
//! for other calls (sent by other host threads) aside, a bounded few.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Descriptors received ahead of their call that the VMM keeps; older ones are closed.
const STASH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("make the descriptor hand-over socket pair")]
    Pair(#[source] std::io::Error),
    #[error("hand descriptor {fd} to the VMM")]
    Send {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
    #[error("read the descriptor hand-over socket")]
    Receive(#[source] std::io::Error),
    #[error("no descriptor was handed over with token {0}; the host sends it before the call that names it")]
    Missing(u64),
}

/// The host's end: sends descriptors, each under a fresh token.
#[derive(Debug)]
pub struct HandoffSender {
    socket: UnixDatagram,
    next: AtomicU64,
}

impl HandoffSender {
    /// A connected pair: the sender, and the VMM's end for it to inherit (close-on-exec
    /// set; the launcher clears it in the child).
    pub fn pair() -> Result<(HandoffSender, OwnedFd), HandoffError> {
        let (host, vmm) = UnixDatagram::pair().map_err(HandoffError::Pair)?;
        Ok((
            HandoffSender {
                socket: host,
                next: AtomicU64::new(1),
            },
            vmm.into(),
        ))
    }

    /// Sends `fd` (duplicated into the message; the caller keeps its own); returns the
    /// token the control call names it by.
    pub fn send(&self, fd: BorrowedFd<'_>) -> Result<u64, HandoffError> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.socket
            .send_with_fd(&token.to_le_bytes()[..], fd.as_raw_fd())
            .map_err(|e| HandoffError::Send {
                fd: fd.as_raw_fd(),
                source: std::io::Error::from_raw_os_error(e.errno()),
            })?;
        Ok(token)
    }
}

/// The VMM's end.
#[derive(Debug)]
pub struct HandoffReceiver {
    socket: UnixDatagram,
    stash: Mutex<VecDeque<(u64, OwnedFd)>>,
}

impl HandoffReceiver {
    /// Takes over the inherited descriptor `fd` (the VMM's end of [`HandoffSender::pair`]).
    ///
    /// # Safety
    /// `fd` must be an open unix datagram socket this process owns and nothing else uses.
    pub unsafe fn from_raw_fd(fd: RawFd) -> std::io::Result<HandoffReceiver> {
        // SAFETY: the caller guarantees `fd` is an owned, open socket.
        let socket = unsafe { UnixDatagram::from_raw_fd(fd) };
        Self::new(socket.into())
    }

    pub fn new(fd: OwnedFd) -> std::io::Result<HandoffReceiver> {
        let socket = UnixDatagram::from(fd);
        socket.set_nonblocking(true)?;
        Ok(HandoffReceiver {
            socket,
            stash: Mutex::new(VecDeque::new()),
        })
    }

    /// The descriptor sent with `token`.
    pub fn take(&self, token: u64) -> Result<OwnedFd, HandoffError> {
        let mut stash = hull_protocol::lock(&self.stash);
        if let Some(at) = stash.iter().position(|(t, _)| *t == token) {
            return Ok(stash.remove(at).expect("position is in range").1);
        }
        loop {
            let mut buf = [0u8; 8];
            let (n, file) = match self.socket.recv_with_fd(&mut buf) {
                Ok(got) => got,
                Err(e) if e.errno() == libc::EAGAIN => return Err(HandoffError::Missing(token)),
                Err(e) => {
                    return Err(HandoffError::Receive(std::io::Error::from_raw_os_error(
                        e.errno(),
                    )))
                }
            };
            // A message without exactly a token and a descriptor is dropped (its
            // descriptor, if any, closed with `file`).
            let (Some(file), 8) = (file, n) else { continue };
            let got = u64::from_le_bytes(buf);
            let fd = OwnedFd::from(file);
            if got == token {
                return Ok(fd);
            }
            if stash.len() == STASH {
                stash.pop_front();
            }
            stash.push_back((got, fd));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    fn file_with(text: &str) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn read_all(fd: OwnedFd) -> String {
        let mut f = std::fs::File::from(fd);
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn a_descriptor_arrives_under_its_token_even_out_of_order() {
        let (tx, rx) = HandoffSender::pair().unwrap();
        let rx = HandoffReceiver::new(rx).unwrap();
        let a = file_with("a");
        let b = file_with("b");
        let ta = tx.send(std::os::fd::AsFd::as_fd(&a)).unwrap();
        let tb = tx.send(std::os::fd::AsFd::as_fd(&b)).unwrap();
        assert_ne!(ta, tb);
        assert_eq!(read_all(rx.take(tb).unwrap()), "b");
        assert_eq!(read_all(rx.take(ta).unwrap()), "a");
    }

    #[test]
    fn a_token_never_sent_is_an_error_not_a_wait() {
        let (tx, rx) = HandoffSender::pair().unwrap();
        let rx = HandoffReceiver::new(rx).unwrap();
        let t = tx.send(std::os::fd::AsFd::as_fd(&file_with("x"))).unwrap();
        let e = rx.take(t + 100).unwrap_err();
        assert!(matches!(e, HandoffError::Missing(_)), "{e}");
        // The one sent is kept for its own call.
        assert_eq!(read_all(rx.take(t).unwrap()), "x");
    }

    #[test]
    fn descriptors_never_claimed_are_bounded() {
        let (tx, rx) = HandoffSender::pair().unwrap();
        let rx = HandoffReceiver::new(rx).unwrap();
        let f = file_with("x");
        let first = tx.send(std::os::fd::AsFd::as_fd(&f)).unwrap();
        for _ in 0..STASH + 4 {
            tx.send(std::os::fd::AsFd::as_fd(&f)).unwrap();
        }
        let last = tx.send(std::os::fd::AsFd::as_fd(&f)).unwrap();
        rx.take(last).unwrap();
        assert!(hull_protocol::lock(&rx.stash).len() <= STASH);
        assert!(matches!(rx.take(first), Err(HandoffError::Missing(_))));
    }

    #[test]
    fn a_message_without_a_descriptor_is_skipped() {
        let (host, vmm) = UnixDatagram::pair().unwrap();
        let rx = HandoffReceiver::new(vmm.into()).unwrap();
        host.send(&7u64.to_le_bytes()).unwrap();
        assert!(matches!(rx.take(7), Err(HandoffError::Missing(7))));
    }
}
