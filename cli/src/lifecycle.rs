//! The commands that act on containers by name: `ps`, `logs`, `stop`, `kill`, `rm`,
//! `inspect` and `exec`. A running container's agent is reached through its sandbox's
//! hybrid vsock socket, as the supervisor reaches it; signals and processes go through the
//! agent, never through host PIDs.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use hull_host::pod::ctx;
use hull_host::stdio::{ProcessIo, StdioPaths};
use hull_protocol::rpc::agent::{
    ExecProcessRequest, ProcessRequest, ResizePtyRequest, SignalProcessRequest,
};
use hull_protocol::rpc::agent_ttrpc::AgentClient;
use hull_protocol::rpc::Endpoint;

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
    #[error("reaching {name:?}'s sandbox: {why}")]
    Agent { name: String, why: String },
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

fn endpoint(name: &str) -> Endpoint {
    Endpoint::HybridVsock(state::run_dir(name).join("vsock.sock"))
}

fn agent(name: &str) -> Result<AgentClient, LifecycleError> {
    hull_protocol::rpc::connect(&endpoint(name), Duration::from_secs(10))
        .map(|c| c.client)
        .map_err(|e| LifecycleError::Agent {
            name: name.into(),
            why: hull_vmm_api::error_chain(&e),
        })
}

fn agent_err(name: &str) -> impl Fn(hull_protocol::rpc::ttrpc::Error) -> LifecycleError + '_ {
    move |e| LifecycleError::Agent {
        name: name.into(),
        why: e.to_string(),
    }
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
    let mut req = SignalProcessRequest::new();
    req.container_id = name.into();
    req.signal = signal as u32;
    agent(name)?
        .signal_process(ctx(), &req)
        .map_err(agent_err(name))?;
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
    let run_dir = state::run_dir(name);
    if run_dir.exists() {
        hull_host::pod::kill_orphaned(&run_dir);
        let _ = std::fs::remove_dir_all(&run_dir);
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
    let agent = agent(name)?;
    let spec = oci::build(name, process, &[])?;
    let exec_id = format!("exec-{}", std::process::id());
    let stdio = StdioPaths {
        stdin: if interactive {
            "fd://0".into()
        } else {
            String::new()
        },
        stdout: "fd://1".into(),
        stderr: if process.terminal {
            String::new()
        } else {
            "fd://2".into()
        },
        terminal: process.terminal,
    };
    let mut req = ExecProcessRequest::new();
    req.container_id = name.into();
    req.exec_id = exec_id.clone();
    req.oci_process_json = serde_json::to_vec(&spec["process"]).unwrap_or_default();
    req.stdio = Some(stdio.agent_stdio()).into();
    let _raw = (process.terminal && interactive)
        .then(|| terminal::RawMode::enter(0))
        .flatten();
    agent.exec_process(ctx(), &req).map_err(agent_err(name))?;
    if process.terminal {
        resize(&agent, name, &exec_id);
    }
    forward_signals(
        agent.clone(),
        name.to_string(),
        exec_id.clone(),
        process.terminal,
    );
    let mut io = ProcessIo::attach(&endpoint(name), name, &exec_id, &stdio).map_err(|e| {
        LifecycleError::Agent {
            name: name.into(),
            why: hull_vmm_api::error_chain(&e),
        }
    })?;
    let mut wait = ProcessRequest::new();
    wait.container_id = name.into();
    wait.exec_id = exec_id.clone();
    // An exec may run for as long as it likes: no deadline on the wait itself.
    let done = agent
        .wait_process(
            hull_protocol::rpc::ttrpc::context::Context::default(),
            &wait,
        )
        .map_err(agent_err(name))?;
    io.drain(Duration::from_secs(5));
    io.close();
    let _ = agent.remove_process(ctx(), &wait);
    Ok(done.exit_status)
}

/// Passes this terminal's size to the process's (`exec_id` empty: the container's main
/// process).
pub fn resize(agent: &AgentClient, name: &str, exec_id: &str) {
    let Some((rows, columns)) = terminal::size(1).or_else(|| terminal::size(0)) else {
        return;
    };
    let mut req = ResizePtyRequest::new();
    req.container_id = name.into();
    req.exec_id = exec_id.into();
    req.rows = u32::from(rows);
    req.columns = u32::from(columns);
    if let Err(e) = agent.resize_pty(ctx(), &req) {
        log::debug!("resizing the exec's terminal: {e}");
    }
}

/// SIGINT, SIGTERM and SIGHUP to `hull run` or `hull exec` go to the process (blocked in
/// every thread and taken here; the process decides what they mean); SIGWINCH resizes its
/// terminal.
pub fn forward_signals(agent: AgentClient, name: String, exec_id: String, tty: bool) {
    let set = crate::signals::forwarded();
    std::thread::spawn(move || loop {
        let Some(sig) = crate::signals::wait(&set) else {
            return;
        };
        if sig == libc::SIGWINCH {
            if tty {
                resize(&agent, &name, &exec_id);
            }
            continue;
        }
        let mut req = SignalProcessRequest::new();
        req.container_id = name.clone();
        req.exec_id = exec_id.clone();
        req.signal = sig as u32;
        if let Err(e) = agent.signal_process(ctx(), &req) {
            log::debug!("forwarding signal {sig}: {e}");
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
