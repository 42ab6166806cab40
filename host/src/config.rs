//! The host configuration, `/etc/hull/config.toml`: what sandbox VMs are made of and
//! where hull keeps its state. Every key is optional (the defaults are what
//! `scripts/build.sh` builds); unknown keys are refused, so a typo is an error and not a
//! silently ignored setting.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use hull_vmm_api::config::MIN_MEMORY_MIB;

use crate::launcher::JailPolicy;
use crate::VmSpec;

pub const DEFAULT_PATH: &str = "/etc/hull/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field} = {value}: {why}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

/// What a sandbox costs on top of its containers' limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Overhead {
    /// Guest memory for the kernel and the agent, MiB.
    pub memory_mib: u32,
    pub vcpus: u8,
}

impl Default for Overhead {
    fn default() -> Self {
        Overhead {
            memory_mib: MIN_MEMORY_MIB,
            vcpus: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    pub kernel: PathBuf,
    pub image: PathBuf,
    /// A sandbox's size when its containers set no limits.
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Added to the containers' limits when they set some.
    pub overhead: Overhead,
    pub drive_slots: u8,
    /// Give each sandbox VM a virtio-fs device for read-write volumes; false leaves it out
    /// (less in the VMM facing the guest) and refuses read-write volumes by name.
    pub shared_fs: bool,
    /// Restore sandboxes from snapshot templates (a cold boot per sandbox otherwise).
    pub templates: bool,
    pub template_dir: PathBuf,
    /// Sockets and logs of running sandboxes (short paths: unix sockets live here).
    pub run_dir: PathBuf,
    /// Container root filesystem images.
    pub state_dir: PathBuf,
    /// Keep each sandbox's guest console and VMM log when its VM stops, in
    /// `<state_dir>/logs/<namespace>/<pod>/` (they go with the run directory otherwise).
    pub debug_console: bool,
    /// error, warn, info, debug or trace.
    pub log_level: String,
    /// How long one call to a sandbox's agent may take before it fails with an error that
    /// says the guest did not answer.
    pub agent_timeout_secs: u64,
    /// What one image import may unpack (`hull image import`).
    pub images: hull_image::Limits,
    /// How each VMM is confined.
    pub jail: Jail,
}

/// `[jail]`: every VMM runs in a jail of its own (docs/security.md, "the VMM's jail").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Jail {
    /// false runs each VMM as root with the host's view of everything: for debugging
    /// only, and logged at every start.
    pub enabled: bool,
    /// The ids every VMM runs as; they own what guests write into shared directories.
    pub uid: u32,
    pub gid: u32,
    /// The most descriptors one VMM holds (vsock connections, files the guest has open
    /// in shared directories).
    pub max_open_files: u64,
    /// The most threads all VMMs together run (RLIMIT_NPROC counts per uid).
    pub max_threads: u64,
}

impl Default for Jail {
    fn default() -> Self {
        let p = JailPolicy::default();
        Jail {
            enabled: true,
            uid: p.uid,
            gid: p.gid,
            max_open_files: p.max_open_files,
            max_threads: p.max_threads,
        }
    }
}

impl Jail {
    /// The launcher's policy, `None` when the jail is off.
    pub fn policy(&self) -> Option<JailPolicy> {
        self.enabled.then_some(JailPolicy {
            uid: self.uid,
            gid: self.gid,
            max_open_files: self.max_open_files,
            max_threads: self.max_threads,
        })
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        let vm = VmSpec::default();
        HostConfig {
            kernel: vm.kernel,
            image: vm.image,
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            overhead: Overhead::default(),
            drive_slots: vm.drive_slots,
            shared_fs: vm.shared_fs,
            templates: true,
            template_dir: PathBuf::from(crate::template::DEFAULT_ROOT),
            run_dir: PathBuf::from("/run/hull/shim"),
            state_dir: PathBuf::from("/var/lib/hull/shim"),
            debug_console: false,
            log_level: "info".into(),
            agent_timeout_secs: crate::pod::DEFAULT_CALL_TIMEOUT.as_secs(),
            images: hull_image::Limits::default(),
            jail: Jail::default(),
        }
    }
}

const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

impl HostConfig {
    /// The template cache sandboxes start from, unless `templates = false`.
    pub fn template_cache(&self) -> Option<crate::template::TemplateCache> {
        self.templates
            .then(|| crate::template::TemplateCache::new(&self.template_dir))
    }

