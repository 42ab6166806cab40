//! Create: from containerd's bundle and rootfs mounts to a created container in the VM.
//!
//! The order keeps failures cheap and leaves nothing behind: everything that can be
//! refused is checked before a VM is touched; the host images are built next; then the VM
//! (started for a standalone task or a pod sandbox, joined for a pod member), the disks,
//! the sandbox, the container. An [`Unwind`] records what each step made and undoes it,
//! newest first, if a later step fails.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use containerd_shim::api;
use containerd_shim::protos::ttrpc::Code;
use hull_protocol::rpc::agent::CreateContainerRequest;

use super::process::Process;
use super::{
    agent_err, check_options, container_req, err, pod_err, BundleState, Container, TaskService,
    BUNDLE_STATE,
};
use containerd_shim::TtrpcResult;
use hull_host::lock;
use hull_host::pod::{ctx, DriveLease, Pod};
use hull_host::rootfs;
use hull_host::spec::{self, Role};
use hull_host::stdio::{self as io, ProcessIo, StdioPaths};

/// What a failed Create must undo.
struct Unwind<'a> {
    service: &'a TaskService,
    /// The container's image directories (root on disk, volumes on tmpfs) and the
    /// bundle's state file.
    dirs: Vec<PathBuf>,
    bundle_state: Option<PathBuf>,
    pod: Option<(Arc<Pod>, bool)>,
    leases: Vec<DriveLease>,
    container: Option<&'a str>,
    done: bool,
}

impl<'a> Unwind<'a> {
    fn new(service: &'a TaskService) -> Self {
        Unwind {
            service,
            dirs: Vec::new(),
            bundle_state: None,
            pod: None,
            leases: Vec::new(),
            container: None,
            done: false,
        }
    }
}

