//! Sandbox-wide state and the guest-wide operations: hostname, the files every container
//! sees (/etc/hosts, /etc/resolv.conf, /etc/hostname), the clock and the entropy pool.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::validate::Invalid;
use super::AgentError;

/// The bounds of ReseedRandom's entropy.
pub const MIN_ENTROPY: usize = 32;
pub const MAX_ENTROPY: usize = 4096;

pub struct Sandbox {
    /// The sandbox cgroup below the agent's cgroup parent (`hull`).
    pub cgroup: PathBuf,
    /// Files bound into every container: (destination, source).
    pub files: Vec<(&'static str, PathBuf)>,
}

/// Checks a hostname: RFC 1123 labels, at most 64 bytes (the kernel's limit).
pub fn check_hostname(name: &str) -> Result<(), Invalid> {
    let bad = |why: &str| Err(Invalid::new("hostname", format!("{name:?} {why}")));
    if name.len() > 64 {
        return bad("is longer than 64 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() || label.starts_with('-') || label.ends_with('-') {
            return bad("has an empty label or one starting or ending with '-'");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("may only hold letters, digits, '-' and '.'");
        }
    }
    Ok(())
}

pub fn set_hostname(name: &str) -> Result<(), AgentError> {
    // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        return Err(AgentError::Internal(format!(
            "sethostname: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Writes the sandbox files into `dir`; returns what to bind where.
pub fn write_files(
    dir: &Path,
    hostname: &str,
    hosts: &str,
    resolv_conf: &str,
) -> Result<Vec<(&'static str, PathBuf)>, AgentError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| AgentError::Internal(format!("{}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for (dest, name, text, field) in [
        ("/etc/hostname", "hostname", hostname, "hostname"),
        ("/etc/hosts", "hosts", hosts, "hosts"),
        (
            "/etc/resolv.conf",
            "resolv.conf",
            resolv_conf,
            "resolv_conf",
        ),
    ] {
        if text.is_empty() {
            continue;
        }
        if text.len() > 64 * 1024 {
            return Err(AgentError::invalid(field, "longer than 64 KiB"));
        }
        let path = dir.join(name);
        let mut body = text.to_owned();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        std::fs::write(&path, body)
            .map_err(|e| AgentError::Internal(format!("{}: {e}", path.display())))?;
        files.push((dest, path));
    }
    Ok(files)
}

pub fn set_time(seconds: i64, nanoseconds: u32) -> Result<(), AgentError> {
    if nanoseconds >= 1_000_000_000 {
        return Err(AgentError::invalid(
            "nanoseconds",
            format!("{nanoseconds} is not below 1e9"),
        ));
    }
    if seconds < 0 {
        return Err(AgentError::invalid(
            "seconds",
            format!("{seconds} is before 1970"),
        ));
    }
    let ts = libc::timespec {
        tv_sec: seconds as libc::time_t,
        tv_nsec: nanoseconds as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec for the duration of the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(AgentError::Internal(format!(
            "clock_settime: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// `struct rand_pool_info` with room for the entropy that follows it.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; MAX_ENTROPY],
}

const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Adds the host's entropy to the pool, credited, and reseeds the CRNG at once, so a guest
/// restored from a snapshot stops producing the numbers its siblings produce.
pub fn reseed(entropy: &[u8]) -> Result<(), AgentError> {
    if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&entropy.len()) {
        return Err(AgentError::invalid(
            "entropy",
            format!(
                "{} bytes; give {MIN_ENTROPY} to {MAX_ENTROPY}",
                entropy.len()
            ),
        ));
    }
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(|e| AgentError::Internal(format!("/dev/random: {e}")))?;
    let mut info = Box::new(RandPoolInfo {
        entropy_count: (entropy.len() * 8) as libc::c_int,
        buf_size: entropy.len() as libc::c_int,
        buf: [0; MAX_ENTROPY],
    });
    info.buf[..entropy.len()].copy_from_slice(entropy);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf holds buf_size bytes; `info`
    // is valid and large enough for the duration of the call.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, &*info) } != 0 {
        return Err(AgentError::Internal(format!(
            "RNDADDENTROPY: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(AgentError::Internal(format!(
            "RNDRESEEDCRNG: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        check_hostname("pod-1.example").unwrap();
        for bad in ["", "a..b", "-a", "a_b", &"a".repeat(65)] {
            assert_eq!(check_hostname(bad).unwrap_err().field, "hostname", "{bad}");
        }
    }

    #[test]
    fn entropy_bounds_and_time_fields() {
        assert!(reseed(&[0; 8]).unwrap_err().to_string().contains("entropy"));
        assert!(reseed(&[0; 5000])
            .unwrap_err()
            .to_string()
            .contains("entropy"));
        assert!(set_time(0, 2_000_000_000)
            .unwrap_err()
            .to_string()
            .contains("nanoseconds"));
        assert!(set_time(-1, 0).unwrap_err().to_string().contains("seconds"));
    }

    #[test]
    fn sandbox_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_files(dir.path(), "h", "127.0.0.1 localhost", "").unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
    }
}
