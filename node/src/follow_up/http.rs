//! The follow-up HTTP client (webhooks, GA4, SMS gateways): hyper's pooled HTTP/1.1
//! client, so connections to a receiver are kept alive between deliveries, behind our
//! own connector. The connector resolves the name itself and connects only to
//! addresses the egress policy allows ([`tsunagu_config::egress`]), checked after DNS
//! and right before connecting, so a name that rebinds to 127.0.0.1 or 169.254.169.254
//! after the webhook was registered gains nothing. TLS is rustls with the node's roots.
//!
//! Every exchange is bounded: the whole of it (connect, TLS, request, response, and any
//! redirects) by the delivery timeout, the connect step by [`CONNECT_TIMEOUT`] at most,
//! the response body by [`MAX_RESPONSE_BYTES`] (bigger is a failure) and its head by
//! hyper's buffer limit. Redirects: only 307 and 308 are followed (they keep the method
//! and body of a POST), at most [`MAX_REDIRECTS`], never from https to http, each hop
//! through the same connector (so checked again); `Authorization` is not sent to
//! another origin. Any other 3xx is a failed delivery.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, LOCATION, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tsunagu_api::{EgressLabel, EgressRefusals};
use tsunagu_config::egress::{EgressPolicy, Refusal};

/// The largest response body read (a receiver's answer is only looked at for its
/// status; the body is read so the connection can be reused).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Redirects (307/308) followed per delivery.
pub const MAX_REDIRECTS: usize = 3;
/// Time allowed to open one TCP connection (within the delivery timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Addresses of one name tried at most (a DNS answer can list hundreds).
const MAX_ADDRESSES: usize = 8;
/// Idle keep-alive connections are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Why the connector did not hand hyper a connection.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error("bad URL `{0}`")]
    BadUrl(String),
    #[error("{host} resolves to {addr}, {why}: not allowed (see notify.allowed_networks)")]
    Refused {
        host: String,
        addr: SocketAddr,
        why: Refusal,
    },
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error("connect to {0} failed: {1}")]
    Connect(String, String),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL `{0}`")]
    BadUrl(String),
    #[error("header `{0}` has a value HTTP does not allow")]
    BadHeader(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP with {0} failed: {1}")]
    Http(String, String),
    #[error("{0} answered with a body over {MAX_RESPONSE_BYTES} bytes")]
    TooLarge(String),
    #[error("{0} took longer than {1} ms")]
    Timeout(String, u64),
    #[error("redirect from {0}: {1}")]
    Redirect(String, String),
}

impl HttpError {
    /// Whether no later attempt can succeed (the URL or a header value itself is bad).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            HttpError::BadUrl(_)
                | HttpError::BadHeader(_)
                | HttpError::Connect(ConnectError::BadUrl(_))
        )
    }
}

/// What an error may show of a URL: its scheme, host and port, never its user part,
/// path or query (a GA4 URL carries an operator's `api_secret` in its query, an SMS
/// gateway's may carry credentials: a bad one was logged whole at every delivery and
/// kept in the outbox's last error, a review).
pub fn shown(url: &str) -> String {
    match tsunagu_config::egress::url_target(url) {
        Ok(t) => {
            let scheme = if t.tls { "https" } else { "http" };
            let host = if t.host.contains(':') {
                format!("[{}]", t.host)
            } else {
                t.host
            };
            format!("{scheme}://{host}:{}/…", t.port)
        }
        Err(_) => "(not shown)".to_string(),
    }
}

/// Parses an absolute http(s) URL with a host and no user name or password.
pub fn parse_url(url: &str) -> Result<Uri, HttpError> {
    let bad = || HttpError::BadUrl(shown(url));
    let uri: Uri = url.parse().map_err(|_| bad())?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad()),
    }
    // Host, port and user part as registration reads them (`url_target`); `http::Uri`
    // alone took a port that is not a number (and reported none), and port 0.
    tsunagu_config::egress::url_target(url).map_err(|_| bad())?;
    Ok(uri)
}

