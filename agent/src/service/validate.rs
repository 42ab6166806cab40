//! Checks on what the host sends before anything is created: each refusal names the field
//! and says what is wrong, and becomes an InvalidArgument.
//!
//! libcontainer checks a spec too, but only when it is already cloning processes; refusing
//! here keeps bad input from ever reaching the container mechanics, and lets the message
//! name the field.

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxResources, PosixRlimitType, Process, Spec};

/// The longest symlink chain followed while checking a mount target (Linux's own limit).
const MAX_SYMLINKS: usize = 40;
/// Linux's default `fs.nr_open`, used when /proc cannot be read.
const DEFAULT_NR_OPEN: u64 = 1 << 20;

/// A refused field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn json<T: serde::de::DeserializeOwned>(field: &str, bytes: &[u8]) -> Result<T, Invalid> {
    if bytes.is_empty() {
        return Err(Invalid::new(field, "is empty"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| Invalid::new(field, format!("not valid JSON for this field: {e}")))
}

pub fn parse_spec(bytes: &[u8]) -> Result<Spec, Invalid> {
    json("oci_spec_json", bytes)
}

pub fn parse_process(bytes: &[u8]) -> Result<Process, Invalid> {
    json("oci_process_json", bytes)
}

pub fn parse_resources(bytes: &[u8]) -> Result<LinuxResources, Invalid> {
    json("resources_json", bytes)
}

/// Checks a container's spec; returns its rootfs, canonical, which lies under one of
/// `areas`.
pub fn check_spec(spec: &Spec, areas: &[PathBuf]) -> Result<PathBuf, Invalid> {
    let root = spec.root().as_ref().ok_or_else(|| {
        Invalid::new(
            "root",
            "is missing: the spec must name the container's rootfs",
        )
    })?;
    let rootfs = check_rootfs(root.path(), areas)?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Invalid::new("process", "is missing: the spec must say what to run"))?;
    check_process(process, "process")?;
    if let Some(hostname) = spec.hostname() {
        if hostname.len() > 64 {
            return Err(Invalid::new("hostname", "longer than 64 bytes"));
        }
    }
    for (i, mount) in spec.mounts().iter().flatten().enumerate() {
        let field = format!("mounts[{i}].destination");
        check_mount_target(&rootfs, mount.destination())
            .map_err(|reason| Invalid::new(field, reason))?;
    }
    if let Some(linux) = spec.linux() {
        if let Some(resources) = linux.resources() {
            check_resources(resources, "linux.resources")?;
        }
        for (name, maps) in [
            ("linux.uidMappings", linux.uid_mappings()),
            ("linux.gidMappings", linux.gid_mappings()),
        ] {
            for (i, m) in maps.iter().flatten().enumerate() {
                let field = format!("{name}[{i}]");
                if m.size() == 0 {
                    return Err(Invalid::new(field, "size is 0"));
                }
                if m.container_id().checked_add(m.size()).is_none()
                    || m.host_id().checked_add(m.size()).is_none()
                {
                    return Err(Invalid::new(field, "id + size overflows 32 bits"));
                }
            }
        }
        let mut seen = HashSet::new();
        for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
            if !seen.insert(ns.typ()) {
                return Err(Invalid::new(
                    format!("linux.namespaces[{i}]"),
                    format!("{:?} namespace listed twice", ns.typ()),
                ));
            }
        }
        for key in linux.sysctl().iter().flat_map(|s| s.keys()) {
            if key.is_empty()
                || key.contains('/')
                || key.split('.').any(|p| p.is_empty() || p == "..")
            {
                return Err(Invalid::new(
                    format!("linux.sysctl[{key:?}]"),
                    "not a sysctl name (dotted, like net.ipv4.ip_forward)",
                ));
            }
        }
    }
    Ok(rootfs)
}

fn check_rootfs(path: &Path, areas: &[PathBuf]) -> Result<PathBuf, Invalid> {
    let field = "root.path";
    let names = areas
        .iter()
        .map(|a| a.display().to_string())
        .collect::<Vec<_>>()
        .join(" or ");
    if !path.is_absolute() {
        return Err(Invalid::new(
            field,
            format!(
                "{} is relative; give an absolute path under {names}",
                path.display()
            ),
        ));
    }
    let rootfs = path
        .canonicalize()
        .map_err(|e| Invalid::new(field, format!("{}: {e}", path.display())))?;
    let inside = areas
        .iter()
        .filter_map(|a| a.canonicalize().ok())
        .any(|area| rootfs != area && rootfs.starts_with(&area));
    if !inside {
        return Err(Invalid::new(
            field,
            format!(
                "{} (resolved: {}) is outside the rootfs area ({names})",
                path.display(),
                rootfs.display()
            ),
        ));
    }
    if !rootfs.is_dir() {
        return Err(Invalid::new(
            field,
            format!("{} is not a directory", path.display()),
        ));
    }
    Ok(rootfs)
}

