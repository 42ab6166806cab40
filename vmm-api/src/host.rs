//! How this host's KVM runs guest kernel code: hardware-assisted (VT-x/AMD-V) or emulated
//! instruction by instruction (kvm_pvm; docs/kvm-hosts.md). The VMM applies its quirks on
//! an emulated host; `hull check` reports which it is.

use std::path::Path;

/// How the host runs guest kernel code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMode {
    /// VT-x/AMD-V: guest kernel code runs natively.
    Hardware,
    /// Guest kernel code is emulated instruction by instruction; `why` says how we know.
    Emulated { why: String },
}

impl HostMode {
    pub fn is_emulated(&self) -> bool {
        matches!(self, HostMode::Emulated { .. })
    }
}

/// The host mode as the loaded KVM module tells it (`sys_module` is `/sys/module`), or
/// `None` when no known module is loaded (KVM built into the host kernel): then only
/// timing a guest loop tells, which the VMM does (`hull_vmm::quirks::detect_host`).
pub fn detect_by_module(sys_module: &Path) -> Option<HostMode> {
    if sys_module.join("kvm_pvm").exists() {
        return Some(HostMode::Emulated {
            why: "the kvm_pvm module provides /dev/kvm".into(),
        });
    }
    ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| sys_module.join(m).exists())
        .then_some(HostMode::Hardware)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_names_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect_by_module(dir.path()), None);
        std::fs::create_dir(dir.path().join("kvm_intel")).unwrap();
        assert_eq!(detect_by_module(dir.path()), Some(HostMode::Hardware));
        std::fs::create_dir(dir.path().join("kvm_pvm")).unwrap();
        assert!(detect_by_module(dir.path()).unwrap().is_emulated());
    }
}
