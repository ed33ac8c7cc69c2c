//! The HTTP API and CLI as a user meets them: the SPEC section 8 calls, errors,
//! operator scoping, and `check-config`.

use crate::harness::*;
use std::process::Command;

#[test]
fn api_scoping_errors_and_crud() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, adv) = node.provision(
        "0501234567",
        r#"[{"number": "0311112222", "ring_seconds": 20}]"#,
        r#"{"min_talk_seconds": 10, "duplicate_window_seconds": 86400}"#,
    );
    let other = node.other_operator();

    // Authentication and roles.
    assert_eq!(node.send("GET", "/v1/advertisers", None, "").status, 401);
    assert_eq!(
        node.send("GET", "/v1/advertisers", Some("wrong"), "")
            .status,
        401
    );
    assert_eq!(
        node.send("GET", "/v1/operators", Some(&key), "").status,
        403
    );
    assert_eq!(
        node.send("GET", "/v1/advertisers", Some(ADMIN), "").status,
        403
    );
    // Retiring a cluster member is the admin's, and a node on its own has none.
    let retire = "/v1/cluster/members/n2";
    assert_eq!(node.send("DELETE", retire, None, "").status, 401);
    assert_eq!(node.send("DELETE", retire, Some(&key), "").status, 403);
    let alone = node.send("DELETE", retire, Some(ADMIN), "");
    assert_eq!(alone.status, 404, "{}", alone.body);
    assert!(alone.body.contains("on its own"), "{}", alone.body);

    // Another operator's ids answer 404 and change nothing.
    for (method, path, body) in [
        ("GET", format!("/v1/advertisers/{adv}"), ""),
        (
            "PATCH",
            format!("/v1/advertisers/{adv}"),
            r#"{"name": "stolen"}"#,
        ),
        ("DELETE", format!("/v1/advertisers/{adv}"), ""),
        ("GET", "/v1/numbers/0501234567".into(), ""),
        (
            "PATCH",
            "/v1/numbers/0501234567".into(),
            r#"{"destinations": [{"number": "0399999999"}]}"#,
        ),
        ("DELETE", "/v1/numbers/0501234567".into(), ""),
    ] {
        let r = node.send(method, &path, Some(&other), body);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], "not_found");
    }
    assert_eq!(
        node.get(&format!("/v1/advertisers/{adv}"), &key).json()["name"],
        "shop"
    );
    assert_eq!(
        node.get("/v1/numbers/0501234567", &key).json()["destinations"][0]["number"],
        "0311112222"
    );

    // Bad input: clear errors naming the field; nothing stored.
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        ("/v1/advertisers", "{not json", 400, None),
        (
            "/v1/advertisers",
            r#"{"name": "x", "colour": "red"}"#,
            400,
            None,
        ),
        ("/v1/advertisers", r#"{"name": ""}"#, 422, Some("name")),
        (
            "/v1/numbers",
            &format!(
                r#"{{"number": "05O1", "advertiser_id": "{adv}", "destinations": [{{"number": "0311112222"}}]}}"#
            ),
            422,
            Some("number"),
        ),
        (
            "/v1/numbers",
            &format!(r#"{{"number": "0507777777", "advertiser_id": "{adv}", "destinations": []}}"#),
            422,
            Some("destinations"),
        ),
        (
            "/v1/numbers",
            &format!(
                r#"{{"number": "0507777777", "advertiser_id": "{adv}", "destinations": [{{"number": "0311112222", "ring_seconds": 0}}]}}"#
            ),
            422,
            Some("destinations[0].ring_seconds"),
        ),
        (
            "/v1/numbers",
            r#"{"number": "0507777777", "advertiser_id": "adv_nope", "destinations": [{"number": "0311112222"}]}"#,
            422,
            Some("advertiser_id"),
        ),
        (
            "/v1/numbers",
            &format!(
                r#"{{"number": "0507777777", "advertiser_id": "{adv}", "destinations": [{{"number": 311112222}}]}}"#
            ),
            400,
            Some("destinations[0].number"),
        ),
        (
            "/v1/numbers",
            &format!(
                r#"{{"number": "0501234567", "advertiser_id": "{adv}", "destinations": [{{"number": "0311112222"}}]}}"#
            ),
            409,
            None,
        ),
    ];
    for (path, body, status, field) in cases {
        let r = node.send("POST", path, Some(&key), body);
        assert_eq!(r.status, *status, "POST {path} {body}: {}", r.body);
        if let Some(f) = field {
            assert_eq!(r.json()["error"]["field"], *f, "{body}: {}", r.body);
        }
    }
    assert_eq!(
        node.get("/v1/advertisers", &key).json()["advertisers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        node.get("/v1/numbers", &key).json()["numbers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(node.get("/v1/calls?result=won", &key).status, 400);

    // Update and delete in order: an advertiser with numbers cannot go.
    let r = node.patch_number(
        &key,
        "0501234567",
        r#"{"caller_id": "system", "tracking_params": {"medium": "flyer"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["tracking_params"]["medium"], "flyer");
    assert_eq!(
        node.send("DELETE", &format!("/v1/advertisers/{adv}"), Some(&key), "")
            .status,
        409
    );
    assert_eq!(
        node.send("DELETE", "/v1/numbers/0501234567", Some(&key), "")
            .status,
        204
    );
    assert_eq!(
        node.send("DELETE", &format!("/v1/advertisers/{adv}"), Some(&key), "")
            .status,
        204
    );

    // Operators (admin) and extra keys.
    let ops = node.get("/v1/operators", ADMIN).json();
    let op_id = ops["operators"][0]["id"].as_str().unwrap().to_string();
    let extra = node.send(
        "POST",
        &format!("/v1/operators/{op_id}/keys"),
        Some(ADMIN),
        "",
    );
    assert_eq!(extra.status, 201);
    let k2 = extra.json()["api_key"].as_str().unwrap().to_string();
    assert_eq!(node.get("/v1/advertisers", &k2).status, 200);

    // Operational endpoints.
    assert_eq!(node.try_get("/readyz", None).unwrap().status, 200);
    let metrics = node.try_get("/metrics", None).unwrap().body;
    assert!(metrics.contains("# HELP tsunagu_active_calls "));
    let doc = node.try_get("/v1/openapi.json", None).unwrap().json();
    assert_eq!(doc["openapi"], "3.0.3");
}

#[test]
fn check_config_reports_every_error_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[media]\nports = \"5000-6000\"\n[sip]\nlisten = [\"udp:127.0.0.1:5060\"]\n[[trunks]]\nname = \"a\"\n[[routes]]\nprefix = \"\"\ntrunks = [\"a\", \"nope\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tsunagu"))
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in ["media.ports", "routes[0].trunks[0]", "routes[0].trunks[1]"] {
        assert!(
            err.contains(&format!(": {path}: ")),
            "missing {path} in:\n{err}"
        );
    }
    let spec = repo_root().join("examples/spec-minimal.toml");
    // The file alone, or named as `serve` names it (`-c` printed the usage).
    for flag in [None, Some("--config"), Some("-c")] {
        let out = Command::new(env!("CARGO_BIN_EXE_tsunagu"))
            .arg("check-config")
            .args(flag)
            .arg(&spec)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{flag:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `check-config` refuses what `serve` refuses: a ScyllaDB store in a build without
/// the backend is refused by both, in the same words (before, check-config said ok).
#[test]
fn check_config_refuses_what_serve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scylla.toml");
    std::fs::write(
        &file,
        format!(
            "[node]\nid = \"n1\"\ndata_dir = \"{}\"\n[store]\nbackend = \"scylla\"\nnodes = [\"127.0.0.1:9042\"]\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tsunagu"))
            .args(args)
            .arg(&file)
            .output()
            .unwrap()
    };
    let check = run(&["check-config"]);
    let check_err = String::from_utf8_lossy(&check.stderr);
    if cfg!(feature = "scylla") {
        assert_eq!(check.status.code(), Some(0), "{check_err}");
        return;
    }
    let refusal = "store.backend: \"scylla\" needs a build with the ScyllaDB backend";
    assert_eq!(check.status.code(), Some(2), "{check_err}");
    assert!(check_err.contains(refusal), "{check_err}");
    // serve refuses at once, before opening anything, with the same message.
    let serve = run(&["serve", "--config"]);
    let serve_err = String::from_utf8_lossy(&serve.stderr);
    assert!(!serve.status.success(), "{serve_err}");
    assert!(serve_err.contains(refusal), "{serve_err}");
}

/// SPEC section 8, as written: the shipped configuration file, the API calls with the
/// documented bodies, SIPp on 5060 → 5070, and the CSV export.
#[test]
fn spec_section_8_example_works_as_written() {
    let spec_ports = Ports {
        sip: 5060,
        api: 8080,
        uas: 5070,
        uac: 5061,
        uas_media: 16000,
        uac_media: 16100,
        rtp_first: 20000,
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::run(
        spec_ports,
        dir,
        &repo_root().join("examples/spec-minimal.toml"),
    );
    let op = node.send(
        "POST",
        "/v1/operators",
        Some("change-me"),
        r#"{"name": "op1"}"#,
    );
    assert_eq!(op.status, 201, "{}", op.body);
    assert!(op.json()["id"].is_string());
    let key = op.json()["api_key"].as_str().unwrap().to_string();
    let adv = node.send("POST", "/v1/advertisers", Some(&key), r#"{"name": "shop"}"#);
    assert_eq!(adv.status, 201);
    let adv_id = adv.json()["id"].as_str().unwrap().to_string();
    let number = format!(
        r#"{{"number": "0501234567", "advertiser_id": "{adv_id}",
      "destinations": [{{"number": "0311112222", "ring_seconds": 20}}],
      "validity": {{"min_talk_seconds": 10, "duplicate_window_seconds": 86400}}}}"#
    );
    assert_eq!(
        node.send("POST", "/v1/numbers", Some(&key), &number).status,
        201
    );

    let uas = Uas::start("uas_answer.xml", spec_ports, node.dir.path(), &[]);
    let run = uac("uac.xml", spec_ports, "0501234567", 5, 10, &["-d", "100"]);
    assert_eq!((run.exit, run.successful), (0, 5), "{}", run.output);
    assert_eq!(
        uas.messages().matches("INVITE sip:0311112222@").count(),
        5,
        "Request-URI user 0311112222"
    );
    node.wait_for_calls(&key, 5);
    let csv = node.get("/v1/calls?format=csv", &key);
    let rows: Vec<&str> = csv.body.lines().collect();
    assert_eq!(rows.len(), 6, "header row + one row per call");
    for row in &rows[1..] {
        // result, durations, caller kind and validity are all there.
        assert!(row.contains(",mobile,0311112222,"), "{row}");
        assert!(row.contains(",answered,"), "{row}");
        assert!(
            row.contains(",invalid_short,") || row.contains(",invalid_duplicate,"),
            "short calls are not valid: {row}"
        );
    }
    assert!(
        node.dir.path().join("data/tsunagu.db").exists(),
        "./data is relative to the working directory"
    );
}

/// Every metric the shipped Grafana dashboard and alert rules query is one the node exports.
#[test]
fn dashboard_and_alert_rules_use_exported_metrics() {
    let ports = Ports::take();
    // A trunk with keepalives: its `tsunagu_trunk_up` appears (nobody answers it).
    let pinged = "\n[[trunks]]\nname = \"pinged\"\ninbound = [\"127.0.0.5/32\"]\noutbound = \"udp:127.0.0.1:9\"\noptions_interval_seconds = 1\n";
    let node = Node::start(ports, "127.0.0.1/32", pinged);
    // Labelled families appear once they have a child: make one call with media and one refusal.
    let (key, _) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    let _uas = Uas::start("uas_answer.xml", ports, node.dir.path(), &["-rtp_echo"]);
    let run = uac("uac_rtp.xml", ports, "0501234567", 1, 1, &["-d", "500"]);
    assert_eq!(run.successful, 1, "{}", run.output);
    let refused = uac_expecting(404, node.dir.path(), ports, "0509999999", 1, &[]);
    assert_eq!(refused.successful, 1, "{}", refused.output);
    node.wait_for_calls(&key, 1);
    // The SIP stream defences' families appear with their first event (the dashboard
    // plots them): a TCP connection from an untrusted source (refused) and a stream
    // that cannot be framed (closed).
    let sip = std::net::SocketAddr::from(([127, 0, 0, 1], ports.sip));
    let _untrusted = tcp_from([127, 0, 0, 2].into(), sip, None);
    let mut garbled = tcp_from([127, 0, 0, 1].into(), sip, None).expect("connect");
    std::io::Write::write_all(
        &mut garbled,
        b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: many\r\n\r\n",
    )
    .unwrap();
    node.wait_until(
        std::time::Duration::from_secs(5),
        "a refused and a closed SIP connection to be counted",
        || {
            let m = node.try_get("/metrics", None).unwrap().body;
            m.contains("tsunagu_sip_connections_refused_total{")
                && m.contains("tsunagu_sip_connections_closed_total{")
        },
    );
    let text = node.try_get("/metrics", None).unwrap().body;
    let families: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(families.len() > 20, "{text}");
    let exported = |name: &str| {
        families.iter().any(|f| {
            name == f
                || ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{f}{s}"))
        })
    };
    for file in [
        "loadtest/grafana/tsunagu.json",
        "loadtest/prometheus/alerts.yml",
    ] {
        let body = std::fs::read_to_string(repo_root().join(file)).unwrap();
        let mut rest = body.as_str();
        let mut seen = 0;
        while let Some(i) = rest.find("tsunagu_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            if name == "tsunagu_" {
                continue;
            }
            seen += 1;
            assert!(
                exported(&name),
                "{file} uses {name}, which the node does not export"
            );
        }
        assert!(seen > 5, "{file} names metrics");
    }
}

