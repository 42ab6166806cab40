//! Kubernetes pods on hull through containerd's CRI plugin, driven as kubelet drives it
//! (tests/src/cri.rs): the `hull` runtime handler from resources/containerd-hull.toml, CNI
//! (bridge, host-local) in a network namespace of the test's own, a pause image built
//! `FROM scratch`. Each pod's VM is joined to the interface CNI gave the pod, so pods
//! reach each other, and the node reaches them, by pod IP.

use std::path::PathBuf;
use std::time::Duration;

use hull_e2e::containerd::{skip, soak_cycles, Containerd, BUSYBOX, CLEAN, PAUSE};
use hull_e2e::cri::{
    log_lines, security_profile, Capability, ContainerConfig, ContainerState, Cri, Int64Value,
    LinuxContainerResources, LinuxContainerSecurityContext, NamespaceMode, Pod, PodSandboxState,
    PortMapping, Protocol, SecurityProfile, Session, UInt64Value, STDERR, STDIN, STDOUT,
};

const HANDLER: &str = "hull";

#[test]
fn hull_pods_run_in_their_namespaces_and_reach_each_other_by_pod_ip() {
    if skip() {
        return;
    }
    let c = Containerd::start_cri("");
    let cri = Cri::connect(&c.socket);
    assert!(
        cri.image_status(PAUSE).unwrap().image.is_some(),
        "the pause image is in the CRI's namespace"
    );
    // shareProcessNamespace: true, and a pod-level sysctl (set on the sandbox, IPC
    // namespaced): the containers join the pause container's PID and IPC namespaces.
    let mut pod = Pod::new("web-1", c.dir.path());
    pod.pid = NamespaceMode::Pod;
    pod.sysctls
        .insert("kernel.shm_rmid_forced".into(), "1".into());
    // hostPort 18080 -> the pod's 8080, through CNI's portmap plugin on the node.
    pod.port_mappings.push(PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port: 18080,
        host_ip: String::new(),
    });
    let pod_config = pod.config();
    let id = cri
        .run_pod(&pod_config, HANDLER)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log_tail(40)));
    assert_eq!(
        cri.pod_status(&id).unwrap().state,
        PodSandboxState::SandboxReady as i32
    );
    assert_eq!(c.vmm_pids().len(), 1, "the pod is one VM");
    // CNI gave the pod a network namespace and a veth on the bridge: what the final
    // check must find gone.
    let live = c.leftovers();
    for what in ["network namespace /run/netns/cni-", "veth "] {
        assert!(
            live.iter().any(|l| l.starts_with(what)),
            "{what}: {live:#?}"
        );
    }

    // A `localhost/` seccomp profile (a file on the node) that forbids chmod.
    let profile = c.dir.path().join("no-chmod.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["chmod", "fchmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let mut app = pod.container(
        "app",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "echo started; hostname; cat /proc/sys/kernel/shm_rmid_forced; \
             head -c 12 /proc/1/cmdline; echo; cat /etc/resolv.conf; \
             mkdir -p /www && echo hello-from-web-1 > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    );
    security(&mut app).seccomp = Some(SecurityProfile {
        profile_type: security_profile::ProfileType::Localhost as i32,
        localhost_ref: profile.to_string_lossy().into_owned(),
    });
    let app = cri
        .create_container(&id, &app, &pod_config)
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.log_tail(40)));
    cri.start_container(&app).unwrap();
    let log = pod.wait_log("app", "ndots:5", Duration::from_secs(120));
    // CRI's log format: TIMESTAMP STREAM TAG LINE.
    let lines = log_lines(&log);
    assert!(
        log.lines().all(|l| l.split(' ').nth(1) == Some("stdout")),
        "{log}"
    );
    assert_eq!(
        &lines[..4],
        ["started", "web-1", "1", "/bin/busybox"],
        "{log}"
    );
    assert!(lines.contains(&"nameserver 10.88.0.53"), "{log}");
    assert_eq!(
        cri.container_status(&app).unwrap().state,
        ContainerState::ContainerRunning as i32
    );

    let r = cri
        .exec_sync(
            &app,
            &["sh", "-c", "echo exec-out; echo exec-err >&2; exit 3"],
            60,
        )
        .unwrap();
    assert_eq!(
        (r.exit_code, r.stdout.as_slice(), r.stderr.as_slice()),
        (3, &b"exec-out\n"[..], &b"exec-err\n"[..])
    );

    // The profile holds for an exec too (kubelet's exec probes, `kubectl exec`).
    let r = cri
        .exec_sync(
            &app,
            &[
                "sh",
                "-c",
                "grep Seccomp: /proc/self/status; touch /tmp/f && chmod 600 /tmp/f",
            ],
            60,
        )
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(
        (r.exit_code, r.stdout.as_slice()),
        (1, &b"Seccomp:\t2\n"[..]),
        "{err}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");

    // kubectl exec, through containerd's streaming server: stdin in, stdout and stderr
    // apart, the exit code in the closing status.
    let netns = PathBuf::from(format!("/proc/{}/ns/net", c.pid()));
    let url = cri
        .exec_url(
            &app,
            &["sh", "-c", "read x; echo out:$x; echo err:$x >&2; exit 3"],
            false,
        )
        .unwrap();
    let mut s = Session::open(&url, &netns);
    s.send(STDIN, b"typed\n");
    let status = s.finish();
    assert_eq!(
        (s.text(STDOUT).as_str(), s.text(STDERR).as_str()),
        ("out:typed\n", "err:typed\n"),
        "{status}"
    );
    assert!(
        status.contains("NonZeroExitCode") && status.contains(r#""message":"3""#),
        "{status}"
    );
    // kubectl exec -it: a terminal that takes its size from the client.
    let url = cri
        .exec_url(&app, &["sh", "-c", "read x; stty size; echo tty:$x"], true)
        .unwrap();
    let mut s = Session::open(&url, &netns);
    s.resize(91, 33);
    s.send(STDIN, b"typed\r");
    let status = s.finish();
    let out = s.text(STDOUT);
    assert!(
        out.contains("33 91\r\ntty:typed\r\n") && status.contains("Success"),
        "{out:?} {status}"
    );

    // Stats come from the guest's cgroup, in the metrics type containerd decodes; a
    // resource update reaches it.
    let stats = cri.container_stats(&app).unwrap();
    let memory = stats.memory.unwrap_or_default();
    let value = |v: Option<UInt64Value>| v.map(|v| v.value).unwrap_or_default();
    assert!(value(memory.working_set_bytes) > 0, "{stats:?}");
    assert!(
        value(stats.cpu.unwrap_or_default().usage_core_nano_seconds) > 0,
        "{stats:?}"
    );
    const LIMIT: u64 = 96 << 20;
    cri.update_resources(
        &app,
        LinuxContainerResources {
            memory_limit_in_bytes: LIMIT as i64,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}\n{}", c.log_tail(30)));
    let stats = cri.container_stats(&app).unwrap();
    let memory = stats.memory.unwrap_or_default();
    let available = value(memory.available_bytes);
    assert!(
        available > 0 && available + value(memory.working_set_bytes) == LIMIT,
        "{memory:?}"
    );
    // Log rotation: kubelet renames the file, then asks for a new one.
    let log = pod.log_dir.join("app.log");
    std::fs::rename(&log, pod.log_dir.join("app.log.1")).unwrap();
    cri.reopen_log(&app).unwrap();
    assert!(
        log.exists(),
        "ReopenContainerLog made no new {}",
        log.display()
    );

    // The pod's IP, from CNI, is the guest's: the node reaches a server in the pod.
    let ip = cri
        .pod_status(&id)
        .unwrap()
        .network
        .map(|n| n.ip)
        .unwrap_or_default();
    assert!(ip.starts_with("10.88.0."), "the pod's IP: {ip:?}");
    let url = format!("http://{ip}:8080/");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let page = loop {
        match c.http_get_in_netns(&format!("{ip}:8080"), "/") {
            Ok(page) => break page,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the node cannot reach {url}: {e}\n{}",
                c.log_tail(30)
            ),
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(page.ends_with("\r\n\r\nhello-from-web-1\n"), "{page}");
    // Dual stack: the pod's IPv6 address from CNI is the guest's too.
    let v6 = cri
        .pod_status(&id)
        .unwrap()
        .network
        .unwrap()
        .additional_ips
        .into_iter()
        .map(|i| i.ip)
        .find(|ip| ip.contains(':'))
        .expect("CNI gave the pod an IPv6 address");
    let page = c
        .http_get_in_netns(&format!("[{v6}]:8080"), "/")
        .unwrap_or_else(|e| panic!("the node cannot reach [{v6}]:8080: {e}\n{}", c.log_tail(30)));
    assert!(page.ends_with("\r\n\r\nhello-from-web-1\n"), "{page}");
    // A pod's containers share localhost (a sidecar reaches the app on 127.0.0.1).
    let r = cri
        .exec_sync(
            &app,
            &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
            60,
        )
        .unwrap();
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stdout).as_ref()),
        (0, "hello-from-web-1\n"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    // kubectl port-forward: containerd dials localhost:8080 in the pod's network
    // namespace, where hull relays it to the guest.
    let mut s = Session::open(&cri.port_forward_url(&id, 8080).unwrap(), &netns);
    s.send(0, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        s.read_until(0, "\r\n\r\nhello-from-web-1\n"),
        "port-forward: {:?}\n{}",
        s.received,
        c.log_tail(30)
    );
    drop(s);
    // The same server through the hostPort on the node's address on the bridge.
    let page = c
        .http_get_in_netns("10.88.0.1:18080", "/")
        .unwrap_or_else(|e| panic!("hostPort 18080: {e}\n{}", c.log_tail(30)));
    assert!(page.ends_with("\r\n\r\nhello-from-web-1\n"), "{page}");

    // A second hull pod on the same bridge reaches it by pod IP, from its own VM. (No
    // `wget -T`: Debian's busybox-static wget crashes with it.)
    let mut client = Pod::new("client-1", c.dir.path());
    client.privileged = true;
    let client_config = client.config();
    let client_id = cri.run_pod(&client_config, HANDLER).unwrap();
    // Its container reads its stdin: kubectl attach reaches it.
    let mut probe = client.container(
        "probe",
        BUSYBOX,
        &["sh", "-c", "while read l; do echo attached:$l; done"],
    );
    probe.stdin = true;
    let probe = cri
        .create_container(&client_id, &probe, &client_config)
        .unwrap();
    cri.start_container(&probe).unwrap();
    let r = cri
        .exec_sync(
            &probe,
            &[
                "sh",
                "-c",
                &format!("ip -o -4 addr show eth0; wget -q -O - {url}"),
            ],
            120,
        )
        .unwrap();
    let out = String::from_utf8_lossy(&r.stdout);
    let client_ip = cri.pod_status(&client_id).unwrap().network.unwrap().ip;
    assert_eq!(
        r.exit_code,
        0,
        "{out}{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        out.contains(&format!("inet {client_ip}/")) && out.ends_with("hello-from-web-1\n"),
        "{out}"
    );
    assert_eq!(c.vmm_pids().len(), 2, "two pods, two VMs");
    let mut s = Session::open(&cri.attach_url(&probe, false).unwrap(), &netns);
    s.send(STDIN, b"one\n");
    assert!(s.read_until(STDOUT, "attached:one\n"), "{:?}", s.received);
    drop(s);
    // A runc pod on the same bridge (containerd's default runtime) reaches the hull pod
    // too, and the hull pod reaches it: the two runtimes share one pod network.
    let runc = Pod::new("runc-1", c.dir.path());
    let runc_config = runc.config();
    let runc_id = cri
        .run_pod(&runc_config, "")
        .unwrap_or_else(|e| panic!("RunPodSandbox (runc): {e}\n{}", c.log_tail(40)));
    let runc_web = runc.container(
        "web",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-runc > /www/index.html && exec httpd -f -p 8081 -h /www",
        ],
    );
    let runc_web = cri
        .create_container(&runc_id, &runc_web, &runc_config)
        .unwrap_or_else(|e| panic!("CreateContainer (runc): {e}\n{}", c.log_tail(40)));
    cri.start_container(&runc_web)
        .unwrap_or_else(|e| panic!("StartContainer (runc): {e}\n{}", c.log_tail(40)));
    let runc_ip = cri.pod_status(&runc_id).unwrap().network.unwrap().ip;
    let r = cri
        .exec_sync(&runc_web, &["wget", "-q", "-O", "-", &url], 60)
        .unwrap();
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stdout).as_ref()),
        (0, "hello-from-web-1\n"),
        "runc pod -> hull pod: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = cri
        .exec_sync(
            &probe,
            &["wget", "-q", "-O", "-", &format!("http://{runc_ip}:8081/")],
            60,
        )
        .unwrap();
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stdout).as_ref()),
        (0, "hello-from-runc\n"),
        "hull pod -> runc pod: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(c.vmm_pids().len(), 2, "a runc pod is no VM");
    cri.stop_container(&runc_web, 10).unwrap();
    cri.remove_container(&runc_web).unwrap();
    cri.stop_pod(&runc_id).unwrap();
    cri.remove_pod(&runc_id).unwrap();

    // A privileged container is privileged in the VM, not on the node: every capability
    // of the guest kernel, mounts allowed, and none of the node's devices
    // (`privileged_without_host_devices` in resources/containerd-hull.toml); the guest
    // kernel has what such pods build networks with (bridges, iptables).
    let mut privileged = client.container(
        "privileged",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "grep CapEff: /proc/self/status; mkdir /tmp/m && mount -t tmpfs none /tmp/m && \
             echo mounted; ls /dev/sda /dev/vda 2>&1 | grep -c 'No such file'; \
             ip link add br0 type bridge && echo bridged; \
             test -e /proc/net/ip_tables_names && echo iptables",
        ],
    );
    security(&mut privileged).privileged = true;
    let privileged = cri
        .create_container(&client_id, &privileged, &client_config)
        .unwrap_or_else(|e| panic!("CreateContainer (privileged): {e}\n{}", c.log_tail(30)));
    cri.start_container(&privileged).unwrap();
    let s = cri.wait_container(
        &privileged,
        ContainerState::ContainerExited,
        Duration::from_secs(120),
    );
    let log = client.wait_log("privileged", "mounted", Duration::from_secs(10));
    let lines = log_lines(&log);
    assert_eq!(s.exit_code, 0, "{log}");
    // "Every capability" is containerd's own set (root on some test hosts lacks one).
    let node_caps = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap()
        .to_owned();
    assert_eq!(
        lines,
        [node_caps.as_str(), "mounted", "2", "bridged", "iptables"],
        "{log}"
    );
    cri.remove_container(&privileged).unwrap();

    // StopContainer right after StartContainer, in a pod where each container has its
    // own PID namespace (its program is PID 1 there): the SIGTERM arrives before the
    // program has installed its handler, and is delivered once it has (exit 0, not a
    // SIGKILL's 137 after the grace period). In web-1, which shares one PID namespace,
    // the same SIGTERM would end the shell at once (143), as under runc.
    let quick = client.container(
        "quick",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "sleep 2; trap 'exit 0' TERM; while :; do sleep 1; done",
        ],
    );
    let quick = cri
        .create_container(&client_id, &quick, &client_config)
        .unwrap();
    cri.start_container(&quick).unwrap();
    cri.stop_container(&quick, 600).unwrap();
    let s = cri.container_status(&quick).unwrap();
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"), "{s:?}");
    cri.remove_container(&quick).unwrap();

    cri.stop_container(&probe, 10).unwrap();
    cri.remove_container(&probe).unwrap();
    cri.stop_pod(&client_id).unwrap();
    cri.remove_pod(&client_id).unwrap();

    // A container that exits on its own reports its code. Its security context is a
    // restricted pod's: another user and group, a read-only root, no capabilities, no
    // privilege escalation, the runtime's default seccomp profile.
    let mut done = pod.container(
        "done",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "echo $(id -u):$(id -g); grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
             touch /probe 2>&1; exit 7",
        ],
    );
    let sc = security(&mut done);
    sc.run_as_user = Some(Int64Value { value: 1000 });
    sc.run_as_group = Some(Int64Value { value: 1001 });
    sc.readonly_rootfs = true;
    sc.no_new_privs = true;
    sc.capabilities = Some(Capability {
        drop_capabilities: vec!["ALL".into()],
        ..Default::default()
    });
    sc.seccomp = Some(SecurityProfile {
        profile_type: security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    });
    let done = cri.create_container(&id, &done, &pod_config).unwrap();
    cri.start_container(&done).unwrap();
    let s = cri.wait_container(
        &done,
        ContainerState::ContainerExited,
        Duration::from_secs(120),
    );
    assert_eq!((s.exit_code, s.reason.as_str()), (7, "Error"), "{s:?}");
    assert!(s.finished_at >= s.started_at && s.started_at > 0, "{s:?}");
    let log = pod.wait_log("done", "probe", Duration::from_secs(10));
    let lines = log_lines(&log);
    assert_eq!(
        lines,
        [
            "1000:1001",
            "CapEff:\t0000000000000000",
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
            "touch: /probe: Read-only file system"
        ],
        "{log}"
    );
    cri.remove_container(&done).unwrap();

    cri.stop_container(&app, 10).unwrap();
    let s = cri.container_status(&app).unwrap();
    assert_eq!(s.state, ContainerState::ContainerExited as i32, "{s:?}");
    cri.remove_container(&app).unwrap();
    cri.stop_pod(&id).unwrap();
    cri.remove_pod(&id).unwrap();
    assert!(cri.list_pods().unwrap().is_empty());
    c.assert_clean(CLEAN);
}

