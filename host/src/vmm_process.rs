//! One `hull-vmm` child process: how it is started (boot or restore), and how it ends.
//!
//! The VMM runs as its own process (as Firecracker's and Cloud Hypervisor's do), so a guest
//! that takes its VMM down takes nothing else with it, and `kill -9` of one sandbox is
//! exactly that sandbox. The process is killed and reaped when the handle drops.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hull_vmm_api::client::Handoff;
use hull_vmm_api::config::{
    ConfigFile, ConsoleOutput, DriveConfig, DriveFormat, JailConfig, NetConfig, VsockConfig,
};
use hull_vmm_api::handoff::{HandoffError, HandoffSender};

use crate::launcher::{self, Child, Launch, LaunchError};
use crate::VmSpec;

#[derive(Debug, thiserror::Error)]
pub enum VmmProcessError {
    #[error("cannot find the hull-vmm binary (looked at $HULL_VMM, next to this program and on PATH); build it with scripts/build.sh or set HULL_VMM")]
    NotFound,
    #[error("write the VM configuration {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hull-vmm exited ({status}) before {what}; its log: {log}")]
    Exited {
        status: std::process::ExitStatus,
        what: String,
        log: String,
    },
    #[error("{what} did not appear within {within:?}")]
    Timeout { what: String, within: Duration },
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    #[error("create the jail directory {path}")]
    JailDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the `hull-vmm` binary is: `$HULL_VMM`, next to the running program (or one level
/// up, for test binaries in `target/*/deps`), then `PATH`.
pub fn find_vmm() -> Result<PathBuf, VmmProcessError> {
    if let Some(p) = std::env::var_os("HULL_VMM") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("hull-vmm");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("hull-vmm"))
        .find(|p| p.is_file())
        .ok_or(VmmProcessError::NotFound)
}

/// The host resources of one VMM: its configuration, sockets and logs, all in `run_dir`.
#[derive(Debug, Clone)]
pub struct VmmPaths {
    pub config: PathBuf,
    pub vsock: PathBuf,
    pub api: PathBuf,
    pub console: PathBuf,
    pub log: PathBuf,
}

impl VmmPaths {
    pub fn in_dir(run_dir: &Path) -> Self {
        VmmPaths {
            config: run_dir.join("vm.json"),
            vsock: run_dir.join("vsock.sock"),
            api: run_dir.join("api.sock"),
            console: run_dir.join("console.log"),
            log: run_dir.join("vmm.log"),
        }
    }
}

/// One network device's backend: an open tap queue the VMM inherits, and the MAC its
/// device reports to the guest.
#[derive(Debug, Clone, Copy)]
pub struct Nic<'a> {
    pub tap: BorrowedFd<'a>,
    pub mac: Option<&'a str>,
}

pub struct VmmProcess {
    child: Option<Child>,
    pub paths: VmmPaths,
    pub started: Instant,
    /// How control calls pass host files to this VMM.
    pub handoff: Arc<Handoff>,
}