/// Checks an OCI process (a container's or an exec's); `field` prefixes the field names.
pub fn check_process(p: &Process, field: &str) -> Result<(), Invalid> {
    match p.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => {
            return Err(Invalid::new(
                format!("{field}.args"),
                "is empty: nothing to run",
            ))
        }
    }
    if !p.cwd().is_absolute() {
        return Err(Invalid::new(
            format!("{field}.cwd"),
            format!("{} is not absolute", p.cwd().display()),
        ));
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_NR_OPEN);
    let mut seen = Vec::new();
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        let f = format!("{field}.rlimits[{i}]");
        if seen.contains(&r.typ()) {
            return Err(Invalid::new(f, format!("{:?} listed twice", r.typ())));
        }
        seen.push(r.typ());
        if r.soft() > r.hard() {
            return Err(Invalid::new(
                f,
                format!(
                    "soft limit {} is above the hard limit {}",
                    r.soft(),
                    r.hard()
                ),
            ));
        }
        if r.typ() == PosixRlimitType::RlimitNofile && r.hard() > nr_open {
            return Err(Invalid::new(
                f,
                format!(
                    "RLIMIT_NOFILE {} is above the kernel's maximum {nr_open} (fs.nr_open)",
                    r.hard()
                ),
            ));
        }
    }
    if let Some(env) = p.env() {
        for (i, e) in env.iter().enumerate() {
            if !e.contains('=') || e.starts_with('=') || e.contains('\0') {
                return Err(Invalid::new(
                    format!("{field}.env[{i}]"),
                    format!("{e:?} is not NAME=value"),
                ));
            }
        }
    }
    if let Some(size) = p.console_size() {
        if size.height() > u16::MAX as u64 || size.width() > u16::MAX as u64 {
            return Err(Invalid::new(
                format!("{field}.consoleSize"),
                "larger than 65535",
            ));
        }
    }
    Ok(())
}

/// Checks cgroup resources (at create or update).
pub fn check_resources(r: &LinuxResources, field: &str) -> Result<(), Invalid> {
    let limit = |name: &str, v: Option<i64>| -> Result<(), Invalid> {
        match v {
            Some(v) if v < -1 => Err(Invalid::new(
                format!("{field}.{name}"),
                format!("{v} is negative (only -1, unlimited, is allowed)"),
            )),
            _ => Ok(()),
        }
    };
    if let Some(m) = r.memory() {
        limit("memory.limit", m.limit())?;
        limit("memory.reservation", m.reservation())?;
        limit("memory.swap", m.swap())?;
        if let Some(s) = m.swappiness() {
            if s > 100 {
                return Err(Invalid::new(
                    format!("{field}.memory.swappiness"),
                    format!("{s} is above 100"),
                ));
            }
        }
        if let (Some(l), Some(s)) = (m.limit(), m.swap()) {
            if l > 0 && s > 0 && s < l {
                return Err(Invalid::new(
                    format!("{field}.memory.swap"),
                    "memory+swap limit is below the memory limit",
                ));
            }
        }
    }
    if let Some(c) = r.cpu() {
        limit("cpu.quota", c.quota())?;
        if let Some(p) = c.period() {
            if p != 0 && !(1_000..=1_000_000).contains(&p) {
                return Err(Invalid::new(
                    format!("{field}.cpu.period"),
                    format!("{p} µs is outside 1000..=1000000"),
                ));
            }
        }
        if let Some(s) = c.shares() {
            if s > 262_144 {
                return Err(Invalid::new(
                    format!("{field}.cpu.shares"),
                    format!("{s} is above 262144"),
                ));
            }
        }
    }
    if let Some(p) = r.pids() {
        limit("pids.limit", Some(p.limit()))?;
    }
    Ok(())
}

/// Resolves a mount destination inside `rootfs` the way a chroot would (absolute symlinks
/// are taken from the container's root) and refuses one that would leave it: `..` in the
/// destination, or a symlink whose `..` climbs above the container's root.
pub fn check_mount_target(rootfs: &Path, dest: &Path) -> Result<(), String> {
    if !dest.is_absolute() {
        return Err(format!("{} is not absolute", dest.display()));
    }
    if dest.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{} contains '..'", dest.display()));
    }
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: std::collections::VecDeque<std::ffi::OsString> =
        dest.components().filter_map(normal).collect();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            if resolved.pop().is_none() {
                return Err(format!(
                    "{} traverses a symlink that leads out of the container root",
                    dest.display()
                ));
            }
            continue;
        }
        let here: PathBuf = std::iter::once(rootfs.as_os_str().to_owned())
            .chain(resolved.iter().cloned())
            .chain(std::iter::once(name.clone()))
            .collect();
        match std::fs::symlink_metadata(&here) {
            Err(_) => return Ok(()), // created by the runtime below an existing directory
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(format!("{}: too many levels of symlinks", dest.display()));
                }
                let target =
                    std::fs::read_link(&here).map_err(|e| format!("{}: {e}", here.display()))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::ParentDir => pending.push_front("..".into()),
                        Component::Normal(n) => pending.push_front(n.to_owned()),
                        _ => {}
                    }
                }
            }
            Ok(_) => resolved.push(name),
        }
    }
    Ok(())
}

