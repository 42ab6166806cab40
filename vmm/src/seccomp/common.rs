//! What every thread of the VMM does, whatever its kind: run Rust and glibc (memory,
//! locks, signals, time, its own end), log, and report a forbidden call.

use seccompiler::SeccompRule;

use super::{allow, allow_arg};

pub(super) fn rules() -> Vec<(i64, Vec<SeccompRule>)> {
    vec![
        // Memory: the allocator (brk for small heaps, mmap/munmap/mremap for large blocks,
        // madvise when it trims or a thread's stack is released), guard pages.
        allow(libc::SYS_brk),
        allow(libc::SYS_mmap),
        allow(libc::SYS_munmap),
        allow(libc::SYS_mremap),
        allow(libc::SYS_mprotect),
        allow(libc::SYS_madvise),
        // Locks, condition variables, channels, thread joins.
        allow(libc::SYS_futex),
        allow(libc::SYS_sched_yield),
        // Signals: returning from a handler (the vCPU kick, termination, SIGSYS), glibc
        // masking signals around its own work, the stack-overflow handler's stack.
        allow(libc::SYS_rt_sigreturn),
        allow(libc::SYS_rt_sigprocmask),
        allow(libc::SYS_sigaltstack),
        // A sleep or wait that a signal interrupted, restarted by the kernel.
        allow(libc::SYS_restart_syscall),
        // Time: log timestamps, deadlines, sleeps (the vDSO answers most clock reads, the
        // kernel the rest).
        allow(libc::SYS_clock_gettime),
        allow(libc::SYS_clock_nanosleep),
        allow(libc::SYS_nanosleep),
        // HashMap's random keys, once per thread.
        allow(libc::SYS_getrandom),
        // Logging to stderr, and every eventfd and irqfd a thread signals.
        allow(libc::SYS_write),
        allow(libc::SYS_close),
        allow(libc::SYS_gettid),
        allow(libc::SYS_getpid),
        // The SIGSYS handler reads the name of a thread that inherited its filter.
        allow_arg(libc::SYS_prctl, 0, &[libc::PR_GET_NAME as u64]),
        // Dropping a descriptor in a debug build checks that it is open first (std's
        // debug assertion in OwnedFd's drop).
        allow_arg(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64]),
        // A thread's end, the process's end (also the SIGSYS handler's _exit).
        allow(libc::SYS_exit),
        allow(libc::SYS_exit_group),
    ]
}
