//! Carrying frames between nodes over ractor_cluster, hardened.
//!
//! ractor_cluster (the project's actor system) runs the sessions: the magic-cookie
//! challenge with the cluster's shared secret, then one ordered stream per pair of
//! nodes, and process groups through which each node's [`Mailbox`] actor reaches the
//! others' (`tsunagu/<node>`). Its own listener awaits each TLS handshake inline, with
//! no timeout and no limit, so one silent connection would stop every later node from
//! joining: connections are therefore accepted and dialled here — mutual TLS against the
//! cluster's CA, a handshake deadline, a cap on handshakes per source and in all — and
//! only then handed to ractor_cluster's node server as established TLS streams. (Its
//! listener still runs, as the node server insists on one, on 127.0.0.1 with an
//! ephemeral port and the same mutual TLS; nothing is told about it.)
//!
//! A frame is one message of ours (see [`crate::protocol`]), opaque here: bytes in,
//! bytes out.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::{NetworkStream, NodeServer, NodeServerMessage};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long a TLS handshake between nodes may take.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// Handshakes in progress from one address at once (a peer needs one or two).
const PER_SOURCE: usize = 4;
/// Handshakes in progress at once in all. Once mutual TLS succeeded the peer holds the
/// cluster's certificate: it is a member, and its session no longer counts.
const TOTAL: usize = 64;
/// The largest frame a peer may send (ractor_cluster checks it before allocating).
const MAX_FRAME: u64 = 4 * 1024 * 1024;

/// What the transport needs.
pub struct NetConfig {
    /// This node's name (its `node.id`).
    pub name: String,
    /// Where peers connect.
    pub listen: SocketAddr,
    /// The shared secret (ractor_cluster's cookie).
    pub secret: String,
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

/// The local end of the frames: every node's mailbox is in the group `tsunagu` and in
/// `tsunagu/<its name>`; a frame cast to it comes out of [`Net::start`]'s receiver.
pub struct Mailbox {
    group: String,
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

const ALL: &str = "tsunagu";

fn group_of(name: &str) -> String {
    format!("{ALL}/{name}")
}

impl Actor for Mailbox {
    type Msg = Vec<u8>;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, me: ActorRef<Vec<u8>>, _: ()) -> Result<(), ActorProcessingErr> {
        ractor::pg::join(ALL.to_string(), vec![me.get_cell()]);
        ractor::pg::join(self.group.clone(), vec![me.get_cell()]);
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Vec<u8>>,
        frame: Vec<u8>,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let _ = self.tx.send(frame);
        Ok(())
    }
}

/// Handshakes in progress per source address (our accepting side), released on drop.
#[derive(Default)]
struct Counts(Mutex<HashMap<IpAddr, usize>>);

struct Slot {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl Counts {
    /// A slot for `ip`, or none if it holds [`PER_SOURCE`] or all hold [`TOTAL`]. A
    /// refused source leaves no entry behind (the table holds at most [`TOTAL`]
    /// addresses, however many a flood comes from).
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = m.values().sum();
        let mine = m.get(&ip).copied().unwrap_or(0);
        if mine >= PER_SOURCE || total >= TOTAL {
            return None;
        }
        *m.entry(ip).or_default() += 1;
        Some(Slot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Why a connection to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("cluster node server: {0}")]
    Server(String),
}

/// The running transport.
#[derive(Clone)]
pub struct Net {
    name: String,
    server: ActorRef<NodeServerMessage>,
    connector: TlsConnector,
}

impl Net {
    /// Starts the node server, this node's mailbox and the listener; frames for this
    /// node come out of the returned receiver.
    pub async fn start(
        cfg: NetConfig,
    ) -> Result<(Net, mpsc::UnboundedReceiver<Vec<u8>>), NetError> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| NetError::Listen(cfg.listen, e))?;
        let server = NodeServer::new(
            0,
            cfg.secret.clone(),
            cfg.name.clone(),
            cfg.listen.ip().to_string(),
            Some(ractor_cluster::IncomingEncryptionMode::Tls(
                cfg.acceptor.clone(),
            )),
            Some(ractor_cluster::node::NodeConnectionMode::Isolated),
        )
        .with_listen_addr(IpAddr::from([127, 0, 0, 1]))
        .with_max_inbound_frame_size(MAX_FRAME);
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| NetError::Server(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        Actor::spawn(
            None,
            Mailbox {
                group: group_of(&cfg.name),
                tx,
            },
            (),
        )
        .await
        .map_err(|e| NetError::Server(e.to_string()))?;
        tokio::spawn(accept_loop(listener, cfg.acceptor, server.clone()));
        Ok((
            Net {
                name: cfg.name,
                server,
                connector: cfg.connector,
            },
            rx,
        ))
    }

