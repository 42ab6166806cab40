//! Fuzzes the agent's checks of a host-sent OCI spec: arbitrary bytes as `oci_spec_json`,
//! then (when they parse) the rootfs, mount-target, resource and process checks and the
//! guest rewrite. None may panic; a spec that passes the checks has its rootfs inside the
//! area, and a rewritten spec names no namespace but a pod member's.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hull_agent::service::container::{rewrite_spec, Rewrite};
use hull_agent::service::validate::{check_spec, parse_spec};
use libfuzzer_sys::fuzz_target;

/// A rootfs area with one rootfs holding a few directories and symlinks to resolve.
fn area() -> &'static PathBuf {
    static AREA: OnceLock<PathBuf> = OnceLock::new();
    AREA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hull-fuzz-area-{}", std::process::id()));
        let root = dir.join("r");
        let _ = std::fs::create_dir_all(root.join("etc"));
        let _ = std::fs::create_dir_all(root.join("var"));
        let _ = std::os::unix::fs::symlink("/etc", root.join("var/run"));
        let _ = std::os::unix::fs::symlink("../../..", root.join("up"));
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let area = area();
    let Ok(mut spec) = parse_spec(data) else {
        return;
    };
    if let Ok(rootfs) = check_spec(&spec, std::slice::from_ref(area)) {
        assert!(rootfs.starts_with(area.canonicalize().unwrap()));
        let rewritten = rewrite_spec(
            &mut spec,
            &Rewrite {
                rootfs: &rootfs,
                cgroup_path: Path::new("/hull/c"),
                members: [(7, "pause".to_string())].into(),
                files: vec![("/etc/hosts", area.join("hosts"))],
            },
        );
        // The damage this looks for: a namespace path other than a pod member's surviving
        // the rewrite, so the runtime would join whatever it names.
        if rewritten.is_ok() {
            let namespaces = spec
                .linux()
                .as_ref()
                .and_then(|l| l.namespaces().clone())
                .unwrap_or_default();
            for ns in namespaces {
                if let Some(path) = ns.path() {
                    let path = path.to_string_lossy();
                    assert!(
                        path.starts_with("/proc/7/ns/") && !path.contains(".."),
                        "{path} survived the rewrite"
                    );
                }
            }
        }
    }
});
