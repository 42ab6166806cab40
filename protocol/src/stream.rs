//! Stream connections: process stdio and the event stream, each over its own connection to
//! [`crate::ports::STREAM_PORT`], so bytes never travel through RPCs and the transport's
//! flow control is the backpressure.
//!
//! The host opens the connection and sends one header line:
//!
//! ```text
//! STREAM <version> <kind> <container-id> <exec-id>\n
//! ```
//!
//! `kind` is `stdin`, `stdout`, `stderr`, `pty`, `events` or `tcp`; `exec-id` is `-` for a
//! container's init process; both ids are `-` for `events`; for `tcp` the container id is
//! `-` and the exec-id field holds a port number. The agent answers `OK\n` or
//! `ERR <reason>\n` and, after `OK`, the connection carries:
//!
//! - `stdin`: host → guest bytes; the host's shutdown of its write side is the process's
//!   end of input.
//! - `stdout`, `stderr`: guest → host bytes until the process and every holder of the pipe
//!   have closed it.
//! - `pty`: both directions, the terminal's master side (resize with the `ResizePty` RPC).
//! - `events`: guest → host [`crate::rpc::agent::Event`] messages, each framed as a
//!   big-endian `u32` length and that many bytes of protobuf (see [`write_frame`]).
//! - `tcp`: both directions, a TCP connection the agent made to `127.0.0.1:<port>` in the
//!   pod's network (kubectl port-forward); each side's shutdown of its write side ends
//!   that direction.

use std::fmt;
use std::io::{self, Read, Write};

/// The header's version field; bumps with [`crate::PROTOCOL_VERSION`] when the framing changes.
pub const STREAM_VERSION: u32 = 1;
/// The longest header line, newline included.
pub const MAX_HEADER: usize = 320;
/// The longest container or exec id.
pub const MAX_ID: usize = 128;
/// The largest event frame.
pub const MAX_FRAME: usize = 64 * 1024;

/// Which stream of which process a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stdin,
    Stdout,
    Stderr,
    Pty,
    Events,
    /// A connection to a port on the pod's loopback; see [`Header::tcp`].
    Tcp,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Stdin => "stdin",
            Kind::Stdout => "stdout",
            Kind::Stderr => "stderr",
            Kind::Pty => "pty",
            Kind::Events => "events",
            Kind::Tcp => "tcp",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            Kind::Stdin,
            Kind::Stdout,
            Kind::Stderr,
            Kind::Pty,
            Kind::Events,
            Kind::Tcp,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// A parsed stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// Empty for [`Kind::Events`].
    pub container_id: String,
    /// Empty for a container's init process.
    pub exec_id: String,
}

/// Why a header, an id or a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    TooLong,
    NotUtf8,
    Malformed(&'static str),
    Version(String),
    Kind(String),
    Id {
        field: &'static str,
        reason: &'static str,
    },
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::TooLong => write!(f, "stream header longer than {MAX_HEADER} bytes"),
            StreamError::NotUtf8 => write!(f, "stream header is not UTF-8"),
            StreamError::Malformed(what) => write!(
                f,
                "malformed stream header ({what}); expected \"STREAM <version> <kind> <container-id> <exec-id>\\n\""
            ),
            StreamError::Version(v) => write!(
                f,
                "stream version {v:?} is not supported; this agent speaks {STREAM_VERSION}"
            ),
            StreamError::Kind(k) => write!(
                f,
                "unknown stream kind {k:?}; expected stdin, stdout, stderr, pty, events or tcp"
            ),
            StreamError::Id { field, reason } => write!(f, "{field}: {reason}"),
        }
    }
}

impl std::error::Error for StreamError {}

