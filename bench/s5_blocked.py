"""Scenario 5: time to a blocked answer, a synthesized NXDOMAIN against CoreDNS answering it itself.

The same names (``qNNNN.bl.test``) are sent to the same address, the pod's .50, whose CoreDNS
server block answers NXDOMAIN for bl.test from ``template IN ANY bl.test { rcode NXDOMAIN }``:

  coredns  no XDP program: CoreDNS's template answers;
  guard    the dns-guard sidecar attached with ``||bl.test^``: the XDP program answers NXDOMAIN
           from the kernel (XDP_TX) and CoreDNS never sees the query.

Each measurement: latency at a fixed rate (dnsperf -v, per-query µs), then max rate (-c 4
-q 200) with CPU of CoreDNS and dns-guard's userspace. CoreDNS's own request counter for the
.50 server block shows which queries it handled (none, with dns-guard).
"""

from __future__ import annotations

import common as C

KEY = "5"
TITLE = "Time to a blocked answer"
NAMES = [f"q{i:04d}.bl.test" for i in range(100)]
CONFIGS = ["coredns", "guard"]


def tools() -> list[str]:
    return ["dnsperf"]


def configs(key: str) -> list[str]:
    return CONFIGS


def setup(bench) -> None:
    s = bench.addresses["template"]
    for config in CONFIGS:
        with bench.guarded(config == "guard", "clean"):
            before = bench.coredns_requests(s)
            bench.dig_expect(f"scenario 5, {config}", NAMES[0], s, 53, "NXDOMAIN")
            bench.dig_expect(f"scenario 5, {config}", "good.test", s, 53, "NOERROR")
            seen = bench.coredns_requests(s) - before
            want = 1 if config == "guard" else 2  # with dns-guard only good.test reaches CoreDNS
            if seen != want:
                bench.failures.append(f"5 {config}: CoreDNS counted {seen:.0f} requests for 2 queries, want {want}")


def measure(bench, key: str, config: str, rnd: int) -> dict:
    lab, args = bench.lab, bench.args
    s = bench.addresses["template"]
    with bench.guarded(config == "guard", "clean"):
        before = bench.coredns_requests(s)
        n = args.queries
        lat = lab.dnsperf("c1", s, (NAMES * (n // len(NAMES) + 1))[:n], duration=n / args.latency_rate * 3 + 10,
                          qps=args.latency_rate, timeout=1, outstanding=20, extra=["-n", "1", "-v"])
        meter = C.CpuMeter(bench.pids())
        res = lab.dnsperf("c1", s, NAMES, duration=args.duration, clients=4, outstanding=200, timeout=1)
        r = meter.stop()
        r["coredns_saw"] = bench.coredns_requests(s) - before
    us = C.verbose_latencies(lat.raw, "NXDOMAIN")
    if not us or C.verbose_rcodes(lat.raw) != {"NXDOMAIN"} or set(res.rcodes) - {"NXDOMAIN"}:
        bench.failures.append(f"5 {config}: blocked names not all answered NXDOMAIN (latency run: {lat}; "
                              f"max rate: {res})")
    if config == "guard" and r["coredns_saw"]:
        bench.failures.append(f"5 guard: CoreDNS handled {r['coredns_saw']:.0f} queries XDP should have answered")
    for p in (50, 90, 99):
        r[f"p{p}_us"] = C.percentile(us, p) if us else None
    r["qps"] = res.qps * res.rcodes.get("NXDOMAIN", 0) / res.completed if res.completed else 0.0
    r["answered"] = res.completed
    return r


# --------------------------------------------------------------------------- report


def table(key: str, res: dict[str, list[dict]]) -> list[str]:
    out = ["| config | p50 µs | p90 µs | p99 µs | NXDOMAIN/s at max rate | CoreDNS CPU ms/s | "
           "dns-guard CPU ms/s | box busy % | queries CoreDNS handled |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in CONFIGS:
        rs = res[c]
        out.append(f"| {c} | {C.cell(rs, 'p50_us')} | {C.cell(rs, 'p90_us')} | {C.cell(rs, 'p99_us')} | "
                   f"{C.cell(rs, 'qps')} | {C.med_cell(rs, 'coredns_ms')} | {C.med_cell(rs, 'guard_ms')} | "
                   f"{C.med_cell(rs, 'box_pct')} | {sum(C.values(rs, 'coredns_saw')):,.0f} |")
    g, a = res["guard"], res["coredns"]
    out.append(f"| **guard/coredns** | **{C.summary(C.per_round(g, a, 'p50_us'), '.2f')}** | "
               f"{C.summary(C.per_round(g, a, 'p90_us'), '.2f')} | {C.summary(C.per_round(g, a, 'p99_us'), '.2f')} | "
               f"**{C.summary(C.per_round(g, a, 'qps'), '.2f')}** | {C.ratio_of_medians(g, a, 'coredns_ms')} | | | |")
    return out


def goals(key: str, res: dict[str, list[dict]]) -> list[tuple[str, str, str | None]]:
    r = C.per_round(res["guard"], res["coredns"], "p50_us")
    return [("5: time to a blocked answer, XDP / CoreDNS at p50 (no number set; lower is better)",
             C.summary(r, ".2f"), None)]


def panels(key: str, res: dict[str, list[dict]]) -> list[dict]:
    return [{"title": "5: blocked answer, latency p50", "ylabel": "µs", "groups": CONFIGS,
             "series": {"": [C.values(res[c], "p50_us") for c in CONFIGS]}}]
