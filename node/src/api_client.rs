//! A minimal blocking HTTP/1.1 client for the command line's requests to the node's own
//! API (`tsunagu cluster ...`, `tsunagu numbers import`): one request per connection
//! (`Connection: close`), bounded in time and size, the answer parsed without panics
//! and treated as untrusted (text from it goes to a terminal only through
//! [`printable`]).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Time to open the connection, and to wait for each read or write after it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Answers of the node to these commands are small: anything larger is not one.
const MAX_ANSWER: u64 = 1 << 20;

/// The node's configuration as `serve` would read it: `file`, or the built-in defaults.
pub fn load_config(file: Option<&std::path::Path>) -> Result<tsunagu_config::Config, String> {
    match file {
        Some(f) => tsunagu_config::Config::load(f).map_err(|e| e.to_string()),
        None => tsunagu_config::Config::embedded_default().map_err(|e| e.to_string()),
    }
}

/// What an error answer of the API says (`{"error": {"message", "field"}}`: the field
/// first when there is one), else its text; safe to print, at most `max` characters.
pub fn error_message(answer: &[u8], max: usize) -> String {
    let text = serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| {
            let e = &v["error"];
            let message = e["message"].as_str()?;
            Some(match e["field"].as_str() {
                Some(field) => format!("{field}: {message}"),
                None => message.to_string(),
            })
        })
        .unwrap_or_else(|| String::from_utf8_lossy(answer).into_owned());
    printable(&text, max)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the token holds characters that cannot go into an HTTP header")]
    BadToken,
    #[error("cannot reach the node's API at {addr}: {source}")]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the node's answer is not HTTP as expected: {0}")]
    BadAnswer(String),
}

/// Where to reach the API: `api.listen`, with a wildcard address (`0.0.0.0`, `::`)
/// replaced by loopback (the CLI runs on the node's machine).
pub fn api_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// One request to the node's API with `token` (and `body` as JSON, if any): the
/// answer's status and body.
pub fn ask(
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>), ClientError> {
    // Printable ASCII only: a CR or LF would end the header (and no valid token has one).
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ClientError::BadToken);
    }
    let unreachable = |source| ClientError::Unreachable { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(unreachable)?;
    let content = match body {
        Some(b) => format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ),
        None => String::new(),
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Accept: application/json\r\n{content}Connection: close\r\n\r\n"
    );
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).map_err(unreachable)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_ANSWER + 1)
        .read_to_end(&mut raw)
        .map_err(unreachable)?;
    if raw.len() as u64 > MAX_ANSWER {
        return Err(ClientError::BadAnswer(format!(
            "larger than {MAX_ANSWER} bytes"
        )));
    }
    parse_response(&raw)
}

/// An HTTP/1.1 answer read to the end: its status code and body (chunked or not).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
    let bad = |what: &str| ClientError::BadAnswer(what.to_string());
    let head_end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| bad("headers not UTF-8"))?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err(bad("not HTTP/1.x"));
    }
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| bad("no status code"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| bad("bad Content-Length"))?);
        }
    }
    if chunked {
        return Ok((code, dechunk(body)?));
    }
    match length {
        Some(n) if n > body.len() => Err(bad("body shorter than its Content-Length")),
        Some(n) => Ok((code, body[..n].to_vec())),
        None => Ok((code, body.to_vec())),
    }
}

/// Decodes a chunked body (extensions and trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, ClientError> {
    let bad = |what: &str| ClientError::BadAnswer(what.to_string());
    let mut out = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or_else(|| bad("chunk size line missing"))?;
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("bad chunk size"))?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| bad("bad chunk size"))?;
        let start = line_end + 2;
        if size == 0 {
            return Ok(out);
        }
        let end = start
            .checked_add(size)
            .filter(|&e| e.checked_add(2).is_some_and(|t| t <= rest.len()))
            .ok_or_else(|| bad("chunk longer than the answer"))?;
        out.extend_from_slice(&rest[start..end]);
        rest = &rest[end + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `s` safe to print on a terminal: control characters (escape sequences) become `?`,
/// and it is cut at `max` characters.
pub fn printable(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// `s` as one URL path segment: unreserved characters as they are, the rest
/// percent-encoded (a name with a `/` or `?` stays one segment).
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
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
    fn answers_are_parsed_plain_sized_or_chunked() {
        let cases: &[(&[u8], Option<(u16, &[u8])>)] = &[
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", Some((200, b"{}"))),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}junk", Some((200, b"{}"))),
            (b"HTTP/1.1 401 Unauthorized\r\n\r\nno", Some((401, b"no"))),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n3;x=1\r\na\":\r\n2\r\n1}\r\n0\r\n\r\n",
                Some((200, b"{\"a\":1}")),
            ),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}", None),
            (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n{}", None),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab", None),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", None),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", None),
            (b"HTTP/1.1 999 Odd\r\n\r\n", None),
            (b"SSH-2.0-OpenSSH\r\n\r\n", None),
            (b"HTTP/1.1 200 OK\r\n", None),
            (b"", None),
        ];
        for (raw, want) in cases {
            let got = parse_response(raw).ok();
            let want = want.map(|(c, b)| (c, b.to_vec()));
            assert_eq!(got, want, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn a_member_name_stays_one_path_segment() {
        let cases = [
            ("n3", "n3"),
            ("node-3.tokyo_a~", "node-3.tokyo_a~"),
            ("../admin", "..%2Fadmin"),
            ("a b?c#d", "a%20b%3Fc%23d"),
            ("ノード", "%E3%83%8E%E3%83%BC%E3%83%89"),
        ];
        for (name, want) in cases {
            assert_eq!(path_segment(name), want, "{name}");
        }
    }

    #[test]
    fn a_wildcard_api_address_is_reached_on_loopback() {
        let cases = [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:8080", "[::1]:8080"),
            ("127.0.0.2:8082", "127.0.0.2:8082"),
        ];
        for (listen, want) in cases {
            assert_eq!(api_address(listen.parse().unwrap()).to_string(), want);
        }
    }

    #[test]
    fn a_token_that_would_break_the_header_is_refused_before_connecting() {
        // Port 9 on loopback: refused if the check did not come first.
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for token in ["a\r\nX-Evil: 1", "with space", ""] {
            let e = ask(addr, token, "GET", "/v1/cluster", None);
            assert!(matches!(e, Err(ClientError::BadToken)), "{token:?}: {e:?}");
        }
    }
}
