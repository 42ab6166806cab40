//! A sandbox VM from the host's side: started from a template when one exists (restore)
//! or by a cold boot, its agent reached over hybrid vsock, and the guest made consistent
//! after a restore (clock set, kernel RNG reseeded with fresh host entropy) before anyone
//! uses it.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent::{Agent, AgentError};
use hull_protocol::rpc::{adopt, connect_within, AgentConnection, ConnectError, Endpoint};
use hull_vmm_api::{ControlClient, ControlError};

use crate::template::{Template, TemplateCache, TemplateError};
use crate::vmm_process::{Nic, VmmPaths, VmmProcess, VmmProcessError};
use crate::VmSpec;

/// A cold boot on a host whose KVM emulates guest kernel code takes about a minute;
/// hardware takes well under a second.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(480);
/// From a restored VMM's start to its agent's answer.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);
/// Any one control or agent call made while starting.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The first Ping on an adopted connection: the guest answers at once or the connection
/// is not worth keeping (a new one is made instead).
const ADOPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes of host entropy given to every guest at start.
const ENTROPY_BYTES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Vmm(#[from] VmmProcessError),
    #[error("the agent did not answer within {within:?} (VMM log: {log})")]
    Unreachable {
        within: Duration,
        #[source]
        source: ConnectError,
        log: String,
    },
    #[error("prepare the guest")]
    Agent(#[from] AgentError),
    #[error("the VMM's control API")]
    Control(#[from] ControlError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Io(#[from] crate::PathError),
    #[error("creating scratch taps for a template's network devices")]
    ScratchNetwork(#[source] std::io::Error),
}

/// How a sandbox came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPath {
    /// Restored from the template in `dir`; `built` when this start had to make it first.
    Template {
        dir: PathBuf,
        built: bool,
    },
    /// Restored from a snapshot the caller named.
    Snapshot {
        dir: PathBuf,
    },
    ColdBoot,
}

impl std::fmt::Display for StartPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartPath::Template { dir, built: false } => {
                write!(f, "restored from template {}", dir.display())
            }
            StartPath::Template { dir, built: true } => {
                write!(f, "restored from template {} (made now)", dir.display())
            }
            StartPath::Snapshot { dir } => write!(f, "restored from snapshot {}", dir.display()),
            StartPath::ColdBoot => write!(f, "cold boot"),
        }
    }
}

/// Where the time to a usable sandbox went.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimings {
    /// Spawning hull-vmm until its vsock socket is there (for a restore: the VMM mapped
    /// memory, loaded the state and the guest handled the transport reset).
    pub vmm_ready: Duration,
    /// Until the agent's first answer.
    pub agent_ready: Duration,
    /// Until the guest clock and RNG were set: the sandbox is usable.
    pub ready: Duration,
    /// The agent connection the snapshot kept was adopted (no new connection for the
    /// guest to set up).
    pub adopted: bool,
}

pub struct Sandbox {
    vmm: VmmProcess,
    pub agent: Agent,
    pub control: ControlClient,
    pub path: StartPath,
    pub timings: StartTimings,
}

impl Sandbox {
    /// Starts a sandbox whose sockets and logs live in `run_dir`: restored from the
    /// template for `spec` (made first if the cache has none) when `templates` is given,
    /// else cold-booted. A template that cannot be made or restored falls back to a cold
    /// boot; the log says which path was taken and why.
    pub fn start(
        spec: &VmSpec,
        run_dir: &Path,
        templates: Option<&TemplateCache>,
    ) -> Result<Sandbox, SandboxError> {
        Self::start_with_nics(spec, run_dir, templates, &[])
    }

