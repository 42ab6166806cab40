//! The main thread once the VM runs: the event-manager epoll loop, which serves every
//! virtio queue notification (ioeventfd) and every device's host descriptors (disk images,
//! taps, the vsock listener and its connections, the vsock timer), hands fs requests to
//! the fs session thread, and at the end stops the vCPUs (the kick signal), joins them,
//! and shuts the control API down.
//!
//! No KVM ioctl: a device raises its interrupt by writing its irqfd and hears its queue
//! notifications on ioeventfds, both registered with KVM (`KVM_IRQFD`, `KVM_IOEVENTFD`)
//! while the VM is built, before any filter; `KVM_IRQ_LINE` is not used at all. The only
//! ioctl is `FIONBIO`.

use seccompiler::SeccompRule;

use super::{allow, allow_arg, ioctls};

pub(super) fn rules() -> Vec<(i64, Vec<SeccompRule>)> {
    vec![
        // The event loop.
        allow(libc::SYS_epoll_wait),
        allow(libc::SYS_epoll_ctl),
        // Eventfds, the vsock timer (timerfd), taps, sockets, console.
        allow(libc::SYS_read),
        allow(libc::SYS_timerfd_settime),
        // The wake-up eventfd of an fs session, made when the guest's first request
        // starts one.
        allow(libc::SYS_eventfd2),
        // virtio-blk: reads and writes at an offset, flushes.
        allow(libc::SYS_pread64),
        allow(libc::SYS_pwrite64),
        allow(libc::SYS_fdatasync),
        // virtio-vsock: host connections to the guest's listeners arrive on the device's
        // listening socket; the guest's connections to host services go to unix sockets
        // (`<uds_path>_<port>`), never to any other family.
        allow(libc::SYS_accept4),
        allow_arg(libc::SYS_socket, 0, &[libc::AF_UNIX as u64]),
        allow(libc::SYS_connect),
        allow(libc::SYS_recvfrom),
        allow(libc::SYS_sendto),
        allow(libc::SYS_shutdown),
        // UnixStream::set_nonblocking on an accepted or connected socket.
        ioctls(&[libc::FIONBIO]),
        // Stopping the vCPUs: pthread_kill with the kick signal only.
        allow_arg(libc::SYS_tgkill, 2, &[crate::signals::kick_signal() as u64]),
        // The control API's socket file, removed at the end (a jailed VMM cannot reach it
        // and gets ENOENT; the host removes its run directory).
        allow(libc::SYS_unlink),
    ]
}
