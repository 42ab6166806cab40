//! containerd's OCI spec, made for the guest: the root is the disk the agent mounted, and
//! what names the host (bind mounts of host files, hooks that are host programs, host
//! security labels) is either carried into the guest another way or refused by name. The
//! agent then adapts namespaces and cgroups (agent/src/service/container.rs). Specs are
//! `oci-spec`'s types on both sides of the VM boundary.

use std::path::{Path, PathBuf};

pub use oci_spec::runtime::Spec;
use oci_spec::runtime::{Mount, Root};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: not an OCI runtime spec", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("mounts[{index}]: a read-write bind mount of the host file {source_path} at {destination}: hull shares directories read-write, not single files (bind the file read-only, which copies it in, or bind its directory)")]
    HostFileBind {
        index: usize,
        source_path: String,
        destination: String,
    },
    #[error("mounts[{index}]: the bind mount source {source_path} at {destination}: {reason}")]
    BadSource {
        index: usize,
        source_path: String,
        destination: String,
        reason: String,
    },
    #[error("linux.namespaces has no {kind} namespace: the pod shares the node's ({setting}: true in its spec), but a hull pod is a VM of its own and cannot; run it with a runc RuntimeClass, or without {setting}")]
    NodeNamespace {
        kind: &'static str,
        setting: &'static str,
    },
}

/// Reads a bundle's `config.json`.
pub fn read(path: &Path) -> Result<Spec, SpecError> {
    Spec::load(path).map_err(|source| SpecError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Largest `/etc/hosts`, `/etc/resolv.conf` or `/etc/hostname` source read into the guest.
pub const MAX_SANDBOX_FILE: u64 = 64 << 10;

/// Reads a CRI sandbox file's bind source: a regular file of at most [`MAX_SANDBOX_FILE`]
/// bytes. Opened non-blocking and checked on the open descriptor, so a FIFO cannot hang
/// the shim and `/dev/zero` cannot fill its memory. A missing file is `None` (the guest
/// keeps its own), as before.
fn read_sandbox_file(source: &str) -> Result<Option<String>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(source)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot be opened: {e}")),
    };
    let meta = f.metadata().map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > MAX_SANDBOX_FILE {
        return Err(format!("is larger than {MAX_SANDBOX_FILE} bytes"));
    }
    let mut text = String::new();
    f.take(MAX_SANDBOX_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot be read as text: {e}"))?;
    Ok(Some(text))
}

/// A bind mount of a host file or directory. Read-only ones are copied into an image of
/// their own and mounted read-only in the guest (the copy is taken when the container is
/// created); read-write ones are directories shared live through virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: std::path::PathBuf,
    pub destination: String,
    /// The mount's options other than bind/rbind/ro/rw (nosuid, nodev, ...).
    pub options: Vec<String>,
}

/// What the guest needs besides the rewritten spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestPlan {
    pub files: SandboxFiles,
    /// Read-only binds: copied into images.
    pub volumes: Vec<Volume>,
    /// Read-write binds of directories: shared through virtio-fs.
    pub shared: Vec<Volume>,
}

/// Files containerd's CRI binds into every container of a pod, whose contents go to the
/// guest's sandbox files instead (CreateSandbox).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFiles {
    pub hosts: Option<String>,
    pub resolv_conf: Option<String>,
    pub hostname: Option<String>,
}

/// The CRI annotations that group a pod's containers.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// What a task is to its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A task of its own: it gets a VM.
    Standalone,
    /// A pod's sandbox (pause) container: it gets the pod's VM.
    PodSandbox,
    /// A container of the pod `sandbox`: it joins that VM.
    PodContainer { sandbox: String },
}

pub fn role(spec: &Spec) -> Role {
    let annotations = spec.annotations().as_ref();
    let a = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    match a(CONTAINER_TYPE) {
        Some("sandbox") => Role::PodSandbox,
        Some("container") => match a(SANDBOX_ID) {
            Some(id) if !id.is_empty() => Role::PodContainer {
                sandbox: id.to_string(),
            },
            _ => Role::Standalone,
        },
        _ => Role::Standalone,
    }
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || options_of(m)
            .iter()
            .any(|o| matches!(o.as_str(), "bind" | "rbind"))
}

fn options_of(m: &Mount) -> Vec<String> {
    m.options().clone().unwrap_or_default()
}

