//! Where the agent listens: vsock ports in a guest, unix sockets in a directory when served
//! on a host. The RPC port goes to the ttrpc server; the stream port is served here.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hull_protocol::ports::{unix_socket_name, AGENT_PORT, STREAM_PORT};
use hull_protocol::rpc::{agent_ttrpc, ttrpc};
use hull_protocol::stream::{read_header, reply_line};

use crate::service::{Connection, Service};

/// How long a stream connection may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub enum Listen {
    /// AF_VSOCK, any CID: the guest agent.
    Vsock,
    /// One unix socket per port in this directory: the agent served on a host.
    UnixDir(PathBuf),
}

fn listener(listen: &Listen, port: u32) -> std::io::Result<OwnedFd> {
    match listen {
        Listen::UnixDir(dir) => {
            let path = dir.join(unix_socket_name(port));
            let _ = std::fs::remove_file(&path);
            Ok(UnixListener::bind(&path)?.into())
        }
        Listen::Vsock => {
            // SAFETY: plain syscall; the result is checked before use.
            let fd =
                unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: socket returned a fresh fd that only this OwnedFd owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_vm is plain data; zero is a valid start.
            let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
            addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            addr.svm_cid = libc::VMADDR_CID_ANY;
            addr.svm_port = port;
            // SAFETY: `addr` is a valid sockaddr_vm and its size is passed with it.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_vm).cast(),
                    std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                )
            };
            // SAFETY: listen on a bound socket we own.
            if rc != 0 || unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(fd)
        }
    }
}

/// Starts serving; the returned server must be kept alive.
pub fn serve(service: Arc<Service>, listen: &Listen) -> Result<ttrpc::Server, String> {
    let rpc = listener(listen, AGENT_PORT)
        .map_err(|e| format!("listening on the RPC port {AGENT_PORT}: {e}"))?;
    let streams = listener(listen, STREAM_PORT)
        .map_err(|e| format!("listening on the stream port {STREAM_PORT}: {e}"))?;
    // Two method-handler threads per connection to start with (ttrpc wants more than the
    // minimum), and a spare made whenever fewer than one is idle: each thread costs dozens
    // of syscalls, expensive in a guest (ttrpc's default starts three). Up to 64 may block
    // at once (WaitProcess for every container of a pod, each on the shim's one
    // connection); ttrpc's default of 5 would stall the sixth call behind them.
    let mut server = ttrpc::Server::new()
        .set_thread_count_default(2)
        .set_thread_count_min(1)
        .set_thread_count_max(64)
        .add_listener(rpc.into_raw_fd())
        .map_err(|e| format!("RPC listener: {e}"))?
        .register_service(agent_ttrpc::create_agent(service.clone()));
    server
        .start()
        .map_err(|e| format!("starting the RPC server: {e}"))?;
    std::thread::Builder::new()
        .name("streams".into())
        .spawn(move || accept_streams(streams, service))
        .map_err(|e| e.to_string())?;
    Ok(server)
}

fn accept_streams(listener: OwnedFd, service: Arc<Service>) {
    loop {
        // SAFETY: accept4 on our listening socket; null address pointers are allowed.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::ECONNABORTED) => continue,
                // Out of fds or memory: back off instead of spinning.
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        // SAFETY: accept4 returned a fresh fd that only this OwnedFd owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let service = service.clone();
        let _ = std::thread::Builder::new()
            .name("stream header".into())
            .spawn(move || handle_stream(fd, &service));
    }
}

fn handle_stream(fd: OwnedFd, service: &Service) {
    let mut conn = Connection::new(fd);
    conn.set_read_timeout(Some(HEADER_TIMEOUT));
    let header = match read_header(&mut conn) {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            let _ = conn.write_all(reply_line(&Err(e.to_string())).as_bytes());
            return;
        }
        Err(_) => return, // timed out or hung up before the header
    };
    conn.set_read_timeout(None);
    // On success the service answers OK itself, before the first stream byte.
    if let Err((reason, mut conn)) = service.attach(&header, conn) {
        let _ = conn.write_all(reply_line(&Err(reason)).as_bytes());
    }
}
