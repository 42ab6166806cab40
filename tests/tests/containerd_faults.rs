//! Failures through containerd: a killed VMM or shim cleaned up by delete, a hung guest
//! failing calls within the agent timeout, bad input refused clearly, and repeated
//! create/delete cycles that leave nothing behind (five here; `scripts/soak.sh` runs more).
//!
//! The path: containerd → containerd-shim-hull-v2 → hull-vmm → hull-agent, through `ctr`, with
//! Debian's containerd 1.6 started privately by each test (tests/src/containerd.rs) and the
//! busybox image built offline. Every test ends by checking that nothing is left behind:
//! no VMM or shim process, no run directory, image, socket or mount.
//!
//! Sandboxes restore from the template cache (made by a cold boot the first time one is
//! needed), so each `ctr run` costs seconds, not a boot.

use std::time::{Duration, Instant};

use hull_e2e::containerd::{
    delete, pod_member, run_args, skip, soak_cycles, Containerd, CLEAN, POD, RUNTIME,
};

#[test]
fn killed_vmm_stops_every_task_and_delete_cleans_up() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    let mut extra = vec!["-d"];
    extra.extend_from_slice(POD);
    c.ctr_ok(&run_args("pod2", &extra, &["sleep", "1000"]));
    c.wait_status("pod2", "RUNNING", Duration::from_secs(60));
    let member = pod_member("pod2");
    let mut extra: Vec<&str> = vec!["-d"];
    extra.extend(member.iter().map(String::as_str));
    c.ctr_ok(&run_args("member", &extra, &["sleep", "1000"]));
    c.wait_status("member", "RUNNING", Duration::from_secs(60));
    let vmm = c.vmm_pids();
    assert_eq!(vmm.len(), 1);
    let t = Instant::now();
    // SAFETY: kill(2) of the VMM this test's containerd started.
    unsafe { libc::kill(vmm[0] as i32, libc::SIGKILL) };
    c.wait_status("pod2", "STOPPED", Duration::from_secs(15));
    c.wait_status("member", "STOPPED", Duration::from_secs(15));
    eprintln!(
        "both tasks stopped {:.1} s after the VMM was killed",
        t.elapsed().as_secs_f64()
    );
    for id in ["member", "pod2"] {
        delete(&c, id);
    }
    c.assert_clean(CLEAN);
}

#[test]
fn killed_shim_is_cleaned_up_by_delete() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    // A read-only volume, as a Kubernetes Secret arrives: its copy lives on tmpfs (the run
    // directory), private, and the crash path's `delete` removes it.
    let secret = c.dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("token"), "s3cr3t").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/var/run/secrets/x,options=rbind:ro",
        secret.display()
    );
    c.ctr_ok(&run_args(
        "orphan",
        &["-d", "--mount", &mount],
        &["sleep", "1000"],
    ));
    c.wait_status("orphan", "RUNNING", Duration::from_secs(60));
    let copies: Vec<_> = std::fs::read_dir(&c.run_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("volumes-"))
        .flat_map(|e| std::fs::read_dir(e.path()).unwrap().flatten())
        .map(|e| e.path())
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "one volume copy in the run directory: {copies:?}"
    );
    {
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(&copies[0]).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", copies[0].display());
        let dir_mode = std::fs::metadata(copies[0].parent().unwrap())
            .unwrap()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
    }
    let shim = c
        .hull_processes()
        .into_iter()
        .find(|(_, cmd)| cmd.contains("containerd-shim-hull-v2"))
        .map(|(p, _)| p)
        .expect("the shim runs");
    let vmm = c
        .hull_processes()
        .into_iter()
        .find(|(_, cmd)| cmd.contains("hull-vmm"))
        .map(|(p, _)| p)
        .expect("the VMM runs");
    // SAFETY: kill(2) of the shim this test's containerd started.
    unsafe { libc::kill(shim as i32, libc::SIGKILL) };
    // The VMM dies with the shim that launched it (its parent-death signal), whatever
    // containerd does next.
    let t = Instant::now();
    while hull_e2e::alive(vmm) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the VMM outlived its killed shim by {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("the VMM ended {:?} after its shim was killed", t.elapsed());
    // containerd notices the dead shim and runs the shim binary's `delete`, which stops
    // the VM it left and removes its state.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = c.task_status("orphan");
        if status.is_none() || status.as_deref() == Some("STOPPED") {
            break;
        }
        assert!(Instant::now() < deadline, "task still {status:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = c.ctr(&["task", "delete", "orphan"]);
    c.ctr_ok(&["container", "rm", "orphan"]);
    c.assert_clean(CLEAN);
}

#[test]
fn unresponsive_agent_fails_calls_within_the_timeout() {
    if skip() {
        return;
    }
    // Long enough for a container's creation on an emulated-guest host (20 s proved too
    // short on a busy one), short for a test.
    let c = Containerd::start("agent_timeout_secs = 60");
    c.ctr_ok(&run_args("hung", &["-d"], &["sleep", "1000"]));
    c.wait_status("hung", "RUNNING", Duration::from_secs(120));
    let api = std::fs::read_dir(&c.run_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("api.sock"))
        .find(|p| p.exists())
        .expect("the sandbox's control socket");
    // A paused VM runs no guest code: its agent cannot answer.
    let vmm = hull_protocol::rpc::connect_vmm(&api).unwrap();
    let ctx = || hull_protocol::rpc::ttrpc::context::with_timeout(10_000_000_000);
    let empty = hull_protocol::rpc::protobuf::well_known_types::empty::Empty::new;
    vmm.pause(ctx(), &empty()).unwrap();
    let t = Instant::now();
    let out = c.ctr(&["task", "ps", "hung"]);
    let took = t.elapsed();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not answer within 60 s"),
        "the error says what happened: {err}"
    );
    assert!(took < Duration::from_secs(120), "failed after {took:?}");
    vmm.resume(ctx(), &empty()).unwrap();
    c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", "hung"]);
    c.wait_status("hung", "STOPPED", Duration::from_secs(30));
    delete(&c, "hung");
    c.assert_clean(CLEAN);
}