/// The `host:port` a URL delivers to (the unit of per-destination limits).
pub fn destination(uri: &Uri) -> String {
    let tls = uri.scheme_str() == Some("https");
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    format!("{host}:{port}")
}

/// Sends POSTs through the pool; built once per node.
pub struct Client {
    hyper: hyper_util::client::legacy::Client<GuardedConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Client {
    /// A client whose whole exchange takes at most `timeout`, verifying servers against
    /// `roots` (see [`crate::tls::trusted_roots`]) and connecting only where `policy`
    /// allows; refusals are counted in `refused` (stage `connect`).
    pub fn new(
        timeout: Duration,
        roots: rustls::RootCertStore,
        policy: EgressPolicy,
        refused: EgressRefusals,
        idle_per_destination: usize,
    ) -> Client {
        let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = GuardedConnector(Arc::new(Guard {
            policy,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            connect_timeout: CONNECT_TIMEOUT.min(timeout),
            refused,
        }));
        let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(idle_per_destination)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // Bounds what a response head may make us buffer.
            .http1_max_buf_size(16 * 1024)
            .http1_max_headers(64)
            .build(connector);
        Client { hyper, timeout }
    }

    /// POSTs `body` to `url` and returns the final response's status code.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<u16, HttpError> {
        let uri = parse_url(url)?;
        let limit = self.timeout.as_millis() as u64;
        let who = destination(&uri);
        tokio::time::timeout(
            self.timeout,
            self.exchange(uri, content_type, headers, body),
        )
        .await
        .map_err(|_| HttpError::Timeout(who, limit))?
    }

    async fn exchange(
        &self,
        first: Uri,
        content_type: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<u16, HttpError> {
        let mut uri = first.clone();
        let mut redirects = 0;
        loop {
            let who = destination(&uri);
            let same_origin =
                uri.scheme() == first.scheme() && uri.authority() == first.authority();
            let mut req = Request::post(uri.clone())
                .body(Full::new(body.clone()))
                .map_err(|_| HttpError::BadUrl(shown(&uri.to_string())))?;
            let h = req.headers_mut();
            h.insert(CONTENT_TYPE, header_value("content-type", content_type)?);
            h.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("tsunagu/", env!("CARGO_PKG_VERSION"))),
            );
            for (name, value) in headers {
                // Credentials for the configured origin are not handed to another one.
                if !same_origin && name.eq_ignore_ascii_case("authorization") {
                    continue;
                }
                let n = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| HttpError::BadHeader(name.to_string()))?;
                h.insert(n, header_value(name, value)?);
            }
            let resp = self
                .hyper
                .request(req)
                .await
                .map_err(|e| hyper_error(&who, &e))?;
            let status = resp.status().as_u16();
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_string);
            // Read (bounded) so that the connection can serve the next delivery.
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES).collect();
            if (200..300).contains(&status) {
                // The status decides: a 2xx is delivered whatever its body does (one
                // over the cap, a connection dropped after the status line, or a body
                // that never ends was a failure, and a delivered POST was sent again
                // up to `max_attempts` times, each one taken: a review). Its body gets
                // a second, then the connection goes.
                let _ = tokio::time::timeout(Duration::from_secs(1), body).await;
                return Ok(status);
            }
            body.await.map_err(|e| {
                if e.is::<LengthLimitError>() {
                    HttpError::TooLarge(who.clone())
                } else {
                    HttpError::Http(who.clone(), e.to_string())
                }
            })?;
            if !matches!(status, 307 | 308) {
                return Ok(status);
            }
            redirects += 1;
            if redirects > MAX_REDIRECTS {
                return Err(HttpError::Redirect(
                    who,
                    format!("more than {MAX_REDIRECTS} redirects"),
                ));
            }
            let location =
                location.ok_or_else(|| HttpError::Redirect(who.clone(), "no Location".into()))?;
            uri = redirect_target(&uri, &location).map_err(|e| HttpError::Redirect(who, e))?;
        }
    }
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, HttpError> {
    HeaderValue::from_str(value).map_err(|_| HttpError::BadHeader(name.to_string()))
}

