#!/usr/bin/env python3
"""Where the setup tail comes from, read off the wire.

Captures the node's SIP traffic on the loopback for a few seconds (tcpdump) while a
load runs (e.g. loadtest/ladder.py in another shell, or the side-by-side harness),
then, per call:

  caller leg  INVITE -> 100 Trying   the node's first hop (receive thread, SIP core)
  caller leg  INVITE -> 200 OK       the whole setup as the caller sees it
  callee leg  INVITE -> 200 OK       the callee (SIPp's UAS), for comparison

as p50/p95/p99/max, and the moments (seconds into the capture) at which calls were
slower than --slow-ms, grouped: calls that are slow together at one moment are a stall
of the node (every message waited for the same thing), scattered ones are scheduling.
A stall that comes back at the same moment of every run is deterministic work (a
table growing, a batch); this is how the transaction tables' growth was found
(README, "The tail at moderate load").

Nothing here is a test: it reports. It needs tcpdump (apt-get install tcpdump) and
root (capturing). The callee is recognised by --uas-port, the node by --sip-port.

Usage: python3 loadtest/wire_tail.py [--seconds 4] [--sip-port 5060] [--uas-port 5070]
       [--slow-ms 8] [--pcap FILE (analyse a capture instead of capturing)]
"""
import argparse, collections, os, re, shutil, struct, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ladder import percentile  # noqa: E402

CALL_ID = re.compile(rb"\r\n(?:Call-ID|i): *([^\r]+)", re.I)
CSEQ = re.compile(rb"\r\nCSeq: *\d+ +(\w+)", re.I)


def packets(path):
    """(time, source port, destination port, payload) of each UDP/IPv4 packet."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            return
        magic = struct.unpack("<I", head[:4])[0]
        scale = 1e9 if magic == 0xA1B23C4D else 1e6
        link = struct.unpack("<I", head[20:24])[0]
        offset = 14 if link == 1 else 16  # Ethernet (lo) or Linux cooked
        while True:
            h = f.read(16)
            if len(h) < 16:
                return
            sec, frac, incl, _ = struct.unpack("<IIII", h)
            data = f.read(incl)
            ip = data[offset:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            udp = ip[(ip[0] & 15) * 4:]
            if len(udp) < 8:
                continue
            sport, dport = struct.unpack(">HH", udp[:4])
            yield sec + frac / scale, sport, dport, udp[8:]


def timeline(path, sip_port, uas_port):
    """Per Call-ID, the first time of each step seen."""
    calls = collections.defaultdict(dict)
    for t, sport, dport, payload in packets(path):
        first = payload.split(b"\r\n", 1)[0]
        cid = CALL_ID.search(payload)
        cseq = CSEQ.search(payload)
        if not cid or not cseq or cseq.group(1) != b"INVITE":
            continue
        step = None
        to_uas, from_uas = dport == uas_port, sport == uas_port
        if first.startswith(b"INVITE"):
            step = "uas_invite" if to_uas else ("invite" if dport == sip_port else None)
        elif first.startswith(b"SIP/2.0 100"):
            step = "trying" if sport == sip_port and not to_uas else None
        elif first.startswith(b"SIP/2.0 200"):
            step = "uas_ok" if from_uas else ("ok" if sport == sip_port and not to_uas else None)
        if step and step not in calls[cid.group(1)]:
            calls[cid.group(1)][step] = t
    return calls


def report(calls, slow_ms):
    def span(a, b):
        return [1000 * (c[b] - c[a]) for c in calls.values() if a in c and b in c]
    for label, a, b in (("caller INVITE -> 100", "invite", "trying"),
                        ("caller INVITE -> 200", "invite", "ok"),
                        ("callee INVITE -> 200", "uas_invite", "uas_ok")):
        v = span(a, b)
        print(f"{label:<22} n={len(v):>6}  p50 {percentile(v, 50):6.2f}  p95 {percentile(v, 95):6.2f}  "
              f"p99 {percentile(v, 99):6.2f}  max {max(v or [float('nan')]):6.1f} ms")
    starts = [c["invite"] for c in calls.values() if "invite" in c]
    if not starts:
        return
    t0 = min(starts)
    slow = sorted((c["invite"] - t0, 1000 * (c["ok"] - c["invite"]))
                  for c in calls.values() if "invite" in c and "ok" in c
                  and 1000 * (c["ok"] - c["invite"]) > slow_ms)
    groups = []  # [start s, calls, worst ms]
    for at, ms in slow:
        if groups and at - groups[-1][0] < 0.05:
            groups[-1][1] += 1
            groups[-1][2] = max(groups[-1][2], ms)
        else:
            groups.append([at, 1, ms])
    print(f"calls slower than {slow_ms} ms: {len(slow)}, in {len(groups)} moments "
          "(seconds into the capture: calls, worst ms):")
    print("  " + "  ".join(f"{g[0]:.2f}s: {g[1]}, {g[2]:.0f}" for g in groups[:40]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--sip-port", type=int, default=5060)
    ap.add_argument("--uas-port", type=int, default=5070)
    ap.add_argument("--slow-ms", type=float, default=8.0)
    ap.add_argument("--pcap", help="analyse this capture instead of capturing")
    args = ap.parse_args()
    path = args.pcap
    if not path:
        if not shutil.which("tcpdump"):
            sys.exit("tcpdump is not installed (apt-get install tcpdump)")
        path = os.path.join(tempfile.mkdtemp(prefix="wire-tail-"), "sip.pcap")
        subprocess.run(["timeout", str(args.seconds), "tcpdump", "-i", "lo", "-B", "65536", "-s", "2000", "-w", path,
                        f"udp port {args.sip_port} or udp port {args.uas_port}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"capture: {path}")
    report(timeline(path, args.sip_port, args.uas_port), args.slow_ms)


if __name__ == "__main__":
    main()
