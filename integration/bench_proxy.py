"""Overhead of the validating forwarder against a direct query to the same upstream.

Five cases, measured from c1 with dnsperf in ONE lab + hierarchy (hierarchy.py), in
interleaved rounds (the order rotates each round) so machine noise lands on every case alike.
The upstream is the hierarchy's Unbound (198.18.0.55, one thread) and every name is answered
from its cache (warmed first), so the upstream is not the bottleneck:

  A  dnsperf -> Unbound direct, unsigned-zone names          (the reference)
  B  dnsperf -> dns-guard proxy, dnssec: validate, unsigned names (insecure: proof of no DS)
  C  dnsperf -> dns-guard proxy, dnssec: validate, signed-zone names (secure: full validation)
  D  dnsperf -> dns-guard proxy, dnssec: off, unsigned names
  E  dnsperf -> Unbound direct, signed-zone names            (C's reference)

Names are wildcard answers (qNNN.wild.<zone>), the same shape in both zones. The proxy asks
Unbound with DO and CD when validating, so B and C carry RRSIGs / proofs upstream that A and E
do not; that is part of the price of validation and is counted in it.

Latency: dnsperf 2.10 has no histogram, so each round runs ``dnsperf -v`` over a fixed query
count at a rate cap far below saturation and the per-query latencies it prints (1 µs
resolution) are pooled for median and p99. Throughput: ``-l``-bounded dnsperf runs at full
speed (-c 4 -q 200), median round QPS. On a 2-vCPU machine dnsperf, Unbound and dns-guard
share the CPUs, so the max-rate ratio measures CPU cost per query as much as anything.

    python3 integration/bench_proxy.py            # full run (~2 minutes)
    python3 integration/bench_proxy.py --smoke    # a few seconds; asserts answers, never timings
    python3 integration/bench_proxy.py --alt exp=/tmp/dns-guard   # + case F: D with another build

``--relay`` adds cases R and S: a bare UDP relay (guard/examples/udp_relay.rs: no DNS, one
thread, blocking sockets) in the proxy's place, with a fresh upstream socket per query (R, as
the proxy) or one shared socket (S). Latency only. R vs A is what one more hop costs on the
machine; D vs R is what the proxy adds on top of that floor.

``--dnsdist`` adds case P: dnsdist (Debian; a C++ DNS proxy with no packet cache unless one is
configured) forwarding to the same Unbound, for what a mature forwarder's hop costs here.

``--alt LABEL=BINARY`` (repeatable) adds a case per build, set up as D (dnssec off, unsigned
names) on its own port, in the same interleaved rounds: an A/B of a proxy change in one run.

Run as root. Traffic stays inside the lab (198.18.0.0/24); the lab is torn down on exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hierarchy as H  # noqa: E402
from lab import Lab, LabError, _wait_for  # noqa: E402

POOL = 100
PORT_VALIDATE, PORT_OFF = H.PROXY_PORT, H.PROXY_PORT + 1


@dataclasses.dataclass(frozen=True)
class Case:
    key: str
    label: str
    zone: str
    port: int | None  # None: Unbound direct on 53
    latency_only: bool = False

    @property
    def server(self) -> str:
        return H.REC if self.port is None else H.PROXY_ADDR

    def names(self) -> list[str]:
        return [f"q{i:03d}.wild.{self.zone}" for i in range(POOL)]

    def want(self) -> str:
        return H.A[f"x.wild.{self.zone}"]


CASES = [
    Case("A", "Unbound direct, unsigned names", "unsigned.lab", None),
    Case("B", "proxy, validate, unsigned names", "unsigned.lab", PORT_VALIDATE),
    Case("C", "proxy, validate, signed names", "signed.lab", PORT_VALIDATE),
    Case("D", "proxy, dnssec off, unsigned names", "unsigned.lab", PORT_OFF),
    Case("E", "Unbound direct, signed names", "signed.lab", None),
]

_VERBOSE = re.compile(r"^> (\w+) (\S+) (\w+) ([\d.]+)$", re.M)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported value was measured)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


@dataclasses.dataclass
class Totals:
    latencies_us: list[float] = dataclasses.field(default_factory=list)
    round_medians: list[float] = dataclasses.field(default_factory=list)
    tput_qps: list[float] = dataclasses.field(default_factory=list)
    tput_sent: int = 0
    tput_lost: int = 0


class Bench:
    def __init__(self, lab: Lab, args):
        self.lab, self.args = lab, args
        self.failures: list[str] = []

    def extra(self, case: Case) -> list[str]:
        return ["-p", str(case.port)] if case.port else []

    def check_answer(self, case: Case) -> None:
        """Correctness, whatever the timings: the right address, AD only when validated secure."""
        r = self.lab.dig("c1", case.names()[0], case.server, "-p", str(case.port or 53), "+dnssec", "+adflag")
        want_ad = case.key == "C"
        if r.status != "NOERROR" or r.addresses != [case.want()] or (case.port and r.ad != want_ad):
            self.failures.append(f"{case.key}: {case.names()[0]} -> {r.status} {r.addresses} ad={r.ad}, "
                                 f"want {case.want()} ad={want_ad}\n{r.raw}")

    def latency_round(self, case: Case, t: Totals) -> None:
        n = self.args.queries
        names = (case.names() * (n // POOL + 1))[:n]
        res = self.lab.dnsperf("c1", case.server, names, duration=n / self.args.rate * 3 + 10,
                               qps=self.args.rate, timeout=1, outstanding=20,
                               extra=["-n", "1", "-v", *self.extra(case)])
        lines = _VERBOSE.findall(res.raw)
        if res.sent != n or res.lost or len(lines) != n or {rc for rc, *_ in lines} != {"NOERROR"}:
            self.failures.append(f"{case.key} latency round: sent {res.sent}/{n}, lost {res.lost}, "
                                 f"{len(lines)} replies, rcodes {res.rcodes}")
        lat = [float(s) * 1e6 for rc, *_, s in lines if rc == "NOERROR"]
        if lat:
            t.round_medians.append(statistics.median(lat))
        t.latencies_us += lat

    def throughput_round(self, case: Case, t: Totals) -> None:
        res = self.lab.dnsperf("c1", case.server, case.names(), duration=self.args.duration, clients=4,
                               timeout=min(1.0, self.args.duration), outstanding=200, extra=self.extra(case))
        if set(res.rcodes) - {"NOERROR"} or not res.completed:
            self.failures.append(f"{case.key} max-rate round: {res}; want only NOERROR")
        t.tput_qps.append(res.qps)
        t.tput_sent += res.sent
        t.tput_lost += res.lost


RELAY_CASES = [
    Case("R", "bare UDP relay, fresh upstream socket per query", "unsigned.lab", PORT_OFF + 20, True),
    Case("S", "bare UDP relay, one upstream socket", "unsigned.lab", PORT_OFF + 21, True),
]
RELAY_BIN = Path(__file__).resolve().parent.parent / "target" / "release" / "examples" / "udp_relay"


DNSDIST_CASE = Case("P", "dnsdist forwarding (no packet cache)", "unsigned.lab", PORT_OFF + 30)


def extra_cases(args) -> list[Case]:
    return (RELAY_CASES if args.relay else []) + ([DNSDIST_CASE] if args.dnsdist else []) + alt_cases(args)


def dnsdist_conf(listen: str, upstream: str) -> str:
    return f"""-- integration/bench_proxy.py --dnsdist: a plain forwarder, as a peer of the proxy