/// The network namespace the spec names by path (a CRI pod's, where CNI made its
/// interfaces): the one whose interfaces the VM is joined to.
pub fn network_namespace(spec: &Spec) -> Option<PathBuf> {
    use oci_spec::runtime::LinuxNamespaceType;
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// Points the spec's root at `path` (where the guest mounted the container's disk).
pub fn set_root_path(spec: &mut Spec, path: &str) {
    // A spec without a root gets one that is writable (oci-spec's default is read-only).
    let mut root = spec.root().clone().unwrap_or_else(|| {
        let mut r = Root::default();
        r.set_readonly(None);
        r
    });
    root.set_path(PathBuf::from(path));
    spec.set_root(Some(root));
}

/// Rewrites `spec` in place for a container whose root the guest mounted at
/// `guest_rootfs`; returns the sandbox files and the volumes found among its bind mounts
/// (which leave the spec: [`add_volume`] puts each back with its guest path).
pub fn for_guest(spec: &mut Spec, guest_rootfs: &str) -> Result<GuestPlan, SpecError> {
    if role(spec) != Role::Standalone {
        check_pod_namespaces(spec)?;
    }
    set_root_path(spec, guest_rootfs);
    let mut plan = GuestPlan::default();
    let mounts = spec.mounts().clone().unwrap_or_default();
    let mut kept = Vec::with_capacity(mounts.len());
    for (index, m) in mounts.into_iter().enumerate() {
        if is_bind(&m) {
            take_bind(index, m, &mut plan, &mut kept)?;
        } else {
            kept.push(m);
        }
    }
    if spec.mounts().is_some() {
        spec.set_mounts(Some(kept));
    }
    // Host programs and host security labels mean nothing in the guest.
    if spec.hooks().is_some() {
        log::warn!("config.json: hooks run host programs; the guest cannot run them, dropped");
        spec.set_hooks(None);
    }
    if let Some(p) = spec.process_mut() {
        p.set_apparmor_profile(None);
        p.set_selinux_label(None);
    }
    if let Some(l) = spec.linux_mut() {
        l.set_mount_label(None);
    }
    Ok(plan)
}

/// Refuses a CRI container that shares one of the node's namespaces (hostNetwork, hostPID,
/// hostIPC): kubelet then leaves that namespace out of the spec, and in a VM the container
/// would silently get the guest's instead (the guest's root PID namespace holds the agent).
/// A standalone task without one shares the VM's, which is the VM's to give.
fn check_pod_namespaces(spec: &Spec) -> Result<(), SpecError> {
    use oci_spec::runtime::LinuxNamespaceType as Kind;
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for (kind, name, setting) in [
        (Kind::Network, "network", "hostNetwork"),
        (Kind::Pid, "pid", "hostPID"),
        (Kind::Ipc, "ipc", "hostIPC"),
    ] {
        if !namespaces.iter().any(|n| n.typ() == kind) {
            return Err(SpecError::NodeNamespace {
                kind: name,
                setting,
            });
        }
    }
    Ok(())
}

/// Where bind mount `index` goes: a CRI sandbox file into `plan.files`, `/dev/shm` a guest
/// tmpfs, a read-only bind a volume copied in, a read-write one of a directory a share.
fn take_bind(
    index: usize,
    m: Mount,
    plan: &mut GuestPlan,
    kept: &mut Vec<Mount>,
) -> Result<(), SpecError> {
    let destination = m.destination().to_string_lossy().into_owned();
    let source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bad = |reason: String| SpecError::BadSource {
        index,
        source_path: source.clone(),
        destination: destination.clone(),
        reason,
    };
    let files = &mut plan.files;
    match destination.as_str() {
        "/etc/hosts" => files.hosts = read_sandbox_file(&source).map_err(bad)?,
        "/etc/resolv.conf" => files.resolv_conf = read_sandbox_file(&source).map_err(bad)?,
        "/etc/hostname" => {
            let name = read_sandbox_file(&source).map_err(bad)?;
            files.hostname = name.map(|h| h.trim().to_string());
        }
        // kubelet's termination message file: the guest's own (read back by nobody yet; a
        // container that writes one still runs).
        "/dev/termination-log" => log::info!("the termination-log bind stays in the guest"),
        // The pod's shared memory: a tmpfs of the guest's.
        "/dev/shm" => kept.push(shm_tmpfs()),
        _ => {
            let options = options_of(&m);
            let mode = options.iter().rev().find(|o| *o == "ro" || *o == "rw");
            let read_only = mode.map(String::as_str) == Some("ro");
            let meta =
                std::fs::metadata(&source).map_err(|e| bad(format!("cannot be read ({e})")))?;
            if !meta.is_dir() && !meta.is_file() {
                return Err(bad("is neither a directory nor a regular file".into()));
            }
            if !read_only && !meta.is_dir() {
                return Err(SpecError::HostFileBind {
                    index,
                    source_path: source,
                    destination,
                });
            }
            let list = if read_only {
                &mut plan.volumes
            } else {
                &mut plan.shared
            };
            list.push(Volume {
                source: source.into(),
                destination,
                options: options
                    .into_iter()
                    .filter(|o| !matches!(o.as_str(), "bind" | "rbind" | "ro" | "rw"))
                    .collect(),
            });
        }
    }
    Ok(())
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// The guest's own `/dev/shm`, in place of the host's.
fn shm_tmpfs() -> Mount {
    let options = ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"];
    mount("/dev/shm", "tmpfs", "shm", &options)
}

/// Adds a bind mount of `guest_source` (where the agent mounted the volume's disk, or the
/// share in the guest's virtio-fs mount) at the volume's destination.
pub fn add_volume(spec: &mut Spec, volume: &Volume, guest_source: &str, read_only: bool) {
    let mode = if read_only { "ro" } else { "rw" };
    let mut options = vec!["rbind", mode];
    options.extend(volume.options.iter().map(String::as_str));
    let m = mount(&volume.destination, "bind", guest_source, &options);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(m);
    spec.set_mounts(Some(mounts));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn spec(mounts: Value) -> Spec {
        typed(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": false},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "apparmorProfile": "docker-default"},
            "hooks": {"prestart": [{"path": "/usr/bin/thing"}]},
            "mounts": mounts,
            "linux": {"mountLabel": "x"}
        }))
    }

    fn typed(v: Value) -> Spec {
        serde_json::from_value(v).unwrap()
    }

    fn json(s: &Spec) -> Value {
        serde_json::to_value(s).unwrap()
    }

    #[test]
    fn root_points_at_the_guest_mount_and_host_only_fields_go() {
        let mut s =
            spec(serde_json::json!([{"destination": "/proc", "type": "proc", "source": "proc"}]));
        let files = for_guest(&mut s, "/run/hull/shared/c1/rootfs")
            .unwrap()
            .files;
        let s = json(&s);
        assert_eq!(s["root"]["path"], "/run/hull/shared/c1/rootfs");
        assert_eq!(s["root"]["readonly"], false);
        assert!(s.get("hooks").is_none());
        assert!(s["process"].get("apparmorProfile").is_none());
        assert!(s["linux"].get("mountLabel").is_none());
        assert_eq!(s["mounts"].as_array().unwrap().len(), 1);
        assert_eq!(files, SandboxFiles::default());
    }

    #[test]
    fn cri_sandbox_files_become_sandbox_files_and_shm_a_tmpfs() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let hostname = dir.path().join("hostname");
        std::fs::write(&hostname, "pod-1\n").unwrap();
        let mut s = spec(serde_json::json!([
            {"destination": "/etc/hosts", "type": "bind", "source": hosts, "options": ["rbind", "ro"]},
            {"destination": "/etc/hostname", "type": "bind", "source": hostname, "options": ["rbind"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/x/shm", "options": ["rbind"]}
        ]));
        let files = for_guest(&mut s, "/r").unwrap().files;
        assert_eq!(files.hosts.as_deref(), Some("127.0.0.1 localhost\n"));
        assert_eq!(files.hostname.as_deref(), Some("pod-1"));
        let s = json(&s);
        let mounts = s["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0]["type"], "tmpfs");
    }

    #[test]
    fn sandbox_file_sources_that_are_not_small_regular_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'#'; MAX_SANDBOX_FILE as usize + 1]).unwrap();
        for (source, want) in [
            (fifo.to_str().unwrap(), "is not a regular file"),
            ("/dev/zero", "is not a regular file"),
            (big.to_str().unwrap(), "is larger than"),
        ] {
            let mut s = spec(serde_json::json!([
                {"destination": "/etc/resolv.conf", "type": "bind", "source": source, "options": ["rbind", "ro"]}
            ]));
            let e = for_guest(&mut s, "/r").unwrap_err();
            assert!(e.to_string().contains(want), "{source}: {e}");
        }
    }

    #[test]
    fn read_write_binds_of_directories_are_shared_and_of_files_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().to_str().unwrap().to_string();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let mut s = spec(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "none", "source": src, "options": ["rbind", "nodev"]}
        ]));
        let plan = for_guest(&mut s, "/r").unwrap();
        assert!(plan.volumes.is_empty());
        assert_eq!(
            plan.shared,
            vec![Volume {
                source: dir.path().to_path_buf(),
                destination: "/data".into(),
                options: vec!["nodev".into()]
            }]
        );
        add_volume(&mut s, &plan.shared[0], "/run/hull/fs/v0", false);
        let s = json(&s);
        let m = &s["mounts"][1];
        assert_eq!(m["source"], "/run/hull/fs/v0");
        assert_eq!(m["options"], serde_json::json!(["rbind", "rw", "nodev"]));

        let mut s = spec(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/f", "type": "bind", "source": file.to_str().unwrap(), "options": ["rbind", "rw"]}
        ]));
        let e = for_guest(&mut s, "/r").unwrap_err();
        assert!(
            matches!(
                &e,
                SpecError::HostFileBind { index: 1, source_path, destination }
                    if source_path == file.to_str().unwrap() && destination == "/f"
            ),
            "{e}"
        );
    }

    #[test]
    fn read_only_binds_become_volumes_put_back_with_their_guest_source() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().to_str().unwrap().to_string();
        let mut s = spec(serde_json::json!([
            {"destination": "/data", "type": "bind", "source": src, "options": ["rbind", "rw", "ro", "nosuid"]}
        ]));
        let plan = for_guest(&mut s, "/r").unwrap();
        assert_eq!(
            plan.volumes,
            vec![Volume {
                source: dir.path().to_path_buf(),
                destination: "/data".into(),
                options: vec!["nosuid".into()]
            }]
        );
        assert!(json(&s)["mounts"].as_array().unwrap().is_empty());
        add_volume(
            &mut s,
            &plan.volumes[0],
            "/run/hull/shared/c1-v0/rootfs",
            true,
        );
        let s = json(&s);
        let m = &s["mounts"][0];
        assert_eq!(m["source"], "/run/hull/shared/c1-v0/rootfs");
        assert_eq!(m["destination"], "/data");
        assert_eq!(m["options"], serde_json::json!(["rbind", "ro", "nosuid"]));

        let mut s = spec(serde_json::json!([
            {"destination": "/gone", "type": "bind", "source": "/no/such/dir", "options": ["rbind", "ro"]}
        ]));
        let e = for_guest(&mut s, "/r").unwrap_err();
        assert!(e.to_string().contains("/no/such/dir"), "{e}");
    }

    #[test]
    fn malformed_specs_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        for bad in [
            "\"a string\"",
            "{\"ociVersion\": \"1.0.2\", \"root\": \"x\"}",
            "{\"ociVersion\": \"1.0.2\", \"mounts\": {\"a\": 1}}",
            "{\"ociVersion\": \"1.0.2\", \"mounts\": [7]}",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = read(&path).unwrap_err();
            assert!(e.to_string().contains("config.json"), "{bad}: {e}");
        }
        let mut s = typed(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [{"destination": "/x", "type": "bind"}]
        }));
        assert!(
            for_guest(&mut s, "/r").is_err(),
            "a bind with no source is refused"
        );
        let mut bare = typed(serde_json::json!({"ociVersion": "1.0.2"}));
        for_guest(&mut bare, "/r").unwrap();
        assert_eq!(
            bare.root().as_ref().and_then(Root::readonly),
            None,
            "a spec without a root gets a writable one"
        );
    }

    #[test]
    fn roles_follow_the_cri_annotations() {
        let with = |a: Value| typed(serde_json::json!({"ociVersion": "1", "annotations": a}));
        assert_eq!(
            role(&typed(serde_json::json!({"ociVersion": "1"}))),
            Role::Standalone
        );
        assert_eq!(
            role(&with(serde_json::json!({CONTAINER_TYPE: "sandbox"}))),
            Role::PodSandbox
        );
        assert_eq!(
            role(&with(
                serde_json::json!({CONTAINER_TYPE: "container", SANDBOX_ID: "p1"})
            )),
            Role::PodContainer {
                sandbox: "p1".into()
            }
        );
    }

    #[test]
    fn a_pod_sharing_a_node_namespace_is_refused_by_its_setting() {
        let pod = |namespaces: Value| {
            typed(serde_json::json!({
                "ociVersion": "1.0.2",
                "annotations": {CONTAINER_TYPE: "sandbox"},
                "linux": {"namespaces": namespaces}
            }))
        };
        let all = serde_json::json!([
            {"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
        ]);
        for_guest(&mut pod(all.clone()), "/r").unwrap();
        for (drop, setting) in [
            ("network", "hostNetwork"),
            ("pid", "hostPID"),
            ("ipc", "hostIPC"),
        ] {
            let mut without = all.clone();
            without
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != drop);
            let e = for_guest(&mut pod(without.clone()), "/r")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(setting) && e.contains(&format!("no {drop} namespace")),
                "{e}"
            );
            // A container of that pod the same; a task of its own shares the VM's.
            let mut member = pod(without.clone());
            member.set_annotations(Some(
                [
                    (CONTAINER_TYPE.to_string(), "container".to_string()),
                    (SANDBOX_ID.to_string(), "p".to_string()),
                ]
                .into(),
            ));
            assert!(for_guest(&mut member, "/r").is_err());
            member.set_annotations(None);
            for_guest(&mut member, "/r").unwrap();
        }
    }
}
