//! Each thread kind's seccomp filter, installed for real: a child process (this test binary
//! again, running only the ignored `child` test, told what to do by an environment
//! variable) starts a thread named `probe`, installs one kind's filter on it the way the
//! VMM does (`hull_vmm::seccomp::apply`: the same compiled program and SIGSYS handler),
//! and makes system calls. What the kind needs goes through and the child exits 0; what
//! it does not make stops the child with exit status 159 and one line on stderr naming the
//! thread and the call. A separate process per case: a filter cannot be removed, and a
//! forbidden call ends the whole process.

use std::os::fd::AsRawFd;
use std::process::Command;

use hull_vmm::seccomp::{ThreadKind, SECCOMP_EXIT_CODE};

mod common;
use common::kvm_available;

const CASE: &str = "HULL_SECCOMP_TEST_CASE";
/// A directory the parent made (and removes) for the child's files.
const DIR: &str = "HULL_SECCOMP_TEST_DIR";

/// Runs `case` in a child; returns its exit status and stderr.
fn run(case: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CASE, case)
        .env(DIR, dir.path())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_allowed(case: &str) {
    let (code, stderr) = run(case);
    assert_eq!(code, Some(0), "{case}: {stderr}");
    assert!(
        stderr.contains(&format!("{case}: done")),
        "{case}: {stderr}"
    );
}

fn assert_stopped_at(case: &str, nr: libc::c_long, name: &str) {
    let (code, stderr) = run(case);
    assert_eq!(code, Some(SECCOMP_EXIT_CODE), "{case}: {stderr}");
    let line = format!(
        "hull-vmm: seccomp: thread probe made a forbidden system call {nr} ({name}); the VMM stops\n"
    );
    assert!(
        stderr.contains(&line),
        "{case}: want {line:?} in {stderr:?}"
    );
    assert!(
        !stderr.contains(&format!("{case}: done")),
        "{case}: {stderr}"
    );
}

#[test]
fn the_event_loop_filter_serves_devices_but_refuses_mounts_threads_and_inet_sockets() {
    assert_allowed("vmm-allowed");
    assert_stopped_at("vmm-mount", libc::SYS_mount, "mount");
    // std::thread::spawn: clone3 gets ENOSYS, and the clone glibc falls back to is
    // refused. glibc blocks every signal around that clone, and the kernel kills a
    // thread whose SIGSYS is blocked: the VMM stops without its line.
    let (code, stderr) = run("vmm-thread");
    assert_eq!(code, None, "vmm-thread: {stderr}");
    assert!(!stderr.contains("vmm-thread: done"), "{stderr}");
    assert_stopped_at("vmm-inet", libc::SYS_socket, "socket");
}

#[test]
fn the_vcpu_filter_runs_the_guest_but_refuses_other_ioctls_and_sockets() {
    assert_stopped_at("vcpu-ioctl", libc::SYS_ioctl, "ioctl");
    assert_stopped_at("vcpu-socket", libc::SYS_socket, "socket");
    assert_stopped_at("vcpu-open", libc::SYS_openat, "openat");
    if kvm_available() {
        assert_allowed("vcpu-allowed");
    }
}

#[test]
fn the_fs_filter_works_on_files_and_starts_threads_but_cannot_exec_or_fork() {
    assert_allowed("fs-allowed");
    assert_stopped_at("fs-exec", libc::SYS_execve, "execve");
    assert_stopped_at("fs-fork", libc::SYS_clone, "clone");
    assert_stopped_at("fs-inet", libc::SYS_socket, "socket");
}

#[test]
fn the_api_filter_takes_descriptors_and_writes_files_but_cannot_trace_or_exec() {
    assert_allowed("api-allowed");
    assert_stopped_at("api-ptrace", libc::SYS_ptrace, "ptrace");
    assert_stopped_at("api-exec", libc::SYS_execve, "execve");
    assert_stopped_at("api-kill", libc::SYS_kill, "kill");
}

/// The child side: ignored in a normal run, run by the tests above with `CASE` set.
#[test]
#[ignore = "the child process of the seccomp filter tests"]
fn child() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    let kind: ThreadKind = case.split('-').next().unwrap().parse().unwrap();
    let prepared = prepare(&case);
    let probe = std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || {
            hull_vmm::seccomp::apply(kind).unwrap();
            exercise(&case, prepared);
            eprintln!("{case}: done");
            // SAFETY: ends the process at once, without the test harness's own calls.
            unsafe { libc::_exit(0) };
        })
        .unwrap();
    let _ = probe.join();
    unreachable!("the probe thread ends the process");
}

