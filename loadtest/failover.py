#!/usr/bin/env python3
"""Failure detection time of the cluster: how long from a node's death (kill -9) or
freeze (SIGSTOP, --stop) until both other nodes report it down, over N rounds.

Starts the demo's three nodes (scripts/cluster-demo.sh --write-configs; release build).
Each round picks a node at random, signals it, and polls `GET /v1/cluster` on both
survivors every 20 ms until each reports it down; then restarts it (after kill -9)
or continues it (after SIGSTOP, at once or after --stopped-for seconds) and waits until
every node sees every other up again (the victim back as a new incarnation). It prints
each round and then p50/p99/max of the detection time (both survivors) and of the
rejoin time.

False downs: each survivor's tsunagu_cluster_member_transitions_total{to="down"} must
grow by exactly one per round (the victim); anything more is a member reported down
that was not signalled (the counter catches a down that came and went between two
polls). A frozen node's own view after it wakes is reported apart.

--load CPS runs SIPp calls through the two survivors meanwhile (CPS/2 each, 1 s
hold) and reports their outcome: no call through a survivor should fail.

Nothing here is a test: it reports, it never asserts.

Usage: python3 loadtest/failover.py [-n 20] [--stop] [--stopped-for S] [--load CPS]
       [--seed N] [--bin PATH]
"""
import argparse, os, random, shutil, signal, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ladder import ROOT, percentile  # noqa: E402
from cluster_common import Cluster, provision, uac, uac_result, uas, wait_for  # noqa: E402

POLL = 0.02
DETECT_LIMIT = 10.0
DOWNS = 'tsunagu_cluster_member_transitions_total{to="down"}'


def watch(cluster, observer, victim, t0, seen):
    """Polls `observer`'s view every 20 ms until it reports `victim` down; records the
    time since the signal in `seen[observer.name]`."""
    deadline = t0 + DETECT_LIMIT
    tick = t0
    while time.monotonic() < deadline:
        try:
            if cluster.states(observer).get(victim.name) == "down":
                seen[observer.name] = time.monotonic() - t0
                return
        except OSError:
            pass
        tick += POLL
        time.sleep(max(0.0, tick - time.monotonic()))


def epoch_of(cluster, observer, member):
    """The incarnation of `member` in `observer`'s view (0 if it has none)."""
    for m in cluster.view(observer)["members"]:
        if m["name"] == member.name:
            return m["epoch"]
    return 0


def downs(node):
    return node.metric(DOWNS)


