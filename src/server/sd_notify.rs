//! systemd's readiness protocol (`Type=notify`), without a crate: one datagram per state
//! change to the Unix socket named by `$NOTIFY_SOCKET` (a leading `@` names an abstract
//! socket). Without the variable (not started by systemd) every call is a no-op.
//!
//! Sent by `main`: `READY=1` once WAL recovery ran and every listener is bound, `STOPPING=1`
//! when the drain starts.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {socket:?}: {source}")]
    Send { socket: String, source: std::io::Error },
}

/// Sends `state` (e.g. `"READY=1"`) to systemd if `$NOTIFY_SOCKET` is set. Returns whether
/// something was sent.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    match std::env::var("NOTIFY_SOCKET") {
        Ok(socket) if !socket.is_empty() => {
            send(&socket, state).map_err(|source| NotifyError::Send { socket, source })?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Sends one datagram to `socket` (a path, or `@name` for an abstract socket).
pub fn send(socket: &str, state: &str) -> std::io::Result<()> {
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("psc-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn missing_socket_is_an_error() {
        assert!(send("/nonexistent/psc/notify.sock", "READY=1").is_err());
    }
}