impl Drop for Unwind<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(id) = self.container {
            let mut t = lock(&self.service.table);
            t.creating.remove(id);
            self.service.sink.take_early(id);
        }
        match &self.pod {
            // A VM of this Create's own simply goes: nothing in it needs undoing, and a
            // hung guest must not hold the failure up.
            Some((pod, true)) => pod.shutdown(),
            Some((pod, false)) => {
                if let Some(id) = self.container {
                    let _ = pod.agent.remove_container(ctx(), &container_req(id));
                }
                for lease in self.leases.iter().rev() {
                    if let Err(e) = pod.release_drive(lease) {
                        log::warn!(
                            "undoing disk {}: {}",
                            lease.name,
                            hull_vmm_api::error_chain(&e)
                        );
                    }
                }
            }
            None => {}
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(f) = &self.bundle_state {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn invalid(id: &str, what: impl std::fmt::Display) -> containerd_shim::protos::ttrpc::Error {
    err(Code::INVALID_ARGUMENT, format!("container {id}: {what}"))
}

impl TaskService {
    pub(super) fn do_create(&self, req: &api::CreateTaskRequest) -> TtrpcResult<u32> {
        let id = req.id.as_str();
        match self.check_request(req)? {
            Some(path) => self.use_config_file(id, &path)?,
            None => {
                if let Some(e) = &self.config_error {
                    if !self
                        .config_replaced
                        .load(std::sync::atomic::Ordering::SeqCst)
                    {
                        return Err(err(
                            Code::FAILED_PRECONDITION,
                            format!("the hull configuration is unusable: {e}; fix it and retry"),
                        ));
                    }
                }
            }
        }
        let config = self.config();
        let bundle = Path::new(&req.bundle);
        let mut spec = read_spec(bundle).map_err(|e| invalid(id, e))?;
        let role = spec::role(&spec);
        // With no mounts (`ctr run --rootfs DIR`) the spec's root.path is the tree itself.
        let host_rootfs = match spec.pointer("/root/path").and_then(|p| p.as_str()) {
            Some(p) if req.rootfs.is_empty() => bundle.join(p),
            _ => bundle.join("rootfs"),
        };
        // What the guest cannot honour is refused before a VM is touched; the root path is
        // set once the guest has mounted the disk.
        let plan = spec::for_guest(&mut spec, "").map_err(|e| invalid(id, e))?;
        if let (false, Some(v)) = (config.shared_fs, plan.shared.first()) {
            return Err(invalid(
                id,
                format!(
                    "the read-write volume {} at {}: this host's hull config has shared_fs = false, so sandboxes cannot share directories (mount it read-only, or set shared_fs = true)",
                    v.source.display(),
                    v.destination
                ),
            ));
        }

        let mut undo = Unwind::new(self);
        // Per container: its root image on disk (state_dir), its read-only volumes (Secrets,
        // ConfigMaps, service-account tokens) on tmpfs (run_dir), never on persistent disk.
        let images = config.state_dir.join(&self.namespace).join(id);
        let volumes = super::volumes_dir_for(&config.run_dir, &self.namespace, id);
        let dirs = if plan.volumes.is_empty() {
            vec![&images]
        } else {
            vec![&images, &volumes]
        };
        for dir in dirs {
            hull_host::private::private_dir(dir)
                .map_err(|e| err(Code::INTERNAL, format!("create {}: {e}", dir.display())))?;
            undo.dirs.push(dir.clone());
        }
        let root_image = images.join("root.erofs");
        let mut all_images = vec![root_image.clone()];
        build_root_image(req, &host_rootfs, &root_image)
            .map_err(|e| invalid(id, format!("rootfs: {}", hull_vmm_api::error_chain(&e))))?;
        let mut volume_images = Vec::new();
        for (i, v) in plan.volumes.iter().enumerate() {
            let image = volumes.join(format!("volume-{i}.erofs"));
            all_images.push(image.clone());
            let inner = rootfs::build_volume_image(&v.source, &image).map_err(|e| {
                invalid(
                    id,
                    format!(
                        "volume {}: {}",
                        v.destination,
                        hull_vmm_api::error_chain(&e)
                    ),
                )
            })?;
            volume_images.push((image, inner));
        }

        let (pod, owns_pod) = self.pod_for(id, &role, &spec)?;
        undo.pod = Some((pod.clone(), owns_pod));
        let state = BundleState {
            run_dir: pod.run_dir.clone(),
            images: all_images,
        };
        let _ = std::fs::write(
            bundle.join(BUNDLE_STATE),
            serde_json::to_vec(&state).unwrap_or_default(),
        );
        undo.bundle_state = Some(bundle.join(BUNDLE_STATE));

        let read_only_root = spec
            .pointer("/root/readonly")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let root = pod
            .lease_drive(id, &root_image, !read_only_root)
            .map_err(pod_err)?;
        spec["root"]["path"] = serde_json::Value::String(root.guest_rootfs.clone());
        let mut disks = vec![(root.clone(), root_image)];
        undo.leases.push(root);
        for (i, (v, (image, inner))) in plan.volumes.iter().zip(volume_images).enumerate() {
            let lease = pod
                .lease_drive(&format!("{id} volume {i}"), &image, false)
                .map_err(pod_err)?;
            let source = match &inner {
                Some(name) => format!("{}/{name}", lease.guest_rootfs),
                None => lease.guest_rootfs.clone(),
            };
            spec::add_volume(&mut spec, v, &source, true);
            disks.push((lease.clone(), image));
            undo.leases.push(lease);
        }
        // Read-write volumes are shared live; the share outlives a failed Create (the
        // pod's volumes are the pod's, and an own VM goes with the undo anyway).
        for v in &plan.shared {
            let source = pod.share_dir(&v.source).map_err(pod_err)?;
            spec::add_volume(&mut spec, v, &source, false);
        }
        if owns_pod {
            self.create_sandbox(&pod, &plan.files, &spec)?;
        }

        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        lock(&self.table).creating.insert(id.to_string());
        undo.container = Some(id);
        let mut create = CreateContainerRequest::new();
        create.container_id = id.to_string();
        create.oci_spec_json = serde_json::to_vec(&spec).unwrap_or_default();
        create.stdio = Some(stdio.agent_stdio()).into();
        let pid = pod
            .agent
            .create_container(ctx(), &create)
            .map_err(|e| agent_err("CreateContainer", e))?
            .pid;
        let io = ProcessIo::attach(&pod.endpoint, id, "", &stdio)
            .map_err(|e| err(Code::INTERNAL, hull_vmm_api::error_chain(&e)))?;
        let init = Arc::new(Process::new(id, "", stdio, None));
        {
            let mut s = init.state();
            s.pid = pid;
            s.io = Some(io);
        }
        let container = Arc::new(Container {
            bundle: req.bundle.clone(),
            pod: pod.clone(),
            init,
            execs: Mutex::new(Default::default()),
            disks,
            owns_pod,
        });
        let early = {
            let mut t = lock(&self.table);
            if owns_pod {
                t.pod = Some(pod);
            }
            t.containers.insert(id.to_string(), container.clone());
            t.creating.remove(id);
            // Under the table lock, as the event thread stores them: none slips between.
            self.sink.take_early(id)
        };
        undo.done = true;
        // An init that died before it was in the table: its exit waits for Start.
        if let Some(exit) = early {
            container.init.offer_exit(exit, false);
        }
        self.events.send(super::events::TaskEvent::Create {
            id: id.to_string(),
            bundle: req.bundle.clone(),
            pid,
        });
        Ok(pid)
    }

    /// Loads the configuration file a task's runtime options name. It applies to the VM
    /// this shim starts, so only the first task of a shim may bring one (a pod's members
    /// share their sandbox's VM and settings).
    fn use_config_file(&self, id: &str, path: &Path) -> TtrpcResult<()> {
        let config = hull_host::config::HostConfig::load(path).map_err(|e| {
            err(
                Code::INVALID_ARGUMENT,
                format!(
                    "container {id}: runtime options' config: {}",
                    hull_vmm_api::error_chain(&e)
                ),
            )
        })?;
        let t = lock(&self.table);
        if t.pod.is_some() {
            log::info!(
                "container {id}: config {} ignored: this shim's VM runs already",
                path.display()
            );
            return Ok(());
        }
        drop(t);
        log::info!("container {id}: using the configuration {}", path.display());
        hull_host::pod::set_call_timeout(std::time::Duration::from_secs(config.agent_timeout_secs));
        *lock(&self.config) = Arc::new(config);
        self.config_replaced
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Everything about the request itself that can be refused; returns the configuration
    /// file its runtime options name, if any.
    fn check_request(&self, req: &api::CreateTaskRequest) -> TtrpcResult<Option<PathBuf>> {
        let id = req.id.as_str();
        hull_protocol::stream::validate_id("id", id)
            .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
        if lock(&self.table).containers.contains_key(id) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("container {id} already exists"),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(err(
                Code::UNIMPLEMENTED,
                "hull cannot restore a task from a checkpoint yet",
            ));
        }
        let config_path = match req.options.as_ref() {
            Some(o) => check_options(o)?,
            None => None,
        };
        for (name, path) in [
            ("stdin", &req.stdin),
            ("stdout", &req.stdout),
            ("stderr", &req.stderr),
        ] {
            if !io::is_supported(path) {
                return Err(err(
                    Code::INVALID_ARGUMENT,
                    format!("{name} {path:?}: hull writes to FIFOs and file:// paths only (no logging binaries)"),
                ));
            }
        }
        Ok(config_path)
    }

    /// The VM this container runs in: a new one for a standalone task or a pod sandbox
    /// (`true`: this container owns it), the pod's for a pod member.
    fn pod_for(
        &self,
        id: &str,
        role: &Role,
        spec: &serde_json::Value,
    ) -> TtrpcResult<(Arc<Pod>, bool)> {
        match role {
            Role::Standalone | Role::PodSandbox => {
                if lock(&self.table).pod.is_some() {
                    return Err(err(
                        Code::FAILED_PRECONDITION,
                        format!(
                            "container {id} needs a VM of its own, but this shim already runs one"
                        ),
                    ));
                }
                Ok((self.start_pod(id, spec)?, true))
            }
            Role::PodContainer { sandbox } => lock(&self.table)
                .pod
                .clone()
                .filter(|p| &p.id == sandbox)
                .map(|p| (p, false))
                .ok_or_else(|| {
                    err(
                        Code::FAILED_PRECONDITION,
                        format!("container {id} belongs to pod {sandbox}, whose sandbox this shim does not run"),
                    )
                }),
        }
    }
}

fn read_spec(bundle: &Path) -> Result<serde_json::Value, String> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// containerd's rootfs mounts at `host_rootfs`, copied into `image`, unmounted again.
fn build_root_image(
    req: &api::CreateTaskRequest,
    host_rootfs: &Path,
    image: &Path,
) -> Result<(), rootfs::RootfsError> {
    let mounts: Vec<rootfs::HostMount> = req
        .rootfs
        .iter()
        .map(|m| rootfs::HostMount {
            kind: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect();
    if !mounts.is_empty() {
        if let Err(e) = rootfs::mount_all(&mounts, host_rootfs) {
            // Earlier mounts of the list may be in place.
            rootfs::unmount_all(host_rootfs);
            return Err(e);
        }
    }
    let r = rootfs::build_image(host_rootfs, image);
    if !mounts.is_empty() {
        rootfs::unmount_all(host_rootfs);
    }
    r.map(|_| ())
}
