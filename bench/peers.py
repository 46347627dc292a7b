"""Peers side by side (issue 5): CoreDNS alone, dnsdist in front of CoreDNS, CoreDNS with dns-guard.

One lab, one run, interleaved rounds (the order of configurations rotates every round) so
machine drift lands on every configuration alike; the report is ratios, with the absolute
numbers beside them only for context. Scenarios, as numbered in issue 5:

  2a  an attacker pod floods blocklisted names while a legitimate client (c1) runs dnsperf
      at a fixed rate; 2b the same with random names (cache misses) from one source, over
      the per-source rate limit; 2c random subdomains of one victim domain (water torture)
      spread over 64 sources; 1  clean cache-hit traffic at max rate. At the rate one Python
      sender reaches here, each 2c source still sends over the per-source limit, so 2c shows
      less than a real water-torture attack (which arrives through many more resolvers).

Configurations (each as its users would set it up, same limits everywhere):

  coredns  CoreDNS 1.15 with ``acl bl.test { block }`` (REFUSED); it has no rate limit in-tree.
  dnsdist  dnsdist (Debian) in the dns pod in front of CoreDNS: MaxQPSIPRule(qps, 32, 64) →
           DropAction, then SuffixMatchNodeRule(bl.test) → RCodeAction(NXDOMAIN).
  guard    dns-guard's XDP program on the dns pod's eth0: blocklist ``||bl.test^`` →
           NXDOMAIN, rate limit qps per /32 → drop. Its forwarding proxy is not in the path.

In scenario 1 the rate limits are raised far above any rate reached, so their bookkeeping
runs but never fires (otherwise the scenario would measure the limit, not the overhead).

CPU comes from /proc/<pid>/stat (utime+stime) of CoreDNS, dnsdist and dns-guard's userspace,
and the whole box's busy time from /proc/stat (XDP runs in softirq and belongs to no process).

    python3 bench/peers.py            # full run, ~7 minutes; writes docs/peers.png
    python3 bench/peers.py --smoke    # a few seconds per scenario; asserts answers, not timings

Run as root. Traffic stays inside the lab (198.18.0.0/24); the lab is torn down on exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "integration"))

import coredns as corednsmod  # noqa: E402
import lab as labmod  # noqa: E402
from lab import Lab, LabError, v4  # noqa: E402

FLOOD = Path(__file__).resolve().parent / "flood.py"
ATTACKER = "att"
ATTACKER_HOSTS = list(range(100, 164))  # 64 sources for 2c; 2a/2b use the first only
LEGIT_NAMES = [f"q{i:03d}.ok.test" for i in range(100)]  # all fit CoreDNS's cache
DNSDIST_PORT = {"flood": 5300, "clean": 5301}  # two instances: limit on, limit out of reach
NO_LIMIT = 10_000_000


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    flood: str | None  # flood.py --kind, None for clean traffic
    sources: int = 1


SCENARIOS = {
    "2a": Scenario("2a", "flood of blocklisted names, one source", "blocked"),
    "2b": Scenario("2b", "flood of random names (cache misses), one source", "random"),
    "2c": Scenario("2c", "random subdomains of one victim domain, 64 sources", "victim", 64),
    "1": Scenario("1", "clean cache hits at max rate", None),
}
CONFIGS = ["coredns", "dnsdist", "guard"]


def corefile(workdir: Path) -> str:
    # The kubeadm shape minus kubernetes (no API server here) and minus the log plugin
    # (per-query logging would bill CoreDNS for writes a production server does not do).
    text = f""".:53 {{
    errors
    acl bl.test {{
        block
    }}
    prometheus 127.0.0.1:9153
    forward . {v4('up')} {{
        max_concurrent 1000
    }}
    cache 30
    loadbalance
}}
"""
    corednsmod.assert_lab_only(text)
    return text


def dnsdist_conf(port: int, qps: int) -> str:
    return f"""-- bench/peers.py: dnsdist in front of CoreDNS in the dns pod
