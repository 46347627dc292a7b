"""Scenario 3: the cache-miss path, CoreDNS -> dns-guard -> upstream against CoreDNS -> upstream.

Every query is a name nobody asked before (``<tag><round><n>.wild.signed.lab``, answered by the
wildcard of integration/hierarchy.py's NSEC3-signed zone), so CoreDNS misses its cache and
forwards each one. The upstream is the hierarchy's Unbound (198.18.0.55, iterator only), which
misses too and asks NSD: the same work for every configuration. (The lab's NSD has response
rate limiting off: at Debian's default of 200 answers/s per kind, all three configurations
measured NSD's limit and Unbound's retries, about 1,300 QPS and tens of ms at p50.) Configurations:

  coredns  CoreDNS (.53) ``forward`` straight to the upstream: no validation anywhere;
  guard    the dns-guard sidecar: CoreDNS (.52) ``forward . 127.0.0.1:5353``, the proxy
           validating (``dnssec: validate``, the private root's anchor) and forwarding to the
           upstream, XDP on eth0;
  guard-off  the same with ``dnssec: off``: what forwarding costs without validation (the
           goals are judged on ``guard``, the default);
  unbound  for reference, Unbound 1.17 as a validating forwarder in the pod (127.0.0.1:5354,
           two threads, ``module-config: "validator iterator"``, the same anchor), CoreDNS (.51)
           forwarding to it.

Each measurement is two dnsperf runs from c1: latency at a fixed rate well below every
configuration's capacity (--miss-rate, -v, per-query µs, p50/p90/p99 of that run; a quarter of
--queries) and throughput at max rate (-c 4 -q 100), NOERROR answers per second.
Added latency and the QPS ratio are taken within each round against ``coredns``.

Goals (issue 5): at most 100 µs added at p50; a QPS ratio of at least 0.9.
"""

from __future__ import annotations

import common as C

KEY = "3"
TITLE = "Cache-miss path"
ZONE = "wild.signed.lab"
ANSWER = "198.19.1.2"  # hierarchy.A["x.wild.signed.lab"]
BOGUS = "www.bogus.lab"  # signed, then corrupted: a validator must say SERVFAIL
CONFIGS = ["coredns", "guard", "guard-off", "unbound"]
TAG = {"coredns": "a", "guard": "g", "guard-off": "o", "unbound": "u"}
PROFILE = {"guard": "validate", "guard-off": "forward"}  # bench.guard_config profiles
NAMES_PER_SECOND = 40_000  # unique names prepared per second of a max-rate run


def tools() -> list[str]:
    import hierarchy
    return ["dnsperf", *hierarchy.TOOLS]


def configs(key: str) -> list[str]:
    return CONFIGS


def server(bench, config: str) -> str:
    return bench.addresses[{"coredns": "alone", "guard": "sidecar", "guard-off": "sidecar",
                            "unbound": "unbound"}[config]]


def upstream_pid(bench) -> int:
    return next(p.pid for label, p in bench.hier.procs if label == "unbound")


def setup(bench) -> None:
    """Answers are right on every path, and the validating paths do validate (bogus -> SERVFAIL)."""
    for config in CONFIGS:
        with bench.guarded(config in PROFILE, PROFILE.get(config, "")):
            s = server(bench, config)

            def check():
                bench.dig_expect(f"scenario 3, {config}", f"check-{TAG[config]}.{ZONE}", s, 53, "NOERROR", [ANSWER])
                # guard-off shares the sidecar CoreDNS, whose cache still holds guard's SERVFAIL
                if config != "guard-off":
                    bench.dig_expect(f"scenario 3, {config}", BOGUS, s, 53, "NOERROR" if config == "coredns" else "SERVFAIL")

            # The Unbound forwarder may still be starting on the first pass.
            if config == "unbound":
                import lab as labmod
                labmod._wait_for(lambda: bench.lab.dig("c2", f"warm.{ZONE}", s, "+timeout=1").status == "NOERROR", 15, 0.3)
            check()


