"""Shared by cluster_ladder.py and failover.py: a three-node cluster on this machine,
set up exactly as scripts/cluster-demo.sh sets it up (the script writes the
certificates, secrets and configurations: `--write-configs`), plus a single node for
comparison, started and stopped as processes, and SIPp runs with their results.

Addresses (the demo's): node nN has SIP 127.0.0.N:5060, API 127.0.0.1:808N, cluster
127.0.0.N:7000; the single node has SIP 127.0.0.4:5060 and API 127.0.0.1:8084. All
forward to a SIPp UAS on 127.0.0.1:5070.
"""
import os, re, signal, subprocess, sys, time, urllib.error, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ladder import ROOT, SCEN, api, metric  # noqa: E402

DEMO = os.path.join(ROOT, "scripts", "cluster-demo.sh")
NUMBER = "0501234567"
DESTINATION = "0311112222"
UAS_PORT = 5070


class Node:
    """One `tsunagu serve` process."""

    def __init__(self, name, config, api_port, sip, log):
        self.name, self.config, self.api_port, self.sip, self.log = name, config, api_port, sip, log
        self.proc = None

    def start(self, binary):
        self.proc = subprocess.Popen([binary, "serve", "--config", self.config], stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "a"))

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def healthy(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/healthz", timeout=1):
                return True
        except (OSError, urllib.error.HTTPError):
            return False

    def metric(self, name):
        return metric(self.api_port, name)

    def stop(self):
        """SIGTERM (the node drains: 5 s at most in the demo's configuration), then wait."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(what, cond, limit, nodes=()):
    """Polls `cond` every 20 ms until true; exits with the nodes' log tails if it never is."""
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        for n in nodes:
            if n.proc is not None and not n.alive():
                fail(f"node {n.name} exited while waiting for {what}", nodes)
        time.sleep(0.02)
    fail(f"timed out after {limit} s waiting for {what}", nodes)


def fail(message, nodes):
    for n in nodes:
        try:
            with open(n.log) as f:
                tail = f.read()[-1500:]
        except OSError:
            tail = ""
        print(f"--- {n.name} ({n.log})\n{tail}", file=sys.stderr)
    sys.exit(message)


class Cluster:
    """The demo's three nodes, configured by scripts/cluster-demo.sh --write-configs."""

    def setting(self, name):
        """A setting of the members' configuration as written (e.g. worker_threads "1",
        udp_receive "\"auto\"": the demo sets both), or None when it is not set."""
        m = re.search(rf"^{name}\s*=\s*(\S+)", open(self.nodes[0].config).read(), re.M)
        return m.group(1) if m else None

    def set_store(self, line):
        """Adds `line` (e.g. `synchronous = "normal"`) to every member's [store]."""
        for n in self.nodes:
            before = open(n.config).read()
            text = before.replace("[store]\n", f"[store]\n{line}\n", 1)
            if text == before:
                sys.exit(f"{n.config} has no [store] table to add {line!r} to")
            with open(n.config, "w") as f:
                f.write(text)

    def __init__(self, work, log_level="warn"):
        self.dir = os.path.join(work, "cluster")
        env = dict(os.environ, TSUNAGU_DEMO_LOG_LEVEL=log_level)
        subprocess.run(["bash", DEMO, "--write-configs", self.dir], check=True, env=env, stdout=subprocess.DEVNULL)
        with open(os.path.join(self.dir, "admin_token")) as f:
            self.admin = f.read().strip()
        self.nodes = [Node(f"n{i}", os.path.join(self.dir, f"n{i}.toml"), 8080 + i, f"127.0.0.{i}:5060",
                           os.path.join(self.dir, f"n{i}.log")) for i in (1, 2, 3)]

    def start(self, binary):
        for n in self.nodes:
            n.start(binary)
        self.wait_formed()

    def view(self, node):
        """GET /v1/cluster on `node`."""
        return api(node.api_port, "GET", "/v1/cluster", self.admin)

    def states(self, node):
        """{member: state} as `node` sees it."""
        return {m["name"]: m["state"] for m in self.view(node)["members"]}

    def formed(self, nodes=None):
        nodes = nodes or self.nodes
        for n in nodes:
            v = self.view(n)
            others = {m.name for m in nodes if m is not n}
            up = {m["name"] for m in v["members"] if m["state"] == "up"}
            if not others <= up or not v.get("lease_valid") or v.get("lines_rebuilding"):
                return False
        return True

    def wait_formed(self, limit=60):
        wait_for("every node to see the others up", self.formed, limit, self.nodes)

    def stop(self):
        for n in self.nodes:
            if n.alive():
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            n.stop()


def single_node(work, admin, worker_threads=None, udp_receive=None):
    """A node on its own, configured like a member of the demo cluster (no [cluster]);
    `worker_threads`, `udp_receive`: its node.worker_threads and sip.udp_receive as
    TOML values (pass the members' to compare like with like; None leaves the
    defaults: one runtime thread per CPU, UDP read by the runtime with a standby
    thread)."""
    d = os.path.join(work, "single")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "node.toml")
    workers = f"worker_threads = {worker_threads}" if worker_threads else ""
    receive = f"udp_receive = {udp_receive}" if udp_receive else ""
    with open(conf, "w") as f:
        f.write(f"""
[node]
id = "single"
data_dir = "{d}/data"
drain_seconds = 5
{workers}
[sip]
listen = ["udp:127.0.0.4:5060", "tcp:127.0.0.4:5060"]
{receive}
[media]
address = "127.0.0.4"
ports = "20000-29999"
[api]
listen = "127.0.0.1:8084"
admin_token = "{admin}"
[log]
level = "warn"
[[trunks]]
name = "local"
inbound = ["127.0.0.0/8"]
outbound = "udp:127.0.0.1:{UAS_PORT}"
[[routes]]
prefix = ""
trunks = ["local"]
""")
    return Node("single", conf, 8084, "127.0.0.4:5060", os.path.join(d, "node.log"))


