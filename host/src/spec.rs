//! containerd's OCI spec, made for the guest: the root is the disk the agent mounted, and
//! what names the host (bind mounts of host files, hooks that are host programs, host
//! security labels) is either carried into the guest another way or refused by name. The
//! agent then adapts namespaces and cgroups (agent/src/service/container.rs).

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("config.json: {0}")]
    Json(String),
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

pub fn role(spec: &Value) -> Role {
    let a = |k: &str| spec.pointer(&format!("/annotations/{}", k.replace('/', "~1")));
    match a(CONTAINER_TYPE).and_then(Value::as_str) {
        Some("sandbox") => Role::PodSandbox,
        Some("container") => match a(SANDBOX_ID).and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Role::PodContainer {
                sandbox: id.to_string(),
            },
            _ => Role::Standalone,
        },
        _ => Role::Standalone,
    }
}

fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind")
        || m.get("options").and_then(Value::as_array).is_some_and(|o| {
            o.iter()
                .any(|x| matches!(x.as_str(), Some("bind" | "rbind")))
        })
}

fn options_of(m: &Value) -> Vec<String> {
    m.get("options")
        .and_then(Value::as_array)
        .map(|o| {
            o.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Rewrites `spec` in place for a container whose root the guest mounted at
/// `guest_rootfs`; returns the sandbox files and the volumes found among its bind mounts
/// (which leave the spec: [`add_volume`] puts each back with its guest path).
pub fn for_guest(spec: &mut Value, guest_rootfs: &str) -> Result<GuestPlan, SpecError> {
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| SpecError::Json("not a JSON object".into()))?;
    let root = obj
        .entry("root")
        .or_insert_with(|| Value::Object(Default::default()))
        .as_object_mut()
        .ok_or_else(|| SpecError::Json("root is not an object".into()))?;
    root.insert("path".into(), Value::String(guest_rootfs.to_string()));
    if obj.get("mounts").is_some_and(|m| !m.is_array()) {
        return Err(SpecError::Json("mounts is not an array".into()));
    }

    let mut files = SandboxFiles::default();
    let mut volumes = Vec::new();
    let mut shared = Vec::new();
    if let Some(mounts) = obj.get_mut("mounts").and_then(Value::as_array_mut) {
        let mut kept = Vec::with_capacity(mounts.len());
        for (index, m) in mounts.drain(..).enumerate() {
            if !is_bind(&m) {
                kept.push(m);
                continue;
            }
            let destination = m
                .get("destination")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let source = m
                .get("source")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let read = || {
                read_sandbox_file(&source).map_err(|reason| SpecError::BadSource {
                    index,
                    source_path: source.clone(),
                    destination: destination.clone(),
                    reason,
                })
            };
            match destination.as_str() {
                "/etc/hosts" => files.hosts = read()?,
                "/etc/resolv.conf" => files.resolv_conf = read()?,
                "/etc/hostname" => files.hostname = read()?.map(|h| h.trim().to_string()),
                // kubelet's termination message file: the guest's own (read back by
                // nobody yet; a container that writes one still runs).
                "/dev/termination-log" => {
                    log::info!("the termination-log bind stays in the guest");
                }
                // The pod's shared memory: a tmpfs of the guest's.
                "/dev/shm" => kept.push(serde_json::json!({
                    "destination": "/dev/shm",
                    "type": "tmpfs",
                    "source": "shm",
                    "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
                })),
                _ => {
                    let options = options_of(&m);
                    let read_only = options.iter().rev().find(|o| *o == "ro" || *o == "rw");
                    let read_only = read_only.map(String::as_str) == Some("ro");
                    let bad = |reason: &str| SpecError::BadSource {
                        index,
                        source_path: source.clone(),
                        destination: destination.clone(),
                        reason: reason.into(),
                    };
                    let meta = std::fs::metadata(&source)
                        .map_err(|e| bad(&format!("cannot be read ({e})")))?;
                    if !meta.is_dir() && !meta.is_file() {
                        return Err(bad("is neither a directory nor a regular file"));
                    }
                    if !read_only && !meta.is_dir() {
                        return Err(SpecError::HostFileBind {
                            index,
                            source_path: source,
                            destination,
                        });
                    }
                    let list = if read_only { &mut volumes } else { &mut shared };
                    list.push(Volume {
                        source: source.clone().into(),
                        destination,
                        options: options
                            .into_iter()
                            .filter(|o| !matches!(o.as_str(), "bind" | "rbind" | "ro" | "rw"))
                            .collect(),
                    });
                }
            }
        }
        *mounts = kept;
    }
    // Host programs and host security labels mean nothing in the guest.
    if obj.remove("hooks").is_some() {
        log::warn!("config.json: hooks run host programs; the guest cannot run them, dropped");
    }
    if let Some(p) = obj.get_mut("process").and_then(Value::as_object_mut) {
        p.remove("apparmorProfile");
        p.remove("selinuxLabel");
    }
    if let Some(l) = obj.get_mut("linux").and_then(Value::as_object_mut) {
        l.remove("mountLabel");
    }
    Ok(GuestPlan {
        files,
        volumes,
        shared,
    })
}

/// Adds a bind mount of `guest_source` (where the agent mounted the volume's disk, or the
/// share in the guest's virtio-fs mount) at the volume's destination.
pub fn add_volume(spec: &mut Value, volume: &Volume, guest_source: &str, read_only: bool) {
    let mode = if read_only { "ro" } else { "rw" };
    let mut options = vec!["rbind".to_string(), mode.to_string()];
    options.extend(volume.options.iter().cloned());
    let mount = serde_json::json!({
        "destination": volume.destination,
        "type": "bind",
        "source": guest_source,
        "options": options,
    });
    if let Some(obj) = spec.as_object_mut() {
        match obj.get_mut("mounts").and_then(Value::as_array_mut) {
            Some(m) => m.push(mount),
            None => {
                obj.insert("mounts".into(), Value::Array(vec![mount]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mounts: Value) -> Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": false},
            "process": {"args": ["sh"], "cwd": "/", "apparmorProfile": "docker-default"},
            "hooks": {"prestart": [{"path": "/usr/bin/thing"}]},
            "mounts": mounts,
            "linux": {"mountLabel": "x"}
        })
    }

    #[test]
    fn root_points_at_the_guest_mount_and_host_only_fields_go() {
        let mut s =
            spec(serde_json::json!([{"destination": "/proc", "type": "proc", "source": "proc"}]));
        let files = for_guest(&mut s, "/run/hull/shared/c1/rootfs")
            .unwrap()
            .files;
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
        let m = &s["mounts"][1];
        assert_eq!(m["source"], "/run/hull/fs/v0");
        assert_eq!(m["options"], serde_json::json!(["rbind", "rw", "nodev"]));

        let mut s = spec(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/f", "type": "bind", "source": file.to_str().unwrap(), "options": ["rbind", "rw"]}
        ]));
        let e = for_guest(&mut s, "/r").unwrap_err();
        assert_eq!(
            e,
            SpecError::HostFileBind {
                index: 1,
                source_path: file.to_str().unwrap().into(),
                destination: "/f".into()
            }
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
        assert!(s["mounts"].as_array().unwrap().is_empty());
        add_volume(
            &mut s,
            &plan.volumes[0],
            "/run/hull/shared/c1-v0/rootfs",
            true,
        );
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
    fn malformed_specs_are_errors_not_panics() {
        for bad in [
            serde_json::json!("a string"),
            serde_json::json!({"root": "x"}),
            serde_json::json!({"mounts": {"a": 1}}),
        ] {
            let mut s = bad;
            assert!(matches!(for_guest(&mut s, "/r"), Err(SpecError::Json(_))));
        }
        let mut s = serde_json::json!({"mounts": [7, {"type": "bind"}]});
        assert!(
            for_guest(&mut s, "/r").is_err(),
            "a bind with no source is refused"
        );
    }

    #[test]
    fn roles_follow_the_cri_annotations() {
        let with = |a: Value| serde_json::json!({"annotations": a});
        assert_eq!(role(&serde_json::json!({})), Role::Standalone);
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
}