def measure(bench, key: str, config: str, rnd: int) -> dict:
    lab, args = bench.lab, bench.args
    tag = f"{TAG[config]}{rnd}"
    with bench.guarded(config in PROFILE, PROFILE.get(config, "")):
        s = server(bench, config)
        # dns-guard starts afresh for its measurement: let every configuration fetch the
        # DNSKEY/DS chain (and CoreDNS open its upstream sockets) before anything is timed.
        lab.dnsperf("c1", s, [f"w{tag}x{i}.{ZONE}" for i in range(20)], duration=10, qps=100,
                    timeout=2, extra=["-n", "1"])
        n = max(1, args.queries // 4)
        lat = lab.dnsperf("c1", s, [f"l{tag}x{i}.{ZONE}" for i in range(n)], duration=n / args.miss_rate * 3 + 10,
                          qps=args.miss_rate, timeout=2, outstanding=50, extra=["-n", "1", "-v"])
        pool = int(args.duration * NAMES_PER_SECOND)
        meter = C.CpuMeter(bench.pids(unbound_fwd=bench.unbound_fwd.pid if config == "unbound" else None,
                                      upstream=upstream_pid(bench)))
        res = lab.dnsperf("c1", s, [f"t{tag}x{i}.{ZONE}" for i in range(pool)], duration=args.duration,
                          clients=4, outstanding=100, timeout=2)
        r = meter.stop()
    us = C.verbose_latencies(lat.raw, "NOERROR")
    # A SERVFAIL is what a forwarder says when its upstream did not answer in time, which a
    # starved shared machine can cause: it is counted and shown. Anything else, or too many, is wrong.
    rcodes = set(lat.rcodes) | set(res.rcodes)
    if (not us or rcodes - {"NOERROR", "SERVFAIL"} or len(us) < 0.95 * lat.sent
            or res.rcodes.get("NOERROR", 0) < 0.95 * res.completed):
        bench.failures.append(f"3 {config}: unique names not answered NOERROR (latency run: {lat}; "
                              f"max rate: {res})")
    r["servfail_pct"] = 100.0 * (lat.rcodes.get("SERVFAIL", 0) + res.rcodes.get("SERVFAIL", 0)) / max(
        1, lat.sent + res.sent)
    if res.sent > pool:
        bench.failures.append(f"3 {config}: dnsperf sent {res.sent} > {pool} prepared names, so some were "
                              "cache hits; raise NAMES_PER_SECOND")
    for p in (50, 90, 99):
        r[f"p{p}_us"] = C.percentile(us, p) if us else None
    r["lat_lost_pct"] = 100.0 * lat.lost / lat.sent if lat.sent else 100.0
    ok = res.rcodes.get("NOERROR", 0)
    r["qps"] = res.qps * ok / res.completed if res.completed else 0.0
    r["lost_pct"] = 100.0 * (res.sent - ok) / res.sent if res.sent else 100.0
    return r


# --------------------------------------------------------------------------- report


def table(key: str, res: dict[str, list[dict]]) -> list[str]:
    out = ["| config | p50 µs | p90 µs | p99 µs | QPS at max rate | not NOERROR at max rate % | SERVFAIL % | "
           "CoreDNS CPU ms/s | dns-guard CPU ms/s | Unbound forwarder CPU ms/s | upstream Unbound CPU ms/s | box busy % |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in CONFIGS:
        rs = res[c]
        out.append(f"| {c} | {C.cell(rs, 'p50_us')} | {C.cell(rs, 'p90_us')} | {C.cell(rs, 'p99_us')} | "
                   f"{C.cell(rs, 'qps')} | {C.med_cell(rs, 'lost_pct', '.2f')} | {C.med_cell(rs, 'servfail_pct', '.2f')} | "
                   f"{C.med_cell(rs, 'coredns_ms')} | "
                   f"{C.med_cell(rs, 'guard_ms')} | {C.med_cell(rs, 'unbound_fwd_ms')} | "
                   f"{C.med_cell(rs, 'upstream_ms')} | {C.med_cell(rs, 'box_pct')} |")
    out += ["", "| comparison (per round, then median and range) | added µs at p50 | added µs at p99 | QPS ratio |",
            "|---|---:|---:|---:|"]
    a = res["coredns"]
    for c in ("guard", "guard-off", "unbound"):
        out.append(f"| **{c} vs coredns** | **{C.summary(C.per_round(res[c], a, 'p50_us', 'diff'), '+.0f')}** | "
                   f"{C.summary(C.per_round(res[c], a, 'p99_us', 'diff'), '+.0f')} | "
                   f"**{C.summary(C.per_round(res[c], a, 'qps'), '.2f')}** |")
    out.append(f"| guard vs unbound | {C.summary(C.per_round(res['guard'], res['unbound'], 'p50_us', 'diff'), '+.0f')} | "
               f"{C.summary(C.per_round(res['guard'], res['unbound'], 'p99_us', 'diff'), '+.0f')} | "
               f"{C.summary(C.per_round(res['guard'], res['unbound'], 'qps'), '.2f')} |")
    return out


def goals(key: str, res: dict[str, list[dict]]) -> list[tuple[str, str, str | None]]:
    added = C.per_round(res["guard"], res["coredns"], "p50_us", "diff")
    ratio = C.per_round(res["guard"], res["coredns"], "qps")
    return [("3: latency added by dns-guard at p50, cache misses ≤ 100 µs", C.summary(added, "+.0f") + " µs",
             C.judge(added, lambda v: v <= 100)),
            ("3: QPS ratio with / without dns-guard, cache misses ≥ 0.9", C.summary(ratio, ".2f"),
             C.judge(ratio, lambda v: v >= 0.9))]


def panels(key: str, res: dict[str, list[dict]]) -> list[dict]:
    return [{"title": "3: cache misses, QPS", "ylabel": "QPS", "groups": CONFIGS,
             "series": {"": [C.values(res[c], "qps") for c in CONFIGS]}},
            {"title": "3: cache misses, latency p50", "ylabel": "µs", "groups": CONFIGS,
             "series": {"": [C.values(res[c], "p50_us") for c in CONFIGS]}}]

