//! The VMM's jail: what a `hull-vmm` becomes once it holds every host resource its VM
//! needs, before the first vCPU runs guest code.
//!
//! The host's launcher starts the VMM as root in new mount, PID, IPC and UTS namespaces
//! (`hull-host`'s `launcher.rs`); it opens the kernel, the images, `/dev/kvm`, its taps
//! and sockets as root, then [`enter`]s the jail:
//!
//! 1. a private copy of the mount table, and on `jail.root` a small tmpfs holding only
//!    `/dev/{kvm,null,urandom}` (bind mounts) and a `/proc` of its own PID namespace (the
//!    virtio-fs server reopens files through `/proc/self/fd`); `pivot_root` into it, the
//!    host's tree detached, the new root read-only;
//! 2. resource limits: open files, threads of its uid, no core dumps (guest memory);
//! 3. no supplementary groups, the jail's gid and uid (all three of each), the bounding
//!    and inheritable sets empty, [`FS_CAPS`] left only in the permitted set (for the fs
//!    threads started next; every thread then keeps none, see [`drop_thread_caps`]),
//!    `no_new_privs`;
//! 4. the parent-death signal re-armed (a uid change clears it), then the lifeline pipe
//!    checked, so a launcher that died in between is not missed.
//!
//! From then on the VMM opens no host path: the host hands it descriptors
//! (`hull_vmm_api::handoff`). Each step that fails is an error naming the step, and the
//! VMM exits before the guest runs. Everything here runs while the VMM has one thread,
//! as `unshare(CLONE_NEWNS)` and the credential calls require.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use hull_vmm_api::config::JailConfig;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {step}")]
    Step {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: uid and gid must not be 0 (got {uid}:{gid})")]
    Root { uid: u32, gid: u32 },
    #[error("jail: the launching process is gone; not starting the guest")]
    Orphaned,
    #[error("jail: {0} threads run already; the jail must be entered while the VMM has one, or the others stay outside it")]
    Threads(usize),
}

/// The devices a jailed VMM may open: it already holds `/dev/kvm` and its VM, but the
/// drive slots reopen `/dev/null` for an empty slot.
const DEVICES: &[&str] = &["kvm", "null", "urandom"];

fn step(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let step = what.into();
    move |source| JailError::Step { step, source }
}

/// Returns `Ok` when `ret` is not negative, the OS error otherwise.
fn check(ret: libc::c_int) -> std::io::Result<()> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("paths from the config hold no NUL")
}

fn mount(
    source: Option<&CStr>,
    target: &Path,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> std::io::Result<()> {
    let target = cpath(target);
    let ptr = |c: Option<&CStr>| c.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null
    // where mount(2) allows it.
    check(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    })
}

/// Confines this process as `jail` says. Called once, with one thread running.
pub fn enter(jail: &JailConfig) -> Result<(), JailError> {
    if jail.uid == 0 || jail.gid == 0 {
        return Err(JailError::Root {
            uid: jail.uid,
            gid: jail.gid,
        });
    }
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        log::warn!("jail: not started in a PID namespace of its own (the launcher sets one up); other processes stay visible to it");
    }
    // A thread started earlier would keep the host's root, mount namespace, bounding set
    // and privileges: every thread must be created inside the jail.
    let threads = std::fs::read_dir("/proc/thread-self/..")
        .map(|d| d.count())
        .map_err(step("count this process's threads"))?;
    if threads != 1 {
        return Err(JailError::Threads(threads));
    }
    // Read while the host's /proc is still there (the jail's shows only PID directories).
    let last_cap = last_cap();
    build_root(&jail.root)?;
    limit_resources(jail)?;
    drop_privileges(jail.uid, jail.gid, last_cap)?;
    arm_parent_death(jail.lifeline_fd)?;
    log::info!(
        "jail: entered (uid {}, gid {}, no capabilities but the fs threads' two, {} open files)",
        jail.uid,
        jail.gid,
        jail.max_open_files
    );
    Ok(())
}

