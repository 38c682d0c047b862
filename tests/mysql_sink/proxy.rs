//! A TCP proxy in front of MariaDB that can cut a connection at its next `COMMIT`: before
//! forwarding it (the server rolls back) or after the server answered it (the server
//! committed, the client never hears so). Both leave the client with an unknown outcome.
//!
//! It reads the client's MySQL packets (3-byte length, sequence byte, payload; no TLS, no
//! compression) and copies the server's bytes through. Every socket has a read timeout, so no
//! thread waits forever; the threads end when their sockets close.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(60);
const COM_QUERY_COMMIT: &[u8] = b"\x03COMMIT";

/// Where the next `COMMIT` is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    BeforeCommit,
    AfterCommit,
}

pub struct Proxy {
    pub port: u16,
    armed: Arc<Mutex<Option<Cut>>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (free port) and forwards every connection to `upstream_port`.
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let armed: Arc<Mutex<Option<Cut>>> = Arc::default();
        let shared = armed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                pump_pair(client, server, shared.clone());
            }
        });
        Proxy { port, armed }
    }

    /// The next `COMMIT` through the proxy is cut at `cut`.
    pub fn arm(&self, cut: Cut) {
        *self.armed.lock().unwrap() = Some(cut);
    }

    /// Whether the armed cut happened.
    pub fn fired(&self) -> bool {
        self.armed.lock().unwrap().is_none()
    }
}

fn pump_pair(client: TcpStream, server: TcpStream, armed: Arc<Mutex<Option<Cut>>>) {
    for s in [&client, &server] {
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    }
    let swallow = Arc::new(AtomicBool::new(false));
    let (c2, s2, sw2) = (client.try_clone().unwrap(), server.try_clone().unwrap(), swallow.clone());
    std::thread::spawn(move || server_to_client(s2, c2, sw2));
    std::thread::spawn(move || client_to_server(client, server, armed, swallow));
}

fn client_to_server(
    mut client: TcpStream,
    mut server: TcpStream,
    armed: Arc<Mutex<Option<Cut>>>,
    swallow: Arc<AtomicBool>,
) {
    let mut header = [0u8; 4];
    while client.read_exact(&mut header).is_ok() {
        let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        let mut payload = vec![0u8; len];
        if client.read_exact(&mut payload).is_err() {
            break;
        }
        let cut = if payload == COM_QUERY_COMMIT { armed.lock().unwrap().take() } else { None };
        if cut == Some(Cut::BeforeCommit) {
            break;
        }
        if cut == Some(Cut::AfterCommit) {
            swallow.store(true, Ordering::SeqCst);
        }
        if server.write_all(&header).and_then(|()| server.write_all(&payload)).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    if !swallow.load(Ordering::SeqCst) {
        let _ = server.shutdown(Shutdown::Both);
    }
}

/// Copies the server's bytes to the client; once `swallow` is set, the next bytes (the
/// answer to the COMMIT) are read and dropped and both sockets are closed.
fn server_to_client(mut server: TcpStream, mut client: TcpStream, swallow: Arc<AtomicBool>) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = server.read(&mut buf) {
        if n == 0 {
            break;
        }
        if swallow.load(Ordering::SeqCst) {
            break;
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}
