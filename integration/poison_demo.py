"""The CoreDNS cache-poisoning demonstration: an off-path attacker races forged answers against
CoreDNS's cache misses, with and without dns-guard, and this prints what got into the cache.

    cd integration && python3 poison_demo.py          # as root, after cargo build --release
    python3 poison_demo.py --attempts 64 --ports 50000-50007 --delay-ms 1000 --stop-after 5

The lab (lab.py) runs the real CoreDNS (kubeadm's Corefile, coredns.py) in the coredns pod, and
adds two pods:

    slow   198.18.0.80  the upstream: dnsmasq answers every name under poison.test with
                        198.19.0.20, behind dnsdist holding each UDP answer --delay-ms (a
                        distant server: the race window)
    racer  198.18.0.66  the attacker (racer.py): a client of CoreDNS like any pod, off the path
                        (it never sees the coredns pod's traffic)

The coredns pod's source ports are narrowed to a few (per-namespace `ip_local_port_range`), which
CoreDNS's upstream socket and dns-guard's per-query sockets both draw from: the same fair
chance for the attacker in every setup. So few ports cannot also hold a TIME_WAIT for every
TCP query once dns-guard moves to TCP (connect fails with EADDRNOTAVAIL), so the pod keeps
none (`tcp_max_tw_buckets=0`); a real range has 28232 ports and needs no such thing.

Three setups, the same attack and the same budget of fresh names and forged packets:

    coredns       CoreDNS forwards straight to the upstream. What protects it: a random txid
                  and the source port of one of its pooled upstream sockets (CoreDNS reuses
                  them, one or two here); it matches the name regardless of case. Nothing
                  else. The attacker stops after --stop-after wins.
    guard-checks  CoreDNS forwards to dns-guard (127.0.0.1:5353), which forwards upstream, with
                  the TCP switch off (spoof.tcp_cooldown_s: 0), so every attempt is a UDP race
                  and only the checks stand in the way: source address and port, a random
                  txid, a fresh random port per query, and the 0x20 case of the question
                  (the raced names have 22 letters: 2^22 cases).
    guard         dns-guard as configured by default: the same checks, and past 10 refused
                  responses in 60 s the upstream is asked over TCP for 300 s, where an
                  off-path forger cannot answer at all.

The zone is unsigned, so DNSSEC plays no part: what stops the attack here is the checks above.
`--setups coredns,guard-no0x20` adds the control: dns-guard with 0x20 off for this upstream and
the TCP switch off, which the same attack does poison.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import coredns
import lab as labmod
from lab import GOOD_V4, v4

HERE = Path(__file__).resolve().parent
ZONE = "poison.test"
SLOW_HOST, RACER_HOST = 80, 66
SLOW = f"{labmod.V4_PREFIX}{SLOW_HOST}"
REAL_V4 = "198.19.0.20"
MARKER_V4 = "198.18.66.66"  # racer.MARKER_V4; nothing in the lab answers it

# The budget. The racer spreads each attempt's 65536 forgeries over the R = 4 ports, 16384
# txids per port, so against a resolver that checks only port and txid an attempt wins with
# probability c/4, where c is the share of the right port's forgeries that arrive inside the
# window and are read (not dropped by a full socket buffer). The upstream answers after
# DELAY_MS; the flood takes 65536/rate, 0.5-0.8 s at the 80-130k packets/s measured on a busy
# 2-CPU machine (the run records its rate). Measured c for CoreDNS: 0.6 to 1 (3 wins in 21
# attempts, 12 in 48). CoreDNS alone gets up to ALONE_ATTEMPTS names, so it is poisoned at
# least once with probability 1 - (1 - c/4)^64: 1 - 5e-5 at c = 0.6, 1 - 1.2e-3 at c = 0.4.
# It stops after STOP_AFTER wins. The dns-guard setups get ATTEMPTS names, or as many as
# CoreDNS alone used if that was more, and always 65536 forgeries per name.
# Every attempt lands 16384 forgeries on whichever port dns-guard's query used, one of them
# with the right txid one time in four: about ATTEMPTS/4 forgeries that CoreDNS alone would
# have taken. With the TCP switch off only the 0x20 case of the name stands in their way:
# victim0007-checks.poison.test has 22 letters, so each is taken with probability 2^-22, and
# the whole run with about 8 * 2^-22 = 2e-6. With the switch on (the default), they do not
# even get that far: after the first attempt no query goes over UDP.
PORTS = (50000, 50003)
DELAY_MS = 800
RATE = 150_000
ATTEMPTS = 32
ALONE_ATTEMPTS = 64
STOP_AFTER = 2


@dataclasses.dataclass(frozen=True)
class Setup:
    key: str
    tag: str  # in the raced names: victim0007-<tag>.poison.test (22 letters with a 6-letter tag)
    title: str
    guard: dict | None  # dns-guard proxy overrides; None: CoreDNS forwards straight upstream
    protects: str


SETUPS = (
    Setup("coredns", "direct", "CoreDNS alone", None,
          "a random txid, and a port of its one or two pooled upstream sockets"),
    Setup("guard-checks", "checks", "CoreDNS + dns-guard, TCP switch off",
          {"spoof": {"threshold": 10, "window_s": 60, "tcp_cooldown_s": 0}},
          "checks: source, txid, a fresh random port per query, 0x20 case"),
    Setup("guard", "switch", "CoreDNS + dns-guard (default config)", {},
          "the same checks, then TCP for 300 s after 10 refused responses"),
)
# Not run by default (nor in CI): the control. The upstream listed in proxy.no_0x20 (for servers
# that fold the case) and the TCP switch off leave a txid and a fresh port per query, the
# protection CoreDNS alone has: the same attack then gets through dns-guard too, which shows
# that what keeps guard-checks clean is the 0x20 check, not luck.
CONTROLS = (
    Setup("guard-no0x20", "nocase", "CoreDNS + dns-guard, TCP switch off, upstream in no_0x20",
          {"no_0x20": [SLOW], "spoof": {"threshold": 10, "window_s": 60, "tcp_cooldown_s": 0}},
          "source, txid and a fresh random port per query only"),
)


# --------------------------------------------------------------------------- the lab


DNSDIST_CONF = """\
-- poison_demo.py: the upstream CoreDNS (or dns-guard) asks; its answers come {delay_ms} ms late
setSecurityPollSuffix("")  -- never poll secpoll.powerdns.com: nothing leaves the lab
setLocal("{listen}:53")
setACL({{"198.18.0.0/15"}})
newServer({{address="127.0.0.1:5300", name="dnsmasq", checkName="good.test.", checkInterval=1}})
-- One line per query received ("Packet from 198.18.0.53:50001 for victim0001-... A with id 1234"),
-- UDP and TCP apart: how the coredns pod asked, and from which source ports.
addAction(TCPRule(false), LogAction("{log_udp}", false, true, false))
addAction(TCPRule(true), LogAction("{log_tcp}", false, true, false))
addResponseAction(AllRule(), DelayResponseAction({delay_ms}))
"""


def missing_tools() -> list[str]:
    return [t for t in ("dnsdist", "dnsmasq", "sysctl") if not shutil.which(t)]


def prepare(lab: labmod.Lab, ports: tuple[int, int], delay_ms: int) -> None:
    """The slow upstream, the racer's pod, and the coredns pod's narrow port range.

    The upstream is two real servers in one pod: dnsmasq holds the zone, and dnsdist in front
    of it holds every UDP answer delay_ms (DelayResponseAction), a distant upstream: the race
    window. (This kernel has no netem; DelayResponseAction delays UDP only, so once dns-guard
    moves to TCP its answers come at once, which changes nothing an off-path racer can do.)
    """
    if missing_tools():
        raise labmod.LabError(f"missing {' '.join(missing_tools())}; run scripts/setup.sh")
    lab.add_pod("slow", [SLOW_HOST], v6=False)
    lab.spawn("slow", [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=",
        "--user=root", "--group=root", "--no-resolv", "--no-hosts", "--no-poll",
        "--listen-address=127.0.0.1", "--bind-interfaces", "--port=5300",
        # Long TTLs: every answer stays in CoreDNS's cache for the whole run, so asking
        # again at the end shows what the cache holds.
        "--local-ttl=600", f"--address=/{ZONE}/{REAL_V4}", f"--host-record=good.test,{GOOD_V4}",
    ], "slow-dnsmasq")
    conf = lab.workdir / "slow-dnsdist.conf"
    conf.write_text(DNSDIST_CONF.format(listen=SLOW, delay_ms=delay_ms, log_udp=lab.workdir / "upstream-udp.log",
                                        log_tcp=lab.workdir / "upstream-tcp.log"))
    lab.spawn("slow", ["dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)], "slow-dnsdist")
    ok = labmod._wait_for(lambda: lab.dig("c1", "good.test", SLOW, "+timeout=3").addresses, 15, 0.2)
    if not ok:
        raise labmod.LabError("the slow upstream never answered:\n"
                              + (lab.workdir / "slow-dnsmasq.err").read_text()
                              + (lab.workdir / "slow-dnsdist.err").read_text())
    lab.add_pod("racer", [RACER_HOST], v6=False)
    lab.run("coredns", ["sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={ports[0]} {ports[1]}",
                    "-w", "net.ipv4.tcp_max_tw_buckets=0"])


def corefile(lab: labmod.Lab, direct: bool) -> str:
    """kubeadm's Corefile (lab version); the cache cap raised from 30 s to 600 s so that every
    name raced is still cached when the run asks for it again."""
    text = coredns.adapt(coredns.example("kubeadm-default.Corefile"), lab.resolver.dir, cache_ttl=600)
    if direct:
        text = text.replace(f"forward . {coredns.PROXY}", f"forward . {SLOW}")
    assert f"forward . {SLOW if direct else coredns.PROXY}" in text, text
    return text


def restart_coredns(lab: labmod.Lab, text: str) -> None:
    """CoreDNS on a new Corefile: an empty cache, and upstream sockets opened inside the narrowed
    port range. SIGKILL, not SIGTERM: the example's `health { lameduck 5s }` would hold each
    restart 5 s, and this CoreDNS has nothing to drain."""
    res = lab.resolver
    if res.proc:
        labmod._stop_pid(res.proc, signal.SIGKILL, 5)
    res.corefile = text
    res.start()
    lab._wait_resolution()


def snmp(lab: labmod.Lab, pod: str) -> dict[str, int]:
    """The pod's /proc/net/snmp UDP and TCP counters (per network namespace)."""
    lines = lab.run(pod, ["cat", "/proc/net/snmp"]).stdout.splitlines()
    out = {}
    for head, vals in zip(lines[::2], lines[1::2]):
        proto, names = head.split(":", 1)
        for k, v in zip(names.split(), vals.split(":", 1)[1].split()):
            out[f"{proto}.{k}"] = int(v)
    return out


