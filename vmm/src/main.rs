//! `hull-vmm`: boot one microVM from a config file and/or flags, show its console, exit
//! with the guest's outcome.
//!
//! Exit status: 0 guest powered off, reset, or VMM stopped by SIGTERM/SIGINT; 2 invalid
//! configuration (no VM was started); 3 guest kernel panic; 4 triple fault; 5 unrecoverable
//! emulation failure; 159 a thread made a system call its seccomp filter forbids (stderr
//! names the thread and the call; `hull_vmm::seccomp`); 1 anything else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use hull_vmm::api::{ApiListener, ApiServer, HostFiles};
use hull_vmm::config::{
    default_guest_cid, ConfigFile, ConsoleOutput, DriveConfig, DriveFormat, NetConfig, QuirksMode,
    VmConfig, VsockConfig,
};
use hull_vmm::error_chain;
use hull_vmm_api::handoff::HandoffReceiver;

#[derive(Debug, Parser)]
#[command(name = "hull-vmm", version, about = "Run one hull microVM")]
struct Args {
    /// TOML (or .json) VM description; flags override its values.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Guest kernel: uncompressed vmlinux (or bzImage).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Root disk image (replaces any drives from the config file's root).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Filesystem type of --root.
    #[arg(long, default_value = "erofs")]
    root_fstype: String,
    /// Attach --root read-write.
    #[arg(long)]
    root_rw: bool,
    /// Extra disk, PATH[:rw] (read-only unless :rw); repeatable.
    #[arg(long = "drive")]
    drives: Vec<String>,
    /// Appended to the guest kernel command line.
    #[arg(long)]
    cmdline_extra: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    vcpus: Option<u32>,
    /// Guest memory in MiB.
    #[arg(long)]
    memory_mib: Option<u32>,
    /// Console destination: stdout, none, or a file path.
    #[arg(long)]
    console: Option<String>,
    /// Most bytes a console file may grow to (default 4 MiB); later output is dropped.
    #[arg(long)]
    console_max_bytes: Option<u64>,
    /// Emulated-KVM quirks: auto, on, off.
    #[arg(long)]
    quirks: Option<QuirksMode>,
    /// Host unix socket of the hybrid vsock device (`CONNECT <port>` protocol).
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// Guest context ID of the vsock device (default 3).
    #[arg(long, requires = "vsock_uds")]
    vsock_cid: Option<u64>,
    /// Network interface: tap=NAME[,mac=MAC] or fd=N[,mac=MAC] (an open tap descriptor
    /// inherited from the caller); repeatable.
    #[arg(long = "net")]
    nets: Vec<String>,
    /// Do not attach the virtio-rng entropy device.
    #[arg(long)]
    no_entropy: bool,
    /// Serve the control API (ttrpc: pause, resume, snapshot, shutdown, metrics) on this
    /// unix socket.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Empty drive slots whose disks the control API attaches and detaches while the VM
    /// runs (AttachDrive/DetachDrive).
    #[arg(long)]
    drive_slots: Option<u32>,
    /// Attach a virtio-fs device with this tag, through which the control API shares host
    /// directories while the VM runs (AddShare/RemoveShare).
    #[arg(long)]
    shared_fs: Option<String>,
    /// Restore the snapshot in this directory instead of booting. The configuration must
    /// describe the same VM shape (vCPUs, memory, the same devices by id, in any order);
    /// host resources (vsock socket, taps, disks, console, control socket) may differ.
    #[arg(long)]
    restore: Option<PathBuf>,
}

fn merged_config(args: Args) -> Result<ConfigFile, hull_vmm::ConfigError> {
    let mut file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    file.kernel = args.kernel.or(file.kernel);
    file.initrd = args.initrd.or(file.initrd);
    file.cmdline_extra = args.cmdline_extra.or(file.cmdline_extra);
    file.vcpus = args.vcpus.or(file.vcpus);
    file.memory_mib = args.memory_mib.or(file.memory_mib);
    file.console = args
        .console
        .as_deref()
        .map(ConsoleOutput::parse)
        .or(file.console);
    file.console_max_bytes = args.console_max_bytes.or(file.console_max_bytes);
    file.quirks = args.quirks.or(file.quirks);
    if let Some(uds_path) = args.vsock_uds {
        let guest_cid = args
            .vsock_cid
            .or(file.vsock.as_ref().map(|v| v.guest_cid))
            .unwrap_or_else(default_guest_cid);
        file.vsock = Some(VsockConfig {
            guest_cid,
            uds_path,
        });
    }
    for spec in args.nets {
        file.net.push(parse_net_flag(&spec)?);
    }
    file.api_socket = args.api_sock.or(file.api_socket);
    file.drive_slots = args.drive_slots.or(file.drive_slots);
    file.shared_fs = args.shared_fs.or(file.shared_fs);
    if args.no_entropy {
        file.entropy = Some(false);
    }
    if let Some(root) = args.root {
        file.drive.retain(|d| !d.root);
        file.drive.insert(
            0,
            DriveConfig {
                id: None,
                path: root,
                read_only: !args.root_rw,
                root: true,
                fstype: Some(args.root_fstype),
                serial: None,
                format: DriveFormat::Raw,
            },
        );
    }
    for spec in args.drives {
        let (path, read_only) = match spec.strip_suffix(":rw") {
            Some(p) => (p.to_string(), false),
            None => (spec.strip_suffix(":ro").unwrap_or(&spec).to_string(), true),
        };
        file.drive.push(DriveConfig {
            id: None,
            path: path.into(),
            read_only,
            root: false,
            fstype: None,
            serial: None,
            format: DriveFormat::Raw,
        });
    }
    Ok(file)
}