/// Our connector's error when hyper failed to connect, else hyper's own.
fn hyper_error(who: &str, e: &hyper_util::client::legacy::Error) -> HttpError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(c) = err.downcast_ref::<ConnectError>() {
            return HttpError::Connect(c.clone());
        }
        source = err.source();
    }
    let mut text = e.to_string();
    if let Some(s) = std::error::Error::source(e) {
        text = format!("{text}: {s}");
    }
    HttpError::Http(who.to_string(), text)
}

/// Where a 307/308 sends the request next: an absolute http(s) URL, a scheme-relative
/// `//host/path`, or an absolute path on the same origin. Never from https to http.
fn redirect_target(base: &Uri, location: &str) -> Result<Uri, String> {
    let scheme = base.scheme_str().unwrap_or("http");
    let text = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with("//") {
        format!("{scheme}:{location}")
    } else if location.starts_with('/') {
        let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
        format!("{scheme}://{authority}{location}")
    } else {
        return Err(format!("unsupported Location `{location}`"));
    };
    let next = parse_url(&text).map_err(|e| e.to_string())?;
    if scheme == "https" && next.scheme_str() == Some("http") {
        return Err(format!("refused a downgrade to `{location}`"));
    }
    Ok(next)
}

/// The connector: resolve, check every address against the policy, connect to the
/// first allowed one that answers, then TLS for https.
#[derive(Clone)]
pub struct GuardedConnector(Arc<Guard>);

struct Guard {
    policy: EgressPolicy,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    refused: EgressRefusals,
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let guard = self.0.clone();
        Box::pin(async move { guard.connect(uri).await })
    }
}

impl Guard {
    async fn connect(&self, uri: Uri) -> Result<TokioIo<Stream>, ConnectError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(ConnectError::BadUrl(shown(&uri.to_string()))),
        };
        let host = uri
            .host()
            .ok_or_else(|| ConnectError::BadUrl(shown(&uri.to_string())))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addrs = self.allowed(host, port).await?;
        let tcp = self.first_answering(host, &addrs).await?;
        let _ = tcp.set_nodelay(true);
        if !tls {
            return Ok(TokioIo::new(Stream::Plain(tcp)));
        }
        let who = format!("{host}:{port}");
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| ConnectError::Tls(who.clone(), e.to_string()))?;
        let stream = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| ConnectError::Tls(who, e.to_string()))?;
        Ok(TokioIo::new(Stream::Tls(Box::new(stream))))
    }

    /// The addresses of `host` the policy allows (an IP literal is its own address);
    /// refused if there are none.
    async fn allowed(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ConnectError> {
        let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| ConnectError::Resolve(host.to_string(), e.to_string()))?
                .take(MAX_ADDRESSES)
                .collect(),
        };
        let mut refusal = None;
        let mut allowed = Vec::with_capacity(resolved.len());
        for addr in resolved {
            match self.policy.check(addr) {
                Ok(()) => allowed.push(addr),
                Err(why) => {
                    refusal.get_or_insert((addr, why));
                }
            }
        }
        match (allowed.is_empty(), refusal) {
            (false, _) => Ok(allowed),
            (true, Some((addr, why))) => {
                self.refused
                    .get_or_create(&EgressLabel {
                        stage: "connect",
                        class: why.as_str(),
                    })
                    .inc();
                Err(ConnectError::Refused {
                    host: host.to_string(),
                    addr,
                    why,
                })
            }
            (true, None) => Err(ConnectError::Resolve(
                host.to_string(),
                "no addresses".into(),
            )),
        }
    }

    async fn first_answering(
        &self,
        host: &str,
        addrs: &[SocketAddr],
    ) -> Result<TcpStream, ConnectError> {
        let mut last = String::new();
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer in {:?}", self.connect_timeout),
            }
        }
        Err(ConnectError::Connect(host.to_string(), last))
    }
}

