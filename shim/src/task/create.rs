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
use containerd_shim::TtrpcResult;
use hull_host::container::{self, Disk, StorageError, VolumeImage};
use hull_host::lock;
use hull_host::pod::Pod;
use hull_host::rootfs;
use hull_host::spec::{self, GuestPlan, Role, Spec};
use hull_host::stdio::Stdio;

use super::options::check_options;
use super::process::Process;
use super::{err, pod_err, process_err, BundleState, Container, TaskService, BUNDLE_STATE};

/// What a failed Create must undo.
struct Unwind<'a> {
    service: &'a TaskService,
    /// The container's image directories (root on disk, volumes on tmpfs) and the
    /// bundle's state file.
    dirs: Vec<PathBuf>,
    bundle_state: Option<PathBuf>,
    pod: Option<(Arc<Pod>, bool)>,
    disks: Vec<Disk>,
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
            disks: Vec::new(),
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
                let id = self.container.unwrap_or_default();
                if self.container.is_some() {
                    let _ = pod.guest.agent.remove_container(id);
                }
                pod.release_storage(id, &self.disks);
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

fn storage_err(id: &str, e: StorageError) -> containerd_shim::protos::ttrpc::Error {
    match e {
        StorageError::Volume { .. } => invalid(id, hull_vmm_api::error_chain(&e)),
        StorageError::Root(p) | StorageError::Attach { source: p, .. } => pod_err(*p),
        StorageError::Dir(..) => err(Code::INTERNAL, hull_vmm_api::error_chain(&e)),
    }
}

/// A Create's request, read and checked: nothing has been made yet.
struct Checked {
    spec: Spec,
    role: Role,
    plan: GuestPlan,
    host_rootfs: PathBuf,
    stdio: Stdio,
}

impl TaskService {
    pub(super) fn do_create(&self, req: &api::CreateTaskRequest) -> TtrpcResult<u32> {
        let id = req.id.as_str();
        let Checked {
            mut spec,
            role,
            plan,
            host_rootfs,
            stdio,
        } = self.check_create(req)?;
        let mut undo = Unwind::new(self);
        let (root_image, volumes) = self.build_images(req, &host_rootfs, &plan, &mut undo)?;
        let (pod, owns_pod) = self.pod_for(id, &role, &spec)?;
        undo.pod = Some((pod.clone(), owns_pod));
        let bundle = Path::new(&req.bundle);
        let mut images = vec![root_image.clone()];
        images.extend(volumes.iter().map(|v| v.image.clone()));
        let state = BundleState {
            run_dir: pod.run_dir.clone(),
            images,
        };
        let _ = std::fs::write(
            bundle.join(BUNDLE_STATE),
            serde_json::to_vec(&state).unwrap_or_default(),
        );
        undo.bundle_state = Some(bundle.join(BUNDLE_STATE));
        let disks = pod
            .attach_storage(id, &mut spec, &plan, &root_image, &volumes)
            .map_err(|e| storage_err(id, e))?;
        undo.disks = disks.clone();
        if owns_pod {
            self.create_sandbox(&pod, &plan.files, &spec)?;
        }
        lock(&self.table).creating.insert(id.to_string());
        undo.container = Some(id);
        let (pid, io) = pod
            .guest
            .create_container(id, &spec, &stdio)
            .map_err(process_err)?;
        let init = Arc::new(Process::new(id, None, stdio, None));
        {
            let mut s = init.state();
            s.pid = pid;
            s.io = Some(io);
        }
        let container = Arc::new(Container {
            bundle: req.bundle.clone(),
            pod,
            init,
            execs: Mutex::new(Default::default()),
            disks,
            owns_pod,
        });
        self.register(id, container, owns_pod);
        undo.done = true;
        self.events.send(super::events::TaskEvent::Create {
            id: id.to_string(),
            bundle: req.bundle.clone(),
            pid,
        });
        Ok(pid)
    }

