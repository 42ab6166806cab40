//! One sandbox VM as the shim uses it: the VM (restored from a template or booted), its
//! agent and control clients, the drive slots its containers' root filesystems occupy, and
//! the thread that reads the agent's event stream (exits, OOM kills) and notices the VM's
//! death.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hull_protocol::rpc::agent::Event;
use hull_protocol::rpc::protobuf::Message;
use hull_protocol::rpc::Endpoint;
use hull_protocol::stream::{read_frame, Header, Kind};
use hull_vmm_api::{ControlClient, ControlError};

use crate::agent::AgentError;
use crate::guest::Guest;
use crate::lock;
use crate::podnet::PodNetwork;
use crate::portforward::PortForward;
use crate::sandbox::{Sandbox, SandboxError};
use crate::template::TemplateCache;
use crate::VmSpec;

/// How long any one agent or VMM call may take before the host gives up on it, unless the
/// configuration says otherwise (`agent_timeout_secs`). Long, because on hosts whose KVM
/// emulates guest kernel code a container's creation alone can take tens of seconds;
/// bounded, so a hung guest fails calls instead of hanging them.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("start the sandbox VM")]
    Start(#[source] Box<SandboxError>),
    #[error("configure the guest's network as CNI set up the pod's")]
    Network(#[source] AgentError),
    #[error("create {0}")]
    RunDir(PathBuf, #[source] std::io::Error),
    #[error("all {0} drive slots of the sandbox are in use; raise drive_slots in the hull config")]
    NoFreeSlot(usize),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("the VMM's control API")]
    Control(#[from] ControlError),
    #[error("open the agent's event stream")]
    Events(#[source] hull_protocol::rpc::ConnectError),
    #[error("start the thread that reads the agent's events")]
    EventThread(#[source] std::io::Error),
    #[error("the host directory {path}")]
    ShareSource {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the agent's event stream and the VMM report, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodEvent {
    /// A process exited (`exec` is `None` for a container's init).
    Exited {
        container: String,
        exec: Option<String>,
        status: i32,
        at_nanos: i64,
    },
    /// A container's cgroup hit its memory limit and the kernel killed in it.
    Oom { container: String },
    /// The VM is gone (crashed, killed): every process still running is lost.
    VmGone { why: String },
}

/// Where a pod's events go: called on the pod's event thread, in the order they came.
pub trait EventSink: Send + Sync {
    fn event(&self, event: PodEvent);
}

pub struct Pod {
    pub id: String,
    pub run_dir: PathBuf,
    /// The agent and the endpoint of its processes' stdio streams.
    pub guest: Guest,
    pub control: ControlClient,
    sandbox: Mutex<Option<Sandbox>>,
    /// Each drive slot's state.
    slots: Mutex<Vec<Slot>>,
    serials: AtomicU32,
    /// Set by [`Pod::shutdown`]: the event stream's end is expected then.
    stopping: AtomicBool,
    /// Where the VM's console and VMM log go when it stops, if they are kept.
    keep_logs: Option<PathBuf>,
    /// Read-write volumes: host directory (canonical) to its share name. A pod's volumes
    /// are fixed for its life, so shares stay until the VM goes; containers of the pod
    /// that bind the same directory (an `emptyDir`) see one share.
    shares: Mutex<SharedFs>,
    /// The pod's CNI interfaces joined to the VM's taps, released when the VM goes.
    network: Mutex<Option<PodNetwork>>,
    /// kubectl port-forward's listener in the pod's network namespace.
    forward: Mutex<Option<PortForward>>,
}

#[derive(Default)]
struct SharedFs {
    by_source: std::collections::HashMap<PathBuf, String>,
    /// Where the guest mounted the shared file system, once it has.
    guest_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Free,
    /// Holds the disk named so (a container's root or volume).
    Used(String),
    /// A disk could not be cleanly taken out (still mounted, or the VMM would not detach
    /// it): the slot is not used again, so no disk is ever read through stale buffers.
    Broken,
}

/// Where a container's root filesystem sits in the VM.
#[derive(Debug, Clone)]
pub struct DriveLease {
    pub slot: u32,
    pub name: String,
    pub guest_rootfs: String,
}

impl Pod {
    /// Starts the VM for pod `id` with its sockets in `run_dir`; with `keep_logs`, its
    /// console and VMM log are moved there when it stops (`debug_console`). Every agent
    /// call then waits at most `call_timeout`.
    /// `network`: the pod's CNI interfaces joined to taps ([`PodNetwork::connect`]); the VM
    /// gets a network device for each and the guest their addresses and routes.
    pub fn start(
        id: &str,
        spec: &VmSpec,
        run_dir: &Path,
        templates: Option<&TemplateCache>,
        keep_logs: Option<PathBuf>,
        call_timeout: Duration,
        network: Option<PodNetwork>,
    ) -> Result<Pod, PodError> {
        crate::private::private_dir(run_dir).map_err(|e| PodError::RunDir(run_dir.into(), e))?;
        let mut spec = spec.clone();
        let nics = network.as_ref().map(PodNetwork::nics).unwrap_or_default();
        spec.nics = nics.len() as u8;
        let started = Sandbox::start_with_nics(&spec, run_dir, templates, &nics)
            .map_err(|e| PodError::Start(Box::new(e)))
            .and_then(|s| match &network {
                Some(net) if !net.joined.is_empty() => {
                    let (interfaces, routes) = net.for_guest();
                    match s.agent.configure_network(interfaces, routes) {
                        Ok(()) => Ok(s),
                        Err(e) => {
                            s.shutdown();
                            Err(PodError::Network(e))
                        }
                    }
                }
                _ => Ok(s),
            });
        drop(nics);
        let sandbox = match started {
            Ok(s) => s,
            Err(e) => {
                if let Some(net) = network {
                    net.disconnect();
                }
                return Err(e);
            }
        };
        log::info!(
            "sandbox {id}: {} (usable {:.0} ms after the VMM started)",
            sandbox.path,
            sandbox.timings.ready.as_secs_f64() * 1e3
        );
        if let Some(pid) = sandbox.vmm_pid() {
            let _ = std::fs::write(run_dir.join("vmm.pid"), pid.to_string());
        }
        let endpoint = Endpoint::HybridVsock(sandbox.paths().vsock.clone());
        // kubectl port-forward: without it the pod still runs, so a failure is logged.
        let forward = network.as_ref().and_then(|net| {
            PortForward::start(&net.netns, endpoint.clone())
                .map_err(|e| {
                    log::warn!("sandbox {id}: kubectl port-forward will not reach this pod: {e}")
                })
                .ok()
        });
        Ok(Pod {
            id: id.to_string(),
            run_dir: run_dir.to_path_buf(),
            guest: Guest {
                agent: sandbox.agent.with_timeout(call_timeout),
                endpoint,
            },
            control: sandbox.control.clone(),
            sandbox: Mutex::new(Some(sandbox)),
            slots: Mutex::new(vec![Slot::Free; usize::from(spec.drive_slots)]),
            serials: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            keep_logs,
            shares: Mutex::new(SharedFs::default()),
            network: Mutex::new(network),
            forward: Mutex::new(forward),
        })
    }

    /// Shares host directory `source` read-write with the VM (once per directory) and has
    /// the guest mount the shared file system (once per VM); returns the directory's path
    /// in the guest.
    pub fn share_dir(&self, source: &Path) -> Result<String, PodError> {
        let source = std::fs::canonicalize(source).map_err(|e| PodError::ShareSource {
            path: source.to_path_buf(),
            source: e,
        })?;
        // Held across the calls: two containers sharing one directory must not race.
        let mut shares = lock(&self.shares);
        let name = match shares.by_source.get(&source) {
            Some(name) => name.clone(),
            None => {
                let name = format!("s{}", shares.by_source.len());
                self.control.add_share(&name, &source)?;
                log::info!("sandbox {}: {} shared as {name}", self.id, source.display());
                shares.by_source.insert(source, name.clone());
                name
            }
        };
        let dir = match &shares.guest_dir {
            Some(d) => d.clone(),
            None => {
                let d = self.guest.agent.mount_shared_fs(crate::SHARED_FS_TAG)?;
                shares.guest_dir = Some(d.clone());
                d
            }
        };
        Ok(format!("{dir}/{name}"))
    }

    /// Reads the agent's event stream on a thread of its own until the VM goes away.
    pub fn watch(self: &Arc<Self>, sink: Arc<dyn EventSink>) -> Result<(), PodError> {
        let mut stream = self
            .guest
            .endpoint
            .open_stream(&Header::new(Kind::Events, "", ""))
            .map_err(PodError::Events)?;
        let pod = Arc::clone(self);
        std::thread::Builder::new()
            .name("agent-events".into())
            .spawn(move || {
                let why = loop {
                    match read_frame(&mut stream) {
                        Ok(Some(frame)) => {
                            if let Err(e) = apply_event(&frame, sink.as_ref()) {
                                log::warn!("agent event: {e}");
                            }
                        }
                        Ok(None) => break "the agent's event stream ended".to_string(),
                        Err(e) => break format!("the agent's event stream failed: {e}"),
                    }
                };
                if pod.stopping.load(Ordering::SeqCst) {
                    log::debug!("sandbox {}: {why} (stopping)", pod.id);
                    return;
                }
                let status = pod.reap();
                sink.event(PodEvent::VmGone {
                    why: match status {
                        Some(s) => format!("{why}: the sandbox VM exited ({s})"),
                        None => why,
                    },
                });
            })
            .map_err(PodError::EventThread)?;
        Ok(())
    }

    /// The VMM's exit status if it has exited (reaping it), waiting a moment for it.
    fn reap(&self) -> Option<std::process::ExitStatus> {
        let mut guard = lock(&self.sandbox);
        let s = guard.as_mut()?;
        for _ in 0..100 {
            if let Some(status) = s.exit_status() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Puts `image` into a free drive slot and has the agent mount it (`writable`: under
    /// a writable overlay); returns where it is in the guest. `what` names it in logs.
    pub fn lease_drive(
        &self,
        what: &str,
        image: &Path,
        writable: bool,
    ) -> Result<DriveLease, PodError> {
        // Unique within the VM: a stale disk with an old serial is never mistaken for it,
        // and no container id can collide with the mount's name.
        let n = self.serials.fetch_add(1, Ordering::Relaxed);
        let name = format!("d{n}");
        let slot = {
            let mut slots = lock(&self.slots);
            let free = slots
                .iter()
                .position(|s| *s == Slot::Free)
                .ok_or(PodError::NoFreeSlot(slots.len()))?;
            slots[free] = Slot::Used(name.clone());
            free as u32
        };
        let t = std::time::Instant::now();
        let result = self.attach_and_mount(slot, &name, n, image, writable);
        match &result {
            Ok(l) => log::info!(
                "container {what}: root disk in slot {slot} mounted at {} in {:.0} ms",
                l.guest_rootfs,
                t.elapsed().as_secs_f64() * 1e3
            ),
            Err(e) => log::warn!(
                "{what}: disk in slot {slot}: {}",
                hull_vmm_api::error_chain(e)
            ),
        }
        result
    }

    fn attach_and_mount(
        &self,
        slot: u32,
        name: &str,
        n: u32,
        image: &Path,
        writable: bool,
    ) -> Result<DriveLease, PodError> {
        let serial = format!("hull-{n}");
        if let Err(e) = self.control.attach_drive(slot, image, true, &serial) {
            // The VMM may have attached it before the call failed: detach to know.
            self.detach(slot, true);
            return Err(e.into());
        }
        match self.guest.agent.mount_drive(&serial, name, writable) {
            Ok(guest_rootfs) => Ok(DriveLease {
                slot,
                name: name.to_string(),
                guest_rootfs,
            }),
            Err(e) => {
                // Whether the guest mounted it is unknown (a timeout, an internal error):
                // the slot's buffers cannot be trusted again.
                self.detach(slot, e.refused_cleanly());
                Err(e.into())
            }
        }
    }

    /// Unmounts a disk in the guest and empties its slot. A disk the guest would not
    /// unmount is detached all the same (its container is gone) and its slot retired.
    pub fn release_drive(&self, lease: &DriveLease) -> Result<(), PodError> {
        let unmounted = self.guest.agent.unmount_drive(&lease.name);
        self.detach(lease.slot, unmounted.is_ok());
        Ok(unmounted?)
    }

    /// Empties `slot` in the VMM; it is free again only when that worked and the guest
    /// let go of the disk cleanly (`clean`).
    fn detach(&self, slot: u32, clean: bool) {
        let detached = self.control.detach_drive(slot);
        if let Err(e) = &detached {
            log::warn!("slot {slot}: {}", hull_vmm_api::error_chain(e));
        }
        let state = if detached.is_ok() && clean {
            Slot::Free
        } else {
            log::warn!("drive slot {slot} retired for the life of this VM");
            Slot::Broken
        };
        lock(&self.slots)[slot as usize] = state;
    }

    /// Stops the VM (orderly through its control API, SIGKILL after a grace period) and
    /// removes its run directory.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let sandbox = lock(&self.sandbox).take();
        if let Some(s) = sandbox {
            let status = s.shutdown();
            log::info!("sandbox {}: VM stopped ({status:?})", self.id);
        }
        if let Some(f) = lock(&self.forward).take() {
            f.stop();
        }
        if let Some(net) = lock(&self.network).take() {
            net.disconnect();
        }
        if let Some(dir) = &self.keep_logs {
            self.keep_logs_in(dir);
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }

    fn keep_logs_in(&self, dir: &Path) {
        if let Err(e) = crate::private::private_dir(dir) {
            log::warn!(
                "keeping the logs of sandbox {}: create {}: {e}",
                self.id,
                dir.display()
            );
            return;
        }
        for name in ["console.log", "vmm.log"] {
            let from = self.run_dir.join(name);
            let to = dir.join(name);
            // rename when on one file system, a copy across them (/run is a tmpfs).
            let kept =
                std::fs::rename(&from, &to).or_else(|_| std::fs::copy(&from, &to).map(|_| ()));
            if let Err(e) = kept {
                log::warn!("keeping {}: {e}", from.display());
            }
        }
        log::info!(
            "sandbox {}: console and VMM log kept in {}",
            self.id,
            dir.display()
        );
    }
}

/// Decodes one frame of the agent's event stream and reports it to `sink`. The frame
/// comes from the guest, which is not trusted: anything that does not decode is an error
/// and changes nothing; names that match no process are ignored by the sink.
pub fn apply_event(frame: &[u8], sink: &dyn EventSink) -> Result<(), String> {
    let e = Event::parse_from_bytes(frame).map_err(|e| e.to_string())?;
    if e.has_exit() {
        let x = e.exit();
        sink.event(PodEvent::Exited {
            container: x.container_id.clone(),
            exec: (!x.exec_id.is_empty()).then(|| x.exec_id.clone()),
            status: x.exit_status,
            at_nanos: x.exited_at_nanos,
        });
    } else if e.has_oom() {
        sink.event(PodEvent::Oom {
            container: e.oom().container_id.clone(),
        });
    }
    Ok(())
}

/// Kills the VMM recorded in `run_dir` (the shim that started it is gone) and removes the
/// directory. The pid is only signalled if it still is that VMM: its command line names the
/// directory.
pub fn kill_orphaned(run_dir: &Path) {
    let pid: Option<i32> = std::fs::read_to_string(run_dir.join("vmm.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&p| p > 1);
    let needle = run_dir.to_string_lossy();
    if let Some(pid) = pid.filter(|_| run_dir.is_absolute() && needle.len() > 1) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(needle.as_ref());
        if ours {
            // SAFETY: kill(2) with a pid that names our orphaned VMM (checked above).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            for _ in 0..200 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            log::info!("killed the orphaned VMM {pid} of {}", run_dir.display());
        }
    }
    let _ = std::fs::remove_dir_all(run_dir);
}