    /// Dials a peer: TCP, mutual TLS (its certificate must name `addr`'s IP), then the
    /// session and the secret's challenge run in ractor_cluster.
    pub async fn connect(&self, addr: SocketAddr) -> Result<(), NetError> {
        let err = |e: String| NetError::Connect(addr, e);
        let tcp = tokio::time::timeout(HANDSHAKE, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let local_addr = tcp.local_addr().map_err(|e| err(e.to_string()))?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let stream = tokio::time::timeout(HANDSHAKE, self.connector.connect(name, tcp))
            .await
            .map_err(|_| err("TLS handshake timed out".into()))?
            .map_err(|e| err(format!("TLS: {e}")))?;
        self.server
            .cast(NodeServerMessage::ConnectionOpened {
                stream: Box::new(NetworkStream::TlsClient {
                    peer_addr: addr,
                    local_addr,
                    stream,
                }),
                is_server: false,
            })
            .map_err(|e| err(e.to_string()))
    }

    /// Sends a frame to a node's mailbox; false if no session to it is up.
    pub fn send(&self, to: &str, frame: Vec<u8>) -> bool {
        let members = ractor::pg::get_members(&group_of(to));
        let Some(cell) = members.into_iter().find(|c| !c.get_id().is_local()) else {
            return false;
        };
        ActorRef::<Vec<u8>>::from(cell).cast(frame).is_ok()
    }

    /// The peers a session is up with (by name).
    pub fn peers(&self) -> Vec<String> {
        let prefix = format!("{ALL}/");
        let mut out: Vec<String> = ractor::pg::which_groups()
            .into_iter()
            .filter_map(|g| g.strip_prefix(&prefix).map(str::to_string))
            .filter(|n| *n != self.name)
            .filter(|n| {
                ractor::pg::get_members(&group_of(n))
                    .iter()
                    .any(|c| !c.get_id().is_local())
            })
            .collect();
        out.sort();
        out
    }
}

/// Accepts peers: a handshake slot (per source and in all), the mutual TLS handshake
/// within [`HANDSHAKE`], each on its own task, then the stream goes to the node server.
async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    server: ActorRef<NodeServerMessage>,
) {
    let counts = Arc::new(Counts::default());
    loop {
        let (tcp, peer_addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning.
                tracing::warn!(%e, "cluster listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = counts.take(peer_addr.ip()) else {
            tracing::warn!(%peer_addr, "cluster listener: too many connections from this address");
            continue;
        };
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(local_addr) = tcp.local_addr() else {
                return;
            };
            let shake = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await;
            drop(slot);
            let stream = match shake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%peer_addr, %e, "cluster connection refused: TLS");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer_addr, "cluster connection refused: TLS handshake timed out");
                    return;
                }
            };
            let _ = server.cast(NodeServerMessage::ConnectionOpened {
                stream: Box::new(NetworkStream::TlsServer {
                    peer_addr,
                    local_addr,
                    stream,
                }),
                is_server: true,
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    /// Handshake slots: four per source, 64 in all, given back when a handshake ends;
    /// a flood from many addresses neither passes the total nor grows the table.
    #[test]
    fn handshake_slots_are_capped_per_source_and_in_all() {
        let counts = Arc::new(Counts::default());
        let mut held = Vec::new();
        for _ in 0..PER_SOURCE {
            held.push(counts.take(ip(0)).expect("a slot"));
        }
        assert!(counts.take(ip(0)).is_none(), "the fifth from one source");
        // Fifteen more sources fill the 64.
        for src in 1..(TOTAL / PER_SOURCE) as u32 {
            for _ in 0..PER_SOURCE {
                held.push(counts.take(ip(src)).expect("a slot"));
            }
        }
        assert_eq!(held.len(), TOTAL);
        for src in 100..10_100 {
            assert!(counts.take(ip(src)).is_none(), "past the total");
        }
        assert_eq!(
            counts.0.lock().unwrap().len(),
            TOTAL / PER_SOURCE,
            "refused sources leave no entry"
        );
        drop(held.pop());
        assert!(counts.take(ip(5000)).is_some(), "a slot given back is free");
        held.clear();
        assert!(counts.0.lock().unwrap().is_empty(), "all given back");
    }
}