/// Runs `tsunagu numbers import <csv> --config <node's config>` with `key` (if any) in
/// TSUNAGU_API_KEY: (exit code, stdout, stderr).
fn import_numbers(node: &Node, csv: &str, key: Option<&str>) -> (i32, String, String) {
    let file = node.dir.path().join("numbers.csv");
    std::fs::write(&file, csv).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tsunagu"));
    cmd.args(["numbers", "import"])
        .arg(&file)
        .arg("--config")
        .arg(node.dir.path().join("node.toml"))
        .env_remove("TSUNAGU_API_KEY");
    if let Some(key) = key {
        cmd.env("TSUNAGU_API_KEY", key);
    }
    let out = cmd.output().expect("run tsunagu numbers import");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An import that reaches the operator's number cap halfway (every dry run saw room
/// for one more) takes back what it created: nothing is left half done (ten of a
/// hundred rows stayed: a review), and the exit status says the rows were refused.
#[test]
fn an_import_stopped_by_the_cap_takes_back_what_it_created() {
    let ports = Ports::take();
    let node = Node::start_api(ports, "max_numbers_per_operator = 3", "");
    let (key, adv) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    let csv = format!(
        "number,advertiser_id,destinations\n0501230001,{adv},0311112222\n0501230002,{adv},0311112222\n0501230003,{adv},0311112222\n"
    );
    let (code, out, err) = import_numbers(&node, &csv, Some(&key));
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("line 4: 409"), "{err}");
    assert!(err.contains("nothing imported"), "{err}");
    let r = node.send("GET", "/v1/numbers", Some(&key), "");
    let numbers: Vec<String> = r.json()["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["number"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(numbers, ["0501234567"], "{}", r.body);
}

/// `tsunagu numbers import`: a sheet with bad rows is refused whole, each problem named
/// with its line, and creates nothing; the mended sheet creates every number with its
/// destinations and options; another operator's key or none imports nothing.
#[test]
fn numbers_are_imported_from_a_csv_file_all_or_nothing() {
    let ports = Ports::take();
    let node = Node::start(ports, "127.0.0.1/32", "");
    let (key, adv) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    let listed = |key: &str| -> Vec<String> {
        let r = node.send("GET", "/v1/numbers", Some(key), "");
        assert_eq!(r.status, 200, "{}", r.body);
        let mut n: Vec<String> = r.json()["numbers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["number"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    let good = format!(
        "\u{feff}number,advertiser_id,destinations,options\r\n\
         0501230001,{adv},0311112222:20;0311113333,\r\n\
         0501230002,{adv},0311114444,\"{{\"\"recording\"\": {{\"\"mode\"\": \"\"both\"\"}}}}\"\r\n"
    );
    // Line 3 rings too long; line 4 is a number that exists; line 5 names an
    // advertiser the operator does not have. Checked by the node: nothing created.
    let bad = format!(
        "{good}0501230003,{adv},0311115555:999,\r\n0501234567,{adv},0311116666,\r\n0501230005,adv_nobody,0311117777,\r\n"
    );
    let (code, out, err) = import_numbers(&node, &bad, Some(&key));
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    for line in ["line 4: 422", "line 5: 409", "line 6: 422"] {
        assert!(err.contains(line), "{line}: {err}");
    }
    assert!(
        err.contains("nothing imported: 3 of 5 rows refused"),
        "{err}"
    );
    assert_eq!(listed(&key), vec!["0501234567"]);

    // Another operator's key: its advertiser is not this one's.
    let other = node.other_operator();
    let (code, _, err) = import_numbers(&node, &good, Some(&other));
    assert_eq!(code, 1, "{err}");
    assert_eq!(listed(&key), vec!["0501234567"]);
    let (code, _, err) = import_numbers(&node, &good, None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("TSUNAGU_API_KEY"), "{err}");

    let (code, out, err) = import_numbers(&node, &good, Some(&key));
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out, "2 numbers imported\n");
    assert_eq!(listed(&key), vec!["0501230001", "0501230002", "0501234567"]);
    let first = node
        .send("GET", "/v1/numbers/0501230001", Some(&key), "")
        .json();
    assert_eq!(
        first["destinations"],
        serde_json::json!([{"number": "0311112222", "ring_seconds": 20}, {"number": "0311113333", "ring_seconds": 30}]),
        "{first}"
    );
    let second = node
        .send("GET", "/v1/numbers/0501230002", Some(&key), "")
        .json();
    assert_eq!(second["recording"]["mode"], "both", "{second}");
    // The same file again: every row exists now, so nothing more happens.
    let (code, _, err) = import_numbers(&node, &good, Some(&key));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("line 2: 409") && err.contains("line 3: 409"),
        "{err}"
    );
}
