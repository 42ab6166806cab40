//! The owner the guest sees for a file or directory the VMM owns on the host, kept on the
//! host inode as the xattr `user.hull.owner` = `"<uid>:<gid>"` (the way fuse-overlayfs
//! and containers-storage keep `user.containers.override_stat`).
//!
//! The VMM creates every object of a share under its own ids, so the host cannot say which
//! guest user made it. Without a record the guest would see its root as the owner of
//! everything it made, and the guest kernel, which checks permissions against what it is
//! shown (`default_permissions`), would refuse a non-root creator its own files. The
//! record gives each file back the ids of the guest user that made it, or that the guest
//! later chowned it to, without any change of the host owner.
//!
//! The record's bytes come from the host file system, which may hold anything: only a
//! well-formed record counts, anything else is as if there were none.

use std::ffi::CStr;

/// The record's name. Linux allows `user.*` xattrs on regular files and directories only.
pub const OWNER_XATTR: &CStr = c"user.hull.owner";
/// Names the guest may neither read, write, remove nor list: hull's own namespace.
const RESERVED_PREFIX: &[u8] = b"user.hull.";
/// The longest well-formed record: `"4294967295:4294967295"`.
pub const MAX_RECORD_LEN: usize = 21;

/// A uid and a gid, as the guest sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// Two decimal u32, digits only, separated by one ':', at most [`MAX_RECORD_LEN`]
    /// bytes; `None` for anything else.
    pub fn parse(record: &[u8]) -> Option<Owner> {
        if record.len() > MAX_RECORD_LEN {
            return None;
        }
        let colon = record.iter().position(|&b| b == b':')?;
        let (uid, gid) = (&record[..colon], &record[colon + 1..]);
        Some(Owner {
            uid: decimal_u32(uid)?,
            gid: decimal_u32(gid)?,
        })
    }

    pub fn to_record(self) -> Vec<u8> {
        format!("{}:{}", self.uid, self.gid).into_bytes()
    }
}

/// `u32::from_str` also takes a leading '+': a record holds digits only.
fn decimal_u32(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether `name` is in hull's own xattr namespace, which the guest cannot touch.
pub fn is_reserved(name: &[u8]) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// Whether a host inode of this mode can hold a record (a `user.*` xattr).
pub fn can_hold_record(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

/// A listxattr answer (NUL-terminated names) without hull's own names.
pub fn without_reserved(names: &[u8]) -> Vec<u8> {
    let mut kept = Vec::with_capacity(names.len());
    for name in names.split_inclusive(|&b| b == 0) {
        if !is_reserved(name) {
            kept.extend_from_slice(name);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_two_decimal_ids_around_one_colon_parse() {
        let max = Owner {
            uid: u32::MAX,
            gid: u32::MAX,
        };
        assert_eq!(Owner::parse(&max.to_record()), Some(max));
        assert_eq!(max.to_record().len(), MAX_RECORD_LEN);
        assert_eq!(Owner::parse(b"1000:0"), Some(Owner { uid: 1000, gid: 0 }));
        for bad in [
            &b""[..],
            b":",
            b"1:",
            b":1",
            b"abc",
            b"1:2:3",
            b"+1:2",
            b"1:-2",
            b" 1:2",
            b"1:2\0",
            b"4294967296:0",
            b"0:4294967296",
            b"0000000000001:000000001",
            &[b'1'; 100],
        ] {
            assert_eq!(
                Owner::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn listing_drops_hull_names_and_keeps_the_rest_in_order() {
        let names = b"user.x\0user.hull.owner\0security.selinux\0user.hull.\0user.hullx\0";
        assert_eq!(
            without_reserved(names),
            b"user.x\0security.selinux\0user.hullx\0"
        );
        assert_eq!(without_reserved(b""), b"");
        assert!(is_reserved(b"user.hull.owner"));
        assert!(!is_reserved(b"user.hull"));
    }
}