/// Checks a container or exec id: 1 to [`MAX_ID`] characters of `[A-Za-z0-9_.-]`, not
/// starting with `.` or `-` (ids become file and cgroup names in the guest).
pub fn validate_id(field: &'static str, id: &str) -> Result<(), StreamError> {
    let reason = if id.is_empty() {
        "must not be empty"
    } else if id.len() > MAX_ID {
        "longer than 128 characters"
    } else if id.starts_with(['.', '-']) {
        "must not start with '.' or '-'"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    {
        "may only hold letters, digits, '_', '.' and '-'"
    } else {
        return Ok(());
    };
    Err(StreamError::Id { field, reason })
}

impl Header {
    pub fn new(kind: Kind, container_id: &str, exec_id: &str) -> Self {
        Header {
            kind,
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
        }
    }

    /// A connection to `127.0.0.1:port` in the pod's network.
    pub fn tcp(port: u16) -> Self {
        Header::new(Kind::Tcp, "", &port.to_string())
    }

    /// The port of a [`Kind::Tcp`] header.
    pub fn port(&self) -> Option<u16> {
        // At most five digits: "65535", or fewer with leading zeros.
        let digits = (1..=5).contains(&self.exec_id.len())
            && self.exec_id.bytes().all(|b| b.is_ascii_digit());
        (self.kind == Kind::Tcp && digits)
            .then(|| self.exec_id.parse().ok())
            .flatten()
            .filter(|&p| p != 0)
    }

    /// The header line, newline included.
    pub fn encode(&self) -> String {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_owned()
            } else {
                s.to_owned()
            }
        };
        format!(
            "STREAM {STREAM_VERSION} {} {} {}\n",
            self.kind.name(),
            dash(&self.container_id),
            dash(&self.exec_id)
        )
    }

    /// Parses one header line (with or without its newline).
    pub fn parse(line: &[u8]) -> Result<Header, StreamError> {
        if line.len() > MAX_HEADER {
            return Err(StreamError::TooLong);
        }
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|_| StreamError::NotUtf8)?;
        let mut words = line.split(' ');
        if words.next() != Some("STREAM") {
            return Err(StreamError::Malformed("does not start with STREAM"));
        }
        let version = words.next().ok_or(StreamError::Malformed("no version"))?;
        if version != STREAM_VERSION.to_string() {
            return Err(StreamError::Version(version.to_owned()));
        }
        let kind = words.next().ok_or(StreamError::Malformed("no kind"))?;
        let kind = Kind::from_name(kind).ok_or_else(|| StreamError::Kind(kind.to_owned()))?;
        let container = words
            .next()
            .ok_or(StreamError::Malformed("no container id"))?;
        let exec = words.next().ok_or(StreamError::Malformed("no exec id"))?;
        if words.next().is_some() {
            return Err(StreamError::Malformed("extra words"));
        }
        let undash = |s: &str| {
            if s == "-" {
                String::new()
            } else {
                s.to_owned()
            }
        };
        let header = Header {
            kind,
            container_id: undash(container),
            exec_id: undash(exec),
        };
        if kind == Kind::Events {
            if !header.container_id.is_empty() || !header.exec_id.is_empty() {
                return Err(StreamError::Malformed("the events stream takes no ids"));
            }
        } else if kind == Kind::Tcp {
            if container != "-" {
                return Err(StreamError::Malformed("a tcp stream takes no container id"));
            }
            if header.port().is_none() {
                return Err(StreamError::Id {
                    field: "port",
                    reason: "must be a port number from 1 to 65535",
                });
            }
        } else {
            validate_id("container id", &header.container_id)?;
            if !header.exec_id.is_empty() {
                validate_id("exec id", &header.exec_id)?;
            }
        }
        Ok(header)
    }
}

/// Reads a header line one byte at a time, so no byte after the newline is consumed.
pub fn read_header(r: &mut impl Read) -> io::Result<Result<Header, StreamError>> {
    let line = read_line(r)?;
    Ok(line.and_then(|l| Header::parse(&l)))
}

/// Reads the agent's answer to a header: `Ok(())` for `OK`, the reason for `ERR`.
pub fn read_reply(r: &mut impl Read) -> io::Result<Result<(), String>> {
    let line = match read_line(r)? {
        Ok(line) => line,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let line = String::from_utf8_lossy(&line);
    let line = line.trim_end_matches('\n');
    Ok(match line.strip_prefix("ERR ") {
        _ if line == "OK" => Ok(()),
        Some(reason) => Err(reason.to_owned()),
        None => Err(format!("unexpected reply {line:?}")),
    })
}

/// The agent's answer to a header.
pub fn reply_line(result: &Result<(), String>) -> String {
    match result {
        Ok(()) => "OK\n".to_owned(),
        Err(reason) => {
            let mut reason = reason.replace('\n', " ");
            reason.truncate(MAX_HEADER - 5);
            format!("ERR {reason}\n")
        }
    }
}

fn read_line(r: &mut impl Read) -> io::Result<Result<Vec<u8>, StreamError>> {
    let mut line = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the end of the line",
            ));
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            return Ok(Ok(line));
        }
        if line.len() >= MAX_HEADER {
            return Ok(Err(StreamError::TooLong));
        }
    }
}

/// Writes one event frame: a big-endian `u32` length, then the bytes.
pub fn write_frame(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    if bytes.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("event frame of {} bytes exceeds {MAX_FRAME}", bytes.len()),
        ));
    }
    let mut buf = Vec::with_capacity(4 + bytes.len());
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
    w.write_all(&buf)
}

/// Reads one event frame; `None` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("event frame of {len} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes)?;
    Ok(Some(bytes))
}

/// One end of a two-way relay: where bytes come from, where the other end's bytes go, and
/// how to tell this end that no more will come (a socket's shutdown of its write half).
pub struct RelayEnd<R, W> {
    pub read: R,
    pub write: W,
    pub close_write: fn(&W),
}

