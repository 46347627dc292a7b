"""Scenario 2: a legitimate client at a fixed rate while an attacker pod floods the server.

  2a  blocklisted names (random labels under bl.test), from one source;
  2b  random names under random .test domains (cache misses), one source, over the rate limit;
  2c  random subdomains of victim.test (water torture), spread over 64 sources. At the rate
      one Python sender reaches here each 2c source still sends over the per-source limit,
      so 2c shows less than a real water-torture attack (which arrives through many resolvers).
      victim.test answers NXDOMAIN for names it does not have, as a real zone does (the lab
      upstream's catch-all for .test would otherwise make every random name exist).

Configurations, with the same limits everywhere:

  coredns  CoreDNS alone with ``acl bl.test { block }`` (REFUSED); it has no rate limit in-tree.
  dnsdist  dnsdist in front of CoreDNS: MaxQPSIPRule(limit, 32, 64) -> DropAction, then
           SuffixMatchNodeRule(bl.test) -> RCodeAction(NXDOMAIN).
  guard    the dns-guard sidecar: XDP on eth0 (blocklist ``||bl.test^`` -> NXDOMAIN, rate limit
           per /32 -> drop) and CoreDNS forwarding its misses to the proxy, whose
           random-subdomain defence runs at its defaults (proxy.random_subdomain).

Measured: the legitimate client's (c1, dnsperf -v) success (answered NOERROR within 1 s), its
p99 (a lost query counts as the 1 s timeout) and answers per second; CPU of CoreDNS, dnsdist and
dns-guard's userspace from /proc/<pid>/stat, and the whole box from /proc/stat (XDP runs in
softirq and belongs to no process); the attacker's send rate.

Goals (issue 5): with dns-guard, legitimate success at least 99 % under the largest flood this
machine can generate; dns-guard's legitimate goodput at least 5x that of CoreDNS alone.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import common as C
import lab as labmod

KEYS = ["2a", "2b", "2c"]
TITLE = "Flood"
FLOOD = Path(__file__).resolve().parent / "flood.py"
LEGIT_NAMES = [f"q{i:03d}.ok.test" for i in range(100)]  # all fit CoreDNS's cache
CONFIGS = ["coredns", "dnsdist", "guard"]
VICTIM = "victim.test"  # flood.py's zone for --kind victim
ATTACKER = "att"  # the attacker pod, added to the lab by peers.py
ATTACKER_HOSTS = list(range(100, 164))  # 64 sources for 2c; 2a/2b use the first only
KIND = {"2a": ("blocked", 1, "flood of blocklisted names, one source"),
        "2b": ("random", 1, "flood of random names (cache misses), one source"),
        "2c": ("victim", 64, "random subdomains of one victim domain, 64 sources")}


def tools() -> list[str]:
    return ["dnsperf", "dnsdist"]


def configs(key: str) -> list[str]:
    return CONFIGS


def target(bench, config: str) -> tuple[str, int]:
    if config == "dnsdist":
        return bench.addresses["alone"], 5300
    return bench.addresses["sidecar" if config == "guard" else "alone"], 53


def setup(bench) -> None:
    """Each configuration answers a clean name and blocks bl.test its own way."""
    lab = bench.lab
    up = lab.upstream
    labmod._stop_pid(up.proc)
    up.records.append(f"--address=/{VICTIM}/")  # NXDOMAIN under the victim zone
    up.start()
    if not labmod._wait_for(lambda: lab.dig("c1", f"x.{VICTIM}", labmod.v4("up"), "+timeout=1").status == "NXDOMAIN", 10, 0.2):
        raise labmod.LabError(f"the lab upstream does not answer NXDOMAIN under {VICTIM}")
    for config, want in (("coredns", "REFUSED"), ("dnsdist", "NXDOMAIN"), ("guard", "NXDOMAIN")):
        with bench.guarded(config == "guard", "flood"):
            server, port = target(bench, config)
            bench.dig_expect(f"scenario 2, {config}", "good.test", server, port, "NOERROR")
            bench.dig_expect(f"scenario 2, {config}", "x.bl.test", server, port, want)
    for config in ("coredns", "guard"):  # warm both CoreDNS server blocks' caches
        with bench.guarded(config == "guard", "flood"):
            server, port = target(bench, config)
            bench.lab.dnsperf("c1", server, LEGIT_NAMES, duration=5, qps=500, extra=["-n", "1", "-p", str(port)])


def measure(bench, key: str, config: str, rnd: int) -> dict:
    lab, args = bench.lab, bench.args
    kind, sources, _ = KIND[key]
    d = args.duration
    with bench.guarded(config == "guard", "flood"):
        server, port = target(bench, config)
        srcs = [f"{labmod.V4_PREFIX}{h}" for h in ATTACKER_HOSTS[:sources]]
        argv = [labmod.SCAPY_PYTHON, str(FLOOD), "--dst", server, "--port", str(port),
                "--kind", kind, "--duration", str(d + 1.0), "--max", str(int(400_000 * (d + 1)))]
        for s in srcs:
            argv += ["--src", s]
        flood = subprocess.Popen(lab._nsenter(ATTACKER, argv), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        lab.procs.append(("flood", flood))
        time.sleep(0.5)  # let the flood reach steady state before the legitimate client starts
        meter = C.CpuMeter(bench.pids(dnsdist=bench.dnsdist["flood"].pid if config == "dnsdist" else None))
        res = lab.dnsperf("c1", server, LEGIT_NAMES, duration=d, qps=args.rate, timeout=1,
                          extra=["-p", str(port), "-v"])
        r = meter.stop()
        out, err = flood.communicate(timeout=d + 30)
    ok = res.rcodes.get("NOERROR", 0)
    r["success"] = 100.0 * ok / res.sent if res.sent else 0.0
    r["qps"] = res.qps * ok / res.completed if res.completed else 0.0
    lat = [us / 1e3 for us in C.verbose_latencies(res.raw, "NOERROR")]
    lat += [1000.0] * (res.sent - len(lat))
    r["p99_ms"] = C.percentile(lat, 99) if lat else 1000.0
    try:
        r["flood_pps"] = json.loads(out)["pps"]
    except (ValueError, KeyError):
        r["flood_pps"] = 0.0
        bench.failures.append(f"{key} {config}: flooder said {out!r} {err[-500:]!r}")
    if not r["flood_pps"]:
        bench.failures.append(f"{key} {config}: the attacker sent nothing")
    # Under a flood, no answers at all is a result, not a harness failure.
    return r


# --------------------------------------------------------------------------- report


def table(key: str, res: dict[str, list[dict]]) -> list[str]:
    out = ["| config | legit success % | legit p99 ms | legit answers/s | CoreDNS CPU ms/s | "
           "dnsdist CPU ms/s | dns-guard CPU ms/s | box busy % | attacker pps |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in CONFIGS:
        rs = res[c]
        out.append(f"| {c} | {C.cell(rs, 'success', '.1f')} | {C.cell(rs, 'p99_ms', '.1f')} | {C.cell(rs, 'qps')} | "
                   f"{C.med_cell(rs, 'coredns_ms')} | {C.med_cell(rs, 'dnsdist_ms')} | {C.med_cell(rs, 'guard_ms')} | "
                   f"{C.med_cell(rs, 'box_pct')} | {C.med_cell(rs, 'flood_pps', ',.0f')} |")
    g = res["guard"]
    for peer in ("coredns", "dnsdist"):
        p = res[peer]
        out.append(f"| **guard/{peer}** | **{C.summary(C.per_round(g, p, 'qps'), '.2f')}× goodput** | "
                   f"{C.ratio_of_medians(g, p, 'p99_ms')} | | {C.ratio_of_medians(g, p, 'coredns_ms')} | | | | |")
    return out


def goals(key: str, res: dict[str, list[dict]]) -> list[tuple[str, str, str | None]]:
    s = C.values(res["guard"], "success")
    r = C.per_round(res["guard"], res["coredns"], "qps")
    return [(f"{key}: legit success with dns-guard ≥ 99 %", C.summary(s, ".1f") + " %",
             C.judge(s, lambda v: v >= 99.0)),
            (f"{key}: dns-guard goodput ≥ 5× CoreDNS alone", C.summary(r, ".2f") + "×",
             C.judge(r, lambda v: v >= 5.0))]


def panels(key: str, res: dict[str, list[dict]]) -> list[dict]:
    return [{"title": f"{key}: {KIND[key][2]}", "ylabel": "legit success %", "groups": CONFIGS,
             "series": {"": [C.values(res[c], "success") for c in CONFIGS]}}]
