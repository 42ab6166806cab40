//! Fuzzes the hybrid-vsock handshake parser with arbitrary client bytes: it must never
//! panic, and whatever it accepts must be a complete, bounded `CONNECT <port>` or
//! `ADOPT <port>` line.
#![no_main]

use hull_vmm::devices::virtio::vsock::handshake::{parse, Request, MAX_LINE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((request, n))) = parse(data) {
        assert!(n <= MAX_LINE && n <= data.len());
        assert_eq!(data[n - 1], b'\n');
        let prefix: &[u8] = match request {
            Request::Connect(_) => b"CONNECT ",
            Request::Adopt(_) => b"ADOPT ",
        };
        assert!(data.starts_with(prefix));
        let text = std::str::from_utf8(&data[prefix.len()..n]).unwrap();
        assert_eq!(text.trim_end().parse::<u32>().unwrap(), request.port());
    }
});