impl VmmProcess {
    /// Starts `hull-vmm` for `spec`: a cold boot, or a restore of the snapshot in `restore`.
    /// `nics` back the VM's network devices, one each (`spec.nics` of them). Unless
    /// `spec.jail` is off, the VMM is confined (docs/security.md).
    pub fn spawn(
        spec: &VmSpec,
        paths: VmmPaths,
        restore: Option<&Path>,
        nics: &[Nic<'_>],
    ) -> Result<Self, VmmProcessError> {
        debug_assert_eq!(nics.len(), usize::from(spec.nics));
        let bin = find_vmm()?;
        let log = std::fs::File::create(&paths.log).map_err(|source| VmmProcessError::Spawn {
            path: paths.log.clone(),
            source,
        })?;
        let (sender, vmm_end) = HandoffSender::pair()?;
        if spec.jail.is_none() {
            log::warn!("hull-vmm runs unconfined, as root with the host's view (jail.enabled = false): for debugging only");
        }
        let mut config = vm_config(spec, &paths, nics);
        config.handoff_fd = Some(vmm_end.as_raw_fd());
        if let Some(policy) = &spec.jail {
            let root = Path::new(launcher::JAIL_MOUNTPOINT);
            std::fs::create_dir_all(root).map_err(|source| VmmProcessError::JailDir {
                path: root.to_path_buf(),
                source,
            })?;
            config.jail = Some(JailConfig {
                root: root.to_path_buf(),
                uid: policy.uid,
                gid: policy.gid,
                lifeline_fd: Some(launcher::lifeline()?),
                max_open_files: policy.max_open_files,
                max_threads: policy.max_threads,
            });
        }
        serde_json::to_vec_pretty(&config)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&paths.config, json))
            .map_err(|source| VmmProcessError::Config {
                path: paths.config.clone(),
                source,
            })?;
        let mut args: Vec<OsString> = vec!["--config".into(), paths.config.clone().into()];
        if let Some(dir) = restore {
            args.push("--restore".into());
            args.push(dir.into());
        }
        let mut inherit: Vec<BorrowedFd<'_>> = nics.iter().map(|n| n.tap).collect();
        inherit.push(vmm_end.as_fd());
        let started = Instant::now();
        let child = launcher::launch(Launch {
            program: &bin,
            args,
            env: vec![(
                "RUST_LOG".into(),
                std::env::var_os("HULL_VMM_LOG").unwrap_or_else(|| "info".into()),
            )],
            stderr: log.as_fd(),
            inherit,
            namespaces: spec.jail.is_some(),
        })?;
        let owner = spec.jail.as_ref().map(|p| (p.uid, p.gid));
        Ok(VmmProcess {
            child: Some(child),
            paths,
            started,
            handoff: Arc::new(Handoff { sender, owner }),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The VMM's log so far (for error messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.paths.log).unwrap_or_default()
    }

    /// An error if the VMM has exited (saying what it was waiting for).
    pub fn check_alive(&mut self, what: &str) -> Result<(), VmmProcessError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(Some(status)) => Err(VmmProcessError::Exited {
                status,
                what: what.to_string(),
                log: last_lines(&self.log_text(), 5),
            }),
            _ => Ok(()),
        }
    }

    /// The exit status once the VMM has exited (reaped here), `None` while it runs.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits for `path` to exist (a socket the VMM creates), the VMM staying alive.
    pub fn wait_for_path(&mut self, path: &Path, within: Duration) -> Result<(), VmmProcessError> {
        let deadline = Instant::now() + within;
        while !path.exists() {
            self.check_alive(&format!("{} appeared", path.display()))?;
            if Instant::now() >= deadline {
                return Err(VmmProcessError::Timeout {
                    what: path.display().to_string(),
                    within,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Waits for the VMM to exit on its own (after a control-API Shutdown), killing it
    /// after `within`.
    pub fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The VM `hull-vmm` is asked for: `spec`'s shape, the guest image as a read-only erofs
/// root, and the sockets and console in `paths`.
pub fn vm_config(spec: &VmSpec, paths: &VmmPaths, nics: &[Nic<'_>]) -> ConfigFile {
    ConfigFile {
        kernel: Some(spec.kernel.clone()),
        vcpus: Some(u32::from(spec.vcpus)),
        memory_mib: Some(spec.memory_mib),
        console: Some(if spec.console_log {
            ConsoleOutput::File(paths.console.clone())
        } else {
            ConsoleOutput::None
        }),
        drive: vec![DriveConfig {
            id: None,
            path: spec.image.clone(),
            read_only: true,
            root: true,
            fstype: Some("erofs".into()),
            serial: None,
            format: DriveFormat::Raw,
        }],
        vsock: Some(VsockConfig {
            guest_cid: hull_vmm_api::config::default_guest_cid(),
            uds_path: paths.vsock.clone(),
        }),
        api_socket: Some(paths.api.clone()),
        drive_slots: Some(u32::from(spec.drive_slots)),
        shared_fs: spec.shared_fs.then(|| crate::SHARED_FS_TAG.to_string()),
        net: nics
            .iter()
            .enumerate()
            .map(|(i, n)| NetConfig {
                id: Some(format!("net{i}")),
                tap: None,
                tap_fd: Some(n.tap.as_raw_fd()),
                mac: n.mac.map(str::to_string),
            })
            .collect(),
        ..Default::default()
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the host writes is what the VMM reads: the JSON round-trips through the one
    /// type, with the sandbox's shape and sockets.
    #[test]
    fn the_vm_configuration_round_trips_as_json() {
        let spec = VmSpec {
            console_log: true,
            ..VmSpec::default()
        };
        let paths = VmmPaths::in_dir(Path::new("/run/hull/x"));
        let config = vm_config(&spec, &paths, &[]);
        let json = serde_json::to_string(&config).unwrap();
        let back: ConfigFile = serde_json::from_str(&json).unwrap();
        assert_eq!(back, config);
        assert_eq!(back.memory_mib, Some(spec.memory_mib));
        assert_eq!(back.drive_slots, Some(u32::from(spec.drive_slots)));
        assert_eq!(
            back.console,
            Some(ConsoleOutput::File(paths.console.clone()))
        );
        assert_eq!(back.shared_fs.as_deref(), Some(crate::SHARED_FS_TAG));
    }
}
