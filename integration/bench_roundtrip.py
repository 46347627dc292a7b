"""Round trip of a synthesized NXDOMAIN as the client sees it, against the resolver's own answer.

Three cases, measured from c1 with dnsperf in ONE lab, in interleaved rounds (the order
rotates A B C, B C A, C A B, ...) so machine noise lands on every case alike:

  A  a blocklisted name, answered NXDOMAIN by dns-guard's XDP program (XDP_TX);
  B  a name the resolver answers NXDOMAIN itself from local config (dnsmasq
     ``--address=/nx.test/``), so there is no upstream hop: the resolver's own answer;
  C  a clean name answered NOERROR from the resolver's cache, with dns-guard attached
     (the XDP pass path), as a reference.

Latency: dnsperf 2.10 has no latency histogram, so each round runs ``dnsperf -v`` over a
fixed query count (``-n 1`` over a file of N lines) at a rate cap far below saturation,
and the per-query latencies it prints (1 µs resolution, taken by the client itself
between send and receive) are pooled for the median and p99. Throughput: short
``-l``-bounded dnsperf runs at full speed, interleaved the same way, with the resolver's
and dns-guard's CPU time read from /proc/<pid>/stat (dns-guard's userspace writes one
verdict line per blocked query, so XDP answers are not free for it). The XDP program's own
time runs in softirq and belongs to no process; this machine is shared, so it is not shown.

The resolver's query log is off here (per-query logging would bill B for file writes a
production resolver does not do); whether it saw a query is read from dnsmasq's own
counters instead (CHAOS TXT hits.bind + misses.bind), which count every query answered
locally, from cache or forwarded.

    python3 integration/bench_roundtrip.py            # full run (~2 minutes)
    python3 integration/bench_roundtrip.py --smoke    # a few seconds; asserts answers, not timings

Run as root. Traffic stays inside the lab (198.18.0.0/24); the lab is torn down on exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab as labmod  # noqa: E402
from lab import Dnsmasq, Lab, LabError, v4  # noqa: E402

POOL = 100  # distinct names per case; C's all fit dnsmasq's 1000-entry cache
BLOCKLIST = "||bl.test^\n"


@dataclasses.dataclass(frozen=True)
class Case:
    key: str
    label: str
    zone: str  # same length for every case, so queries and replies are the same size
    rcode: str
    resolver_sees: bool

    def names(self) -> list[str]:
        return [f"q{i:04d}.{self.zone}" for i in range(POOL)]


CASES = [
    Case("A", "XDP NXDOMAIN (blocklisted)", "bl.test", "NXDOMAIN", False),
    Case("B", "resolver NXDOMAIN (local config)", "nx.test", "NXDOMAIN", True),
    Case("C", "resolver NOERROR (cache), pass path", "ok.test", "NOERROR", True),
]


class BenchDnsmasq(Dnsmasq):
    """The lab resolver plus a local NXDOMAIN zone, a cache that outlives the run, no query log."""

    name = "dnsmasq"

    def argv(self) -> list[str]:
        argv = [a for a in super().argv() if a != "--log-queries"]
        return argv + ["--address=/nx.test/", "--min-cache-ttl=3600"]


# Registered under its own name so Lab builds the resolver the usual way; lab.py is untouched.
labmod.RESOLVERS["dnsmasq-bench"] = BenchDnsmasq


# --------------------------------------------------------------------------- measurements


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Sample:
    resolver: int
    guard: int

    @classmethod
    def now(cls, resolver_pid: int, guard_pid: int) -> "Sample":
        return cls(cpu_ticks(resolver_pid), cpu_ticks(guard_pid))

    def __add__(self, other: "Sample") -> "Sample":
        return Sample(self.resolver + other.resolver, self.guard + other.guard)

    def __sub__(self, other: "Sample") -> "Sample":
        return Sample(self.resolver - other.resolver, self.guard - other.guard)


@dataclasses.dataclass
class Totals:
    latencies_us: list[float] = dataclasses.field(default_factory=list)
    round_medians: list[float] = dataclasses.field(default_factory=list)
    lat_sent: int = 0
    tput_sent: int = 0
    tput_completed: int = 0
    tput_lost: int = 0
    tput_qps: list[float] = dataclasses.field(default_factory=list)
    cpu: Sample = dataclasses.field(default_factory=lambda: Sample(0, 0))
    resolver_seen_lat: int = 0
    resolver_seen_tput: int = 0


_VERBOSE = re.compile(r"^> (\w+) (\S+) (\w+) ([\d.]+)$", re.M)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported value was measured)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


class Bench:
    def __init__(self, lab: Lab, args):
        self.lab, self.args = lab, args
        self.failures: list[str] = []

    # --- the resolver's own count of queries it handled
    def _chaos(self, name: str) -> int:
        r = self.lab.run("c2", ["dig", f"@{v4('coredns')}", name, "CH", "TXT", "+short", "+tries=1", "+timeout=2"])
        m = re.search(r'"(\d+)"', r.stdout)
        if not m:
            raise LabError(f"dnsmasq did not answer {name}: {r.stdout!r} {r.stderr!r}")
        return int(m.group(1))

    def calibrate(self) -> None:
        """Reading the counters is itself a pair of queries; learn how much they add."""
        self.probe_cost = 0
        a = self._count()
        self.probe_cost = self._count() - a

    def _count(self) -> int:
        return self._chaos("hits.bind") + self._chaos("misses.bind")

    def seen_during(self, fn):
        before = self._count()
        result = fn()
        after = self._count()
        return result, after - before - self.probe_cost

    # --- runs
    def latency_round(self, case: Case, totals: Totals) -> None:
        n = self.args.queries
        names = (case.names() * (n // POOL + 1))[:n]
        bound = n / self.args.rate * 3 + 10
        res, seen = self.seen_during(lambda: self.lab.dnsperf(
            "c1", v4("coredns"), names, duration=bound, qps=self.args.rate, timeout=1,
            outstanding=20, extra=["-n", "1", "-v"]))
        lines = _VERBOSE.findall(res.raw)
        rcodes = {rc for rc, *_ in lines}
        if res.sent != n or res.lost or len(lines) != n or rcodes != {case.rcode}:
            self.failures.append(f"{case.key} latency round: sent {res.sent}/{n}, lost {res.lost}, "
                                 f"{len(lines)} replies, rcodes {res.rcodes}, want all {case.rcode}")
        lat = [float(s) * 1e6 for rc, _, _, s in lines if rc == case.rcode]
        if lat:
            totals.round_medians.append(statistics.median(lat))
        totals.latencies_us += lat
        totals.lat_sent += res.sent
        totals.resolver_seen_lat += seen
        self.check_seen(case, seen, res.sent, exact=True)

    def throughput_round(self, case: Case, totals: Totals, resolver_pid: int, guard_pid: int) -> None:
        def run():
            s0 = Sample.now(resolver_pid, guard_pid)
            res = self.lab.dnsperf("c1", v4("coredns"), case.names(), duration=self.args.duration,
                                   clients=4, timeout=min(1.0, self.args.duration), outstanding=200)
            return res, Sample.now(resolver_pid, guard_pid) - s0

        (res, cpu), seen = self.seen_during(run)
        wrong = {rc: c for rc, c in res.rcodes.items() if rc != case.rcode}
        if wrong or not res.completed:
            self.failures.append(f"{case.key} max-rate round: {res}; want only {case.rcode}")
        totals.tput_sent += res.sent
        totals.tput_completed += res.completed
        totals.tput_lost += res.lost
        totals.tput_qps.append(res.qps)
        totals.cpu += cpu
        totals.resolver_seen_tput += seen
        self.check_seen(case, seen, res.completed, exact=False)

    def check_seen(self, case: Case, seen: int, answered: int, exact: bool) -> None:
        if not case.resolver_sees and seen != 0:
            self.failures.append(f"{case.key}: the resolver handled {seen} queries XDP should have answered")
        if case.resolver_sees and (seen != answered if exact else seen < answered):
            self.failures.append(f"{case.key}: resolver counted {seen} queries, client got {answered} answers")


# --------------------------------------------------------------------------- report


def fmt_ratio(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}" if b else "n/a"


def report(totals: dict[str, Totals], args, meta: dict) -> str:
    def per10k(ticks: int, t: Totals) -> float:
        return ticks * TICK_MS * 10_000 / t.tput_completed if t.tput_completed else float("nan")

    rows = []
    stats = {}
    for case in CASES:
        t = totals[case.key]
        med = statistics.median(t.latencies_us)
        p99 = percentile(t.latencies_us, 99)
        qps = statistics.median(t.tput_qps)
        lost = 100.0 * t.tput_lost / t.tput_sent if t.tput_sent else 0.0
        res_cpu, guard_cpu = per10k(t.cpu.resolver, t), per10k(t.cpu.guard, t)
        stats[case.key] = (med, p99, qps, res_cpu, guard_cpu)
        rows.append(f"| {case.key}: {case.label} | {med:.0f} | {p99:.0f} | "
                    f"{min(t.round_medians):.0f}–{max(t.round_medians):.0f} | {qps:,.0f} | {lost:.2f} | "
                    f"{res_cpu:.1f} | {guard_cpu:.1f} |")
    a, b = stats["A"], stats["B"]
    rows.append(f"| **A/B** | **{fmt_ratio(a[0], b[0])}** | **{fmt_ratio(a[1], b[1])}** | | "
                f"**{fmt_ratio(a[2], b[2])}** | | **{fmt_ratio(a[3], b[3])}** | |")
    head = [
        "| case | median µs | p99 µs | per-round medians µs | QPS at max rate | lost % | "
        "resolver CPU ms/10k q | dns-guard CPU ms/10k q |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = [
        "",
        f"Latency: {args.rounds} interleaved rounds × {args.queries} queries per case at ≤{args.rate} qps "
        f"(dnsperf -v per-query latency, {len(totals['A'].latencies_us)} samples per case). "
        f"Max rate: {args.rounds} interleaved rounds × {args.duration} s per case, dnsperf -c 4 -q 200, "
        "QPS is the median round. CPU columns are from the max-rate rounds "
        f"(tick = {TICK_MS:.0f} ms).",
        f"Resolver queries counted during A: {totals['A'].resolver_seen_lat + totals['A'].resolver_seen_tput} "
        f"(B: {totals['B'].resolver_seen_lat + totals['B'].resolver_seen_tput}, "
        f"C: {totals['C'].resolver_seen_lat + totals['C'].resolver_seen_tput}).",
        f"Machine: nproc {meta['nproc']}, kernel {meta['kernel']}, {meta['dnsperf']}, {meta['dnsmasq']}, "
        f"XDP {meta['xdp']}; {meta['date']}.",
    ]
    return "\n".join(head + rows + notes)


# --------------------------------------------------------------------------- main


def tool_version(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    out = (r.stdout + r.stderr).strip().splitlines()
    for line in out:
        if re.search(r"\d+\.\d+", line) and ("version" in line.lower()):
            return line.strip()
    return out[0] if out else "?"


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few seconds; assert answers, not timings")
    p.add_argument("--rounds", type=int, help="interleaved rounds per case (default 7, smoke 5)")
    p.add_argument("--queries", type=int, help="queries per latency round (default 4000, smoke 200)")
    p.add_argument("--rate", type=int, default=2000, help="qps cap of latency rounds (default 2000)")
    p.add_argument("--duration", type=float, help="seconds per max-rate round (default 2, smoke 0.3)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (5 if args.smoke else 7)
    args.queries = args.queries or (200 if args.smoke else 4000)
    args.duration = args.duration or (0.3 if args.smoke else 2.0)
    if args.rounds < 1 or args.queries < 1 or args.rate < 1 or args.duration <= 0:
        p.error("--rounds, --queries, --rate and --duration must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_roundtrip.py needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    # SIGTERM (a CI timeout) must still run the lab's teardown.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    meta = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "dnsperf": tool_version(["dnsperf", "-h"]).replace("Version", "dnsperf"),
        "dnsmasq": " ".join(tool_version(["dnsmasq", "--version"]).split()[:3]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    with Lab(resolver="dnsmasq-bench") as lab:
        guard = lab.start_guard({"xdp": {"action": "nxdomain", "mode": "auto"}}, {"block.txt": BLOCKLIST})
        m = re.search(r"dns-guard ready: XDP (\w+)", guard.stderr())
        meta["xdp"] = f"{m.group(1) if m else '?'} (mode auto)"
        resolver_pid, guard_pid = lab.resolver.proc.pid, guard.proc.pid
        for pid, comm in ((resolver_pid, "dnsmasq"), (guard_pid, "dns-guard")):
            if Path(f"/proc/{pid}/comm").read_text().strip() != comm:
                raise LabError(f"pid {pid} is not {comm}; CPU accounting would be wrong")

        bench = Bench(lab, args)
        bench.calibrate()
        # Sanity and cache warm-up: one dig per case, then every C name once.
        for case in CASES:
            r = lab.dig("c1", case.names()[0])
            if r.status != case.rcode:
                raise LabError(f"{case.key}: {case.names()[0]} answered {r.status}, want {case.rcode}\n{r.raw}")
        lab.dnsperf("c1", v4("coredns"), CASES[2].names(), duration=10, qps=2000, extra=["-n", "1"])

        totals = {c.key: Totals() for c in CASES}
        t0 = time.monotonic()
        for phase in ("latency", "throughput"):
            for r in range(args.rounds):
                order = CASES[r % 3:] + CASES[:r % 3]
                for case in order:
                    if phase == "latency":
                        bench.latency_round(case, totals[case.key])
                    else:
                        bench.throughput_round(case, totals[case.key], resolver_pid, guard_pid)
                print(f"[{time.monotonic() - t0:5.1f}s] {phase} round {r + 1}/{args.rounds} "
                      f"({' '.join(c.key for c in order)})", file=sys.stderr, flush=True)

        if not guard.alive():
            bench.failures.append(f"dns-guard died: {guard.stderr_tail()}")
        if not guard.wait_verdict(timeout=5, qname=CASES[0].names()[0], layer="xdp", verdict="block"):
            bench.failures.append("no XDP block verdict logged for case A's names")

    print(report(totals, args, meta))
    if bench.failures:
        print("\nFAILED:\n  " + "\n  ".join(bench.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