    /// How long one agent or VMM call may take (`agent_timeout_secs`).
    pub fn call_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.agent_timeout_secs)
    }

    /// Where the host configuration is: `$HULL_CONFIG`, else [`DEFAULT_PATH`]. Both front
    /// doors read it from here (the shim passes `HULL_CONFIG` on to the shims it spawns).
    pub fn path() -> PathBuf {
        std::env::var_os("HULL_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    /// Reads `path`; a missing file at the default path means "all defaults", a missing
    /// file anywhere else is an error (someone named it on purpose).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_PATH) =>
            {
                return Ok(HostConfig::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let config: HostConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, value: String, why| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            value,
            why,
        };
        if self.vcpus == 0 {
            return Err(invalid("vcpus", "0".into(), "a VM needs at least one vCPU"));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(invalid(
                "memory_mib",
                self.memory_mib.to_string(),
                "the guest kernel and agent need at least 64 MiB",
            ));
        }
        if self.agent_timeout_secs == 0 || self.agent_timeout_secs > 86_400 {
            return Err(invalid(
                "agent_timeout_secs",
                self.agent_timeout_secs.to_string(),
                "must be 1 to 86400 (calls to a hung guest must end)",
            ));
        }
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(invalid(
                "log_level",
                self.log_level.clone(),
                "must be error, warn, info, debug or trace",
            ));
        }
        for (field, dir) in [
            ("run_dir", &self.run_dir),
            ("state_dir", &self.state_dir),
            ("template_dir", &self.template_dir),
        ] {
            if !dir.is_absolute() {
                return Err(invalid(
                    field,
                    dir.display().to_string(),
                    "must be an absolute path",
                ));
            }
        }
        let i = &self.images;
        for (field, value) in [
            ("images.max_layer_bytes", i.max_layer_bytes),
            ("images.max_image_bytes", i.max_image_bytes),
            ("images.max_entries", i.max_entries),
            ("images.max_compression_ratio", i.max_compression_ratio),
        ] {
            if value == 0 {
                return Err(invalid(field, "0".into(), "must be at least 1"));
            }
        }
        let j = &self.jail;
        for (field, id) in [("jail.uid", j.uid), ("jail.gid", j.gid)] {
            if id == 0 || id == u32::MAX {
                return Err(invalid(
                    field,
                    id.to_string(),
                    "a jailed VMM runs as neither root nor the invalid id 4294967295",
                ));
            }
        }
        for (field, value, least) in [
            ("jail.max_open_files", j.max_open_files, 64),
            ("jail.max_threads", j.max_threads, 64),
        ] {
            if value < least {
                return Err(invalid(
                    field,
                    value.to_string(),
                    "too low for a VMM's own devices and threads (at least 64)",
                ));
            }
        }
        // The VMM's vsock socket lives in <run_dir>/<16 hex>/ and must fit a unix socket.
        if self.run_dir.as_os_str().len() > 60 {
            return Err(invalid(
                "run_dir",
                self.run_dir.display().to_string(),
                "is too long for the unix sockets below it (at most 60 bytes)",
            ));
        }
        Ok(())
    }

    /// The VM for a sandbox whose containers ask for `limits` (none: the defaults).
    pub fn vm_spec(&self, limits: Option<Limits>) -> VmSpec {
        let (vcpus, memory_mib) = match limits {
            None => (self.vcpus, self.memory_mib),
            Some(l) => {
                let host = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    .min(255) as u8;
                let vcpus = l
                    .vcpus
                    .map(|v| v.saturating_add(self.overhead.vcpus).clamp(1, host))
                    .unwrap_or(self.vcpus);
                let memory = l
                    .memory_mib
                    .map(|m| {
                        m.saturating_add(self.overhead.memory_mib)
                            .max(MIN_MEMORY_MIB)
                    })
                    .unwrap_or(self.memory_mib);
                (vcpus, memory)
            }
        };
        VmSpec {
            kernel: self.kernel.clone(),
            image: self.image.clone(),
            vcpus,
            memory_mib,
            drive_slots: self.drive_slots,
            shared_fs: self.shared_fs,
            console_log: self.debug_console,
            nics: 0,
            jail: self.jail.policy(),
        }
    }
}

/// What a sandbox's containers are limited to, from their OCI specs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub vcpus: Option<u8>,
    pub memory_mib: Option<u32>,
}

/// What containerd's CRI (1.6.7 and later) tells a pod's sandbox container about the whole
/// pod: the sums of its containers' limits, when kubelet gave them.
const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

impl Limits {
    /// A pod's limits from its sandbox's CRI annotations, else a task's own from its OCI
    /// spec's `linux.resources` (CPU quota/period, memory limit).
    pub fn from_spec(spec: &oci_spec::runtime::Spec) -> Option<Limits> {
        Self::from_annotations(spec).or_else(|| Self::from_resources(spec))
    }

