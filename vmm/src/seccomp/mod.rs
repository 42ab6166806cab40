//! Per-thread seccomp filters: each thread of a jailed VMM may make only the system calls
//! its kind of work needs, with the arguments it needs where an argument decides what a
//! call does (the ioctl request, the socket family, the signal sent).
//!
//! | kind | threads | rules |
//! | --- | --- | --- |
//! | [`ThreadKind::Vmm`] | main: the event loop, then the vCPU stop | `vmm.rs` |
//! | [`ThreadKind::Vcpu`] | `vcpuN`: KVM_RUN, device registers, snapshot reads | `vcpu.rs` |
//! | [`ThreadKind::Fs`] | `hull-fs-start`, and the `hull-fs` session threads it starts | `fs.rs` |
//! | [`ThreadKind::Api`] | the control API: ttrpc's listener, reaper and connection threads | `api.rs` |
//!
//! Each list is the system calls the code makes on that thread, as measured under strace
//! through the host's end-to-end tests (boot, restore, containers, shares, drive slots,
//! snapshots), plus the error paths that run rarely (EINTR restarts, thread exits), and the
//! calls every thread makes (`common.rs`). A call off the list is not refused with an error
//! the code might mishandle: it raises SIGSYS, whose handler writes one line naming the
//! thread and the call to stderr and ends the VMM with [`SECCOMP_EXIT_CODE`]. (A call made
//! while the thread blocks every signal, as glibc does inside pthread_create, cannot run the
//! handler: the kernel then kills the VMM with SIGSYS, without the line.)
//!
//! Filters stack: a thread keeps its creator's filter and adds its own. So every thread
//! installs its kind's filter when it starts, and a thread that creates others does so
//! only for its own kind: the main thread starts the fs starter thread, the vCPUs and the
//! API's starter before it filters itself (last, right before the event loop), and each
//! of those threads' descendants inherit exactly one filter. `/proc/PID/task/TID/status`
//! shows `Seccomp: 2` and `Seccomp_filters: 1` for every thread.
//!
//! Threads are created with `clone`, whose flags a filter can check, and never with
//! `clone3`, whose flags live in memory a filter cannot read: each filter answers clone3
//! with ENOSYS, on which glibc falls back to clone. A clone with other flags than
//! pthread_create's (a new process, a new namespace) is forbidden.
//!
//! Filters are a property of the jail ([`enable`] is called after [`crate::jail::enter`]):
//! a VMM started by hand, without a jail, runs unfiltered and says so once in its log. The
//! jail is what makes a filter hold (no capabilities, `no_new_privs`); a VMM run outside it
//! opens host paths on request and may hold root's capabilities, where a list of system
//! calls would bound little and would get in the way of debugging it.

mod api;
mod common;
mod fs;
mod syscall_names;
mod vcpu;
mod vmm;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::thread::JoinHandle;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

pub use syscall_names::SYSCALL_NAMES;

/// The exit status of a VMM stopped by its seccomp filter (a thread made a system call its
/// kind does not make). Documented with the others in `main.rs`.
pub const SECCOMP_EXIT_CODE: i32 = 159;

/// What a thread does, which decides the system calls it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread once the VM runs: the event loop serving every device's queues and
    /// host descriptors, then stopping the vCPUs.
    Vmm,
    /// A vCPU: KVM_RUN, the port and MMIO exits it dispatches to devices, and the state a
    /// snapshot reads on it.
    Vcpu,
    /// The virtio-fs sessions: FUSE requests as file system calls on shared directories.
    Fs,
    /// The control API: ttrpc's threads and what the requests do (pause, snapshot, drive
    /// slots, shares, metrics).
    Api,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Fs,
        ThreadKind::Api,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Fs => "fs",
            ThreadKind::Api => "api",
        }
    }

    /// The system calls this kind makes, each with the argument conditions it is allowed
    /// under (an empty list: any arguments).
    pub fn rules(self) -> Rules {
        let own = match self {
            ThreadKind::Vmm => vmm::rules(),
            ThreadKind::Vcpu => vcpu::rules(),
            ThreadKind::Fs => fs::rules(),
            ThreadKind::Api => api::rules(),
        };
        let mut rules = Rules::new();
        for (nr, conditions) in common::rules().into_iter().chain(own) {
            merge(&mut rules, nr, conditions);
        }
        rules
    }
}

impl std::str::FromStr for ThreadKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ThreadKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("no thread kind {s:?}"))
    }
}