setSecurityPollSuffix("")  -- never poll secpoll.powerdns.com: nothing leaves the lab
setLocal("{v4('dns')}:{port}")
setACL({{"198.18.0.0/15", "fd53:6775:6172::/48"}})  -- the lab's clients (not in the default ACL)
newServer({{address="127.0.0.1:53", name="coredns", checkName="good.test.", checkInterval=1}})
addAction(MaxQPSIPRule({qps}, 32, 64), DropAction())
local blocked = newSuffixMatchNode()
blocked:add(newDNSName("bl.test."))
addAction(SuffixMatchNodeRule(blocked), RCodeAction(DNSRCode.NXDOMAIN))
"""


# --------------------------------------------------------------------------- measurements


def cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def box_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine; idle and iowait count as not busy."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(vals) - vals[3] - vals[4], sum(vals)


TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")
_VERBOSE = re.compile(r"^> (\w+) (\S+) (\w+) ([\d.]+)$", re.M)
_AVG = re.compile(r"Average Latency \(s\):\s+([\d.]+)")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


@dataclasses.dataclass
class Round:
    success: float = 0.0  # % of the legitimate queries answered NOERROR
    p99_ms: float = 0.0  # over all sent, a lost query counting as the 1 s timeout
    qps: float = 0.0  # legitimate answers per second
    avg_us: float = 0.0  # dnsperf's average latency (scenario 1)
    coredns_ms: float = 0.0  # CPU ms per second of the round
    dnsdist_ms: float = 0.0
    guard_ms: float = 0.0
    box_pct: float = 0.0
    flood_pps: float = 0.0
    rcodes: dict = dataclasses.field(default_factory=dict)


class Bench:
    def __init__(self, lab: Lab, args):
        self.lab, self.args = lab, args
        self.failures: list[str] = []
        self.dnsdist: dict[str, subprocess.Popen] = {}
        self.guard = None
        self.guard_meta = "?"

    # --- the configurations
    def start_dnsdist(self) -> None:
        for kind, port in DNSDIST_PORT.items():
            conf = self.lab.workdir / f"dnsdist-{kind}.conf"
            conf.write_text(dnsdist_conf(port, self.args.limit if kind == "flood" else NO_LIMIT))
            self.dnsdist[kind] = self.lab.spawn("dns", ["dnsdist", "--supervised", "--disable-syslog",
                                                        "-C", str(conf)], f"dnsdist-{kind}")
        for kind, port in DNSDIST_PORT.items():
            def up():
                r = self.lab.dig("c2", "good.test", v4("dns"), "-p", str(port), "+timeout=1")
                return r.status == "NOERROR"
            if not labmod._wait_for(up, 15, 0.3):
                raise LabError(f"dnsdist ({kind}) never answered; "
                               f"{labmod._tail(self.lab.workdir / f'dnsdist-{kind}.out')}")

    def attach_guard(self, scenario: Scenario) -> None:
        qps = NO_LIMIT if scenario.flood is None else self.args.limit
        self.guard = self.lab.start_guard(
            {"xdp": {"action": "nxdomain", "mode": "auto",
                     "ratelimit": {"qps": qps, "burst": qps, "ipv4_prefix": 32, "ipv6_prefix": 64,
                                   "action": "drop"}}},
            {"block.txt": "||bl.test^\n"})
        m = re.search(r"dns-guard ready: XDP (\w+)", self.guard.stderr())
        self.guard_meta = m.group(1) if m else "?"

    def detach_guard(self) -> None:
        if self.guard:
            if not self.guard.alive():
                self.failures.append(f"dns-guard died: {self.guard.stderr_tail()}")
            self.guard.cleanup()
            self.lab.guards.remove(self.guard)
            self.guard = None

    def target(self, config: str, scenario: Scenario) -> tuple[str, int]:
        if config == "dnsdist":
            return v4("dns"), DNSDIST_PORT["clean" if scenario.flood is None else "flood"]
        return v4("dns"), 53

    # --- one round
    def pids(self, config: str, scenario: Scenario) -> dict[str, int]:
        out = {"coredns": self.lab.resolver.proc.pid}
        if config == "dnsdist":
            out["dnsdist"] = self.dnsdist["clean" if scenario.flood is None else "flood"].pid
        if config == "guard":
            out["guard"] = self.guard.proc.pid
        return out

    def run_round(self, config: str, scenario: Scenario) -> Round:
        if config == "guard":
            self.attach_guard(scenario)
        try:
            return self._measure(config, scenario)
        finally:
            if config == "guard":
                self.detach_guard()

    def _measure(self, config: str, scenario: Scenario) -> Round:
        server, port = self.target(config, scenario)
        pids = self.pids(config, scenario)
        d = self.args.duration
        flood = None
        if scenario.flood:
            srcs = [f"{labmod.V4_PREFIX}{h}" for h in ATTACKER_HOSTS[:scenario.sources]]
            argv = [labmod.SCAPY_PYTHON, str(FLOOD), "--dst", server, "--port", str(port),
                    "--kind", scenario.flood, "--duration", str(d + 1.0), "--max", str(int(400_000 * (d + 1)))]
            for s in srcs:
                argv += ["--src", s]
            flood = subprocess.Popen(self.lab._nsenter(ATTACKER, argv), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
            self.lab.procs.append(("flood", flood))
            time.sleep(0.5)  # let the flood reach steady state before the legitimate client starts
        cpu0 = {k: cpu_ticks(p) for k, p in pids.items()}
        box0, t0 = box_busy(), time.monotonic()
        if scenario.flood:
            res = self.lab.dnsperf("c1", server, LEGIT_NAMES, duration=d, qps=self.args.rate, timeout=1,
                                   extra=["-p", str(port), "-v"])
        else:
            res = self.lab.dnsperf("c1", server, LEGIT_NAMES, duration=d, clients=4, outstanding=200,
                                   timeout=1, extra=["-p", str(port)])
        secs = time.monotonic() - t0
        box1 = box_busy()
        cpu = {k: (cpu_ticks(p) - cpu0[k]) * TICK_MS / secs for k, p in pids.items()}
        r = Round(rcodes=dict(res.rcodes))
        r.coredns_ms, r.dnsdist_ms, r.guard_ms = cpu.get("coredns", 0), cpu.get("dnsdist", 0), cpu.get("guard", 0)
        r.box_pct = 100.0 * (box1[0] - box0[0]) / max(1, box1[1] - box0[1])
        ok = res.rcodes.get("NOERROR", 0)
        r.success = 100.0 * ok / res.sent if res.sent else 0.0
        r.qps = res.qps * ok / res.completed if res.completed else 0.0
        m = _AVG.search(res.raw)
        r.avg_us = float(m.group(1)) * 1e6 if m else 0.0
        if scenario.flood:
            lat = [float(s) * 1e3 for rc, _, _, s in _VERBOSE.findall(res.raw) if rc == "NOERROR"]
            lat += [1000.0] * (res.sent - len(lat))
            r.p99_ms = percentile(lat, 99) if lat else 1000.0
            out, err = flood.communicate(timeout=d + 30)
            try:
                r.flood_pps = json.loads(out)["pps"]
            except (ValueError, KeyError):
                self.failures.append(f"{config} {scenario.key}: flooder said {out!r} {err[-500:]!r}")
        # Under a flood, no answers at all is a result, not a harness failure; on clean traffic it is.
        if not ok and scenario.flood is None:
            self.failures.append(f"{config} {scenario.key}: no answers to clean traffic ({res})")
        if scenario.flood and not r.flood_pps:
            self.failures.append(f"{config} {scenario.key}: the attacker sent nothing")
        return r


# --------------------------------------------------------------------------- report


def med(rounds: list[Round], field: str) -> float:
    return statistics.median(getattr(r, field) for r in rounds)


def spread(rounds: list[Round], field: str, fmt: str) -> str:
    vals = [getattr(r, field) for r in rounds]
    return f"{format(min(vals), fmt)}–{format(max(vals), fmt)}"


def ratio(a: float, b: float) -> str:
    if not b:
        return "n/a"
    return f"{a / b:.2f}" if a / b >= 0.1 else f"{a / b:.3f}"


def paired(a: list[Round], b: list[Round], field: str) -> str:
    """Median (min–max) of per-round ratios a_i/b_i: rounds i ran back to back, so the box's
    drift between rounds (other jobs on a shared 2-core VM) cancels inside each ratio."""
    rs = [getattr(x, field) / getattr(y, field) for x, y in zip(a, b) if getattr(y, field)]
    if not rs:
        return "n/a"
    return f"{statistics.median(rs):.2f} ({min(rs):.2f}–{max(rs):.2f})"


def report(results: dict, args, meta: dict) -> str:
    out = []
    flood_keys = [k for k in args.scenarios if SCENARIOS[k].flood]
    if flood_keys:
        out += ["| scenario | config | legit success % (median, range) | legit p99 ms | legit answers/s | "
                "CoreDNS CPU ms/s | dnsdist CPU ms/s | dns-guard CPU ms/s | box busy % | attacker pps |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for k in flood_keys:
            for c in CONFIGS:
                rs = results[k][c]
                out.append(f"| {k} | {c} | {med(rs, 'success'):.1f} ({spread(rs, 'success', '.1f')}) | "
                           f"{med(rs, 'p99_ms'):.2f} | {med(rs, 'qps'):,.0f} | {med(rs, 'coredns_ms'):.0f} | "
                           f"{med(rs, 'dnsdist_ms'):.0f} | {med(rs, 'guard_ms'):.0f} | {med(rs, 'box_pct'):.0f} | "
                           f"{med(rs, 'flood_pps'):,.0f} |")
            g, a, d = results[k]["guard"], results[k]["coredns"], results[k]["dnsdist"]
            out.append(f"| {k} | **guard/coredns** | **{paired(g, a, 'qps')}× goodput** | "
                       f"**{ratio(med(g, 'p99_ms'), med(a, 'p99_ms'))}** | | "
                       f"**{ratio(med(g, 'coredns_ms'), med(a, 'coredns_ms'))}** | | | | |")
            out.append(f"| {k} | **guard/dnsdist** | **{paired(g, d, 'qps')}× goodput** | "
                       f"**{ratio(med(g, 'p99_ms'), med(d, 'p99_ms'))}** | | "
                       f"**{ratio(med(g, 'coredns_ms'), med(d, 'coredns_ms'))}** | | | | |")
        out.append("")
    if "1" in args.scenarios:
        out += ["| scenario | config | QPS (median, range) | avg latency µs | CoreDNS CPU ms/s | "
                "dnsdist CPU ms/s | dns-guard CPU ms/s | box busy % |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
        for c in CONFIGS:
            rs = results["1"][c]
            out.append(f"| 1 | {c} | {med(rs, 'qps'):,.0f} ({spread(rs, 'qps', ',.0f')}) | {med(rs, 'avg_us'):.0f} | "
                       f"{med(rs, 'coredns_ms'):.0f} | {med(rs, 'dnsdist_ms'):.0f} | {med(rs, 'guard_ms'):.0f} | "
                       f"{med(rs, 'box_pct'):.0f} |")
        g, a, d = (results["1"][c] for c in ("guard", "coredns", "dnsdist"))
        out.append(f"| 1 | **guard/coredns** | **{paired(g, a, 'qps')}** | "
                   f"**{ratio(med(g, 'avg_us'), med(a, 'avg_us'))}** | | | | |")
        out.append(f"| 1 | **dnsdist/coredns** | **{paired(d, a, 'qps')}** | "
                   f"**{ratio(med(d, 'avg_us'), med(a, 'avg_us'))}** | | | | |")
        out.append("")
    out.append("Ratio rows: goodput and QPS ratios are the median (min–max) of per-round ratios; "
               "the p99, latency and CPU ratios are ratios of medians.")
    out.append("")
    out.append(f"{args.rounds} interleaved rounds × {args.duration:g} s per scenario and configuration; "
               f"legitimate client c1 at {args.rate} qps (scenario 1: dnsperf -c 4 -q 200, no rate cap); "
               f"rate limit {args.limit} qps per /32 (dnsdist MaxQPSIPRule, dns-guard ratelimit; "
               f"out of reach in scenario 1). Machine: nproc {meta['nproc']}, kernel {meta['kernel']}, "
               f"{meta['coredns']}, {meta['dnsdist']}, {meta['dnsperf']}, dns-guard XDP {meta['xdp']}; {meta['date']}.")
    return "\n".join(out)


def chart(results: dict, args, path: Path) -> None:
    """Draw with matplotlib; Debian's python3-matplotlib lives in /usr/bin/python3, which may
    not be the interpreter running this script, so fall back to it through a JSON file."""
    try:
        import matplotlib
    except ImportError:
        data = path.with_suffix(".json.tmp")
        data.write_text(json.dumps({"args": {"scenarios": args.scenarios, "rounds": args.rounds},
                                    "results": {k: {c: [dataclasses.asdict(r) for r in rs] for c, rs in v.items()}
                                                for k, v in results.items()}}))
        try:
            subprocess.run([labmod.SCAPY_PYTHON, __file__, "--plot", str(data), "--chart", str(path)],
                           check=True, timeout=120)
        finally:
            data.unlink(missing_ok=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flood_keys = [k for k in args.scenarios if SCENARIOS[k].flood]
    panels = [(k, "success", "legit success %") for k in flood_keys]
    if "1" in args.scenarios:
        panels.append(("1", "qps", "clean QPS"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    colors = {"coredns": "#999999", "dnsdist": "#4c72b0", "guard": "#dd8452"}
    for ax, (k, field, ylabel) in zip(axes[0], panels):
        for i, c in enumerate(CONFIGS):
            vals = [getattr(r, field) for r in results[k][c]]
            m = statistics.median(vals)
            ax.bar(i, m, color=colors[c], yerr=[[m - min(vals)], [max(vals) - m]], capsize=4)
        ax.set_xticks(range(len(CONFIGS)), CONFIGS, fontsize=8)
        ax.set_title(f"{k}: {SCENARIOS[k].label}", fontsize=7)
        ax.set_ylabel(ylabel, fontsize=8)
    fig.suptitle(f"Peers side by side (median, bars = min–max of {args.rounds} rounds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- main


def tool_version(argv: list[str], pattern: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(0) if m else "?"


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few seconds per scenario; assert answers, not timings")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 6: each order twice, smoke 1)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 4, smoke 1)")
    p.add_argument("--rate", type=int, default=500, help="legitimate client's qps under flood (default 500)")
    p.add_argument("--limit", type=int, default=1000, help="per-source rate limit, qps (default 1000)")
    p.add_argument("--scenarios", default="2a,2b,1,2c", help="comma-separated, from 2a,2b,2c,1")
    p.add_argument("--chart", type=Path, default=REPO / "docs" / "peers.png", help="PNG path ('' for none)")
    p.add_argument("--plot", type=Path, help=argparse.SUPPRESS)  # internal: draw --chart from a results file
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.smoke else 6)
    args.duration = args.duration or (1.0 if args.smoke else 4.0)
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    bad = [s for s in args.scenarios if s not in SCENARIOS]
    if bad or args.rounds < 1 or args.duration <= 0 or args.duration > 60 or args.rate < 1 or args.limit < 1:
        p.error(f"bad arguments (unknown scenarios {bad}?); durations are capped at 60 s")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.plot:
        data = json.loads(args.plot.read_text())
        args.scenarios, args.rounds = data["args"]["scenarios"], data["args"]["rounds"]
        results = {k: {c: [Round(**r) for r in rs] for c, rs in v.items()} for k, v in data["results"].items()}
        chart(results, args, args.chart)
        return 0
    if os.geteuid() != 0:
        print("bench/peers.py needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if corednsmod.available():
        print(corednsmod.available(), file=sys.stderr)
        return 2
    meta = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "coredns": "CoreDNS " + tool_version([str(corednsmod.binary()), "-version"], r"\d+\.\d+\.\d+"),
        "dnsdist": tool_version(["dnsdist", "--version"], r"dnsdist \S+"),
        "dnsperf": tool_version(["dnsperf", "-h"], r"dnsperf \S+|Version \S+").replace("Version", "dnsperf"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    # Registered under its own name so Lab builds the resolver the usual way; lab.py is untouched.
    labmod.RESOLVERS["coredns-bench"] = lambda lab, pod, up: corednsmod.CoreDns(
        lab, pod, up, corefile=corefile(lab.workdir))
    results = {k: {c: [] for c in CONFIGS} for k in args.scenarios}
    with Lab(resolver="coredns-bench") as lab:
        lab.add_pod(ATTACKER, ATTACKER_HOSTS, v6=False)
        bench = Bench(lab, args)
        bench.start_dnsdist()
        # Sanity: each configuration answers a clean name and blocks bl.test its own way.
        for c, want in (("coredns", "REFUSED"), ("dnsdist", "NXDOMAIN"), ("guard", "NXDOMAIN")):
            if c == "guard":
                bench.attach_guard(SCENARIOS["2a"])
            server, port = bench.target(c, SCENARIOS["2a"])
            for name, rcode in (("good.test", "NOERROR"), ("x.bl.test", want)):
                r = lab.dig("c2", name, server, "-p", str(port))
                if r.status != rcode:
                    raise LabError(f"{c}: {name} answered {r.status}, want {rcode}\n{r.raw}")
            if c == "guard":
                bench.detach_guard()
        lab.dnsperf("c1", v4("dns"), LEGIT_NAMES, duration=2, qps=500, extra=["-n", "1"])  # warm the cache
        meta["xdp"] = f"{bench.guard_meta} (mode auto)"
        t0 = time.monotonic()
        for rnd in range(args.rounds):
            for key in args.scenarios:
                order = CONFIGS[rnd % 3:] + CONFIGS[:rnd % 3]
                for c in order:
                    results[key][c].append(bench.run_round(c, SCENARIOS[key]))
                print(f"[{time.monotonic() - t0:6.1f}s] round {rnd + 1}/{args.rounds} scenario {key} "
                      f"({' '.join(order)})", file=sys.stderr, flush=True)
    table = report(results, args, meta)
    print(table)
    if args.chart and str(args.chart):
        chart(results, args, args.chart)
        print(f"\nchart: {args.chart}", file=sys.stderr)
    if bench.failures:
        print("\nFAILED:\n  " + "\n  ".join(bench.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
