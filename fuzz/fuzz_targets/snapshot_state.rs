//! Fuzzes the snapshot state file decoder: a state file is read from disk by a VMM that
//! is about to restore it, and a template cache may hold a damaged one. Arbitrary bytes
//! must be refused with an error, never a panic or an unbounded allocation; bytes with a
//! valid header (magic, version, length, CRC) around a fuzzed payload reach postcard's
//! decoder, and whatever decodes must encode and decode again to the same shape. The host's
//! reader of the metadata alone (`hull_vmm_api::snapshot::decode_meta`, what a template
//! check runs) sees the same bytes and must agree with the VMM's decoder.
#![no_main]

use std::path::Path;

use hull_vmm::snapshot::{decode_state, FORMAT_VERSION};
use hull_vmm_api::snapshot::decode_meta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz/state");
    let _ = decode_state(path, data);
    let _ = decode_meta(path, data);

    let mut framed = Vec::with_capacity(data.len() + 24);
    framed.extend_from_slice(b"HULLSNAP");
    framed.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    framed.extend_from_slice(&(data.len() as u64).to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    framed.extend_from_slice(data);
    let meta = decode_meta(path, &framed);
    if let Ok(state) = decode_state(path, &framed) {
        assert_eq!(meta.ok().as_ref(), Some(&state.meta), "the host reads the same metadata");
        let again = postcard::to_stdvec(&state).expect("a decoded state encodes");
        let back: hull_vmm::snapshot::SnapshotState =
            postcard::from_bytes(&again).expect("an encoded state decodes");
        assert_eq!(back.meta, state.meta);
        assert_eq!(back.vcpus.len(), state.vcpus.len());
        assert_eq!(back.devices.len(), state.devices.len());
    }
});
