//! A test cluster: several real nodes on 127.0.0.1/2/3 sharing one embedded store
//! file, with mutual TLS between them (certificates made by `openssl` per test).

use crate::harness::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const SECRET: &str = "cluster-secret-for-tests-0123456789";

/// Certificates for the cluster: a CA, one certificate per node address (127.0.0.N),
/// and a rogue CA with a certificate for 127.0.0.2 it signed.
pub fn make_certs(dir: &Path) {
    require_tool("openssl");
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca = |name: &str| {
        format!(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout {name}.key -out {name}.pem -days 2 -subj '/CN={name}'"
        )
    };
    let leaf = |name: &str, ip: &str, ca: &str| {
        format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}.key \
             -out {name}.csr -subj '/CN={name}' && \
             printf 'subjectAltName=IP:{ip}\\nextendedKeyUsage=serverAuth,clientAuth\\n' > {name}.ext && \
             openssl x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial \
             -out {name}.pem -days 2 -extfile {name}.ext"
        )
    };
    sh(&ca("ca"));
    sh(&ca("rogue-ca"));
    // n4: the address of a second process started with a member's node id.
    for i in 1..=4 {
        sh(&leaf(&format!("n{i}"), &format!("127.0.0.{i}"), "ca"));
    }
    sh(&leaf("rogue", "127.0.0.2", "rogue-ca"));
}

/// One node of a test cluster.
pub struct Member {
    pub node: Node,
    /// Its SIP address (`ip:port`).
    pub sip: String,
}

pub struct TestCluster {
    pub shared: tempfile::TempDir,
    pub members: BTreeMap<String, Member>,
    /// The one destination (SIPp UAS) every node forwards to.
    pub uas_ports: Ports,
    /// The nodes' slot: node i listens for SIP and RTP on 127.0.0.i at the slot's
    /// ports (one slot serves all three), its API on 127.0.0.1 at the slot's API port,
    /// +4 or +5 (see [`TestCluster::start`]).
    pub node_ports: Ports,
    pub cluster_port: u16,
    /// Callers started so far (see `caller_ports`).
    pub callers: usize,
    /// The node RTP range (every node the same ports on its own address); by default
    /// each node's slot range.
    pub rtp: Option<(u16, u16)>,
    /// More lines for each node's `[node]` table.
    pub node_extra: String,
    /// More tables for each node's configuration.
    pub extra: String,
}

/// How a node is to be started (the default: one of the cluster, the right certificate
/// and secret).
#[derive(Clone, Copy)]
pub struct Joining<'a> {
    pub cert: &'a str,
    pub secret: &'a str,
}

pub const GOOD: Joining<'static> = Joining {
    cert: "",
    secret: SECRET,
};

impl TestCluster {
    pub fn new() -> TestCluster {
        let shared = tempfile::tempdir().expect("tempdir");
        make_certs(shared.path());
        let uas_ports = Ports::take();
        let node_ports = Ports::take();
        // The cluster port: free in this slot's range (every node has its own IP).
        let cluster_port = uas_ports.sip + 7;
        TestCluster {
            shared,
            members: BTreeMap::new(),
            uas_ports,
            node_ports,
            cluster_port,
            callers: 0,
            rtp: None,
            node_extra: String::new(),
            extra: String::new(),
        }
    }

    /// Three nodes, n1 to n3, started and formed into a cluster.
    pub fn formed() -> TestCluster {
        let mut c = TestCluster::new();
        for i in 1..=3 {
            c.start(i, GOOD);
        }
        c.wait_formed();
        c
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.shared.path().join(name)
    }

    /// Starts node `n{i}` on 127.0.0.{i}.
    pub fn start(&mut self, i: u8, how: Joining) -> &Member {
        self.start_in_shell(i, how, None)
    }

    /// [`TestCluster::start`] under `sh -c "<setup> && exec tsunagu ..."` when `setup`
    /// is given (see [`Node::run_in_shell`]).
    pub fn start_in_shell(&mut self, i: u8, how: Joining, setup: Option<&str>) -> &Member {
        assert!((1..=3).contains(&i), "test clusters have nodes 1 to 3");
        let base = self.node_ports;
        let api = [base.api, base.sip + 4, base.sip + 5][usize::from(i) - 1];
        self.launch(i, format!("n{i}"), api, how, setup)
    }

    /// Starts a second process with node id `name` (a member's: the test took that
    /// member out of `members` first) on 127.0.0.4, its API on 127.0.0.1 at the
    /// slot's +6: the replacement of a paused VM, or a copied configuration.
    pub fn start_twin(&mut self, name: &str) -> &Member {
        let api = self.node_ports.sip + 6;
        self.launch(4, name.to_string(), api, GOOD, None)
    }

