//! A container's record: `<containers>/<name>/state.json`, written whole and renamed into
//! place, so a reader never sees half of one. The directory's creation claims the name:
//! two `hull run --name X` cannot both get it. Whether a "running" container still is, is
//! decided by its supervisor being alive, so a crashed one shows as exited, with why.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::paths;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the name {0:?} is in use by another container: choose another with --name, or remove it (hull rm {0})")]
    NameInUse(String),
    #[error("no container named {0:?} (hull ps -a lists them)")]
    NotFound(String),
    #[error(transparent)]
    Io(#[from] hull_host::PathError),
    #[error("{path} is not a container record ({why}); remove it with hull rm -f")]
    Corrupt { path: PathBuf, why: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Status {
    /// Being set up (the VM starting, the container being created).
    Created,
    Running,
    Exited {
        code: i32,
    },
    /// The run failed or its sandbox was lost.
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    pub status: Status,
    /// The process that owns the sandbox: `hull run` itself, or the supervisor of a
    /// detached one.
    pub owner_pid: u32,
    pub detached: bool,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn dir(name: &str) -> PathBuf {
    paths::containers().join(name)
}

fn file(name: &str) -> PathBuf {
    dir(name).join("state.json")
}

/// The detached container's output.
pub fn log_file(name: &str) -> PathBuf {
    dir(name).join("log")
}

/// Claims `record.name` and writes its first record.
pub fn claim(record: &Record) -> Result<(), StateError> {
    let d = dir(&record.name);
    std::fs::create_dir_all(paths::containers()).map_err(|source| {
        StateError::Io(hull_host::PathError {
            op: "create",
            path: paths::containers(),
            source,
        })
    })?;
    match std::fs::create_dir(&d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(StateError::NameInUse(record.name.clone()))
        }
        Err(source) => {
            return Err(StateError::Io(hull_host::PathError {
                op: "create",
                path: d,
                source,
            }))
        }
    }
    write(record)
}

pub fn write(record: &Record) -> Result<(), StateError> {
    let path = file(&record.name);
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| {
            StateError::Io(hull_host::PathError {
                op: "write",
                path,
                source,
            })
        })
}

/// The record of `name`, with a "running" one whose owner is gone shown as failed.
pub fn read(name: &str) -> Result<Record, StateError> {
    let path = file(name);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StateError::NotFound(name.into()))
        }
        Err(source) => {
            return Err(StateError::Io(hull_host::PathError {
                op: "read",
                path,
                source,
            }))
        }
    };
    let mut r: Record = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
        path: path.clone(),
        why: e.to_string(),
    })?;
    if matches!(r.status, Status::Running | Status::Created) && !alive(r.owner_pid) {
        r.status = Status::Failed {
            reason: "its hull process ended without recording an exit (killed?)".into(),
        };
    }
    Ok(r)
}

/// Every record, by name.
pub fn list() -> Vec<Result<Record, StateError>> {
    let mut names: Vec<String> = std::fs::read_dir(paths::containers())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.iter().map(|n| read(n)).collect()
}

pub fn remove(name: &str) -> Result<(), StateError> {
    let d = dir(name);
    std::fs::remove_dir_all(&d).map_err(|source| {
        StateError::Io(hull_host::PathError {
            op: "remove",
            path: d,
            source,
        })
    })
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
        .unwrap_or(false)
}

impl Record {
    pub fn is_running(&self) -> bool {
        matches!(self.status, Status::Running | Status::Created)
    }

    pub fn status_text(&self) -> String {
        match &self.status {
            Status::Created => "created".into(),
            Status::Running => "running".into(),
            Status::Exited { code } => format!("exited ({code})"),
            Status::Failed { reason } => format!("failed: {reason}"),
        }
    }
}

/// The run directory of `name`'s sandbox.
pub fn run_dir(name: &str) -> PathBuf {
    paths::run().join(name)
}