    /// [`Sandbox::start`] with network devices backed by `nics` (`spec.nics` of them). A
    /// template is made with scratch taps of its own; the restore takes these.
    pub fn start_with_nics(
        spec: &VmSpec,
        run_dir: &Path,
        templates: Option<&TemplateCache>,
        nics: &[Nic<'_>],
    ) -> Result<Sandbox, SandboxError> {
        let Some(cache) = templates else {
            let s = Self::boot(spec, run_dir, nics)?;
            log::info!("sandbox started by a cold boot (no template cache)");
            return Ok(s);
        };
        let template = match cache.get_or_build(spec, |dir| make_template(spec, dir)) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("no template ({e}); cold boot instead");
                return Self::boot(spec, run_dir, nics);
            }
        };
        match Self::restore_template(spec, run_dir, &template, nics) {
            Ok(s) => {
                log::info!(
                    "sandbox {} in {:.1} ms",
                    s.path,
                    s.timings.ready.as_secs_f64() * 1e3
                );
                Ok(s)
            }
            Err(e) => {
                log::warn!(
                    "restoring template {} failed ({e}); cold boot instead",
                    template.dir.display()
                );
                if !template.built {
                    // Made on another occasion and no longer restorable here: rebuild it
                    // next time rather than fail the same way on every start.
                    if let Err(d) = cache.discard(&template) {
                        log::warn!("cannot remove template {}: {d}", template.dir.display());
                    }
                }
                clear_run_dir(run_dir);
                Self::boot(spec, run_dir, nics)
            }
        }
    }

    pub fn cold_boot(spec: &VmSpec, run_dir: &Path) -> Result<Sandbox, SandboxError> {
        Self::boot(spec, run_dir, &[])
    }

    fn boot(spec: &VmSpec, run_dir: &Path, nics: &[Nic<'_>]) -> Result<Sandbox, SandboxError> {
        let paths = VmmPaths::in_dir(run_dir);
        let vmm = VmmProcess::spawn(spec, paths, None, nics)?;
        Self::connect(vmm, StartPath::ColdBoot, BOOT_TIMEOUT, false)
    }

    fn restore_template(
        spec: &VmSpec,
        run_dir: &Path,
        template: &Template,
        nics: &[Nic<'_>],
    ) -> Result<Sandbox, SandboxError> {
        let mut s = Self::restore_with_nics(spec, run_dir, &template.dir, nics)?;
        s.path = StartPath::Template {
            dir: template.dir.clone(),
            built: template.built,
        };
        Ok(s)
    }

    /// Restores the snapshot in `snapshot_dir` (made with [`Sandbox::snapshot`]).
    pub fn restore(
        spec: &VmSpec,
        run_dir: &Path,
        snapshot_dir: &Path,
    ) -> Result<Sandbox, SandboxError> {
        Self::restore_with_nics(spec, run_dir, snapshot_dir, &[])
    }

    fn restore_with_nics(
        spec: &VmSpec,
        run_dir: &Path,
        snapshot_dir: &Path,
        nics: &[Nic<'_>],
    ) -> Result<Sandbox, SandboxError> {
        let paths = VmmPaths::in_dir(run_dir);
        let vmm = VmmProcess::spawn(spec, paths, Some(snapshot_dir), nics)?;
        let path = StartPath::Snapshot {
            dir: snapshot_dir.to_path_buf(),
        };
        Self::connect(vmm, path, RESTORE_TIMEOUT, true)
    }

    fn connect(
        mut vmm: VmmProcess,
        path: StartPath,
        within: Duration,
        restored: bool,
    ) -> Result<Sandbox, SandboxError> {
        let vsock = vmm.paths.vsock.clone();
        vmm.wait_for_path(&vsock, within)?;
        let vmm_ready = vmm.started.elapsed();
        let endpoint = Endpoint::HybridVsock(vsock);
        let unreachable = |vmm: &VmmProcess, source| SandboxError::Unreachable {
            within,
            source,
            log: vmm.log_text(),
        };
        // A restored VMM may hold the snapshot's idle agent connection: taking it over
        // skips the guest's setup of a new one (its threads), most of a restore's time on
        // a host whose KVM emulates guest kernel code.
        let adopted = if restored {
            adopt_kept(&endpoint).map_err(|e| unreachable(&vmm, e))?
        } else {
            None
        };
        let adopted_one = adopted.is_some();
        let conn = match adopted {
            Some(c) => c,
            None => connect_agent(&mut vmm, &endpoint, within)?,
        };
        let agent_ready = vmm.started.elapsed();
        let api = vmm.paths.api.clone();
        vmm.wait_for_path(&api, within)?;
        let control = ControlClient::connect(&api, CALL_TIMEOUT)
            .map_err(|e| unreachable(&vmm, e))?
            .with_handoff(vmm.handoff.clone());
        let mut sandbox = Sandbox {
            vmm,
            agent: Agent::new(conn.client, CALL_TIMEOUT),
            control,
            path,
            timings: StartTimings {
                vmm_ready,
                agent_ready,
                ready: Duration::ZERO,
                adopted: adopted_one,
            },
        };
        sandbox.make_consistent()?;
        sandbox.timings.ready = sandbox.vmm.started.elapsed();
        Ok(sandbox)
    }

    /// What a guest needs after a restore (and gets after a boot too): the host's time and
    /// fresh entropy, so two sandboxes restored from one template never share RNG output.
    fn make_consistent(&self) -> Result<(), SandboxError> {
        self.agent.set_time_now()?;
        self.agent.reseed_random(host_entropy()?)?;
        Ok(())
    }

    /// Pauses the VM and writes a snapshot into `dir`; the VM stays paused.
    pub fn snapshot(&self, dir: &Path) -> Result<(), SandboxError> {
        self.control.pause()?;
        self.control.snapshot(dir)?;
        Ok(())
    }

    pub fn resume(&self) -> Result<(), SandboxError> {
        self.control.resume()?;
        Ok(())
    }

    pub fn ping(&self) -> Result<(), SandboxError> {
        Ok(self.agent.ping()?)
    }

    pub fn vmm_pid(&self) -> Option<u32> {
        self.vmm.pid()
    }

    /// The VMM's exit status once it has exited, `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.vmm.try_status()
    }

    pub fn paths(&self) -> &VmmPaths {
        &self.vmm.paths
    }

    /// Stops the VM through its control API and waits for the VMM to exit.
    pub fn shutdown(mut self) -> Option<std::process::ExitStatus> {
        let _ = self.control.shutdown();
        self.vmm.wait(Duration::from_secs(10))
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        self.vmm.kill();
    }
}

/// The agent connection a restored snapshot kept, if there is one; an agent of another
/// protocol version is an error (no new connection would do better).
fn adopt_kept(endpoint: &Endpoint) -> Result<Option<AgentConnection>, ConnectError> {
    match adopt(endpoint, ADOPT_TIMEOUT) {
        Ok(c) => Ok(Some(c)),
        Err(e @ ConnectError::Version { .. }) => Err(e),
        Err(e) => {
            log::debug!("no kept agent connection to adopt ({e}); connecting anew");
            Ok(None)
        }
    }
}

/// A new agent connection, tried in short attempts until `within` has passed, so a VMM
/// that dies is noticed between them.
fn connect_agent(
    vmm: &mut VmmProcess,
    endpoint: &Endpoint,
    within: Duration,
) -> Result<AgentConnection, SandboxError> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = left.min(Duration::from_secs(5));
        match connect_within(endpoint, attempt, Duration::from_millis(20)) {
            Ok(c) => return Ok(c),
            Err(source) => {
                vmm.check_alive("its agent answered")?;
                if Instant::now() >= deadline || matches!(source, ConnectError::Version { .. }) {
                    return Err(SandboxError::Unreachable {
                        within,
                        source,
                        log: vmm.log_text(),
                    });
                }
            }
        }
    }
}

