//! The guest kernel command line: hull's defaults, the host quirks, the devices, then the
//! operator's additions (last, so they can override).
//!
//! Every default below removes guest-kernel work or makes an outcome observable to the VMM;
//! docs/guest-kernel.md measures them.

use linux_loader::cmdline::Cmdline;

use crate::arch::x86_64::layout::VIRTIO_MMIO_SIZE;

/// Linux's x86 COMMAND_LINE_SIZE.
pub const CMDLINE_CAPACITY: usize = 2048;

/// Always on the command line.
pub const BASE: &[&str] = &[
    // The only console: COM1, driven by the VMM's 16550A.
    "console=ttyS0",
    // Reset through the i8042 (the VMM's exit path). Ordinary reboots are "cold"; the
    // reboot Linux performs after a panic is "warm", so the VMM can tell them apart by
    // the BIOS warm-reset flag (see devices::i8042).
    "reboot=k,cold,panic_warm",
    // Reboot at once on panic instead of spinning forever.
    "panic=-1",
    // Console output is slow (an emulated UART write per byte); errors still print.
    "quiet",
    // No PIT-through-IOAPIC timer check: the in-kernel irqchip is known good.
    "no_timer_check",
    // Skip mapping-permission changes at the end of boot.
    "rodata=off",
    // No hardware random source to credit beyond virtio-rng; trust RDRAND if present.
    "random.trust_cpu=on",
];

#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error(
        "the kernel command line would exceed {CMDLINE_CAPACITY} bytes; shorten cmdline_extra"
    )]
    TooLong(#[source] linux_loader::cmdline::Error),
    #[error("cmdline_extra contains an invalid character (only printable ASCII is allowed)")]
    Invalid(#[source] linux_loader::cmdline::Error),
}

/// One virtio-mmio device as announced to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: u64,
    pub irq: u32,
}

#[derive(Debug, Default)]
pub struct CmdlineSpec<'a> {
    /// Quirk options for this host, if any.
    pub quirks: Option<&'a str>,
    pub devices: &'a [MmioDevice],
    /// `root=` device name (`vda`, ...) and its filesystem type.
    pub root: Option<(String, Option<String>, bool)>,
    pub extra: &'a str,
}

fn map_err(e: linux_loader::cmdline::Error) -> CmdlineError {
    match e {
        linux_loader::cmdline::Error::TooLarge => CmdlineError::TooLong(e),
        other => CmdlineError::Invalid(other),
    }
}

pub fn build(spec: &CmdlineSpec<'_>) -> Result<Cmdline, CmdlineError> {
    let mut c = Cmdline::new(CMDLINE_CAPACITY).map_err(map_err)?;
    for opt in BASE {
        c.insert_str(opt).map_err(map_err)?;
    }
    if let Some(q) = spec.quirks {
        c.insert_str(q).map_err(map_err)?;
    }
    for d in spec.devices {
        c.add_virtio_mmio_device(
            VIRTIO_MMIO_SIZE,
            vm_memory::GuestAddress(d.base),
            d.irq,
            None,
        )
        .map_err(map_err)?;
    }
    if let Some((dev, fstype, read_only)) = &spec.root {
        c.insert("root", &format!("/dev/{dev}")).map_err(map_err)?;
        c.insert_str(if *read_only { "ro" } else { "rw" })
            .map_err(map_err)?;
        if let Some(t) = fstype {
            c.insert("rootfstype", t).map_err(map_err)?;
        }
        c.insert("init", "/sbin/init").map_err(map_err)?;
    }
    let extra = spec.extra.trim();
    if !extra.is_empty() {
        c.insert_str(extra).map_err(map_err)?;
    }
    Ok(c)
}

/// `vda`, `vdb`, ... `vdz`, `vdaa`: the name Linux gives the n-th virtio disk.
pub fn disk_name(index: usize) -> String {
    let mut name = String::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        name.insert(0, (b'a' + (n % 26) as u8) as char);
        n /= 26;
    }
    format!("vd{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(c: &Cmdline) -> String {
        c.as_cstring().unwrap().into_string().unwrap()
    }

    #[test]
    fn orders_defaults_quirks_devices_root_then_extra() {
        let devices = [MmioDevice {
            base: 0xd000_0000,
            irq: 5,
        }];
        let c = build(&CmdlineSpec {
            quirks: Some("noxsave"),
            devices: &devices,
            root: Some(("vda".into(), Some("erofs".into()), true)),
            extra: "  loglevel=7 ",
        })
        .unwrap();
        let s = text(&c);
        let pos = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} in {s}"));
        assert!(pos("console=ttyS0") < pos("noxsave"));
        assert!(pos("noxsave") < pos("virtio_mmio.device=4K@0xd0000000:5"));
        assert!(pos("virtio_mmio") < pos("root=/dev/vda ro rootfstype=erofs init=/sbin/init"));
        assert!(s.ends_with("loglevel=7"), "{s}");
    }

    #[test]
    fn quirks_are_absent_on_hardware_hosts() {
        let s = text(&build(&CmdlineSpec::default()).unwrap());
        assert!(!s.contains("clearcpuid"));
        assert!(s.contains("reboot=k,cold,panic_warm"));
    }

    #[test]
    fn rejects_overlong_extra() {
        let extra = "x".repeat(CMDLINE_CAPACITY);
        let err = build(&CmdlineSpec {
            extra: &extra,
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, CmdlineError::TooLong(_)));
    }

    #[test]
    fn rejects_non_printable_extra() {
        let err = build(&CmdlineSpec {
            extra: "a\u{7}b",
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, CmdlineError::Invalid(_)));
    }

    #[test]
    fn names_disks_like_linux() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(25), "vdz");
        assert_eq!(disk_name(26), "vdaa");
    }
}