    /// Everything about a Create that can be refused before anything is made.
    fn check_create(&self, req: &api::CreateTaskRequest) -> TtrpcResult<Checked> {
        let id = req.id.as_str();
        let (config_path, stdio) = self.check_request(req)?;
        match config_path {
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
        let bundle = Path::new(&req.bundle);
        let mut spec = spec::read(&bundle.join("config.json"))
            .map_err(|e| invalid(id, hull_vmm_api::error_chain(&e)))?;
        let role = spec::role(&spec);
        // With no mounts (`ctr run --rootfs DIR`) the spec's root.path is the tree itself.
        let host_rootfs = match spec.root() {
            Some(root) if req.rootfs.is_empty() => bundle.join(root.path()),
            _ => bundle.join("rootfs"),
        };
        // What the guest cannot honour is refused before a VM is touched; the root path is
        // set once the guest has mounted the disk.
        let plan = spec::for_guest(&mut spec, "").map_err(|e| invalid(id, e))?;
        if let (false, Some(v)) = (self.config().shared_fs, plan.shared.first()) {
            return Err(invalid(
                id,
                format!(
                    "the read-write volume {} at {}: this host's hull config has shared_fs = false, so sandboxes cannot share directories (mount it read-only, or set shared_fs = true)",
                    v.source.display(),
                    v.destination
                ),
            ));
        }
        Ok(Checked {
            spec,
            role,
            plan,
            host_rootfs,
            stdio,
        })
    }

    /// The container's root image (on disk, in state_dir) and read-only volume copies (on
    /// tmpfs, in run_dir: Secrets, ConfigMaps and tokens never reach persistent disk).
    fn build_images(
        &self,
        req: &api::CreateTaskRequest,
        host_rootfs: &Path,
        plan: &GuestPlan,
        undo: &mut Unwind<'_>,
    ) -> TtrpcResult<(PathBuf, Vec<VolumeImage>)> {
        let id = req.id.as_str();
        let config = self.config();
        let images = config.state_dir.join(&self.namespace).join(id);
        hull_host::private::private_dir(&images)
            .map_err(|e| err(Code::INTERNAL, format!("create {}: {e}", images.display())))?;
        undo.dirs.push(images.clone());
        let root_image = images.join("root.erofs");
        build_root_image(req, host_rootfs, &root_image)
            .map_err(|e| invalid(id, format!("rootfs: {}", hull_vmm_api::error_chain(&e))))?;
        let volumes_dir = super::volumes_dir_for(&config.run_dir, &self.namespace, id);
        undo.dirs.push(volumes_dir.clone());
        let volumes =
            container::build_volume_images(plan, &volumes_dir).map_err(|e| storage_err(id, e))?;
        Ok((root_image, volumes))
    }

    /// Puts a created container into the table; an init that died before it was there
    /// has its exit waiting for Start.
    fn register(&self, id: &str, container: Arc<Container>, owns_pod: bool) {
        let early = {
            let mut t = lock(&self.table);
            if owns_pod {
                t.pod = Some(container.pod.clone());
            }
            t.containers.insert(id.to_string(), container.clone());
            t.creating.remove(id);
            // Under the table lock, as the event thread stores them: none slips between.
            self.sink.take_early(id)
        };
        if let Some(exit) = early {
            container.init.offer_exit(exit, false);
        }
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
        *lock(&self.config) = Arc::new(config);
        self.config_replaced
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Everything about the request itself that can be refused; returns the configuration
    /// file its runtime options name, if any, and the process's stdio.
    fn check_request(&self, req: &api::CreateTaskRequest) -> TtrpcResult<(Option<PathBuf>, Stdio)> {
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
        let stdio = Stdio::from_containerd(&req.stdin, &req.stdout, &req.stderr, req.terminal)
            .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
        Ok((config_path, stdio))
    }

    /// The VM this container runs in: a new one for a standalone task or a pod sandbox
    /// (`true`: this container owns it), the pod's for a pod member.
    fn pod_for(&self, id: &str, role: &Role, spec: &Spec) -> TtrpcResult<(Arc<Pod>, bool)> {
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
