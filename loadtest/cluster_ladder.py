#!/usr/bin/env python3
"""Cluster rate ladder: the same basic-call load through a three-node cluster and
through a single node, in the same run, on this machine.

Starts the demo's three nodes (scripts/cluster-demo.sh --write-configs: a throwaway CA,
mutual TLS, one shared store file; SIP 127.0.0.1/2/3:5060) and one node on its own
(SIP 127.0.0.4:5060), all release builds, a SIPp UAS as the destination, and
provisions the same tracking number on both (through n1 for the cluster). For each
target rate it runs, one after the other (alternating which goes first), the cluster
step — three SIPp UACs at rate/3 each, one per node, at once — and the single step —
one UAC at the full rate. Between steps it waits until the nodes hold no call. Per
step and setup it prints:

  achieved cps | calls | success % | setup p50/p95 ms | CPU ms/call | frames/call

and the ratio of CPU per call cluster/single (the target for numbers without line
limits: at most 1.2). CPU ms/call is the nodes' per-thread run time
(/proc/PID/task/*/schedstat) summed over the three nodes, divided by the calls they
admitted. frames/call (cluster only) is tsunagu_cluster_frames_sent_total summed over
the nodes, less the idle traffic measured before the first step (heartbeats and their
acknowledgements: 4 + 4 per second per peer), divided by the calls admitted. Under each
setup's line, the CPU per call of the five busiest thread names (tokio-rt-worker: the
runtime's workers; call-log, sip-udp-standby, ...) says where a difference comes from; the ratio is also
given less each setup's idle CPU (measured before the first step, charged over each
step's window): what the calls themselves cost, apart from three idle nodes' upkeep.

--lines N gives the number a line limit of N (choose it large enough never to queue:
above rate x hold seconds) so every call takes a cluster-wide line from the number's
owner: a call through a node that does not own the number costs a request and a grant
(the release rides on a heartbeat); the target is at most two cluster messages per
call. Calls that queued anyway are reported.

Nothing here is a test: it reports, it never asserts. Do not run it while a build runs.

--per-node also runs the single node at rate/3, the rate each cluster node carries, and
gives the ratio against that: a node's CPU per call falls as its own rate grows (wake-ups
are shared by more messages), so this separates what the cluster adds from what
carrying a third of the calls costs each node.

--one-member also sends the full rate through n1 alone while the cluster runs (CPU
still summed over all three nodes): the cluster switched on at the single node's load,
which separates the cluster's own cost (membership, heartbeats, the shared store, the
idle members) from the split of the calls over three nodes on one host.

Before the first step every node (the members and the single node) carries calls until
it has leased every port of its RTP range once (--no-warm-up skips it): a port's
first lease binds a socket, later ones reuse it, and a member at a third of the rate
went round its range later than the single node did, so the first steps compared
fresh binds with reused sockets.

The single node runs with the members' node.worker_threads and sip.udp_receive
(the demo sets 1 and "auto"), so the two setups differ only in being a cluster; --single-workers N overrides it. --synchronous
normal sets store.synchronous = "normal" on all four nodes (no fsync per commit).

Usage: python3 loadtest/cluster_ladder.py [--rates 300,600,900] [--seconds 10]
       [--hold-ms 1000] [--lines N] [--bin PATH] [--per-node]
       [--synchronous full|normal] [--single-workers N] [--no-warm-up]
"""
import argparse, os, shutil, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ladder import ROOT, cpu_ns, percentile  # noqa: E402
from cluster_common import Cluster, provision, single_node, uac, uac_result, uas, wait_for  # noqa: E402

FRAMES = "tsunagu_cluster_frames_sent_total"
# The warm-up's calls are held this long (see `warm_up`).
WARM_UP_HOLD_MS = 100


def udp_reader(setting):
    """Who reads SIP over UDP for a `sip.udp_receive` value as written in the members'
    configuration (None: the default, "auto"; `true`/`false`: the former switch)."""
    value = (setting or '"auto"').strip('"')
    return {
        "auto": "the runtime, with a standby thread while it is late (auto)",
        "runtime": "the runtime", "false": "the runtime",
        "threads": "receive threads", "true": "receive threads",
    }.get(value, value)


def idle(nodes):
    """Waits until no node holds a call (the previous step's are over)."""
    wait_for("the nodes to hold no call", lambda: all(n.metric("tsunagu_active_calls") == 0 for n in nodes), 90, nodes)


