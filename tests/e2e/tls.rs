//! SIP over TLS end to end. SIPp (whose Debian build has no TLS) reaches the node
//! through stunnel, a real TLS peer: SIPp UAC (TCP) → stunnel (client certificate) →
//! node TLS listener (mutual TLS) → node TLS trunk → stunnel (TLS server) → SIPp UAS
//! (TCP). Also: a client without a certificate is refused, and a replaced certificate
//! is served without a restart.

use crate::harness::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub(crate) fn sh(step: &str) {
    let ok = Command::new("sh")
        .args(["-c", step])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sh");
    assert!(ok.success(), "failed: {step}");
}

/// A test CA, and a certificate it signs for IP 127.0.0.1 named `name` in `dir`.
pub(crate) fn make_ca(dir: &Path) {
    require_tool("openssl");
    let d = dir.display();
    sh(&format!("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca -keyout {d}/ca.key -out {d}/ca.pem"));
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
}

pub(crate) fn make_leaf(dir: &Path, name: &str) {
    let d = dir.display();
    sh(&format!("openssl req -newkey rsa:2048 -nodes -subj /CN={name} -keyout {d}/{name}.key.new -out {d}/{name}.csr"));
    sh(&format!("openssl x509 -req -in {d}/{name}.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial -days 1 -extfile {d}/leaf.ext -out {d}/{name}.pem.new"));
    // Key first, then certificate, each by rename: a reader sees whole files.
    std::fs::rename(
        dir.join(format!("{name}.key.new")),
        dir.join(format!("{name}.key")),
    )
    .unwrap();
    std::fs::rename(
        dir.join(format!("{name}.pem.new")),
        dir.join(format!("{name}.pem")),
    )
    .unwrap();
}

/// Connects to the node's TLS port with Python's ssl module; returns the serial of the
/// node's certificate, or the error text.
fn python_tls_probe(dir: &Path, port: u16, with_client_cert: bool) -> Result<String, String> {
    let script = r#"
import socket, ssl, sys
port, ca, cert, key, use_cert = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1"
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
if use_cert:
    ctx.load_cert_chain(cert, key)
try:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            serial = s.getpeercert()["serialNumber"]
            s.sendall(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bKprobe\r\nFrom: <sip:p@h>;tag=p\r\nTo: <sip:n@h>\r\nCall-ID: probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
            reply = s.recv(4096)
            if not reply.startswith(b"SIP/2.0 200"):
                print("no 200: %r" % reply[:40]); sys.exit(1)
            print(serial)
except Exception as e:
    print("error: %s" % e); sys.exit(1)
"#;
    let d = dir.display().to_string();
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            script,
            &port.to_string(),
            &format!("{d}/ca.pem"),
            &format!("{d}/client.pem"),
            &format!("{d}/client.key"),
        ])
        .arg(if with_client_cert { "1" } else { "0" })
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