/// System call numbers with the rules that allow them (any rule matching allows the call;
/// no rule: always allowed).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// Adds `rules` for `nr`: allowed unconditionally stays so, otherwise the conditions add up.
fn merge(all: &mut Rules, nr: i64, rules: Vec<SeccompRule>) {
    match all.get_mut(&nr) {
        None => {
            all.insert(nr, rules);
        }
        Some(existing) if existing.is_empty() => {}
        Some(_) if rules.is_empty() => {
            all.insert(nr, rules);
        }
        Some(existing) => existing.extend(rules),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: compile the {kind} filter")]
    Compile {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("seccomp: install the {kind} filter")]
    Install {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("seccomp: install the SIGSYS handler")]
    Handler(#[source] vmm_sys_util::errno::Error),
    #[error("seccomp: start thread {name}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("seccomp: thread {0} ended before it installed its filter")]
    Gone(String),
    #[error("set the capabilities of thread {name}")]
    Caps {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// `(nr, [])`: the call is allowed with any arguments.
fn allow(nr: i64) -> (i64, Vec<SeccompRule>) {
    (nr, Vec::new())
}

/// A condition on argument `index`, compared as the kernel reads it (`len`).
fn cond(index: u8, len: SeccompCmpArgLen, value: u64) -> SeccompCondition {
    SeccompCondition::new(index, len, SeccompCmpOp::Eq, value)
        .expect("argument indexes in the rules are below 6")
}

/// `(nr, ...)`: allowed when argument `index` (a 32-bit value to the kernel: an ioctl
/// request, an fcntl command, a socket family, a signal) is one of `values`.
fn allow_arg(nr: i64, index: u8, values: &[u64]) -> (i64, Vec<SeccompRule>) {
    let rules = values
        .iter()
        .map(|&v| {
            SeccompRule::new(vec![cond(index, SeccompCmpArgLen::Dword, v)])
                .expect("a rule with one condition is valid")
        })
        .collect();
    (nr, rules)
}

/// The ioctl requests allowed on any descriptor: an ioctl's meaning is its request number
/// (the descriptor it goes to is not something a filter can see).
fn ioctls(requests: &[u64]) -> (i64, Vec<SeccompRule>) {
    allow_arg(libc::SYS_ioctl, 1, requests)
}

/// The flags glibc's pthread_create passes to clone (glibc 2.36, `create_thread`): a thread
/// of this process, nothing else.
const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// What a thread that starts threads needs besides its own work: clone for threads only,
/// and what a new thread does before its own code runs under the filter it inherited
/// (glibc registers its rseq area and robust-futex list; Rust names the thread and reads
/// its stack bounds, which asks for its CPU affinity).
fn thread_creation() -> Vec<(i64, Vec<SeccompRule>)> {
    vec![
        (
            libc::SYS_clone,
            vec![
                SeccompRule::new(vec![cond(0, SeccompCmpArgLen::Qword, THREAD_CLONE_FLAGS)])
                    .expect("a rule with one condition is valid"),
            ],
        ),
        allow(libc::SYS_rseq),
        allow(libc::SYS_set_robust_list),
        allow(libc::SYS_sched_getaffinity),
        allow_arg(libc::SYS_prctl, 0, &[libc::PR_SET_NAME as u64]),
    ]
}

/// The compiled filter of `kind`: its rules, SIGSYS for everything else, and clone3 refused
/// with ENOSYS in front of it.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let compile_err = |source| SeccompError::Compile {
        kind: kind.name(),
        source,
    };
    let filter = SeccompFilter::new(
        kind.rules(),
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(compile_err)?;
    let program: BpfProgram = filter.try_into().map_err(compile_err)?;
    Ok(with_clone3_refused(program))
}

/// Puts `clone3 → ENOSYS` in front of `program`. clone3 takes its flags in a struct that a
/// filter cannot read, so it cannot be allowed for threads only; glibc (2.34 and later)
/// takes ENOSYS from clone3 as "an older kernel" and calls clone, whose flags the filter
/// checks. The three instructions only ever refuse (a jump forward into the unchanged
/// program otherwise), so the program behind them means what seccompiler compiled.
fn with_clone3_refused(program: BpfProgram) -> BpfProgram {
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    // seccomp_data.nr is at offset 0. The architecture check comes after, in seccompiler's
    // program: refusing clone3's number under any architecture only refuses more.
    let mut out = vec![
        stmt(BPF_LD_W_ABS, 0),
        sock_filter {
            code: BPF_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_clone3 as u32,
        },
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ];
    out.extend(program);
    out
}

/// Every kind's compiled filter, once [`enable`]d: filters are on for this process.
static FILTERS: OnceLock<Filters> = OnceLock::new();

struct Filters {
    programs: Vec<(ThreadKind, BpfProgram)>,
}

impl Filters {
    fn get(&self, kind: ThreadKind) -> &BpfProgram {
        &self
            .programs
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("every kind is compiled")
            .1
    }
}

/// Compiles every kind's filter and installs the SIGSYS handler: from now on each thread
/// [`install`]s its kind's filter. Called once, by a jailed VMM.
pub fn enable() -> Result<(), SeccompError> {
    let programs = ThreadKind::ALL
        .into_iter()
        .map(|k| compile(k).map(|p| (k, p)))
        .collect::<Result<Vec<_>, _>>()?;
    install_sigsys_handler()?;
    let _ = FILTERS.set(Filters { programs });
    Ok(())
}

/// Whether threads install filters ([`enable`] was called).
pub fn enabled() -> bool {
    FILTERS.get().is_some()
}

/// Installs `kind`'s filter on the calling thread if filters are [`enable`]d.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    match FILTERS.get() {
        Some(filters) => apply_program(kind, filters.get(kind)),
        None => Ok(()),
    }
}

/// Installs `kind`'s filter on the calling thread, whether or not filters are enabled for
/// the process, with the SIGSYS handler. For tests that check a filter in a child process.
#[doc(hidden)]
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let program = compile(kind)?;
    install_sigsys_handler()?;
    apply_program(kind, &program)
}

