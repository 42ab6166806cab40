//! Fuzzes what the shim takes from outside: event-stream frames from the guest agent (an
//! untrusted guest may send any bytes), the OCI spec containerd hands over (written from a
//! tenant's pod spec), and containerd's rootfs mount options. The first byte picks the
//! input; none may panic, and a rewritten spec must keep the guest root, lose the host's
//! hooks, and encode to what the agent decodes.
#![no_main]

use hull_host::pod::{apply_event, EventSink, PodEvent};
use hull_host::rootfs::{parse_options, HostMount};
use hull_host::spec;
use libfuzzer_sys::fuzz_target;

/// Checks what a frame decodes to: an init's exit never comes as an exec with an empty
/// id, and a frame never claims the VM is gone (only the host decides that).
struct Check;

impl EventSink for Check {
    fn event(&self, event: PodEvent) {
        match event {
            PodEvent::Exited { exec, .. } => {
                assert!(exec.as_deref() != Some(""), "an empty exec id leaked through")
            }
            PodEvent::Oom { .. } => {}
            PodEvent::VmGone { .. } => panic!("a guest frame became VmGone"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let _ = apply_event(rest, &Check);
        }
        1 => {
            let Ok(mut spec) = serde_json::from_slice::<spec::Spec>(rest) else {
                return;
            };
            let _ = spec::role(&spec);
            if let Ok(plan) = spec::for_guest(&mut spec, "/run/hull/shared/c/rootfs") {
                let root = spec.root().as_ref().map(|r| r.path().clone());
                assert_eq!(root, Some("/run/hull/shared/c/rootfs".into()));
                assert!(spec.hooks().is_none(), "host hooks reach the guest");
                for v in &plan.volumes {
                    spec::add_volume(&mut spec, v, "/run/hull/shared/c-v0/rootfs", true);
                }
                for v in &plan.shared {
                    assert!(v.source.is_dir(), "only directories are shared");
                    spec::add_volume(&mut spec, v, "/run/hull/fs/s0", false);
                }
                let text = serde_json::to_vec(&spec).expect("a rewritten spec encodes");
                let _: spec::Spec =
                    serde_json::from_slice(&text).expect("what the guest is sent decodes");
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let mut parts = text.split('\n');
            let kind = parts.next().unwrap_or_default().to_string();
            let m = HostMount {
                kind,
                source: "src".into(),
                options: parts.map(String::from).collect(),
            };
            let _ = parse_options(0, &m);
        }
    }
});
