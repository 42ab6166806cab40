//! A CRI client for tests, as kubelet drives a runtime: containerd's CRI plugin over gRPC
//! (the `k8s-cri` bindings on tonic), made blocking so tests read as a sequence of kubelet
//! calls. [`Pod`] builds the configs kubelet would send.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
pub use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// A connection to containerd's CRI services.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    pub fn connect(socket: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let socket = socket.to_path_buf();
        let channel = rt
            .block_on(
                Endpoint::try_from("http://[::]:0")
                    .expect("endpoint")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    })),
            )
            .expect("connect to the CRI");
        Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        self.rt.block_on(f).map(tonic::Response::into_inner)
    }

    pub fn image_status(&self, image: &str) -> Result<ImageStatusResponse, tonic::Status> {
        let mut c = self.images.clone();
        self.call(c.image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        }))
    }

    /// RunPodSandbox with `handler`; returns the pod sandbox id.
    pub fn run_pod(
        &self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        }))
        .map(|r| r.pod_sandbox_id)
    }

    pub fn pod_status(&self, pod: &str) -> Result<PodSandboxStatus, tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: false,
        }))
        .map(|r| r.status.unwrap_or_default())
    }

    pub fn stop_pod(&self, pod: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        }))
        .map(drop)
    }

    pub fn remove_pod(&self, pod: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        }))
        .map(drop)
    }

    pub fn list_pods(&self) -> Result<Vec<PodSandbox>, tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.list_pod_sandbox(ListPodSandboxRequest { filter: None }))
            .map(|r| r.items)
    }

    /// CreateContainer in `pod`; returns the container id.
    pub fn create_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        }))
        .map(|r| r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.start_container(StartContainerRequest {
            container_id: id.into(),
        }))
        .map(drop)
    }

    pub fn stop_container(&self, id: &str, timeout_s: i64) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.stop_container(StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        }))
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.remove_container(RemoveContainerRequest {
            container_id: id.into(),
        }))
        .map(drop)
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerStatus, tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        }))
        .map(|r| r.status.unwrap_or_default())
    }

    /// Waits until container `id` is in `state`; returns its status.
    pub fn wait_container(
        &self,
        id: &str,
        state: ContainerState,
        within: Duration,
    ) -> ContainerStatus {
        let deadline = Instant::now() + within;
        loop {
            let s = self.container_status(id).expect("ContainerStatus");
            if s.state == state as i32 {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} is not {state:?} within {within:?}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn container_stats(&self, id: &str) -> Result<ContainerStats, tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.container_stats(ContainerStatsRequest {
            container_id: id.into(),
        }))
        .map(|r| r.stats.unwrap_or_default())
    }

    pub fn update_resources(
        &self,
        id: &str,
        linux: LinuxContainerResources,
    ) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(
            c.update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(linux),
                ..Default::default()
            }),
        )
        .map(drop)
    }

    pub fn reopen_log(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.reopen_container_log(ReopenContainerLogRequest {
            container_id: id.into(),
        }))
        .map(drop)
    }

    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<ExecSyncResponse, tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        }))
    }
}

impl Cri {
    /// Exec (kubectl exec): the URL of containerd's streaming server for `cmd` in `id`.
    pub fn exec_url(&self, id: &str, cmd: &[&str], tty: bool) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.exec(ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin: true,
            stdout: true,
            stderr: !tty,
        }))
        .map(|r| r.url)
    }

    /// PortForward (kubectl port-forward): the streaming URL for `port` of pod `pod`.
    pub fn port_forward_url(&self, pod: &str, port: u16) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.port_forward(PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: vec![i32::from(port)],
        }))
        // The websocket form names its ports in the query.
        .map(|r| format!("{}?port={port}", r.url))
    }

    /// Attach (kubectl attach): the streaming URL for `id`'s own stdio.
    pub fn attach_url(&self, id: &str, tty: bool) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        self.call(c.attach(AttachRequest {
            container_id: id.into(),
            stdin: true,
            tty,
            stdout: true,
            stderr: !tty,
        }))
        .map(|r| r.url)
    }
}

/// A kubectl exec, attach or port-forward session with containerd's streaming server: the
/// Kubernetes remote command protocol `v4.channel.k8s.io` over a websocket. Every message
/// is one channel byte and its data. A port-forward has a data (0) and an error (1)
/// channel per port, each opened by the server with the port's number (2 bytes).
pub struct Session {
    ws: tungstenite::WebSocket<std::net::TcpStream>,
    /// What arrived on stdout (1), stderr (2) and the status channel (3).
    pub received: [Vec<u8>; 4],
}

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;