fn apply_program(kind: ThreadKind, program: &BpfProgram) -> Result<(), SeccompError> {
    remember_thread_name();
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
        kind: kind.name(),
        source,
    })
}

/// Starts a thread named `name` that installs `kind`'s filter (when filters are enabled)
/// before it runs `f`, and returns once the filter is in place: an install that failed is
/// this call's error, and `f` never runs unfiltered.
pub fn spawn<F>(kind: ThreadKind, name: String, f: F) -> Result<JoinHandle<()>, SeccompError>
where
    F: FnOnce() + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // Capabilities first (capset is in no filter): the fs threads hold the file
            // capabilities of a jailed VMM (`jail::FS_CAPS`), every other thread none.
            let caps = match kind {
                ThreadKind::Fs => crate::jail::enter_fs_thread(),
                _ => crate::jail::drop_thread_caps(),
            };
            let installed = caps
                .map_err(|source| SeccompError::Caps {
                    name: thread_name(),
                    source,
                })
                .and_then(|()| install(kind));
            let ok = installed.is_ok();
            let _ = tx.send(installed);
            if ok {
                f();
            }
        })
        .map_err(|source| SeccompError::Spawn {
            name: name.clone(),
            source,
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(SeccompError::Gone(name)),
    }
}

/// The calling thread's name, for errors.
fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_string()
}

// --- the SIGSYS report ---

thread_local! {
    /// The calling thread's name, copied when it installs its filter, for the SIGSYS
    /// handler (which may neither allocate nor lock). Empty in a thread that inherited
    /// its filter; the handler asks the kernel then.
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// Copies the calling thread's name as the kernel keeps it (`comm`, what
/// `/proc/PID/task/TID/comm` shows) for the SIGSYS handler.
pub fn remember_thread_name() {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL-terminated, into the buffer.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0) };
    name[15] = 0;
    THREAD_NAME.with(|c| c.set(name));
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(SeccompError::Handler)
}

/// The system call a SIGSYS from seccomp reports: `siginfo_t._sigsys._syscall`, the
/// fourth 32-bit word after the 16-byte header (`si_signo`, `si_errno`, `si_code`, padding,
/// then `_call_addr`).
const SI_SYSCALL_WORD: usize = 6;

/// Writes `hull-vmm: seccomp: thread <comm> made a forbidden system call <nr> (<name>);
/// the VMM stops` to stderr and exits with [`SECCOMP_EXIT_CODE`]. Async-signal-safe: a
/// stack buffer, the thread-local name (a constant-initialised `Cell`, no destructor),
/// `prctl(PR_GET_NAME)`, `write` and `_exit`, each allowed by every filter.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t (128 bytes) for a SA_SIGINFO handler;
    // the word is inside it.
    let word = unsafe { info.cast::<i32>().add(SI_SYSCALL_WORD) };
    // SAFETY: for SIGSYS the union holds `_sigsys`, whose `_syscall` is that word.
    let nr = unsafe { word.read() };
    let mut name = THREAD_NAME.with(Cell::get);
    if name[0] == 0 {
        // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer we pass.
        unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0) };
        name[15] = 0;
    }
    let mut line = Line::new();
    line.push(b"hull-vmm: seccomp: thread ");
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    line.push(&name[..len]);
    line.push(b" made a forbidden system call ");
    line.push_number(i64::from(nr));
    line.push(b" (");
    let call = usize::try_from(nr)
        .ok()
        .and_then(|i| SYSCALL_NAMES.get(i))
        .filter(|n| !n.is_empty())
        .map_or(&b"unknown"[..], |n| n.as_bytes());
    line.push(call);
    line.push(b"); the VMM stops\n");
    line.write_to_stderr();
    // SAFETY: _exit ends the process without running anything of this one.
    unsafe { libc::_exit(SECCOMP_EXIT_CODE) };
}

/// A line built on the stack.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 160],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut v: i64) {
        if v < 0 {
            self.push(b"-");
            v = v.wrapping_neg();
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut u = v as u64;
        loop {
            i -= 1;
            digits[i] = b'0' + (u % 10) as u8;
            u /= 10;
            if u == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn write_to_stderr(&self) {
        let mut rest = &self.buf[..self.len];
        while !rest.is_empty() {
            // SAFETY: write reads `rest.len()` bytes of a live buffer.
            let n = unsafe { libc::write(libc::STDERR_FILENO, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                return;
            }
            rest = &rest[n as usize..];
        }
    }
}

#[cfg(test)]
mod tests;
