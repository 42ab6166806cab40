//! The OCI runtime spec of a `hull run`: containerd's defaults (the mounts, namespaces,
//! capabilities and masked paths `ctr run` gives a container) with the command line's
//! process, environment, working directory, user, terminal and volumes.

use std::path::{Path, PathBuf};

use hull_host::spec::Spec;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder,
    SpecBuilder, UserBuilder,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("-e {0:?}: use KEY=VALUE")]
    Env(String),
    #[error("-w {0:?}: give an absolute path in the container")]
    Workdir(String),
    #[error("--user {0:?}: give UID or UID:GID (numbers), or root")]
    User(String),
    #[error("-v {spec:?}: {why}; use HOST:CONTAINER[:ro|:rw] with absolute paths")]
    Volume { spec: String, why: String },
    #[error("the container's spec: {0}")]
    Build(String),
}

impl From<oci_spec::OciSpecError> for SpecError {
    fn from(e: oci_spec::OciSpecError) -> Self {
        SpecError::Build(e.to_string())
    }
}

/// What the command line asks of the container's process.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub terminal: bool,
}

/// One `-v HOST:CONTAINER[:ro|:rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub host: String,
    pub container: String,
    pub read_only: bool,
}

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn parse_volume(spec: &str) -> Result<VolumeSpec, SpecError> {
    let bad = |why: &str| SpecError::Volume {
        spec: spec.into(),
        why: why.into(),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, container, read_only) = match parts[..] {
        [h, c] => (h, c, false),
        [h, c, "ro"] => (h, c, true),
        [h, c, "rw"] => (h, c, false),
        [_, _, mode] => return Err(bad(&format!("unknown mode {mode:?}"))),
        _ => return Err(bad("expected two or three fields")),
    };
    if !host.starts_with('/') || !container.starts_with('/') {
        return Err(bad("both paths must be absolute"));
    }
    if container == "/" {
        return Err(bad("a volume cannot replace the container's root"));
    }
    if !Path::new(host).exists() {
        return Err(bad(&format!("the host path {host} does not exist")));
    }
    Ok(VolumeSpec {
        host: host.into(),
        container: container.into(),
        read_only,
    })
}

fn user(u: &str) -> Result<(u32, u32), SpecError> {
    if u == "root" {
        return Ok((0, 0));
    }
    let bad = || SpecError::User(u.into());
    let (uid, gid) = match u.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (u, None),
    };
    let uid: u32 = uid.parse().map_err(|_| bad())?;
    let gid: u32 = match gid {
        Some(g) => g.parse().map_err(|_| bad())?,
        None => uid,
    };
    Ok((uid, gid))
}

/// The spec for container `hostname` running `p` with `volumes`, its root read-only when
/// `read_only_root` (docker's `--read-only`).
pub fn build(
    hostname: &str,
    p: &Process,
    volumes: &[VolumeSpec],
    read_only_root: bool,
) -> Result<Spec, SpecError> {
    let mut mounts = default_mounts()?;
    for v in volumes {
        let mode = if v.read_only { "ro" } else { "rw" };
        mounts.push(mount(&v.container, "bind", &v.host, &["rbind", mode])?);
    }
    let root = RootBuilder::default()
        .path("rootfs")
        .readonly(read_only_root)
        .build()?;
    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(root)
        .hostname(hostname)
        .process(process(p)?)
        .mounts(mounts)
        .linux(linux()?)
        .build()?)
}

/// The process: the command line over containerd's defaults (capabilities, one rlimit,
/// no new privileges).
fn process(p: &Process) -> Result<oci_spec::runtime::Process, SpecError> {
    let cwd = p.cwd.clone().unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(SpecError::Workdir(cwd));
    }
    let (uid, gid) = match &p.user {
        Some(u) => user(u)?,
        None => (0, 0),
    };
    let args = if p.args.is_empty() {
        vec!["sh".to_string()]
    } else {
        p.args.clone()
    };
    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()?;
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(1024u64)
        .soft(1024u64)
        .build()?;
    Ok(ProcessBuilder::default()
        .terminal(p.terminal)
        .args(args)
        .env(environment(p)?)
        .cwd(cwd)
        .user(UserBuilder::default().uid(uid).gid(gid).build()?)
        .capabilities(capabilities)
        .rlimits(vec![nofile])
        .no_new_privileges(true)
        .build()?)
}