/// A pod on two CNI networks (containerd's `max_conf_num`): its VM gets an interface for
/// each, with CNI's addresses, and the node reaches the pod on both.
#[test]
fn a_pod_on_two_networks_is_reached_on_both() {
    if skip() {
        return;
    }
    let c = Containerd::start_cri_networks("", 2);
    let cri = Cri::connect(&c.socket);
    let pod = Pod::new("two-nets", c.dir.path());
    let config = pod.config();
    let id = cri
        .run_pod(&config, HANDLER)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log_tail(40)));
    let web = pod.container(
        "web",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "echo both > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
        ],
    );
    let web = cri.create_container(&id, &web, &config).unwrap();
    cri.start_container(&web).unwrap();
    let r = cri
        .exec_sync(&web, &["ip", "-o", "-4", "addr", "show"], 60)
        .unwrap();
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    // "2: eth0    inet 10.88.0.5/24 ..."
    let address = |dev: &str| {
        out.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(dev))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no IPv4 address on {dev}: {out}"))
            .to_owned()
    };
    let (first, second) = (address("eth0"), address("eth1"));
    assert!(
        first.starts_with("10.88.0.") && second.starts_with("10.89.0."),
        "eth0 {first}, eth1 {second}: {out:?}"
    );
    for ip in [&first, &second] {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match c.http_get_in_netns(&format!("{ip}:8080"), "/") {
                Ok(page) if page.ends_with("\r\n\r\nboth\n") => break,
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "the node cannot reach {ip}:8080: {other:?}\n{}",
                    c.log_tail(30)
                ),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    cri.stop_pod(&id).unwrap();
    cri.remove_pod(&id).unwrap();
    c.assert_clean(CLEAN);
}