def guard_metrics(lab: labmod.Lab, guard: labmod.Guard) -> dict[str, float]:
    code, body = coredns.http_get(lab, "coredns", f"http://{guard.admin_addr()}/metrics")
    if code != 200:
        raise labmod.GuardError(f"/metrics answered {code}: {body[:500]}")
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("dns_guard_spoof_responses_total{"):
            kind = re.search(r'kind="([^"]+)"', line).group(1)
            out[f"spoof.{kind}"] = out.get(f"spoof.{kind}", 0) + float(line.rsplit(None, 1)[1])
        elif line.startswith("dns_guard_upstream_tcp_forced{"):
            out["tcp_forced"] = float(line.rsplit(None, 1)[1])
    return out


_LOGGED = re.compile(r"^Packet from ([0-9.]+):(\d+) for (\S+) A with id \d+$", re.M)


def upstream_queries(lab: labmod.Lab, tag: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(source port, name as sent) of every raced name's query the upstream got from the dns
    pod, over UDP and over TCP."""
    def queries(proto):
        path = lab.workdir / f"upstream-{proto}.log"
        text = path.read_text() if path.exists() else ""
        return [(int(p), name) for ip, p, name in _LOGGED.findall(text)
                if ip == v4("coredns") and name.lower().endswith(f"-{tag}.{ZONE}.")]
    return queries("udp"), queries("tcp")


def cached_answers(lab: labmod.Lab, names: list[str]) -> list[list[str]]:
    """Asks CoreDNS for every raced name again, from another client (c2): its cache answers."""
    return [lab.dig("c2", n, v4("coredns"), "+timeout=3").addresses for n in names]


# --------------------------------------------------------------------------- one setup


def run_setup(lab: labmod.Lab, setup: Setup, attempts: int = ATTEMPTS, ports=PORTS,
              stop_after: int = STOP_AFTER, rate: int = RATE) -> dict:
    guard = None
    try:
        if setup.guard is not None:
            config = {"interface": None,  # proxy only: XDP plays no part in this race
                      "proxy": labmod.deep_merge({"upstreams": [SLOW], "dnssec": "off", "timeout_ms": 2000},
                                                 setup.guard)}
            guard = lab.prepare_guard(config, {})
            guard.start()
            if not guard.proxy_listening(5.0):
                raise labmod.GuardError(f"dns-guard's proxy is not listening:\n{guard.stderr_tail()}")
        # A fresh CoreDNS per setup: an empty cache, and its upstream socket opened after the
        # port range was narrowed.
        restart_coredns(lab, corefile(lab, direct=guard is None))
        dns0 = snmp(lab, "coredns")
        out = lab.workdir / f"racer-{setup.key}.json"
        t0 = time.monotonic()
        lab.run("racer", [sys.executable, str(HERE / "racer.py"), "--resolver", v4("coredns"),
                          "--spoof-src", SLOW, "--ports", f"{ports[0]}-{ports[1]}", "--zone", ZONE,
                          "--tag", setup.tag,
                          "--attempts", str(attempts), "--rate", str(rate),
                          "--stop-after", str(stop_after if guard is None else 0), "--out", str(out)],
                timeout=attempts * 15 + 60)
        race = json.loads(out.read_text())
        names = [a["name"] for a in race["attempts"]]
        again = cached_answers(lab, names)
        seconds = time.monotonic() - t0
        dns1 = snmp(lab, "coredns")
        udp, tcp = upstream_queries(lab, setup.tag)
        res = {
            "setup": setup.key, "title": setup.title, "protects": setup.protects,
            "names": race["names"], "sent": race["sent"], "pps": race["pps"], "seconds": round(seconds, 1),
            "poisoned_answer": sum(MARKER_V4 in a["answer"]["addrs"] for a in race["attempts"]),
            "poisoned_cache": sum(MARKER_V4 in a["cached"]["addrs"] for a in race["attempts"]),
            "poisoned_other_client": sum(MARKER_V4 in a for a in again),
            "real_answers": sum(a["answer"]["addrs"] == [REAL_V4] for a in race["attempts"]),
            "failed_answers": sum(not a["answer"]["addrs"] for a in race["attempts"]),
            "dns_udp_delivered": dns1["Udp.InDatagrams"] - dns0["Udp.InDatagrams"],
            "dns_udp_no_port": dns1["Udp.NoPorts"] - dns0["Udp.NoPorts"],
            "dns_udp_rcvbuf_drops": dns1["Udp.RcvbufErrors"] - dns0["Udp.RcvbufErrors"],
            "upstream_udp": len(udp), "upstream_tcp": len(tcp),
            "upstream_udp_ports": len({p for p, _ in udp}),
            "upstream_mixed_case": sum(n != n.lower() for _, n in udp + tcp),
            "racer": race,
        }
        if guard is not None:
            m = guard_metrics(lab, guard)
            res["spoof"] = {k.split(".", 1)[1]: int(v) for k, v in m.items() if k.startswith("spoof.")}
            res["tcp_forced"] = int(m.get("tcp_forced", 0))
            res["spoof_verdicts"] = len(guard.find_verdicts(layer="proxy", verdict="spoof"))
            res["poisoning_attempts"] = [
                {"action": v.get("action"), "reason": v.get("reason")}
                for v in guard.find_verdicts(layer="proxy", verdict="poisoning-attempt")]
        return res
    finally:
        if guard is not None:
            guard.cleanup()
            lab.guards.remove(guard)


def run_demo(lab: labmod.Lab, attempts: int = ATTEMPTS, ports=PORTS, delay_ms: int = DELAY_MS,
             stop_after: int = STOP_AFTER, rate: int = RATE, setups=SETUPS,
             alone_attempts: int = ALONE_ATTEMPTS) -> list[dict]:
    """Runs the setups in order; CoreDNS alone (first, when present) sets the budget's floor."""
    prepare(lab, ports, delay_ms)
    results = []
    for s in setups:
        if s.guard is None:
            results.append(run_setup(lab, s, alone_attempts, ports, stop_after, rate))
        else:
            floor = max((r["names"] for r in results if r["setup"] == "coredns"), default=0)
            results.append(run_setup(lab, s, max(attempts, floor), ports, stop_after, rate))
    return results


# --------------------------------------------------------------------------- the table


def table(results: list[dict], ports, delay_ms: int) -> str:
    rows = [("", *[r["setup"] for r in results])]

    def row(label, fn):
        rows.append((label, *[str(fn(r)) for r in results]))

    row("fresh names raced", lambda r: r["names"])
    row("forged packets sent", lambda r: r["sent"])
    row("forged packets/s", lambda r: r["pps"])
    row("POISONED: answer to the racer", lambda r: r["poisoned_answer"])
    row("POISONED: asked again (cache)", lambda r: r["poisoned_cache"])
    row("POISONED: asked by another pod", lambda r: r["poisoned_other_client"])
    row("real answer to the racer", lambda r: r["real_answers"])
    row("SERVFAIL or no answer to the racer", lambda r: r["failed_answers"])
    row("coredns pod: datagrams to a socket", lambda r: r["dns_udp_delivered"])
    row("coredns pod: datagrams to no socket", lambda r: r["dns_udp_no_port"])
    row("coredns pod: socket buffer drops", lambda r: r["dns_udp_rcvbuf_drops"])
    row("guard: refused, wrong txid", lambda r: r["spoof"].get("wrong_txid", 0) if "spoof" in r else "-")
    row("guard: refused, right txid, 0x20 case wrong",
        lambda r: r["spoof"].get("case_mismatch", 0) if "spoof" in r else "-")
    row("guard: refused, other checks", lambda r: sum(v for k, v in r["spoof"].items()
                                                      if k not in ("wrong_txid", "case_mismatch")) if "spoof" in r else "-")
    row("guard: spoof verdicts logged", lambda r: r.get("spoof_verdicts", "-"))
    row("guard: poisoning-attempt verdicts", lambda r: ",".join(p["action"] for p in r["poisoning_attempts"]) or "0"
        if "poisoning_attempts" in r else "-")
    row("upstream got: UDP queries (ports) / TCP", lambda r: f"{r['upstream_udp']} ({r['upstream_udp_ports']}) / {r['upstream_tcp']}")
    row("upstream got: names in 0x20 mixed case", lambda r: r["upstream_mixed_case"])
    row("seconds", lambda r: r["seconds"])
    widths = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(x, widths)) for x in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    head = (f"source ports {ports[0]}-{ports[1]} in the coredns pod; upstream delay {delay_ms} ms; "
            f"zone {ZONE} (unsigned)")
    legend = "\n".join(f"  {r['setup']}: {r['title']}; protected by {r['protects']}" for r in results)
    return f"{head}\n{legend}\n\n" + "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attempts", type=int, default=ATTEMPTS, help="fresh names raced per dns-guard setup")
    ap.add_argument("--alone-attempts", type=int, default=ALONE_ATTEMPTS, help="at most, for CoreDNS alone")
    ap.add_argument("--ports", default=f"{PORTS[0]}-{PORTS[1]}", help="the coredns pod's source port range")
    ap.add_argument("--delay-ms", type=int, default=DELAY_MS, help="the upstream's delay: the race window")
    ap.add_argument("--stop-after", type=int, default=STOP_AFTER, help="CoreDNS alone: stop after this many poisoned names")
    ap.add_argument("--rate", type=int, default=RATE, help="forged packets per second")
    ap.add_argument("--setups", default=",".join(s.key for s in SETUPS),
                    help=f"comma-separated, in order; also: {', '.join(s.key for s in CONTROLS)}")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    ports = tuple(int(p) for p in args.ports.split("-"))
    wanted = args.setups.split(",")
    known = SETUPS + CONTROLS
    unknown = set(wanted) - {s.key for s in known}
    if unknown:
        ap.error(f"unknown setup {', '.join(sorted(unknown))}; pick from {', '.join(s.key for s in known)}")
    setups = [s for s in known if s.key in wanted]
    with labmod.Lab(resolver="coredns") as lab:
        results = run_demo(lab, args.attempts, ports, args.delay_ms, args.stop_after, args.rate, setups,
                           args.alone_attempts)
    print(table(results, ports, args.delay_ms))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
