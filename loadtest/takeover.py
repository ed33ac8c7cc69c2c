#!/usr/bin/env python3
"""Takeover under SIPp load: long calls through the demo's three nodes, one node killed
(or frozen, or drained) while they are up, and what became of its calls.

Starts the demo's three nodes (scripts/cluster-demo.sh --write-configs; release build
or --bin), provisions the demo number through n1, and runs the takeover scenarios:
a SIPp UAS (loadtest/scenarios/uas_takeover.xml, -rtp_echo) as the destination and one
SIPp UAC per node (uac_takeover.xml: audio from g711a.pcap, held --hold-s seconds).
Both scenarios answer a survivor's re-INVITE at any time during the call and the
caller then sends its BYE to the survivor's Contact. Once --at calls are answered and
checkpointed (their records in progress, with the answer, are in the store), the
victim node gets kill -9 (default), SIGSTOP for --stop seconds then SIGCONT, or
SIGTERM (--term: a drain, which hands its calls to the others at once). The victim's
caller stops placing calls at the fault (SIGUSR1). It then waits for every SIPp caller
to finish and every call record to be written, and prints:

  - the command lines (this script's, the UAS's, each UAC's)
  - calls up at the fault, by node
  - SIPp: calls successful and failed per caller, re-INVITEs answered by the callers
    and by the callee (the scenarios' `reinvites` counters)
  - the survivors' tsunagu_calls_taken_over_total{outcome} and the time from claim to
    both parties answering, tsunagu_takeover_seconds (p50/p99 as bucket bounds, mean)
  - from the API: records for the calls placed, those with nodes of length 2 (taken
    over: by which survivor), with RTP both ways through the survivor, any still in
    progress; the time from the fault to each claim (taken_over_at) p50/p99/max; the
    share of the victim's calls carried on and logged answered
  - with --term: how long the victim took to exit

Nothing here is a test: it reports, it never asserts. Do not run it while a build
runs (the machine's CPUs are the nodes' and SIPp's).

Usage: python3 loadtest/takeover.py [--calls 300] [--rate 30] [--hold-s 30] [--at N]
       [--victim n2] [--stop SECONDS | --term] [--log-level warn] [--bin PATH]
"""
import argparse, datetime, math, os, shlex, shutil, signal, subprocess, sys, tempfile, threading, time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ladder import ROOT, api, percentile  # noqa: E402
from cluster_common import Cluster, provision, uac, uac_result, uas, wait_for  # noqa: E402
from cluster_ladder import probe  # noqa: E402

UAC_PORTS = (5061, 5062, 5063)
TAKEN_OVER = 'tsunagu_calls_taken_over_total{outcome="%s"}'


def records(node, key, state=None):
    """The operator's call records through `node` (pages followed), `state` if given."""
    out, cursor = [], None
    while True:
        path = "/v1/calls?limit=1000" + (f"&state={state}" if state else "") + (f"&cursor={cursor}" if cursor else "")
        page = api(node.api_port, "GET", path, key)
        out += page["calls"]
        cursor = page.get("next_cursor")
        if not cursor:
            return out


def answered_up(node, key):
    """{node name: calls answered and in progress} (checkpointed: the record in
    progress carries the answer)."""
    up = {}
    for r in records(node, key, "active"):
        if r.get("answered_at"):
            up[r["node"]] = up.get(r["node"], 0) + 1
    return up


def epoch_s(rfc3339):
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def metrics_text(node):
    with urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/metrics", timeout=10) as r:
        return r.read().decode()


def series(text, name):
    """The value of one exact series (name with labels) in a metrics text, 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def buckets(text, name):
    """{upper bound: cumulative count} of a histogram without other labels."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[math.inf if le == "+Inf" else float(le)] = float(line.split()[-1])
    return out


