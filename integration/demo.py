#!/usr/bin/env python3
"""A narrated demo of DNS Guard's fast path, in a throwaway lab (run as root).

    python3 integration/demo.py

Builds the lab (two client pods, a dns pod with a resolver, an upstream), starts dns-guard
on the dns pod's eth0 with a small blocklist and a per-client rate limit, then shows:
a clean name resolving, a blocked name answered NXDOMAIN by the kernel (the resolver never
sees it), one client flooding while the other is unaffected, and the verdict log.
Everything is torn down at the end, also on Ctrl-C.
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


def dig_line(lab, pod, name):
    r = lab.dig(pod, name)
    answer = ", ".join(r.addresses) or "-"
    show(f"[{pod}] dig @{v4('dns')} {name}",
         [f"status: {r.status or 'timed out'}   answer: {answer}   flags: {' '.join(sorted(r.flags))}"])
    return r


def main() -> int:
    if os.geteuid() != 0:
        print("demo.py needs root (network namespaces and XDP)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with Lab() as lab:
        say(f"Lab {lab.prefix}: c1 {v4('c1')}, c2 {v4('c2')}, dns pod {v4('dns')} "
            f"({lab.resolver_kind}), upstream {v4('up')}")
        guard = lab.start_guard(
            {"xdp": {"action": "nxdomain",
                     "ratelimit": {"qps": 100, "burst": 100, "ipv4_prefix": 32, "action": "drop"}}},
            {"block.txt": BLOCKLIST})
        say("dns-guard attached XDP to the dns pod's eth0")
        show("cat block.txt", BLOCKLIST.splitlines())
        print("  " + next(line for line in guard.stderr().splitlines() if "ready" in line))

        say("A clean name goes through to the resolver")
        dig_line(lab, "c1", "good.test")

        say("A blocked name is answered by the kernel")
        dig_line(lab, "c1", "ads.example.test")
        dig_line(lab, "c2", "cdn.tracker.test")
        print(f"  resolver saw ads.example.test? {lab.resolver_saw('ads.example.test')}")

        say("c1 floods at 2000 qps; c2 asks at its usual pace (limit: 100 qps per client)")
        flood = lab.dnsperf("c1", v4("dns"), [f"n{i}.example.test" for i in range(100)],
                            duration=3, qps=2000, wait=False)
        time.sleep(0.5)
        c2 = [lab.dig("c2", f"calm{i}.example.test") for i in range(10)]
        res = flood.result()
        show("[c1] dnsperf -Q 2000 -l 3", [str(res)])
        show("[c2] 10 x dig", [f"NOERROR {sum(r.status == 'NOERROR' for r in c2)}/10"])

        say("Verdict log (one JSON object per line on dns-guard's stdout)")
        verdicts = guard.verdicts()
        shown = [v for v in verdicts if v.get("verdict") == "block"][:3]
        shown += [v for v in verdicts if v.get("verdict") == "ratelimit"][:3]
        for v in shown:
            print("  " + json.dumps(v))
        print(f"  ... {len(verdicts)} verdicts in total")

        say("Tearing down (guard, pins, namespaces)")
        guard.stop()
        guard.detach()
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
