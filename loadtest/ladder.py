#!/usr/bin/env python3
"""Rate ladder: ramps the basic-call SIPp scenario through one tsunagu node.

Starts a node (release build) on loopback with its own data directory, provisions one
tracking number through the API, starts a SIPp UAS as the destination, then for each
target rate runs a SIPp UAC for a fixed number of seconds. Between steps it waits until
the node has no active call (an idle machine). For each step it prints:

  target cps | achieved cps | calls | success % | setup p50/p95 ms | node CPU ms/call | node RSS MiB
  | CPU % not ours | SIP core busy % (the busiest shard) | refused (new INVITEs refused
  503 for overload) | repeats (retransmissions of refused INVITEs, and their ACKs, dropped)

"Not ours" is the machine's busy CPU during the step (from /proc/stat) less the node's,
the UAS's and the UAC's, in % of one core: work nothing this run started (a build, the
hypervisor). A step where it is above 20 % is noise: it is run once more, and flagged
if it is noisy again.

Setup time is SIPp's response time 1 (INVITE sent -> 200 received) from -trace_rtt.
CPU is the node's per-thread run time from /proc/PID/task/*/schedstat (tick-based tools
under-count short bursts in VMs). Nothing here is a test: it reports, it never asserts.

The busiest shard's share of a core (from tsunagu_sip_core_busy_seconds_total) says
whether signalling is bound by one shard (near 100 %) or by the CPU as a whole.
--node-cpus/--sipp-cpus pin the node and SIPp with taskset (the node then sizes its
runtime and its shards, sip.shards = 0, to the CPUs it is given), --shards sets
sip.shards: e.g. one core against two for the scaling of the sharded SIP core.
--workers sets node.worker_threads (the runtime's threads); --udp-receive sets
sip.udp_receive (auto, the default: the runtime reads SIP over UDP and a standby thread
reads too while it is late; threads: receive threads always; runtime: the runtime
alone); --udp-runtime is --udp-receive runtime.

--stages prints, under each step, where a message's time inside the node went, from the
node's own histograms (bucket bounds, so "<=0.2" means at most 0.2 ms): received ->
taken by the SIP core (tsunagu_sip_queue_delay_seconds), admission -> the call's task
running (tsunagu_call_start_delay_seconds), a call's command -> taken by the SIP core
(tsunagu_sip_command_delay_seconds); p50 and p99 of each over the step.

Usage: python3 loadtest/ladder.py [--rates 100,200,500] [--seconds 10] [--hold-ms 1000]
       [--node-cpus 0] [--sipp-cpus 1] [--shards N] [--workers N] [--udp-receive auto|threads|runtime]
       [--stages]
"""
import argparse, json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCEN = os.path.join(ROOT, "loadtest", "scenarios")
ADMIN = "ladder-admin-token"


