//! The `hull` binary end to end: real sandbox VMs (restored from the template cache, made
//! by a cold boot the first time), each test under its own `$HULL_ROOT`, each ending with
//! nothing left behind (no VMM, no run or container directory).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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
        hull_vmm::config::DEFAULT_KERNEL,
        hull_vmm::config::DEFAULT_ROOT_IMAGE,
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
            vec!["run", "--rm", "-t", "busybox", "true"],
            "not built yet",
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
