//! A Linux tap device: opened by name through /dev/net/tun, or adopted from a descriptor
//! another process (the shim, a CNI plugin) already opened. Frames carry a 12-byte
//! `virtio_net_hdr_v1` in front, so checksum and segmentation offload pass between the
//! guest and the host kernel untouched.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Bytes of `virtio_net_hdr_v1` (with `num_buffers`), the only header size VERSION_1
/// drivers use.
pub const VNET_HDR_LEN: usize = 12;

// ioctl numbers from <linux/if_tun.h>: _IOW('T', n, int). Creating and describing a tap
// is hull-net's (the host creates the taps it hands us the same way).
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// Offload flags for TUNSETOFFLOAD: which partial checksums and segments the tap may hand
/// us (and so the guest).
pub mod offload {
    pub const CSUM: u32 = 0x01;
    pub const TSO4: u32 = 0x02;
    pub const TSO6: u32 = 0x04;
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("neither a tap name nor a descriptor was given")]
    NoBackend,
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("open /dev/net/tun (is the tun module loaded, and are we root or CAP_NET_ADMIN?)")]
    OpenTun(#[source] std::io::Error),
    #[error("attach to tap {name} (another process may hold it, or it exists as a tun or without IFF_VNET_HDR; delete it or choose another name)")]
    SetIff {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("descriptor {fd} is not an open tap device; pass a /dev/net/tun descriptor attached with TUNSETIFF and left open (no close-on-exec) for hull-vmm")]
    NotATap {
        fd: RawFd,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "tap descriptor {fd} was opened without IFF_VNET_HDR and IFF_NO_PI; open it with both"
    )]
    WrongFlags { fd: RawFd },
    #[error("tap {what}")]
    Ioctl {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (creating if needed) the tap interface `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let fd = hull_net::tap::create(name).map_err(|e| match e {
            hull_net::tap::TapError::BadName(n) => TapError::BadName(n),
            hull_net::tap::TapError::OpenTun(source) => TapError::OpenTun(source),
            hull_net::tap::TapError::Create { name, source } => TapError::SetIff { name, source },
        })?;
        let tap = Tap {
            file: File::from(fd),
            name: name.into(),
        };
        tap.set_vnet_hdr_size()?;
        Ok(tap)
    }

    /// Adopts an already open tap descriptor (made non-blocking here). It must have been
    /// opened with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let raw = fd.as_raw_fd();
        let (name, flags) = hull_net::tap::describe(fd.as_fd())
            .map_err(|source| TapError::NotATap { fd: raw, source })?;
        if flags & hull_net::tap::VNET_TAP != hull_net::tap::VNET_TAP {
            return Err(TapError::WrongFlags { fd: raw });
        }
        // SAFETY: F_GETFL on a descriptor we own; no memory is involved.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        // SAFETY: F_SETFL likewise.
        if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            // A blocking tap would block the event loop in read(2).
            return Err(TapError::Ioctl {
                what: "F_SETFL O_NONBLOCK",
                source: std::io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file: File::from(fd),
            name,
        };
        tap.set_vnet_hdr_size()?;
        Ok(tap)
    }

    /// Adopts descriptor number `fd` inherited from our parent.
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else in this process owns.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Result<Self, TapError> {
        // SAFETY: the caller guarantees the descriptor is open and unowned.
        Self::from_fd(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_vnet_hdr_size(&self) -> Result<(), TapError> {
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETVNETHDRSZ, &size) };
        if rc < 0 {
            return Err(TapError::Ioctl {
                what: "TUNSETVNETHDRSZ",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Tells the tap which offloads it may use towards us (a set of [`offload`] flags).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes the flags as the argument value itself.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(TapError::Ioctl {
                what: "TUNSETOFFLOAD",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Whether the tap accepts checksum and TSO offload (it does unless something about
    /// the interface forbids it); left with no offload enabled.
    pub fn supports_offload(&self) -> bool {
        let ok = self
            .set_offload(offload::CSUM | offload::TSO4 | offload::TSO6)
            .is_ok();
        let _ = self.set_offload(0);
        ok
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Read for &Tap {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }
}

impl Write for &Tap {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
