//! hull-agent: PID 1 of the hull guest, and the service that runs its containers.
//!
//! Modes, by how it is started:
//! - **PID 1 of a guest**: mounts the pseudo-filesystems (cgroup2 included), makes
//!   /dev/console its stdio, reports its boot stages to the VMM's boot-timer port, serves
//!   the agent protocol on vsock ports 1024 (ttrpc) and 1025 (streams), reaps every orphan,
//!   and powers the VM off on request (SIGTERM, SIGINT, SIGPWR, `hull.ready=poweroff`, or
//!   the end of `hull.run`'s program).
//! - **`hull-agent serve`** on a host, as root: the same service over unix sockets in a
//!   directory, for tests and benchmarks; it is a child subreaper and keeps its hostname
//!   and network changes to UTS and network namespaces of its own.
//! - **`hull-agent __runtime ...`**: the single-threaded helper that makes libcontainer
//!   calls for the service (see `hull_agent::runtime`).
//!
//! Signals are blocked in every thread and taken synchronously by the main thread with
//! `sigwaitinfo`, so there is no handler that could interrupt the reaper; the main thread
//! is the only one that reaps (`hull_agent::reaper`).
//!
//! Trust: the agent trusts the kernel command line (set by the VMM). Everything that
//! arrives over the RPC and stream ports is checked before use, and no request can take the
//! agent down: a panic in PID 1 would be a guest kernel panic.

mod init;
mod power;
mod stage;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use hull_protocol::boot::{Stage, READY_MARKER};

use hull_agent::reaper::Reaper;
use hull_agent::server::{self, Listen};
use hull_agent::service::{Config, Service};
use hull_agent::{runtime, unblock_all_signals};

use crate::init::AfterReady;

/// Starts `hull.run`'s program on the console with default signal handling; its PID.
fn run_program(argv: &[String]) -> Option<libc::pid_t> {
    use std::os::unix::process::CommandExt;
    let (program, args) = argv.split_first()?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // async-signal-safe functions; PID 1's blocked signals must not stay blocked there.
    unsafe {
        cmd.pre_exec(unblock_all_signals);
    }
    match cmd.spawn() {
        Ok(child) => Some(child.id() as libc::pid_t),
        Err(e) => {
            init::console_line(&format!("hull-agent: cannot run {program}: {e}"));
            None
        }
    }
}

/// The guest's directories: state on the /run tmpfs; rootfs areas: below it (where the
/// host's storage will be mounted) and the image's own read-only rootfs collection.
fn guest_config() -> Config {
    Config {
        state_dir: PathBuf::from("/run/hull"),
        rootfs_areas: vec![
            PathBuf::from("/run/hull/shared"),
            PathBuf::from(IMAGE_ROOTFS_AREA),
        ],
        cgroup_parent: PathBuf::from("/"),
        in_guest: true,
    }
}

/// Read-only container rootfs trees that ship in the guest image (a busybox one for the
/// end-to-end tests and benchmarks).
const IMAGE_ROOTFS_AREA: &str = "/usr/share/hull/rootfs";

fn make_dirs(config: &Config) -> std::io::Result<()> {
    std::fs::create_dir_all(config.state_dir.join("containers"))?;
    std::fs::create_dir_all(config.state_dir.join("bundles"))?;
    std::fs::create_dir_all(config.state_dir.join(hull_agent::service::CONSOLE_DIR))?;
    match config.rootfs_areas.first() {
        Some(area) => std::fs::create_dir_all(area),
        None => Ok(()),
    }
}

fn pid1() -> ExitCode {
    if let Err(e) = init::mount_pseudo_filesystems() {
        power::fail(&hull_protocol::error_chain(&e));
    }
    init::attach_console();
    let timer = stage::BootTimer::open();
    timer.report(Stage::Pid1Started);

    let options = init::BootOptions::from_cmdline(&init::read_cmdline());
    // Before any thread exists, so every thread inherits the mask.
    let signals =
        init::block_signals().unwrap_or_else(|e| power::fail(&hull_protocol::error_chain(&e)));
    if let Err(e) = hull_agent::service::network::loopback_up() {
        init::console_line(&format!("hull-agent: {e}"));
    }
    let reaper = Arc::new(Reaper::default());
    let config = guest_config();
    // Without a vsock device (a bare boot test) there is nothing to serve; PID 1 goes on.
    let _server = match make_dirs(&config)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            server::serve(
                Arc::new(Service::new(config, reaper.clone())),
                &Listen::Vsock,
            )
        }) {
        Ok(server) => Some(server),
        Err(e) => {
            init::console_line(&format!("hull-agent: not serving: {e}"));
            None
        }
    };
    timer.report(Stage::AgentReady);
    init::console_line(&format!("{READY_MARKER} cpus={}", init::online_cpus()));

    const RUNNING: i32 = -1;
    let run_status = Arc::new(AtomicI32::new(RUNNING));
    let run = options.run.as_deref().and_then(run_program);
    if let Some(pid) = run {
        let status = run_status.clone();
        reaper.on_exit(pid, move |exit| {
            init::console_line(&format!(
                "hull-agent: run exited: {}",
                if exit.signal != 0 {
                    format!("killed by signal {}", exit.signal)
                } else {
                    format!("exit status {}", exit.status)
                }
            ));
            status.store(exit.status, Ordering::SeqCst);
        });
    }
    let run_failed = options.run.is_some() && run.is_none();
    if run_failed || (options.after_ready == AfterReady::Poweroff && run.is_none()) {
        power::poweroff(&timer);
    }
    loop {
        match init::wait_signal(&signals) {
            init::Event::Child => {
                reaper.reap();
                if run_status.load(Ordering::SeqCst) != RUNNING {
                    power::poweroff(&timer);
                }
            }
            init::Event::Shutdown => power::poweroff(&timer),
            init::Event::Other => {}
        }
    }
}