/// The image's PATH unless given, TERM for a terminal, then `-e`s (a later one replaces
/// an earlier one of the same name).
fn environment(p: &Process) -> Result<Vec<String>, SpecError> {
    let mut env = Vec::new();
    if !p.env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_string());
    }
    if p.terminal {
        env.push("TERM=xterm".into());
    }
    for e in &p.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {
                env.retain(|x| x.split_once('=').map(|(xk, _)| xk) != Some(k));
                env.push(e.clone());
            }
            _ => return Err(SpecError::Env(e.clone())),
        }
    }
    Ok(env)
}

/// containerd's default capability set.
const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(PathBuf::from(destination))
        .typ(typ)
        .source(PathBuf::from(source))
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// containerd's default mounts: /proc, /dev and its pts, shm and mqueue, read-only /sys.
fn default_mounts() -> Result<Vec<Mount>, SpecError> {
    [
        ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"][..]),
        (
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        (
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        (
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        (
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        (
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ]
    .iter()
    .map(|(d, t, s, o)| mount(d, t, s, o))
    .collect()
}

/// The namespaces and masked and read-only paths containerd gives a container.
fn linux() -> Result<oci_spec::runtime::Linux, SpecError> {
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()?;
    let strings = |l: &[&str]| l.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    Ok(LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(strings(&[
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi",
        ]))
        .readonly_paths(strings(&[
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
        ]))
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn volumes_parse_or_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        assert_eq!(
            parse_volume(&format!("{d}:/data:ro")).unwrap(),
            VolumeSpec {
                host: d.into(),
                container: "/data".into(),
                read_only: true
            }
        );
        assert!(!parse_volume(&format!("{d}:/data")).unwrap().read_only);
        for (bad, says) in [
            (d.to_string(), "two or three fields"),
            (format!("{d}:/data:rx"), "unknown mode"),
            ("rel:/data".to_string(), "absolute"),
            (format!("{d}:/"), "root"),
            ("/no/such/dir:/data".to_string(), "does not exist"),
        ] {
            let e = parse_volume(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_process_follows_the_command_line() {
        let p = Process {
            args: vec!["id".into()],
            env: vec!["A=1".into(), "PATH=/bin".into()],
            cwd: Some("/tmp".into()),
            user: Some("1000:100".into()),
            terminal: false,
        };
        let s = serde_json::to_value(build("box", &p, &[], false).unwrap()).unwrap();
        assert_eq!(s["process"]["args"], json!(["id"]));
        assert_eq!(s["process"]["env"], json!(["A=1", "PATH=/bin"]));
        assert_eq!(s["process"]["cwd"], "/tmp");
        assert_eq!(s["process"]["user"], json!({"uid": 1000, "gid": 100}));
        assert_eq!(s["hostname"], "box");
        let default =
            serde_json::to_value(build("box", &Process::default(), &[], false).unwrap()).unwrap();
        assert_eq!(default["process"]["args"], json!(["sh"]));
        assert_eq!(default["process"]["user"], json!({"uid": 0, "gid": 0}));
    }

    #[test]
    fn bad_process_options_are_refused_by_name() {
        let with = |f: fn(&mut Process)| {
            let mut p = Process::default();
            f(&mut p);
            build("b", &p, &[], false).unwrap_err()
        };
        assert_eq!(
            with(|p| p.env = vec!["NOEQUALS".into()]),
            SpecError::Env("NOEQUALS".into())
        );
        assert_eq!(
            with(|p| p.env = vec!["=x".into()]),
            SpecError::Env("=x".into())
        );
        assert_eq!(
            with(|p| p.cwd = Some("tmp".into())),
            SpecError::Workdir("tmp".into())
        );
        assert_eq!(
            with(|p| p.user = Some("bob".into())),
            SpecError::User("bob".into())
        );
    }
}
