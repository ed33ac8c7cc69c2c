#!/usr/bin/env python3
"""Where a side-by-side step's probe tail comes from.

Reads the probe UAC's message trace (`probe_msg.log`, written by SIPp's -trace_msg in
each step directory of loadtest/sbs) and lists, per call, when its INVITE was
sent (seconds into the step), INVITE -> first 100 and INVITE -> first 200 in ms, the
slowest calls first. A call slow on its first hop (INVITE -> 100) waited in the node
before the node read or answered it; one slow only to the 200 waited on the callee
leg. Several step directories may be given; each is summarised on its own.

    python3 loadtest/probe_tail.py sbs-results/<run>/tsunagu-1000 [--top 8]
"""
import argparse
import os
import re
import sys

SEPARATOR = re.compile(r"^-{20,}.*?(\d\d):(\d\d):(\d\d\.\d+)\s*$")


def read_trace(path):
    """Per Call-ID: INVITE sent, first 100 and first 200 received (seconds of day)."""
    sent, t100, t200 = {}, {}, {}
    msg = {"ts": None, "dir": None, "first": None, "cid": None, "cseq": None}

    def settle():
        ts, cid, first = msg["ts"], msg["cid"], msg["first"]
        if ts is None or cid is None or first is None:
            return
        if msg["dir"] == "sent" and first.startswith("INVITE "):
            sent.setdefault(cid, ts)
        elif msg["dir"] == "recv" and (msg["cseq"] or "").endswith("INVITE"):
            if first.startswith("SIP/2.0 100"):
                t100.setdefault(cid, ts)
            elif first.startswith("SIP/2.0 200"):
                t200.setdefault(cid, ts)

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            m = SEPARATOR.match(line)
            if m:
                settle()
                msg = {"ts": int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]),
                       "dir": None, "first": None, "cid": None, "cseq": None}
            elif line.startswith("UDP message sent"):
                msg["dir"] = "sent"
            elif line.startswith("UDP message received"):
                msg["dir"] = "recv"
            elif msg["dir"] and msg["first"] is None and line.strip():
                msg["first"] = line.strip()
            elif line.lower().startswith("call-id:"):
                msg["cid"] = line.split(":", 1)[1].strip()
            elif line.lower().startswith("cseq:"):
                msg["cseq"] = line.split(":", 1)[1].strip()
        settle()
    return sent, t100, t200


def summarise(step_dir, top):
    path = os.path.join(step_dir, "probe_msg.log")
    if not os.path.exists(path):
        print(f"{step_dir}: no probe_msg.log", file=sys.stderr)
        return
    sent, t100, t200 = read_trace(path)
    if not sent:
        print(f"{step_dir}: no INVITE sent")
        return
    start = min(sent.values())
    rows = []
    for cid, ts in sent.items():
        if cid not in t200:
            continue
        first = (t100[cid] - ts) * 1000 if cid in t100 else float("nan")
        rows.append(((t200[cid] - ts) * 1000, ts - start, first))
    rows.sort(reverse=True)
    print(f"{step_dir}: {len(rows)} answered of {len(sent)} probe calls")
    print("  INV->200 ms | sent at s | INV->100 ms")
    for whole, at, first in rows[:top]:
        print(f"  {whole:11.2f} | {at:9.2f} | {first:10.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("steps", nargs="+", help="step directories of a side-by-side run")
    p.add_argument("--top", type=int, default=8, help="how many slow calls to list")
    a = p.parse_args()
    for d in a.steps:
        summarise(d, a.top)


if __name__ == "__main__":
    main()
