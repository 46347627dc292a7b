"""Scenario 1 taken apart: what the guard costs a cache hit, piece by piece (issue 5).

bench/peers.py scenario 1 compares CoreDNS alone (.53, no XDP) with the full sidecar (.52:
dns-guard started, XDP generic on eth0, proxy in the forward path). This probe runs the same
lab and CoreDNS with more configurations in between, in interleaved rounds whose order rotates,
so each step's cost can be read as a ratio inside a round:

  alone      no XDP on eth0, queries to .53 (peers.py's "coredns")
  side       dns-guard running as a proxy only (no interface: no XDP), queries to .52: the
             sidecar's server block and process, without the XDP program
  pass       XDP_PASS-only program (guard-ebpf/src/xdp_pass.bpf.c) in generic mode on eth0, .53
  guard      dns-guard running (XDP generic on eth0, proxy on), queries to .52 (peers.py's "guard")
  guard53    dns-guard running, queries to .53: the same XDP work, the alone server block
  guardalt   as guard, with the dns-guard binary given by --alt-bin (A/B of two builds)

A config may carry dnsperf's outstanding-query limit after an @ (alone@150; default --outstanding).

Per measurement: dnsperf from c1 at max rate (-c 4 -q 200, as scenario 1), and beside it the
coredns pod's UDP counters (nstat: receive-buffer drops), NET_RX softirqs, CPU of CoreDNS and
dns-guard, the box's busy %, and with --bpf-stats the XDP program's own ns per packet.

    python3 bench/s1_probe.py --rounds 6 --configs alone,pass,guard     # as root
    python3 bench/s1_probe.py --perf guard,alone                          # + perf record -a -g

Run under the shared lock (flock /work/wt/bench.lock ...). Traffic stays in the lab.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))
sys.path.insert(0, str(HERE))

import common as C  # noqa: E402
import peers  # noqa: E402
import s1_clean  # noqa: E402
from lab import Lab, LabError  # noqa: E402

REPO = HERE.parent
XDP_PASS_OBJ = sorted(REPO.glob("target/release/build/guard-ebpf-*/out/xdp_pass.bpf.o"),
                      key=lambda p: p.stat().st_mtime)
ALL = ["alone", "side", "pass", "guard", "guard53", "guardalt"]


def nstat(lab: Lab, pod: str) -> dict[str, int]:
    """Absolute SNMP counters of a pod's namespace (nstat -az: no history file involved)."""
    out = lab.run(pod, ["nstat", "-az", "--json"]).stdout
    data = json.loads(out)
    flat: dict[str, int] = {}
    for table in data.values():
        flat.update({k: int(v) for k, v in table.items()})
    return flat


def softirq(name: str) -> int:
    for line in Path("/proc/softirqs").read_text().splitlines():
        f = line.split()
        if f and f[0] == f"{name}:":
            return sum(int(x) for x in f[1:])
    return 0


def prog_stats(lab: Lab, pod: str) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the XDP program on the pod's eth0 (bpf_stats), or (0, 0)."""
    out = lab.run(pod, ["ip", "-d", "-j", "link", "show", "dev", "eth0"]).stdout
    m = re.search(r'"id":\s*(\d+)', json.dumps(json.loads(out)[0].get("xdp", {})))
    if not m:
        return 0, 0
    info = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id", m.group(1)],
                                     capture_output=True, text=True).stdout or "{}")
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


