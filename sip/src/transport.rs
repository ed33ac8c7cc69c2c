//! Sockets: UDP listeners and TCP connections (accepted or opened on demand), framing
//! of stream messages by Content-Length, and parsing before anything reaches the core.

use crate::build::reject_unparsed;
use crate::metrics::SipMetrics;
use crate::parse::{parse, Info, Peer, Transport};
use bytes::Bytes;
use rsipstack::sip::SipMessage;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// A parsed message on its way to the endpoint core.
pub(crate) struct Incoming {
    pub msg: SipMessage,
    pub info: Info,
    pub peer: Peer,
}

pub(crate) type IncomingTx = mpsc::UnboundedSender<Incoming>;

const MAX_MESSAGE: usize = 65_535;

pub(crate) fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    let std_sock = std::net::UdpSocket::bind(addr)?;
    std_sock.set_nonblocking(true)?;
    set_buffers(&std_sock, buffer);
    UdpSocket::from_std(std_sock)
}

/// Asks the kernel for large socket buffers (capped by net.core.[rw]mem_max).
pub fn set_buffers<S: std::os::fd::AsFd>(sock: &S, bytes: usize) {
    let sock = socket2::SockRef::from(sock);
    let _ = sock.set_recv_buffer_size(bytes);
    let _ = sock.set_send_buffer_size(bytes);
}

/// Handles one received datagram or stream frame: parse, or answer 400 if possible.
fn handle_frame(
    data: &[u8],
    peer: Peer,
    incoming: &IncomingTx,
    metrics: &SipMetrics,
) -> Option<Vec<u8>> {
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return None; // keepalive (RFC 5626 CRLF)
    }
    if crate::endpoint::backlog_full(metrics.incoming_backlog.get()) {
        // The core is far behind: drop what arrives, as a full socket buffer would
        // (UDP senders retransmit), instead of queueing without bound.
        metrics.backlog_drops.inc();
        return None;
    }
    match parse(data) {
        Ok((msg, info)) => {
            if incoming.send(Incoming { msg, info, peer }).is_ok() {
                metrics.incoming_backlog.inc();
            }
            None
        }
        Err(e) => {
            metrics.parse_errors.inc();
            tracing::debug!(%e, peer = %peer.addr, "malformed SIP message");
            reject_unparsed(data, e.status(), &e.to_string())
        }
    }
}

pub(crate) fn spawn_udp_receiver(sock: Arc<UdpSocket>, incoming: IncomingTx, metrics: SipMetrics) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let (n, src) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    // ICMP port-unreachable surfaces here on some systems; keep serving.
                    tracing::debug!(%e, "udp receive error");
                    continue;
                }
            };
            let peer = Peer {
                transport: Transport::Udp,
                addr: src,
            };
            if let Some(reply) = handle_frame(&buf[..n], peer, &incoming, &metrics) {
                let _ = sock.try_send_to(&reply, src);
            }
            if incoming.is_closed() {
                break;
            }
        }
    });
}

/// TLS for SIP: the acceptor of TLS listeners and the connector for outbound TLS.
#[derive(Clone, Default)]
pub struct TlsSetup {
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub connector: Option<tokio_rustls::TlsConnector>,
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Open stream connections (TCP, or TLS over TCP) by remote address; a send to an
/// unknown address connects. Outbound TLS verifies the far end's certificate for its
/// IP address (trunks are configured by address).
#[derive(Clone)]
pub(crate) struct StreamConnections {
    conns: Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Bytes>>>>,
    incoming: IncomingTx,
    metrics: SipMetrics,
    transport: Transport,
    tls: TlsSetup,
}

impl StreamConnections {
    pub fn new(
        incoming: IncomingTx,
        metrics: SipMetrics,
        transport: Transport,
        tls: TlsSetup,
    ) -> Self {
        StreamConnections {
            conns: Arc::default(),
            incoming,
            metrics,
            transport,
            tls,
        }
    }

