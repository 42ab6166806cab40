//! `hull run`: one container in a sandbox VM of its own, in the foreground. The VM comes
//! from the template cache (a cold boot makes the template the first time), the root is
//! the image's erofs copy in a drive slot under a writable overlay, volumes come in the way
//! the shim brings them (read-only ones copied onto drives, read-write directories shared
//! over virtio-fs), stdio is this process's own, and `hull run` exits with the
//! container's status. Everything the run made is gone when it returns.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hull_protocol::rpc::agent::{
    ContainerRequest, CreateContainerRequest, CreateSandboxRequest, SignalProcessRequest,
};
use hull_shim::config::{HostConfig, Limits};
use hull_shim::task::io::{ProcessIo, StdioPaths};
use hull_shim::task::pod::{ctx, EventSink, Pod};
use hull_shim::task::spec;
use hull_shim::template::TemplateCache;

use crate::{image, oci, paths};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spec(#[from] oci::SpecError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(
        "--name {0:?}: use 1-40 characters from a-z A-Z 0-9 _ . - starting with a letter or digit"
    )]
    BadName(String),
    #[error("the name {0:?} is in use by a running sandbox: choose another with --name")]
    NameInUse(String),
    #[error("--memory {0:?}: {1}")]
    Memory(String, &'static str),
    #[error("--cpus {0}: give 1 to 255")]
    Cpus(u32),
    #[error("{0} is not built yet in this hull; run in the foreground without it")]
    NotBuilt(&'static str),
    #[error("{0}")]
    Volume(String),
    #[error("{what}: {why}")]
    Sandbox { what: &'static str, why: String },
    #[error("the sandbox VM stopped before the container exited: {0}")]
    VmGone(String),
}

/// What `hull run` was asked.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub name: Option<String>,
    pub detach: bool,
    pub interactive: bool,
    pub tty: bool,
    pub cpus: Option<u32>,
    pub memory: Option<String>,
    pub volumes: Vec<String>,
    pub process: oci::Process,
    pub image: String,
}

/// Bytes from `512m`, `1g`, `300000k` or a plain number of bytes, as MiB.
pub fn parse_memory(s: &str) -> Result<u32, RunError> {
    let bad = |why| RunError::Memory(s.into(), why);
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| bad("use a number with an optional k, m or g (512m, 1g)"))?;
    let mib = n
        .checked_mul(mult)
        .ok_or(bad("too large"))?
        .div_ceil(1 << 20);
    if mib < 16 {
        return Err(bad("the container needs at least 16 MiB"));
    }
    u32::try_from(mib).map_err(|_| bad("too large"))
}

fn check_name(name: &str) -> Result<(), RunError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RunError::BadName(name.into()))
    }
}