#[test]
fn a_pod_sharing_a_node_namespace_is_refused_by_its_setting() {
    if skip() {
        return;
    }
    let c = Containerd::start_cri("");
    let cri = Cri::connect(&c.socket);
    let mut pod = Pod::new("host-net", c.dir.path());
    pod.network = NamespaceMode::Node;
    let e = cri.run_pod(&pod.config(), HANDLER).unwrap_err();
    assert!(
        e.message().contains("hostNetwork") && e.message().contains("runc RuntimeClass"),
        "{e}"
    );
    let mut pod = Pod::new("host-pid", c.dir.path());
    pod.pid = NamespaceMode::Node;
    let e = cri.run_pod(&pod.config(), HANDLER).unwrap_err();
    assert!(e.message().contains("hostPID"), "{e}");
    assert!(cri.list_pods().unwrap().is_empty(), "{:?}", cri.list_pods());
    c.assert_clean(CLEAN);
}

/// The container's security context, created empty if it has none.
fn security(c: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// RunPodSandbox, a container, StopPodSandbox and RemovePodSandbox, over and over
/// (`HULL_SOAK_CYCLES`, five in CI): after each cycle nothing of the pod is left (VMM,
/// shim, taps and tc filters with their namespace, veth, mounts, run and state
/// directories), and the pod's network worked while it ran.
#[test]
fn pod_sandbox_cycles_leak_nothing() {
    if skip() {
        return;
    }
    let c = Containerd::start_cri("");
    let cri = Cri::connect(&c.socket);
    let cycles = soak_cycles();
    for cycle in 0..cycles {
        let pod = Pod::new(&format!("cycle-{cycle}"), c.dir.path());
        let config = pod.config();
        let id = cri
            .run_pod(&config, HANDLER)
            .unwrap_or_else(|e| panic!("cycle {cycle}: RunPodSandbox: {e}\n{}", c.log_tail(40)));
        let web = pod.container(
            "web",
            BUSYBOX,
            &[
                "sh",
                "-c",
                "echo up > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
            ],
        );
        let web = cri.create_container(&id, &web, &config).unwrap();
        cri.start_container(&web).unwrap();
        let ip = cri.pod_status(&id).unwrap().network.unwrap().ip;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            match c.http_get_in_netns(&format!("{ip}:8080"), "/") {
                Ok(page) if page.ends_with("\r\n\r\nup\n") => break,
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "cycle {cycle}: the pod at {ip} never answered: {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        cri.stop_pod(&id).unwrap();
        cri.remove_pod(&id).unwrap();
        c.assert_clean(CLEAN);
        eprintln!("cycle {}/{cycles}: clean", cycle + 1);
    }
    assert!(cri.list_pods().unwrap().is_empty());
}