impl Session {
    /// Opens `url` from the network namespace at `netns` (where containerd and its
    /// streaming server listen).
    pub fn open(url: &str, netns: &Path) -> Session {
        // The CRI hands out http://; the websocket upgrade is made on the same URL.
        let ws_url = url.replacen("http://", "ws://", 1);
        let uri: tungstenite::http::Uri = ws_url.parse().expect("streaming URL");
        let authority = uri.authority().expect("URL authority").as_str().to_owned();
        let tcp = hull_net::netns::run_in(netns, move || std::net::TcpStream::connect(authority))
            .expect("enter containerd's network namespace")
            .expect("connect to the streaming server");
        tcp.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let request =
            tungstenite::ClientRequestBuilder::new(uri).with_sub_protocol("v4.channel.k8s.io");
        let (ws, _) = tungstenite::client(request, tcp).expect("websocket handshake");
        Session {
            ws,
            received: Default::default(),
        }
    }

    pub fn send(&mut self, channel: u8, data: &[u8]) {
        let mut m = vec![channel];
        m.extend_from_slice(data);
        self.ws
            .send(tungstenite::Message::Binary(m.into()))
            .expect("send on the stream");
    }

    /// A terminal resize (kubectl's on SIGWINCH).
    pub fn resize(&mut self, width: u16, height: u16) {
        let size = format!(r#"{{"Width":{width},"Height":{height}}}"#);
        self.send(RESIZE, size.as_bytes());
    }

    /// Reads one message into [`Session::received`]; false once the stream has ended.
    fn next(&mut self) -> bool {
        match self.ws.read() {
            Ok(tungstenite::Message::Binary(m)) => {
                if let Some((&c, data)) = m.split_first() {
                    if let Some(buf) = self.received.get_mut(c as usize) {
                        buf.extend_from_slice(data);
                    }
                }
                true
            }
            Ok(tungstenite::Message::Close(_)) | Err(_) => false,
            Ok(_) => true,
        }
    }

    /// Reads until `channel` has received `want`, or the stream ends; whether it came.
    pub fn read_until(&mut self, channel: u8, want: &str) -> bool {
        while !self.text(channel).contains(want) {
            if !self.next() {
                return false;
            }
        }
        true
    }

    /// Reads to the end of the stream; the status channel's JSON (a Kubernetes Status).
    pub fn finish(&mut self) -> String {
        while self.next() {}
        self.text(STATUS)
    }

    pub fn text(&self, channel: u8) -> String {
        String::from_utf8_lossy(&self.received[channel as usize]).into_owned()
    }
}

/// The lines of a CRI log (`TIMESTAMP STREAM TAG LINE`), without their prefix.
pub fn log_lines(log: &str) -> Vec<&str> {
    log.lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default())
        .collect()
}

/// A pod as kubelet describes it, with the knobs the tests turn.
pub struct Pod {
    pub name: String,
    pub log_dir: PathBuf,
    pub pid: NamespaceMode,
    pub network: NamespaceMode,
    pub sysctls: HashMap<String, String>,
    /// hostPort mappings (CNI's portmap plugin sets them up on the node).
    pub port_mappings: Vec<PortMapping>,
    /// A privileged pod (needed for a privileged container in it).
    pub privileged: bool,
}

impl Pod {
    pub fn new(name: &str, log_dir: &Path) -> Pod {
        Pod {
            name: name.into(),
            log_dir: log_dir.join(name),
            pid: NamespaceMode::Container,
            network: NamespaceMode::Pod,
            sysctls: HashMap::new(),
            port_mappings: Vec::new(),
            privileged: false,
        }
    }

    pub fn config(&self) -> PodSandboxConfig {
        std::fs::create_dir_all(&self.log_dir).expect("pod log directory");
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: format!("uid-{}", self.name),
                namespace: "default".into(),
                attempt: 0,
            }),
            // kubelet names a pod's host only when the pod has a UTS namespace of its own.
            hostname: if self.network == NamespaceMode::Node {
                String::new()
            } else {
                self.name.clone()
            },
            log_directory: self.log_dir.to_string_lossy().into_owned(),
            port_mappings: self.port_mappings.clone(),
            dns_config: Some(DnsConfig {
                servers: vec!["10.88.0.53".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            linux: Some(LinuxPodSandboxConfig {
                sysctls: self.sysctls.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(self.namespaces()),
                    privileged: self.privileged,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The namespace modes kubelet sends for the pod and, the same, each container.
    fn namespaces(&self) -> NamespaceOption {
        NamespaceOption {
            network: self.network as i32,
            pid: self.pid as i32,
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        }
    }

    /// A container of this pod running `command` from `image`, logging to `NAME.log`.
    pub fn container(&self, name: &str, image: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(self.namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// What container `name` wrote to its CRI log, waiting until it has `want`.
    pub fn wait_log(&self, name: &str, want: &str, within: Duration) -> String {
        let path = self.log_dir.join(format!("{name}.log"));
        let deadline = Instant::now() + within;
        loop {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            if log.contains(want) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{want:?} not in {} within {within:?}:\n{log}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
