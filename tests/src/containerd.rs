//! A private containerd for tests and benchmarks: Debian's containerd 1.6 with its own
//! root, state directory and socket, the hull shim on its PATH, a hull host configuration
//! of its own, and the offline busybox image imported. Stopped, and checked for what it
//! left behind, by the test.
//!
//! Two kinds: [`Containerd::start`] has the CRI plugin off and is driven with `ctr`;
//! [`Containerd::start_cri`] has it on, in a network namespace of its own with CNI
//! (bridge, host-local, loopback, portmap) and the images in the CRI's `k8s.io` namespace,
//! and is driven through [`crate::cri`].

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The image `resources/busybox-oci.sh` builds, as imported.
pub const BUSYBOX: &str = "hull.local/busybox:latest";
pub const RUNTIME: &str = "io.containerd.hull.v2";
pub const NAMESPACE: &str = "hull-test";
/// The containerd namespace of the CRI's images and containers.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The pod sandbox image the CRI harness imports: `FROM scratch` with only busybox, as
/// Kubernetes' pause image has only `/pause`.
pub const PAUSE: &str = "hull.local/pause:latest";

/// Why this host cannot run the containerd tests, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("containerd and the shim need root".into());
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Some("/dev/kvm is not available".into());
    }
    for bin in ["containerd", "ctr", "mkfs.erofs"] {
        if which(bin).is_none() {
            return Some(format!(
                "{bin} is not installed (scripts/deps.sh installs it)"
            ));
        }
    }
    None
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// The directory holding `containerd-shim-hull-v2` and `hull-vmm`: `$HULL_BIN_DIR`, else
/// the cargo target directory this test binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HULL_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .skip(1)
        .take(2)
        .find(|d| d.join("containerd-shim-hull-v2").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            panic!(
                "containerd-shim-hull-v2 is not built next to {} (cargo build --workspace --bins, or set HULL_BIN_DIR)",
                exe.display()
            )
        })
}

/// The agent timeout of the shims the harness's containerd starts (unless a test sets one).
pub const TEST_AGENT_TIMEOUT_SECS: u64 = 600;

pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The shim's run and state directories (hull config `run_dir`, `state_dir`).
    pub run_dir: PathBuf,
    pub state_dir: PathBuf,
    /// The containerd namespace `ctr` acts in.
    pub namespace: &'static str,
    /// The network namespaces pinned under /run/netns before this containerd started
    /// (the CRI pins each pod's there; the CRI tests run one at a time).
    netns_before: Vec<String>,
    child: Option<Child>,
}

/// Moves the calling process into a new network namespace (containerd's, before exec).
fn new_network_namespace() -> std::io::Result<()> {
    // SAFETY: unshare(2) with a flag constant; it touches no memory of ours.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The names under /run/netns.
fn pinned_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Whether this process holds CAP_SYS_RESOURCE. Root on some test hosts does not (a
/// container's root, for one); runc then cannot give a pod sandbox the CRI's
/// oom_score_adj of -998 ("can't get final child's PID from pipe: EOF"), so the harness
/// has containerd keep scores at or above its own (`restrict_oom_score_adj`), as for
/// rootless containerd.
fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let mask = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&mask, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// containerd's configuration: its own directories and socket, with the CRI and its pods on
/// `networks` CNI networks, or (0) without the CRI.
fn containerd_config(d: &Path, socket: &Path, networks: usize) -> String {
    let cri = networks > 0;
    let mut c = format!(
        "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"\"\n",
        root = d.join("root").display(),
        state = d.join("ctd-state").display(),
        sock = socket.display()
    );
    if !cri {
        c.insert_str(0, "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n");
        return c;
    }
    c.push_str(&format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = {restrict_oom}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{net}"
    max_conf_num = {networks}
"#,
        net = d.join("net.d").display(),
        restrict_oom = !has_cap_sys_resource(),
    ));
    // The hull runtime exactly as the project ships it.
    c.push_str(include_str!("../../resources/containerd-hull.toml"));
    c
}

/// The CNI network of the CRI harness: a dual-stack bridge in containerd's network
/// namespace, addresses from host-local (its state in the test's directory), port
/// mappings.
fn cni_config(d: &Path) -> String {
    format!(
        r#"{{"cniVersion": "0.4.0", "name": "hull-test", "plugins": [
  {{"type": "bridge", "bridge": "hull0", "isGateway": true, "ipMasq": false,
    "ipam": {{"type": "host-local", "dataDir": "{ipam}",
              "ranges": [[{{"subnet": "10.88.0.0/24"}}], [{{"subnet": "fd88::/64"}}]],
              "routes": [{{"dst": "0.0.0.0/0"}}, {{"dst": "::/0"}}]}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
]}}
"#,
        ipam = d.join("ipam").display()
    )
}

/// Extra network `i` (1, 2, ...): an IPv4 bridge `hull<i>` on 10.(88+i).0.0/24, the node's
/// address on it .1, and no route for the pod (its default route stays on its first
/// network).
fn extra_cni_config(d: &Path, i: usize) -> String {
    format!(
        r#"{{"cniVersion": "0.4.0", "name": "hull-test-{i}", "plugins": [
  {{"type": "bridge", "bridge": "hull{i}", "isGateway": true, "ipMasq": false,
    "ipam": {{"type": "host-local", "dataDir": "{ipam}",
              "ranges": [[{{"subnet": "10.{net}.0.0/24"}}]]}}}}
]}}
"#,
        ipam = d.join(format!("ipam-{i}")).display(),
        net = 88 + i
    )
}

