#!/usr/bin/env python3
"""Pools several side-by-side runs: one table per rate, the tail over every sample.

A step's probe sends 10 calls a second, so a 20 s step's p99 is its third-slowest
call of 200 and two runs of the same binary on this machine differ by more than the
two servers do. This reads the raw samples of the steps of several runs (each a
directory `run.sh` wrote, with `<mode>-<rate>/` steps in it) and gives, per rate and
server, the percentiles over all of them together:

  steps | calls | success % | retrans | SIPp setup ms p50/p95/p99 | probe INV->100 ms
  p50/p95/p99 | probe INV->200 ms p50/p95/p99 | probe calls answered | server CPU
  ms/call (whole step, mean) | "not ours" (the most of any pooled step, % of a core:
  above 20 the step was noise, and the rate is flagged)

then, per rate where Kamailio was clean in every pooled step (100 % success, no
retransmission), which of tsunagu's tail figures (SIPp setup p99, the probe's
INVITE -> 100 p99 and INVITE -> 200 p99) are at or below Kamailio's. Where tsunagu
itself was not clean (calls lost or retransmitted), its percentiles cover only the
calls that got through: the rate's comparisons all count as above. SIPp's setup
times come in 4 ms steps, so a setup p99 equal to Kamailio's is a tie at that
resolution (counted as at or below, and said so).

    python3 loadtest/sbs/pool.py /tmp/sbs/s75 /tmp/sbs/s76 [...]

Nothing is run; it only reads what the runs left.
"""
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from probe_tail import read_trace  # noqa: E402
# The harness's own nearest-rank percentile, and its bound on "not ours" (% of a core)
# above which a step is noise (it repeats such a step).
from bench import OTHER_CPU_RETRY as NOISY, pct, rtt_samples  # noqa: E402

MODES = (("proxy", "Kamailio"), ("tsunagu", "tsunagu"))


def probe(step):
    """The probe's INVITE -> first 100 and INVITE -> first 200, every call, in ms."""
    path = os.path.join(step, "probe_msg.log")
    if not os.path.exists(path):
        return [], []
    sent, t100, t200 = read_trace(path)
    return ([(t100[c] - sent[c]) * 1000 for c in t100 if c in sent],
            [(t200[c] - sent[c]) * 1000 for c in t200 if c in sent])


def pool(runs):
    """{(mode, rate): figures pooled over the runs' steps of that mode and rate}."""
    acc = {}
    for run in runs:
        for fn in sorted(glob.glob(os.path.join(run, "*", "result.json"))):
            with open(fn) as f:
                r = json.load(f)
            # Plain steps only: not those with SIPp's built-in scenarios, Kamailio's
            # dialog module or a label suffix (`bench.py ladder --builtin/--dialog/--suffix`).
            if r.get("mode") not in dict(MODES) or r.get("label") != f"{r['mode']}-{r['rate']}":
                continue
            step = os.path.dirname(fn)
            a = acc.setdefault((r["mode"], r["rate"]), {
                "steps": 0, "calls": 0, "ok": 0, "retrans": 0, "setup": [], "inv100": [],
                "inv200": [], "cpu": [], "clean": True, "not_ours": 0.0})
            a["steps"] += 1
            a["calls"] += r["target_calls"]
            a["ok"] += r["successful"]
            a["retrans"] += r["retransmissions"]
            a["not_ours"] = max(a["not_ours"], r["cpu_pct_of_core"].get("other") or 0.0)
            a["clean"] &= r["success_pct"] >= 100.0 and r["retransmissions"] == 0
            a["setup"] += rtt_samples(step, "uac_rr").get("1", [])
            i100, i200 = probe(step)
            a["inv100"] += i100
            a["inv200"] += i200
            whole = (r.get("server_cpu_whole_step") or {}).get("ms_per_call")
            if whole is not None:
                a["cpu"].append(whole)
    return acc


def three(v, nd):
    return "/".join("-" if x is None else f"{x:.{nd}f}" for x in (pct(v, 50), pct(v, 95), pct(v, 99)))


def main(runs):
    acc = pool(runs)
    rates = sorted({rate for _, rate in acc})
    print(f"Pooled over {len(runs)} run(s): {', '.join(runs)}\n")
    for rate in rates:
        k, t = acc.get(("proxy", rate)), acc.get(("tsunagu", rate))
        if k and t and k["steps"] != t["steps"]:
            print(f"warning: at {rate} cps Kamailio has {k['steps']} step(s), tsunagu {t['steps']}: "
                  "pooled over different runs\n")
    print("| rate | server | steps | calls | success % | retrans | SIPp setup ms p50/p95/p99 | "
          "probe INV->100 ms p50/p95/p99 | probe INV->200 ms p50/p95/p99 | probe calls answered | "
          "CPU ms/call (whole step, mean) | not ours, most of a step % |")
    print("|" + "---|" * 12)
    for rate in rates:
        for mode, name in MODES:
            a = acc.get((mode, rate))
            if not a:
                continue
            cpu = f"{sum(a['cpu']) / len(a['cpu']):.3f}" if a["cpu"] else "-"
            print(f"| {rate} | {name} | {a['steps']} | {a['calls']} | {100.0 * a['ok'] / max(1, a['calls']):.3f} | "
                  f"{a['retrans']} | {three(a['setup'], 0)} | {three(a['inv100'], 2)} | "
                  f"{three(a['inv200'], 2)} | {len(a['inv200'])} | {cpu} | {a['not_ours']:.1f} |")
    print("\nTail at or below Kamailio's (p99), where Kamailio was clean in every pooled step:\n")
    met = total = 0
    for rate in rates:
        k, t = acc.get(("proxy", rate)), acc.get(("tsunagu", rate))
        if not k or not t:
            continue
        if not k["clean"]:
            print(f"- {rate} cps: Kamailio not clean (success {100.0 * k['ok'] / max(1, k['calls']):.3f} %, "
                  f"{k['retrans']} retransmissions): not compared")
            continue
        lost = not t["clean"]
        noisy = max(k["not_ours"], t["not_ours"]) > NOISY
        parts = []
        for key, label in (("setup", "SIPp setup"), ("inv100", "INVITE -> 100"), ("inv200", "INVITE -> 200")):
            kp, tp = pct(k[key], 99), pct(t[key], 99)
            if kp is None or tp is None:
                continue
            total += 1
            ok = tp <= kp and not lost
            met += ok
            tie = " (a tie at SIPp's 4 ms steps)" if key == "setup" and tp == kp else ""
            parts.append(f"{label} {tp:.2f} vs {kp:.2f} {'at or below' if ok else 'ABOVE'}{tie}")
        notes = ""
        if lost:
            notes += (f" [tsunagu not clean: success {100.0 * t['ok'] / max(1, t['calls']):.3f} %, "
                      f"{t['retrans']} retransmissions; counted as above]")
        if noisy:
            notes += f" [a step had more than {NOISY:.0f} % of a core not ours: noise]"
        print(f"- {rate} cps: " + "; ".join(parts) + notes)
    print(f"\n{met} of {total} comparisons at or below.")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
