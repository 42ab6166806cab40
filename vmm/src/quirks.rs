//! Work-arounds for hosts whose KVM emulates guest kernel mode in software (kvm_pvm).
//!
//! On such hosts (see docs/kvm-hosts.md) every guest-kernel instruction goes through KVM's
//! instruction emulator, which cannot execute a handful of instructions and stops the vCPU
//! with `KVM_EXIT_INTERNAL_ERROR` (emulation failure) instead. hull copes in three ways:
//! - command-line options that keep Linux away from the instructions it can avoid
//!   (`noxsave`, `clearcpuid=...`), and away from the byte-string forms of memset/memcpy,
//!   which the emulator runs several times slower than the quadword forms;
//! - recovery in the VMM for the two it cannot avoid: `int3` (the kernel's boot self-test)
//!   becomes an injected #BP, and `fwait` (run when a task's FPU state is dropped) is
//!   skipped, which is exactly its effect when no x87 exception is pending;
//! - for anything else, a diagnostic naming the RIP, the instruction bytes and, where
//!   known, the command-line option that avoids it.
//!
//! This module decides whether the quirks apply (and the command line they add); what a
//! vCPU does about one failed instruction is `vstate::emulation`.
//!
//! On hardware-assisted KVM none of this is applied.

use std::path::Path;
use std::time::Instant;

use crate::config::QuirksMode;

/// Options that steer the guest kernel away from instructions the emulator lacks.
pub const EMULATED_HOST_CMDLINE: &str = "noxsave clearcpuid=popcnt,cx16,smap,erms,fsrm";

pub use hull_vmm_api::host::HostMode;

/// Resolves the configured mode against the host.
pub fn resolve(mode: QuirksMode) -> HostMode {
    match mode {
        QuirksMode::On => HostMode::Emulated {
            why: "quirks = on in the configuration".into(),
        },
        QuirksMode::Off => HostMode::Hardware,
        QuirksMode::Auto => detect_host(Path::new("/sys/module")),
    }
}

/// Detects a software-emulating KVM by its module. Only when neither it nor a
/// hardware-assisted KVM module is loaded (KVM built into the host kernel) does it time a
/// short guest loop (see [`calibrate`]): that costs a throw-away VM, which has no place on
/// every VM start of an ordinary host.
pub fn detect_host(sys_module: &Path) -> HostMode {
    if let Some(mode) = hull_vmm_api::host::detect_by_module(sys_module) {
        return mode;
    }
    match calibrate() {
        Ok(ns) if ns > CALIBRATION_THRESHOLD_NS => HostMode::Emulated {
            why: format!("a calibration loop ran at {ns:.0} ns per guest kernel instruction"),
        },
        Ok(_) => HostMode::Hardware,
        Err(e) => {
            log::warn!("host calibration failed ({e}); assuming hardware-assisted KVM");
            HostMode::Hardware
        }
    }
}

/// Hardware runs the loop at well under 1 ns per instruction; the emulator at about 1 µs.
const CALIBRATION_THRESHOLD_NS: f64 = 50.0;
const CALIBRATION_ITERATIONS: u16 = 4000;

/// Runs `mov cx, N; 1: dec cx; jnz 1b; hlt` in a throw-away real-mode guest and returns
/// the nanoseconds per instruction.
pub fn calibrate() -> Result<f64, crate::vstate::vcpu::VcpuError> {
    let n = CALIBRATION_ITERATIONS.to_le_bytes();
    let code = [0xb9, n[0], n[1], 0x49, 0x75, 0xfd, 0xf4];
    let start = Instant::now();
    crate::vstate::vcpu::run_real_mode_snippet(&code)?;
    let elapsed = start.elapsed().as_nanos() as f64;
    Ok(elapsed / (2.0 * f64::from(CALIBRATION_ITERATIONS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_kvm_pvm_by_module() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("kvm_pvm")).unwrap();
        assert!(detect_host(d.path()).is_emulated());
    }

    #[test]
    fn hardware_kvm_module_means_hardware_without_calibrating() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("kvm_intel")).unwrap();
        assert_eq!(detect_host(d.path()), HostMode::Hardware);
    }

    #[test]
    fn explicit_modes_override_detection() {
        assert_eq!(resolve(QuirksMode::Off), HostMode::Hardware);
        assert!(resolve(QuirksMode::On).is_emulated());
    }
}