class Probe:
    def __init__(self, lab: Lab, bench: peers.Bench, args):
        self.lab, self.bench, self.args = lab, bench, args

    @contextlib.contextmanager
    def config(self, name: str):
        lab, bench = self.lab, self.bench
        if name in ("guard", "guard53", "guardalt"):
            default_bin = lab.binary
            if name == "guardalt":
                lab.binary = Path(self.args.alt_bin)
            try:
                with bench.guarded(True, "clean"):
                    yield peers.ALONE if name == "guard53" else peers.SIDECAR
            finally:
                lab.binary = default_bin
            return
        if name == "side":
            bench.attach_guard("clean", config=bench.guard_config("clean") | {"interface": None})
            try:
                yield peers.SIDECAR
            finally:
                bench.detach_guard()
            return
        if name == "pass":
            obj = XDP_PASS_OBJ[-1]
            lab.run("coredns", ["ip", "link", "set", "dev", "eth0", "xdpgeneric", "obj", str(obj), "sec", "xdp"])
            try:
                yield peers.ALONE
            finally:
                lab.clear_xdp("coredns")
            return
        yield peers.ALONE

    def measure(self, spec: str, perf: bool) -> dict:
        """spec: a config name, optionally with dnsperf's -q after an @ (guard@150)."""
        lab, args = self.lab, self.args
        name, _, q = spec.partition("@")
        outstanding = int(q) if q else args.outstanding
        with self.config(name) as server:
            if args.settle:
                time.sleep(args.settle)
            pids = self.bench.pids()
            meter = C.CpuMeter(pids)
            n0, s0, p0 = nstat(lab, "coredns"), softirq("NET_RX"), prog_stats(lab, "coredns")
            perf_proc = None
            if perf:
                out = Path(args.perf_dir) / f"perf-{spec}-{time.time_ns()}.data"
                perf_proc = subprocess.Popen(["perf", "record", "-a", "-g", "-F", str(args.perf_freq), "-o", str(out),
                                              "--", "sleep", str(args.duration)],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            res = lab.dnsperf("c1", server, s1_clean.NAMES, duration=args.duration, clients=4,
                              outstanding=outstanding, timeout=1)
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            r = meter.stop()
            # dnsperf is our waited-for child (nsenter execs it): its CPU, which also carries
            # most of the query's receive path (veth_xmit -> backlog runs in the sender's softirq).
            r["dnsperf_ms"] = ((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)) * 1000 / args.duration
            n1, s1, p1 = nstat(lab, "coredns"), softirq("NET_RX"), prog_stats(lab, "coredns")
            if perf_proc:
                perf_proc.wait(60)
                r["perf_data"] = str(out)
        ok = res.rcodes.get("NOERROR", 0)
        r.update(qps=res.qps * ok / res.completed if res.completed else 0.0, lost=res.lost,
                 sent=res.sent, avg_us=C.average_latency_us(res.raw),
                 rcvbuf_err=n1.get("UdpRcvbufErrors", 0) - n0.get("UdpRcvbufErrors", 0),
                 udp_in=n1.get("UdpInDatagrams", 0) - n0.get("UdpInDatagrams", 0),
                 udp_inerr=n1.get("UdpInErrors", 0) - n0.get("UdpInErrors", 0),
                 net_rx=s1 - s0)
        if r["qps"]:
            # CPU µs per answered query of everything on the query's path: robust to other
            # load on the box, which changes how fast the path runs far less than how often.
            r["cpu_us_q"] = (r["coredns_ms"] + r.get("guard_ms", 0) + r["dnsperf_ms"]) * 1000 / r["qps"]
        if p1[1] > p0[1]:
            r["xdp_ns"] = (p1[0] - p0[0]) / (p1[1] - p0[1])
            r["xdp_runs"] = p1[1] - p0[1]
        if ok == 0:
            raise LabError(f"{name}: nothing answered NOERROR: {res}")
        return r


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="alone,pass,guard", help=f"from {','.join(ALL)}")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--settle", type=float, default=0.0, help="seconds between attach and measuring")
    p.add_argument("--outstanding", type=int, default=200, help="dnsperf -q (scenario 1: 200)")
    p.add_argument("--perf", default="", help="configs to record with perf -a -g (every round; files in --perf-dir)")
    p.add_argument("--perf-dir", default="/tmp")
    p.add_argument("--perf-freq", type=int, default=999)
    p.add_argument("--alt-bin", help="dns-guard binary for the guardalt config")
    p.add_argument("--bpf-stats", action="store_true",
                   help="turn kernel.bpf_stats_enabled on for the run (XDP prog ns column; it adds two "
                        "clock reads to every program run, so it is off unless asked for)")
    p.add_argument("--out", type=Path, help="write the raw rounds as JSON here")
    args = p.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    if any(c.partition("@")[0] not in ALL for c in configs) or not XDP_PASS_OBJ:
        p.error(f"configs from {ALL}; xdp_pass.bpf.o must be built (cargo build --release)")
    perf_for = {c for c in args.perf.split(",") if c}
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = stats.read_text().strip()
    if args.bpf_stats:
        stats.write_text("1")
    try:
        return run(args, configs, perf_for)
    finally:
        # A box-wide switch (a clock read around every BPF program run): leave it as found.
        stats.write_text(before)