/// Relays a [`Kind::Tcp`] stream: `a`'s bytes to `b` on a thread of its own and `b`'s to
/// `a` on the caller's, each direction's end passed on when its reader ends; returns once
/// both have ended.
pub fn relay<R1, W1, R2, W2>(a: RelayEnd<R1, W1>, b: RelayEnd<R2, W2>)
where
    R1: Read + Send + 'static,
    W1: Write,
    R2: Read,
    W2: Write + Send + 'static,
{
    let (mut a_read, mut b_write, b_close) = (a.read, b.write, b.close_write);
    let a_to_b = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            let _ = io::copy(&mut a_read, &mut b_write);
            b_close(&b_write);
        });
    let (mut b_read, mut a_write) = (b.read, a.write);
    let _ = io::copy(&mut b_read, &mut a_write);
    (a.close_write)(&a_write);
    if let Ok(t) = a_to_b {
        let _ = t.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        for h in [
            Header::new(Kind::Stdout, "c1", ""),
            Header::new(Kind::Stdin, "pod.a_b-1", "exec-7"),
            Header::new(Kind::Pty, "x", "y"),
            Header::new(Kind::Events, "", ""),
            Header::tcp(8080),
            Header::tcp(65535),
        ] {
            assert_eq!(Header::parse(h.encode().as_bytes()), Ok(h));
        }
        assert_eq!(Header::tcp(80).encode(), "STREAM 1 tcp - 80\n");
        assert_eq!(Header::tcp(80).port(), Some(80));
        assert_eq!(Header::new(Kind::Stdout, "c", "80").port(), None);
    }

    #[test]
    fn header_refusals_name_the_problem() {
        let bad: &[(&[u8], &str)] = &[
            (b"STREAM 2 stdout c -\n", "version"),
            (b"STREAM 1 stdbad c -\n", "unknown stream kind"),
            (b"STREAM 1 stdout -\n", "no exec id"),
            (b"STREAM 1 stdout - -\n", "container id: must not be empty"),
            (b"STREAM 1 stdout ../x -\n", "must not start"),
            (b"STREAM 1 stdout a/b -\n", "may only hold"),
            (b"STREAM 1 stdout c - x\n", "extra words"),
            (b"STREAM 1 events c -\n", "takes no ids"),
            (b"STREAM 1 tcp c 80\n", "takes no container id"),
            (b"STREAM 1 tcp - 0\n", "port: must be a port number"),
            (b"STREAM 1 tcp - 65536\n", "port: must be a port number"),
            (b"STREAM 1 tcp - -\n", "port: must be a port number"),
            (b"STREAM 1 tcp - +80\n", "port: must be a port number"),
            (b"STREAM 1 tcp - 000080\n", "port: must be a port number"),
            (b"STREAM 1 tcp  80\n", "takes no container id"),
            (b"HELLO\n", "does not start"),
            (b"STREAM 1 stdout \xff -\n", "not UTF-8"),
        ];
        for (line, want) in bad {
            let err = Header::parse(line).unwrap_err().to_string();
            assert!(err.contains(want), "{line:?}: {err}");
        }
        let long = format!("STREAM 1 stdout {} -\n", "a".repeat(129));
        assert!(Header::parse(long.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("128"));
    }

    #[test]
    fn read_header_stops_at_newline() {
        let mut input: &[u8] = b"STREAM 1 stdin c e\nrest";
        let h = read_header(&mut input).unwrap().unwrap();
        assert_eq!(h, Header::new(Kind::Stdin, "c", "e"));
        assert_eq!(input, b"rest");
        let mut endless: &[u8] = &[b'a'; 1000];
        assert_eq!(
            read_header(&mut endless).unwrap(),
            Err(StreamError::TooLong)
        );
        let mut cut: &[u8] = b"STREAM 1";
        assert!(read_header(&mut cut).is_err());
    }

    #[test]
    fn replies() {
        let ok = reply_line(&Ok(()));
        assert_eq!(read_reply(&mut ok.as_bytes()).unwrap(), Ok(()));
        let err = reply_line(&Err("no such\ncontainer".into()));
        assert_eq!(
            read_reply(&mut err.as_bytes()).unwrap(),
            Err("no such container".into())
        );
    }

    #[test]
    fn frames() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"abc").unwrap();
        write_frame(&mut buf, b"").unwrap();
        let mut r = buf.as_slice();
        assert_eq!(read_frame(&mut r).unwrap(), Some(b"abc".to_vec()));
        assert_eq!(read_frame(&mut r).unwrap(), Some(vec![]));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(read_frame(&mut huge.as_slice()).is_err());
        assert!(write_frame(&mut Vec::new(), &vec![0; MAX_FRAME + 1]).is_err());
    }
}