def bucket_bound(q, cumulative):
    """The upper bound of the histogram bucket holding quantile `q` (None if empty): a
    bound, not an estimate, since the buckets are coarse."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0
    if not total:
        return None
    return next(le for le in bounds if cumulative[le] >= q * total)


def screen_count(path, label):
    """A cumulative counter from the last final screen in a SIPp output file."""
    try:
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.strip().startswith(label)]
        return int(lines[-1].split("|")[2].strip()) if lines else 0
    except (OSError, ValueError, IndexError):
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300, help="calls in all, spread evenly over the three nodes")
    ap.add_argument("--rate", type=float, default=30.0, help="calls per second in all (rate/3 per node)")
    ap.add_argument("--hold-s", type=float, default=30.0,
                    help="how long each call is held after its answer (SIPp -d): longer than placing them all")
    ap.add_argument("--at", type=int, default=0, help="fault once this many calls are up (default: all of them)")
    ap.add_argument("--victim", default="n2", choices=("n1", "n2", "n3"))
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--stop", type=float, metavar="SECONDS", help="SIGSTOP the victim for SECONDS, then SIGCONT")
    how.add_argument("--term", action="store_true", help="SIGTERM the victim (a drain) instead of kill -9")
    ap.add_argument("--log-level", default="warn", help="the nodes' log.level (their logs are in the work dir)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "tsunagu"))
    args = ap.parse_args()
    for tool in ("openssl", "sipp"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install {'sip-tester' if tool == 'sipp' else tool})")
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} missing: cargo build --release --bin tsunagu")
    per_node = args.calls // 3
    if per_node < 1 or per_node * 3 != args.calls:
        sys.exit("--calls must be a positive multiple of 3 (one caller per node)")
    at = args.at or args.calls
    fault = f"SIGSTOP for {args.stop:g} s" if args.stop is not None else "SIGTERM (drain)" if args.term else "kill -9"
    print("command:", shlex.join([sys.executable, *sys.argv]))

    work = tempfile.mkdtemp(prefix="tsunagu-takeover-")
    cluster = Cluster(work, args.log_level)
    victim = next(n for n in cluster.nodes if n.name == args.victim)
    survivors = [n for n in cluster.nodes if n is not victim]
    destination, callers, stopped = None, [], False
    uas_out = os.path.join(work, "uas.out")
    try:
        cluster.start(args.bin)
        key = provision(cluster.nodes[0], cluster.admin)
        destination = uas(work, "uas_takeover.xml", ("-rtp_echo",), out=open(uas_out, "w"))
        probe(cluster.nodes, work)  # the number known everywhere; these calls are not counted below
        print("UAS:", shlex.join(destination.args))
        t_load = time.time()
        load_dir = os.path.join(work, "load")
        for n, port in zip(cluster.nodes, UAC_PORTS):
            p = uac(n.sip, port, args.rate / 3, per_node, int(args.hold_s * 1000), load_dir, trace_rtt=False,
                    scenario="uac_takeover.xml", extra=("-trace_err",))
            callers.append((n, port, p))
            print(f"UAC through {n.name}:", shlex.join(p.args))
        print(f"work dir {work}; {args.calls} calls at {args.rate:g}/s, held {args.hold_s:g} s; "
              f"{fault} of {victim.name} once {at} are up", flush=True)

        def ready():
            if any(p.poll() is not None for _, _, p in callers):
                sys.exit("a SIPp caller exited before the fault: see " + load_dir)
            return sum(answered_up(cluster.nodes[0], key).values()) >= at

        wait_for(f"{at} calls answered", ready, args.calls / args.rate + 30, cluster.nodes)
        up = answered_up(survivors[0], key)
        t_fault = time.time()
        if args.stop is not None:
            victim.proc.send_signal(signal.SIGSTOP)
            stopped = True
        elif args.term:
            victim.proc.send_signal(signal.SIGTERM)
        else:
            victim.proc.kill()
        exited = []  # with --term: seconds from SIGTERM to the victim's exit

        def watch_exit():
            victim.proc.wait()
            exited.append(time.time() - t_fault)

        if args.term:
            threading.Thread(target=watch_exit, daemon=True).start()
        for n, _, p in callers:
            if n is victim and p.poll() is None:
                p.send_signal(signal.SIGUSR1)  # no new calls to a dead address
        print(f"fault at +{t_fault - t_load:.1f} s: calls up " + ", ".join(f"{n.name} {up.get(n.name, 0)}"
                                                                       for n in cluster.nodes), flush=True)
        if args.stop is not None:
            time.sleep(max(0.0, t_fault + args.stop - time.time()))
            victim.proc.send_signal(signal.SIGCONT)
            stopped = False
        limit = args.hold_s + args.calls / args.rate + 60
        for n, _, p in callers:
            try:
                p.wait(timeout=max(1.0, t_load + limit - time.time()))
            except subprocess.TimeoutExpired:
                print(f"the caller through {n.name} was still running after {limit:.0f} s: stopped (SIGINT)")
                p.send_signal(signal.SIGINT)  # its final screen, with what it counted
                p.wait()
        # Every record written: nothing in progress any more (a party that never answers
        # a re-INVITE or a BYE keeps its call open up to 64 s: two transaction timeouts).
        deadline = time.time() + 70
        while records(survivors[0], key, "active") and time.time() < deadline:
            time.sleep(0.5)
        open_calls = records(survivors[0], key, "active")
        logged = [r for r in records(survivors[0], key) if epoch_s(r["started_at"]) >= t_load]
        destination.send_signal(signal.SIGINT)  # its final screen, with the counters
        destination.wait(timeout=10)
        texts = {n.name: metrics_text(n) for n in survivors}

        # --- SIPp ---
        print(f"\nSIPp callers ({args.calls} calls):")
        ok_all = failed_all = 0
        for n, port, _ in callers:
            ok, failed, _ = uac_result(port, load_dir)
            reinvites = screen_count(os.path.join(load_dir, f"uac{port}", "sipp.out"), "Counter reinvites")
            ok_all, failed_all = ok_all + ok, failed_all + failed
            print(f"  through {n.name}: {ok} successful, {failed} failed, {reinvites} re-INVITEs answered")
        print(f"  all: {ok_all} successful, {failed_all} failed; the callee answered "
              f"{screen_count(uas_out, 'Counter reinvites')} re-INVITEs")

        # --- the survivors' metrics ---
        resumed = sum(series(texts[n], TAKEN_OVER % "resumed") for n in texts)
        failed = sum(series(texts[n], TAKEN_OVER % "failed") for n in texts)
        print(f"\ntaken over (tsunagu_calls_taken_over_total on {', '.join(texts)}): "
              f"{resumed:.0f} resumed, {failed:.0f} failed; {up.get(victim.name, 0)} were up on {victim.name}")
        merged = {}
        for n in texts:
            for le, c in buckets(texts[n], "tsunagu_takeover_seconds").items():
                merged[le] = merged.get(le, 0) + c
        p50, p99 = bucket_bound(0.5, merged), bucket_bound(0.99, merged)
        if p50 is not None:
            count = sum(series(texts[n], "tsunagu_takeover_seconds_count") for n in texts)
            total = sum(series(texts[n], "tsunagu_takeover_seconds_sum") for n in texts)
            print(f"claim to both parties answering (tsunagu_takeover_seconds): p50 <= {p50:g} s, "
                  f"p99 <= {p99:g} s (bucket bounds), mean {total / count:.3f} s over {count:.0f}")

        # --- the records ---
        moved = [r for r in logged if len(r.get("nodes") or []) == 2]
        from_victim = [r for r in moved if r["nodes"][0] == victim.name]
        by_survivor = {}
        for r in from_victim:
            by_survivor[r["nodes"][1]] = by_survivor.get(r["nodes"][1], 0) + 1
        with_rtp = [r for r in from_victim if r.get("rtp_packets_in") and r.get("rtp_packets_out")]
        results = {}
        for r in logged:
            results[r["result"]] = results.get(r["result"], 0) + 1
        print(f"\nrecords: {len(logged)} for {ok_all + failed_all} calls placed; results "
              + ", ".join(f"{k} {v}" for k, v in sorted(results.items())))
        if open_calls:
            print(f"  STILL IN PROGRESS after 70 s: {len(open_calls)}: "
                  + ", ".join(f"{r['call_id']} on {r['node']}" for r in open_calls[:10]))
        print(f"  nodes of length 2: {len(moved)}; from {victim.name}: {len(from_victim)} ("
              + ", ".join(f"to {k} {v}" for k, v in sorted(by_survivor.items()))
              + f"), {len(with_rtp)} with RTP both ways through the survivor")
        claims = [epoch_s(r["taken_over_at"]) - t_fault for r in from_victim if r.get("taken_over_at")]
        if claims:
            print(f"  fault to claim (taken_over_at): p50 {percentile(claims, 50):.2f} s, "
                  f"p99 {percentile(claims, 99):.2f} s, max {max(claims):.2f} s")
        victim_up = up.get(victim.name, 0)
        if victim_up:
            kept = sum(1 for r in from_victim if r["result"] == "answered")
            print(f"  survived: {kept} of the {victim_up} calls up on {victim.name} "
                  f"({100.0 * kept / victim_up:.1f} %): carried on by a survivor and logged answered")
        if args.term:
            print(f"drain: {victim.name} exited {exited[0]:.2f} s after SIGTERM" if exited
                  else f"drain: {victim.name} had not exited")
    finally:
        for _, _, p in callers:
            if p.poll() is None:
                p.kill()
        if stopped:
            victim.proc.send_signal(signal.SIGCONT)
        if destination and destination.poll() is None:
            destination.kill()
        cluster.stop()


if __name__ == "__main__":
    main()