    /// Starts node `name` on 127.0.0.{i} (its certificate n{i}'s unless `how` names
    /// one), its API on 127.0.0.1:`api`.
    fn launch(
        &mut self,
        i: u8,
        name: String,
        api: u16,
        how: Joining,
        setup: Option<&str>,
    ) -> &Member {
        let ports = Ports {
            api,
            ..self.node_ports
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = if how.cert.is_empty() {
            format!("n{i}")
        } else {
            how.cert.to_string()
        };
        let ca = if cert == "rogue" { "rogue-ca" } else { "ca" };
        let config = format!(
            r#"
[node]
id = "{name}"
data_dir = "{data}"
drain_seconds = 5
{node_extra}

[sip]
listen = ["udp:127.0.0.{i}:{sip}"]

[media]
address = "127.0.0.{i}"
ports = "{rtp_first}-{rtp_last}"

[api]
listen = "127.0.0.1:{api}"
admin_token = "{ADMIN}"

[store]
backend = "embedded"
path = "{db}"

[cluster]
listen = "127.0.0.{i}:{cport}"
seeds = ["127.0.0.1:{cport}", "127.0.0.2:{cport}", "127.0.0.3:{cport}"]
secret = "{secret}"

[cluster.tls]
cert_file = "{certs}/{cert}.pem"
key_file = "{certs}/{cert}.key"
ca_file = "{certs}/{ca}.pem"

[[trunks]]
name = "carrier-a"
inbound = ["127.0.0.0/8"]
outbound = "udp:127.0.0.1:{uas}"

[[routes]]
prefix = ""
trunks = ["carrier-a"]

{extra}
"#,
            data = dir.path().join("data").display(),
            sip = ports.sip,
            rtp_first = self.rtp.map_or(ports.rtp_first, |r| r.0),
            rtp_last = self.rtp.map_or(ports.rtp_first + RTP_PER_SLOT - 1, |r| r.1),
            node_extra = self.node_extra,
            extra = self.extra,
            api = ports.api,
            db = self.path("shared.db").display(),
            cport = self.cluster_port,
            secret = how.secret,
            certs = self.shared.path().display(),
            uas = self.uas_ports.uas,
        );
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config).expect("write config");
        let node = match setup {
            Some(setup) => Node::run_in_shell(ports, dir, &path, setup),
            None => Node::run(ports, dir, &path),
        };
        let sip = format!("127.0.0.{i}:{}", ports.sip);
        self.members.insert(name.clone(), Member { node, sip });
        &self.members[&name]
    }

    /// UAC ports for the test's next caller: free offsets of the UAS slot (five at
    /// most; callers need no RTP range of their own).
    pub fn caller_ports(&mut self) -> Ports {
        let j = self.callers;
        assert!(j < 5, "five callers per test cluster");
        self.callers += 1;
        Ports {
            uac: self.uas_ports.sip + [4, 5, 6, 8, 9][j],
            uac_media: self.uas_ports.uac_media + 8 * j as u16,
            ..self.uas_ports
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        &self.members[name].node
    }

    /// The cluster as `name` sees it.
    pub fn view(&self, name: &str) -> serde_json::Value {
        let r = self.node(name).get("/v1/cluster", ADMIN);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// `name`'s own incarnation, as its API says.
    pub fn epoch(&self, name: &str) -> u64 {
        self.view(name)["epoch"].as_u64().unwrap_or(0)
    }

    /// The state and epoch `of` has in `name`'s view.
    pub fn state(&self, name: &str, of: &str) -> Option<(String, u64)> {
        self.view(name)["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == of)
            .map(|m| {
                (
                    m["state"].as_str().unwrap_or_default().to_string(),
                    m["epoch"].as_u64().unwrap_or_default(),
                )
            })
    }

    /// Waits until every node applied every provisioning change in the store (a change
    /// made through one node reaches the others within a round trip, or the 2 s poll).
    pub fn wait_provisioned(&self) {
        use tsunagu_store::Store;
        let store =
            tsunagu_store::SqliteStore::open(&self.path("shared.db")).expect("the shared store");
        let latest = store
            .changes_since(i64::MAX, 0)
            .expect("change feed")
            .latest;
        for (name, m) in &self.members {
            m.node.wait_until(
                Duration::from_secs(5),
                &format!("{name} to apply change {latest}"),
                || m.node.metric("tsunagu_provisioning_change") >= latest as f64,
            );
        }
    }

    /// Waits until every node sees every other up (and holds its lease, its line
    /// tables rebuilt).
    pub fn wait_formed(&self) {
        let names: Vec<String> = self.members.keys().cloned().collect();
        let formed = || {
            names.iter().all(|a| {
                names
                    .iter()
                    .filter(|b| *b != a)
                    .all(|b| self.state(a, b).is_some_and(|(s, _)| s == "up"))
                    && self.view(a)["lease_valid"] == true
                    && self.view(a)["lines_rebuilding"] == false
            })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if formed() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let views: Vec<String> = names
            .iter()
            .map(|n| format!("{n}: {}", self.view(n)))
            .collect();
        let logs: Vec<String> = names
            .iter()
            .map(|n| format!("--- {n}\n{}", self.node(n).log()))
            .collect();
        panic!(
            "the cluster did not form:\n{}\n{}",
            views.join("\n"),
            logs.join("\n")
        );
    }
}

static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by the tests that carry hundreds of calls with RTP over three nodes: one at a
/// time, so two of them never share the machine's two cores (their 3 s bounds are
/// about the product, not about an overloaded test machine).
pub fn one_heavy_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}
