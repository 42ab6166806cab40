//! The control API client: one typed method per call of `protocol/protos/vmm.proto`, each
//! bounded by the client's timeout.

use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::handoff::{HandoffError, HandoffSender};

use hull_protocol::rpc::protobuf::well_known_types::empty::Empty;
use hull_protocol::rpc::vmm::{
    AddShareRequest, AttachDriveRequest, DetachDriveRequest, Metrics, RemoveShareRequest,
    SnapshotRequest,
};
use hull_protocol::rpc::vmm_ttrpc::VmmClient;
use hull_protocol::rpc::{connect_vmm, ttrpc, ConnectError};

/// A control call the VMM refused or did not answer, or whose host file could not be
/// handed over.
#[derive(Debug, thiserror::Error)]
#[error("{call}")]
pub struct ControlError {
    pub call: &'static str,
    #[source]
    pub source: CallError,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Rpc(#[from] ttrpc::Error),
    #[error("open {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("give the snapshot directory {} to the VMM's uid", .path.display())]
    Chown {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Handoff(#[from] HandoffError),
}

/// How the host passes files to a VMM that opens no path itself.
#[derive(Debug)]
pub struct Handoff {
    pub sender: HandoffSender,
    /// The jailed VMM's uid and gid: a snapshot directory is theirs for the call.
    pub owner: Option<(u32, u32)>,
}

/// A connection to one VMM's control socket.
#[derive(Clone)]
pub struct ControlClient {
    inner: VmmClient,
    timeout: Duration,
    handoff: Option<Arc<Handoff>>,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ControlClient {
    /// Connects to the control socket at `path`; every call then waits at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ConnectError> {
        Ok(ControlClient {
            inner: connect_vmm(path)?,
            timeout,
            handoff: None,
        })
    }

    /// This client opens every host file a call names and hands it over (a jailed VMM
    /// opens no path).
    pub fn with_handoff(mut self, handoff: Arc<Handoff>) -> Self {
        self.handoff = Some(handoff);
        self
    }

    /// Opens `path` as `options` say and hands it over; the token to name it by, or 0
    /// without a hand-over (the VMM opens the path).
    fn hand_over(
        &self,
        call: &'static str,
        path: &Path,
        options: &std::fs::OpenOptions,
    ) -> Result<u64, ControlError> {
        let Some(h) = &self.handoff else { return Ok(0) };
        let fail = |source: CallError| ControlError { call, source };
        let file = options.open(path).map_err(|source| {
            fail(CallError::Open {
                path: path.to_path_buf(),
                source,
            })
        })?;
        h.sender
            .send(file.as_fd())
            .map_err(|e| fail(CallError::Handoff(e)))
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(self.timeout.as_nanos() as i64)
    }

    fn call<T>(call: &'static str, r: ttrpc::Result<T>) -> Result<T, ControlError> {
        r.map_err(|source| ControlError {
            call,
            source: source.into(),
        })
    }

    /// Parks every vCPU; returns once all are parked, with whether the VM is paused.
    pub fn pause(&self) -> Result<bool, ControlError> {
        Self::call("Pause", self.inner.pause(self.ctx(), &Empty::new())).map(|s| s.paused)
    }

    /// Lets the vCPUs run again; returns whether the VM is (still) paused.
    pub fn resume(&self) -> Result<bool, ControlError> {
        Self::call("Resume", self.inner.resume(self.ctx(), &Empty::new())).map(|s| s.paused)
    }

    /// Ends the VM as SIGTERM would.
    pub fn shutdown(&self) -> Result<(), ControlError> {
        Self::call("Shutdown", self.inner.shutdown(self.ctx(), &Empty::new())).map(drop)
    }

    /// Writes the paused VM's state and memory into `dir` (created if missing, for its
    /// owner only). A jailed VMM's uid owns `dir` during the call; the files are the
    /// host's again after it.
    pub fn snapshot(&self, dir: &Path) -> Result<(), ControlError> {
        let call = "Snapshot";
        if self.handoff.is_some() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| ControlError {
                    call,
                    source: CallError::Open {
                        path: dir.to_path_buf(),
                        source,
                    },
                })?;
        }
        let owner = self.handoff.as_ref().and_then(|h| h.owner);
        if let Some((uid, gid)) = owner {
            chown_tree(dir, uid, gid).map_err(|source| ControlError { call, source })?;
        }
        let mut req = SnapshotRequest::new();
        req.dir = dir.to_string_lossy().into_owned();
        let result = self
            .hand_over(call, dir, std::fs::OpenOptions::new().read(true))
            .and_then(|token| {
                req.descriptor = token;
                Self::call(call, self.inner.snapshot(self.ctx(), &req))
            });
        if owner.is_some() {
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            // SAFETY: getegid has no preconditions.
            let gid = unsafe { libc::getegid() };
            let back = chown_tree(dir, uid, gid);
            if result.is_ok() {
                back.map_err(|source| ControlError { call, source })?;
            }
        }
        result.map(drop)
    }

    pub fn metrics(&self) -> Result<Metrics, ControlError> {
        Self::call("Metrics", self.inner.metrics(self.ctx(), &Empty::new()))
    }

    /// Puts the disk image at `path` into drive slot `slot`; the guest finds it by
    /// `serial`. Returns its capacity in 512-byte sectors.
    pub fn attach_drive(
        &self,
        slot: u32,
        path: &Path,
        read_only: bool,
        serial: &str,
    ) -> Result<u64, ControlError> {
        let token = self.hand_over(
            "AttachDrive",
            path,
            std::fs::OpenOptions::new()
                .read(true)
                .write(!read_only)
                .custom_flags(libc::O_NONBLOCK),
        )?;
        let mut req = AttachDriveRequest::new();
        req.descriptor = token;
        req.slot = slot;
        req.path = path.to_string_lossy().into_owned();
        req.read_only = read_only;
        req.serial = serial.to_string();
        Self::call("AttachDrive", self.inner.attach_drive(self.ctx(), &req)).map(|r| r.sectors)
    }

    /// Empties drive slot `slot`.
    pub fn detach_drive(&self, slot: u32) -> Result<(), ControlError> {
        let mut req = DetachDriveRequest::new();
        req.slot = slot;
        Self::call("DetachDrive", self.inner.detach_drive(self.ctx(), &req)).map(drop)
    }

    /// Shares host directory `dir` as `/<name>` of the guest's virtio-fs mount.
    pub fn add_share(&self, name: &str, dir: &Path) -> Result<(), ControlError> {
        let token = self.hand_over(
            "AddShare",
            dir,
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY),
        )?;
        let mut req = AddShareRequest::new();
        req.descriptor = token;
        req.name = name.to_string();
        req.path = dir.to_string_lossy().into_owned();
        Self::call("AddShare", self.inner.add_share(self.ctx(), &req)).map(drop)
    }

    pub fn remove_share(&self, name: &str) -> Result<(), ControlError> {
        let mut req = RemoveShareRequest::new();
        req.name = name.to_string();
        Self::call("RemoveShare", self.inner.remove_share(self.ctx(), &req)).map(drop)
    }
}

/// Gives `dir` and the files directly in it to `uid`:`gid` (a snapshot directory holds
/// no subdirectories).
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), CallError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CallError::Chown { path, source }
    };
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(err(dir))?;
    for entry in std::fs::read_dir(dir).map_err(err(dir))? {
        let path = entry.map_err(err(dir))?.path();
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(err(&path))?;
    }
    Ok(())
}