def frames(nodes):
    return sum(n.metric(FRAMES) for n in nodes)


def idle_frame_rate(nodes, seconds=3.0):
    """Frames per second the nodes send with no call (heartbeats, acknowledgements)."""
    f0, t0 = frames(nodes), time.time()
    time.sleep(seconds)
    return (frames(nodes) - f0) / (time.time() - t0)


def probe(nodes, work):
    """One call through each node until it succeeds: provisioning has reached every
    node (the change feed: within a second) and the paths are warm."""
    for i, n in enumerate(nodes):
        def answered():
            step = os.path.join(work, "probe", f"{n.name}-{time.time():.3f}")
            p = uac(n.sip, 5069, 1, 1, 100, step, trace_rtt=False, limit_s=20)
            p.wait()
            return uac_result(5069, step)[0] == 1
        wait_for(f"a first call through {n.name} to succeed", answered, 30, nodes)


def warm_up(nodes, args, work):
    """Calls through every node (all at once) until each has leased every port of its
    RTP range once: a port is bound afresh on its first lease and its socket is kept
    and reused after (media/src/ports.rs), so until a node has gone round its range
    every call costs two socket creations more. Without this the ladder compared
    members that had not (a third of the rate each: the 600 cps step went round no
    member's range) with a single node that had for most of its calls."""
    calls = [int(n.metric("tsunagu_rtp_ports_total")) // 2 + 20 for n in nodes]
    step_dir = os.path.join(work, "warm-up")
    # Short calls: the hold does not matter for leasing, and at 250 cps x 100 ms a node
    # holds about 50 ports at once, far from running out of its range.
    rate, hold_ms = 250, WARM_UP_HOLD_MS
    procs = [uac(n.sip, 5061 + i, rate, c, hold_ms, step_dir, args.transport, trace_rtt=False,
                 limit_s=c // rate * 4 + 60)
             for i, (n, c) in enumerate(zip(nodes, calls))]
    for p in procs:
        p.wait()
    for i, (n, c) in enumerate(zip(nodes, calls)):
        ok, _, _ = uac_result(5061 + i, step_dir)
        if ok < c:
            print(f"warning: the warm-up through {n.name} answered {ok} of {c} calls: "
                  "its RTP ports may not all have been leased once", file=sys.stderr)
    return calls


def cpu_by_thread(pids):
    """Run time (ns) per thread name, summed over the processes `pids`."""
    out = {}
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    out[name] = out.get(name, 0) + int(f.read().split()[0])
            except OSError:
                pass
    return out


def idle_cpu_rate(nodes, seconds=3.0):
    """CPU ns per second the idle nodes use (heartbeats, timers, store polling)."""
    cpu0 = sum(cpu_ns(n.pid) for n in nodes)
    time.sleep(seconds)
    return (sum(cpu_ns(n.pid) for n in nodes) - cpu0) / seconds


def step(setup, nodes, rate, args, work, targets=None):
    """Runs one setup's UACs (one per node of `targets`, default `nodes`, rate split
    evenly) and measures it over `nodes`."""
    targets = targets or nodes
    idle(nodes)
    step_dir = os.path.join(work, f"step{rate:g}-{setup.replace('/', '-')}")
    each0 = [cpu_ns(n.pid) for n in nodes]
    cpu0 = sum(each0)
    threads0 = cpu_by_thread([n.pid for n in nodes])
    started0 = sum(n.metric("tsunagu_calls_started_total") for n in nodes)
    queued0 = sum(n.metric("tsunagu_calls_queued_total") for n in nodes)
    frames0 = frames(nodes)
    t0 = time.time()
    per_node = rate / len(targets)
    total_calls = max(len(targets), round(rate * args.seconds))
    ports = [5061 + i for i in range(len(targets))]
    procs = [uac(n.sip, port, per_node, total_calls // len(targets) + (i < total_calls % len(targets)), args.hold_ms,
                 step_dir, args.transport, limit_s=args.seconds * 4 + 60)
             for i, (n, port) in enumerate(zip(targets, ports))]
    for p in procs:
        p.wait()
    elapsed = time.time() - t0
    idle(nodes)
    window = time.time() - t0
    each1 = [cpu_ns(n.pid) for n in nodes]
    cpu1 = sum(each1)
    threads1 = cpu_by_thread([n.pid for n in nodes])
    started = sum(n.metric("tsunagu_calls_started_total") for n in nodes) - started0
    queued = sum(n.metric("tsunagu_calls_queued_total") for n in nodes) - queued0
    sent = frames(nodes) - frames0
    ok = failed = 0
    rtts = []
    for port in ports:
        s, f, r = uac_result(port, step_dir)
        ok, failed, rtts = ok + s, failed + f, rtts + r
    total = ok + failed
    return {
        "achieved": total / max(0.001, elapsed - args.hold_ms / 1000),
        "calls": total,
        # Over the calls offered (not over those SIPp counted ended either way).
        "success": 100.0 * ok / max(1, total_calls),
        "p50": percentile(rtts, 50),
        "p95": percentile(rtts, 95),
        "cpu_ms_per_call": (cpu1 - cpu0) / 1e6 / max(1.0, started),
        "cpu_ns": cpu1 - cpu0,
        "threads": {k: (v - threads0.get(k, 0)) / 1e6 / max(1.0, started) for k, v in threads1.items()},
        "by_node": [(b - a) / 1e6 / max(1.0, started) for a, b in zip(each0, each1)],
        "sent": sent,
        "window": window,
        "started": started,
        "queued": queued,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="300,600,900,1200,1500", help="target calls per second, in total")
    ap.add_argument("--seconds", type=int, default=10, help="duration of each step")
    ap.add_argument("--hold-ms", type=int, default=1000, help="call hold time")
    ap.add_argument("--lines", type=int, default=0,
                    help="a line limit on the number (cluster-wide lines; large enough never to queue)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "tsunagu"))
    ap.add_argument("--transport", default="u1", help="SIPp -t (u1 = one UDP socket)")
    ap.add_argument("--per-node", action="store_true",
                    help="also run the single node at rate/3 (what each cluster node carries) and compare with it")
    ap.add_argument("--one-member", action="store_true",
                    help="also send the full rate through one member (n1) of the running cluster, CPU summed "
                         "over all three: the cluster switched on at the single node's load")
    ap.add_argument("--synchronous", choices=("full", "normal"), default="full",
                    help="store.synchronous of every node (cluster and single): when commits reach the disk")
    ap.add_argument("--single-workers", type=int, default=0,
                    help="node.worker_threads of the single node (default: the cluster members', "
                         "so both setups run alike; the demo sets 1)")
    ap.add_argument("--no-warm-up", action="store_true",
                    help="measure from the nodes' first calls (their RTP ports bound afresh until each "
                         "node has gone round its range once)")
    args = ap.parse_args()
    if not shutil.which("sipp"):
        sys.exit("sipp is not installed (apt-get install sip-tester)")
    if not shutil.which("openssl"):
        sys.exit("openssl is not installed (apt-get install openssl)")
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} missing: cargo build --release --bin tsunagu")
    rates = [int(r) for r in args.rates.split(",")]
    if args.lines and args.lines < max(rates) * (args.hold_ms / 1000 + 1):
        print(f"warning: --lines {args.lines} is below rate x hold at {max(rates)} cps: calls will queue", file=sys.stderr)

    work = tempfile.mkdtemp(prefix="tsunagu-cluster-ladder-")
    cluster = Cluster(work)
    single_workers = str(args.single_workers) if args.single_workers else cluster.setting("worker_threads")
    receive = cluster.setting("udp_receive")
    single = single_node(work, cluster.admin, single_workers, receive)
    if args.synchronous != "full":
        cluster.set_store(f'synchronous = "{args.synchronous}"')
        with open(single.config, "a") as f:
            f.write(f'[store]\nsynchronous = "{args.synchronous}"\n')
    everyone = cluster.nodes + [single]
    destination = None
    try:
        cluster.start(args.bin)
        single.start(args.bin)
        wait_for("the single node to answer /healthz", single.healthy, 30, everyone)
        provision(cluster.nodes[0], cluster.admin, args.lines)
        provision(single, cluster.admin, args.lines)
        destination = uas(work)
        probe(everyone, work)
        warmed = warm_up(everyone, args, work) if not args.no_warm_up else None
        idle(everyone)
        background = idle_frame_rate(cluster.nodes)
        idle_cluster, idle_single = idle_cpu_rate(cluster.nodes), idle_cpu_rate([single])
        print(f"work dir {work}; cluster n1 n2 n3 pids {[n.pid for n in cluster.nodes]}, single pid {single.pid}; "
              f"worker threads per node: cluster {cluster.setting('worker_threads') or 'the default'}, "
              f"single {single_workers or 'the default'}; "
              f"UDP read by {udp_reader(receive)}; "
              f"store.synchronous {args.synchronous}; "
              f"hold {args.hold_ms} ms, {args.seconds} s per step, "
              f"{'line limit ' + str(args.lines) if args.lines else 'no line limit'}; "
              f"{'warmed up with ' + '/'.join(map(str, warmed)) + ' calls through n1/n2/n3/single (every RTP port leased once)' if warmed else 'not warmed up'}")
        print(f"idle cluster traffic: {background:.1f} frames/s over the three nodes "
              f"(expected 48: 8 per second per peer, 2 peers each)")
        print(f"idle CPU: cluster {idle_cluster / 1e7:.1f} % of a core over the three nodes, single {idle_single / 1e7:.1f} %")
        print(f"{'target':>7} {'setup':>8} {'achieved':>9} {'calls':>7} {'success%':>9} {'p50 ms':>7} {'p95 ms':>7} "
              f"{'CPU ms/call':>12} {'frames/call':>12}")
        for k, rate in enumerate(rates):
            order = [("cluster", cluster.nodes), ("single", [single])]
            if k % 2:
                order.reverse()  # neither setup always meets the machine first
            results = {setup: step(setup, nodes, rate, args, work) for setup, nodes in order}
            setups = ("cluster", "single")
            if args.per_node:
                # Same calls per node as the cluster's: separates the cluster's own cost
                # from what a node's CPU per call does at a third of the rate.
                results["single/3"] = step("single/3", [single], rate / len(cluster.nodes), args, work)
                setups += ("single/3",)
            if args.one_member:
                # The same calls as the single node's, through one member of the
                # cluster (the other two idle members counted too): what switching the
                # cluster on costs per call at the same load per node.
                results["n1 only"] = step("n1 only", cluster.nodes, rate, args, work, targets=cluster.nodes[:1])
                setups += ("n1 only",)
            for setup in setups:
                r = results[setup]
                fpc = ""
                if setup == "cluster":
                    fpc = f"{max(0.0, r['sent'] - background * r['window']) / max(1.0, r['started']):.2f}"
                print(f"{rate:>7} {setup:>8} {r['achieved']:>9.0f} {r['calls']:>7} {r['success']:>8.2f}% "
                      f"{r['p50']:>7.2f} {r['p95']:>7.2f} {r['cpu_ms_per_call']:>12.3f} {fpc:>12}", flush=True)
                top = sorted(r["threads"].items(), key=lambda kv: -kv[1])[:5]
                print(f"{'':>16} CPU ms/call by thread: " + ", ".join(f"{k} {v:.3f}" for k, v in top))
                if len(r["by_node"]) > 1:
                    print(f"{'':>16} CPU ms/call by node: " +
                          ", ".join(f"n{i + 1} {v:.3f}" for i, v in enumerate(r["by_node"])))
                if r["queued"]:
                    print(f"{'':>16} ({r['queued']:.0f} calls queued for a line: raise --lines)")
            ratio = results["cluster"]["cpu_ms_per_call"] / max(1e-9, results["single"]["cpu_ms_per_call"])
            # The same less each setup's idle cost over its step's window: what calls cost.
            busy = {k: max(0.0, results[k]["cpu_ns"] - idle * results[k]["window"]) / max(1.0, results[k]["started"])
                    for k, idle in (("cluster", idle_cluster), ("single", idle_single))}
            print(f"{rate:>7} {'ratio':>8}   CPU per call cluster/single {ratio:.2f}; less idle cost "
                  f"{busy['cluster'] / max(1e-9, busy['single']):.2f}", flush=True)
            if args.per_node:
                third = results["cluster"]["cpu_ms_per_call"] / max(1e-9, results["single/3"]["cpu_ms_per_call"])
                print(f"{rate:>7} {'ratio':>8}   CPU per call cluster / single node at rate/3 {third:.2f}", flush=True)
            if args.one_member:
                on = results["n1 only"]["cpu_ms_per_call"] / max(1e-9, results["single"]["cpu_ms_per_call"])
                print(f"{rate:>7} {'ratio':>8}   CPU per call through one member of the cluster / single {on:.2f}",
                      flush=True)
    finally:
        if destination:
            destination.kill()
        cluster.stop()
        single.stop()


if __name__ == "__main__":
    main()