#[test]
fn bad_input_is_refused_clearly_and_leaks_nothing() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    // A read-write bind of a single host file: only directories are shared.
    let file = c.dir.path().join("single-file");
    std::fs::write(&file, "x").unwrap();
    let file_mount = format!(
        "type=bind,src={},dst=/host,options=rbind:rw",
        file.display()
    );
    let out = c.ctr(&run_args(
        "bind",
        &["--rm", "--mount", &file_mount],
        &["true"],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/host") && err.contains("not single files"),
        "{err}"
    );
    let _ = c.ctr(&["container", "rm", "bind"]);
    // Runtime options naming a configuration file that is not there.
    let out = c.ctr(&run_args(
        "noconf",
        &["--rm", "--runtime-config-path", "/no/such/hull.toml"],
        &["true"],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/hull.toml"), "{err}");
    let _ = c.ctr(&["container", "rm", "noconf"]);
    // A read-only volume whose source is missing.
    let out = c.ctr(&run_args(
        "novol",
        &[
            "--rm",
            "--mount",
            "type=bind,src=/no/such/dir,dst=/data,options=rbind:ro",
        ],
        &["true"],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/dir"), "{err}");
    let _ = c.ctr(&["container", "rm", "novol"]);

    // A rootfs that is not there.
    let missing = c.dir.path().join("no-such-rootfs");
    std::fs::create_dir_all(&missing).unwrap();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        missing.to_str().unwrap(),
        "norootfs",
        "true",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rootfs"), "{err}");
    let _ = c.ctr(&["container", "rm", "norootfs"]);
    std::fs::remove_dir(&missing).unwrap();

    // A command that does not exist in the image.
    let out = c.ctr(&run_args("nocmd", &["--rm"], &["/no/such/program"]));
    assert!(!out.status.success());
    let _ = c.ctr(&["container", "rm", "nocmd"]);
    c.assert_clean(CLEAN);
    // And the shim still serves.
    assert_eq!(
        c.ctr_ok(&run_args("after", &["--rm"], &["echo", "ok"])),
        "ok\n"
    );
    c.assert_clean(CLEAN);
}

#[test]
fn create_delete_cycles_leak_nothing() {
    if skip() {
        return;
    }
    let cycles = soak_cycles();
    let c = Containerd::start("");
    let t = Instant::now();
    for i in 0..cycles {
        let id = format!("cycle{i}");
        let out = c.ctr_ok(&run_args(&id, &["--rm"], &["echo", "cycle"]));
        assert_eq!(out, "cycle\n");
        c.assert_clean(CLEAN);
    }
    eprintln!(
        "{cycles} cycles in {:.1} s ({:.1} s each)",
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() / cycles as f64
    );
    c.assert_clean(CLEAN);
}