/// A cold boot to agent-ready, then a snapshot into `dir`: the template build. Returns the
/// boot's duration in milliseconds.
fn make_template(spec: &VmSpec, dir: &Path) -> Result<u64, SandboxError> {
    let run = dir.join("run");
    crate::private::private_dir(&run).map_err(crate::PathError::at("create", &run))?;
    // The template's network devices need backends while it boots: taps in a network
    // namespace of their own, gone with their descriptors. A restore takes the pod's.
    let taps = scratch_taps(spec.nics)?;
    let nics: Vec<Nic<'_>> = taps
        .iter()
        .map(|t| Nic {
            tap: t.as_fd(),
            mac: None,
        })
        .collect();
    let sandbox = Sandbox::boot(spec, &run, &nics)?;
    let boot_ms = sandbox.timings.agent_ready.as_millis() as u64;
    log::info!("template: agent ready {boot_ms} ms after the VMM started; snapshotting");
    sandbox.snapshot(dir)?;
    let status = sandbox.shutdown();
    log::debug!("template VMM ended: {status:?}");
    let _ = std::fs::remove_dir_all(&run);
    Ok(boot_ms)
}

/// `n` taps in a new network namespace that nothing else uses.
fn scratch_taps(n: u8) -> Result<Vec<std::os::fd::OwnedFd>, SandboxError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    hull_net::netns::run_in_new(move || {
        (0..n)
            .map(|i| hull_net::tap::create(&format!("tap{i}_hull")))
            .collect::<Result<Vec<_>, _>>()
    })
    .map_err(SandboxError::ScratchNetwork)?
    .map_err(|e| SandboxError::ScratchNetwork(std::io::Error::other(e)))
}

fn host_entropy() -> Result<Vec<u8>, SandboxError> {
    let mut buf = vec![0u8; ENTROPY_BYTES];
    let path = Path::new("/dev/urandom");
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(crate::PathError::at("read", path))?;
    Ok(buf)
}

/// Removes what a failed start left in `run_dir` (sockets, logs), keeping the directory.
fn clear_run_dir(run_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(run_dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
