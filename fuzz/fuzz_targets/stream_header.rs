//! Fuzzes the agent's stream-header parser with arbitrary bytes from a stream connection:
//! it must never panic, never read past the newline, whatever it accepts must encode back
//! to a header that parses to the same thing, and an accepted `tcp` header names a port.
#![no_main]

use hull_protocol::stream::{read_header, Header, Kind, MAX_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        // An accepted tcp stream always names a usable port.
        assert_eq!(h.kind == Kind::Tcp, h.port().is_some());
        assert_eq!(Header::parse(h.encode().as_bytes()), Ok(h));
    }
    let mut rest = data;
    if let Ok(Ok(h)) = read_header(&mut rest) {
        let used = data.len() - rest.len();
        assert!(used <= MAX_HEADER);
        assert_eq!(data[used - 1], b'\n');
        assert_eq!(Header::parse(&data[..used]), Ok(h));
    }
});