def run(args, configs: list[str], perf_for: set[str]) -> int:
    # The same lab and CoreDNS as bench/peers.py (its Corefile, its extra pod addresses).
    def make_coredns(lab, pod, up):
        for addr in peers.EXTRA_ADDRS:
            lab._ip("-n", lab.ns(pod), "addr", "add", f"{addr}/24", "dev", "eth0")
        return peers.corednsmod.CoreDns(lab, pod, up, corefile=peers.corefile())
    peers.labmod.RESOLVERS["coredns-bench"] = make_coredns
    pa = peers.parse_args(["--scenarios", "1"])
    rows: dict[str, list[dict]] = {c: [] for c in configs}
    load = {"start": C.load_average()}
    with Lab(resolver="coredns-bench") as lab:
        bench = peers.Bench(lab, pa)
        # Warm both server blocks' caches, as s1_clean.setup does.
        for cfg in ("alone", "side"):
            srv = peers.SIDECAR if cfg == "side" else peers.ALONE
            with bench.guarded(cfg == "side", "clean"):
                lab.dnsperf("c1", srv, s1_clean.NAMES, duration=3, qps=1000, extra=["-n", "1"])
        probe = Probe(lab, bench, args)
        for rnd in range(args.rounds):
            order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
            for c in order:
                r = probe.measure(c, c in perf_for)
                r["config"] = c
                rows[c].append(r)
                print(f"round {rnd + 1} {c:8s} qps {r['qps']:8.0f} lost {r['lost']:5d} rcvbuf {r['rcvbuf_err']:6d} "
                      f"coredns {r['coredns_ms']:5.0f} ms/s guard {r.get('guard_ms', 0):4.0f} busy {r['box_pct']:3.0f}% "
                      f"dnsperf {r['dnsperf_ms']:4.0f} cpu/q {r.get('cpu_us_q', 0):5.1f} us netrx {r['net_rx']:7d} xdp {r.get('xdp_ns', 0):5.0f} ns  load {C.load_average()}",
                      file=sys.stderr, flush=True)
    load["end"] = C.load_average()
    base = configs[0]
    print(f"\n{' '.join(sys.argv)}\nload average {load['start']} at the start, {load['end']} at the end; {args.rounds} rounds of "
          f"{args.duration:g} s; ratios are per round against {base}, then median (min–max)")
    print(f"| config | QPS | /{base} | lost | rcvbuf drops | CoreDNS ms/s | dns-guard ms/s | dnsperf ms/s | "
          f"CPU µs/query | /{base} | box busy % | NET_RX softirqs/s | XDP prog ns |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in configs:
        rs = rows[c]
        print(f"| {c} | {C.cell(rs, 'qps')} | {C.summary(C.per_round(rs, rows[base], 'qps'), '.3f')} | "
              f"{C.med_cell(rs, 'lost')} | {C.med_cell(rs, 'rcvbuf_err')} | {C.med_cell(rs, 'coredns_ms')} | "
              f"{C.med_cell(rs, 'guard_ms')} | {C.med_cell(rs, 'dnsperf_ms')} | {C.cell(rs, 'cpu_us_q', '.1f')} | "
              f"{C.summary(C.per_round(rs, rows[base], 'cpu_us_q'), '.3f')} | {C.med_cell(rs, 'box_pct')} | "
              f"{statistics.median([r['net_rx'] / args.duration for r in rs]):,.0f} | {C.med_cell(rs, 'xdp_ns')} |")
    if args.out:
        args.out.write_text(json.dumps({"load": load, "args": vars(args) | {"out": str(args.out)},
                                        "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
