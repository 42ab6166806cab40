//! kubectl port-forward, the guest's end: a `tcp` stream from the host becomes a TCP
//! connection to `127.0.0.1:<port>` in the pod's network (the VM's; every container of a
//! pod shares it), relayed both ways until each side has shut down its writing half.
//! The host's end is `hull_host::portforward`.

use std::net::{Ipv4Addr, Shutdown, TcpStream};

use hull_protocol::stream::{relay, RelayEnd};

use super::stdio::Connection;

/// Connects to `port` and answers `OK` on `conn`, then relays until both directions end.
/// A refused connection comes back with the reason, for the caller to answer.
pub fn serve(port: u16, mut conn: Connection) -> Result<(), (String, Connection)> {
    let tcp = match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
        Ok(t) => t,
        Err(e) => return Err((format!("127.0.0.1:{port} in the pod: {e}"), conn)),
    };
    let (tcp_in, conn_in) = match (tcp.try_clone(), conn.try_clone()) {
        (Ok(t), Ok(c)) => (t, c),
        (Err(e), _) | (_, Err(e)) => return Err((format!("relaying port {port}: {e}"), conn)),
    };
    if conn.accept().is_err() {
        return Ok(());
    }
    relay(
        RelayEnd {
            read: conn_in,
            write: conn,
            close_write: Connection::shutdown_write,
        },
        RelayEnd {
            read: tcp_in,
            write: tcp,
            close_write: |t: &TcpStream| drop(t.shutdown(Shutdown::Write)),
        },
    );
    Ok(())
}
