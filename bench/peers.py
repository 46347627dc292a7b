"""Issue 5's benchmarks in one run: dns-guard side by side with what a cluster admin would run instead.

One lab, one run, every scenario for every configuration, in interleaved rounds (the order
of configurations rotates every round) so machine drift lands on every configuration alike.
The report is medians with their spread over the rounds, and ratios taken inside each round;
absolute numbers are beside them only for context. Scenarios, numbered as in issue 5:

  1   clean cache hits through CoreDNS at max rate: QPS, latency percentiles (s1_clean.py)
  2a  flood of blocklisted names, 2b random names over the rate limit, 2c random subdomains of
      one victim: legitimate success, p99, CPU (s2_floods.py)
  3   the cache-miss path CoreDNS -> dns-guard -> upstream against CoreDNS -> upstream, and
      Unbound as a validating forwarder on the same path (s3_misspath.py)
  4   XDP cost per packet at 0, 100k, 1M, 5M names; kernel bytes per name; list load and
      reload time and userspace RSS of the real binary (s4_scale.py)
  5   time to a blocked answer: dns-guard's XDP NXDOMAIN against CoreDNS answering NXDOMAIN
      itself (s5_blocked.py)

The coredns pod runs ONE CoreDNS 1.15 with a server block per configuration, each bound to its
own address of the pod (the kubeadm shape minus kubernetes, which needs an API server, and
minus the log plugin, which would bill CoreDNS for per-query writes):

  .53  CoreDNS alone: ``acl bl.test { block }``, ``forward . <up>``; ``lab.`` to the private
       hierarchy's Unbound (scenario 3). Also on 127.0.0.1, for dnsdist to forward to.
  .52  CoreDNS with the dns-guard sidecar: the same, but ``forward . 127.0.0.1:5353`` (the
       proxy); dns-guard's XDP program is on eth0 while its configurations run, so every
       query to the pod meets it. This is corefile-examples/kubeadm-default.Corefile.
  .51  ``lab.`` forwarded to Unbound as a validating forwarder on 127.0.0.1:5354 (scenario 3).
  .50  ``template IN ANY bl.test { rcode NXDOMAIN }``: CoreDNS answers blocked names itself
       (scenario 5; with dns-guard attached, XDP answers them first).

dnsdist (Debian) runs in the coredns pod in front of CoreDNS (.53 via 127.0.0.1). dns-guard is
started before each of its measurements and detached after, so the other configurations run
with no XDP program on eth0.

    python3 bench/peers.py                  # everything, ~15 min; writes docs/benchmarks.md, peers.png, peers-results.json
    python3 bench/peers.py --scenarios 3    # one scenario (prints; --docs/--chart to write)
    python3 bench/peers.py --smoke          # a few seconds per scenario; asserts answers, never timings

Run as root. Traffic stays inside the lab (198.18.0.0/24); the lab is torn down on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "integration"))
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import coredns as corednsmod  # noqa: E402
import lab as labmod  # noqa: E402
import report  # noqa: E402
import s1_clean  # noqa: E402
import s2_floods  # noqa: E402
import s3_misspath  # noqa: E402
import s4_scale  # noqa: E402
import s5_blocked  # noqa: E402
from lab import Lab, LabError, v4  # noqa: E402

# The coredns pod's server addresses, one per CoreDNS server block (see the module docstring).
ALONE = v4("coredns")
SIDECAR = f"{labmod.V4_PREFIX}52"
UNBOUND_FWD = f"{labmod.V4_PREFIX}51"
TEMPLATE = f"{labmod.V4_PREFIX}50"
EXTRA_ADDRS = [SIDECAR, UNBOUND_FWD, TEMPLATE]
PROXY_LISTEN = corednsmod.PROXY  # 127.0.0.1:5353, as in corefile-examples/
UNBOUND_FWD_PORT = 5354
HIERARCHY_REC = f"{labmod.V4_PREFIX}55"  # integration/hierarchy.py's Unbound (iterator only)
DNSDIST_PORT = {"flood": 5300, "clean": 5301}  # two instances: limit on, limit out of reach
NO_LIMIT = 10_000_000

SCENARIOS = {m.KEY: m for m in (s1_clean,)} | {k: s2_floods for k in s2_floods.KEYS} | {
    m.KEY: m for m in (s3_misspath, s4_scale, s5_blocked)}
ORDER = ["1", "2a", "2b", "2c", "3", "4", "5"]


def corefile() -> str:
    up, rec = v4("up"), HIERARCHY_REC
    text = f"""(base) {{
    errors
    prometheus 127.0.0.1:9153
    cache 30
    loadbalance
}}
# CoreDNS alone (and behind dnsdist, which forwards to 127.0.0.1)
.:53 {{
    bind {ALONE} 127.0.0.1
    import base
    acl bl.test {{
        block
    }}
    forward . {up} {{
        max_concurrent 1000
    }}
}}
lab.:53 {{
    bind {ALONE} 127.0.0.1
    import base
    forward . {rec} {{
        max_concurrent 1000
    }}
}}
# CoreDNS with the dns-guard sidecar: forward to its proxy (XDP on eth0 needs no Corefile change)
.:53 {{
    bind {SIDECAR}
    import base
    acl bl.test {{
        block
    }}
    forward . {PROXY_LISTEN} {{
        max_concurrent 1000
    }}
}}
# Unbound as a validating forwarder beside CoreDNS (scenario 3's reference)
lab.:53 {{
    bind {UNBOUND_FWD}
    import base
    forward . 127.0.0.1:{UNBOUND_FWD_PORT} {{
        max_concurrent 1000
    }}
}}
# CoreDNS answering NXDOMAIN for blocked names itself (scenario 5)
.:53 {{
    bind {TEMPLATE}
    import base
    template IN ANY bl.test {{
        rcode NXDOMAIN
    }}
    forward . {up} {{
        max_concurrent 1000
    }}
}}
"""
    corednsmod.assert_lab_only(text)
    return text


def dnsdist_conf(port: int, qps: int) -> str:
    return f"""-- bench/peers.py: dnsdist in front of CoreDNS in the coredns pod
