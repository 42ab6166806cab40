//! The hybrid-vsock handshake a host client sends on the VMM's unix socket, compatible
//! with Firecracker's: `CONNECT <port>\n`, answered by `OK <host-port>\n` once the guest
//! accepted the connection. hull adds `ADOPT <port>\n`: take over a connection to guest
//! port `<port>` that a restored snapshot kept open (answered `OK <host-port>\n` at once;
//! closed when there is none, so the client falls back to `CONNECT`). The bytes come from
//! any local process, so the parser is strict, bounded and fuzzed.

/// Longest acceptable handshake line, newline included ("CONNECT 4294967295\n" is 19).
pub const MAX_LINE: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("no newline within {MAX_LINE} bytes")]
    TooLong,
    #[error("line does not start with \"CONNECT \" or \"ADOPT \"")]
    NotConnect,
    #[error("port {0:?} is not a decimal number below 2^32")]
    BadPort(String),
    #[error("connection closed before the handshake line was complete")]
    Eof,
}

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A new connection to this guest port.
    Connect(u32),
    /// A kept connection to this guest port (see the module docs).
    Adopt(u32),
}

impl Request {
    pub fn port(self) -> u32 {
        match self {
            Request::Connect(p) | Request::Adopt(p) => p,
        }
    }
}

/// Where `buf` (bytes received so far) stands: `Ok(None)` needs more bytes,
/// `Ok(Some((request, n)))` is a complete request whose line is the first `n` bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, HandshakeError> {
    let Some(nl) = buf.iter().take(MAX_LINE).position(|b| *b == b'\n') else {
        return if buf.len() >= MAX_LINE {
            Err(HandshakeError::TooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (make, port): (fn(u32) -> Request, &[u8]) = if let Some(p) = line.strip_prefix(b"CONNECT ")
    {
        (Request::Connect, p)
    } else if let Some(p) = line.strip_prefix(b"ADOPT ") {
        (Request::Adopt, p)
    } else {
        return Err(HandshakeError::NotConnect);
    };
    let text = String::from_utf8_lossy(port).into_owned();
    if port.is_empty() || !port.iter().all(u8::is_ascii_digit) {
        return Err(HandshakeError::BadPort(text));
    }
    let port = text
        .parse::<u32>()
        .map_err(|_| HandshakeError::BadPort(text))?;
    Ok(Some((make(port), nl + 1)))
}

/// The reply that tells the client its stream is connected, naming the host-side port the
/// guest sees as the peer.
pub fn ok_reply(host_port: u32) -> Vec<u8> {
    format!("OK {host_port}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_complete_line_and_reports_its_length() {
        use Request::*;
        assert_eq!(parse(b"CONNECT 1024\n"), Ok(Some((Connect(1024), 13))));
        assert_eq!(parse(b"CONNECT 52\r\ndata"), Ok(Some((Connect(52), 12))));
        assert_eq!(
            parse(b"CONNECT 4294967295\n"),
            Ok(Some((Connect(u32::MAX), 19)))
        );
        assert_eq!(parse(b"ADOPT 1024\n"), Ok(Some((Adopt(1024), 11))));
    }

    #[test]
    fn waits_for_more_bytes() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"CONNECT 10"), Ok(None));
    }

    #[test]
    fn rejects_malformed_lines() {
        assert_eq!(parse(b"connect 5\n"), Err(HandshakeError::NotConnect));
        assert_eq!(parse(b"CONNECT\n"), Err(HandshakeError::NotConnect));
        assert_eq!(parse(b"ADOPT\n"), Err(HandshakeError::NotConnect));
        assert!(matches!(
            parse(b"ADOPT x\n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse(b"CONNECT \n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse(b"CONNECT -1\n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse(b"CONNECT +1\n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse(b"CONNECT 4294967296\n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert!(matches!(
            parse(b"CONNECT 1 2\n"),
            Err(HandshakeError::BadPort(_))
        ));
        assert_eq!(parse(&[b'A'; MAX_LINE]), Err(HandshakeError::TooLong));
    }

    #[test]
    fn ok_reply_is_one_line() {
        assert_eq!(ok_reply(1073741824), b"OK 1073741824\n");
    }
}
