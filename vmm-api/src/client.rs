//! The control API client: one typed method per call of `protocol/protos/vmm.proto`, each
//! bounded by the client's timeout.

use std::path::Path;
use std::time::Duration;

use hull_protocol::rpc::protobuf::well_known_types::empty::Empty;
use hull_protocol::rpc::vmm::{
    AddShareRequest, AttachDriveRequest, DetachDriveRequest, Metrics, RemoveShareRequest,
    SnapshotRequest,
};
use hull_protocol::rpc::vmm_ttrpc::VmmClient;
use hull_protocol::rpc::{connect_vmm, ttrpc, ConnectError};

/// A control call the VMM refused or did not answer.
#[derive(Debug, thiserror::Error)]
#[error("{call}")]
pub struct ControlError {
    pub call: &'static str,
    #[source]
    pub source: ttrpc::Error,
}

/// A connection to one VMM's control socket.
#[derive(Clone)]
pub struct ControlClient {
    inner: VmmClient,
    timeout: Duration,
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
        })
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(self.timeout.as_nanos() as i64)
    }

    fn call<T>(call: &'static str, r: ttrpc::Result<T>) -> Result<T, ControlError> {
        r.map_err(|source| ControlError { call, source })
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

    /// Writes the paused VM's state and memory into `dir`.
    pub fn snapshot(&self, dir: &Path) -> Result<(), ControlError> {
        let mut req = SnapshotRequest::new();
        req.dir = dir.to_string_lossy().into_owned();
        Self::call("Snapshot", self.inner.snapshot(self.ctx(), &req)).map(drop)
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
        let mut req = AttachDriveRequest::new();
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
        let mut req = AddShareRequest::new();
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