setSecurityPollSuffix("")  -- never poll secpoll.powerdns.com: nothing leaves the lab
setLocal("{ALONE}:{port}")
setACL({{"198.18.0.0/15", "fd53:6775:6172::/48"}})  -- the lab's clients (not in the default ACL)
newServer({{address="127.0.0.1:53", name="coredns", checkName="good.test.", checkInterval=1}})
addAction(MaxQPSIPRule({qps}, 32, 64), DropAction())
local blocked = newSuffixMatchNode()
blocked:add(newDNSName("bl.test."))
addAction(SuffixMatchNodeRule(blocked), RCodeAction(DNSRCode.NXDOMAIN))
"""


def unbound_forwarder_conf(workdir: Path, anchor: Path) -> str:
    return f"""server:
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{workdir}"
    pidfile: ""
    logfile: "{workdir}/unbound.log"
    use-syslog: no
    verbosity: 0
    num-threads: 2
    so-reuseport: yes
    interface: 127.0.0.1@{UNBOUND_FWD_PORT}
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    do-ip6: no
    module-config: "validator iterator"
    trust-anchor-file: "{anchor}"
    qname-minimisation: no
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: {HIERARCHY_REC}
"""


class Bench:
    """The lab plus everything the configurations need, and the dns-guard of the moment."""

    def __init__(self, lab: Lab, args):
        self.lab, self.args = lab, args
        self.failures: list[str] = []
        self.dnsdist: dict[str, subprocess.Popen] = {}
        self.unbound_fwd: subprocess.Popen | None = None
        self.hier = None
        self.guard = None
        self.xdp_mode = "?"
        self.addresses = {"alone": ALONE, "sidecar": SIDECAR, "unbound": UNBOUND_FWD, "template": TEMPLATE}

    # --- the peers
    def start_dnsdist(self) -> None:
        for kind, port in DNSDIST_PORT.items():
            conf = self.lab.workdir / f"dnsdist-{kind}.conf"
            conf.write_text(dnsdist_conf(port, self.args.limit if kind == "flood" else NO_LIMIT))
            self.dnsdist[kind] = self.lab.spawn("coredns", ["dnsdist", "--supervised", "--disable-syslog",
                                                        "-C", str(conf)], f"dnsdist-{kind}")
        for kind, port in DNSDIST_PORT.items():
            def up():
                return self.lab.dig("c2", "good.test", ALONE, "-p", str(port), "+timeout=1").status == "NOERROR"
            if not labmod._wait_for(up, 15, 0.3):
                raise LabError(f"dnsdist ({kind}) never answered; "
                               f"{labmod._tail(self.lab.workdir / f'dnsdist-{kind}.out')}")

    def start_hierarchy(self, stack: contextlib.ExitStack) -> None:
        import hierarchy as H
        self.hier = stack.enter_context(H.Hierarchy(self.lab, log_queries=False))
        wd = self.lab.workdir / "unbound-forwarder"
        wd.mkdir(exist_ok=True)
        conf = wd / "unbound.conf"
        conf.write_text(unbound_forwarder_conf(wd, self.hier.anchors["dnskey"]))
        self.unbound_fwd = self.lab.spawn("coredns", ["unbound", "-d", "-c", str(conf)], "unbound-forwarder")

    # --- dns-guard, as its users run it: XDP on eth0 and the proxy in CoreDNS's forward path
    def guard_config(self, profile: str) -> dict:
        """profile: "clean" (rate limit out of reach), "flood" (args.limit per /32), "validate"
        (clean, and the proxy validates against the private hierarchy) or "forward" (the same
        upstream, dnssec off)."""
        qps = self.args.limit if profile == "flood" else NO_LIMIT
        # The lab upstream is a flat dnsmasq, not a signed zone: validation would judge every
        # answer bogus, so it is off there (as in test_coredns.py); scenario 3 validates.
        proxy = {"listen": PROXY_LISTEN, "upstreams": [v4("up")], "dnssec": "off"}
        if profile == "validate":
            proxy = {"listen": PROXY_LISTEN, "upstreams": [HIERARCHY_REC], "dnssec": "validate",
                     "trust_anchor": str(self.hier.anchors["dnskey"])}
        elif profile == "forward":  # scenario 3's split: the same path without DNSSEC
            proxy = {"listen": PROXY_LISTEN, "upstreams": [HIERARCHY_REC], "dnssec": "off"}
        return {"xdp": {"action": "nxdomain", "mode": "auto",
                        "ratelimit": {"qps": qps, "burst": qps, "ipv4_prefix": 32, "ipv6_prefix": 64,
                                      "action": "drop"}},
                "proxy": proxy, "log": {"allow_sample": 0}, "metrics": {"listen": "127.0.0.1:0"}}

    def attach_guard(self, profile: str, lists: dict | None = None, config: dict | None = None,
                     ready_timeout: float = 30.0):
        cfg = config or self.guard_config(profile)
        self.guard = self.lab.start_guard(cfg, {"block.txt": "||bl.test^\n"} if lists is None else lists,
                                          ready_timeout=ready_timeout)
        m = re.search(r"dns-guard ready: XDP (\w+)", self.guard.stderr())
        if m:
            self.xdp_mode = m.group(1)
        return self.guard

    def detach_guard(self) -> None:
        if self.guard:
            if not self.guard.alive():
                self.failures.append(f"dns-guard died: {self.guard.stderr_tail()}")
            self.guard.cleanup()
            self.lab.guards.remove(self.guard)
            self.guard = None

    @contextlib.contextmanager
    def guarded(self, on: bool, profile: str):
        """dns-guard attached for the block if ``on``; detached after, whatever happens."""
        if not on:
            yield None
            return
        self.attach_guard(profile)
        try:
            yield self.guard
        finally:
            self.detach_guard()

    def guard_metrics(self) -> str:
        m = re.search(r"dns-guard admin listening on (\S+)", self.guard.stderr())
        if not m:
            raise LabError(f"no admin address in dns-guard's stderr:\n{self.guard.stderr_tail()}")
        code, body = corednsmod.http_get(self.lab, "coredns", f"http://{m.group(1)}/metrics")
        if code != 200:
            raise LabError(f"dns-guard /metrics answered {code}: {body[:300]}")
        return body

    def coredns_requests(self, server: str) -> float:
        """coredns_dns_requests_total of one server block (label server="dns://ADDR:53")."""
        code, body = corednsmod.http_get(self.lab, "coredns", "http://127.0.0.1:9153/metrics")
        if code != 200:
            raise LabError(f"CoreDNS /metrics answered {code}")
        return sum(float(line.rsplit(None, 1)[1]) for line in body.splitlines()
                   if line.startswith("coredns_dns_requests_total{") and f'server="dns://{server}:53"' in line)

    # --- helpers for scenarios
    def pids(self, **extra: int | None) -> dict[str, int]:
        out = {"coredns": self.lab.resolver.proc.pid}
        if self.guard:
            out["guard"] = self.guard.proc.pid
        out.update({k: v for k, v in extra.items() if v})
        return out

    def dig_expect(self, what: str, name: str, server: str, port: int, rcode: str,
                   addresses: list[str] | None = None) -> None:
        r = self.lab.dig("c2", name, server, "-p", str(port), "+timeout=3")
        if r.status != rcode or (addresses is not None and r.addresses != addresses):
            raise LabError(f"{what}: {name} @{server}:{port} answered {r.status} {r.addresses}, "
                           f"want {rcode} {addresses or ''}\n{r.raw}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few seconds per scenario; assert answers, not timings")
    p.add_argument("--scenarios", default=",".join(ORDER), help=f"comma-separated, from {','.join(ORDER)}")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 6: each order twice; smoke 1)")
    p.add_argument("--duration", type=float, help="seconds per max-rate measurement (default 4, smoke 1)")
    p.add_argument("--queries", type=int, help="queries per latency measurement (default 4000, smoke 200)")
    p.add_argument("--latency-rate", type=int, default=2000, help="qps cap of latency measurements (default 2000)")
    p.add_argument("--miss-rate", type=int, default=200,
                   help="scenario 3: qps cap of its latency measurements, all cache misses (default 200)")
    p.add_argument("--rate", type=int, default=500, help="legitimate client's qps under flood (default 500)")
    p.add_argument("--limit", type=int, default=1000, help="per-source rate limit, qps (default 1000)")
    p.add_argument("--sizes", help="scenario 4: list sizes for the XDP bench "
                   "(default 0,100000,1000000,5000000; smoke 0,1000)")
    p.add_argument("--rss-sizes", help="scenario 4: list sizes for the real binary (default 1000000,5000000; smoke 10000)")
    p.add_argument("--docs", type=Path, help="Markdown file whose generated section to replace "
                   "(default docs/benchmarks.md for a full run of every scenario)")
    p.add_argument("--chart", type=Path, help="PNG path (default docs/peers.png when --docs is written)")
    p.add_argument("--render", type=Path, help="write the report again from a run's raw results file "
                   "(printed at the end of every run), without measuring")
    p.add_argument("--plot", type=Path, help=argparse.SUPPRESS)  # internal: draw --chart from a JSON file
    args = p.parse_args(argv)
    requested = [s for s in args.scenarios.split(",") if s]
    bad = [s for s in requested if s not in ORDER]
    args.scenarios = [s for s in ORDER if s in requested]  # always in ORDER, whatever the flag's order
    args.rounds = args.rounds or (1 if args.smoke else 6)
    args.duration = args.duration or (1.0 if args.smoke else 4.0)
    args.queries = args.queries or (200 if args.smoke else 4000)
    args.sizes = [int(x) for x in (args.sizes or ("0,1000" if args.smoke else "0,100000,1000000,5000000")).split(",")]
    args.rss_sizes = [int(x) for x in (args.rss_sizes or ("10000" if args.smoke else "1000000,5000000")).split(",")]
    everything = args.scenarios == ORDER and not args.smoke
    if args.docs is None and everything and not args.plot:
        args.docs = REPO / "docs" / "benchmarks.md"
    if args.chart is None and args.docs is not None:
        args.chart = REPO / "docs" / "peers.png"
    if (bad or not args.scenarios or args.rounds < 1 or not 0 < args.duration <= 60 or args.queries < 1
            or args.rate < 1 or args.limit < 1 or args.latency_rate < 1 or args.miss_rate < 1 or min(args.sizes + args.rss_sizes) < 0):
        p.error(f"bad arguments (unknown scenarios {bad}? pick from {','.join(ORDER)}); "
                "durations are capped at 60 s")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.plot:
        report.draw_from_file(args.plot, args.chart)
        return 0
    if args.render:
        return render(args, json.loads(args.render.read_text()))
    if os.geteuid() != 0:
        print("bench/peers.py needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a CI timeout still tears down
    if corednsmod.available():
        print(corednsmod.available(), file=sys.stderr)
        return 2
    modules = []
    for key in args.scenarios:
        m = SCENARIOS[key]
        if m not in modules:
            modules.append(m)
    missing = sorted({t for m in modules for t in m.tools()})
    missing = [t for t in missing if not _which(t)]
    if missing:
        print(f"bench/peers.py needs {' '.join(missing)} for scenarios {','.join(args.scenarios)} "
              "(scripts/setup.sh)", file=sys.stderr)
        return 2

    meta = common.machine_facts()
    meta["command"] = "python3 bench/peers.py" + ("" if not argv else " " + shlex.join(argv))
    meta["versions"] = ", ".join(v for v in (
        "CoreDNS " + common.tool_version([str(corednsmod.binary()), "-version"], r"\d+\.\d+\.\d+"),
        common.tool_version(["dnsdist", "--version"], r"dnsdist \S+"),
        common.tool_version(["dnsperf", "-h"], r"Version \S+").replace("Version", "dnsperf"),
        "Unbound " + common.tool_version(["unbound", "-V"], r"\d+\.\d+\.\d+"),
    ) if "?" not in v)

    # Registered under its own name so Lab builds the resolver the usual way; lab.py is untouched.
    def make_coredns(lab, pod, up):
        for addr in EXTRA_ADDRS:  # the network exists by now; CoreDNS binds these on start
            lab._ip("-n", lab.ns(pod), "addr", "add", f"{addr}/24", "dev", "eth0")
        return corednsmod.CoreDns(lab, pod, up, corefile=corefile())
    labmod.RESOLVERS["coredns-bench"] = make_coredns

    interleaved = [k for k in args.scenarios if k != "4"]
    results: dict[str, dict[str, list[dict]]] = {k: {} for k in args.scenarios}
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(Lab(resolver="coredns-bench"))
        bench = Bench(lab, args)
        if any(k.startswith("2") for k in args.scenarios):
            lab.add_pod(s2_floods.ATTACKER, s2_floods.ATTACKER_HOSTS, v6=False)
        if any(k in ("1", "2a", "2b", "2c") for k in args.scenarios):
            bench.start_dnsdist()
        if "3" in args.scenarios:
            bench.start_hierarchy(stack)
        for m in modules:
            if m is not s4_scale:
                m.setup(bench)
        t0 = time.monotonic()
        for rnd in range(args.rounds):
            for key in interleaved:
                sc = SCENARIOS[key]
                configs = sc.configs(key)
                order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
                for c in order:
                    results[key].setdefault(c, []).append(sc.measure(bench, key, c, rnd))
                print(f"[{time.monotonic() - t0:6.1f}s] round {rnd + 1}/{args.rounds} scenario {key} "
                      f"({' '.join(order)})", file=sys.stderr, flush=True)
        if "4" in args.scenarios:
            results["4"] = s4_scale.run(bench)
            print(f"[{time.monotonic() - t0:6.1f}s] scenario 4 done", file=sys.stderr, flush=True)
    meta["xdp"] = bench.xdp_mode
    meta["loadavg_end"] = common.load_average()
    meta["elapsed_min"] = (time.monotonic() - t0) / 60

    # The raw rounds first, so a failure below never loses a 20-minute run.
    raw = Path(tempfile.gettempdir()) / f"peers-results-{os.getpid()}.json"
    raw.write_text(json.dumps(raw_for_file(args, {"meta": meta, "results": results}), indent=1, default=str))
    print(f"raw results: {raw}", file=sys.stderr)
    status = render(args, {"meta": meta, "results": results}, bench.failures)
    if args.docs and Path(args.docs).with_name("peers-results.json").exists():
        raw.unlink()  # kept beside the docs instead
    return status


def raw_for_file(args, raw: dict) -> dict:
    saved = {k: v for k, v in vars(args).items() if k not in ("docs", "chart", "plot", "render")}
    return {"meta": raw["meta"], "args": raw.get("args", saved), "results": raw["results"]}


def render(args, raw: dict, failures: list[str] | None = None) -> int:
    """Tables, goals, chart and docs section from one run's results (live, or a raw file)."""
    failures = [] if failures is None else failures
    meta, results = raw["meta"], raw["results"]
    if args.render:
        saved = raw.get("args", {})
        for k in ("rounds", "duration", "queries", "latency_rate", "miss_rate", "rate", "limit", "sizes",
                  "rss_sizes", "smoke"):
            if k in saved:
                setattr(args, k, saved[k])
        args.scenarios = [k for k in ORDER if k in results]
        meta["rendered"] = True
        if args.docs is None and args.scenarios == ORDER and not args.smoke:
            args.docs, args.chart = REPO / "docs" / "benchmarks.md", args.chart or REPO / "docs" / "peers.png"
    text = report.render(args, meta, results, SCENARIOS)
    print(text)
    panels = [p for key in args.scenarios for p in SCENARIOS[key].panels(key, results[key])]
    if args.chart:
        try:
            report.chart(panels, args.chart, f"dns-guard and its peers, {meta['date']} "
                         f"(median; bars: min–max over rounds)")
            print(f"\nchart: {args.chart}", file=sys.stderr)
        except Exception as e:  # the tables still go into the docs
            failures.append(f"chart not drawn: {e!r}")
    if args.docs:
        report.write_docs(args.docs, text, args.chart)
        # The raw rounds beside the docs, so the tables can be checked or re-rendered (--render).
        keep = Path(args.docs).with_name("peers-results.json")
        if not args.render or args.render.resolve() != keep.resolve():
            keep.write_text(json.dumps(raw_for_file(args, raw), indent=1, default=str) + "\n")
        print(f"docs: {args.docs} (generated section replaced), raw results in {keep}", file=sys.stderr)
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures[:30]), file=sys.stderr)
        return 1
    return 0


def _which(tool: str) -> bool:
    return bool(shutil.which(tool))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
