//! RTP port leases: one `allocate` and the drop of its `MediaPort`, with a socket bound
//! and closed per lease (`fresh`, as before issue 14; the pool told to keep no idle
//! socket) and with the pool's kept socket (`reused`: drained and disconnected at lease,
//! connected to itself at release, registered with the reactor throughout). Also the
//! reactor registration alone (`from_std` + `into_std`), which a reused lease saves by
//! keeping the tokio socket.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use tsunagu_media::{MediaMetrics, PortPool};

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _inside = rt.enter();
    let mut g = c.benchmark_group("ports");
    // 32 ports, leased in turn as calls would (a freed port goes to the back).
    for (name, first, idle_max) in [
        ("lease_and_release_fresh", 47200, 0),
        ("lease_and_release_reused", 47300, usize::MAX),
    ] {
        let pool = PortPool::new(
            "127.0.0.1".parse().unwrap(),
            first,
            first + 63,
            4 << 20,
            MediaMetrics::default(),
        );
        pool.set_idle_sockets_max(idle_max);
        g.bench_function(name, |b| {
            b.iter(|| drop(black_box(pool.allocate().unwrap())))
        });
    }
    let mut socket = Some(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    if let Some(s) = &socket {
        s.set_nonblocking(true).unwrap();
    }
    g.bench_function("reactor_register_and_deregister", |b| {
        b.iter(|| {
            let std = socket.take().unwrap();
            let registered = tokio::net::UdpSocket::from_std(std).unwrap();
            socket = Some(black_box(registered).into_std().unwrap());
        })
    });
    g.finish();
}

criterion_group!(ports, benches);
criterion_main!(ports);
