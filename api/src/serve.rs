//! Serving the API over TCP with the limits `axum::serve` lacks: a cap on connections
//! (in total and per client address), a deadline for a request's headers (hyper's
//! header-read timeout, which also ends idle keep-alive connections), an idle timeout
//! for connections on which nothing moves (a client that stopped reading a response),
//! and a deadline for each handler's answer (slow request bodies included).
//!
//! [`ConnTable`] decides admission (pure); [`serve`] is the accept loop around it;
//! [`IdleTimeout`] wraps each connection's stream.

use crate::client::PeerAddr;
use crate::idle::IdleTimeout;
use crate::limit::address_key;
use crate::metrics::{ApiMetrics, ReasonLabel};
use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tsunagu_config::{ApiConfig, Cidr};

/// The limits one listener serves under.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    pub max_connections: u32,
    pub max_connections_per_address: u32,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    /// Peers not capped per address (they carry many clients' connections).
    pub trusted_proxies: Vec<Cidr>,
}

impl ServeLimits {
    pub fn from_config(c: &ApiConfig) -> ServeLimits {
        ServeLimits {
            max_connections: c.max_connections,
            max_connections_per_address: c.max_connections_per_address,
            header_timeout: Duration::from_secs(c.header_timeout_seconds.into()),
            idle_timeout: Duration::from_secs(c.idle_timeout_seconds.into()),
            request_timeout: Duration::from_secs(c.request_timeout_seconds.into()),
            trusted_proxies: c.trusted_proxies.clone(),
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerAddress,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerAddress => "per_address",
        }
    }
}

/// Open connections, in total and per address key. Entries leave the map at zero, so
/// it never holds more than `max_total` addresses.
#[derive(Debug)]
pub struct ConnTable {
    max_total: u32,
    max_per_address: u32,
    exempt: Vec<Cidr>,
    total: u32,
    per_address: HashMap<IpAddr, u32>,
}

impl ConnTable {
    pub fn new(limits: &ServeLimits) -> ConnTable {
        ConnTable {
            max_total: limits.max_connections,
            max_per_address: limits.max_connections_per_address,
            exempt: limits.trusted_proxies.clone(),
            total: 0,
            per_address: HashMap::new(),
        }
    }

    /// Admits a connection from `ip`, or says which cap it would pass.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.total >= self.max_total {
            return Err(Refusal::Total);
        }
        if !self.exempt.iter().any(|c| c.contains(ip)) {
            let n = self.per_address.entry(address_key(ip)).or_insert(0);
            if *n >= self.max_per_address {
                if *n == 0 {
                    self.per_address.remove(&address_key(ip));
                }
                return Err(Refusal::PerAddress);
            }
            *n += 1;
        }
        self.total += 1;
        Ok(())
    }

    /// A connection admitted for `ip` closed.
    pub fn release(&mut self, ip: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if self.exempt.iter().any(|c| c.contains(ip)) {
            // Never counted per address (a proxy sharing its /64 with others would
            // otherwise free their places).
            return;
        }
        let key = address_key(ip);
        if let Some(n) = self.per_address.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_address.remove(&key);
            }
        }
    }

    pub fn open(&self) -> u32 {
        self.total
    }
}

/// Releases its connection's place in the table when the connection ends.
struct Admitted {
    table: Arc<Mutex<ConnTable>>,
    ip: IpAddr,
    metrics: ApiMetrics,
    closed: Arc<tokio::sync::Notify>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(self.ip);
        self.metrics.connections.dec();
        self.closed.notify_waiters();
    }
}