setSecurityPollSuffix("")  -- never poll secpoll.powerdns.com: nothing leaves the lab
setLocal("{listen}")
setACL({{"198.18.0.0/15"}})
local unbound = newServer({{address="{upstream}", name="unbound", checkName="x.wild.unsigned.lab."}})
-- Always up: this measures forwarding cost. With dnsdist's default health check (one probe
-- a second, one failure marks it down), a probe lost in Unbound's full socket queue during
-- a max-rate round takes the only server out of rotation and every query of that round with it.
unbound:setUp()
"""


def alt_cases(args) -> list[Case]:
    """Case F, G, ...: D (dnssec off, unsigned names) served by another dns-guard build."""
    return [Case(chr(ord("F") + i), f"proxy `{label}`, dnssec off, unsigned names", "unsigned.lab",
                 PORT_OFF + 1 + i) for i, (label, _) in enumerate(args.alt)]


def report(totals: dict[str, Totals], args, meta: dict) -> str:
    st = {}
    rows = []
    cases = CASES + extra_cases(args)
    for c in cases:
        t = totals[c.key]
        med, p99 = statistics.median(t.latencies_us), percentile(t.latencies_us, 99)
        qps = statistics.median(t.tput_qps) if t.tput_qps else None
        st[c.key] = (med, p99, qps)
        lost = f"{100.0 * t.tput_lost / t.tput_sent:.2f}" if t.tput_sent else "–"
        rows.append(f"| {c.key}: {c.label} | {med:.0f} | {p99:.0f} | {min(t.round_medians):.0f}–"
                    f"{max(t.round_medians):.0f} | {'–' if qps is None else f'{qps:,.0f}'} | {lost} |")
    head = ["| case | median µs | p99 µs | per-round medians µs | QPS at max rate | lost % |",
            "|---|---:|---:|---:|---:|---:|"]

    def vs(x: str, ref: str) -> str:
        (m, p, q), (rm, rp, rq) = st[x], st[ref]
        # Within each round first (the cases ran back to back), then the median and range:
        # a noisy round then moves one sample, not every case's pooled median differently.
        paired = sorted(a - b for a, b in zip(totals[x].round_medians, totals[ref].round_medians))
        return (f"| {x} vs {ref} | {m - rm:+.0f} | {statistics.median(paired):+.0f} ({paired[0]:+.0f}–"
                f"{paired[-1]:+.0f}) | {p - rp:+.0f} | {f'{q / rq:.2f}' if q and rq else '–'} |")

    cmp = ["", "| comparison | added µs at p50, pooled | added µs at p50, per round: median (range) | "
           "added µs at p99 | QPS ratio |", "|---|---:|---:|---:|---:|",
           vs("B", "A"), vs("D", "A"), vs("C", "E"), vs("C", "B"), vs("B", "D")]
    if args.relay:
        cmp += [vs("R", "A"), vs("S", "A"), vs("D", "R"), vs("B", "R")]
    if args.dnsdist:
        cmp += [vs("P", "A"), vs("D", "P")]
    cmp += [vs(c.key, "D") for c in alt_cases(args)]
    notes = [
        "",
        f"Latency: {args.rounds} interleaved rounds × {args.queries} queries per case at ≤{args.rate} qps "
        f"(dnsperf -v, {len(totals['A'].latencies_us)} samples per case). Max rate: {args.rounds} "
        f"interleaved rounds × {args.duration} s per case, dnsperf -c 4 -q 200; QPS is the median round.",
        f"Machine: nproc {meta['nproc']}, kernel {meta['kernel']}, {meta['dnsperf']}, {meta['unbound']}; "
        f"{meta['date']}.",
    ]
    return "\n".join(head + rows + cmp + notes)


def tool_version(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    for line in (r.stdout + r.stderr).splitlines():
        if re.search(r"\d+\.\d+", line) and "version" in line.lower():
            return line.strip()
    return "?"


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few seconds; assert answers, never timings")
    p.add_argument("--rounds", type=int, help="interleaved rounds per case (default 5, smoke 1)")
    p.add_argument("--queries", type=int, help="queries per latency round (default 3000, smoke 100)")
    p.add_argument("--rate", type=int, default=2000, help="qps cap of latency rounds (default 2000)")
    p.add_argument("--duration", type=float, help="seconds per max-rate round (default 2, smoke 0.3)")
    p.add_argument("--relay", action="store_true",
                   help="add cases R and S: a bare UDP relay in the proxy's place (latency only)")
    p.add_argument("--dnsdist", action="store_true",
                   help="add case P: dnsdist forwarding to the same upstream (a peer forwarder)")
    p.add_argument("--alt", action="append", default=[], metavar="LABEL=BINARY",
                   help="add a case: D (dnssec off) served by this dns-guard build (repeatable)")
    args = p.parse_args(argv)
    try:
        args.alt = [(label, Path(path)) for label, path in (a.split("=", 1) for a in args.alt)]
    except ValueError:
        p.error("--alt takes LABEL=BINARY")
    for label, path in args.alt:
        if not os.access(path, os.X_OK):
            p.error(f"--alt {label}: {path} is not an executable")
    args.rounds = args.rounds or (1 if args.smoke else 5)
    args.queries = args.queries or (100 if args.smoke else 3000)
    args.duration = args.duration or (0.3 if args.smoke else 2.0)
    if args.rounds < 1 or args.queries < 1 or args.rate < 1 or args.duration <= 0:
        p.error("--rounds, --queries, --rate and --duration must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_proxy.py needs root (network namespaces)", file=sys.stderr)
        return 2
    missing = H.missing_tools() + (["dnsdist"] if args.dnsdist and not shutil.which("dnsdist") else [])
    if missing:
        print(f"bench_proxy.py needs {' '.join(missing)} (scripts/setup.sh)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a CI timeout still tears down
    meta = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "dnsperf": tool_version(["dnsperf", "-h"]).replace("Version", "dnsperf"),
        "unbound": tool_version(["unbound", "-V"]).replace("Version", "Unbound"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    with Lab() as lab, H.Hierarchy(lab) as h:
        guards = []
        cases = CASES + extra_cases(args)
        def answering(c: Case, what: str) -> None:
            ok = _wait_for(lambda: lab.dig("c1", c.names()[0], c.server, "-p", str(c.port),
                                           "+timeout=1").status == "NOERROR", 15, 0.3)
            if not ok:
                raise LabError(f"{what} on :{c.port} never answered")

        if args.relay:
            subprocess.run(["cargo", "build", "--release", "-q", "--example", "udp_relay"],
                           cwd=RELAY_BIN.parents[3], check=True)
            for c in RELAY_CASES:
                lab.spawn("coredns", [str(RELAY_BIN), f"{H.PROXY_ADDR}:{c.port}", f"{H.REC}:53",
                                  "fresh" if c.key == "R" else "shared"], f"relay-{c.key}")
                answering(c, "udp_relay")
        if args.dnsdist:
            conf = lab.workdir / "dnsdist.conf"
            conf.write_text(dnsdist_conf(f"{H.PROXY_ADDR}:{DNSDIST_CASE.port}", f"{H.REC}:53"))
            lab.spawn("coredns", ["dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)], "dnsdist")
            answering(DNSDIST_CASE, "dnsdist")
        builds = [(PORT_VALIDATE, "validate", lab.binary), (PORT_OFF, "off", lab.binary)]
        builds += [(c.port, "off", path) for c, (_, path) in zip(alt_cases(args), args.alt)]
        for port, mode, binary in builds:
            cfg = h.proxy_config(listen=f"{H.PROXY_ADDR}:{port}", dnssec=mode, anchor="dnskey" if mode == "validate" else None)
            cfg["log"] = {"allow_sample": 0}  # the production default: allows are counted, not logged
            cfg["metrics"] = {"listen": "127.0.0.1:0"}
            g = lab.start_guard(cfg, binary=binary)
            if not g.proxy_listening(5.0):
                raise LabError(f"proxy on :{port} did not start:\n{g.stderr_tail()}")
            guards.append(g)
        # Warm Unbound's cache (with DO, so the RRSIGs are cached too) and the proxy's DS/DNSKEY cache.
        for zone in ("unsigned.lab", "signed.lab"):
            names = [f"q{i:03d}.wild.{zone}" for i in range(POOL)]
            lab.dnsperf("c1", H.REC, names, duration=10, qps=1000, extra=["-n", "1", "-D"])
        bench = Bench(lab, args)
        for c in cases:
            bench.check_answer(c)
        totals = {c.key: Totals() for c in cases}
        t0 = time.monotonic()
        for phase in ("latency", "throughput"):
            for r in range(args.rounds):
                order = cases[r % len(cases):] + cases[:r % len(cases)]
                for c in order:
                    if phase == "throughput" and c.latency_only:
                        continue
                    (bench.latency_round if phase == "latency" else bench.throughput_round)(c, totals[c.key])
                print(f"[{time.monotonic() - t0:5.1f}s] {phase} round {r + 1}/{args.rounds} "
                      f"({' '.join(c.key for c in order)})", file=sys.stderr, flush=True)
        for c in cases:
            bench.check_answer(c)
        for g in guards:
            if not g.alive():
                bench.failures.append(f"dns-guard died: {g.stderr_tail()}")
        print(report(totals, args, meta))
        if bench.failures:
            print("\nFAILURES:\n" + "\n".join(bench.failures[:20]), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
