//! `containerd-shim-hull-v2`: containerd's runtime `io.containerd.hull.v2` (Kubernetes
//! RuntimeClass handler `hull`). containerd runs it three ways (containerd's runtime v2
//! protocol): `start` spawns the long-lived shim for a task (one per pod: the containers
//! of a pod name their sandbox and share its shim and VM) and prints its socket address;
//! the shim itself serves the Task API; `delete` cleans up after a shim that died.

use std::sync::Arc;

use containerd_shim::{
    self as shim, publisher::RemotePublisher, Config, DeleteResponse, ExitSignal, Flags, StartOpts,
};
use hull_host::config::HostConfig;
use hull_host::spec::{self, Role};
use hull_shim::task::events::EventSender;
use hull_shim::task::{BundleState, TaskService, BUNDLE_STATE};

const RUNTIME_ID: &str = "io.containerd.hull.v2";

struct HullShim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

impl shim::Shim for HullShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        HullShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// One shim per pod: a container of a pod joins the shim its sandbox started (the
    /// socket address is derived from the pod's id), a standalone task gets its own.
    fn start_shim(&mut self, opts: StartOpts) -> Result<String, shim::Error> {
        let grouping = spec::read(std::path::Path::new("config.json"))
            .ok()
            .map(|s| match spec::role(&s) {
                Role::PodContainer { sandbox } => sandbox,
                _ => opts.id.clone(),
            })
            .unwrap_or_else(|| opts.id.clone());
        let config = HostConfig::path();
        let (_pid, address) = shim::spawn(
            opts,
            &grouping,
            vec![("HULL_CONFIG", config.to_string_lossy().as_ref())],
        )?;
        Ok(address)
    }

    /// The shim serving this task is gone (killed, crashed): stop its VM, if nothing else
    /// did, and remove what it left on the host.
    fn delete_shim(&mut self) -> Result<DeleteResponse, shim::Error> {
        let bundle = std::env::current_dir().unwrap_or_default();
        if let Ok(text) = std::fs::read(bundle.join(BUNDLE_STATE)) {
            if let Ok(state) = serde_json::from_slice::<BundleState>(&text) {
                hull_host::pod::kill_orphaned(&state.run_dir);
                hull_host::private::remove_files_and_dirs(&state.images);
            }
            let _ = std::fs::remove_file(bundle.join(BUNDLE_STATE));
        }
        hull_host::rootfs::unmount_all(&bundle.join("rootfs"));
        log::info!(
            "delete: cleaned up after the shim of {}/{}",
            self.namespace,
            self.id
        );
        let mut r = DeleteResponse::new();
        r.exit_status = 128 + libc::SIGKILL as u32;
        r.exited_at = Some(hull_shim::task::events::timestamp(
            hull_shim::task::process::now_nanos(),
        ))
        .into();
        Ok(r)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let path = HostConfig::path();
        let config = HostConfig::load(&path).map_err(|e| {
            // The shim already serves containerd: every Create fails, saying why.
            let e = hull_vmm_api::error_chain(&e);
            log::error!("{e}");
            e
        });
        if let Ok(c) = &config {
            log::set_max_level(c.log_level.parse().unwrap_or(log::LevelFilter::Info));
        }
        let events = EventSender::start(publisher, self.namespace.clone());
        TaskService::new(config, &self.namespace, events, self.exit.clone())
    }
}

fn main() {
    hull_host::private::restrict_umask();
    // Nothing but the shim's own calls reaps children: the VMM is waited for by its handle,
    // and the crate's reaper would steal its exit status.
    let config = Config {
        no_reaper: true,
        ..Default::default()
    };
    if std::env::args().any(|a| a == "--version" || a == "-v") {
        println!("containerd-shim-hull-v2 {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    shim::run::<HullShim>(RUNTIME_ID, Some(config));
}
