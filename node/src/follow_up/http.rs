//! A minimal HTTP/1.1 client for follow-ups: one POST per connection
//! (`Connection: close`), over TCP or TLS (rustls, Mozilla's roots compiled in), and
//! only the status code is read back. Webhook, GA4 and SMS-gateway receivers need no
//! more, and it keeps a full HTTP client stack out of the build.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("bad URL `{0}`")]
    BadUrl(String),
    #[error("connect to {0} failed: {1}")]
    Connect(String, String),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
    #[error("I/O with {0} failed: {1}")]
    Io(String, String),
    #[error("{0} answered no HTTP status line")]
    BadResponse(String),
    #[error("{0} took longer than {1} ms")]
    Timeout(String, u64),
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, HttpError> {
        let bad = || HttpError::BadUrl(url.to_string());
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => default_port,
                None => return Err(bad()),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() || host.contains(['@', ' ']) || target.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Url {
            tls,
            host,
            port,
            target,
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Sends POSTs; holds the TLS settings, built once.
pub struct Client {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl Client {
    /// A client verifying servers against `roots` (see [`crate::tls::trusted_roots`]).
    pub fn new(timeout: Duration, roots: rustls::RootCertStore) -> Client {
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeout,
        }
    }

    /// POSTs `body` and returns the response's status code.
    pub async fn post(
        &self,
        url: &Url,
        content_type: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<u16, HttpError> {
        let who = format!("{}:{}", url.host, url.port);
        let limit = self.timeout.as_millis() as u64;
        tokio::time::timeout(
            self.timeout,
            self.exchange(url, &who, content_type, headers, body),
        )
        .await
        .map_err(|_| HttpError::Timeout(who.clone(), limit))?
    }

    async fn exchange(
        &self,
        url: &Url,
        who: &str,
        content_type: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<u16, HttpError> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| HttpError::Connect(who.to_string(), e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tsunagu/{}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
            url.target,
            url.host_header(),
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        for (name, value) in headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        if url.tls {
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| HttpError::Tls(who.to_string(), e.to_string()))?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| HttpError::Tls(who.to_string(), e.to_string()))?;
            round_trip(stream, who, head.as_bytes(), body).await
        } else {
            round_trip(tcp, who, head.as_bytes(), body).await
        }
    }
}

async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    who: &str,
    head: &[u8],
    body: &[u8],
) -> Result<u16, HttpError> {
    let io = |e: std::io::Error| HttpError::Io(who.to_string(), e.to_string());
    s.write_all(head).await.map_err(io)?;
    s.write_all(body).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    let mut buf = [0u8; 256];
    let mut got = 0;
    while got < buf.len() {
        let n = s.read(&mut buf[got..]).await.map_err(io)?;
        if n == 0 {
            break;
        }
        got += n;
        if buf[..got].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    status_code(&buf[..got]).ok_or_else(|| HttpError::BadResponse(who.to_string()))
}

/// The status code of an HTTP/1.x status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// Percent-encodes a query parameter value.
pub fn query_escaped(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ok = |u: &str, tls: bool, host: &str, port: u16, target: &str| {
            assert_eq!(
                Url::parse(u).unwrap(),
                Url {
                    tls,
                    host: host.into(),
                    port,
                    target: target.into()
                },
                "{u}"
            )
        };
        ok(
            "http://127.0.0.1:8080/hook",
            false,
            "127.0.0.1",
            8080,
            "/hook",
        );
        ok("https://example.com", true, "example.com", 443, "/");
        ok("https://example.com?a=1", true, "example.com", 443, "/?a=1");
        ok("http://[::1]:9000/x?y=z", false, "::1", 9000, "/x?y=z");
        ok("http://[::1]/", false, "::1", 80, "/");
        for bad in [
            "ftp://x/",
            "http://",
            "http://:80/",
            "http://h:port/",
            "http://u@h/",
            "http://[::1/",
            "http://h/a b",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Url::parse("http://[::1]:9000/").unwrap().host_header(),
            "[::1]:9000"
        );
        assert_eq!(
            Url::parse("https://a.example/").unwrap().host_header(),
            "a.example"
        );
    }

    #[test]
    fn status_lines() {
        let cases: &[(&[u8], Option<u16>)] = &[
            (b"HTTP/1.1 204 No Content\r\n", Some(204)),
            (b"HTTP/1.0 500\r\n", Some(500)),
            (b"HTTP/1.1 200 OK", Some(200)),
            (b"SIP/2.0 200 OK\r\n", None),
            (b"HTTP/1.1 2000 OK\r\n", None),
            (b"", None),
        ];
        for (head, want) in cases {
            assert_eq!(
                status_code(head),
                *want,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn query_escaping() {
        assert_eq!(query_escaped("G-AB12"), "G-AB12");
        assert_eq!(query_escaped("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
