//! The control API's threads: ttrpc's listener (accept and poll), its reaper, and per
//! connection a handler, a reader, a writer and a pool of request threads, which run the
//! requests: pause and resume (kicking the vCPUs), snapshots (the VM-wide KVM state, guest
//! memory and the state file written under a handed-over directory), drive slots and
//! shares (descriptors received on the hand-over socket), metrics (`/proc/self/status`).

use seccompiler::SeccompRule;
use vmm_sys_util::{ioctl_ior_nr, ioctl_iowr_nr};

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVMIO};

use super::{allow, allow_arg, ioctls, thread_creation};

// The VM-wide state a snapshot reads (vstate::vm::Vm::save_state), numbered as kvm-ioctls
// does.
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);

pub(super) fn rules() -> Vec<(i64, Vec<SeccompRule>)> {
    let mut rules = thread_creation();
    rules.extend([
        // ttrpc: accepting connections (poll on the listener and a stop pipe), reading and
        // writing messages, closing connections.
        allow(libc::SYS_poll),
        allow(libc::SYS_accept4),
        allow(libc::SYS_read),
        allow(libc::SYS_recvfrom),
        allow(libc::SYS_sendto),
        allow(libc::SYS_shutdown),
        allow(libc::SYS_pipe2),
        // Descriptors the host hands over with a request (SCM_RIGHTS).
        allow(libc::SYS_recvmsg),
        allow_arg(
            libc::SYS_fcntl,
            1,
            &[
                libc::F_GETFL as u64,
                libc::F_SETFL as u64,
                libc::F_GETFD as u64,
                libc::F_SETFD as u64,
                libc::F_DUPFD_CLOEXEC as u64,
            ],
        ),
        // Pause: the kick signal to each vCPU thread, nothing else.
        allow_arg(libc::SYS_tgkill, 2, &[crate::signals::kick_signal() as u64]),
        // Snapshot: the VM-wide state.
        ioctls(&[KVM_GET_IRQCHIP(), KVM_GET_CLOCK(), KVM_GET_PIT2()]),
        // Snapshot files under the handed-over directory (reached as /proc/self/fd/N):
        // created, written sparse (SEEK_DATA/SEEK_HOLE over the guest's memfd), synced,
        // renamed into place, an older state file removed. Metrics read /proc/self/status;
        // a share's root is opened beneath its handed-over descriptor and /proc/self/fd.
        allow(libc::SYS_openat),
        allow(libc::SYS_mkdir),
        allow(libc::SYS_statx),
        allow(libc::SYS_newfstatat),
        allow(libc::SYS_fstat),
        allow(libc::SYS_lseek),
        allow(libc::SYS_pwrite64),
        allow(libc::SYS_ftruncate),
        allow(libc::SYS_fchmod),
        allow(libc::SYS_fsync),
        allow(libc::SYS_rename),
        allow(libc::SYS_unlink),
        // A new share: the passthrough file system sets the process umask to 0 (it
        // applies the guest's per request), and the guard reads the VMM's own ids.
        allow(libc::SYS_umask),
        allow(libc::SYS_geteuid),
        allow(libc::SYS_getegid),
    ]);
    rules
}
