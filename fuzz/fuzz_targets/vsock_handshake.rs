//! Fuzzes the hybrid-vsock handshake parser with arbitrary client bytes: it must never
//! panic, and whatever it accepts must be a complete, bounded `CONNECT <port>` line.
#![no_main]

use hull_vmm::devices::virtio::vsock::handshake::{parse, MAX_LINE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((port, n))) = parse(data) {
        assert!(n <= MAX_LINE && n <= data.len());
        assert_eq!(data[n - 1], b'\n');
        assert!(data.starts_with(b"CONNECT "));
        let text = std::str::from_utf8(&data[8..n]).unwrap();
        assert_eq!(text.trim_end().parse::<u32>().unwrap(), port);
    }
});
