//! The control API: `protos/vmm.proto`'s `hull.vmm.v1.Vmm` service over ttrpc on a unix
//! socket (`--api-sock`), served by ttrpc's own threads and acting through [`VmmControl`].
//!
//! ttrpc, not Firecracker's HTTP: the callers are hull's own host library (shim, CLI),
//! which already speak ttrpc to containerd and to the agent; one wire format and generated
//! clients, and no hand-written HTTP parser facing the socket.

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hull_protocol::rpc::protobuf::well_known_types::empty::Empty;
use hull_protocol::rpc::ttrpc::{self, TtrpcContext};
use hull_protocol::rpc::vmm::{
    AddShareRequest, AttachDriveRequest, AttachDriveResult, DetachDriveRequest, Metrics,
    RemoveShareRequest, SnapshotRequest, SnapshotResult, VmState,
};
use hull_protocol::rpc::vmm_ttrpc;

use hull_vmm_api::handoff::HandoffReceiver;

use crate::builder::VmmControl;
use crate::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Path(String),
    #[error("binding {}", .path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the ttrpc server: {0}")]
    Server(ttrpc::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("the thread starting the control API ended without an answer")]
    Starter,
}

/// The control socket, bound before the VMM enters its jail (where the host's
/// directories are out of reach).
pub struct ApiListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ApiListener {
    /// Listens on `path` (a stale socket of a killed VMM is replaced; a live one or another
    /// file is refused).
    pub fn bind(path: &Path) -> Result<ApiListener, ApiError> {
        crate::devices::virtio::vsock::muxer::prepare_socket_path(path)
            .map_err(|e| ApiError::Path(e.to_string()))?;
        let listener = UnixListener::bind(path)
            .and_then(|l| crate::devices::virtio::vsock::muxer::restrict_socket(path).map(|()| l))
            .map_err(|source| ApiError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(ApiListener {
            listener,
            path: path.to_path_buf(),
        })
    }
}

/// Where calls that name host files get them: descriptors handed over on `handoff`
/// ([`hull_vmm_api::handoff`]) when the host sends them, paths opened here otherwise
/// (refused when `jailed`).
#[derive(Default)]
pub struct HostFiles {
    pub handoff: Option<HandoffReceiver>,
    pub jailed: bool,
}

/// The running API server; dropping it stops serving and removes the socket.
pub struct ApiServer {
    server: Option<ttrpc::Server>,
    path: PathBuf,
}

impl ApiServer {
    /// Serves `control` on `listener`. ttrpc creates its threads from the thread that
    /// starts the server and from its listener thread, so the server is started from a
    /// short-lived thread (`api-start`) under the API's seccomp filter (when the VMM's
    /// filters are on): every ttrpc thread inherits exactly that filter.
    pub fn start(
        listener: ApiListener,
        control: VmmControl,
        files: HostFiles,
    ) -> Result<ApiServer, ApiError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let starter = crate::seccomp::spawn(
            crate::seccomp::ThreadKind::Api,
            "api-start".into(),
            move || {
                let _ = tx.send(Self::start_here(listener, control, files));
            },
        )?;
        let started = rx.recv().map_err(|_| ApiError::Starter);
        let _ = starter.join();
        started?
    }

    fn start_here(
        listener: ApiListener,
        control: VmmControl,
        files: HostFiles,
    ) -> Result<ApiServer, ApiError> {
        let ApiListener { listener, path } = listener;
        let service = vmm_ttrpc::create_vmm(Arc::new(Service { control, files }));
        let mut server = ttrpc::Server::new()
            .add_listener(listener.into_raw_fd())
            .map_err(ApiError::Server)?
            .register_service(service);
        server.start().map_err(ApiError::Server)?;
        log::info!("control API on {}", path.display());
        Ok(ApiServer {
            server: Some(server),
            path,
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        // A jailed VMM cannot reach the path; its host removes the run directory.
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Service {
    control: VmmControl,
    files: HostFiles,
}

impl Service {
    /// The host object a call names: the descriptor handed over under `token`, or `None`
    /// when the VMM is to open `path` itself (only outside a jail).
    fn opened(&self, token: u64, what: &str) -> ttrpc::Result<Option<OwnedFd>> {
        let (receiver, jailed) = (self.files.handoff.as_ref(), self.files.jailed);
        match (token, receiver) {
            (0, _) if jailed => Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("this VMM is jailed and opens no host path: hand the {what} over as a descriptor (hull_vmm_api::handoff) and name its token"),
            )),
            (0, _) => Ok(None),
            (_, None) => Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("the {what} names descriptor {token}, but this VMM was started without a hand-over socket (handoff_fd)"),
            )),
            (token, Some(r)) => r.take(token).map(Some).map_err(|e| {
                status(ttrpc::Code::FAILED_PRECONDITION, format!("the {what}: {}", error_chain(&e)))
            }),
        }
    }
}

