//! What a vCPU does about an instruction the host's KVM could not emulate
//! (`KVM_EXIT_INTERNAL_ERROR`): on a host whose KVM emulates guest kernel code (see
//! `quirks`) the two instructions Linux cannot avoid are recovered; anything else stops
//! the VM with the instruction bytes and, where known, the boot option that avoids it.

/// What to do about an emulation failure at an instruction starting with `bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// `int3`: advance RIP past it and inject #BP, as the CPU would have.
    InjectBreakpoint,
    /// `fwait`: advance RIP by one byte.
    Skip(u64),
    /// Stop the VM with this explanation.
    Fatal(String),
}

/// Decides how to handle an emulation failure. `emulated_host` says whether recovery is
/// allowed at all (it never is on hardware KVM).
pub fn on_emulation_failure(bytes: &[u8], emulated_host: bool) -> Recovery {
    if emulated_host {
        match bytes.first() {
            Some(0xcc) => return Recovery::InjectBreakpoint,
            Some(0x9b) => return Recovery::Skip(1),
            _ => {}
        }
    }
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let cure = likely_cure(bytes)
        .unwrap_or("not a known case; report it with the bytes above and the guest kernel version");
    Recovery::Fatal(format!(
        "instruction bytes [{}]; likely cure: {cure}",
        hex.join(" ")
    ))
}

fn likely_cure(b: &[u8]) -> Option<&'static str> {
    // Skip legacy and REX prefixes to find the opcode.
    let mut i = 0;
    while i < b.len() && matches!(b[i], 0x66 | 0xf0 | 0xf2 | 0xf3 | 0x40..=0x4f) {
        i += 1;
    }
    let op = &b[i.min(b.len())..];
    match op {
        [0x0f, 0x01, 0xca | 0xcb, ..] => Some("clac/stac: boot the guest with clearcpuid=smap"),
        [0x0f, 0xae, modrm, ..] if (modrm >> 3) & 7 >= 4 && (modrm >> 3) & 7 <= 6 => {
            Some("xsave family: boot the guest with noxsave")
        }
        [0x0f, 0xb8, ..] => Some("popcnt: boot the guest with clearcpuid=popcnt"),
        [0x0f, 0xc7, modrm, ..] if (modrm >> 3) & 7 == 1 => {
            Some("cmpxchg16b: boot the guest with clearcpuid=cx16")
        }
        [0xcc, ..] => Some("int3 on a hardware host: set quirks = on if this host emulates"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int3_and_fwait_recover_only_on_emulated_hosts() {
        assert_eq!(
            on_emulation_failure(&[0xcc, 0x90], true),
            Recovery::InjectBreakpoint
        );
        assert_eq!(on_emulation_failure(&[0x9b], true), Recovery::Skip(1));
        assert!(matches!(
            on_emulation_failure(&[0xcc], false),
            Recovery::Fatal(_)
        ));
        assert!(matches!(
            on_emulation_failure(&[0x9b], false),
            Recovery::Fatal(_)
        ));
    }

    #[test]
    fn diagnostic_names_bytes_and_cure() {
        let Recovery::Fatal(msg) = on_emulation_failure(&[0x0f, 0x01, 0xcb], true) else {
            panic!("stac must not be recovered");
        };
        assert!(msg.contains("0f 01 cb"), "{msg}");
        assert!(msg.contains("clearcpuid=smap"), "{msg}");
        let Recovery::Fatal(msg) = on_emulation_failure(&[0x48, 0x0f, 0xae, 0x27], true) else {
            panic!()
        };
        assert!(msg.contains("noxsave"), "{msg}");
        let Recovery::Fatal(msg) = on_emulation_failure(&[0xf3, 0x48, 0x0f, 0xb8, 0xc7], true)
        else {
            panic!()
        };
        assert!(msg.contains("popcnt"), "{msg}");
        let Recovery::Fatal(msg) = on_emulation_failure(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e], true)
        else {
            panic!()
        };
        assert!(msg.contains("cx16"), "{msg}");
    }

    #[test]
    fn unknown_instruction_is_fatal_with_a_report_hint() {
        let Recovery::Fatal(msg) = on_emulation_failure(&[0x0f, 0x0b], true) else {
            panic!()
        };
        assert!(msg.contains("0f 0b") && msg.contains("report"), "{msg}");
        assert!(matches!(
            on_emulation_failure(&[], true),
            Recovery::Fatal(_)
        ));
    }
}
