//! The per-call work of a node outside the network: parse the INVITE, route it (inbound
//! trunk by source, outbound trunks by destination prefix), identify the caller, anchor
//! its SDP (addresses rewritten, attributes filtered), and log the finished call (the
//! store's batched insert, per record).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use tsunagu::decide::caller::identify;
use tsunagu::decide::routing::Routing;
use tsunagu_sip::parse::{header, parse, request_user};
use tsunagu_sip::SipMessage;
use tsunagu_store::{
    conformance::sample_call, ActiveCall, CallRecord, CallState, Durability, SqliteStore, Store,
};

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";

/// An offer from a softphone with ICE and SSRC lines (most of which the node drops).
const NOISY_SDP: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\nm=audio 4000 RTP/AVPF 0 8 101\r\na=rtcp:4001 IN IP4 10.0.0.1\r\n\
a=candidate:1 1 udp 2122260223 10.0.0.1 4000 typ host generation 0\r\n\
a=candidate:2 1 udp 1686052607 203.0.113.7 41000 typ srflx raddr 10.0.0.1 rport 4000 generation 0\r\n\
a=ice-ufrag:F7gI\r\na=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n\
a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n\
a=ptime:20\r\na=ssrc:3735928559 cname:4TOk42mSjXCkVIa6\r\n";

fn invite() -> Vec<u8> {
    format!(
        "INVITE sip:0501234567@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds;rport\r\n\
From: \"caller\" <sip:09012345678@10.0.0.1:5060>;tag=1928301774\r\nTo: <sip:0501234567@127.0.0.1:5060>\r\n\
Call-ID: a84b4c76e66710@10.0.0.1\r\nCSeq: 314159 INVITE\r\nContact: <sip:sipp@10.0.0.1:5060;transport=udp>\r\n\
Max-Forwards: 70\r\nP-Asserted-Identity: <sip:09012345678@10.0.0.1>\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
    .into_bytes()
}

fn routing() -> Routing {
    let mut toml = String::new();
    for i in 0..20 {
        toml.push_str(&format!(
            "[[trunks]]\nname = \"t{i}\"\ninbound = [\"10.{i}.0.0/16\"]\noutbound = \"udp:10.{i}.0.1:5060\"\n"
        ));
    }
    for (i, p) in ["03", "06", "090", "080", "070", "050", "0120", ""]
        .iter()
        .enumerate()
    {
        toml.push_str(&format!(
            "[[routes]]\nprefix = \"{p}\"\ntrunks = [\"t{i}\", \"t{}\"]\n",
            i + 1
        ));
    }
    Routing::from_config(&tsunagu_config::Config::from_toml(&toml).expect("config"))
}

fn benches(c: &mut Criterion) {
    let raw = invite();
    let routing = routing();
    let mut g = c.benchmark_group("call_path");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_invite", |b| {
        b.iter(|| parse(black_box(&raw)).unwrap())
    });
    // What the receivers add to every request: received/rport into the top Via
    // (`sip::via::stamp`), for a Via that asks for rport (rewritten) and for the
    // common one whose host is its source (left as it came).
    let source: std::net::SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let common = String::from_utf8(raw.clone())
        .unwrap()
        .replace(";rport", "");
    for (name, bytes) in [
        ("stamp_via_rport", raw.clone()),
        ("stamp_via_common", common.into_bytes()),
    ] {
        let SipMessage::Request(req) = parse(&bytes).unwrap().0 else {
            unreachable!()
        };
        g.bench_function(name, |b| {
            b.iter_batched(
                || req.clone(),
                // Returned: the request is dropped outside the timing.
                |mut r| {
                    tsunagu_sip::via::stamp(&mut r, black_box(source));
                    r
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("parse_route_identify", |b| {
        b.iter(|| {
            let (msg, _info) = parse(black_box(&raw)).unwrap();
            let SipMessage::Request(req) = msg else {
                unreachable!()
            };
            let trunk = routing.inbound_trunk("10.0.0.1".parse().unwrap());
            let number = request_user(&req).unwrap();
            let caller = identify(
                header(&req, "From").unwrap_or_default(),
                header(&req, "P-Asserted-Identity"),
                header(&req, "Privacy"),
                true,
            );
            let out = routing.outbound_trunks("0311112222").len();
            black_box((trunk, number, caller, out))
        })
    });
    // Anchoring an offer: what the node does to each SDP body it passes on (rewritten,
    // and its telephone-event and hold read, in one parse).
    let node_ip: std::net::IpAddr = "192.0.2.5".parse().unwrap();
    for (name, body) in [
        ("sdp_anchor_plain", SDP),
        ("sdp_anchor_softphone", NOISY_SDP),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| tsunagu_media::sdp::rewrite(black_box(body), node_ip, 20000).unwrap())
        });
    }
    // Logging: the call-log writer inserts batches of up to 512 records in one
    // transaction; this is the cost per record at that batch size, on a real file, with
    // every commit synced (`store.synchronous = "full"`, the default) and without.
    // `..._with_progress` adds what a call costs the store since records in progress
    // (state active) exist: the record in progress in one batch, then the final one
    // replacing it in another.
    for (name, durability) in [("full", Durability::Full), ("normal", Durability::Normal)] {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with(&dir.path().join("bench.db"), durability).unwrap();
        let op = store.create_operator("bench").unwrap();
        let batch = |start: i64| -> Vec<CallRecord> {
            (0..512)
                .map(|i| sample_call(&op.id, "adv_1", start + i))
                .collect()
        };
        g.throughput(Throughput::Elements(512));
        g.bench_function(format!("log_512_records_{name}"), |b| {
            b.iter_batched(
                || batch(1_000_000),
                |records| store.insert_calls(&records, &[]).unwrap(),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("log_512_records_with_progress_{name}"), |b| {
            b.iter_batched(
                || {
                    let finals = batch(2_000_000);
                    let active: Vec<ActiveCall> = finals
                        .iter()
                        .map(|r| ActiveCall {
                            record: CallRecord {
                                state: CallState::Active,
                                ..r.clone()
                            },
                            checkpoint: None,
                        })
                        .collect();
                    (active, finals)
                },
                |(active, finals)| {
                    store.upsert_active_calls(&active).unwrap();
                    store.insert_calls(&finals, &[]).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(call_path, benches);
criterion_main!(call_path);