/// What a case opens before its filter is in place, as the VMM opens its resources
/// before it filters itself.
#[derive(Default)]
struct Prepared {
    dir: Option<std::path::PathBuf>,
    eventfd: Option<vmm_sys_util::eventfd::EventFd>,
    epoll: Option<vmm_sys_util::epoll::Epoll>,
    handoff: Option<(hull_vmm_api::handoff::HandoffReceiver, u64)>,
    guest: Option<TinyGuest>,
}

/// A one-page real-mode guest that halts, with its vCPU.
struct TinyGuest {
    _kvm: kvm_ioctls::Kvm,
    _vm: kvm_ioctls::VmFd,
    _mem: vm_memory::GuestMemoryMmap,
    vcpu: kvm_ioctls::VcpuFd,
}

fn prepare(case: &str) -> Prepared {
    let mut p = Prepared::default();
    match case {
        "vmm-allowed" => {
            p.eventfd = Some(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap());
            p.epoll = Some(vmm_sys_util::epoll::Epoll::new().unwrap());
        }
        "fs-allowed" => p.dir = Some(std::env::var_os(DIR).unwrap().into()),
        "api-allowed" => {
            // A descriptor handed over as the host hands drives and snapshot directories
            // over (hull_vmm_api::handoff), sent before the filter (the host sends).
            let dir = std::path::PathBuf::from(std::env::var_os(DIR).unwrap());
            let file = std::fs::File::create(dir.join("handed")).unwrap();
            let (sender, vmm_end) = hull_vmm_api::handoff::HandoffSender::pair().unwrap();
            let receiver = hull_vmm_api::handoff::HandoffReceiver::new(vmm_end).unwrap();
            let token = sender.send(std::os::fd::AsFd::as_fd(&file)).unwrap();
            p.dir = Some(dir);
            p.handoff = Some((receiver, token));
        }
        "vcpu-allowed" => p.guest = Some(tiny_guest()),
        _ => {}
    }
    p
}

fn tiny_guest() -> TinyGuest {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    mem.write_slice(&[0xf4], GuestAddress(0x1000)).unwrap(); // hlt
    let region = mem.iter().next().unwrap();
    let host = region
        .get_host_address(vm_memory::MemoryRegionAddress(0))
        .unwrap();
    let slot = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: region.len(),
        userspace_addr: host as u64,
    };
    // SAFETY: the region is a live mapping owned by `mem`, kept with the VM.
    unsafe { vm.set_user_memory_region(slot).unwrap() };
    let vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).unwrap();
    TinyGuest {
        _kvm: kvm,
        _vm: vm,
        _mem: mem,
        vcpu,
    }
}

