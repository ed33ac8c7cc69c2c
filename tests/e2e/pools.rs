//! Number pools: dynamic issuance with tracking parameters, attribution of calls to
//! leases, overflow, and no double issue under concurrent issuers.

use crate::harness::*;

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

    // Errors and scoping.
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
    assert_eq!(
        node.metric(&format!("tsunagu_pool_issued_total{{pool=\"{id}\"}}")),
        200.0
    );
}