/// Raises the soft descriptor limit to the hard one: each vsock connection holds a host
/// socket, and 1024 of them plus the VMM's own descriptors exceed the usual soft 1024.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the
        // hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            log::warn!(
                "cannot raise the descriptor limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// `tap=NAME[,mac=MAC]` or `fd=N[,mac=MAC]`.
fn parse_net_flag(spec: &str) -> Result<NetConfig, hull_vmm::ConfigError> {
    let bad = || hull_vmm::ConfigError::NetFlag(spec.to_string());
    let mut net = NetConfig {
        id: None,
        tap: None,
        tap_fd: None,
        mac: None,
    };
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("tap", name)) => net.tap = Some(name.to_string()),
            Some(("fd", n)) => net.tap_fd = Some(n.parse().map_err(|_| bad())?),
            Some(("mac", mac)) => net.mac = Some(mac.to_string()),
            _ => return Err(bad()),
        }
    }
    Ok(net)
}

/// The most the VMM writes to its log (stderr, a file in the sandbox's run directory on
/// tmpfs). Lines a guest can cause are rate limited (`guest_log`); this is the backstop.
const LOG_MAX_BYTES: u64 = 8 << 20;

fn main() -> ExitCode {
    let start = Instant::now();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .target(env_logger::Target::Pipe(Box::new(
            hull_vmm::devices::serial::CappedConsole::with_note(
                std::io::stderr(),
                LOG_MAX_BYTES,
                "[hull-vmm: the log reached its cap of 8 MiB; later lines are dropped]\n",
            ),
        )))
        .init();
    let args = Args::parse();

    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let restore = args.restore.clone();
    let config = match merged_config(args).and_then(|f| VmConfig::validate(f, host_cpus)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hull-vmm: invalid configuration: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    };

    raise_fd_limit();
    let handoff = match config.handoff_fd {
        // SAFETY: the launcher passed this descriptor for this use only (`handoff_fd`);
        // nothing else in this process refers to it.
        Some(fd) => match unsafe { HandoffReceiver::from_raw_fd(fd) } {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("hull-vmm: invalid configuration: handoff_fd = {fd}: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    // Bound before the jail hides the host's directories.
    let listener = match config
        .api_socket
        .as_deref()
        .map(ApiListener::bind)
        .transpose()
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "hull-vmm: cannot serve the control API: {}",
                error_chain(&e)
            );
            return ExitCode::from(1);
        }
    };
    let built = match &restore {
        Some(dir) => hull_vmm::restore_microvm(&config, dir, start),
        None => hull_vmm::build_microvm(&config, start),
    };
    let vmm = match built {
        Ok(v) => v,
        Err(e) => {
            let what = if restore.is_some() {
                "restore"
            } else {
                "start"
            };
            eprintln!("hull-vmm: cannot {what} the VM: {}", error_chain(&e));
            return ExitCode::from(if e.is_config_error() { 2 } else { 1 });
        }
    };
    let files = HostFiles {
        handoff,
        jailed: config.jail.is_some(),
    };
    let _api = match listener.map(|l| ApiServer::start(l, vmm.control(), files)) {
        Some(Ok(server)) => Some(server),
        Some(Err(e)) => {
            eprintln!(
                "hull-vmm: cannot serve the control API: {}",
                error_chain(&e)
            );
            return ExitCode::from(1);
        }
        None => None,
    };
    // Every other thread has been created, each under its own filter: the event loop
    // filters itself last.
    if let Err(e) = hull_vmm::seccomp::install(hull_vmm::seccomp::ThreadKind::Vmm) {
        eprintln!("hull-vmm: {}", error_chain(&e));
        return ExitCode::from(1);
    }
    let outcome = vmm.run();
    let code = outcome.reason.exit_code();
    if code == 0 {
        log::info!("{}", outcome.reason);
    } else {
        eprintln!("hull-vmm: {}", outcome.reason);
    }
    ExitCode::from(code as u8)
}