fn exercise(case: &str, p: Prepared) {
    match case {
        "vmm-allowed" => {
            let (evt, epoll) = (p.eventfd.unwrap(), p.epoll.unwrap());
            use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
            epoll
                .ctl(
                    ControlOperation::Add,
                    evt.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, 7),
                )
                .unwrap();
            evt.write(1).unwrap();
            let mut events = [EpollEvent::default(); 4];
            assert_eq!(epoll.wait(0, &mut events).unwrap(), 1);
            assert_eq!(evt.read().unwrap(), 1);
            std::thread::sleep(std::time::Duration::from_millis(1));
            let _ = std::collections::HashMap::<u32, u32>::new();
            // A unix socket is allowed (the vsock device connects to host services).
            // SAFETY: plain socket creation; closed right away.
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            assert!(fd >= 0);
            // SAFETY: `fd` is ours.
            unsafe { libc::close(fd) };
        }
        "vmm-mount" => {
            // SAFETY: mount with NUL-terminated strings; the filter stops it first.
            unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
        }
        "vmm-thread" => {
            let _ = std::thread::spawn(|| {}).join();
        }
        "vmm-inet" | "vcpu-socket" | "fs-inet" => {
            // SAFETY: plain socket creation; the filter stops it first.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }
        "vcpu-allowed" => {
            let mut guest = p.guest.unwrap();
            match guest.vcpu.run().unwrap() {
                kvm_ioctls::VcpuExit::Hlt => {}
                other => panic!("unexpected exit {other:?}"),
            }
            assert_eq!(guest.vcpu.get_regs().unwrap().rip, 0x1001);
            guest.vcpu.get_vcpu_events().unwrap();
        }
        "vcpu-ioctl" => {
            // KVM_CREATE_VCPU: a VM ioctl no vCPU thread makes (the descriptor does not
            // matter; the filter looks at the request).
            // SAFETY: the filter stops the call before the kernel reads anything.
            unsafe { libc::ioctl(0, 0xae41, 0) };
        }
        "vcpu-open" => {
            let _ = std::fs::File::open("/etc/hostname");
        }
        "fs-allowed" => {
            // The *at calls the passthrough file system makes, beneath a directory
            // descriptor.
            let dir = p.dir.unwrap();
            let root = std::fs::File::open(&dir).unwrap();
            let fd = root.as_raw_fd();
            let ok = |r: libc::c_long| {
                assert!(r >= 0, "{}", std::io::Error::last_os_error());
                r as libc::c_int
            };
            let (d, f, g) = (c"d".as_ptr(), c"d/f".as_ptr(), c"d/g".as_ptr());
            // Each call below takes NUL-terminated names, a live directory descriptor and
            // buffers that outlive the call.
            // SAFETY: as said.
            ok(unsafe { libc::syscall(libc::SYS_mkdirat, fd, d, 0o755) });
            let flags = libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC;
            // SAFETY: as above.
            let file = ok(unsafe { libc::syscall(libc::SYS_openat, fd, f, flags, 0o644) });
            // SAFETY: as above.
            ok(unsafe { libc::syscall(libc::SYS_pwrite64, file, b"hello".as_ptr(), 5, 0) });
            let mut buf = [0u8; 5];
            // SAFETY: as above.
            ok(unsafe { libc::syscall(libc::SYS_pread64, file, buf.as_mut_ptr(), 5, 0) });
            assert_eq!(&buf, b"hello");
            // SAFETY: as above.
            ok(unsafe { libc::syscall(libc::SYS_fchmod, file, 0o600) });
            // SAFETY: as above.
            ok(unsafe { libc::syscall(libc::SYS_close, file) });
            // SAFETY: as above.
            ok(unsafe { libc::syscall(libc::SYS_renameat2, fd, f, fd, g, 0) });
            assert_eq!(std::fs::read(dir.join("d/g")).unwrap(), b"hello");
            assert_eq!(std::fs::read_dir(dir.join("d")).unwrap().count(), 1);
            // SAFETY: as above.
            ok(unsafe { libc::syscall(libc::SYS_unlinkat, fd, g, 0) });
            // SAFETY: as above.
            ok(unsafe { libc::syscall(libc::SYS_unlinkat, fd, d, libc::AT_REMOVEDIR) });
            // A session thread, as hull-fs-start makes them (clone3 refused, clone
            // allowed with pthread_create's flags).
            let t = std::thread::Builder::new()
                .name("hull-fs".into())
                .spawn(|| 42)
                .unwrap();
            assert_eq!(t.join().unwrap(), 42);
        }
        "fs-exec" | "api-exec" => {
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            // SAFETY: NUL-terminated path and argument list; the filter stops it first.
            unsafe { libc::execve(argv[0], argv.as_ptr(), std::ptr::null()) };
        }
        "fs-fork" => {
            // SAFETY: a fork (clone with SIGCHLD only); the filter stops it first.
            unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
        }
        "api-allowed" => {
            let (receiver, token) = p.handoff.unwrap();
            let dir = p.dir.unwrap();
            let handed = receiver.take(token).unwrap();
            let received = handed.as_raw_fd();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            assert!(status.contains("Seccomp:\t2"), "{status}");
            std::fs::write(format!("/proc/self/fd/{received}"), b"x").unwrap();
            std::fs::rename(dir.join("handed"), dir.join("state")).unwrap();
            let t = std::thread::spawn(|| 7);
            assert_eq!(t.join().unwrap(), 7);
        }
        "api-ptrace" => {
            // SAFETY: PTRACE_TRACEME takes no pointers; the filter stops it first.
            unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        }
        "api-kill" => {
            // SAFETY: getpid has no preconditions.
            let me = unsafe { libc::getpid() };
            // SAFETY: signal 0 only probes; the filter stops it first.
            unsafe { libc::kill(me, 0) };
        }
        other => panic!("no case {other}"),
    }
}
