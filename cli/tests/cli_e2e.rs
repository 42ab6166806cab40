//! The `hull` binary end to end: real sandbox VMs (restored from the template cache, made
//! by a cold boot the first time), each test under its own `$HULL_ROOT`, each ending with
//! nothing left behind (no VMM, no run or container directory).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hull_e2e::terminal::{tmux, wait_screen};

const HULL: &str = env!("CARGO_BIN_EXE_hull");

fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("hull needs root".into());
    }
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if kvm.is_err() {
        return Some("/dev/kvm is not available".into());
    }
    for f in [
        hull_vmm_api::config::DEFAULT_KERNEL,
        hull_vmm_api::config::DEFAULT_ROOT_IMAGE,
        "/bin/busybox",
    ] {
        if !Path::new(f).exists() {
            return Some(format!("{f} is missing (scripts/build.sh makes it)"));
        }
    }
    None
}

fn skip() -> bool {
    match unavailable() {
        Some(why) => {
            eprintln!("skipped: {why}");
            true
        }
        None => false,
    }
}

struct Root(tempfile::TempDir);

impl Root {
    fn new() -> Root {
        Root(tempfile::tempdir().unwrap())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(HULL);
        c.args(args).env("HULL_ROOT", self.0.path());
        c
    }

    fn hull(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Nothing of any sandbox remains: no run or container directory, no VMM naming
    /// this root.
    fn assert_clean(&self) {
        let root = self.0.path().to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let vmms = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains("hull-vmm") && c.contains(&root))
                .count();
            let left = ["run", "containers"]
                .iter()
                .flat_map(|d| {
                    std::fs::read_dir(self.0.path().join(d))
                        .into_iter()
                        .flatten()
                })
                .count();
            if vmms == 0 && left == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: {vmms} VMM(s), {left} directory entries"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_prints_output_and_passes_exit_statuses_through() {
    if skip() {
        return;
    }
    let r = Root::new();
    let out = r.hull(&["run", "--rm", "busybox", "echo", "hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");
    let out = r.hull(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 42",
    ]);
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    r.assert_clean();
}

#[test]
fn env_workdir_user_stdin_and_volumes_reach_the_container() {
    if skip() {
        return;
    }
    let r = Root::new();
    let host = r.0.path().join("vol");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("from-host"), "host file\n").unwrap();
    let ro = format!("{}:/ro:ro", host.display());
    let rw = format!("{}:/rw", host.display());
    let mut child = r
        .command(&[
            "run", "--rm", "-i", "-e", "GREETING=hi", "-w", "/tmp", "-v", &ro, "-v", &rw,
            "busybox", "sh", "-c",
            "cat; echo $GREETING; pwd; cat /ro/from-host; touch /ro/x 2>&1; echo guest > /rw/from-guest",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "piped in\nhi\n/tmp\nhost file\ntouch: /ro/x: Read-only file system\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("from-guest")).unwrap(),
        "guest\n",
        "a read-write volume is the host directory itself"
    );
    let out = r.hull(&["run", "--rm", "-u", "1000:100", "busybox", "id"]);
    assert!(
        text(&out.stdout).starts_with("uid=1000 gid=100"),
        "{}",
        text(&out.stdout)
    );
    r.assert_clean();
}

#[test]
fn signals_reach_the_container_and_a_name_in_use_is_refused() {
    if skip() {
        return;
    }
    let r = Root::new();
    let mut first = r
        .command(&[
            "run",
            "--rm",
            "--name",
            "dup",
            "busybox",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 7' TERM; echo ready; sleep 1000 & wait",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    std::io::Read::read_exact(first.stdout.as_mut().unwrap(), &mut line).unwrap();
    assert_eq!(&line, b"ready\n");
    let out = r.hull(&["run", "--rm", "--name", "dup", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("\"dup\" is in use"),
        "{}",
        text(&out.stderr)
    );
    // SAFETY: kill(2) of the child this test started.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "got TERM\n");
    r.assert_clean();
}

#[test]
fn bad_input_is_one_line_and_status_125() {
    if skip() {
        return;
    }
    let r = Root::new();
    for (args, says) in [
        (
            vec!["run", "--rm", "alpine", "true"],
            "unknown image \"alpine\"",
        ),
        (
            vec!["run", "--rm", "-v", "/no/such:/data", "busybox", "true"],
            "does not exist",
        ),
        (
            vec!["run", "--rm", "-v", "relative:/data", "busybox", "true"],
            "absolute",
        ),
        (
            vec!["run", "--rm", "-m", "lots", "busybox", "true"],
            "--memory \"lots\"",
        ),
        (
            vec!["run", "--rm", "-e", "NOVALUE", "busybox", "true"],
            "KEY=VALUE",
        ),
        (
            vec!["run", "--rm", "--name", "a/b", "busybox", "true"],
            "--name",
        ),
        (
            vec!["run", "--rm", "--cpus", "0", "busybox", "true"],
            "--cpus 0",
        ),
        (vec!["logs", "nosuch"], "no container named \"nosuch\""),
        (vec!["kill", "-s", "NOPE", "nosuch"], "signal \"NOPE\""),
        (
            vec!["run", "--rm", "nosuch:1"],
            "unknown image \"nosuch:1\"",
        ),
    ] {
        let out = r.hull(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(
            err.starts_with("hull: ") && err.contains(says),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    }
    r.assert_clean();
}

/// Whether the shell's prompt is the last line on `screen`, below the line that typed
/// `command`.
fn prompt_after(screen: &str, command: &str) -> bool {
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    let Some(typed) = lines.iter().rposition(|l| l.contains(command)) else {
        return false;
    };
    lines[typed + 1..]
        .iter()
        .rev()
        .find(|l| !l.is_empty())
        .is_some_and(|l| l.ends_with('#'))
}

#[test]
fn an_interactive_terminal_types_resizes_interrupts_and_is_restored() {
    if skip() {
        return;
    }
    if !hull_e2e::terminal::available() {
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let r = Root::new();
    let session = format!("hull-cli-{}", std::process::id());
    let status = r.0.path().join("status");
    let restored = r.0.path().join("restored");
    let script = format!(
        "before=$(stty -g); HULL_ROOT={root} {HULL} run --rm -it busybox sh; echo $? > {status}; \
         [ \"$(stty -g)\" = \"$before\" ] && echo yes > {restored}; sleep 60",
        root = r.0.path().display(),
        status = status.display(),
        restored = restored.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "40",
        "sh",
        "-c",
        &script,
    ]);
    // The first run after an image build may cold-boot the template and create the
    // container under load: on an emulated-guest host that alone can take minutes.
    wait_screen(&session, "#", Duration::from_secs(480));
    tmux(&[
        "send-keys",
        "-t",
        &session,
        "stty size; echo typed-$((6*7))",
        "Enter",
    ]);
    let screen = wait_screen(&session, "typed-42", Duration::from_secs(60));
    assert!(screen.contains("40 100"), "the terminal's size:\n{screen}");
    tmux(&["resize-window", "-t", &session, "-x", "120", "-y", "50"]);
    std::thread::sleep(Duration::from_secs(2));
    tmux(&["send-keys", "-t", &session, "clear; stty size", "Enter"]);
    wait_screen(&session, "50 120", Duration::from_secs(60));
    // Ctrl-C reaches the container's foreground process, not hull. The guest may take
    // seconds to start `sleep`; an interrupt that lands before it goes to the shell (and
    // flushes typed-ahead input), so interrupt until the prompt is back. Only an interrupt
    // that reaches `sleep` brings the prompt back before its 1000 s are up.
    tmux(&["send-keys", "-t", &session, "sleep 1000", "Enter"]);
    wait_screen(&session, "sleep 1000", Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        std::thread::sleep(Duration::from_secs(3));
        tmux(&["send-keys", "-t", &session, "C-c"]);
        std::thread::sleep(Duration::from_secs(2));
        let screen = tmux(&["capture-pane", "-p", "-t", &session]);
        if prompt_after(&screen, "sleep 1000") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Ctrl-C did not end `sleep 1000`; screen:\n{screen}"
        );
    }
    tmux(&["send-keys", "-t", &session, "echo after-$((1+1))", "Enter"]);
    wait_screen(&session, "after-2", Duration::from_secs(60));
    tmux(&["send-keys", "-t", &session, "exit 3", "Enter"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !status.exists() {
        assert!(Instant::now() < deadline, "hull did not end after exit");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The shell checks the settings right after writing the status.
    std::thread::sleep(Duration::from_secs(1));
    tmux(&["kill-session", "-t", &session]);
    assert_eq!(std::fs::read_to_string(&status).unwrap().trim(), "3");
    assert!(
        restored.exists(),
        "the terminal's settings are back as they were"
    );
    r.assert_clean();
}

fn ok(r: &Root, args: &[&str]) -> String {
    let out = r.hull(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn wait_status(r: &Root, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = ok(r, &["ps", "-a"]);
        if ps.lines().any(|l| l.starts_with(name) && l.contains(want)) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never {want}:\n{ps}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn detached_containers_log_exec_signal_inspect_and_remove() {
    if skip() {
        return;
    }
    let r = Root::new();
    let name = ok(
        &r,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "busybox",
            "sh",
            "-c",
            "echo started; trap 'echo bye; exit 5' TERM; sleep 1000 & wait",
        ],
    );
    assert_eq!(name, "web\n");
    assert!(ok(&r, &["ps"])
        .lines()
        .any(|l| l.starts_with("web") && l.contains("running")));
    assert_eq!(ok(&r, &["exec", "web", "echo", "from-exec"]), "from-exec\n");
    let out = r.hull(&["exec", "web", "sh", "-c", "exit 9"]);
    assert_eq!(out.status.code(), Some(9), "{}", text(&out.stderr));
    assert!(ok(&r, &["logs", "web"]).contains("started"));
    ok(&r, &["kill", "-s", "TERM", "web"]);
    wait_status(&r, "web", "exited (5)");
    assert!(ok(&r, &["logs", "web"]).contains("bye"));
    assert!(
        !ok(&r, &["ps"]).contains("web"),
        "ps lists running ones only"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&r, &["inspect", "web"])).unwrap();
    assert_eq!(json["status"]["state"], "exited");
    assert_eq!(json["status"]["code"], 5);
    ok(&r, &["rm", "web"]);
    assert!(!ok(&r, &["ps", "-a"]).contains("web"));

    // logs -f follows until the container ends.
    ok(
        &r,
        &[
            "run",
            "-d",
            "--name",
            "f",
            "busybox",
            "sh",
            "-c",
            "echo one; sleep 2; echo two",
        ],
    );
    assert_eq!(ok(&r, &["logs", "-f", "f"]), "one\ntwo\n");
    wait_status(&r, "f", "exited (0)");
    ok(&r, &["rm", "f"]);

    // A running container is removed only by force.
    ok(
        &r,
        &["run", "-d", "--name", "busy", "busybox", "sleep", "1000"],
    );
    let out = r.hull(&["rm", "busy"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("is running"),
        "{}",
        text(&out.stderr)
    );
    ok(&r, &["rm", "-f", "busy"]);

    // A foreground run without --rm stays listed until removed.
    ok(&r, &["run", "--name", "kept", "busybox", "true"]);
    wait_status(&r, "kept", "exited (0)");
    ok(&r, &["rm", "kept"]);
    r.assert_clean();
}

/// Appends `data` as a regular file at `path` to a tar builder.
fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(946_684_800);
    h.set_cksum();
    b.append_data(&mut h, path, data).unwrap();
}

#[test]
fn imported_oci_and_docker_save_images_run_with_their_layers_and_config() {
    if skip() {
        return;
    }
    let r = Root::new();
    let oci = r.0.path().join("busybox-oci.tar");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/busybox-oci.sh");
    let made = Command::new(script).arg(&oci).output().unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    assert_eq!(
        ok(
            &r,
            &["image", "import", "--name", "bb:oci", oci.to_str().unwrap()]
        ),
        "bb:oci\n"
    );
    assert!(ok(&r, &["run", "--rm", "bb:oci", "cat", "/etc/group"]).contains("root:x:0:"));

    // A `FROM scratch` image, with no mount points for /proc, /sys or /dev, runs with a
    // read-only root that stays read-only.
    let scratch = r.0.path().join("scratch-oci.tar");
    let made = Command::new(script)
        .args(["--scratch", scratch.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    ok(
        &r,
        &[
            "image",
            "import",
            "--name",
            "bare",
            scratch.to_str().unwrap(),
        ],
    );
    let out = r.hull(&[
        "run",
        "--rm",
        "--read-only",
        "bare",
        "/bin/busybox",
        "sh",
        "-c",
        "/bin/busybox head -c 8 /proc/1/cmdline; echo; /bin/busybox touch /written",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/bin/bus\n", "/proc is mounted");
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );

    // A docker save archive: the busybox layer, then one that adds a file and whites out
    // /etc/group; the config gives the command and working directory.
    let layout = r.0.path().join("layout");
    tar::Archive::new(std::fs::File::open(&oci).unwrap())
        .unpack(&layout)
        .unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let base = std::fs::read(blob(manifest["layers"][0]["digest"].as_str().unwrap())).unwrap();
    let mut top = tar::Builder::new(Vec::new());
    add_file(&mut top, "hello", b"from layer 2\n");
    add_file(&mut top, "etc/.wh.group", b"");
    let top = top.into_inner().unwrap();
    let diff_id = |b: &[u8]| {
        use sha2::Digest;
        let h = sha2::Sha256::digest(b);
        format!(
            "sha256:{}",
            h.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    };
    let config = format!(
        r#"{{"config":{{"Env":["PATH=/bin"],"Cmd":["cat","/hello"],"WorkingDir":"/etc"}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
        diff_id(&base),
        diff_id(&top)
    );
    let config = config.as_bytes();
    let mut save = tar::Builder::new(Vec::new());
    add_file(&mut save, "l1/layer.tar", &base);
    add_file(&mut save, "l2/layer.tar", &top);
    add_file(&mut save, "config.json", config);
    add_file(
        &mut save,
        "manifest.json",
        br#"[{"Config":"config.json","RepoTags":["saved:2"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#,
    );
    let saved = r.0.path().join("saved.tar");
    std::fs::write(&saved, save.into_inner().unwrap()).unwrap();
    assert_eq!(
        ok(&r, &["image", "import", saved.to_str().unwrap()]),
        "saved:2\n"
    );
    assert_eq!(ok(&r, &["run", "--rm", "saved:2"]), "from layer 2\n");
    let out = ok(&r, &["run", "--rm", "saved:2", "sh", "-c", "pwd; ls /etc"]);
    assert!(out.starts_with("/etc\n"), "{out}");
    assert!(out.contains("passwd") && !out.contains("group"), "{out}");
    let images = ok(&r, &["images"]);
    assert!(
        images.contains("bb:oci") && images.contains("saved:2"),
        "{images}"
    );
    ok(&r, &["image", "rm", "saved:2", "bb:oci"]);
    assert!(!ok(&r, &["images"]).contains("saved:2"));
    // A corrupt archive is refused by name.
    std::fs::write(r.0.path().join("junk.tar"), b"not a tar at all").unwrap();
    let out = r.hull(&[
        "image",
        "import",
        r.0.path().join("junk.tar").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).starts_with("hull: "),
        "{}",
        text(&out.stderr)
    );
    r.assert_clean();
}

/// The VMMs of this root's sandboxes: (pid, parent pid).
fn vmms_of(r: &Root) -> Vec<(u32, u32)> {
    let root = r.0.path().to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if !(cmd.contains("hull-vmm") && cmd.contains(&root)) {
                return None;
            }
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))?
                .trim()
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// SIGKILL of the process that started a sandbox (a detached run's supervisor) takes the
/// VMM with it at once (its parent-death signal), and prune still cleans up.
#[test]
fn a_killed_supervisor_takes_its_vmm_with_it_and_prune_cleans_up() {
    if skip() {
        return;
    }
    let r = Root::new();
    ok(
        &r,
        &["run", "-d", "--name", "orphan", "busybox", "sleep", "1000"],
    );
    wait_status(&r, "orphan", "running");
    let vmms = vmms_of(&r);
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    let (vmm, supervisor) = vmms[0];
    // SAFETY: kill(2) of the supervisor this test started.
    unsafe { libc::kill(supervisor as i32, libc::SIGKILL) };
    let t = Instant::now();
    while hull_e2e::alive(vmm) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the VMM outlived its killed parent by {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "the VMM ended {:?} after its parent was killed",
        t.elapsed()
    );
    let pruned = ok(&r, &["system", "prune"]);
    assert!(pruned.contains("orphan"), "{pruned}");
    assert!(!ok(&r, &["ps", "-a"]).contains("orphan"));
    r.assert_clean();
}

#[test]
fn check_reports_the_host_and_prune_removes_stopped_containers() {
    if skip() {
        return;
    }
    let r = Root::new();
    let out = ok(&r, &["check"]);
    for want in [
        "ok      running as root",
        "ok      /dev/kvm opens read-write",
        "guest kernel",
        "mkfs.erofs",
        "template",
    ] {
        assert!(out.contains(want), "{want:?} in:\n{out}");
    }
    assert!(!out.contains("MISSING"), "{out}");
    ok(&r, &["run", "--name", "old", "busybox", "true"]);
    let pruned = ok(&r, &["system", "prune"]);
    assert!(pruned.contains("1 stopped container(s) (old)"), "{pruned}");
    assert!(!ok(&r, &["ps", "-a"]).contains("old"));
    r.assert_clean();
}

#[test]
fn every_command_has_help_with_examples() {
    for cmd in [
        &["run"][..],
        &["exec"],
        &["ps"],
        &["logs"],
        &["stop"],
        &["kill"],
        &["rm"],
        &["inspect"],
        &["images"],
        &["image", "import"],
        &["image", "ls"],
        &["image", "rm"],
        &["check"],
        &["system", "prune"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = Command::new(HULL).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            text(&out.stdout).contains("Examples:\n  hull "),
            "{args:?}:\n{}",
            text(&out.stdout)
        );
    }
}

/// Every entry under `dir` whose mode lets a group or other user in (symlinks aside).
fn open_to_others(dir: &Path, found: &mut Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.file_type().is_symlink() {
            continue;
        }
        if m.mode() & 0o077 != 0 {
            found.push(format!("{} {:o}", p.display(), m.mode() & 0o7777));
        }
        if m.is_dir() {
            open_to_others(&p, found);
        }
    }
}

fn umask_zero() -> std::io::Result<()> {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0) };
    Ok(())
}

#[test]
fn nothing_hull_creates_is_open_to_other_users_even_under_umask_000() {
    use std::os::unix::process::CommandExt;
    if skip() {
        return;
    }
    let r = Root::new();
    let vol = r.0.path().join("secret-volume");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("token"), "s3cr3t").unwrap();
    let ro = format!("{}:/secret:ro", vol.display());
    let oci = r.0.path().join("busybox-oci.tar");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../resources/busybox-oci.sh");
    assert!(Command::new(script).arg(&oci).status().unwrap().success());
    let umask0 = |args: &[&str]| {
        let mut c = r.command(args);
        // SAFETY: the hook only calls umask, which is async-signal-safe.
        unsafe {
            c.pre_exec(umask_zero);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    umask0(&[
        "image",
        "import",
        "--name",
        "bb:private",
        oci.to_str().unwrap(),
    ]);
    umask0(&[
        "run",
        "-d",
        "--name",
        "private",
        "-v",
        &ro,
        "bb:private",
        "sleep",
        "1000",
    ]);
    // A non-root user of the image can still read it: image trees keep their own modes.
    let out = umask0(&[
        "exec",
        "-u",
        "65534",
        "private",
        "cat",
        "/secret/token",
        "/etc/passwd",
    ]);
    assert!(out.starts_with("s3cr3t"), "{out}");
    let mut found = Vec::new();
    for d in ["run", "images", "containers"] {
        open_to_others(&r.0.path().join(d), &mut found);
    }
    assert!(
        found.is_empty(),
        "open to other users:\n{}",
        found.join("\n")
    );
    umask0(&["rm", "-f", "private"]);
    umask0(&["image", "rm", "bb:private"]);
    r.assert_clean();
}
