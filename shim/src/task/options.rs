//! What a task's runtime options may say: containerd passes them opaquely with Create, and
//! hull takes a configuration path from the CRI's `runtimeoptions.v1.Options` and nothing
//! else.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::TtrpcResult;

use super::err;

const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// Runtime options containerd passes: `runtimeoptions.v1.Options` (the CRI's `options`
/// table with `ConfigPath`, or `ctr run --runtime-config-path`) names another hull
/// configuration file; runc's (a `ctr run` with no options, or a CRI config copied from
/// runc) carry nothing hull uses; anything else is refused by name so a setting never
/// silently does nothing. Returns the configuration path, if one was given.
pub(super) fn check_options(o: &Any) -> TtrpcResult<Option<PathBuf>> {
    const RUNC: &[&str] = &[
        "containerd.runc.v1.Options",
        "io.containerd.runc.v1.options",
    ];
    if o.type_url.is_empty() || RUNC.iter().any(|k| o.type_url.ends_with(k)) {
        return Ok(None);
    }
    if o.type_url.ends_with(RUNTIME_OPTIONS) {
        return config_path_option(&o.value).map_err(|e| {
            err(
                Code::INVALID_ARGUMENT,
                format!("runtime options ({RUNTIME_OPTIONS}): {e}"),
            )
        });
    }
    Err(err(
        Code::INVALID_ARGUMENT,
        format!(
            "runtime options of type {:?} mean nothing to hull; drop them (hull's settings live in /etc/hull/config.toml, or the file a {RUNTIME_OPTIONS} ConfigPath names)",
            o.type_url
        ),
    ))
}

/// `runtimeoptions.v1.Options { string type_url = 1; string config_path = 2; }`, decoded
/// by hand: containerd-shim-protos does not carry the CRI's message.
fn config_path_option(bytes: &[u8]) -> Result<Option<PathBuf>, String> {
    use containerd_shim::protos::protobuf::rt::WireType;
    use containerd_shim::protos::protobuf::CodedInputStream;
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        let wire = WireType::new(tag & 7).ok_or_else(|| format!("bad wire type in tag {tag}"))?;
        if tag >> 3 == 2 && wire == WireType::LengthDelimited {
            path = Some(input.read_string().map_err(|e| e.to_string())?);
        } else {
            input.skip_field(wire).map_err(|e| e.to_string())?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.into();
        a.value = value;
        a
    }

    #[test]
    fn runtime_options_give_a_config_path_or_are_refused_by_name() {
        // type_url = "x" (field 1), config_path = "/etc/hull/other.toml" (field 2).
        let mut v = vec![0x0a, 1, b'x', 0x12, 20];
        v.extend_from_slice(b"/etc/hull/other.toml");
        assert_eq!(
            check_options(&any("runtimeoptions.v1.Options", v)).unwrap(),
            Some(PathBuf::from("/etc/hull/other.toml"))
        );
        assert_eq!(
            check_options(&any("containerd.runc.v1.Options", vec![8, 1])).unwrap(),
            None
        );
        assert_eq!(check_options(&any("", vec![])).unwrap(), None);
        let e = check_options(&any("example.com/Other", vec![])).unwrap_err();
        assert!(e.to_string().contains("example.com/Other"), "{e}");
        let e = check_options(&any("runtimeoptions.v1.Options", vec![0x12, 50, b'/'])).unwrap_err();
        assert!(e.to_string().contains("runtime options"), "{e}");
    }
}
