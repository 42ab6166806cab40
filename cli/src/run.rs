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

use hull_host::agent::{AgentError, ProcessId};
use hull_host::config::{HostConfig, Limits};
use hull_host::container::{self, StorageError};
use hull_host::guest::ProcessError;
use hull_host::pod::{EventSink, Pod, PodError, PodEvent};
use hull_host::spec::{self, SandboxFiles};
use hull_host::stdio::Stdio;

use crate::{image, oci, paths, state, terminal};

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
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("--memory {0:?}: {1}")]
    Memory(String, &'static str),
    #[error("--cpus {0}: give 1 to 255")]
    Cpus(u32),
    #[error("{0}")]
    Volume(String),
    #[error("{what}: {why}")]
    Sandbox { what: &'static str, why: String },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("start the sandbox VM")]
    Start(#[source] PodError),
    #[error("watch the sandbox")]
    Watch(#[source] PodError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("the sandbox VM stopped before the container exited: {0}")]
    VmGone(String),
}

/// What `hull run` was asked (saved for a detached run's supervisor).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RunOptions {
    pub name: Option<String>,
    pub rm: bool,
    pub detach: bool,
    pub interactive: bool,
    pub tty: bool,
    pub cpus: Option<u32>,
    pub memory: Option<String>,
    pub volumes: Vec<String>,
    /// The container's root is read-only (docker's `--read-only`).
    #[serde(default)]
    pub read_only: bool,
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
    fn event(&self, event: PodEvent) {
        let tx = hull_host::lock(&self.tx);
        match event {
            PodEvent::Exited {
                container,
                exec: None,
                status,
                ..
            } if container == self.container => {
                let _ = tx.send(Ok(status));
            }
            PodEvent::Oom { container } => log::info!("{container}: out of memory"),
            PodEvent::VmGone { why } => {
                let _ = tx.send(Err(why));
            }
            PodEvent::Exited { .. } => {}
        }
    }
}

/// Removes what a run made, whichever way it ends: the VM, its run directory, the
/// volume copies, and with `--rm` the record too.
struct Cleanup {
    pod: Option<Arc<Pod>>,
    name: String,
    run_dir: PathBuf,
    remove_record: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pod) = self.pod.take() {
            pod.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(paths::volumes(&self.name));
        if self.remove_record {
            let _ = std::fs::remove_dir_all(state::dir(&self.name));
        }
    }
}

fn io_err<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl Fn(E) -> RunError {
    move |e| RunError::Io {
        what,
        source: Box::new(e),
    }
}

/// A run checked and ready: nothing has been started or written yet.
struct Prepared {
    name: String,
    spec: hull_host::spec::Spec,
    plan: spec::GuestPlan,
    root_image: PathBuf,
    vm: hull_host::VmSpec,
}

fn prepare(opts: &RunOptions, config: &HostConfig) -> Result<Prepared, RunError> {
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
    let (root_image, image_config) = image::resolve(&paths::images(), &opts.image)?;
    let process = with_image_defaults(&opts.process, &image_config);
    let mut spec = oci::build(&name, &process, &volumes, opts.read_only)?;
    let plan = spec::for_guest(&mut spec, "").map_err(|e| RunError::Volume(e.to_string()))?;
    if !config.shared_fs && !plan.shared.is_empty() {
        return Err(RunError::Volume(
            "read-write volumes need shared_fs = true in the hull config; add :ro to copy the directory in instead".into(),
        ));
    }
    let vm = config
        .vm_spec((memory_mib.is_some() || vcpus.is_some()).then_some(Limits { vcpus, memory_mib }));
    Ok(Prepared {
        name,
        spec,
        plan,
        root_image,
        vm,
    })
}

/// The command line's process over the image's defaults, as docker combines them: the
/// entrypoint stays and the command replaces the image's; variables given replace the
/// image's of the same name; the working directory and user apply when not given.
fn with_image_defaults(p: &oci::Process, image: &crate::store::RunConfig) -> oci::Process {
    let mut args = image.entrypoint.clone();
    if p.args.is_empty() {
        args.extend(image.cmd.iter().cloned());
    } else {
        args.extend(p.args.iter().cloned());
    }
    let mut env = image.env.clone();
    env.extend(p.env.iter().cloned());
    let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
    oci::Process {
        args,
        env,
        cwd: p.cwd.clone().or_else(|| nonempty(&image.working_dir)),
        user: p.user.clone().or_else(|| nonempty(&image.user)),
        terminal: p.terminal,
    }
}

fn record_for(p: &Prepared, opts: &RunOptions) -> state::Record {
    state::Record {
        name: p.name.clone(),
        image: opts.image.clone(),
        command: opts.process.args.clone(),
        created: state::now(),
        status: state::Status::Created,
        owner_pid: std::process::id(),
        detached: opts.detach,
    }
}

/// `hull run` in the foreground: returns the container's exit status.
pub fn run(opts: &RunOptions, config: &HostConfig) -> Result<i32, RunError> {
    let p = prepare(opts, config)?;
    let record = record_for(&p, opts);
    state::claim(&record)?;
    execute(p, opts, config, record)
}

/// `hull run -d`: starts a supervisor that owns the sandbox (its output goes to the
/// container's log) and returns the container's name once it runs.
pub fn run_detached(opts: &RunOptions, config: &HostConfig) -> Result<String, RunError> {
    let p = prepare(opts, config)?;
    let record = record_for(&p, opts);
    state::claim(&record)?;
    let name = p.name.clone();
    let fail = |e: RunError| {
        let _ = state::remove(&name);
        e
    };
    let options = state::dir(&name).join("run.json");
    let mut saved = opts.clone();
    saved.name = Some(name.clone());
    std::fs::write(&options, serde_json::to_vec(&saved).unwrap_or_default())
        .map_err(|e| fail(io_err("save the run's options")(e)))?;
    let log = std::fs::File::create(state::log_file(&name))
        .map_err(|e| fail(io_err("create the container's log")(e)))?;
    let err_log = log
        .try_clone()
        .map_err(|e| fail(io_err("create the container's log")(e)))?;
    let exe = std::env::current_exe().map_err(|e| fail(io_err("find the hull binary")(e)))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("__supervise")
        .arg(&name)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err_log);
    let new_session = || {
        // SAFETY: setsid only changes the calling process's session (the child's: the
        // caller's terminal and its signals do not reach the supervisor).
        unsafe { libc::setsid() };
        Ok(())
    };
    // SAFETY: the closure runs in the child between fork and exec and calls only setsid,
    // which is async-signal-safe.
    unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, new_session) };
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(io_err("start the supervisor")(e)))?;
    // The supervisor takes the record over; wait until the container runs or the run
    // failed (bounded by the agent's own call deadlines, generously).
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        match state::read(&name) {
            Ok(r) if r.owner_pid == child.id() => match r.status {
                state::Status::Running | state::Status::Exited { .. } => return Ok(name),
                state::Status::Failed { reason } => {
                    let _ = child.wait();
                    return Err(RunError::Sandbox {
                        what: "start the detached container",
                        why: reason,
                    });
                }
                state::Status::Created => {}
            },
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        if let Ok(Some(status)) = child.try_wait() {
            if let Ok(r) = state::read(&name) {
                if let state::Status::Running | state::Status::Exited { .. } = r.status {
                    return Ok(name);
                }
            }
            let _ = state::remove(&name);
            return Err(RunError::Sandbox {
                what: "start the detached container",
                why: format!("its supervisor ended ({status}); hull run without -d shows why"),
            });
        }
        if std::time::Instant::now() > deadline {
            return Err(RunError::Sandbox {
                what: "start the detached container",
                why: "it did not start within 600 s".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The supervisor of a detached container (`hull __supervise NAME`): runs it as the
/// foreground path does, its stdio being the log.
pub fn supervise(name: &str, config: &HostConfig) -> Result<i32, RunError> {
    let bytes = std::fs::read(state::dir(name).join("run.json"))
        .map_err(io_err("read the run's options"))?;
    let opts: RunOptions =
        serde_json::from_slice(&bytes).map_err(io_err("read the run's options"))?;
    let mut record = state::read(name)?;
    record.owner_pid = std::process::id();
    record.status = state::Status::Created;
    state::write(&record)?;
    let result = prepare(&opts, config).and_then(|p| execute(p, &opts, config, record.clone()));
    if let Err(e) = &result {
        record.status = state::Status::Failed {
            reason: hull_vmm_api::error_chain(e),
        };
        let _ = state::write(&record);
    }
    result
}

fn execute(
    p: Prepared,
    opts: &RunOptions,
    config: &HostConfig,
    mut record: state::Record,
) -> Result<i32, RunError> {
    let Prepared {
        name,
        mut spec,
        plan,
        root_image,
        vm,
    } = p;
    let run_dir = state::run_dir(&name);
    if run_dir.exists() {
        // A run of this name that crashed: its VM, if any, goes.
        hull_host::pod::kill_orphaned(&run_dir);
    }
    let mut cleanup = Cleanup {
        pod: None,
        name: name.clone(),
        run_dir: run_dir.clone(),
        remove_record: opts.rm,
    };
    // Read-only volume copies live on tmpfs, private to root, and go with the run.
    let volumes = container::build_volume_images(&plan, &paths::volumes(&name))?;
    let progress = crate::progress::step(start_message(config, &vm));
    let pod = start_pod(&name, &vm, &run_dir, config)?;
    cleanup.pod = Some(pod.clone());
    let (tx, rx) = channel();
    let exits = Exits {
        container: name.clone(),
        tx: Mutex::new(tx),
    };
    pod.watch(Arc::new(exits)).map_err(RunError::Watch)?;
    pod.attach_storage(&name, &mut spec, &plan, &root_image, &volumes)?;

    progress.set("creating the container");
    let files = SandboxFiles {
        hostname: Some(name.clone()),
        ..Default::default()
    };
    pod.guest.agent.create_sandbox(&files)?;
    let stdio = Stdio::inherited(opts.interactive, opts.tty);
    let (_, mut io) = pod.guest.create_container(&name, &spec, &stdio)?;
    drop(progress);
    // The terminal is raw from just before the container starts until this returns (the
    // guard is dropped on every path out, errors included).
    let _raw = (opts.tty && opts.interactive)
        .then(|| terminal::RawMode::enter(0))
        .flatten();
    if opts.tty {
        crate::lifecycle::resize(&pod.guest.agent, ProcessId::init(&name));
    }
    pod.guest.agent.start_container(&name)?;
    record.status = state::Status::Running;
    state::write(&record)?;
    crate::lifecycle::forward_signals(pod.guest.agent.clone(), name.clone(), None, opts.tty);

    let exit = rx
        .recv()
        .unwrap_or_else(|_| Err("the event stream ended".into()));
    io.drain();
    io.close();
    record.status = match &exit {
        Ok(code) => state::Status::Exited { code: *code },
        Err(why) => state::Status::Failed {
            reason: format!("the sandbox VM stopped: {why}"),
        },
    };
    if !opts.rm {
        let _ = state::write(&record);
    }
    drop(cleanup);
    let status = exit.map_err(RunError::VmGone)?;
    Ok(status)
}

/// What the progress line says while the sandbox starts.
fn start_message(config: &HostConfig, vm: &hull_host::VmSpec) -> &'static str {
    match config.template_cache() {
        Some(t) if matches!(t.get(vm), Ok(None)) => {
            "making the sandbox template (the first run of this VM shape boots and snapshots it)"
        }
        Some(_) => "starting the sandbox (restoring the template)",
        None => "booting the sandbox",
    }
}

/// The run's sandbox VM, from the template cache when the configuration keeps one.
fn start_pod(
    name: &str,
    vm: &hull_host::VmSpec,
    run_dir: &std::path::Path,
    config: &HostConfig,
) -> Result<Arc<Pod>, RunError> {
    let templates = config.template_cache();
    Pod::start(
        name,
        vm,
        run_dir,
        templates.as_ref(),
        None,
        config.call_timeout(),
        None,
    )
    .map(Arc::new)
    .map_err(RunError::Start)
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
    fn the_image_gives_defaults_the_command_line_overrides() {
        let image = crate::store::RunConfig {
            env: vec!["PATH=/bin".into(), "A=image".into()],
            cmd: vec!["serve".into()],
            entrypoint: vec!["/app".into()],
            working_dir: "/srv".into(),
            user: "1000".into(),
        };
        let p = with_image_defaults(&oci::Process::default(), &image);
        assert_eq!(p.args, ["/app", "serve"]);
        assert_eq!(p.cwd.as_deref(), Some("/srv"));
        assert_eq!(p.user.as_deref(), Some("1000"));
        let given = oci::Process {
            args: vec!["--help".into()],
            env: vec!["A=cli".into()],
            cwd: Some("/tmp".into()),
            ..Default::default()
        };
        let p = with_image_defaults(&given, &image);
        assert_eq!(p.args, ["/app", "--help"]);
        let s = serde_json::to_value(oci::build("x", &p, &[], false).unwrap()).unwrap();
        let env = s["process"]["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e == "A=cli") && !env.iter().any(|e| e == "A=image"));
        assert_eq!(p.cwd.as_deref(), Some("/tmp"));
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
