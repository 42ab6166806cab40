//! The agent's ttrpc service: each call runs isolated through [`Service::call`] (a panic
//! becomes Internal, an error its status code) and is carried out by the service.

use hull_protocol::rpc::agent::*;
use hull_protocol::rpc::agent_ttrpc;
use hull_protocol::rpc::ttrpc::{self, TtrpcContext};
use protobuf::well_known_types::empty::Empty;

use super::*;

impl agent_ttrpc::Agent for Service {
    fn ping(&self, _: &TtrpcContext, _: PingRequest) -> ttrpc::Result<PingResponse> {
        self.call("Ping", || Ok(Service::ping(self)))
    }
    fn create_sandbox(&self, _: &TtrpcContext, req: CreateSandboxRequest) -> ttrpc::Result<Empty> {
        self.call("CreateSandbox", || {
            Service::create_sandbox(self, &req).map(|_| Empty::new())
        })
    }
    fn destroy_sandbox(&self, _: &TtrpcContext, _: Empty) -> ttrpc::Result<Empty> {
        self.call("DestroySandbox", || {
            Service::destroy_sandbox(self).map(|_| Empty::new())
        })
    }
    fn set_time(&self, _: &TtrpcContext, req: SetTimeRequest) -> ttrpc::Result<Empty> {
        self.call("SetTime", || {
            if !self.config.in_guest {
                return Err(AgentError::FailedPrecondition(
                    "SetTime changes the machine's clock; this agent is served on a host, not in a guest".into(),
                ));
            }
            sandbox::set_time(req.seconds, req.nanoseconds).map(|_| Empty::new())
        })
    }
    fn reseed_random(&self, _: &TtrpcContext, req: ReseedRandomRequest) -> ttrpc::Result<Empty> {
        self.call("ReseedRandom", || {
            sandbox::reseed(&req.entropy).map(|_| Empty::new())
        })
    }
    fn configure_network(
        &self,
        _: &TtrpcContext,
        req: ConfigureNetworkRequest,
    ) -> ttrpc::Result<Empty> {
        self.call("ConfigureNetwork", || {
            network::configure(&req).map(|_| Empty::new())
        })
    }
    fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        self.call("CreateContainer", || {
            let mut r = CreateContainerResponse::new();
            r.pid = Service::create_container(self, &req)?;
            Ok(r)
        })
    }
    fn start_container(&self, _: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        self.call("StartContainer", || {
            self.start_container(&req.container_id)
                .map(|_| Empty::new())
        })
    }
    fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        self.call("ExecProcess", || {
            let mut r = ExecProcessResponse::new();
            r.pid = Service::exec_process(self, &req)?;
            Ok(r)
        })
    }
    fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
        self.call("SignalProcess", || {
            Service::signal_process(self, &req).map(|_| Empty::new())
        })
    }
    fn wait_process(
        &self,
        _: &TtrpcContext,
        req: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        self.call("WaitProcess", || Service::wait_process(self, &req))
    }
    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        self.call("ResizePty", || {
            Service::resize_pty(self, &req).map(|_| Empty::new())
        })
    }
    fn pause_container(&self, _: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        self.call("PauseContainer", || {
            self.freeze(&req.container_id, true).map(|_| Empty::new())
        })
    }
    fn resume_container(&self, _: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        self.call("ResumeContainer", || {
            self.freeze(&req.container_id, false).map(|_| Empty::new())
        })
    }
    fn update_container(
        &self,
        _: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.call("UpdateContainer", || {
            Service::update_container(self, &req).map(|_| Empty::new())
        })
    }
    fn stats_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        self.call("StatsContainer", || self.stats(&req.container_id))
    }
    fn list_processes(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        self.call("ListProcesses", || {
            Service::list_processes(self, &req.container_id)
        })
    }
    fn remove_container(&self, _: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        self.call("RemoveContainer", || {
            Service::remove_container(self, &req.container_id).map(|_| Empty::new())
        })
    }
    fn remove_process(&self, _: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        self.call("RemoveProcess", || {
            Service::remove_process(self, &req).map(|_| Empty::new())
        })
    }
    fn mount_drive(
        &self,
        _: &TtrpcContext,
        req: MountDriveRequest,
    ) -> ttrpc::Result<MountDriveResponse> {
        self.call("MountDrive", || {
            let area = self.config.rootfs_areas.first().ok_or_else(|| {
                AgentError::FailedPrecondition("this agent has no rootfs area".into())
            })?;
            let request = storage::MountRequest {
                serial: &req.serial,
                fstype: &req.fstype,
                name: &req.name,
                read_only: req.read_only,
                writable_overlay: req.writable_overlay,
            };
            let path = self
                .storage
                .mount(area, Path::new("/sys/block"), &request)?;
            let mut r = MountDriveResponse::new();
            r.rootfs = path.to_string_lossy().into_owned();
            Ok(r)
        })
    }
    fn mount_shared_fs(
        &self,
        _: &TtrpcContext,
        req: MountSharedFsRequest,
    ) -> ttrpc::Result<MountSharedFsResponse> {
        self.call("MountSharedFs", || {
            let dir = self.config.state_dir.join("fs");
            let path = self.storage.mount_shared_fs(&dir, &req.tag)?;
            let mut r = MountSharedFsResponse::new();
            r.path = path.to_string_lossy().into_owned();
            Ok(r)
        })
    }
    fn unmount_drive(&self, _: &TtrpcContext, req: UnmountDriveRequest) -> ttrpc::Result<Empty> {
        self.call("UnmountDrive", || {
            self.storage.unmount(&req.name).map(|_| Empty::new())
        })
    }
}