fn random_name() -> String {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let _ = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    format!("hull-{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}

/// Reports the container's exit (or the VM's end) to the waiting run.
struct Exits {
    container: String,
    tx: Mutex<Sender<Result<i32, String>>>,
}

impl EventSink for Exits {
    fn exited(&self, container: &str, exec: &str, status: i32, _at_nanos: i64) {
        if container == self.container && exec.is_empty() {
            let _ = hull_shim::lock(&self.tx).send(Ok(status));
        }
    }
    fn oom(&self, container: &str) {
        log::info!("{container}: out of memory");
    }
    fn vm_gone(&self, why: &str) {
        let _ = hull_shim::lock(&self.tx).send(Err(why.to_string()));
    }
}

/// Removes what a run made, whichever way it ends.
struct Cleanup {
    pod: Option<Arc<Pod>>,
    run_dir: PathBuf,
    state_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pod) = self.pod.take() {
            pod.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn sandbox_err(what: &'static str) -> impl Fn(String) -> RunError {
    move |why| RunError::Sandbox { what, why }
}

/// Runs the container; returns its exit status (128 + N for a signal, as a shell says).
pub fn run(opts: &RunOptions, config: &HostConfig) -> Result<i32, RunError> {
    if opts.detach {
        return Err(RunError::NotBuilt("-d (detached sandboxes)"));
    }
    if opts.tty {
        return Err(RunError::NotBuilt("-t (a terminal)"));
    }
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => random_name(),
    };
    check_name(&name)?;
    let memory_mib = opts.memory.as_deref().map(parse_memory).transpose()?;
    let vcpus = match opts.cpus {
        Some(c) if (1..=255).contains(&c) => Some(c as u8),
        Some(c) => return Err(RunError::Cpus(c)),
        None => None,
    };
    let volumes: Vec<oci::VolumeSpec> = opts
        .volumes
        .iter()
        .map(|v| oci::parse_volume(v))
        .collect::<Result<_, _>>()?;
    let mut spec = oci::build(&name, &opts.process, &volumes)?;
    let plan = spec::for_guest(&mut spec, "").map_err(|e| RunError::Volume(e.to_string()))?;
    if !config.shared_fs && !plan.shared.is_empty() {
        return Err(RunError::Volume(
            "read-write volumes need shared_fs = true in the hull config; add :ro to copy the directory in instead".into(),
        ));
    }
    let root_image = image::root_image(&paths::images(), &opts.image)?;

    let run_dir = paths::run().join(&name);
    if run_dir.exists() {
        if paths::sandbox_alive(&run_dir) {
            return Err(RunError::NameInUse(name));
        }
        hull_shim::task::pod::kill_orphaned(&run_dir);
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    let state_dir = paths::containers().join(&name);
    let mut cleanup = Cleanup {
        pod: None,
        run_dir: run_dir.clone(),
        state_dir: state_dir.clone(),
    };
    std::fs::create_dir_all(&state_dir).map_err(|e| RunError::Sandbox {
        what: "create the container's directory",
        why: format!("{}: {e}", state_dir.display()),
    })?;
    let mut volume_images = Vec::new();
    for (i, v) in plan.volumes.iter().enumerate() {
        let img = state_dir.join(format!("volume-{i}.erofs"));
        let inner = hull_shim::task::rootfs::build_volume_image(&v.source, &img).map_err(|e| {
            RunError::Volume(format!(
                "-v {}: {}",
                v.source.display(),
                hull_vmm::error_chain(&e)
            ))
        })?;
        volume_images.push((img, inner));
    }

    let vm = config
        .vm_spec((memory_mib.is_some() || vcpus.is_some()).then_some(Limits { vcpus, memory_mib }));
    let templates = config
        .templates
        .then(|| TemplateCache::new(&config.template_dir));
    let pod = Arc::new(
        Pod::start(&name, &vm, &run_dir, templates.as_ref(), None).map_err(|e| {
            RunError::Sandbox {
                what: "start the sandbox VM",
                why: hull_vmm::error_chain(&e),
            }
        })?,
    );
    cleanup.pod = Some(pod.clone());
    let (tx, rx) = channel();
    pod.watch(Arc::new(Exits {
        container: name.clone(),
        tx: Mutex::new(tx),
    }))
    .map_err(|e| sandbox_err("watch the sandbox")(hull_vmm::error_chain(&e)))?;

    let root = pod
        .lease_drive(&name, &root_image, true)
        .map_err(|e| sandbox_err("attach the root filesystem")(hull_vmm::error_chain(&e)))?;
    spec["root"]["path"] = serde_json::Value::String(root.guest_rootfs.clone());
    for (v, (img, inner)) in plan.volumes.iter().zip(&volume_images) {
        let lease = pod
            .lease_drive(&format!("{name} volume"), img, false)
            .map_err(|e| sandbox_err("attach a volume")(hull_vmm::error_chain(&e)))?;
        let source = match inner {
            Some(file) => format!("{}/{file}", lease.guest_rootfs),
            None => lease.guest_rootfs.clone(),
        };
        spec::add_volume(&mut spec, v, &source, true);
    }
    for v in &plan.shared {
        let source = pod
            .share_dir(&v.source)
            .map_err(|e| sandbox_err("share a volume")(hull_vmm::error_chain(&e)))?;
        spec::add_volume(&mut spec, v, &source, false);
    }

    let mut sandbox = CreateSandboxRequest::new();
    sandbox.hostname = name.clone();
    pod.agent
        .create_sandbox(ctx(), &sandbox)
        .map_err(|e| sandbox_err("create the sandbox")(e.to_string()))?;
    let stdio = StdioPaths {
        stdin: if opts.interactive {
            "fd://0".into()
        } else {
            String::new()
        },
        stdout: "fd://1".into(),
        stderr: "fd://2".into(),
        terminal: false,
    };
    let mut create = CreateContainerRequest::new();
    create.container_id = name.clone();
    create.oci_spec_json = serde_json::to_vec(&spec).unwrap_or_default();
    create.stdio = Some(stdio.agent_stdio()).into();
    pod.agent
        .create_container(ctx(), &create)
        .map_err(|e| sandbox_err("create the container")(e.to_string()))?;
    let mut io = ProcessIo::attach(&pod.endpoint, &name, "", &stdio)
        .map_err(|e| sandbox_err("connect the container's stdio")(hull_vmm::error_chain(&e)))?;
    let mut start = ContainerRequest::new();
    start.container_id = name.clone();
    pod.agent
        .start_container(ctx(), &start)
        .map_err(|e| sandbox_err("start the container")(e.to_string()))?;
    forward_signals(pod.clone(), name.clone());

    let exit = rx
        .recv()
        .unwrap_or_else(|_| Err("the event stream ended".into()));
    io.drain(Duration::from_secs(5));
    io.close();
    drop(cleanup);
    let status = exit.map_err(RunError::VmGone)?;
    Ok(status)
}

/// SIGINT, SIGTERM and SIGHUP to `hull run` go to the container's process (blocked here
/// and taken by a thread of their own; the container decides what they mean).
fn forward_signals(pod: Arc<Pod>, container: String) {
    let set = crate::signals::forwarded();
    std::thread::spawn(move || loop {
        let Some(sig) = crate::signals::wait(&set) else {
            return;
        };
        let mut req = SignalProcessRequest::new();
        req.container_id = container.clone();
        req.signal = sig as u32;
        if let Err(e) = pod.agent.signal_process(ctx(), &req) {
            log::debug!("forwarding signal {sig}: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_like_docker_and_refuse_nonsense() {
        assert_eq!(parse_memory("512m").unwrap(), 512);
        assert_eq!(parse_memory("1G").unwrap(), 1024);
        assert_eq!(parse_memory("262144k").unwrap(), 256);
        assert_eq!(parse_memory("134217728").unwrap(), 128);
        assert_eq!(parse_memory("100mb").unwrap(), 100);
        for bad in ["", "lots", "4m", "-1g", "99999999999999g"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_checked() {
        check_name("web-1.a_b").unwrap();
        for bad in ["", "-x", "a/b", "a b", &"n".repeat(41)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(random_name().starts_with("hull-"));
    }
}