/// A private mount namespace whose root is a tmpfs holding the devices and `/proc`.
fn build_root(root: &Path) -> Result<(), JailError> {
    // SAFETY: unshare only changes this process's namespaces.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) })
        .map_err(step("unshare the mount, IPC and UTS namespaces"))?;
    // Nothing mounted from here on reaches the host, and the host's later mounts do not
    // reach the jail.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(step("make the mount tree private"))?;
    let hidden = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(
        Some(c"hull-jail"),
        root,
        Some(c"tmpfs"),
        hidden,
        Some(c"mode=0755,size=64k,nr_inodes=64"),
    )
    .map_err(step(format!("mount a tmpfs on {}", root.display())))?;
    let dev = root.join("dev");
    std::fs::create_dir(&dev).map_err(step("create /dev in the jail"))?;
    // Not left to the launcher's umask: the VMM's uid must reach /dev/null.
    std::fs::set_permissions(&dev, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(step("open /dev in the jail to its uid"))?;
    for name in DEVICES {
        let host = PathBuf::from("/dev").join(name);
        let inside = dev.join(name);
        std::fs::File::create(&inside).map_err(step(format!("create /dev/{name}")))?;
        mount(Some(&cpath(&host)), &inside, None, libc::MS_BIND, None)
            .map_err(step(format!("bind {} into the jail", host.display())))?;
    }
    let proc = root.join("proc");
    std::fs::create_dir(&proc).map_err(step("create /proc in the jail"))?;
    // Only the process directories of this PID namespace (the VMM's own), where the
    // kernel supports it (5.8).
    mount(
        Some(c"proc"),
        &proc,
        Some(c"proc"),
        hidden,
        Some(c"subset=pid"),
    )
    .or_else(|_| mount(Some(c"proc"), &proc, Some(c"proc"), hidden, None))
    .map_err(step("mount /proc in the jail"))?;
    // The old root is stacked under the new one and then detached (pivot_root(".", ".")).
    std::env::set_current_dir(root).map_err(step("enter the jail directory"))?;
    let dot = c".";
    // SAFETY: pivot_root takes two NUL-terminated paths that outlive the call.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as i32 })
        .map_err(step("pivot_root into the jail"))?;
    // SAFETY: umount2 takes a NUL-terminated path.
    check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })
        .map_err(step("detach the host's mount tree"))?;
    std::env::set_current_dir("/").map_err(step("chdir to the jail's root"))?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | hidden,
        None,
    )
    .map_err(step("make the jail's root read-only"))?;
    let name = c"hull-vmm";
    // SAFETY: sethostname reads `len` bytes of `name`; the UTS namespace is our own.
    check(unsafe { libc::sethostname(name.as_ptr(), name.count_bytes()) })
        .map_err(step("set the jail's host name"))?;
    Ok(())
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64, what: &str) -> Result<(), JailError> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct we pass.
    check(unsafe { libc::setrlimit(resource, &lim) })
        .map_err(step(format!("limit {what} to {value}")))
}

