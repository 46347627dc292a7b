"""Scenario 1: clean traffic through CoreDNS, all cache hits.

Configurations: CoreDNS alone (.53), dnsdist in front of it (:5301, rate limit out of
reach), and CoreDNS with the dns-guard sidecar (.52: XDP on eth0 with its rate limit out of
reach, so its bookkeeping runs but never fires, and ``forward . 127.0.0.1:5353`` to the
proxy). Each measurement is two dnsperf runs from c1 over 100 names that all sit in CoreDNS's
cache: one at max rate (-c 4 -q 200) for QPS, CPU and dnsperf's average latency, which at
saturation is mostly queueing; one at a fixed rate far below it (-v, per-query latency) for
the latency percentiles a client sees.

Goal (issue 5): with-guard / alone QPS at least 0.97.
"""

from __future__ import annotations

import common as C
from lab import LabError

KEY = "1"
TITLE = "Clean cache hits through CoreDNS"
NAMES = [f"q{i:03d}.ok.test" for i in range(100)]  # all fit CoreDNS's cache
CONFIGS = ["coredns", "dnsdist", "guard"]


def tools() -> list[str]:
    return ["dnsperf", "dnsdist"]


def configs(key: str) -> list[str]:
    return CONFIGS


def target(bench, config: str) -> tuple[str, int]:
    if config == "dnsdist":
        return bench.addresses["alone"], 5301
    return bench.addresses["sidecar" if config == "guard" else "alone"], 53


def setup(bench) -> None:
    """Each configuration answers a clean name; with dns-guard, the proxy is in the forward path."""
    for config in CONFIGS:
        with bench.guarded(config == "guard", "clean"):
            server, port = target(bench, config)
            bench.dig_expect(f"scenario 1, {config}", "good.test", server, port, "NOERROR")
            if config == "guard":
                before = _proxy_queries(bench)
                bench.dig_expect("scenario 1, guard", f"sidecar-check.{bench.lab.prefix}.test", server, port, "NOERROR")
                if _proxy_queries(bench) <= before:
                    raise LabError("scenario 1: a cache miss at the sidecar's CoreDNS never reached the "
                                  "dns-guard proxy; the forward path is not what it claims")
    # Warm every configuration's cache (the sidecar block has its own cache).
    lab = bench.lab
    for config in ("coredns", "guard"):
        with bench.guarded(config == "guard", "clean"):
            server, port = target(bench, config)
            lab.dnsperf("c1", server, NAMES, duration=10, qps=1000, extra=["-n", "1", "-p", str(port)])


def _proxy_queries(bench) -> float:
    """The proxy's verdict count (every query it answered has one, logged or not)."""
    total = 0.0
    for line in bench.guard_metrics().splitlines():
        if line.startswith("dns_guard_verdicts_total{"):
            total += float(line.rsplit(None, 1)[1])
    return total


def measure(bench, key: str, config: str, rnd: int) -> dict:
    lab, args = bench.lab, bench.args
    with bench.guarded(config == "guard", "clean"):
        server, port = target(bench, config)
        meter = C.CpuMeter(bench.pids(dnsdist=bench.dnsdist["clean"].pid if config == "dnsdist" else None))
        res = lab.dnsperf("c1", server, NAMES, duration=args.duration, clients=4, outstanding=200,
                          timeout=1, extra=["-p", str(port)])
        r = meter.stop()
        ok = res.rcodes.get("NOERROR", 0)
        r["qps"] = res.qps * ok / res.completed if res.completed else 0.0
        r["avg_us"] = C.average_latency_us(res.raw)
        n = args.queries
        names = (NAMES * (n // len(NAMES) + 1))[:n]
        lat = lab.dnsperf("c1", server, names, duration=n / args.latency_rate * 3 + 10, qps=args.latency_rate,
                          timeout=1, outstanding=20, extra=["-n", "1", "-v", "-p", str(port)])
    us = C.verbose_latencies(lat.raw, "NOERROR")
    if not ok or not us or C.verbose_rcodes(lat.raw) != {"NOERROR"}:
        bench.failures.append(f"1 {config}: clean traffic not answered NOERROR (max rate: {res}; "
                              f"latency run: {lat})")
    r["lost_pct"] = 100.0 * lat.lost / lat.sent if lat.sent else 100.0
    if us:
        for p in (50, 90, 99):
            r[f"p{p}_us"] = C.percentile(us, p)
    return r


# --------------------------------------------------------------------------- report


def table(key: str, res: dict[str, list[dict]]) -> list[str]:
    out = ["| config | QPS at max rate | avg latency at max rate µs | p50 µs | p90 µs | p99 µs | "
           "CoreDNS CPU ms/s | dnsdist CPU ms/s | dns-guard CPU ms/s | box busy % |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in CONFIGS:
        rs = res[c]
        out.append(f"| {c} | {C.cell(rs, 'qps')} | {C.cell(rs, 'avg_us')} | {C.cell(rs, 'p50_us')} | "
                   f"{C.cell(rs, 'p90_us')} | {C.cell(rs, 'p99_us')} | {C.med_cell(rs, 'coredns_ms')} | "
                   f"{C.med_cell(rs, 'dnsdist_ms')} | {C.med_cell(rs, 'guard_ms')} | {C.med_cell(rs, 'box_pct')} |")
    a = res["coredns"]
    for c in ("guard", "dnsdist"):
        out.append(f"| **{c}/coredns** | **{C.summary(C.per_round(res[c], a, 'qps'), '.2f')}** | "
                   f"{C.ratio_of_medians(res[c], a, 'avg_us')} | "
                   f"**{C.summary(C.per_round(res[c], a, 'p50_us', 'diff'), '+.0f')} µs** | | "
                   f"{C.summary(C.per_round(res[c], a, 'p99_us', 'diff'), '+.0f')} µs | | | | |")
    return out


def goals(key: str, res: dict[str, list[dict]]) -> list[tuple[str, str, str | None]]:
    r = C.per_round(res["guard"], res["coredns"], "qps")
    return [("1: with-guard / alone QPS, cache hits ≥ 0.97", C.summary(r, ".2f"),
             C.judge(r, lambda v: v >= 0.97))]


def panels(key: str, res: dict[str, list[dict]]) -> list[dict]:
    return [{"title": "1: clean cache hits, QPS", "ylabel": "QPS", "groups": CONFIGS,
             "series": {"": [C.values(res[c], "qps") for c in CONFIGS]}},
            {"title": "1: latency p50 at fixed rate", "ylabel": "µs", "groups": CONFIGS,
             "series": {"": [C.values(res[c], "p50_us") for c in CONFIGS]}}]
