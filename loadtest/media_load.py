#!/usr/bin/env python3
"""Media load: how many queued callers (each hearing the looped queue prompt) and how
many recorded calls (stereo WAV written as they go) one node holds, and its CPU.

Starts a node (release build) on loopback, provisions two numbers — one with a queue
of one line, one with recording — and SIPp destinations, then runs two phases:

  queued:   one call takes the only line and holds it (30 s); --queued callers arrive
            and wait, each hearing the default queue prompt (50 RTP packets/s per
            caller), until they time out after 30 s.
  recorded: --recorded calls at once, each caller playing 8 s of PCMA
            (g711a.pcap) to a destination echoing it, both sides recorded.

For each phase it prints calls held, node CPU (per-thread run time from
/proc/PID/task/*/schedstat) as a share of one core and per call, RSS growth per call,
and for recordings how many were complete. Nothing here is a test: it reports.

Usage: python3 loadtest/media_load.py [--queued 500] [--recorded 100]
"""
import argparse, os, shutil, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ladder import ADMIN, ROOT, SCEN, api, cpu_ns, metric, rss_mib  # noqa: E402


def wait_for(cond, limit):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.2)


def sipp(work, scenario, number, port, media, extra):
    return subprocess.Popen(["sipp", "-sf", os.path.join(SCEN, scenario), "-s", number, "127.0.0.1:5060",
                             "-i", "127.0.0.1", "-p", str(port), "-mp", str(media), "-key", "caller", "09012345678",
                             "-buff_size", "4194304", "-nostdin"] + extra,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)


def measure(node, seconds):
    """(CPU share of one core, RSS MiB) over `seconds`."""
    c0, t0 = cpu_ns(node.pid), time.time()
    time.sleep(seconds)
    return (cpu_ns(node.pid) - c0) / 1e9 / (time.time() - t0), rss_mib(node.pid)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queued", type=int, default=500)
    ap.add_argument("--recorded", type=int, default=100)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "tsunagu"))
    args = ap.parse_args()
    if not shutil.which("sipp"):
        sys.exit("sipp is not installed (apt-get install sip-tester)")
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} missing: cargo build --release --bin tsunagu")
    work = tempfile.mkdtemp(prefix="tsunagu-media-")
    conf = os.path.join(work, "node.toml")
    with open(conf, "w") as f:
        f.write(f"""
[node]
id = "media"
data_dir = "{work}/data"
[sip]
listen = ["udp:127.0.0.1:5060"]
[media]
ports = "20000-39999"
[api]
listen = "127.0.0.1:8080"
admin_token = "{ADMIN}"
[log]
level = "warn"
[[trunks]]
name = "a"
inbound = ["127.0.0.1/32"]
outbound = "udp:127.0.0.1:5070"
[[trunks]]
name = "echo"
outbound = "udp:127.0.0.1:5072"
[[routes]]
prefix = "032"
trunks = ["echo"]
[[routes]]
prefix = ""
trunks = ["a"]
""")
    node = subprocess.Popen([args.bin, "serve", "--config", conf], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(work, "node.log"), "w"))
    procs = []
    try:
        wait_for(lambda: urllib.request.urlopen("http://127.0.0.1:8080/healthz", timeout=1), 10)
        key = api(8080, "POST", "/v1/operators", ADMIN, {"name": "media"})["api_key"]
        adv = api(8080, "POST", "/v1/advertisers", key, {"name": "shop"})["id"]
        api(8080, "POST", "/v1/numbers", key, {"number": "0501000001", "advertiser_id": adv,
                                                 "destinations": [{"number": "0311112222"}],
                                                 "queue": {"max_lines": 1, "max_wait_seconds": 30}})
        api(8080, "POST", "/v1/numbers", key, {"number": "0501000002", "advertiser_id": adv,
                                                 "destinations": [{"number": "0322223333"}],
                                                 "recording": {"mode": "both"}})
        procs.append(subprocess.Popen(["sipp", "-sf", os.path.join(SCEN, "uas_answer.xml"), "-i", "127.0.0.1", "-p", "5070",
                                       "-mp", "6000", "-buff_size", "4194304", "-nostdin"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work))
        procs.append(subprocess.Popen(["sipp", "-sf", os.path.join(SCEN, "uas_answer.xml"), "-i", "127.0.0.1", "-p", "5072",
                                       "-mp", "6100", "-rtp_echo", "-buff_size", "4194304", "-nostdin"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work))
        time.sleep(0.5)
        idle_cpu, base = measure(node, 3)
        print(f"node pid {node.pid}, work dir {work}; idle: {idle_cpu * 100:.1f} % of a core, RSS {base:.1f} MiB")

        # Queued callers.
        procs.append(sipp(work, "uac.xml", "0501000001", 5061, 7000, ["-m", "1", "-d", "30000"]))
        wait_for(lambda: metric(8080, "tsunagu_active_calls") >= 1, 10)
        n = args.queued
        procs.append(sipp(work, "uac.xml", "0501000001", 5062, 7100,
                          ["-m", str(n), "-l", str(n), "-r", "200", "-d", "1000"]))
        wait_for(lambda: metric(8080, "tsunagu_queue_waiting") >= n, n / 200 + 20)
        held = metric(8080, "tsunagu_queue_waiting")
        time.sleep(2)
        cpu, rss = measure(node, 10)
        print(f"queued: {held:.0f} callers waiting, each hearing the looped prompt: node CPU {cpu * 100:.1f} % of a core "
              f"({(cpu - idle_cpu) * 1e6 / max(1, held):.0f} µs/s per caller), RSS {rss:.1f} MiB "
              f"(+{(rss - base) * 1024 / max(1, held):.1f} KiB per queued call)")
        # The waiters time out (30 s, then the final prompt); the line holder hangs up.
        wait_for(lambda: metric(8080, "tsunagu_active_calls") == 0, 90)
        for p in procs[2:]:
            p.kill()
        time.sleep(2)
        idle_cpu, base = measure(node, 3)

        # Recorded calls.
        n = args.recorded
        done0 = metric(8080, 'tsunagu_recordings_written_total{status="complete"}')
        procs.append(sipp(work, "uac_rtp.xml", "0501000002", 5063, 7200,
                          ["-m", str(n), "-l", str(n), "-r", str(max(1, n // 2)), "-d", "9000"]))
        wait_for(lambda: metric(8080, "tsunagu_active_calls") >= n, 30)
        held = metric(8080, "tsunagu_active_calls")
        time.sleep(1)
        cpu, rss = measure(node, 5)
        print(f"recorded: {held:.0f} calls at once, 8 s of audio each way: node CPU {cpu * 100:.1f} % of a core "
              f"({(cpu - idle_cpu) * 1e6 / max(1, held):.0f} µs/s per call), RSS {rss:.1f} MiB "
              f"(+{(rss - base) * 1024 / max(1, held):.1f} KiB per call)")
        procs[-1].wait(timeout=120)
        wait_for(lambda: metric(8080, "tsunagu_active_calls") == 0, 60)
        time.sleep(2)
        complete = metric(8080, 'tsunagu_recordings_written_total{status="complete"}') - done0
        truncated = metric(8080, 'tsunagu_recordings_written_total{status="truncated"}')
        print(f"recordings: {complete:.0f} complete, {truncated:.0f} truncated")
    finally:
        for p in procs:
            p.kill()
        node.send_signal(15)
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()


if __name__ == "__main__":
    main()