fn limit_resources(jail: &JailConfig) -> Result<(), JailError> {
    set_limit(libc::RLIMIT_NOFILE, jail.max_open_files, "open files")?;
    set_limit(libc::RLIMIT_NPROC, jail.max_threads, "threads")?;
    set_limit(libc::RLIMIT_CORE, 0, "core dumps")
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

fn drop_privileges(uid: u32, gid: u32, last_cap: u32) -> Result<(), JailError> {
    for cap in 0..=last_cap {
        // SAFETY: PR_CAPBSET_DROP takes a capability number; EINVAL for numbers this
        // kernel does not know is ignored.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(step("empty the capability bounding set")(
                std::io::Error::last_os_error(),
            ));
        }
    }
    // SAFETY: setgroups with a zero count reads nothing.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })
        .map_err(step("drop supplementary groups"))?;
    // The permitted set survives the uid change (effective is cleared), so that the
    // virtio-fs worker can be started holding FS_CAPS; every thread then narrows it.
    // SAFETY: prctl with PR_SET_KEEPCAPS and constant arguments.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })
        .map_err(step("keep capabilities across the uid change"))?;
    // SAFETY: plain id changes; glibc applies them to every thread (there is one).
    check(unsafe { libc::setresgid(gid, gid, gid) }).map_err(step(format!("become gid {gid}")))?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map_err(step(format!("become uid {uid}")))?;
    // SAFETY: prctl with PR_SET_KEEPCAPS and constant arguments.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) })
        .map_err(step("stop keeping capabilities"))?;
    set_thread_caps(FS_CAPS, 0).map_err(step("narrow the permitted capabilities"))?;
    JAILED.store(true, Ordering::SeqCst);
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS and constant arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(step("set no_new_privs"))
}

/// The capabilities the virtio-fs worker thread holds, and no other thread:
/// CAP_DAC_OVERRIDE and CAP_FOWNER, so that a share behaves for the guest as the host
/// directory does for root (a writable hostPath or `-v` directory owned by someone else,
/// a `chmod` by the guest's root of a file it does not own). The guest kernel has already
/// checked its own users' permissions (virtio-fs mounts with `default_permissions`); the
/// host's check would otherwise be the VMM uid's. In the jail the only files within reach
/// are the shared directories (and the jail's devices, which the VMM holds already), so
/// these give a compromised VMM nothing the guest's root does not have through the share.
pub const FS_CAPS: u64 = (1 << CAP_DAC_OVERRIDE) | (1 << CAP_FOWNER);

/// From linux/capability.h.
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_FOWNER: u32 = 3;

static JAILED: AtomicBool = AtomicBool::new(false);

/// Sets the calling thread's permitted and effective sets (inheritable emptied).
fn set_thread_caps(permitted: u64, effective: u64) -> std::io::Result<()> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let word = |caps: u64, i: usize| (caps >> (32 * i)) as u32;
    let data = [0, 1].map(|i| CapData {
        effective: word(effective, i),
        permitted: word(permitted, i),
        inheritable: 0,
    });
    // SAFETY: capset reads a v3 header and two data structs, both valid; it changes the
    // calling thread only (the raw system call, not a process-wide wrapper).
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as i32 })
}

/// The virtio-fs worker's start: raises [`FS_CAPS`] for this thread. A no-op outside
/// a jail (the VMM is root there).
pub fn enter_fs_thread() -> std::io::Result<()> {
    if JAILED.load(Ordering::SeqCst) {
        set_thread_caps(FS_CAPS, FS_CAPS)?;
    }
    Ok(())
}

/// Every other thread's start, and the main thread's once the fs worker exists: no
/// capability left in any set. A no-op outside a jail.
pub fn drop_thread_caps() -> std::io::Result<()> {
    if JAILED.load(Ordering::SeqCst) {
        set_thread_caps(0, 0)?;
    }
    Ok(())
}

/// Re-arms SIGKILL on the launcher's death (the uid change cleared it), then looks at
/// the lifeline: if every write end is already closed, the launcher died before the
/// re-arm and the signal will never come.
fn arm_parent_death(lifeline: Option<RawFd>) -> Result<(), JailError> {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })
        .map_err(step("arm the parent-death signal"))?;
    let Some(fd) = lifeline else { return Ok(()) };
    let mut pfd = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd we pass.
    check(unsafe { libc::poll(&mut pfd, 1, 0) }).map_err(step("check the lifeline pipe"))?;
    // SAFETY: the lifeline is ours (inherited for this check) and used nowhere else.
    unsafe { libc::close(fd) };
    if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
        return Err(JailError::Orphaned);
    }
    Ok(())
}