/// 408 for a request whose handler did not answer in time (its body may be unread:
/// the connection is closed after it).
fn request_timeout_response() -> Response<Body> {
    let body = serde_json::json!({"error": {"code": "request_timeout", "message": "the request took too long (api.request_timeout_seconds)", "field": null}});
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

/// Accepts connections on `listener` and serves `app` on each until `shutdown`
/// resolves; then stops accepting, lets open connections finish their current request
/// (graceful shutdown) and returns when they closed or after 10 s.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    metrics: ApiMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let table = Arc::new(Mutex::new(ConnTable::new(&limits)));
    let closed = Arc::new(tokio::sync::Notify::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: the error repeats until a descriptor frees
                    // up, so back off instead of spinning on accept.
                    metrics.accept_errors.inc();
                    tracing::warn!(error = %e, "API accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(peer.ip());
        if let Err(refusal) = admitted {
            metrics
                .connections_refused
                .get_or_create(&ReasonLabel {
                    reason: refusal.as_str(),
                })
                .inc();
            drop(stream);
            continue;
        }
        metrics.connections.inc();
        let guard = Admitted {
            table: table.clone(),
            ip: peer.ip(),
            metrics: metrics.clone(),
            closed: closed.clone(),
        };
        tokio::spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            limits.clone(),
            metrics.clone(),
            stop_rx.clone(),
            guard,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = async {
        loop {
            let notified = closed.notified();
            if table.lock().unwrap_or_else(|p| p.into_inner()).open() == 0 {
                return;
            }
            notified.await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), drained).await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Arc<ServeLimits>,
    metrics: ApiMetrics,
    mut stop: tokio::sync::watch::Receiver<bool>,
    _admitted: Admitted,
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(IdleTimeout::new(
        stream,
        limits.idle_timeout,
        metrics.clone(),
    ));
    let request_timeout = limits.request_timeout;
    let m = metrics.clone();
    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        let mut app = app.clone();
        let m = m.clone();
        async move {
            let call = tower_service::Service::call(&mut app, req.map(Body::new));
            match tokio::time::timeout(request_timeout, call).await {
                Ok(answer) => answer,
                Err(_) => {
                    m.timeouts
                        .get_or_create(&ReasonLabel { reason: "request" })
                        .inc();
                    Ok(request_timeout_response())
                }
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let stopping = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics
                .timeouts
                .get_or_create(&ReasonLabel { reason: "header" })
                .inc();
        }
        tracing::debug!(%peer, error = %e, "API connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `router` on a loopback port with roomy limits.
    async fn serve_on_loopback(router: Router) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ServeLimits {
            max_connections: 10,
            max_connections_per_address: 10,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            trusted_proxies: Vec::new(),
        };
        let metrics = ApiMetrics::default();
        tokio::spawn(serve(
            listener,
            router,
            limits,
            metrics,
            std::future::pending(),
        ));
        addr
    }

    /// Sends a request's head with `Expect: 100-continue` and no body; the connection
    /// and the first answer (a 100 Continue, or the final one).
    async fn first_answer(
        addr: SocketAddr,
        key: &str,
        method: &str,
        path: &str,
        length: u64,
    ) -> (TcpStream, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nExpect: 100-continue\r\n\
             Content-Length: {length}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer before any body byte")
            .unwrap();
        (s, String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// A request whose declared body is over its route's limit, sent with `Expect:
    /// 100-continue`, is answered 413 at once: the client is not told to send the
    /// body (it was, and then refused at the limit). A body within the limit is asked
    /// for with 100 Continue, the prompt route's larger limit included.
    #[tokio::test]
    async fn a_body_declared_too_large_is_refused_before_100_continue() {
        let a = crate::testing::api();
        let addr = serve_on_loopback(a.router.clone()).await;
        let prompt_limit = crate::prompts::BODY_LIMIT as u64;
        let rows: &[(&str, &str, u64, &str)] = &[
            ("POST", "/v1/numbers", 3_000_000, "HTTP/1.1 413"),
            ("POST", "/v1/numbers", 2 * 1024 * 1024 + 1, "HTTP/1.1 413"),
            ("POST", "/v1/numbers", 1_000, "HTTP/1.1 100"),
            ("PUT", "/v1/prompts/welcome", 3_000_000, "HTTP/1.1 100"),
            (
                "PUT",
                "/v1/prompts/welcome",
                prompt_limit + 1,
                "HTTP/1.1 413",
            ),
            ("POST", "/v1/pools/pool_x/issue", 1_000_000, "HTTP/1.1 413"),
        ];
        for (method, path, length, want) in rows {
            let (_s, answer) = first_answer(addr, &a.key, method, path, *length).await;
            assert!(
                answer.starts_with(want),
                "{method} {path} {length}: {answer}"
            );
            if want.ends_with("413") {
                assert!(answer.contains("too_large"), "{answer}");
            }
        }
    }

    /// Prompt uploads take a place before their body is read: past the operator's two
    /// (`api.max_prompt_uploads_per_operator`) the next is refused 503 with
    /// Retry-After at once, not asked for its body; a place given back (the client
    /// went away) is taken by the next.
    #[tokio::test]
    async fn prompt_uploads_past_the_cap_are_refused_before_their_body() {
        let a = crate::testing::api();
        let addr = serve_on_loopback(a.router.clone()).await;
        let upload = |name: &'static str| first_answer(addr, &a.key, "PUT", name, 3_000_000);
        let (first, answer) = upload("/v1/prompts/one").await;
        assert!(answer.starts_with("HTTP/1.1 100"), "{answer}");
        let (_second, answer) = upload("/v1/prompts/two").await;
        assert!(answer.starts_with("HTTP/1.1 100"), "{answer}");
        let (_third, answer) = upload("/v1/prompts/three").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 5"),
            "{answer}"
        );
        drop(first);
        let freed = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_again, answer) = upload("/v1/prompts/three").await;
            if answer.starts_with("HTTP/1.1 100") {
                break;
            }
            assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
            assert!(
                tokio::time::Instant::now() < freed,
                "the place was never given back"
            );
            tokio::task::yield_now().await;
        }
    }

    fn table(total: u32, per: u32) -> ConnTable {
        ConnTable::new(&ServeLimits {
            max_connections: total,
            max_connections_per_address: per,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            trusted_proxies: vec!["10.0.0.1/32".parse().unwrap()],
        })
    }

    /// (open or close, address, expected admission) in order.
    #[test]
    fn caps_in_total_and_per_address() {
        use Refusal::*;
        let steps: &[(bool, &str, Result<(), Refusal>)] = &[
            (true, "192.0.2.1", Ok(())),
            (true, "192.0.2.1", Ok(())),
            (true, "192.0.2.1", Err(PerAddress)),
            (true, "192.0.2.2", Ok(())),
            (true, "10.0.0.1", Ok(())),
            (true, "10.0.0.1", Ok(())),
            (true, "192.0.2.3", Err(Total)),
            (false, "192.0.2.1", Ok(())),
            (true, "192.0.2.3", Ok(())),
            (true, "192.0.2.1", Err(Total)),
            (false, "10.0.0.1", Ok(())),
            (true, "192.0.2.1", Ok(())),
            (true, "2001:db8::1", Err(Total)),
        ];
        let mut t = table(5, 2);
        for (i, (open, ip, want)) in steps.iter().enumerate() {
            let ip: IpAddr = ip.parse().unwrap();
            if *open {
                assert_eq!(t.admit(ip), *want, "step {i}: {ip}");
            } else {
                t.release(ip);
            }
        }
        assert_eq!(t.open(), 5);
        for ip in [
            "192.0.2.1",
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
            "10.0.0.1",
        ] {
            t.release(ip.parse().unwrap());
        }
        t.release("10.0.0.1".parse().unwrap());
        assert_eq!(t.open(), 0);
        assert!(
            t.per_address.is_empty(),
            "no entry outlives its connections"
        );
    }

    /// A trusted proxy is not counted per address, so its closing connections free no
    /// place of the others in its IPv6 /64 (they did: one more client each time).
    #[test]
    fn a_proxys_connections_free_no_place_of_its_neighbours() {
        let mut t = ConnTable::new(&ServeLimits {
            max_connections: 100,
            max_connections_per_address: 1,
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            trusted_proxies: vec!["2001:db8::1/128".parse().unwrap()],
        });
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert_eq!(t.admit(ip("2001:db8::2")), Ok(()));
        assert_eq!(t.admit(ip("2001:db8::1")), Ok(()));
        t.release(ip("2001:db8::1"));
        assert_eq!(t.admit(ip("2001:db8::3")), Err(Refusal::PerAddress));
    }
}
