//! One HTTP/1.1 link to a ClickHouse server's HTTP interface, with a timeout on every step.
//!
//! hyper's low-level client (`hyper::client::conn::http1`) on a tokio `TcpStream`: no pool, so
//! this type alone decides when a TCP connection is opened, reused or dropped, and so knows
//! whether a request can have reached the server:
//! - a link idle for [`IDLE_REUSE`] or longer, or closed by the server, is replaced *before*
//!   a request is sent (the server's `keep_alive_timeout` is 3 s by default), so a request is
//!   not lost to a close that crossed it on the wire;
//! - `try_send_request` hands back a request hyper never wrote: that is [`HttpError::Connect`]
//!   (nothing sent), anything after is [`HttpError::Lost`] (maybe sent);
//! - every socket has `SO_LINGER` 0, so dropping a link (after a timeout, say) resets it:
//!   the server discards bytes it has not read yet instead of running a request it finished
//!   reading after the client gave up. `super` relies on this in its exactly-once argument.
//!
//! The connection future runs in a spawned tokio task (a current-thread runtime is enough),
//! aborted when the link is dropped. Answers are read whole, at most [`ANSWER_BYTES_MAX`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A link idle this long is replaced before the next request (below the server's default
/// `keep_alive_timeout` of 3 s).
pub const IDLE_REUSE: Duration = Duration::from_millis(2000);
/// Largest answer read; the sink's queries return a few rows.
pub const ANSWER_BYTES_MAX: usize = 16 << 20;
/// Longest server error message kept.
const MESSAGE_CHARS_MAX: usize = 1000;

/// Where a server listens: `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `http://host:port` (a trailing `/` allowed); why not, otherwise.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url.strip_prefix("http://").ok_or("must look like http://host:port (no TLS)")?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or("must name the port: http://host:port")?;
        let port: u16 = port.parse().map_err(|_| format!("`{port}` is not a port"))?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._:".contains(&b);
        if host.is_empty() || port == 0 || !host.bytes().all(plain) {
            return Err("must look like http://host:port with a plain host name or address".into());
        }
        Ok(Endpoint { host: host.to_owned(), port })
    }

    /// `http://host:port`, as logs show it.
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

/// Why a request failed, sorted by whether it may have reached the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Nothing was sent: connect failed or timed out, or the link was closed before the
    /// request was written.
    #[error("cannot reach {0}")]
    Connect(String),
    /// The request may have been sent (whole or in part); no complete answer came back.
    #[error("no complete answer: {0}")]
    Lost(String),
    /// The server answered with an error. `code` is ClickHouse's error code, 0 if none.
    #[error("server error {code} (HTTP {status}): {message}")]
    Server { status: u16, code: u32, message: String },
}

struct Link {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
    idle_since: Instant,
}

impl Drop for Link {
    fn drop(&mut self) {
        // Drops the connection and its socket (SO_LINGER 0: a reset).
        self.task.abort();
    }
}

/// An HTTP client of one server: at most one TCP connection, opened when needed.
pub struct Http {
    endpoint: Endpoint,
    /// (user, password) headers, if a user is configured.
    auth: Option<(String, String)>,
    connect_timeout: Duration,
    query_timeout: Duration,
    link: Option<Link>,
}