struct Stunnel(std::process::Child);

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sip_over_tls_with_mutual_tls_and_certificate_reload() {
    require_tool("stunnel4");
    let ports = Ports::take();
    let (tls_port, caller_side, trunk_side, uas_tcp) =
        (ports.sip + 4, ports.sip + 5, ports.sip + 6, ports.sip + 7);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d);
    for name in ["node", "client", "trunk"] {
        make_leaf(d, name);
    }
    let p = |f: &str| d.join(f).display().to_string();
    let config = format!(
        r#"
[node]
id = "e2e"
data_dir = "{data}"
[sip]
listen = ["udp:127.0.0.1:{sip}", "tls:127.0.0.1:{tls_port}"]
[sip.tls]
cert_file = "{node_pem}"
key_file = "{node_key}"
client_ca_file = "{ca}"
ca_file = "{ca}"
reload_seconds = 1
[media]
address = "127.0.0.1"
ports = "{rtp_first}-{rtp_last}"
[api]
listen = "127.0.0.1:{api}"
admin_token = "{ADMIN}"
[[trunks]]
name = "carrier-tls"
inbound = ["127.0.0.1/32"]
outbound = "tls:127.0.0.1:{trunk_side}"
[[routes]]
prefix = ""
trunks = ["carrier-tls"]
"#,
        data = d.join("data").display(),
        sip = ports.sip,
        node_pem = p("node.pem"),
        node_key = p("node.key"),
        ca = p("ca.pem"),
        rtp_first = ports.rtp_first,
        rtp_last = ports.rtp_first + RTP_PER_SLOT - 1,
        api = ports.api,
    );
    let node_dir = tempfile::tempdir().unwrap();
    let config_path = node_dir.path().join("node.toml");
    std::fs::write(&config_path, config).unwrap();
    let node = Node::run(ports, node_dir, &config_path);

    // stunnel: the caller's side presents the client certificate and checks the node's;
    // the trunk's side is a TLS server in front of the SIPp UAS.
    std::fs::write(
        d.join("stunnel.conf"),
        format!(
            "foreground = yes\npid =\ndebug = 4\n\n[caller]\nclient = yes\naccept = 127.0.0.1:{caller_side}\nconnect = 127.0.0.1:{tls_port}\ncert = {cp}\nkey = {ck}\nCAfile = {ca}\nverifyChain = yes\ncheckIP = 127.0.0.1\n\n[trunk]\naccept = 127.0.0.1:{trunk_side}\nconnect = 127.0.0.1:{uas_tcp}\ncert = {tp}\nkey = {tk}\n",
            cp = p("client.pem"),
            ck = p("client.key"),
            ca = p("ca.pem"),
            tp = p("trunk.pem"),
            tk = p("trunk.key"),
        ),
    )
    .unwrap();
    let _stunnel = Stunnel(
        Command::new("stunnel4")
            .arg(d.join("stunnel.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stunnel.log")).unwrap())
            .spawn()
            .expect("stunnel4"),
    );
    node.wait_until(Duration::from_secs(10), "stunnel to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", caller_side)).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", trunk_side)).is_ok()
    });

    let (key, _) = node.provision("0501234567", r#"[{"number": "0311112222"}]"#, "{}");
    // The UAS is reached through the trunk's TLS side: its Contact names that side.
    let uas_scenario = d.join("uas_tls.xml");
    std::fs::write(
        &uas_scenario,
        std::fs::read_to_string(scenario("uas_answer.xml"))
            .unwrap()
            .replace(
                "Contact: <sip:[local_ip]:[local_port];transport=[transport]>",
                &format!("Contact: <sip:uas@127.0.0.1:{trunk_side};transport=tls>"),
            ),
    )
    .unwrap();
    let uas = Uas::start_on(
        &uas_scenario.display().to_string(),
        uas_tcp,
        ports.uas_media,
        d,
        &["-t", "t1"],
    );
    let via_stunnel = Ports {
        sip: caller_side,
        ..ports
    };
    let run = uac(
        "uac.xml",
        via_stunnel,
        "0501234567",
        3,
        3,
        &["-t", "t1", "-d", "200"],
    );
    assert_eq!(
        (run.exit, run.successful),
        (0, 3),
        "{}\nuas:\n{}\nstunnel:\n{}",
        run.output,
        uas.messages(),
        std::fs::read_to_string(d.join("stunnel.log")).unwrap_or_default()
    );
    let calls = node.wait_for_calls(&key, 3);
    assert!(calls
        .iter()
        .all(|c| c["result"] == "answered" && c["trunk"] == "carrier-tls"));
    let seen = uas.messages();
    assert!(
        seen.contains(&format!(
            "INVITE sip:0311112222@127.0.0.1:{trunk_side};transport=tls SIP/2.0"
        )),
        "{seen}"
    );
    assert!(seen.contains("Via: SIP/2.0/TLS 127.0.0.1:"), "{seen}");
    assert_eq!(node.metric("tsunagu_sip_tls_handshake_failures_total"), 0.0);

    // Mutual TLS: without a client certificate the node refuses the connection.
    let first = python_tls_probe(d, tls_port, true).expect("a client with a certificate gets in");
    let refused = python_tls_probe(d, tls_port, false);
    assert!(
        refused.is_err(),
        "a client without a certificate got in: {refused:?}"
    );
    node.wait_until(
        Duration::from_secs(10),
        "the refused handshake counted",
        || node.metric("tsunagu_sip_tls_handshake_failures_total") >= 1.0,
    );

    // A new certificate in place of the old one is served without a restart.
    make_leaf(d, "node");
    node.wait_until(Duration::from_secs(20), "the certificate reload", || {
        node.metric("tsunagu_tls_certificate_reloads_total{status=\"ok\"}") >= 1.0
    });
    let second = python_tls_probe(d, tls_port, true).expect("still serving");
    assert_ne!(
        first, second,
        "the new certificate (another serial) is served"
    );

    // A key file the node cannot use fails the reload (the old pair stays); put right
    // without a new modification time (as `chown` or `chmod` would), it is tried again
    // and used. It was not retried until a file's modification time changed.
    let (key, cert) = (d.join("node.key"), d.join("node.pem"));
    let stamp = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let (broken_key, kept_cert) = (stamp(&key), stamp(&cert));
    node.wait_until(Duration::from_secs(20), "the failed reload", || {
        node.metric("tsunagu_tls_certificate_reloads_total{status=\"failed\"}") >= 1.0
    });
    let ok_before = node.metric("tsunagu_tls_certificate_reloads_total{status=\"ok\"}");
    assert_eq!(
        python_tls_probe(d, tls_port, true).expect("the old pair serves on"),
        second
    );
    let d_str = d.display();
    sh(&format!("openssl req -newkey rsa:2048 -nodes -subj /CN=node -keyout {d_str}/node.key.new -out {d_str}/node.csr"));
    sh(&format!("openssl x509 -req -in {d_str}/node.csr -CA {d_str}/ca.pem -CAkey {d_str}/ca.key -CAcreateserial -days 1 -extfile {d_str}/leaf.ext -out {d_str}/node.pem.new"));
    for (new, stamped) in [("node.key.new", broken_key), ("node.pem.new", kept_cert)] {
        let f = std::fs::File::options()
            .write(true)
            .open(d.join(new))
            .unwrap();
        f.set_modified(stamped).unwrap();
    }
    std::fs::rename(d.join("node.key.new"), &key).unwrap();
    std::fs::rename(d.join("node.pem.new"), &cert).unwrap();
    assert_eq!((stamp(&key), stamp(&cert)), (broken_key, kept_cert));
    node.wait_until(
        Duration::from_secs(20),
        "the reload once the files are right",
        || node.metric("tsunagu_tls_certificate_reloads_total{status=\"ok\"}") > ok_before,
    );
    let third = python_tls_probe(d, tls_port, true).expect("still serving");
    assert_ne!(third, second, "the pair put right is served");
}