/// A connection as hyper sees it: plain TCP or rustls over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Percent-encodes a query parameter value.
pub fn query_escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {

    /// An error about a URL shows its scheme, host and port only: never a secret in
    /// its query or user part.
    #[test]
    fn errors_show_no_secret_of_a_url() {
        let rows = [
            (
                "https://gw.example/send?api_secret=s3cret",
                "https://gw.example:443/…",
            ),
            (
                "http://[2001:db8::1]:8080/x?k=s3cret",
                "http://[2001:db8::1]:8080/…",
            ),
            ("https://SID:s3cret@gw.example/", "(not shown)"),
            ("ftp://gw.example/s3cret", "(not shown)"),
        ];
        for (url, want) in rows {
            assert_eq!(shown(url), want, "{url}");
        }
        let bad =
            "https://www.google-analytics.com:0/mp/collect?measurement_id=G-1&api_secret=s3cret";
        let e = parse_url(bad).unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
        let e = parse_url("https://SID:s3cret@gw.example/")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }
    use super::*;

    #[test]
    fn urls() {
        for (url, dest) in [
            ("http://127.0.0.1:8080/hook", "127.0.0.1:8080"),
            ("https://Example.com", "example.com:443"),
            ("https://example.com?a=1", "example.com:443"),
            ("http://[::1]:9000/x?y=z", "[::1]:9000"),
            ("http://[::1]/", "[::1]:80"),
        ] {
            assert_eq!(destination(&parse_url(url).unwrap()), dest, "{url}");
        }
        for bad in [
            "ftp://x/",
            "http://",
            "http://:80/",
            "http://h:port/",
            "http://u@h/",
            "http://u:p@127.0.0.1/",
            "http://[::1/",
            "http://h/a b",
            "/relative",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    /// Each row: the current URL, a Location, where the redirect goes (or an error).
    #[test]
    fn redirect_targets() {
        let rows: &[(&str, &str, Option<&str>)] = &[
            (
                "http://a.example/x",
                "/y?z=1",
                Some("http://a.example/y?z=1"),
            ),
            (
                "https://a.example:8443/x",
                "/y",
                Some("https://a.example:8443/y"),
            ),
            (
                "http://a.example/x",
                "https://b.example/",
                Some("https://b.example/"),
            ),
            (
                "https://a.example/x",
                "//b.example/p",
                Some("https://b.example/p"),
            ),
            ("https://a.example/x", "http://a.example/x", None),
            ("http://a.example/x", "y", None),
            ("http://a.example/x", "ftp://a.example/", None),
            ("http://a.example/x", "http://u@b.example/", None),
        ];
        for (base, location, want) in rows {
            let got = redirect_target(&parse_url(base).unwrap(), location).ok();
            assert_eq!(
                got.map(|u| u.to_string()).as_deref(),
                *want,
                "{base} -> {location}"
            );
        }
    }

    /// A real HTTP/1.1 server on an ephemeral loopback port: answers each request
    /// with what `answer(path)` returns (raw head and body), keeps connections open,
    /// and records the connections it accepted and the requests it read.
    struct TestServer {
        addr: SocketAddr,
        connections: Arc<std::sync::atomic::AtomicUsize>,
        requests: Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl TestServer {
        async fn start(answer: fn(&str, u16) -> String) -> TestServer {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
            // Every loopback address (127.0.0.2 too), on one ephemeral port.
            let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (c, r) = (connections.clone(), requests.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let r = r.clone();
                    tokio::spawn(async move {
                        let mut stream = BufReader::new(stream);
                        loop {
                            let mut head = String::new();
                            loop {
                                let mut line = String::new();
                                if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if line == "\r\n" {
                                    break;
                                }
                                head.push_str(&line);
                            }
                            let length: usize = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse().ok())?
                                })
                                .unwrap_or(0);
                            let mut body = vec![0; length];
                            if stream.read_exact(&mut body).await.is_err() {
                                return;
                            }
                            let path = head.split(' ').nth(1).unwrap_or("").to_string();
                            r.lock().unwrap().push(head);
                            let reply = answer(&path, addr.port());
                            if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            TestServer {
                addr,
                connections,
                requests,
            }
        }

        fn url(&self, path: &str) -> String {
            format!("http://127.0.0.1:{}{path}", self.addr.port())
        }

        fn connections(&self) -> usize {
            self.connections.load(std::sync::atomic::Ordering::SeqCst)
        }

        fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    fn client(allowed: &[&str]) -> (Client, EgressRefusals) {
        let refused = EgressRefusals::default();
        let policy = EgressPolicy {
            allowed: allowed.iter().map(|c| c.parse().unwrap()).collect(),
            own: Vec::new(),
            members: Default::default(),
        };
        let roots = rustls::RootCertStore::empty();
        let c = Client::new(Duration::from_secs(5), roots, policy, refused.clone(), 4);
        (c, refused)
    }

    fn answer(path: &str, port: u16) -> String {
        let redirect = |to: String| {
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
            )
        };
        match path {
            "/big" => format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                MAX_RESPONSE_BYTES + 1,
                "x".repeat(MAX_RESPONSE_BYTES + 1)
            ),
            "/big-refusal" => format!(
                "HTTP/1.1 500 Oops\r\nContent-Length: {}\r\n\r\n{}",
                MAX_RESPONSE_BYTES + 1,
                "x".repeat(MAX_RESPONSE_BYTES + 1)
            ),
            "/hop1" => redirect("/hop2".into()),
            "/hop2" => redirect(format!("http://127.0.0.1:{port}/hop3")),
            "/hop3" => redirect("/ok".into()),
            "/loop" => redirect("/loop".into()),
            "/elsewhere" => redirect(format!("http://127.0.0.2:{port}/ok")),
            "/moved" => "HTTP/1.1 301 Moved\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n".into(),
            // A body announced and never sent: the connection stays open, silent.
            "/endless" => "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\nstart".into(),
            _ => "HTTP/1.1 204 No Content\r\n\r\n".into(),
        }
    }

    const ANY: &[(&str, String)] = &[];

    /// Without an allow-list a loopback receiver is refused before any connection, and
    /// counted; with it, the same receiver gets the POST.
    #[tokio::test]
    async fn loopback_is_refused_at_connect_unless_allowed() {
        let server = TestServer::start(answer).await;
        let (strict, refused) = client(&[]);
        let err = strict
            .post(&server.url("/hook"), "application/json", ANY, Bytes::new())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                HttpError::Connect(ConnectError::Refused {
                    why: Refusal::Loopback,
                    ..
                })
            ),
            "{err}"
        );
        // A name that resolves to loopback (DNS rebinding) is refused the same way.
        let by_name = format!("http://localhost:{}/hook", server.addr.port());
        let err = strict
            .post(&by_name, "application/json", ANY, Bytes::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, HttpError::Connect(ConnectError::Refused { .. })),
            "{err}"
        );
        let label = EgressLabel {
            stage: "connect",
            class: "loopback",
        };
        assert_eq!(refused.get_or_create(&label).get(), 2);
        // Any other spelling of 127.0.0.1 that the resolver understands (glibc does
        // inet_aton's) ends up as the same refused address; one it does not is no
        // address at all.
        for host in ["127.1", "2130706433", "0x7f.0.0.1"] {
            let odd = format!("http://{host}:{}/hook", server.addr.port());
            let err = strict
                .post(&odd, "application/json", ANY, Bytes::new())
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    HttpError::Connect(ConnectError::Refused { .. } | ConnectError::Resolve(..))
                ),
                "{host}: {err}"
            );
        }
        assert_eq!(server.connections(), 0, "nothing reached the receiver");
        let (open, _) = client(&["127.0.0.0/8"]);
        let code = open
            .post(&server.url("/hook"), "application/json", ANY, Bytes::new())
            .await
            .unwrap();
        assert_eq!(code, 204);
    }

    #[tokio::test]
    async fn connections_are_kept_alive_between_posts() {
        let server = TestServer::start(answer).await;
        let (c, _) = client(&["127.0.0.1/32"]);
        for _ in 0..3 {
            let code = c
                .post(
                    &server.url("/hook"),
                    "application/json",
                    ANY,
                    Bytes::from("{}"),
                )
                .await
                .unwrap();
            assert_eq!(code, 204);
        }
        assert_eq!(server.requests().len(), 3);
        assert_eq!(server.connections(), 1, "one pooled connection");
    }

    /// A refusal with a body over the cap fails as too large (nothing more is read);
    /// a 2xx with one is delivered, once: its status decides (it was a failure, and
    /// the delivered POST was sent again).
    #[tokio::test]
    async fn a_response_over_the_cap_fails() {
        let server = TestServer::start(answer).await;
        let (c, _) = client(&["127.0.0.1/32"]);
        let err = c
            .post(
                &server.url("/big-refusal"),
                "application/json",
                ANY,
                Bytes::new(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::TooLarge(_)), "{err}");
        let code = c
            .post(&server.url("/big"), "application/json", ANY, Bytes::new())
            .await
            .unwrap();
        assert_eq!(code, 200);
    }

    /// A 2xx whose body never ends is delivered a second after its status line, well
    /// within the delivery timeout (5 s here): waiting for the body ran into the
    /// timeout, a failure, and the delivered POST was sent again (a review).
    #[tokio::test]
    async fn a_2xx_whose_body_never_ends_is_delivered_within_a_second_or_two() {
        let server = TestServer::start(answer).await;
        let (c, _) = client(&["127.0.0.1/32"]);
        let started = std::time::Instant::now();
        let code = c
            .post(
                &server.url("/endless"),
                "application/json",
                ANY,
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(code, 200);
        let took = started.elapsed();
        assert!(
            (Duration::from_millis(900)..Duration::from_secs(3)).contains(&took),
            "{took:?}"
        );
        assert_eq!(server.requests().len(), 1, "sent once");
    }

    /// 307/308 are followed up to the limit, each hop checked again; credentials do
    /// not follow to another origin; other 3xx are answers, not redirects.
    #[tokio::test]
    async fn redirects_are_bounded_and_checked_per_hop() {
        let server = TestServer::start(answer).await;
        let (c, refused) = client(&["127.0.0.1/32"]);
        let auth = [("Authorization", "Bearer k".to_string())];
        let code = c
            .post(&server.url("/hop1"), "text/plain", &auth, Bytes::from("x"))
            .await
            .unwrap();
        assert_eq!(code, 204, "three redirects followed");
        let seen = server.requests();
        assert_eq!(seen.len(), 4);
        assert!(seen.iter().all(|h| h.starts_with("POST ")), "{seen:?}");
        assert!(
            seen.iter()
                .all(|h| h.to_ascii_lowercase().contains("authorization: bearer k")),
            "same origin keeps credentials"
        );
        let err = c
            .post(&server.url("/loop"), "text/plain", ANY, Bytes::new())
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Redirect(..)), "{err}");
        // A hop to an address the policy does not allow (127.0.0.2 is not listed).
        let err = c
            .post(&server.url("/elsewhere"), "text/plain", &auth, Bytes::new())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                HttpError::Connect(ConnectError::Refused {
                    why: Refusal::Loopback,
                    ..
                })
            ),
            "{err}"
        );
        assert_eq!(
            refused
                .get_or_create(&EgressLabel {
                    stage: "connect",
                    class: "loopback"
                })
                .get(),
            1
        );
        let code = c
            .post(&server.url("/moved"), "text/plain", ANY, Bytes::new())
            .await
            .unwrap();
        assert_eq!(code, 301, "a 301 is not followed");
    }

    #[tokio::test]
    async fn credentials_stay_with_their_origin() {
        let server = TestServer::start(answer).await;
        let (c, _) = client(&["127.0.0.0/8"]);
        let auth = [("Authorization", "Bearer k".to_string())];
        let code = c
            .post(&server.url("/elsewhere"), "text/plain", &auth, Bytes::new())
            .await
            .unwrap();
        assert_eq!(code, 204);
        let seen = server.requests();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[0].to_ascii_lowercase().contains("authorization"));
        assert!(
            !seen[1].to_ascii_lowercase().contains("authorization"),
            "not sent to 127.0.0.2: {}",
            seen[1]
        );
    }

    #[test]
    fn query_escaping() {
        assert_eq!(query_escaped("G-AB12"), "G-AB12");
        assert_eq!(query_escaped("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