    fn from_annotations(spec: &oci_spec::runtime::Spec) -> Option<Limits> {
        let a = spec.annotations().as_ref()?;
        let num = |k: &str| -> Option<i64> { a.get(k)?.trim().parse().ok() };
        let memory_mib = num(SANDBOX_MEMORY)
            .filter(|&b| b > 0)
            .map(|b| (b as u64).div_ceil(1 << 20).min(u64::from(u32::MAX)) as u32);
        let vcpus = vcpus_of(num(SANDBOX_CPU_QUOTA), num(SANDBOX_CPU_PERIOD));
        (memory_mib.is_some() || vcpus.is_some()).then_some(Limits { vcpus, memory_mib })
    }

    fn from_resources(spec: &oci_spec::runtime::Spec) -> Option<Limits> {
        let r = spec.linux().as_ref()?.resources().as_ref()?;
        let memory_mib = r
            .memory()
            .as_ref()
            .and_then(|m| m.limit())
            .filter(|&b| b > 0)
            .map(|b| (b as u64).div_ceil(1 << 20).min(u64::from(u32::MAX)) as u32);
        let cpu = r.cpu().as_ref();
        let quota = cpu.and_then(|c| c.quota());
        let period = cpu
            .and_then(|c| c.period())
            .map(|p| i64::try_from(p).unwrap_or(i64::MAX));
        let vcpus = vcpus_of(quota, period);
        (memory_mib.is_some() || vcpus.is_some()).then_some(Limits { vcpus, memory_mib })
    }
}

/// CPUs for a CFS quota per period (rounded up); none without a positive quota.
fn vcpus_of(quota: Option<i64>, period: Option<i64>) -> Option<u8> {
    match (quota, period) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p as u64).min(255) as u8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_default_file_means_defaults_but_a_named_one_must_exist() {
        // The default path may exist on a developer machine; only check the other case.
        let err = HostConfig::load(Path::new("/nonexistent/hull.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "memory_mb = 128\n").unwrap();
        let e = HostConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("memory_mb"), "{e}");
        std::fs::write(&path, "vcpus = 0\n").unwrap();
        let e = HostConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("vcpus = 0"), "{e}");
        std::fs::write(&path, "log_level = \"loud\"\n").unwrap();
        assert!(HostConfig::load(&path).is_err());
        std::fs::write(&path, "run_dir = \"relative\"\n").unwrap();
        assert!(HostConfig::load(&path).is_err());
    }

    #[test]
    fn reads_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "vcpus = 2\nmemory_mib = 256\ndrive_slots = 6\ntemplates = false\nlog_level = \"debug\"\ndebug_console = true\n[overhead]\nmemory_mib = 32\n",
        )
        .unwrap();
        let c = HostConfig::load(&path).unwrap();
        assert_eq!((c.vcpus, c.memory_mib, c.drive_slots), (2, 256, 6));
        assert!(!c.templates && c.debug_console);
        assert_eq!(c.overhead.memory_mib, 32);
    }

    #[test]
    fn the_shipped_config_file_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/config.toml");
        assert_eq!(HostConfig::load(&path).unwrap(), HostConfig::default());
    }

    #[test]
    fn vm_size_is_the_limits_plus_the_overhead() {
        let c = HostConfig::default();
        let typed = |v: serde_json::Value| -> oci_spec::runtime::Spec {
            serde_json::from_value(v).unwrap()
        };
        let spec = typed(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {"resources": {
                "memory": {"limit": 256 << 20},
                "cpu": {"quota": 150000, "period": 100000}
            }}}),
        );
        let limits = Limits::from_spec(&spec).unwrap();
        assert_eq!(limits.memory_mib, Some(256));
        assert_eq!(limits.vcpus, Some(2));
        let vm = c.vm_spec(Some(limits));
        assert_eq!(vm.memory_mib, 256 + c.overhead.memory_mib);
        assert!(vm.vcpus >= 1);
        assert_eq!(c.vm_spec(None).memory_mib, c.memory_mib);
        assert!(Limits::from_spec(&typed(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {}})
        ))
        .is_none());
        // A pod's sandbox: the CRI's sums win; a zero quota means no CPU limit.
        let pod = typed(serde_json::json!({"ociVersion": "1.0.2", "annotations": {
            SANDBOX_MEMORY: "536870912", SANDBOX_CPU_QUOTA: "0", SANDBOX_CPU_PERIOD: "100000"
        }}));
        assert_eq!(
            Limits::from_spec(&pod),
            Some(Limits {
                vcpus: None,
                memory_mib: Some(512)
            })
        );
    }
}