impl Containerd {
    /// Starts containerd with `hull_config` (TOML) appended to the test's own directories,
    /// waits for its socket and imports the busybox image.
    pub fn start(hull_config: &str) -> Containerd {
        Self::start_with(hull_config, 0)
    }

    /// Starts containerd with the CRI plugin on, in a network namespace of its own (its
    /// CNI bridge and every pod's network stay there), the busybox and pause images in
    /// the CRI's namespace.
    pub fn start_cri(hull_config: &str) -> Containerd {
        Self::start_with(hull_config, 1)
    }

    /// As [`Containerd::start_cri`], with every pod on `networks` CNI networks: the
    /// harness's dual-stack bridge (`eth0`), then IPv4-only bridges `hull1`, ... on
    /// 10.89.0.0/24, ... (`eth1`, ...).
    pub fn start_cri_networks(hull_config: &str, networks: usize) -> Containerd {
        Self::start_with(hull_config, networks.max(1))
    }

    /// `networks` 0: the CRI plugin off.
    fn start_with(hull_config: &str, networks: usize) -> Containerd {
        let cri = networks > 0;
        let dir = tempfile::Builder::new()
            .prefix("hull-ctd-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let run_dir = d.join("run");
        let state_dir = d.join("state");
        std::fs::write(
            d.join("config.toml"),
            containerd_config(d, &socket, networks),
        )
        .unwrap();
        if cri {
            std::fs::create_dir_all(d.join("net.d")).unwrap();
            std::fs::write(d.join("net.d/10-hull-test.conflist"), cni_config(d)).unwrap();
            for i in 1..networks {
                std::fs::write(
                    d.join(format!("net.d/20-hull-test-{i}.conflist")),
                    extra_cni_config(d, i),
                )
                .unwrap();
            }
        }
        // Two guest tests share the two cores of the test hosts, where guest kernel code is
        // emulated: a container's creation, tens of seconds alone, can pass the default
        // three-minute agent timeout there. A test about the timeout sets its own.
        let timeout = if hull_config.contains("agent_timeout_secs") {
            String::new()
        } else {
            format!("agent_timeout_secs = {TEST_AGENT_TIMEOUT_SECS}\n")
        };
        std::fs::write(
            d.join("hull.toml"),
            format!(
                "run_dir = \"{}\"\nstate_dir = \"{}\"\nlog_level = \"debug\"\n{timeout}{hull_config}\n",
                run_dir.display(),
                state_dir.display()
            ),
        )
        .unwrap();
        let bins = bin_dir();
        let path = format!(
            "{}:{}",
            bins.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("HULL_CONFIG", d.join("hull.toml"))
            .env("HULL_VMM", bins.join("hull-vmm"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Its own process group: a test that dies takes containerd with it, not the shims.
        cmd.process_group(0);
        if cri {
            // SAFETY: the closure runs in the forked child before exec and only calls
            // unshare(2), which allocates nothing and takes no lock.
            unsafe {
                cmd.pre_exec(new_network_namespace);
            }
        }
        let child = cmd.spawn().expect("start containerd");
        let mut c = Containerd {
            dir,
            socket,
            run_dir,
            state_dir,
            namespace: if cri { CRI_NAMESPACE } else { NAMESPACE },
            netns_before: if cri { pinned_netns() } else { Vec::new() },
            child: Some(child),
        };
        if cri {
            c.in_netns(&["ip", "link", "set", "lo", "up"]);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.ctr(&["version"]).status.code() != Some(0) {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if cri {
            c.import_image("hull.local/pause", &["--pause"]);
        }
        c.import_busybox();
        c
    }

    fn import_busybox(&mut self) {
        self.import_image("hull.local/busybox", &[]);
    }

    /// Builds an image with `resources/busybox-oci.sh ARGS` and imports it as
    /// `BASE_NAME:latest`.
    pub fn import_image(&self, base_name: &str, args: &[&str]) {
        let tar = self.dir.path().join("image.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/busybox-oci.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(args)
            .arg(&tar)
            .output()
            .expect("run busybox-oci.sh");
        assert!(
            out.status.success(),
            "busybox-oci.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.ctr_ok(&[
            "images",
            "import",
            "--base-name",
            base_name,
            tar.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(&tar);
    }

    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(self.namespace)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// containerd's pid (its network namespace is the CRI pods' world).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Runs `args` in containerd's network namespace, asserting success; returns stdout.
    pub fn in_netns(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.pid()))
            .args(args)
            .output()
            .expect("run nsenter");
        assert!(
            out.status.success(),
            "{args:?} in containerd's netns: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An HTTP/1.0 GET of `path` from `addr` (IP:PORT), made from containerd's network
    /// namespace (the node's side of the CRI pods' bridge); the whole response.
    pub fn http_get_in_netns(&self, addr: &str, path: &str) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let addr: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let request = format!("GET {path} HTTP/1.0\r\n\r\n");
        let netns = PathBuf::from(format!("/proc/{}/ns/net", self.pid()));
        hull_net::netns::run_in(&netns, move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(request.as_bytes())?;
            let mut response = String::new();
            s.read_to_string(&mut response)?;
            Ok(response)
        })
        .map_err(std::io::Error::other)?
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().expect("run ctr")
    }

    /// Runs ctr, asserting success; returns its standard output.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}): {}\n--- containerd log (tail) ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(60)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The status column of `ctr task ls` for `id`, if the task exists.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.get(2).unwrap_or(&"").to_string())
        })
    }

    /// Waits until task `id` shows `status`.
    pub fn wait_status(&self, id: &str, status: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.task_status(id);
            if now.as_deref() == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} is {now:?}, not {status}, after {within:?}\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Processes of this containerd's sandboxes: (pid, command line) of every hull-vmm and
    /// shim that names this test's directory.
    pub fn hull_processes(&self) -> Vec<(u32, String)> {
        let mark = self.dir.path().to_string_lossy().into_owned();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            if zombie {
                continue;
            }
            if (cmd.contains("hull-vmm") || cmd.contains("containerd-shim-hull-v2"))
                && cmd.contains(&mark)
            {
                found.push((pid, cmd));
            }
        }
        found
    }

    /// The pid of the hull-vmm serving this containerd's sandboxes (exactly one).
    pub fn vmm_pids(&self) -> Vec<u32> {
        self.hull_processes()
            .into_iter()
            .filter(|(_, c)| c.contains("hull-vmm"))
            .map(|(p, _)| p)
            .collect()
    }

    /// What the shim left behind: processes, run directories, images, mounts.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .hull_processes()
            .into_iter()
            .map(|(p, c)| format!("process {p}: {c}"))
            .collect();
        for d in [&self.run_dir, &self.state_dir] {
            for e in walk(d) {
                left.push(format!("file {}", e.display()));
            }
        }
        // A sandbox's run directory goes with its VM.
        for e in std::fs::read_dir(&self.run_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            left.push(format!("run directory {}", e.path().display()));
        }
        let mark = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for l in mounts.lines() {
            if let Some(point) = l.split_whitespace().nth(4) {
                if point.contains(&mark) {
                    left.push(format!("mount {point}"));
                }
            }
        }
        if self.namespace == CRI_NAMESPACE {
            left.extend(self.cri_leftovers());
        }
        left
    }

    /// What the CRI's pods left: pinned network namespaces, and veths on the CNI bridge
    /// in containerd's network namespace.
    fn cri_leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = pinned_netns()
            .into_iter()
            .filter(|n| n.starts_with("cni-") && !self.netns_before.contains(n))
            .map(|n| format!("network namespace /run/netns/{n}"))
            .collect();
        let links = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.pid()))
            .args(["ip", "-o", "link", "show", "type", "veth"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        left.extend(
            links
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("veth {l}")),
        );
        left
    }

    /// Waits until nothing is left behind, then asserts so.
    pub fn assert_clean(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind after {within:?}: {left:#?}\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Everything below `dir` but directories (a directory left empty is fine; what is in
/// one is not).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Sandboxes a failed test left running go first (their VMMs are not containerd's
        // children), then containerd.
        for (pid, cmd) in self.hull_processes() {
            if cmd.contains("hull-vmm") || cmd.contains("containerd-shim-hull-v2") {
                // SAFETY: kill(2) of a process this test started (its command line names
                // the test's directory).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // The pods' network namespaces a failed CRI test left pinned (containerd's CRI
        // removes them with the pods it removes).
        if self.namespace == CRI_NAMESPACE {
            for n in pinned_netns() {
                if n.starts_with("cni-") && !self.netns_before.contains(&n) {
                    let _ = Command::new("ip").args(["netns", "del", &n]).status();
                }
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mark = self.dir.path().to_string_lossy().into_owned();
        for l in mounts.lines() {
            if let Some(point) = l.split_whitespace().nth(4) {
                if point.contains(&mark) {
                    let _ = Command::new("umount").arg("-l").arg(point).status();
                }
            }
        }
    }
}

/// Whether a containerd test must skip here; says `skipped: <why>` when so.
pub fn skip() -> bool {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return true;
    }
    false
}

/// How long a test waits for everything a task made to be gone.
pub const CLEAN: Duration = Duration::from_secs(30);

/// Cycles of the leak tests (`create_delete_cycles_leak_nothing`,
/// `pod_sandbox_cycles_leak_nothing`): `HULL_SOAK_CYCLES`, or five. Every cycle is checked
/// exactly (nothing of it may remain before the next starts), so a leak shows on the first
/// cycle that has it; more cycles only catch rarer ones, which is what `scripts/soak.sh`
/// (the same tests with a larger count) is for.
pub fn soak_cycles() -> usize {
    match std::env::var("HULL_SOAK_CYCLES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("HULL_SOAK_CYCLES={v:?} is not a count")),
        Err(_) => 5,
    }
}

/// `ctr run --runtime hull ... EXTRA busybox ID CMD...`.
pub fn run_args<'a>(id: &'a str, extra: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", "--runtime", RUNTIME];
    a.extend_from_slice(extra);
    a.push(BUSYBOX);
    a.push(id);
    a.extend_from_slice(cmd);
    a
}

/// Deletes a stopped task and its container.
pub fn delete(c: &Containerd, id: &str) {
    c.ctr_ok(&["task", "delete", id]);
    c.ctr_ok(&["container", "rm", id]);
}

/// The annotation that makes a task a pod's sandbox (its VM is the pod's).
pub const POD: &[&str] = &["--annotation", "io.kubernetes.cri.container-type=sandbox"];

/// The annotations that make a task a container of pod `sandbox` (it joins that VM).
pub fn pod_member(sandbox: &str) -> Vec<String> {
    vec![
        "--annotation".into(),
        "io.kubernetes.cri.container-type=container".into(),
        "--annotation".into(),
        format!("io.kubernetes.cri.sandbox-id={sandbox}"),
    ]
}
