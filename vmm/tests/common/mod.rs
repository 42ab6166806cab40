//! Shared by hull-vmm's integration tests.

/// Whether this user can open /dev/kvm; says `skipped: ...` when not.
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("skipped: /dev/kvm is not available to this user");
    }
    ok
}
