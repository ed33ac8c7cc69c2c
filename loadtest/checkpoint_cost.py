#!/usr/bin/env python3
"""What checkpoints cost: the same basic-call load through the demo's three-node cluster
with checkpoints (the default: every answered call can be resumed by another node) and
without (`[cluster] checkpoints = false`), in the same run.

The cluster is restarted between the two setups (the setting is read at start), on the
same store and configuration otherwise; for each rate the two setups run one after the
other, alternating which goes first. Per step and setup it prints

  achieved cps | calls | success % | setup p50/p95 ms | CPU ms/call | store writes/call

and the ratio of CPU per call with/without (the target: at most 1.2). CPU ms/call is
the nodes' per-thread run time (/proc/PID/task/*/schedstat) summed over the three nodes,
divided by the calls they admitted; store writes/call counts records in progress
written (tsunagu_call_log_in_progress_written_total) per call.

Nothing here is a test: it reports, it never asserts. Do not run it while a build runs.

Usage: python3 loadtest/checkpoint_cost.py [--rates 300,600] [--seconds 10]
       [--hold-ms 3000] [--bin PATH]
"""
import argparse, os, re, shutil, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ladder import ROOT  # noqa: E402
from cluster_common import Cluster, provision, uas  # noqa: E402
from cluster_ladder import idle, probe, step  # noqa: E402

WRITES = "tsunagu_call_log_in_progress_written_total"


def set_checkpoints(cluster, on):
    """Writes `checkpoints = true|false` into each node's [cluster] table."""
    for n in cluster.nodes:
        with open(n.config) as f:
            text = f.read()
        text = re.sub(r"^checkpoints = .*\n", "", text, flags=re.M)
        text = text.replace("[cluster]\n", f"[cluster]\ncheckpoints = {'true' if on else 'false'}\n", 1)
        with open(n.config, "w") as f:
            f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="300,600", help="target calls per second, in total")
    ap.add_argument("--seconds", type=int, default=10, help="duration of each step")
    ap.add_argument("--hold-ms", type=int, default=3000, help="call hold time (calls answered, then held)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "tsunagu"))
    ap.add_argument("--transport", default="u1", help="SIPp -t (u1 = one UDP socket)")
    args = ap.parse_args()
    if not shutil.which("sipp"):
        sys.exit("sipp is not installed (apt-get install sip-tester)")
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} missing: cargo build --release --bin tsunagu")
    rates = [int(r) for r in args.rates.split(",")]
    work = tempfile.mkdtemp(prefix="tsunagu-checkpoint-cost-")
    cluster = Cluster(work)
    destination = uas(work)
    provisioned = False
    print(f"work dir {work}; hold {args.hold_ms} ms, {args.seconds} s per step")
    print(f"{'target':>7} {'setup':>12} {'achieved':>9} {'calls':>7} {'success%':>9} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'CPU ms/call':>12} {'writes/call':>12}")
    try:
        for k, rate in enumerate(rates):
            order = [True, False] if k % 2 == 0 else [False, True]
            results = {}
            for on in order:
                set_checkpoints(cluster, on)
                cluster.start(args.bin)
                if not provisioned:
                    provision(cluster.nodes[0], cluster.admin)
                    provisioned = True
                probe(cluster.nodes, work)
                idle(cluster.nodes)
                w0 = sum(n.metric(WRITES) for n in cluster.nodes)
                r = step("on" if on else "off", cluster.nodes, rate, args, work)
                r["writes"] = (sum(n.metric(WRITES) for n in cluster.nodes) - w0) / max(1.0, r["started"])
                results[on] = r
                cluster.stop()
            for on in (True, False):
                r = results[on]
                name = "checkpoints" if on else "none"
                print(f"{rate:>7} {name:>12} {r['achieved']:>9.0f} {r['calls']:>7} {r['success']:>8.2f}% "
                      f"{r['p50']:>7.2f} {r['p95']:>7.2f} {r['cpu_ms_per_call']:>12.3f} {r['writes']:>12.2f}",
                      flush=True)
            ratio = results[True]["cpu_ms_per_call"] / max(1e-9, results[False]["cpu_ms_per_call"])
            print(f"{rate:>7} {'ratio':>12}   CPU per call with/without checkpoints {ratio:.2f}", flush=True)
    finally:
        destination.kill()
        cluster.stop()


if __name__ == "__main__":
    main()
