//! kubectl port-forward for a VM pod. containerd (1.6, unchanged) serves the CRI's
//! PortForward by dialling `localhost:PORT` from inside the pod's network namespace, and
//! for a VM pod nothing listens there: the pod's programs run in the guest. So in that
//! namespace hull listens on one port of `127.0.0.1` and has netfilter redirect every TCP
//! connection to `127.0.0.1` there (`iptables -t nat -A OUTPUT -o lo ... -j REDIRECT`).
//! For each connection the original port (`SO_ORIGINAL_DST`) names the pod's port, and a
//! `tcp` stream to the agent (`hull_protocol::stream::Header::tcp`) carries the bytes to
//! `127.0.0.1:PORT` in the guest. Nothing but port-forward connects to the loopback of a
//! VM pod's namespace on the node: the namespace holds only CNI's interfaces and hull's taps.
//!
//! The listener and the rule live as long as the pod's VM; both are in the pod's namespace,
//! which the CRI removes with the pod.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use hull_net::netns;
use hull_protocol::rpc::Endpoint;
use hull_protocol::stream::{relay, Header, RelayEnd};

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("the pod's network namespace {netns}: listening on 127.0.0.1 for port-forward")]
    Listen {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("the pod's network namespace {netns}: `iptables {args}`: {reason} (kubectl port-forward to a hull pod needs iptables and the kernel's nat table on the node)")]
    Iptables {
        netns: String,
        args: String,
        reason: String,
    },
}

/// The port-forward listener of one pod's network namespace.
#[derive(Debug)]
pub struct PortForward {
    netns: PathBuf,
    port: u16,
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PortForward {
    /// Listens in the namespace at `netns`, redirects its loopback TCP there, and relays
    /// each connection to the agent at `agent`.
    pub fn start(netns: &Path, agent: Endpoint) -> Result<PortForward, ForwardError> {
        let ns = netns.display().to_string();
        let listen_err = |source| ForwardError::Listen {
            netns: ns.clone(),
            source,
        };
        let listener = netns::run_in(netns, || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?
            .map_err(listen_err)?;
        let port = listener.local_addr().map_err(listen_err)?.port();
        iptables(netns, &redirect_rule("-A", port))?;
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let (l, stop) = (listener.clone(), stopping.clone());
        let thread = std::thread::Builder::new()
            .name("port-forward".into())
            .spawn(move || accept_loop(&l, &stop, &agent))
            .map_err(listen_err)?;
        log::info!("{ns}: port-forward listens on 127.0.0.1:{port}");
        Ok(PortForward {
            netns: netns.to_path_buf(),
            port,
            listener,
            stopping,
            thread: Some(thread),
        })
    }

    /// Stops listening and removes the rule (connections already made run to their end).
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // SAFETY: shutdown(2) of a socket we own; on a listening socket it wakes the
        // blocked accept(2) with an error.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.netns.exists() {
            if let Err(e) = iptables(&self.netns, &redirect_rule("-D", self.port)) {
                log::warn!("{e}");
            }
        }
    }
}

/// Every TCP connection made to 127.0.0.1 in the namespace goes to the listener.
fn redirect_rule(op: &str, port: u16) -> Vec<String> {
    let port = port.to_string();
    [
        "-w",
        "-t",
        "nat",
        op,
        "OUTPUT",
        "-o",
        "lo",
        "-p",
        "tcp",
        "-d",
        "127.0.0.1",
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ]
    .map(String::from)
    .to_vec()
}

/// Runs iptables inside the network namespace at `netns`.
fn iptables(netns: &Path, args: &[String]) -> Result<(), ForwardError> {
    let fail = |reason: String| ForwardError::Iptables {
        netns: netns.display().to_string(),
        args: args.join(" "),
        reason,
    };
    let ns = File::open(netns).map_err(|e| fail(e.to_string()))?;
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new("iptables");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let enter = move || {
        // SAFETY: setns(2) with a descriptor that stays open until the spawn returns; it
        // touches no memory of ours.
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: `enter` runs in the forked child before exec and only calls setns(2), which
    // is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(enter);
    }
    let out = cmd.output().map_err(|e| fail(e.to_string()))?;
    drop(ns);
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn accept_loop(listener: &TcpListener, stopping: &AtomicBool, agent: &Endpoint) {
    loop {
        let conn = listener.accept();
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let conn = match conn {
            Ok((c, _)) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("port-forward: accept: {e}");
                return;
            }
        };
        let agent = agent.clone();
        let _ = std::thread::Builder::new()
            .name("port-forward conn".into())
            .spawn(move || forward(conn, &agent));
    }
}

/// The port a redirected connection was made to.
fn original_port(conn: &TcpStream) -> io::Result<u16> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: SO_ORIGINAL_DST writes at most `len` bytes of a sockaddr_in to `addr`, which
    // is that large, and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u16::from_be(addr.sin_port))
}

/// Relays one connection to the pod's port in the guest.
fn forward(conn: TcpStream, agent: &Endpoint) {
    let port = match original_port(&conn) {
        Ok(p) => p,
        Err(e) => {
            log::warn!("port-forward: a connection without its original port: {e}");
            return;
        }
    };
    let guest = match agent.open_stream(&Header::tcp(port)) {
        Ok(s) => s,
        Err(e) => {
            // containerd sees the connection close; kubectl reports the port as lost.
            log::info!("port-forward to port {port}: {e}");
            return;
        }
    };
    let (conn_in, guest_in) = match (conn.try_clone(), guest.try_clone()) {
        (Ok(c), Ok(g)) => (c, g),
        (Err(e), _) | (_, Err(e)) => {
            log::warn!("port-forward to port {port}: {e}");
            return;
        }
    };
    relay(
        RelayEnd {
            read: conn_in,
            write: conn,
            close_write: |s: &TcpStream| drop(s.shutdown(Shutdown::Write)),
        },
        RelayEnd {
            read: guest_in,
            write: guest,
            close_write: |s: &UnixStream| drop(s.shutdown(Shutdown::Write)),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_redirects_loopback_tcp_to_the_listener() {
        assert_eq!(
            redirect_rule("-A", 40123).join(" "),
            "-w -t nat -A OUTPUT -o lo -p tcp -d 127.0.0.1 -j REDIRECT --to-ports 40123"
        );
    }
}