const SERVE_USAGE: &str = "usage: hull-agent serve --socket-dir DIR --state-dir DIR --rootfs-area DIR... [--cgroup-parent PATH]";

fn serve(args: &[String]) -> ExitCode {
    let mut socket_dir = None;
    let mut config = Config {
        state_dir: PathBuf::new(),
        rootfs_areas: Vec::new(),
        cgroup_parent: PathBuf::from("/"),
        in_guest: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else {
            eprintln!("hull-agent: {flag} needs a value\n{SERVE_USAGE}");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--socket-dir" => socket_dir = Some(PathBuf::from(value)),
            "--state-dir" => config.state_dir = PathBuf::from(value),
            "--rootfs-area" => config.rootfs_areas.push(PathBuf::from(value)),
            "--cgroup-parent" => config.cgroup_parent = PathBuf::from("/").join(value),
            _ => {
                eprintln!("hull-agent: unknown flag {flag}\n{SERVE_USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(socket_dir) = socket_dir else {
        eprintln!("{SERVE_USAGE}");
        return ExitCode::from(2);
    };
    if config.state_dir.as_os_str().is_empty() || config.rootfs_areas.is_empty() {
        eprintln!("{SERVE_USAGE}");
        return ExitCode::from(2);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("hull-agent: serve needs root (it creates namespaces, cgroups and mounts)");
        return ExitCode::from(2);
    }
    // SAFETY: prctl with integer arguments only; the result is checked.
    let subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // SAFETY: unshare takes no pointers; the result is checked.
    if subreaper != 0 || unsafe { libc::unshare(libc::CLONE_NEWUTS | libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "hull-agent: becoming a subreaper in UTS and network namespaces of its own: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::from(1);
    }
    // Its network namespace stands for the VM's, loopback up as there.
    if let Err(e) = hull_agent::service::network::loopback_up() {
        eprintln!("hull-agent: {e}");
        return ExitCode::from(1);
    }
    let signals = match init::block_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hull-agent: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = make_dirs(&config).and_then(|()| std::fs::create_dir_all(&socket_dir)) {
        eprintln!("hull-agent: creating the agent's directories: {e}");
        return ExitCode::from(1);
    }
    let reaper = Arc::new(Reaper::default());
    let service = Arc::new(Service::new(config, reaper.clone()));
    let server = match server::serve(service.clone(), &Listen::UnixDir(socket_dir.clone())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hull-agent: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!("{READY_MARKER} socket-dir={}", socket_dir.display());
    loop {
        match init::wait_signal(&signals) {
            init::Event::Child => reaper.reap(),
            init::Event::Shutdown => break,
            init::Event::Other => {}
        }
    }
    // Containers go with the agent. The reaper must keep reaping while the runtime helper
    // removes them, so this runs on a thread while the main thread reaps.
    let cleanup = std::thread::spawn(move || service.destroy_sandbox());
    while !cleanup.is_finished() {
        reaper.reap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if let Ok(Err(e)) = cleanup.join() {
        eprintln!("hull-agent: {e}");
    }
    drop(server);
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some(runtime::HELPER_ARG) => ExitCode::from(runtime::helper_main(&args[2..]) as u8),
        _ if std::process::id() == 1 => pid1(),
        Some("serve") => serve(&args[2..]),
        _ => {
            eprintln!(
                "hull-agent: runs as PID 1 of a hull guest (this is PID {}), or on a host as\n{SERVE_USAGE}",
                std::process::id()
            );
            ExitCode::from(2)
        }
    }
}
