//! A frame backend made of a SOCK_SEQPACKET socket pair: it keeps frame boundaries like a
//! tap, needs no privileges, and lets a test or fuzz target play the host side of a
//! virtio-net device (or two devices be wired back to back).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::FrameIo;

pub struct SeqPacket(OwnedFd);

impl SeqPacket {
    /// Both ends of a new, non-blocking pair.
    pub fn pair() -> std::io::Result<(SeqPacket, SeqPacket)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills the two-element array on success.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let a = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        // SAFETY: as above.
        let b = unsafe { OwnedFd::from_raw_fd(fds[1]) };
        Ok((SeqPacket(a), SeqPacket(b)))
    }
}

impl AsRawFd for SeqPacket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for SeqPacket {
    fn recv_frame(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: `buf` is a live, writable buffer of the given length.
        let n = unsafe { libc::recv(self.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn send_frame(&self, frame: &[u8]) -> std::io::Result<usize> {
        // SAFETY: `frame` is a live buffer of the given length.
        let n = unsafe { libc::send(self.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn set_offload(&self, _flags: u32) -> bool {
        true
    }
}
