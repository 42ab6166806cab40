use super::*;

#[test]
fn every_kind_compiles_to_a_program_the_kernel_takes() {
    for kind in ThreadKind::ALL {
        let program = compile(kind).unwrap();
        // BPF_MAXINSNS.
        assert!(program.len() <= 4096, "{kind:?}: {}", program.len());
        assert!(kind.rules().len() > 20, "{kind:?}");
    }
}

#[test]
fn clone3_is_refused_with_enosys_before_anything_else() {
    let program = compile(ThreadKind::Fs).unwrap();
    assert_eq!((program[0].code, program[0].k), (0x20, 0));
    assert_eq!(
        (program[1].code, program[1].k, program[1].jt, program[1].jf),
        (0x15, libc::SYS_clone3 as u32, 0, 1)
    );
    assert_eq!(
        (program[2].code, program[2].k),
        (0x06, 0x0005_0000 | libc::ENOSYS as u32)
    );
    for kind in ThreadKind::ALL {
        assert!(!kind.rules().contains_key(&libc::SYS_clone3), "{kind:?}");
    }
}

#[test]
fn only_the_kinds_that_start_threads_may_clone_and_only_threads() {
    for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
        assert!(!kind.rules().contains_key(&libc::SYS_clone), "{kind:?}");
    }
    for kind in [ThreadKind::Fs, ThreadKind::Api] {
        let rules = kind.rules();
        let clone = &rules[&libc::SYS_clone];
        assert_eq!(clone.len(), 1, "{kind:?}: one rule, pthread_create's flags");
    }
    assert_eq!(THREAD_CLONE_FLAGS, 0x3d0f00);
}

#[test]
fn no_kind_may_exec_mount_trace_or_change_credentials() {
    for kind in ThreadKind::ALL {
        let rules = kind.rules();
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_ptrace,
            libc::SYS_setuid,
            libc::SYS_setresuid,
            libc::SYS_capset,
            libc::SYS_seccomp,
            libc::SYS_bpf,
            libc::SYS_kill,
            libc::SYS_process_vm_writev,
            libc::SYS_open_by_handle_at,
        ] {
            assert!(
                !rules.contains_key(&nr),
                "{kind:?} allows {}",
                SYSCALL_NAMES[nr as usize]
            );
        }
    }
}

#[test]
fn kvm_request_numbers_are_the_kernels() {
    // From <linux/kvm.h> as the kernel's own headers expand them.
    assert_eq!(vcpu::KVM_RUN(), 0xae80);
    assert_eq!(vcpu::KVM_GET_REGS(), 0x8090_ae81);
    assert_eq!(vcpu::KVM_GET_VCPU_EVENTS(), 0x8040_ae9f);
    assert_eq!(vcpu::KVM_GET_MSRS(), 0xc008_ae88);
    assert_eq!(vcpu::KVM_GET_XSAVE(), 0x9000_aea4);
}

#[test]
fn the_name_table_follows_the_kernels_numbering() {
    assert_eq!(SYSCALL_NAMES[libc::SYS_read as usize], "read");
    assert_eq!(SYSCALL_NAMES[libc::SYS_ioctl as usize], "ioctl");
    assert_eq!(SYSCALL_NAMES[libc::SYS_socket as usize], "socket");
    assert_eq!(SYSCALL_NAMES[libc::SYS_execve as usize], "execve");
    assert_eq!(SYSCALL_NAMES[libc::SYS_clone3 as usize], "clone3");
    assert_eq!(SYSCALL_NAMES[libc::SYS_futex_waitv as usize], "futex_waitv");
    assert_eq!(SYSCALL_NAMES[335], "", "a gap in the numbering");
}

#[test]
fn the_report_line_is_built_without_allocating_and_never_overflows() {
    let mut line = Line::new();
    line.push(b"nr ");
    line.push_number(0);
    line.push(b" ");
    line.push_number(-12);
    line.push(b" ");
    line.push_number(i64::MIN);
    assert_eq!(&line.buf[..line.len], b"nr 0 -12 -9223372036854775808");
    let mut full = Line::new();
    for _ in 0..100 {
        full.push(b"0123456789");
    }
    assert_eq!(full.len, full.buf.len());
}

#[test]
fn kinds_parse_from_their_names() {
    for kind in ThreadKind::ALL {
        assert_eq!(kind.name().parse::<ThreadKind>().unwrap(), kind);
    }
    assert!("main".parse::<ThreadKind>().is_err());
}