def api(port, method, path, token, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
        return json.loads(text) if text.startswith("{") else text


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def series(port, name):
    """Every series of metric `name`: {labels text: value}."""
    out = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{"):
                labels, value = line.rsplit(" ", 1)
                out[labels] = float(value)
    return out


def cpu_ns(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def machine_idle_ns():
    """Idle time of the whole machine (all cores), from /proc/stat. Busy time is wall
    time x cores less this: idle is counted exactly (nohz), while the user and system
    columns are tick samples that miss short wake-ups."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[3] + fields[4]) * 1e9 / os.sysconf("SC_CLK_TCK")


def children_ns():
    """CPU time of the children this script has waited for (the UACs)."""
    r = os.times()
    return (r.children_user + r.children_system) * 1e9


NOISE_PCT = 20.0


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


STAGES = (("queue", "tsunagu_sip_queue_delay_seconds"),
          ("start", "tsunagu_call_start_delay_seconds"),
          ("command", "tsunagu_sip_command_delay_seconds"))


def buckets(port, name):
    """A histogram's cumulative buckets: {upper bound in s: count}."""
    out = {}
    for labels, value in series(port, name + "_bucket").items():
        m = re.search(r'le="([^"]+)"', labels)
        if m:
            out[float(m.group(1))] = value
    return out


def bucket_quantile(before, after, q):
    """The upper bound (ms) of the bucket holding quantile q of what was observed
    between two readings of one histogram; None when nothing was."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    for b, c in zip(bounds, counts):
        if c >= q * total:
            return b * 1000.0
    return float("inf")


def stages_line(before, after):
    parts = []
    for label, name in STAGES:
        b, a = before.get(name, {}), after.get(name, {})
        p50, p99 = bucket_quantile(b, a, 0.5), bucket_quantile(b, a, 0.99)
        fmt = lambda v: "-" if v is None else f"<={v:g}"
        parts.append(f"{label} p50 {fmt(p50)} p99 {fmt(p99)}")
    return "        stages (ms): " + ", ".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="100,200,400,600,800,1000,1200,1500")
    ap.add_argument("--seconds", type=int, default=10, help="duration of each step")
    ap.add_argument("--hold-ms", type=int, default=1000, help="call hold time")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "tsunagu"))
    ap.add_argument("--transport", default="u1", help="SIPp -t (u1 = one UDP socket, t1 = one TCP connection)")
    ap.add_argument("--settle", type=int, default=0,
                    help="with --concurrency: measure again this many seconds after the plateau (35 lets the INVITE transactions' 32 s linger end)")
    ap.add_argument("--concurrency", type=int, default=0,
                    help="instead of the ladder: open this many calls (at the first --rates value, held --hold-ms) and report memory per call")
    ap.add_argument("--node-cpus", default="", help="taskset -c list for the node (e.g. 0 or 0,1)")
    ap.add_argument("--sipp-cpus", default="", help="taskset -c list for the SIPp UAC and UAS")
    ap.add_argument("--shards", type=int, default=0, help="sip.shards (0 = one per CPU the node may use)")
    ap.add_argument("--workers", type=int, default=0, help="node.worker_threads (0 = one per CPU the node may use)")
    ap.add_argument("--overload-ms", type=int, default=0, help="sip.overload_queue_delay_ms (0 = the default)")
    ap.add_argument("--udp-receive", choices=["auto", "threads", "runtime"], default="",
                    help="sip.udp_receive (who reads SIP over UDP; default: the node's, auto)")
    ap.add_argument("--udp-runtime", action="store_true", help="--udp-receive runtime")
    ap.add_argument("--stages", action="store_true",
                    help="print p50/p99 of the node's queue, start and command delays under each step")
    args = ap.parse_args()
    node_pin = ["taskset", "-c", args.node_cpus] if args.node_cpus else []
    sipp_pin = ["taskset", "-c", args.sipp_cpus] if args.sipp_cpus else []
    if not shutil.which("sipp"):
        sys.exit("sipp is not installed (apt-get install sip-tester)")
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} missing: cargo build --release --bin tsunagu")

    work = tempfile.mkdtemp(prefix="tsunagu-ladder-")
    conf = os.path.join(work, "node.toml")
    with open(conf, "w") as f:
        f.write(f"""
[node]
id = "ladder"
data_dir = "{work}/data"
{f"worker_threads = {args.workers}" if args.workers else ""}
[sip]
listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
{f"shards = {args.shards}" if args.shards else ""}
{f"overload_queue_delay_ms = {args.overload_ms}" if args.overload_ms else ""}
{f'udp_receive = "{args.udp_receive or "runtime"}"' if args.udp_receive or args.udp_runtime else ""}
[media]
address = "127.0.0.1"
ports = "20000-39999"
# The ladder's calls carry no RTP (signalling load): held calls (--concurrency) must
# not be ended by the media timeout.
timeout_seconds = 0
[api]
listen = "127.0.0.1:8080"
admin_token = "{ADMIN}"
[log]
level = "warn"
[[trunks]]
name = "carrier-a"
inbound = ["127.0.0.1/32"]
outbound = "udp:127.0.0.1:5070"
[[routes]]
prefix = ""
trunks = ["carrier-a"]
""")
    node = subprocess.Popen(node_pin + [args.bin, "serve", "--config", conf], stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "node.log"), "w"))
    uas = None
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        op = api(8080, "POST", "/v1/operators", ADMIN, {"name": "ladder"})
        key = op["api_key"]
        adv = api(8080, "POST", "/v1/advertisers", key, {"name": "shop"})
        api(8080, "POST", "/v1/numbers", key, {"number": "0501234567", "advertiser_id": adv["id"],
                                                 "destinations": [{"number": "0311112222", "ring_seconds": 20}],
                                                 "validity": {"min_talk_seconds": 1, "duplicate_window_seconds": 0}})
        uas = subprocess.Popen(sipp_pin + ["sipp", "-sf", os.path.join(SCEN, "uas_answer.xml"), "-i", "127.0.0.1", "-p", "5070",
                                "-buff_size", "4194304", "-nostdin", "-t", "u1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
        time.sleep(0.5)
        if args.concurrency:
            return concurrency_run(args, node, work)
        print(f"node pid {node.pid}, work dir {work}, hold {args.hold_ms} ms, {args.seconds} s per step")
        print(f"{'target':>7} {'achieved':>9} {'calls':>7} {'success%':>9} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'CPU ms/call':>12} {'RSS MiB':>8} {'not ours %':>11} {'core busy %':>12} {'refused':>8} {'repeats':>8} {'standby':>8}")
        steps = [int(r) for r in args.rates.split(",")]
        retried = set()
        while steps:
            rate = steps.pop(0)
            # Wait for an idle node (no call left from the previous step).
            deadline = time.time() + 60
            while metric(8080, "tsunagu_active_calls") > 0 and time.time() < deadline:
                time.sleep(0.2)
            calls = rate * args.seconds
            cpu0, started0 = cpu_ns(node.pid), metric(8080, "tsunagu_calls_started_total")
            idle0, kids0, uas0 = machine_idle_ns(), children_ns(), cpu_ns(uas.pid)
            busy0 = series(8080, "tsunagu_sip_core_busy_seconds_total")
            refused0 = metric(8080, "tsunagu_sip_overload_rejections_total")
            repeats0 = metric(8080, "tsunagu_sip_overload_repeats_dropped_total")
            standby0 = metric(8080, "tsunagu_sip_udp_standby_engagements_total")
            stages0 = {name: buckets(8080, name) for _, name in STAGES} if args.stages else {}
            t0 = time.time()
            step = os.path.join(work, f"step{rate}")
            os.makedirs(step, exist_ok=True)
            out = subprocess.run(sipp_pin + ["timeout", str(args.seconds * 4 + 60), "sipp", "-sf", os.path.join(SCEN, "uac.xml"), "-s", "0501234567",
                                  "127.0.0.1:5060", "-i", "127.0.0.1", "-p", "5061", "-t", args.transport, "-key", "caller", "09012345678",
                                  "-r", str(rate), "-m", str(calls), "-l", str(rate * (args.hold_ms // 1000 + 5)), "-d", str(args.hold_ms),
                                  "-buff_size", "4194304", "-nostdin", "-trace_rtt", "-rtt_freq", "1"],
                                 capture_output=True, text=True, cwd=step)
            elapsed = time.time() - t0
            deadline = time.time() + 60
            while metric(8080, "tsunagu_active_calls") > 0 and time.time() < deadline:
                time.sleep(0.2)
            if metric(8080, "tsunagu_active_calls") > 0:
                print(f"  (calls still active 60 s after step {rate}: its window ran on, and they run into the next)", flush=True)
            cpu1, started1 = cpu_ns(node.pid), metric(8080, "tsunagu_calls_started_total")
            idle1, kids1, uas1 = machine_idle_ns(), children_ns(), cpu_ns(uas.pid)
            busy1 = series(8080, "tsunagu_sip_core_busy_seconds_total")
            refused = metric(8080, "tsunagu_sip_overload_rejections_total") - refused0
            repeats = metric(8080, "tsunagu_sip_overload_repeats_dropped_total") - repeats0
            # Times the UDP standby started reading (sip.udp_receive = auto): the runtime was late.
            standby = metric(8080, "tsunagu_sip_udp_standby_engagements_total") - standby0
            # The busiest shard during SIPp's run (the node idles after it).
            shard_busy = max([busy1[k] - busy0.get(k, 0.0) for k in busy1] or [0.0]) / max(0.001, elapsed) * 100
            window = max(0.001, time.time() - t0)
            busy = (os.cpu_count() or 1) * window * 1e9 - (idle1 - idle0)
            ours = (cpu1 - cpu0) + (kids1 - kids0) + (uas1 - uas0)
            not_ours = max(0.0, busy - ours) / 1e9 / window * 100
            text = out.stdout + out.stderr
            def count(label):
                lines = [l for l in text.splitlines() if l.strip().startswith(label)]
                return int(lines[-1].split("|")[2].strip()) if lines else 0
            ok, failed = count("Successful call"), count("Failed call")
            rtts = []
            for name in os.listdir(step):
                if name.endswith("_rtt.csv"):
                    with open(os.path.join(step, name)) as f:
                        for line in f:
                            # Date_ms;response_time_ms;rtd_no (SIPp's resolution is 1 ms)
                            parts = line.strip().split(";")
                            if len(parts) >= 3 and parts[2] == "1" and re.match(r"^[0-9.]+$", parts[1]):
                                rtts.append(float(parts[1]))
            handled = max(1.0, started1 - started0)
            total = ok + failed
            achieved = total / max(0.001, elapsed - args.hold_ms / 1000)
            # Success over the calls offered: a SIPp cut short by its timeout, or calls
            # that ended neither way, showed 100 % over what it counted (a review).
            print(f"{rate:>7} {achieved:>9.0f} {total:>7} {100.0 * ok / max(1, calls):>8.2f}% {percentile(rtts, 50):>7.2f} {percentile(rtts, 95):>7.2f} "
                  f"{percentile(rtts, 99):>7.2f} {(cpu1 - cpu0) / 1e6 / handled:>12.3f} {rss_mib(node.pid):>8.1f} {not_ours:>10.1f}% {shard_busy:>11.1f}% {refused:>8.0f} {repeats:>8.0f} {standby:>8.0f}"
                  + ("" if not_ours <= NOISE_PCT else (" noisy: repeated" if rate in retried else " noisy: repeating")), flush=True)
            if args.stages:
                print(stages_line(stages0, {name: buckets(8080, name) for _, name in STAGES}), flush=True)
            if not_ours > NOISE_PCT and rate not in retried:
                retried.add(rate)
                steps.insert(0, rate)
    finally:
        if uas:
            uas.kill()
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()


def concurrency_run(args, node, work):
    """Holds --concurrency calls open at once and reports RSS growth per call."""
    rate = int(args.rates.split(",")[0])
    n = args.concurrency
    # Warm up once (allocator arenas, caches), then measure from an idle baseline.
    subprocess.run(["sipp", "-sf", os.path.join(SCEN, "uac.xml"), "-s", "0501234567", "127.0.0.1:5060", "-i", "127.0.0.1",
                    "-p", "5061", "-key", "caller", "09012345678", "-r", str(rate), "-m", str(min(n, 2000)), "-d", "1000",
                    "-buff_size", "4194304", "-nostdin"], capture_output=True, cwd=work)
    time.sleep(35)  # let transaction linger timers (32 s) expire: an idle node
    base = rss_mib(node.pid)
    uac = subprocess.Popen(["sipp", "-sf", os.path.join(SCEN, "uac.xml"), "-s", "0501234567", "127.0.0.1:5060", "-i", "127.0.0.1",
                            "-p", "5061", "-key", "caller", "09012345678", "-r", str(rate), "-m", str(n), "-l", str(n),
                            "-d", str(args.hold_ms), "-buff_size", "4194304", "-nostdin"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    # Wait for the plateau: all calls up, or no growth for 3 s (the node refusing more).
    deadline, last, still = time.time() + n / rate + 30, -1.0, 0
    while time.time() < deadline:
        active = metric(8080, "tsunagu_active_calls")
        if active >= n or still >= 6:
            break
        still = still + 1 if active == last else 0
        last = active
        time.sleep(0.5)
    active = metric(8080, "tsunagu_active_calls")
    time.sleep(2)
    peak = rss_mib(node.pid)
    print(f"calls held: {active:.0f} (target {n}, {rate} cps, hold {args.hold_ms} ms)")
    print(f"node RSS idle {base:.1f} MiB, with calls {peak:.1f} MiB -> {(peak - base) * 1024 / max(1, active):.1f} KiB per call "
          f"(includes SIP transactions lingering 32 s and both RTP sockets per call)")
    if args.settle:
        time.sleep(args.settle)
        held = metric(8080, "tsunagu_active_calls")
        settled = rss_mib(node.pid)
        print(f"{args.settle} s later: {held:.0f} calls held, RSS {settled:.1f} MiB -> "
              f"{(settled - base) * 1024 / max(1, held):.1f} KiB per call (transactions done: the calls' own state)")
    uac.wait()


if __name__ == "__main__":
    main()
