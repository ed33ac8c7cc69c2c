//! RTP relay cost per packet: a caller socket sends a 20 ms G.711 packet to the node's
//! relay, which forwards it to the callee socket (two UDP hops on loopback and the
//! relay task's work); with and without a recording running. The pure parts (RTP
//! header read, loss counting, G.711 decode and placement; the jitter estimate) are
//! measured alone too.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::net::UdpSocket;
use tsunagu_media::recording::Mixer;
use tsunagu_media::{MediaMetrics, PortPool, RecordMode, Recorder, Relay, Side};

fn packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x08];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    p.extend_from_slice(&[0xd5; 160]);
    p
}

fn through_relay(c: &mut Criterion, name: &str, record: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pool = PortPool::new(
        "127.0.0.1".parse().unwrap(),
        47000,
        47100,
        1 << 20,
        MediaMetrics::default(),
    );
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::start();
    let relay = rt.block_on(async {
        let relay = Relay::start(
            pool.allocate().unwrap(),
            pool.allocate().unwrap(),
            MediaMetrics::default(),
            std::sync::Arc::new(|_| {}),
        );
        // Both parties' SDP: the relay accepts only the caller's address (media.latch).
        relay.set_remote(Side::A, caller.local_addr().unwrap());
        relay.set_remote(Side::B, callee.local_addr().unwrap());
        if record {
            relay.start_recording(
                RecordMode::Both,
                recorder.open(dir.path().join("r.wav"), RecordMode::Both),
            );
        }
        relay
    });
    // The callee sends first: a party that has sent nothing gets at most
    // `media.unverified_audio_seconds` of audio (250 packets), and the bench hung there.
    callee.send_to(&packet(0), relay.local(Side::B)).unwrap();
    while relay.stats.received() == 0 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let to = relay.local(Side::A);
    let mut buf = [0u8; 2048];
    let mut seq = 0u16;
    let mut g = c.benchmark_group("rtp_relay");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            caller.send_to(&packet(seq), to).unwrap();
            callee.recv_from(&mut buf).unwrap()
        })
    });
    g.finish();
    drop(relay);
}

fn benches(c: &mut Criterion) {
    through_relay(c, "one_packet_through_the_relay", false);
    through_relay(c, "one_packet_through_the_relay_recording", true);
    let pkt = packet(1);
    let mut mixer = Mixer::new(RecordMode::Both);
    let mut now = 0u64;
    let mut g = c.benchmark_group("rtp_relay");
    g.throughput(Throughput::Elements(1));
    g.bench_function("record_one_packet_pure", |b| {
        b.iter(|| {
            now += 160;
            let r = rtp_header(&pkt);
            mixer.push(
                Side::A,
                r.0,
                (now as u32).wrapping_mul(1),
                8,
                &pkt[12..],
                now,
            );
            black_box(mixer.drain(now).len())
        })
    });
    // The relay's per-packet jitter estimate (RFC 3550), alone.
    let mut meter = tsunagu_media::jitter::JitterMeter::default();
    let (mut ts, mut arrival) = (0u32, 0u64);
    g.bench_function("jitter_one_packet_pure", |b| {
        b.iter(|| {
            ts = ts.wrapping_add(160);
            arrival += 20_000 + u64::from(ts % 7);
            black_box(meter.on_packet(0x1234_5678, 8, black_box(ts), black_box(arrival)))
        })
    });
    g.finish();
}

/// (ssrc, timestamp) of a packet.
fn rtp_header(p: &[u8]) -> (u32, u32) {
    (
        u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
    )
}

criterion_group!(rtp, benches);
criterion_main!(rtp);
