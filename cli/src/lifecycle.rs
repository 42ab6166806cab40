//! The commands that act on containers by name: `ps`, `logs`, `stop`, `kill`, `rm`,
//! `inspect` and `exec`. A running container's agent is reached through its sandbox's
//! hybrid vsock socket, as the supervisor reaches it; signals and processes go through the
//! agent, never through host PIDs.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use hull_host::agent::{Agent, ProcessId};
use hull_host::guest::Guest;
use hull_host::pod::DEFAULT_CALL_TIMEOUT;
use hull_host::stdio::Stdio;

use crate::state::{self, Record, StateError};
use crate::{oci, terminal};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0:?} is not running ({1})")]
    NotRunning(String, String),
    #[error("{0:?} is running: stop it first (hull stop {0}) or remove it with -f")]
    Running(String),
    #[error("signal {0:?}: give a name (TERM, KILL, INT, HUP, USR1, ...) or a number 1-64")]
    Signal(String),
    #[error("{0:?} ran in the foreground: its output went to the terminal, not a log")]
    NoLog(String),
    #[error("reaching {0:?}'s sandbox")]
    Connect(String, #[source] hull_host::guest::ConnectError),
    #[error(transparent)]
    Agent(#[from] hull_host::agent::AgentError),
    #[error(transparent)]
    Process(#[from] hull_host::guest::ProcessError),
    #[error(transparent)]
    Spec(#[from] oci::SpecError),
    #[error("{0}")]
    Io(String),
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("STOP", libc::SIGSTOP),
    ("CONT", libc::SIGCONT),
];

pub fn parse_signal(s: &str) -> Result<i32, LifecycleError> {
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = SIGNALS.iter().find(|(name, _)| *name == bare) {
        return Ok(n);
    }
    match s.parse::<i32>() {
        Ok(n) if (1..=64).contains(&n) => Ok(n),
        _ => Err(LifecycleError::Signal(s.into())),
    }
}

fn running(name: &str) -> Result<Record, LifecycleError> {
    let r = state::read(name)?;
    if !r.is_running() {
        return Err(LifecycleError::NotRunning(name.into(), r.status_text()));
    }
    Ok(r)
}

/// The guest of `name`'s sandbox, reached through its run directory.
fn guest(name: &str) -> Result<Guest, LifecycleError> {
    Guest::connect(&state::run_dir(name), DEFAULT_CALL_TIMEOUT)
        .map_err(|e| LifecycleError::Connect(name.into(), e))
}

/// `hull ps [-a]`.
pub fn ps(all: bool) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "IMAGE".into(),
        "COMMAND".into(),
        "CREATED".into(),
        "STATUS".into(),
    ]];
    let now = state::now();
    for r in state::list().into_iter().flatten() {
        if !all && !r.is_running() {
            continue;
        }
        let age = now.saturating_sub(r.created);
        let created = match age {
            0..=119 => format!("{age} s ago"),
            120..=7199 => format!("{} min ago", age / 60),
            _ => format!("{} h ago", age / 3600),
        };
        rows.push([
            r.name.clone(),
            r.image.clone(),
            r.command.join(" "),
            created,
            r.status_text(),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `hull logs [-f] NAME`: the detached container's output; with `follow`, until it ends.
pub fn logs(name: &str, follow: bool, out: &mut impl Write) -> Result<(), LifecycleError> {
    let r = state::read(name)?;
    if !r.detached {
        return Err(LifecycleError::NoLog(name.into()));
    }
    let path = state::log_file(name);
    let mut f = std::fs::File::open(&path)
        .map_err(|e| LifecycleError::Io(format!("{}: {e}", path.display())))?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| LifecycleError::Io(format!("{}: {e}", path.display())))?;
        if n > 0 {
            let _ = out.write_all(&buf[..n]);
            let _ = out.flush();
            continue;
        }
        if !follow || !state::read(name).map(|r| r.is_running()).unwrap_or(false) {
            // One more read: what was written between the last read and the check.
            let pos = f.stream_position().unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(pos));
            let mut rest = Vec::new();
            let _ = f.read_to_end(&mut rest);
            let _ = out.write_all(&rest);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `hull kill [-s SIG] NAME`.
pub fn kill(name: &str, signal: i32) -> Result<(), LifecycleError> {
    running(name)?;
    guest(name)?
        .agent
        .signal(ProcessId::init(name), signal as u32, false)?;
    Ok(())
}

fn wait_stopped(name: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !state::read(name).map(|r| r.is_running()).unwrap_or(false) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// `hull stop [-t SECS] NAME`: SIGTERM, then SIGKILL after the grace period.
pub fn stop(name: &str, grace: Duration) -> Result<(), LifecycleError> {
    kill(name, libc::SIGTERM)?;
    if wait_stopped(name, grace) {
        return Ok(());
    }
    let _ = kill(name, libc::SIGKILL);
    if wait_stopped(name, Duration::from_secs(30)) {
        Ok(())
    } else {
        Err(LifecycleError::Io(format!(
            "{name:?} did not stop within 30 s of SIGKILL; hull rm -f {name} removes it"
        )))
    }
}

/// `hull rm [-f] NAME`.
pub fn rm(name: &str, force: bool) -> Result<(), LifecycleError> {
    let r = state::read(name)?;
    if r.is_running() {
        if !force {
            return Err(LifecycleError::Running(name.into()));
        }
        let _ = kill(name, libc::SIGKILL);
        if !wait_stopped(name, Duration::from_secs(30)) {
            // The owner does not answer: it and its VM go by force.
            // SAFETY: kill(2) of the recorded owner; it is checked alive just above.
            unsafe { libc::kill(r.owner_pid as i32, libc::SIGKILL) };
        }
    }
    discard(name)
}

/// Removes a stopped container: what its sandbox left (a VMM whose owner was killed, its
/// run directory) and its record.
pub fn discard(name: &str) -> Result<(), LifecycleError> {
    let run_dir = state::run_dir(name);
    if run_dir.exists() {
        hull_host::pod::kill_orphaned(&run_dir);
    }
    state::remove(name)?;
    Ok(())
}

/// `hull inspect NAME`: the record as JSON, with where its log and sandbox are.
pub fn inspect(name: &str) -> Result<String, LifecycleError> {
    let r = state::read(name)?;
    let mut v = serde_json::to_value(&r).unwrap_or_default();
    v["running"] = serde_json::Value::Bool(r.is_running());
    if r.detached {
        v["log"] = state::log_file(name).to_string_lossy().into_owned().into();
    }
    v["run_dir"] = state::run_dir(name).to_string_lossy().into_owned().into();
    Ok(serde_json::to_string_pretty(&v).unwrap_or_default())
}

/// `hull exec [-i] [-t] NAME CMD...`: returns the process's exit status.
pub fn exec(name: &str, process: &oci::Process, interactive: bool) -> Result<i32, LifecycleError> {
    running(name)?;
    let guest = guest(name)?;
    let spec = oci::build(name, process, &[], false)?;
    let exec_id = format!("exec-{}", std::process::id());
    let p = ProcessId::exec(name, &exec_id);
    let stdio = Stdio::inherited(interactive, process.terminal);
    let _raw = (process.terminal && interactive)
        .then(|| terminal::RawMode::enter(0))
        .flatten();
    let json = serde_json::to_vec(spec.process()).unwrap_or_default();
    let (_, mut io) = guest.exec(p, json, &stdio)?;
    if process.terminal {
        resize(&guest.agent, p);
    }
    forward_signals(
        guest.agent.clone(),
        name.to_string(),
        Some(exec_id.clone()),
        process.terminal,
    );
    let status = guest.agent.wait(p)?;
    io.drain();
    io.close();
    if let Err(e) = guest.agent.remove_process(p) {
        log::debug!("{}", hull_vmm_api::error_chain(&e));
    }
    Ok(status)
}

/// Passes this terminal's size to process `p`'s.
pub fn resize(agent: &Agent, p: ProcessId<'_>) {
    let Some((rows, columns)) = terminal::size(1).or_else(|| terminal::size(0)) else {
        return;
    };
    if let Err(e) = agent.resize_pty(p, u32::from(rows), u32::from(columns)) {
        log::debug!("resizing {p}'s terminal: {e}");
    }
}

/// SIGINT, SIGTERM and SIGHUP to `hull run` or `hull exec` go to the process (blocked in
/// every thread and taken here; the process decides what they mean); SIGWINCH resizes its
/// terminal. `exec` is `None` for the container's init.
pub fn forward_signals(agent: Agent, name: String, exec: Option<String>, tty: bool) {
    let set = crate::signals::forwarded();
    std::thread::spawn(move || loop {
        let Some(sig) = crate::signals::wait(&set) else {
            return;
        };
        let p = ProcessId {
            container: &name,
            exec: exec.as_deref(),
        };
        if sig == libc::SIGWINCH {
            if tty {
                resize(&agent, p);
            }
            continue;
        }
        if let Err(e) = agent.signal(p, sig as u32, false) {
            log::debug!("forwarding signal {sig} to {p}: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        for bad in ["", "NOPE", "0", "65", "-1"] {
            assert!(parse_signal(bad).is_err(), "{bad:?}");
        }
    }
}