impl Http {
    pub fn new(endpoint: Endpoint, user: &str, password: &str, connect_ms: u64, query_ms: u64) -> Http {
        let auth = (!user.is_empty()).then(|| (user.to_owned(), password.to_owned()));
        Http {
            endpoint,
            auth,
            connect_timeout: Duration::from_millis(connect_ms),
            query_timeout: Duration::from_millis(query_ms),
            link: None,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The longest one request may take.
    pub fn query_timeout(&self) -> Duration {
        self.query_timeout
    }

    /// POSTs `body` to `/?<params>` and returns the answer's body. `params` are
    /// (name, value) pairs, percent-encoded here. `gzipped`: the body is gzip data.
    pub async fn post(
        &mut self,
        params: &[(&str, &str)],
        body: Bytes,
        gzipped: bool,
    ) -> Result<Bytes, HttpError> {
        let target = target(params);
        match tokio::time::timeout(self.query_timeout, self.exchange(&target, body, gzipped)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.link = None;
                Err(e)
            }
            Err(_) => {
                self.link = None;
                Err(HttpError::Lost(format!("timed out after {:?}", self.query_timeout)))
            }
        }
    }

    async fn exchange(&mut self, target: &str, body: Bytes, gzipped: bool) -> Result<Bytes, HttpError> {
        let mut request = Some(self.request(target, body, gzipped)?);
        // A link found closed, or closed under the request before hyper wrote it, is replaced
        // once: nothing was sent on it.
        for attempt in 0..2 {
            self.ready_link().await?;
            let (Some(link), Some(req)) = (self.link.as_mut(), request.take()) else { break };
            match link.sender.try_send_request(req).await {
                Ok(response) => return self.read_answer(response).await,
                Err(mut e) => match e.take_message() {
                    Some(unsent) if attempt == 0 => {
                        self.link = None;
                        request = Some(unsent);
                    }
                    Some(_) => return Err(HttpError::Connect(format!("link closed: {}", e.error()))),
                    None => return Err(HttpError::Lost(e.error().to_string())),
                },
            }
        }
        Err(HttpError::Connect("link closed twice before the request was sent".into()))
    }

    fn request(&self, target: &str, body: Bytes, gzipped: bool) -> Result<Request<Full<Bytes>>, HttpError> {
        let host = format!("{}:{}", self.endpoint.host, self.endpoint.port);
        let mut builder = Request::post(target).header(hyper::header::HOST, host);
        if gzipped {
            builder = builder.header(hyper::header::CONTENT_ENCODING, "gzip");
        }
        if let Some((user, password)) = &self.auth {
            builder = builder.header("X-ClickHouse-User", user).header("X-ClickHouse-Key", password);
        }
        builder.body(Full::new(body)).map_err(|e| HttpError::Connect(format!("bad request: {e}")))
    }

    /// Keeps the current link if it is fresh and open, else opens a new one.
    async fn ready_link(&mut self) -> Result<(), HttpError> {
        let stale =
            self.link.as_ref().is_none_or(|l| l.sender.is_closed() || l.idle_since.elapsed() >= IDLE_REUSE);
        if stale {
            self.link = None;
            self.link = Some(self.connect().await?);
        }
        let ready = match self.link.as_mut() {
            Some(link) => link.sender.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            self.link = None;
            return Err(HttpError::Connect("link closed before the request".into()));
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Link, HttpError> {
        let addr = (self.endpoint.host.as_str(), self.endpoint.port);
        let url = self.endpoint.url();
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(HttpError::Connect(format!("{url}: {e}"))),
            Err(_) => return Err(HttpError::Connect(format!("{url}: connect timed out"))),
        };
        let sock = socket2::SockRef::from(&stream);
        let options = sock.set_linger(Some(Duration::ZERO)).and_then(|()| stream.set_nodelay(true));
        options.map_err(|e| HttpError::Connect(format!("{url}: socket options: {e}")))?;
        let handshake = http1::handshake(TokioIo::new(stream));
        let (sender, connection) = match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(HttpError::Connect(format!("{url}: {e}"))),
            Err(_) => return Err(HttpError::Connect(format!("{url}: handshake timed out"))),
        };
        let task = tokio::spawn(async move {
            // Its error reaches the request that was in flight; nothing to add here.
            let _ = connection.await;
        });
        Ok(Link { sender, task, idle_since: Instant::now() })
    }

    async fn read_answer(
        &mut self,
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Bytes, HttpError> {
        let status = response.status();
        let header_code = response
            .headers()
            .get("X-ClickHouse-Exception-Code")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok());
        let body = Limited::new(response.into_body(), ANSWER_BYTES_MAX).collect().await;
        let body = body.map_err(|e| HttpError::Lost(format!("reading the answer: {e}")))?.to_bytes();
        if let Some(link) = self.link.as_mut() {
            link.idle_since = Instant::now();
        }
        if status == StatusCode::OK {
            return Ok(body);
        }
        let text = String::from_utf8_lossy(&body);
        let code = header_code.or_else(|| error_code(&text)).unwrap_or(0);
        let message: String = text.trim().chars().take(MESSAGE_CHARS_MAX).collect();
        Err(HttpError::Server { status: status.as_u16(), code, message })
    }
}

/// ClickHouse's error code in an error text: `Code: 60, e.displayText() = …` (18.x) or
/// `Code: 60. DB::Exception: …` (later versions).
pub fn error_code(text: &str) -> Option<u32> {
    let at = text.find("Code: ")? + "Code: ".len();
    let digits: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `/?name=value&…`, percent-encoded.
fn target(params: &[(&str, &str)]) -> String {
    let mut out = String::from("/?");
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(name, &mut out);
        out.push('=');
        percent_encode(value, &mut out);
    }
    out
}

fn percent_encode(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print() {
        let e = Endpoint::parse("http://127.0.0.1:8123/").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.url()), ("127.0.0.1", 8123, "http://127.0.0.1:8123".into()));
        let v6 = Endpoint::parse("http://[::1]:9").unwrap();
        assert_eq!((v6.host.as_str(), v6.url()), ("::1", "http://[::1]:9".into()));
        for bad in ["https://a:1", "http://a", "http://a:0", "http://:5", "http://a b:1", "http://a:1/x"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_codes_of_both_message_styles() {
        let old =
            "Code: 60, e.displayText() = DB::Exception: Table psc.x doesn't exist., e.what() = DB::Exception";
        assert_eq!(error_code(old), Some(60));
        assert_eq!(error_code("Code: 516. DB::Exception: default: Authentication failed"), Some(516));
        assert_eq!(error_code("Bad Gateway"), None);
    }

    #[test]
    fn targets_are_percent_encoded() {
        let t = target(&[("query", "INSERT INTO `psc`.events FORMAT Native"), ("query_id", "a-b")]);
        assert_eq!(t, "/?query=INSERT%20INTO%20%60psc%60.events%20FORMAT%20Native&query_id=a-b");
    }
}