    pub fn send(&self, addr: SocketAddr, data: Bytes) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = conns.get(&addr) {
            if tx.send(data.clone()).is_ok() {
                return;
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(data);
        conns.insert(addr, tx);
        let this = self.clone();
        tokio::spawn(async move {
            let tcp = match TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%addr, %e, "TCP connect failed");
                    return this.forget(addr);
                }
            };
            let _ = tcp.set_nodelay(true);
            if this.transport != Transport::Tls {
                return this.run(tcp, addr, rx).await;
            }
            let Some(connector) = this.tls.connector.clone() else {
                tracing::warn!(%addr, "no TLS client settings; cannot connect");
                return this.forget(addr);
            };
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            match this.handshake(addr, connector.connect(name, tcp)).await {
                Some(tls) => this.run(tls, addr, rx).await,
                None => this.forget(addr),
            }
        });
    }

    /// A TLS handshake within [`HANDSHAKE`]; a failure or timeout is logged and counted.
    async fn handshake<S, E: std::fmt::Display>(
        &self,
        addr: SocketAddr,
        shake: impl std::future::Future<Output = Result<S, E>>,
    ) -> Option<S> {
        let why = match tokio::time::timeout(HANDSHAKE, shake).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        tracing::info!(%addr, %why, "TLS handshake failed");
        self.metrics.tls_handshake_failures.inc();
        None
    }

    fn forget(&self, addr: SocketAddr) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
    }

    pub fn spawn_listener(&self, listener: TcpListener) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, addr)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = this.clone();
                tokio::spawn(async move {
                    let (tx, rx) = mpsc::unbounded_channel();
                    match &conn.tls.acceptor {
                        None => {
                            conn.insert(addr, tx);
                            conn.run(stream, addr, rx).await
                        }
                        Some(acceptor) => {
                            if let Some(tls) = conn.handshake(addr, acceptor.accept(stream)).await {
                                conn.insert(addr, tx);
                                conn.run(tls, addr, rx).await
                            }
                        }
                    }
                });
            }
        });
    }

    fn insert(&self, addr: SocketAddr, tx: mpsc::UnboundedSender<Bytes>) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, tx);
    }

    async fn run<S>(&self, stream: S, addr: SocketAddr, mut rx: mpsc::UnboundedReceiver<Bytes>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let writer_task = tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if writer.write_all(&data).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
        });
        let peer = Peer {
            transport: self.transport,
            addr,
        };
        let mut buf: Vec<u8> = Vec::with_capacity(8192);
        let mut chunk = vec![0u8; 16384];
        'read: loop {
            let n = match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            loop {
                match next_frame(&buf) {
                    Frame::Incomplete => break,
                    Frame::Invalid => break 'read,
                    Frame::Skip(k) => {
                        buf.drain(..k);
                    }
                    Frame::Message(len) => {
                        if let Some(reply) =
                            handle_frame(&buf[..len], peer, &self.incoming, &self.metrics)
                        {
                            self.send(addr, Bytes::from(reply));
                        }
                        buf.drain(..len);
                    }
                }
            }
        }
        self.forget(addr);
        writer_task.abort();
    }
}

#[derive(Debug, PartialEq)]
enum Frame {
    Incomplete,
    Invalid,
    /// Leading CRLF keepalives to drop.
    Skip(usize),
    /// A whole message of this many bytes.
    Message(usize),
}

/// Finds the first complete message in a stream buffer (RFC 3261 18.3: Content-Length).
fn next_frame(buf: &[u8]) -> Frame {
    let skip = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if skip > 0 {
        return Frame::Skip(skip);
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_MESSAGE {
            Frame::Invalid
        } else {
            Frame::Incomplete
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut length = None;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
                length = value.trim().parse::<usize>().ok();
                if length.is_none() {
                    return Frame::Invalid;
                }
            }
        }
    }
    // A stream message without Content-Length cannot be framed (RFC 3261 18.3).
    let Some(length) = length else {
        return Frame::Invalid;
    };
    let total = end + 4 + length;
    if total > MAX_MESSAGE {
        Frame::Invalid
    } else if buf.len() < total {
        Frame::Incomplete
    } else {
        Frame::Message(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn the_incoming_queue_is_bounded() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let metrics = SipMetrics::default();
        let peer = Peer {
            transport: Transport::Udp,
            addr: "127.0.0.1:5070".parse().unwrap(),
        };
        assert!(handle_frame(OPTIONS, peer, &tx, &metrics).is_none());
        assert!(rx.try_recv().is_ok(), "queued");
        assert_eq!(metrics.incoming_backlog.get(), 1);
        metrics.incoming_backlog.set(crate::endpoint::BACKLOG_LIMIT);
        assert!(handle_frame(OPTIONS, peer, &tx, &metrics).is_none());
        assert!(rx.try_recv().is_err(), "dropped at the bound");
        assert_eq!(metrics.backlog_drops.get(), 1);
    }

    #[test]
    fn stream_framing() {
        let msg = b"BYE sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabc";
        let cases: Vec<(Vec<u8>, Frame)> = vec![
            (msg.to_vec(), Frame::Message(msg.len())),
            (
                [msg.as_slice(), b"OPTIONS"].concat(),
                Frame::Message(msg.len()),
            ),
            (msg[..msg.len() - 1].to_vec(), Frame::Incomplete),
            (b"\r\n\r\nBYE".to_vec(), Frame::Skip(4)),
            (
                b"BYE sip:a@b SIP/2.0\r\nl: 0\r\n\r\n".to_vec(),
                Frame::Message(29),
            ),
            (
                b"BYE sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n".to_vec(),
                Frame::Invalid,
            ),
            (
                b"BYE sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n".to_vec(),
                Frame::Invalid,
            ),
            (
                b"BYE sip:a@b SIP/2.0\r\nContent-Length: 999999\r\n\r\n".to_vec(),
                Frame::Invalid,
            ),
        ];
        for (buf, want) in cases {
            assert_eq!(next_frame(&buf), want, "{}", String::from_utf8_lossy(&buf));
        }
    }
}