class Load:
    """SIPp callers through the survivors of one round (CPS/2 each, until told to stop)."""

    def __init__(self, cps, survivors, work, round_no):
        self.dir = os.path.join(work, f"load{round_no}")
        self.ports = [5061 + i for i in range(len(survivors))]
        self.procs = [uac(n.sip, port, cps / len(survivors), 1_000_000, 1000, self.dir, trace_rtt=False)
                      for n, port in zip(survivors, self.ports)]

    def stop(self):
        """Stops placing calls (SIGUSR1: SIPp lets calls in progress end); returns (ok, failed)."""
        for p in self.procs:
            p.send_signal(signal.SIGUSR1)
        for p in self.procs:
            try:
                p.wait(timeout=40)
            except Exception:
                p.kill()
                p.wait()
        ok = failed = 0
        for port in self.ports:
            s, f, _ = uac_result(port, self.dir)
            ok, failed = ok + s, failed + f
        return ok, failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--rounds", type=int, default=20, help="nodes signalled, one per round")
    ap.add_argument("--stop", action="store_true", help="SIGSTOP the node (a freeze) instead of kill -9")
    ap.add_argument("--stopped-for", type=float, default=0.0,
                    help="with --stop: seconds frozen (at least until detected; default: continue at once)")
    ap.add_argument("--load", type=float, default=0.0, help="calls per second through the survivors meanwhile")
    ap.add_argument("--seed", type=int, default=None, help="random seed (which node each round)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "tsunagu"))
    args = ap.parse_args()
    for tool in ("openssl",) + (("sipp",) if args.load else ()):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed")
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} missing: cargo build --release --bin tsunagu")
    rng = random.Random(args.seed)

    work = tempfile.mkdtemp(prefix="tsunagu-failover-")
    cluster = Cluster(work)
    destination = None
    stopped = None  # a SIGSTOPped node to continue whatever happens
    detections, first_detections, rejoins = [], [], []
    false_downs, woken_downs, undetected = 0, 0, 0
    load_ok = load_failed = 0
    load = None
    how = "SIGSTOP" if args.stop else "kill -9"
    try:
        cluster.start(args.bin)
        if args.load:
            provision(cluster.nodes[0], cluster.admin)
            destination = uas(work)
        print(f"work dir {work}; {args.rounds} rounds of {how}"
              + (f", {args.load:g} cps through the survivors" if args.load else ""))
        print(f"{'round':>5} {'victim':>6} " + " ".join(f"{n.name + ' saw':>8}" for n in cluster.nodes)
              + f" {'both s':>7} {'rejoin s':>9} {'false downs':>12}" + (f" {'calls ok/failed':>16}" if args.load else ""))
        for r in range(1, args.rounds + 1):
            victim = rng.choice(cluster.nodes)
            survivors = [n for n in cluster.nodes if n is not victim]
            load = Load(args.load, survivors, work, r) if args.load else None
            if load:
                time.sleep(1.0)  # calls in progress on the survivors when the victim goes
            before = {n.name: downs(n) for n in cluster.nodes}
            epoch = epoch_of(cluster, survivors[0], victim)
            seen = {}
            watchers = []
            t0 = time.monotonic()
            if args.stop:
                victim.proc.send_signal(signal.SIGSTOP)
                stopped = victim
            else:
                victim.proc.kill()
            for s in survivors:
                w = threading.Thread(target=watch, args=(cluster, s, victim, t0, seen))
                w.start()
                watchers.append(w)
            for w in watchers:
                w.join()
            both = max(seen.values()) if len(seen) == len(survivors) else None
            if both is None:
                undetected += 1
            else:
                detections.append(both)
                first_detections.append(min(seen.values()))
            # Back: restarted (a new process, a new incarnation) or continued.
            if args.stop:
                time.sleep(max(0.0, t0 + args.stopped_for - time.monotonic()))
                t1 = time.monotonic()
                victim.proc.send_signal(signal.SIGCONT)
                stopped = None
            else:
                victim.proc.wait()
                t1 = time.monotonic()
                victim.start(args.bin)
            # Back as a new incarnation in both survivors' views, and every view whole.
            wait_for(f"{victim.name} back as a new incarnation",
                     lambda: all(epoch_of(cluster, s, victim) > epoch for s in survivors) and cluster.formed(),
                     60, cluster.nodes)
            rejoin = time.monotonic() - t1
            rejoins.append(rejoin)
            extra = sum(max(0.0, downs(s) - before[s.name] - 1) for s in survivors)
            false_downs += int(extra)
            if args.stop:
                woken_downs += int(downs(victim) - before[victim.name])
            cells = " ".join(f"{seen[n.name]:>8.2f}" if n.name in seen else f"{'-' if n is victim else 'never':>8}"
                             for n in cluster.nodes)
            row = (f"{r:>5} {victim.name:>6} {cells} {both if both is not None else float('nan'):>7.2f} "
                   f"{rejoin:>9.2f} {int(extra):>12}")
            if load:
                ok, failed = load.stop()
                load_ok, load_failed = load_ok + ok, load_failed + failed
                row += f" {f'{ok}/{failed}':>16}"
            print(row, flush=True)

        def stats(values):
            if not values:
                return "none"
            return (f"p50 {percentile(values, 50):.2f} s, p99 {percentile(values, 99):.2f} s, "
                    f"max {max(values):.2f} s")

        print(f"detection, both survivors ({len(detections)} of {args.rounds} {how}): {stats(detections)}")
        print(f"detection, first survivor: {stats(first_detections)}")
        if undetected:
            print(f"NOT detected by both within {DETECT_LIMIT:.0f} s: {undetected} rounds")
        print(f"rejoin (from restart/continue until all up): {stats(rejoins)}")
        print(f"false downs (survivors' down transitions beyond the victim): {false_downs}")
        if args.stop:
            print(f"members the woken node itself declared down after SIGCONT: {woken_downs}")
        if args.load:
            print(f"calls through the survivors: {load_ok} ok, {load_failed} failed")
    finally:
        for p in load.procs if load else []:
            if p.poll() is None:
                p.kill()
        if stopped is not None:
            stopped.proc.send_signal(signal.SIGCONT)
        if destination:
            destination.kill()
        cluster.stop()


if __name__ == "__main__":
    main()