fn normal(c: Component<'_>) -> Option<std::ffi::OsString> {
    match c {
        Component::Normal(n) => Some(n.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn spec_json(root: &Path, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"{}"}},"process":{{"args":["/bin/true"],"cwd":"/","user":{{"uid":0,"gid":0}}{extra}}}}}"#,
            root.display()
        )
        .into_bytes()
    }

    #[test]
    fn rootfs_must_be_inside_the_area() {
        let area = tempfile::tempdir().unwrap();
        let rootfs = area.path().join("c1");
        std::fs::create_dir(&rootfs).unwrap();
        let spec = parse_spec(&spec_json(&rootfs, "")).unwrap();
        assert_eq!(
            check_spec(&spec, &[area.path().to_owned()]).unwrap(),
            rootfs.canonicalize().unwrap()
        );

        let outside = tempfile::tempdir().unwrap();
        let spec = parse_spec(&spec_json(outside.path(), "")).unwrap();
        let err = check_spec(&spec, &[area.path().to_owned()]).unwrap_err();
        assert_eq!(err.field, "root.path");
        assert!(err.reason.contains("outside the rootfs area"), "{err}");

        // A symlink inside the area that points out of it.
        symlink(outside.path(), area.path().join("sneaky")).unwrap();
        let spec = parse_spec(&spec_json(&area.path().join("sneaky"), "")).unwrap();
        assert!(check_spec(&spec, &[area.path().to_owned()])
            .unwrap_err()
            .reason
            .contains("outside"));
        let spec = parse_spec(&spec_json(&area.path().join("missing"), "")).unwrap();
        assert_eq!(
            check_spec(&spec, &[area.path().to_owned()])
                .unwrap_err()
                .field,
            "root.path"
        );
    }

    #[test]
    fn bad_json_and_missing_fields() {
        assert_eq!(parse_spec(b"").unwrap_err().reason, "is empty");
        assert!(parse_spec(b"{not json")
            .unwrap_err()
            .reason
            .contains("not valid JSON"));
        assert!(parse_spec(br#"{"ociVersion":"1","process":{"args":"x"}}"#).is_err());
        let area = tempfile::tempdir().unwrap();
        let spec = parse_spec(br#"{"ociVersion":"1.0.2"}"#).unwrap();
        assert_eq!(
            check_spec(&spec, &[area.path().to_owned()])
                .unwrap_err()
                .field,
            "root"
        );
    }

    #[test]
    fn process_checks() {
        let ok = parse_process(br#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}"#).unwrap();
        check_process(&ok, "process").unwrap();
        let cases: &[(&str, &str)] = &[
            (
                r#"{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}"#,
                "process.args",
            ),
            (
                r#"{"args":["sh"],"cwd":"rel","user":{"uid":0,"gid":0}}"#,
                "process.cwd",
            ),
            (
                r#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"env":["NOEQUALS"]}"#,
                "process.env[0]",
            ),
            (
                r#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"rlimits":[{"type":"RLIMIT_NOFILE","hard":10,"soft":20}]}"#,
                "process.rlimits[0]",
            ),
            (
                r#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"rlimits":[{"type":"RLIMIT_NOFILE","hard":18446744073709551615,"soft":1}]}"#,
                "process.rlimits[0]",
            ),
        ];
        for (json, field) in cases {
            let p = parse_process(json.as_bytes()).unwrap();
            assert_eq!(
                &check_process(&p, "process").unwrap_err().field,
                field,
                "{json}"
            );
        }
    }

    #[test]
    fn negative_limits_are_refused() {
        for (json, field) in [
            (r#"{"memory":{"limit":-5}}"#, "linux.resources.memory.limit"),
            (r#"{"pids":{"limit":-2}}"#, "linux.resources.pids.limit"),
            (r#"{"cpu":{"quota":-100}}"#, "linux.resources.cpu.quota"),
            (r#"{"cpu":{"period":5}}"#, "linux.resources.cpu.period"),
        ] {
            let r = parse_resources(json.as_bytes()).unwrap();
            assert_eq!(
                check_resources(&r, "linux.resources").unwrap_err().field,
                field
            );
        }
        let r = parse_resources(br#"{"memory":{"limit":-1},"pids":{"limit":-1}}"#).unwrap();
        check_resources(&r, "linux.resources").unwrap();
    }

    #[test]
    fn mount_targets_stay_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("run")).unwrap();
        std::fs::create_dir_all(r.join("var")).unwrap();
        symlink("/run", r.join("var/run")).unwrap();
        symlink("../../../../etc", r.join("escape")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        check_mount_target(r, Path::new("/var/run/x")).unwrap();
        check_mount_target(r, Path::new("/new/dir")).unwrap();
        assert!(check_mount_target(r, Path::new("/escape/x"))
            .unwrap_err()
            .contains("leads out"));
        assert!(check_mount_target(r, Path::new("/a/../b"))
            .unwrap_err()
            .contains(".."));
        assert!(check_mount_target(r, Path::new("rel"))
            .unwrap_err()
            .contains("not absolute"));
        assert!(check_mount_target(r, Path::new("/loop1/x"))
            .unwrap_err()
            .contains("too many"));
    }
}
