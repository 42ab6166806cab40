//! `hull check`: what this host offers hull and what is missing, a line each with its fix;
//! and `hull system prune`: stopped containers, images no container names, stale templates.

use std::path::Path;

use hull_host::config::HostConfig;

use crate::{paths, state, store};

/// One line of `hull check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    /// Needed for `hull run` at all (a missing one makes `check` fail).
    pub needed: bool,
    pub what: String,
    pub fix: Option<String>,
}

fn found(ok: bool, needed: bool, what: impl Into<String>, fix: &str) -> Finding {
    Finding {
        ok,
        needed,
        what: what.into(),
        fix: (!ok).then(|| fix.to_string()),
    }
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .any(|d| d.join(bin).is_file())
}

fn mode_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| {
            format!(
                "mode {:o}, owner {}:{}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            )
        })
        .unwrap_or_default()
}

pub fn check(config: &HostConfig) -> Vec<Finding> {
    let mut out = kvm_findings();
    out.extend(tool_findings(config));
    out.push(template_finding(config));
    out
}

/// Root, /dev/kvm, and how this host's KVM runs guest kernel code.
fn kvm_findings() -> Vec<Finding> {
    let mut out = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    out.push(found(
        root,
        true,
        "running as root",
        "run hull as root (sudo hull ...)",
    ));
    let kvm = Path::new("/dev/kvm");
    let kvm_open = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm)
        .is_ok();
    out.push(found(
        kvm_open,
        true,
        format!("/dev/kvm opens read-write ({})", mode_of(kvm)),
        "load kvm_intel or kvm_amd (modprobe), enable virtualization in the firmware, or add this user to the kvm group",
    ));
    if kvm.exists() {
        use hull_vmm_api::host::{detect_by_module, HostMode};
        out.push(Finding {
            ok: true,
            needed: false,
            what: match detect_by_module(Path::new("/sys/module")) {
                Some(HostMode::Hardware) => {
                    "guest kernel code runs hardware-assisted (VT-x/AMD-V)".into()
                }
                Some(HostMode::Emulated { why }) => format!(
                    "guest kernel code is emulated ({why}): sandboxes work, thousands of times slower (docs/kvm-hosts.md)"
                ),
                None => "KVM is built into the host kernel: hull-vmm times a short guest loop to tell whether guest kernel code is emulated".into(),
            },
            fix: None,
        });
    }
    out
}

/// The guest kernel and image, and the host tools and devices sandboxes use.
fn tool_findings(config: &HostConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    for (what, path) in [
        ("guest kernel", &config.kernel),
        ("guest image", &config.image),
    ] {
        out.push(found(
            path.exists(),
            true,
            format!("{what} {}", path.display()),
            "build it: scripts/build.sh (or set kernel/image in /etc/hull/config.toml)",
        ));
    }
    out.push(found(
        Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        false,
        "cgroup v2 on the host (/sys/fs/cgroup)",
        "boot with systemd.unified_cgroup_hierarchy=1; hull's containers use the guest's cgroups, this is for limits on the VMM",
    ));
    out.push(found(
        which("mkfs.erofs"),
        true,
        "mkfs.erofs (root filesystems and read-only volumes)",
        "apt-get install erofs-utils",
    ));
    out.push(found(
        Path::new("/bin/busybox").exists(),
        false,
        "/bin/busybox (the built-in busybox image)",
        "apt-get install busybox-static, or import an image (hull image import)",
    ));
    let tun = Path::new("/dev/net/tun");
    out.push(found(
        tun.exists(),
        false,
        format!("/dev/net/tun for sandbox networks ({})", mode_of(tun)),
        "modprobe tun",
    ));
    out
}

/// Whether the default sandbox's template is cached.
fn template_finding(config: &HostConfig) -> Finding {
    let templates = hull_host::template::TemplateCache::new(&config.template_dir);
    let vm = config.vm_spec(None);
    let cached = config.templates && matches!(templates.get(&vm), Ok(Some(_)));
    Finding {
        ok: true,
        needed: false,
        what: if !config.templates {
            "templates are off (templates = false): every sandbox boots".into()
        } else if cached {
            format!(
                "a template for the default sandbox is cached in {} (runs restore it)",
                config.template_dir.display()
            )
        } else {
            format!(
                "no template for the default sandbox yet in {}: the first run boots and makes it",
                config.template_dir.display()
            )
        },
        fix: None,
    }
}

/// Prints the findings; returns whether everything needed is there.
pub fn print(findings: &[Finding]) -> bool {
    let mut all = true;
    for f in findings {
        let mark = match (f.ok, f.needed) {
            (true, _) => "ok     ",
            (false, true) => "MISSING",
            (false, false) => "missing",
        };
        match &f.fix {
            Some(fix) => println!("{mark} {}: {fix}", f.what),
            None => println!("{mark} {}", f.what),
        }
        all &= f.ok || !f.needed;
    }
    all
}

/// What `hull system prune` removed.
#[derive(Debug, Default)]
pub struct Pruned {
    pub containers: Vec<String>,
    pub images: Vec<String>,
    pub templates: usize,
}

pub fn prune(config: &HostConfig) -> Pruned {
    let mut p = Pruned::default();
    let records: Vec<state::Record> = state::list().into_iter().flatten().collect();
    for r in &records {
        if !r.is_running() && crate::lifecycle::discard(&r.name).is_ok() {
            p.containers.push(r.name.clone());
        }
    }
    let in_use: Vec<String> = records
        .iter()
        .filter(|r| r.is_running())
        .map(|r| store::full_name(&r.image))
        .collect();
    for name in store::refs(&paths::images()).into_keys() {
        if !in_use.contains(&name) && store::remove(&paths::images(), &name).unwrap_or(false) {
            p.images.push(name);
        }
    }
    p.templates = hull_host::template::TemplateCache::new(&config.template_dir).prune_stale();
    p
}