def provision(node, admin, lines=0):
    """An operator, an advertiser and the test number through `node`; with `lines`, a
    line limit (a queue of `lines` lines). Returns the operator's API key."""
    key = api(node.api_port, "POST", "/v1/operators", admin, {"name": "load"})["api_key"]
    adv = api(node.api_port, "POST", "/v1/advertisers", key, {"name": "shop"})
    api(node.api_port, "POST", "/v1/numbers", key, {
        "number": NUMBER, "advertiser_id": adv["id"],
        "destinations": [{"number": DESTINATION, "ring_seconds": 20}],
        "validity": {"min_talk_seconds": 1, "duplicate_window_seconds": 0}})
    if lines:
        api(node.api_port, "PATCH", f"/v1/numbers/{NUMBER}", key,
            {"queue": {"max_lines": lines, "max_wait_seconds": 40}})
    return key


def uas(work, scenario="uas_answer.xml", extra=(), out=None):
    """The destination: a SIPp UAS answering every call at once (`scenario`, with more
    SIPp options in `extra`; its screens written to the file `out`, if given). Returns
    the process (its command line in `.args`)."""
    return subprocess.Popen(["sipp", "-sf", os.path.join(SCEN, scenario), "-i", "127.0.0.1", "-p", str(UAS_PORT),
                             "-buff_size", "4194304", "-nostdin", "-t", "u1", *extra],
                            stdout=out or subprocess.DEVNULL, stderr=subprocess.STDOUT if out else subprocess.DEVNULL,
                            cwd=work)


def uac(target, port, rate_per_s, calls, hold_ms, step_dir, transport="u1", trace_rtt=True, limit_s=None,
        scenario="uac.xml", extra=()):
    """Starts a SIPp UAC calling NUMBER through `target` from 127.0.0.1:`port`, at
    `rate_per_s` calls per second (a float: SIPp's -r/-rp make 100/3 exact) for `calls`
    calls, in a directory of its own under `step_dir` (`scenario`, with more SIPp
    options in `extra`). Returns the process (its command line in `.args`); its outcome
    is `uac_result(port, step_dir)` once it has exited."""
    d = os.path.join(step_dir, f"uac{port}")
    os.makedirs(d, exist_ok=True)
    rate_calls, period_ms = rate_fraction(rate_per_s)
    cmd = ["sipp", "-sf", os.path.join(SCEN, scenario), "-s", NUMBER, target, "-i", "127.0.0.1", "-p", str(port),
           "-mp", str(6100 + 10 * (port % 100)), "-t", transport, "-key", "caller", "09012345678",
           "-r", str(rate_calls), "-rp", str(period_ms), "-m", str(calls),
           "-l", str(int(rate_per_s * (hold_ms / 1000 + 5)) + 1), "-d", str(hold_ms),
           "-buff_size", "4194304", "-nostdin", *extra]
    if trace_rtt:
        cmd += ["-trace_rtt", "-rtt_freq", "1"]
    if limit_s:
        cmd = ["timeout", str(limit_s)] + cmd
    out = open(os.path.join(d, "sipp.out"), "w")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=d)


def rate_fraction(rate_per_s):
    """(calls, period in ms) with calls / period = rate_per_s."""
    for period in (1000, 2000, 3000, 10_000, 100_000):
        calls = rate_per_s * period / 1000
        if abs(calls - round(calls)) < 1e-6 and round(calls) >= 1:
            return int(round(calls)), period
    return max(1, int(round(rate_per_s * 1000))), 1_000_000


def uac_result(port, step_dir):
    """(successful, failed, setup times in ms) of the UAC that ran from `port` in `step_dir`."""
    d = os.path.join(step_dir, f"uac{port}")
    with open(os.path.join(d, "sipp.out")) as f:
        text = f.read()

    def count(label):
        lines = [l for l in text.splitlines() if l.strip().startswith(label)]
        return int(lines[-1].split("|")[2].strip()) if lines else 0

    rtts = []
    for name in os.listdir(d):
        if name.endswith("_rtt.csv"):
            with open(os.path.join(d, name)) as f:
                for line in f:
                    # Date_ms;response_time_ms;rtd_no (SIPp's resolution is 1 ms)
                    parts = line.strip().split(";")
                    if len(parts) >= 3 and parts[2] == "1" and re.match(r"^[0-9.]+$", parts[1]):
                        rtts.append(float(parts[1]))
    return count("Successful call"), count("Failed call"), rtts
