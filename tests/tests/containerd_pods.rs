//! Volumes and pods through containerd: read-only binds copied in, read-write binds shared
//! live over virtio-fs, and a pod's containers sharing one VM.
//!
//! The path: containerd → containerd-shim-hull-v2 → hull-vmm → hull-agent, through `ctr`, with
//! Debian's containerd 1.6 started privately by each test (tests/src/containerd.rs) and the
//! busybox image built offline. Every test ends by checking that nothing is left behind:
//! no VMM or shim process, no run directory, image, socket or mount.
//!
//! Sandboxes restore from the template cache (made by a cold boot the first time one is
//! needed), so each `ctr run` costs seconds, not a boot.

use std::process::Stdio;
use std::time::{Duration, Instant};

use hull_e2e::containerd::{delete, pod_member, run_args, skip, Containerd, CLEAN, POD};

#[test]
fn read_only_volumes_are_copied_in_and_read_only_in_the_guest() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    let dir = c.dir.path().join("vol");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/greeting"), "hi from the host\n").unwrap();
    let file = c.dir.path().join("single.conf");
    std::fs::write(&file, "key=value\n").unwrap();
    let dir_mount = format!("type=bind,src={},dst=/data,options=rbind:ro", dir.display());
    let file_mount = format!(
        "type=bind,src={},dst=/etc/single.conf,options=rbind:ro",
        file.display()
    );
    let out = c.ctr_ok(&run_args(
        "vols",
        &["--rm", "--mount", &dir_mount, "--mount", &file_mount],
        &[
            "sh",
            "-c",
            "cat /data/sub/greeting /etc/single.conf; touch /data/x 2>&1; (echo > /etc/single.conf) 2>&1; true",
        ],
    ));
    assert!(out.starts_with("hi from the host\nkey=value\n"), "{out}");
    assert_eq!(
        out.matches("Read-only file system").count(),
        2,
        "both volumes refuse writes: {out}"
    );
    c.assert_clean(CLEAN);
}

/// Waits for `path` to hold `want` (what the guest writes reaches the host at once; the
/// bound is for this machine's emulated guest kernel).
fn wait_file(path: &std::path::Path, want: &str, within: Duration) {
    let t = Instant::now();
    loop {
        if std::fs::read_to_string(path).is_ok_and(|s| s == want) {
            return;
        }
        assert!(
            t.elapsed() < within,
            "{} never held {want:?} (it holds {:?})",
            path.display(),
            std::fs::read_to_string(path)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn read_write_volumes_are_shared_live_both_ways() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    let dir = c.dir.path().join("rw");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("from-host"), "hello from the host\n").unwrap();
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", dir.display());
    // A task of its own: reads what the host put there, writes back, makes a directory,
    // renames and removes.
    let out = c.ctr_ok(&run_args(
        "rw1",
        &["--rm", "--mount", &mount],
        &[
            "sh",
            "-c",
            "cat /data/from-host; echo from the guest > /data/tmp; mv /data/tmp /data/from-guest; \
             mkdir /data/made; rm /data/from-host; ls /data",
        ],
    ));
    assert_eq!(
        out,
        "hello from the host\nfrom-guest\nmade\n",
        "{}",
        c.log_tail(30)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("from-guest")).unwrap(),
        "from the guest\n"
    );
    assert!(dir.join("made").is_dir());
    assert!(!dir.join("from-host").exists());
    c.assert_clean(CLEAN);

    // A pod whose two containers bind the same directory (an emptyDir): one waits for a
    // file the host writes while it runs and answers in another; the second container
    // reads that answer. Live both ways, and shared between the pod's containers.
    let mut extra = vec!["-d"];
    extra.extend_from_slice(POD);
    c.ctr_ok(&run_args("rwpod", &extra, &["sleep", "1000"]));
    c.wait_status("rwpod", "RUNNING", Duration::from_secs(60));
    let member = pod_member("rwpod");
    let mut extra: Vec<&str> = vec!["-d", "--mount", &mount];
    extra.extend(member.iter().map(String::as_str));
    c.ctr_ok(&run_args(
        "waiter",
        &extra,
        &[
            "sh",
            "-c",
            "while [ ! -f /data/go ]; do sleep 1; done; \
             echo \"seen: $(cat /data/go)\" > /data/answer; sleep 1000",
        ],
    ));
    c.wait_status("waiter", "RUNNING", Duration::from_secs(60));
    std::fs::write(dir.join("go"), "now").unwrap();
    wait_file(&dir.join("answer"), "seen: now\n", Duration::from_secs(60));
    let mut extra: Vec<&str> = vec!["--rm", "--mount", &mount];
    extra.extend(member.iter().map(String::as_str));
    let out = c.ctr_ok(&run_args("reader", &extra, &["cat", "/data/answer"]));
    assert_eq!(out, "seen: now\n");
    assert_eq!(c.vmm_pids().len(), 1, "one VM for the pod");
    for id in ["waiter", "rwpod"] {
        c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
        c.wait_status(id, "STOPPED", Duration::from_secs(30));
        delete(&c, id);
    }
    c.assert_clean(CLEAN);
}

#[test]
fn pod_containers_share_one_vm() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    let mut extra = vec!["-d"];
    extra.extend_from_slice(POD);
    c.ctr_ok(&run_args("pod1", &extra, &["sleep", "1000"]));
    c.wait_status("pod1", "RUNNING", Duration::from_secs(60));
    let member = pod_member("pod1");
    let mut extra: Vec<&str> = vec!["--rm"];
    extra.extend(member.iter().map(String::as_str));
    let out = c.ctr_ok(&run_args(
        "app1",
        &extra,
        &["sh", "-c", "echo from the pod; hostname"],
    ));
    assert!(out.starts_with("from the pod\n"), "{out}");
    let mut extra: Vec<&str> = vec!["-d"];
    extra.extend(member.iter().map(String::as_str));
    c.ctr_ok(&run_args("app2", &extra, &["sleep", "1000"]));
    c.wait_status("app2", "RUNNING", Duration::from_secs(60));
    // A member with a memory limit that allocates past it is OOM-killed (137, TaskOOM);
    // the limit is the container's cgroup in the pod's VM, whose size the sandbox chose.
    let mut events = c
        .ctr_command(&["events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut extra: Vec<&str> = vec!["--rm", "--memory-limit", "16777216"];
    extra.extend(member.iter().map(String::as_str));
    let out = c.ctr(&run_args("hog", &extra, &["sh", "-c", "tail /dev/zero"]));
    assert_eq!(out.status.code(), Some(137), "{}", c.log_tail(30));
    // SAFETY: kill(2) of the `ctr events` child this test started.
    unsafe { libc::kill(events.id() as i32, libc::SIGTERM) };
    let mut seen = String::new();
    std::io::Read::read_to_string(events.stdout.as_mut().unwrap(), &mut seen).unwrap();
    let _ = events.wait();
    assert!(
        seen.contains("/tasks/oom"),
        "no /tasks/oom event in:\n{seen}"
    );
    assert_eq!(c.vmm_pids().len(), 1, "the pod's containers share one VM");
    let shims = c
        .hull_processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-hull-v2"))
        .count();
    assert_eq!(shims, 1, "and one shim");
    for id in ["app2", "pod1"] {
        c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
        c.wait_status(id, "STOPPED", Duration::from_secs(30));
        delete(&c, id);
    }
    c.assert_clean(CLEAN);
}