fn status(code: ttrpc::Code, message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn state(control: &VmmControl) -> VmState {
    let mut s = VmState::new();
    s.paused = control.is_paused();
    s
}

impl vmm_ttrpc::Vmm for Service {
    fn pause(&self, _: &TtrpcContext, _: Empty) -> ttrpc::Result<VmState> {
        self.control.pause();
        Ok(state(&self.control))
    }

    fn resume(&self, _: &TtrpcContext, _: Empty) -> ttrpc::Result<VmState> {
        self.control.resume();
        Ok(state(&self.control))
    }

    fn shutdown(&self, _: &TtrpcContext, _: Empty) -> ttrpc::Result<Empty> {
        self.control.shutdown();
        Ok(Empty::new())
    }

    fn snapshot(&self, _: &TtrpcContext, req: SnapshotRequest) -> ttrpc::Result<SnapshotResult> {
        let opened = self.opened(req.descriptor, "snapshot directory")?;
        // A handed-over directory is reached through the magic link to it.
        let via_fd = opened
            .as_ref()
            .map(|fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())));
        let dir = via_fd.as_deref().unwrap_or(Path::new(&req.dir));
        if !dir.is_absolute() {
            return Err(status(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("dir {:?}: give an absolute path", req.dir),
            ));
        }
        match self.control.snapshot(dir) {
            Ok(info) => {
                let mut out = SnapshotResult::new();
                out.memory_bytes_written = info.memory_bytes_written;
                out.state_bytes = info.state_bytes;
                out.took_us = info.took.as_micros() as u64;
                Ok(out)
            }
            Err(e) => {
                let code = match e {
                    crate::snapshot::SnapshotError::NotPaused => ttrpc::Code::FAILED_PRECONDITION,
                    _ => ttrpc::Code::INTERNAL,
                };
                Err(status(code, error_chain(&e)))
            }
        }
    }

    fn metrics(&self, _: &TtrpcContext, _: Empty) -> ttrpc::Result<Metrics> {
        let m = self.control.metrics();
        let mut out = Metrics::new();
        out.paused = m.paused;
        out.uptime_ms = m.uptime.as_millis() as u64;
        out.vcpus = u32::from(m.vcpus);
        out.memory_mib = m.memory_mib;
        out.vmm_rss_kib = m.vmm_rss_kib;
        out.guest_resident_kib = m.guest_resident_kib;
        Ok(out)
    }

    fn attach_drive(
        &self,
        _: &TtrpcContext,
        req: AttachDriveRequest,
    ) -> ttrpc::Result<AttachDriveResult> {
        let opened = self.opened(req.descriptor, "disk image")?;
        if opened.is_none() && !Path::new(&req.path).is_absolute() {
            return Err(status(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("path {:?}: give an absolute path", req.path),
            ));
        }
        let attachment = crate::devices::virtio::block::Attachment {
            path: PathBuf::from(&req.path),
            read_only: req.read_only,
            serial: req.serial,
        };
        let opened = opened.map(std::fs::File::from);
        match self.control.attach_drive(req.slot, &attachment, opened) {
            Ok(sectors) => {
                let mut out = AttachDriveResult::new();
                out.sectors = sectors;
                Ok(out)
            }
            Err(e) => Err(drive_status(&e)),
        }
    }

    fn detach_drive(&self, _: &TtrpcContext, req: DetachDriveRequest) -> ttrpc::Result<Empty> {
        self.control
            .detach_drive(req.slot)
            .map(|_| Empty::new())
            .map_err(|e| drive_status(&e))
    }

    fn add_share(&self, _: &TtrpcContext, req: AddShareRequest) -> ttrpc::Result<Empty> {
        let opened = self.opened(req.descriptor, "shared directory")?;
        self.control
            .add_share(&req.name, Path::new(&req.path), opened)
            .map(|()| Empty::new())
            .map_err(|e| share_status(&e))
    }

    fn remove_share(&self, _: &TtrpcContext, req: RemoveShareRequest) -> ttrpc::Result<Empty> {
        match self.control.remove_share(&req.name) {
            Ok(true) => Ok(Empty::new()),
            Ok(false) => Err(status(
                ttrpc::Code::NOT_FOUND,
                format!("share {:?} is not shared", req.name),
            )),
            Err(e) => Err(share_status(&e)),
        }
    }
}

fn share_status(e: &crate::control::ShareError) -> ttrpc::Error {
    use crate::control::ShareError;
    use crate::devices::virtio::fs::ShareError as Fs;
    let code = match e {
        ShareError::NoDevice | ShareError::Share(Fs::Exists { .. }) => {
            ttrpc::Code::FAILED_PRECONDITION
        }
        ShareError::Share(Fs::Open { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            ttrpc::Code::NOT_FOUND
        }
        _ => ttrpc::Code::INVALID_ARGUMENT,
    };
    status(code, error_chain(e))
}

fn drive_status(e: &crate::control::DriveSlotError) -> ttrpc::Error {
    use crate::control::DriveSlotError;
    use crate::devices::virtio::block::BlockError;
    let code = match e {
        DriveSlotError::Block {
            source: BlockError::SlotBusy(_),
            ..
        } => ttrpc::Code::FAILED_PRECONDITION,
        DriveSlotError::Block {
            source: BlockError::Open { source, .. },
            ..
        } if source.kind() == std::io::ErrorKind::NotFound => ttrpc::Code::NOT_FOUND,
        _ => ttrpc::Code::INVALID_ARGUMENT,
    };
    status(code, error_chain(e))
}
