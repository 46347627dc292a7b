#!/usr/bin/env python3
"""A narrated demo of DNS Guard's fast path, in a throwaway lab (run as root).

    python3 integration/demo.py

Builds the lab (two client pods, a coredns pod with a resolver, an upstream), starts dns-guard
on the coredns pod's eth0 with a small blocklist and a per-client rate limit, then shows:
a clean name resolving, a blocked name answered NXDOMAIN by the kernel (the resolver never
sees it), one client flooding while the other is unaffected, and the verdict log.
Everything is torn down at the end, also on Ctrl-C. Each thing the demo shows is also
checked: if one does not hold, it says which and exits 1 (test_demo.py runs it in CI).
"""

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lab import Lab, v4  # noqa: E402

BLOCKLIST = """\
# hosts-file and AdGuard lines, as users bring them
0.0.0.0 ads.example.test
||tracker.test^
"""


def say(text: str) -> None:
    print(f"\n\033[1m## {text}\033[0m", flush=True)


def show(cmd: str, lines) -> None:
    print(f"$ {cmd}")
    for line in lines:
        print(f"  {line}")


FAILED: list[str] = []


def expect(ok: bool, claim: str) -> None:
    """The demo narrates; this makes it honest: a claim that did not hold is reported."""
    if not ok:
        FAILED.append(claim)
        print(f"  !! not as claimed: {claim}", flush=True)


def dig_line(lab, pod, name):
    r = lab.dig(pod, name)
    answer = ", ".join(r.addresses) or "-"
    show(f"[{pod}] dig @{v4('coredns')} {name}",
         [f"status: {r.status or 'timed out'}   answer: {answer}   flags: {' '.join(sorted(r.flags))}"])
    return r


def main() -> int:
    if os.geteuid() != 0:
        print("demo.py needs root (network namespaces and XDP)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with Lab() as lab:
        say(f"Lab {lab.prefix}: c1 {v4('c1')}, c2 {v4('c2')}, coredns pod {v4('coredns')} "
            f"({lab.resolver_kind}), upstream {v4('up')}")
        guard = lab.start_guard(
            {"xdp": {"action": "nxdomain",
                     "ratelimit": {"qps": 100, "burst": 100, "ipv4_prefix": 32, "action": "drop"}}},
            {"block.txt": BLOCKLIST})
        say("dns-guard attached XDP to the coredns pod's eth0")
        show("cat block.txt", BLOCKLIST.splitlines())
        print("  " + next(line for line in guard.stderr().splitlines() if "ready" in line))

        say("A clean name goes through to the resolver")
        r = dig_line(lab, "c1", "good.test")
        expect(r.status == "NOERROR" and bool(r.addresses), "good.test resolves")

        say("A blocked name is answered by the kernel")
        for pod, name in (("c1", "ads.example.test"), ("c2", "cdn.tracker.test")):
            r = dig_line(lab, pod, name)
            expect(r.status == "NXDOMAIN", f"{name} gets NXDOMAIN")
        saw = lab.resolver_saw("ads.example.test")
        print(f"  resolver saw ads.example.test? {saw}")
        expect(not saw, "the resolver never sees a blocked name")

        say("c1 floods at 2000 qps; c2 asks at its usual pace (limit: 100 qps per client)")
        flood = lab.dnsperf("c1", v4("coredns"), [f"n{i}.example.test" for i in range(100)],
                            duration=3, qps=2000, wait=False)
        time.sleep(0.5)
        c2 = [lab.dig("c2", f"calm{i}.example.test") for i in range(10)]
        res = flood.result()
        show("[c1] dnsperf -Q 2000 -l 3", [str(res)])
        calm_ok = sum(r.status == "NOERROR" for r in c2)
        show("[c2] 10 x dig", [f"NOERROR {calm_ok}/10"])
        expect(res.lost > res.sent // 2, "most of c1's flood is dropped")
        # 9: one dig lost to a busy 2-core box is not a limit; a limited c2 would lose most.
        expect(calm_ok >= 9, "c2 is not limited while c1 floods")

        say("Verdict log (one JSON object per line on dns-guard's stdout)")
        verdicts = guard.verdicts()
        shown = [v for v in verdicts if v.get("verdict") == "block"][:3]
        shown += [v for v in verdicts if v.get("verdict") == "ratelimit"][:3]
        for v in shown:
            print("  " + json.dumps(v))
        print(f"  ... {len(verdicts)} verdicts in total")
        expect(any(v.get("qname") == "ads.example.test" and v.get("layer") == "xdp" for v in shown),
               "the verdict log names the blocked query")
        expect(any(v.get("client") == v4("c1") for v in shown if v.get("verdict") == "ratelimit"),
               "the verdict log names the flooding client")

        say("Tearing down (guard, pins, namespaces)")
        guard.stop()
        guard.detach()
    if FAILED:
        print(f"demo: {len(FAILED)} claim(s) did not hold: {'; '.join(FAILED)}", file=sys.stderr)
        return 1
    print("done: every claim above held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
