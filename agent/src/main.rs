//! hull-agent: PID 1 of the hull guest.
//!
//! At this stage the agent does PID 1's duties: it mounts the pseudo-filesystems the guest
//! needs, makes /dev/console its stdio, reports its boot stages to the VMM's boot-timer
//! port, reaps every orphan that is re-parented to it, and powers the VM off on request
//! (SIGTERM, SIGINT, SIGPWR, or `hull.ready=poweroff` on the kernel command line). The RPC
//! service that creates containers comes with the agent issue.
//!
//! Threads: one. Signals are blocked and taken synchronously with `sigwaitinfo`, so there
//! is no handler that could interrupt the reaper.
//!
//! Trust: the agent trusts the kernel command line (set by the VMM) and nothing else yet.
//! It must never panic: a panic in PID 1 is a guest kernel panic.

mod init;
mod power;
mod stage;

use std::process::ExitCode;

use hull_protocol::boot::{Stage, READY_MARKER};

use crate::init::AfterReady;

/// Clears the signal mask (async-signal-safe: only sigemptyset and sigprocmask).
fn unblock_all_signals() -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    Ok(())
}

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

fn main() -> ExitCode {
    if std::process::id() != 1 {
        eprintln!(
            "hull-agent: must run as PID 1 of a hull guest (this is PID {})",
            std::process::id()
        );
        return ExitCode::from(2);
    }
    if let Err(e) = init::mount_pseudo_filesystems() {
        power::fail(&e.to_string());
    }
    init::attach_console();
    let timer = stage::BootTimer::open();
    timer.report(Stage::Pid1Started);

    let options = init::BootOptions::from_cmdline(&init::read_cmdline());
    let signals = init::block_signals().unwrap_or_else(|e| power::fail(&e.to_string()));
    timer.report(Stage::AgentReady);
    init::console_line(&format!("{READY_MARKER} cpus={}", init::online_cpus()));

    let run = options.run.as_deref().and_then(run_program);
    let run_failed = options.run.is_some() && run.is_none();
    if run_failed || (options.after_ready == AfterReady::Poweroff && run.is_none()) {
        power::poweroff(&timer);
    }
    loop {
        match init::wait_signal(&signals) {
            init::Event::Child => {
                if let Some(status) = init::reap_all_watching(run) {
                    init::console_line(&format!(
                        "hull-agent: run exited: {}",
                        init::describe_status(status)
                    ));
                    power::poweroff(&timer);
                }
            }
            init::Event::Shutdown => power::poweroff(&timer),
            init::Event::Other => {}
        }
    }
}
