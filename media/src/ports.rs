//! The RTP port pool. Each lease is an even port bound to a UDP socket; when the
//! [`MediaPort`] drops (call ended, actor crashed) the port goes to the back of the
//! queue, so a just-freed port is reused last and stray packets find no new call.
//! The pool also carries the node's source policy ([`Latch`]) to the relays of the
//! ports it leases.

use crate::latch::Latch;
use crate::{MediaError, MediaMetrics};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

pub struct PortPool {
    address: IpAddr,
    free: Mutex<VecDeque<u16>>,
    socket_buffer: usize,
    latch: Latch,
    metrics: MediaMetrics,
    /// Asked once per batch of packets a relay would send; `false` withholds them
    /// (a clustered node without its lease; see [`PortPool::set_gate`]).
    gate: std::sync::OnceLock<Gate>,
}

/// Whether the node may send media now.
pub type Gate = Arc<dyn Fn() -> bool + Send + Sync>;

/// A leased RTP port and its bound socket.
pub struct MediaPort {
    pub socket: tokio::net::UdpSocket,
    pub port: u16,
    pool: Arc<PortPool>,
}

impl MediaPort {
    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(self.pool.address, self.port)
    }

    /// Whether the relay using this port may send now ([`PortPool::set_gate`]).
    pub(crate) fn open(&self) -> bool {
        self.pool.open()
    }

    /// The source policy of the relay using this port.
    pub fn latch(&self) -> Latch {
        self.pool.latch
    }
}

impl Drop for MediaPort {
    fn drop(&mut self) {
        self.pool
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(self.port);
        self.pool.metrics.ports_in_use.dec();
    }
}

impl PortPool {
    /// A pool of the even ports in `first..=last` whose odd neighbour is in the range too,
    /// with the default source policy.
    pub fn new(
        address: IpAddr,
        first: u16,
        last: u16,
        socket_buffer: usize,
        metrics: MediaMetrics,
    ) -> Arc<PortPool> {
        PortPool::with_latch(
            address,
            first,
            last,
            socket_buffer,
            Latch::default(),
            metrics,
        )
    }

    /// [`PortPool::new`] whose relays apply `latch` (`media.latch`).
    pub fn with_latch(
        address: IpAddr,
        first: u16,
        last: u16,
        socket_buffer: usize,
        latch: Latch,
        metrics: MediaMetrics,
    ) -> Arc<PortPool> {
        // In u32: `first + 1` must not wrap at 65535 (ports 0.. would be leased).
        let start = u32::from(first) + u32::from(first % 2);
        let free: VecDeque<u16> = (start..u32::from(last))
            .step_by(2)
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        metrics
            .ports_total
            .set(i64::try_from(free.len()).unwrap_or(i64::MAX));
        Arc::new(PortPool {
            address,
            free: Mutex::new(free),
            socket_buffer,
            latch,
            metrics,
            gate: std::sync::OnceLock::new(),
        })
    }

    /// From now on the relays of this pool send only while `gate` says so (the first
    /// gate set stays). Received packets are still read (and dropped), so a node that
    /// lost its lease neither relays nor plays audio to parties another node now serves.
    pub fn set_gate(&self, gate: Gate) {
        let _ = self.gate.set(gate);
    }

    /// Whether the relays may send now.
    pub(crate) fn open(&self) -> bool {
        self.gate.get().is_none_or(|open| open())
    }

    pub fn free_ports(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Leases a port; ports another process holds are skipped (and kept for later).
    /// Must be called inside a tokio runtime.
    pub fn allocate(self: &Arc<Self>) -> Result<MediaPort, MediaError> {
        let attempts = self.free_ports();
        for _ in 0..attempts {
            let Some(port) = self
                .free
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
            else {
                break;
            };
            let bound = std::net::UdpSocket::bind((self.address, port)).and_then(|s| {
                s.set_nonblocking(true)?;
                let sock = socket2::SockRef::from(&s);
                let _ = sock.set_recv_buffer_size(self.socket_buffer);
                tokio::net::UdpSocket::from_std(s)
            });
            match bound {
                Ok(socket) => {
                    self.metrics.ports_in_use.inc();
                    return Ok(MediaPort {
                        socket,
                        port,
                        pool: self.clone(),
                    });
                }
                Err(e) => {
                    tracing::debug!(port, %e, "RTP port busy, skipping");
                    self.free
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(port);
                }
            }
        }
        self.metrics.port_exhaustions.inc();
        Err(MediaError::PortsExhausted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leases_even_ports_and_returns_them_on_drop() {
        let pool = PortPool::new(
            "127.0.0.1".parse().unwrap(),
            41001,
            41008,
            65536,
            MediaMetrics::default(),
        );
        assert_eq!(pool.free_ports(), 3, "41002, 41004, 41006");
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        let c = pool.allocate().unwrap();
        assert!([a.port, b.port, c.port].iter().all(|p| p % 2 == 0));
        assert!(matches!(pool.allocate(), Err(MediaError::PortsExhausted)));
        let freed = a.port;
        drop(a);
        assert_eq!(pool.free_ports(), 1);
        assert_eq!(pool.allocate().unwrap().port, freed);
        drop((b, c));
    }

    #[test]
    fn ranges_at_the_top_of_the_port_space_do_not_wrap() {
        // Each row: (first, last) → the even ports leased.
        let table: &[(u16, u16, &[u16])] = &[
            (65530, 65535, &[65530, 65532, 65534]),
            (65531, 65535, &[65532, 65534]),
            (65535, 65535, &[]),
            (65534, 65534, &[]),
            (1, 6, &[2, 4]),
        ];
        for (first, last, want) in table {
            let pool = PortPool::new(
                "127.0.0.1".parse().unwrap(),
                *first,
                *last,
                65536,
                MediaMetrics::default(),
            );
            let free: Vec<u16> = pool.free.lock().unwrap().iter().copied().collect();
            assert_eq!(free, *want, "{first}-{last}");
        }
    }

    #[tokio::test]
    async fn skips_ports_held_elsewhere() {
        let squatter = std::net::UdpSocket::bind("127.0.0.1:41102").unwrap();
        let pool = PortPool::new(
            "127.0.0.1".parse().unwrap(),
            41102,
            41105,
            65536,
            MediaMetrics::default(),
        );
        let got = pool.allocate().unwrap();
        assert_eq!(got.port, 41104);
        drop(squatter);
    }
}
