//! Creating a tap device through /dev/net/tun, as a VMM's network backend wants it: frames
//! with a `virtio_net_hdr` in front (`IFF_VNET_HDR`) and no packet information
//! (`IFF_NO_PI`). The tap lives while a descriptor to it is open (it is not persistent), in
//! the network namespace of the thread that creates it.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

// From <linux/if_tun.h>: TUNSETIFF is _IOW('T', 202, int), TUNGETIFF _IOR('T', 210, int).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// The flags a VMM's tap has: Ethernet frames, no packet information, a virtio-net header.
pub const VNET_TAP: libc::c_short = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("opening /dev/net/tun (is the tun module loaded, and are we root or CAP_NET_ADMIN?)")]
    OpenTun(#[source] std::io::Error),
    #[error("creating tap {name} (TUNSETIFF; a device of that name may exist already)")]
    Create {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates tap `name` in the calling thread's network namespace and returns its queue's
/// descriptor (close-on-exec: whoever hands it to a VMM clears that in the child).
pub fn create(name: &str) -> Result<OwnedFd, TapError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(TapError::BadName(name.to_string()));
    }
    // SAFETY: open(2) of a constant NUL-terminated path; the result is checked and owned.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(TapError::OpenTun(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let tun = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: VNET_TAP,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads an ifreq; `req` is one (name, flags, padding to the union's
    // size) and outlives the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        return Err(TapError::Create {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(tun)
}

/// The interface name and flags of the tap whose queue `fd` is (TUNGETIFF); an error for a
/// descriptor that is not an attached tun/tap queue.
pub fn describe(fd: BorrowedFd<'_>) -> std::io::Result<(String, libc::c_short)> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF fills an ifreq, which `req` is, and `req` outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let name = req
        .name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8 as char)
        .collect();
    Ok((name, req.flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_cannot_take_are_refused() {
        for bad in ["", "a-name-of-16-chr", "nul\0"] {
            assert!(matches!(create(bad), Err(TapError::BadName(_))), "{bad:?}");
        }
    }
}
