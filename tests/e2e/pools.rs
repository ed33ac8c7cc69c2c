//! Number pools: dynamic issuance with tracking parameters, attribution of calls to
//! leases, overflow, no double issue under concurrent issuers, and page issuance that
//! cannot drain a pool (rate limits per address and pool, a cap per session).

use crate::harness::*;

/// An operator with an advertiser on `node`: (its API key, the advertiser's id).
fn shop(node: &Node) -> (String, String) {
    let op = node.send("POST", "/v1/operators", Some(ADMIN), r#"{"name": "op"}"#);
    let key = op.json()["api_key"].as_str().unwrap().to_string();
    let adv = node.send("POST", "/v1/advertisers", Some(&key), r#"{"name": "shop"}"#);
    (key, adv.json()["id"].as_str().unwrap().to_string())
}

/// A pool of 30 numbers `05{stem}NNNN` that pages of https://shop.example may issue.
fn page_pool(node: &Node, key: &str, adv: &str, stem: &str, mode: &str) -> String {
    let numbers: Vec<String> = (0..30).map(|i| format!("\"05{stem}{i:04}\"")).collect();
    let body = format!(
        r#"{{"advertiser_id": "{adv}", "mode": "{mode}", "numbers": [{}], "allowed_origins": ["https://shop.example"], "destinations": [{{"number": "0311112222"}}]}}"#,
        numbers.join(",")
    );
    let r = node.send("POST", "/v1/pools", Some(key), &body);
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_str().unwrap().to_string()
}

/// A page's issue request for `pool` from the address `from`, as a browser on
/// https://shop.example sends it: `params` (a JSON object), an optional
/// X-Forwarded-For.
fn page_issue(api: u16, from: &str, pool: &str, params: &str, xff: Option<&str>) -> Response {
    let mut headers = vec![("Origin", "https://shop.example")];
    if let Some(x) = xff {
        headers.push(("X-Forwarded-For", x));
    }
    http_from(
        from,
        api,
        "POST",
        &format!("/v1/pools/{pool}/issue"),
        None,
        &format!(r#"{{"params": {params}}}"#),
        &headers,
    )
    .expect("issue")
}

#[test]
fn issued_numbers_carry_tracking_parameters_into_call_logs() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, adv) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    let body = format!(
        r#"{{"advertiser_id": "{adv}", "mode": "dynamic", "numbers": ["0505550001", "0505550002", "0505550003"],
            "hold_seconds": 600, "overflow_number": "0501234567", "destinations": [{{"number": "0311112222", "ring_seconds": 20}}]}}"#
    );
    let pool = node.send("POST", "/v1/pools", Some(&key), &body);
    assert_eq!(pool.status, 201, "{}", pool.body);
    let id = pool.json()["id"].as_str().unwrap().to_string();
    // Only pools listed in the configuration get their own metric label.
    let mut node = node;
    node.restart_with_api_line(&format!("pool_metrics = [\"{id}\"]"));
    let node = node;
    let issue = |params: &str| {
        let r = node.send(
            "POST",
            &format!("/v1/pools/{id}/issue"),
            Some(&key),
            &format!(r#"{{"params": {params}}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };
    let first = issue(r#"{"session_id": "s1", "gclid": "G-1", "keyword": "hotel tokyo"}"#);
    assert_eq!(first["number"], "0505550001");
    assert_eq!(first["overflow"], false);
    assert!(first["expires_at"].is_string());
    assert_eq!(
        issue(r#"{"session_id": "s1"}"#)["number"],
        "0505550001",
        "same session, same number"
    );
    assert_eq!(
        issue(r#"{"session_id": "s2", "gclid": "G-2"}"#)["number"],
        "0505550002"
    );
    assert_eq!(issue(r#"{"cookie_id": "c3"}"#)["number"], "0505550003");
    let over = issue(r#"{"session_id": "s4"}"#);
    assert_eq!(
        (over["number"].as_str(), over["overflow"].as_bool()),
        (Some("0501234567"), Some(true))
    );
    assert_eq!(
        node.metric(&format!("tsunagu_pool_overflows_total{{pool=\"{id}\"}}")),
        1.0
    );
    assert_eq!(
        node.metric(&format!("tsunagu_pool_leased{{pool=\"{id}\"}}")),
        3.0
    );
    assert_eq!(
        node.get(&format!("/v1/pools/{id}"), &key).json()["leased"],
        3
    );

    // A call to the number issued to s1 is attributed to s1's visit.
    let uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &[]);
    let run = uac("uac.xml", ports, "0505550001", 1, 1, &["-d", "100"]);
    assert_eq!((run.exit, run.successful), (0, 1), "{}", run.output);
    assert_eq!(uas.messages().matches("INVITE sip:0311112222@").count(), 1);
    let calls = node.wait_for_calls(&key, 1);
    assert_eq!(calls[0]["tracking_number"], "0505550001");
    assert_eq!(calls[0]["tracking_params"]["gclid"], "G-1");
    assert_eq!(calls[0]["tracking_params"]["keyword"], "hotel tokyo");
    assert_eq!(calls[0]["tracking_params"]["session_id"], "s1");

    // Errors and scoping. Parameters are stored with every lease and copied into its
    // calls: five values of 1,900 bytes are each allowed, but not together (8 KiB).
    let bulky = (0..5)
        .map(|i| format!(r#""k{i}": "{}""#, "x".repeat(1900)))
        .collect::<Vec<_>>()
        .join(", ");
    let refused = node.send(
        "POST",
        &format!("/v1/pools/{id}/issue"),
        Some(&key),
        &format!(r#"{{"params": {{"session_id": "s9", {bulky}}}}}"#),
    );
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert_eq!(refused.json()["error"]["field"], "params");
    let four = (0..4)
        .map(|i| format!(r#""k{i}": "{}""#, "x".repeat(1900)))
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(
        issue(&format!(r#"{{"session_id": "s1", {four}}}"#))["number"],
        "0505550001"
    );
    let other = node.other_operator();
    assert_eq!(
        node.send("POST", &format!("/v1/pools/{id}/issue"), Some(&other), "{}")
            .status,
        404
    );
    assert_eq!(node.get(&format!("/v1/pools/{id}"), &other).status, 404);
    let reuse = body.replace("0505550003", "0501234567");
    assert_eq!(
        node.send("POST", "/v1/pools", Some(&key), &reuse).status,
        409,
        "a number already in use"
    );
    assert_eq!(
        node.send(
            "POST",
            "/v1/pools",
            Some(&key),
            &body.replace("dynamic", "sometimes")
        )
        .status,
        400
    );
    assert_eq!(
        node.send("POST", "/v1/pools", Some(&key), &body.replace("600", "0"))
            .json()["error"]["field"],
        "hold_seconds"
    );
    assert_eq!(
        node.send("DELETE", "/v1/numbers/0505550001", Some(&key), "")
            .status,
        409,
        "pool numbers go with their pool"
    );
}

#[test]
fn concurrent_issuers_never_get_the_same_number() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, adv) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    let numbers: Vec<String> = (0..250).map(|i| format!("\"05066{i:05}\"")).collect();
    let body = format!(
        r#"{{"advertiser_id": "{adv}", "mode": "one_time", "numbers": [{}], "hold_seconds": 600, "destinations": [{{"number": "0311112222"}}]}}"#,
        numbers.join(",")
    );
    let pool = node.send("POST", "/v1/pools", Some(&key), &body);
    assert_eq!(pool.status, 201, "{}", pool.body);
    let id = pool.json()["id"].as_str().unwrap().to_string();
    let api = ports.api;
    let issued: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let (key, id) = (key.clone(), id.clone());
                s.spawn(move || {
                    let body = format!(r#"{{"params": {{"session_id": "visitor-{i}"}}}}"#);
                    let r = http(
                        api,
                        "POST",
                        &format!("/v1/pools/{id}/issue"),
                        Some(&key),
                        Some(&body),
                        &[],
                    )
                    .unwrap();
                    assert_eq!(r.status, 200, "{}", r.body);
                    r.json()["number"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut distinct = issued.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        200,
        "200 concurrent issues, 200 different numbers"
    );
    // Not listed in api.pool_metrics: counted under `other`, no series of its own.
    assert_eq!(
        node.metric("tsunagu_pool_issued_total{pool=\"other\"}"),
        200.0
    );
    let text = node.try_get("/metrics", None).unwrap().body;
    assert!(!text.contains(&id), "the pool id is no label");
}

/// A page (an Origin, no key) issuing in a loop gets 429 with Retry-After after its
/// burst and leases a handful of numbers, not the pool; another address still gets
/// numbers until the pool's own limit; another pool is unaffected; X-Forwarded-For is
/// believed from the trusted proxy only; a session holds at most its cap.
#[test]
fn a_page_in_a_loop_cannot_drain_a_pool() {
    let ports = Ports::take();
    // One token a minute: nothing refills while the test runs.
    let node = Node::start_api(
        ports,
        r#"trusted_proxies = ["127.0.0.4/32"]"#,
        "[api.issue]\nper_address_per_minute = 1\nper_address_burst = 5\nper_pool_per_minute = 1\nper_pool_burst = 8\nmax_leases_per_session = 2\n",
    );
    let (key, adv) = shop(&node);
    let pool = |stem: &str, mode: &str| page_pool(&node, &key, &adv, stem, mode);
    let (a, b, c) = (
        pool("1111", "dynamic"),
        pool("2222", "dynamic"),
        pool("3333", "one_time"),
    );
    let page = |from: &str, pool: &str, session: &str, xff: Option<&str>| {
        let params = format!(r#"{{"session_id": "{session}"}}"#);
        page_issue(ports.api, from, pool, &params, xff)
    };

    let statuses: Vec<u16> = (0..30)
        .map(|i| {
            let r = page("127.0.0.1", &a, &format!("v{i}"), None);
            if r.status == 429 {
                let wait: u64 = r
                    .header("retry-after")
                    .expect("Retry-After")
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&wait), "{wait}");
                assert_eq!(
                    r.header("access-control-allow-origin").as_deref(),
                    Some("https://shop.example")
                );
                assert_eq!(r.json()["error"]["code"], "rate_limited");
            }
            r.status
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        25,
        "{statuses:?}"
    );
    assert_eq!(
        node.get(&format!("/v1/pools/{a}"), &key).json()["leased"],
        5
    );
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    assert_eq!(
        page("127.0.0.1", &a, "x1", Some("198.51.100.9")).status,
        429
    );
    // Its preflights have a bucket of their own, of the same rate (each one asked the
    // store, unlimited): five go, the sixth is refused.
    let preflights: Vec<u16> = (0..6)
        .map(|_| {
            http(
                ports.api,
                "OPTIONS",
                &format!("/v1/pools/{a}/issue"),
                None,
                None,
                &[("Origin", "https://shop.example")],
            )
            .unwrap()
            .status
        })
        .collect();
    assert_eq!(preflights, [204, 204, 204, 204, 204, 429]);

    // Another address: the pool's own bucket (8) has 3 left.
    for i in 0..3 {
        assert_eq!(page("127.0.0.2", &a, &format!("w{i}"), None).status, 200);
    }
    let over = page("127.0.0.2", &a, "w3", None);
    assert_eq!(over.status, 429, "{}", over.body);
    assert!(over.body.contains("this pool"), "{}", over.body);
    // Another pool is unaffected.
    assert_eq!(page("127.0.0.3", &b, "u0", None).status, 200);
    // Behind the trusted proxy, each forwarded client has its own bucket.
    for i in 0..5 {
        let r = page(
            "127.0.0.4",
            &b,
            &format!("p{i}"),
            Some("192.0.2.1, 198.51.100.7"),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(
        page("127.0.0.4", &b, "p5", Some("198.51.100.7")).status,
        429
    );
    assert_eq!(
        page("127.0.0.4", &b, "q0", Some("198.51.100.8")).status,
        200
    );

    // A session holds at most 2 live numbers (one-time pool, with the operator's key,
    // which is not rate-limited).
    let by_key = |session: &str| {
        node.send(
            "POST",
            &format!("/v1/pools/{c}/issue"),
            Some(&key),
            &format!(r#"{{"params": {{"session_id": "{session}"}}}}"#),
        )
    };
    assert_eq!(by_key("s").status, 200);
    assert_eq!(by_key("s").status, 200);
    let full = by_key("s");
    assert_eq!(full.status, 429, "{}", full.body);
    assert!(full.header("retry-after").is_some());
    assert_eq!(by_key("t").status, 200);

    for (limit, n) in [("address", 28.0), ("pool", 1.0), ("session", 1.0)] {
        assert_eq!(
            node.metric(&format!(
                "tsunagu_api_issue_throttled_total{{limit=\"{limit}\"}}"
            )),
            n,
            "{limit}"
        );
    }
}

/// The pool's bucket pays for numbers taken, not for requests that take none: a
/// session's lease extended (the page tag's heartbeat) and requests the address's
/// lease cap refuses give their token back, so they cannot keep other visitors from a
/// number (they drained the bucket: some twenty addresses, or a busy page's
/// heartbeats, had every visitor refused 429: a review).
#[test]
fn extensions_and_capped_requests_cost_the_pool_nothing() {
    let ports = Ports::take();
    // Three tokens for the pool, one refill a minute: nothing refills while it runs.
    let node = Node::start_api(
        ports,
        "",
        "[api.issue]\nper_address_per_minute = 600\nper_address_burst = 100\nper_pool_per_minute = 1\nper_pool_burst = 3\nmax_leases_per_address = 1\n",
    );
    let (key, adv) = shop(&node);
    let pool = page_pool(&node, &key, &adv, "4444", "dynamic");
    let page = |from: &str, session: &str| {
        let params = format!(r#"{{"session_id": "{session}"}}"#);
        page_issue(ports.api, from, &pool, &params, None)
    };
    let first = page("127.0.0.1", "v1");
    assert_eq!(first.status, 200, "{}", first.body);
    for i in 0..10 {
        let again = page("127.0.0.1", "v1");
        assert_eq!(again.status, 200, "extension {i}: {}", again.body);
        assert_eq!(again.json()["number"], first.json()["number"]);
    }
    for i in 0..10 {
        let capped = page("127.0.0.1", &format!("other{i}"));
        assert_eq!(capped.status, 429, "{}", capped.body);
        assert!(!capped.body.contains("this pool"), "{}", capped.body);
    }
    // Two tokens left for new numbers, then the pool's own limit.
    assert_eq!(page("127.0.0.2", "w").status, 200);
    assert_eq!(page("127.0.0.3", "x").status, 200);
    let over = page("127.0.0.5", "y");
    assert_eq!(over.status, 429, "{}", over.body);
    assert!(over.body.contains("this pool"), "{}", over.body);
}

/// A page script that names a new session each time (or none) still gets at most
/// `api.issue.max_leases_per_address` live numbers of a pool from one address; the
/// session's own extension is not refused, and other addresses are not affected.
#[test]
fn an_address_holds_at_most_its_cap_of_live_leases() {
    let ports = Ports::take();
    // Rates generous enough that only the lease cap refuses.
    let node = Node::start_api(
        ports,
        "",
        "[api.issue]\nper_address_per_minute = 600\nper_address_burst = 100\nper_pool_per_minute = 600\nper_pool_burst = 100\nmax_leases_per_address = 3\n",
    );
    let (key, adv) = shop(&node);
    let pool = page_pool(&node, &key, &adv, "4444", "dynamic");
    let page = |from: &str, params: &str| page_issue(ports.api, from, &pool, params, None);
    let first = page("127.0.0.1", r#"{"session_id": "v0"}"#);
    assert_eq!(first.status, 200, "{}", first.body);
    for i in 1..3 {
        let r = page("127.0.0.1", &format!(r#"{{"session_id": "v{i}"}}"#));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for params in [r#"{"session_id": "v3"}"#, r#"{"session_id": "v4"}"#, "{}"] {
        let r = page("127.0.0.1", params);
        assert_eq!(r.status, 429, "{params}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "rate_limited");
        assert!(r.body.contains("this address"), "{}", r.body);
        let wait: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(wait >= 1, "{wait}");
    }
    let again = page("127.0.0.1", r#"{"session_id": "v0"}"#);
    assert_eq!(
        again.status, 200,
        "an extension is not a new lease: {}",
        again.body
    );
    assert_eq!(again.json()["number"], first.json()["number"]);
    assert_eq!(page("127.0.0.2", r#"{"session_id": "w0"}"#).status, 200);
    assert_eq!(
        node.get(&format!("/v1/pools/{pool}"), &key).json()["leased"],
        4
    );
    assert_eq!(
        node.metric("tsunagu_api_issue_throttled_total{limit=\"address_leases\"}"),
        3.0
    );
}
