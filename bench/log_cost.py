"""What a flood of blocked queries costs dns-guard's userspace (the verdict log path).

For each binary, interleaved over rounds: a lab, dns-guard with `action: drop` on
``||bl.test^``, then bench/flood.py from c1 sending random names under bl.test (4096
distinct) for a few seconds. Reports dns-guard's CPU (utime+stime from /proc) per second of
wall time, the verdict lines written and the flood's packet rate. Compare two builds side by
side in one run, e.g. before and after a change to the event path:

    sudo python3 bench/log_cost.py target/release/dns-guard /tmp/dns-guard-before --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "integration"))

from lab import Lab, v4  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / TICKS  # utime, stime


def one_round(binary: str, seconds: float) -> dict:
    with Lab(binary=binary) as lab:
        guard = lab.start_guard({"xdp": {"action": "drop"}}, {"block.txt": "||bl.test^\n"})
        pid = guard.proc.pid
        c0, t0 = cpu_ms(pid), time.monotonic()
        out = lab.run("c1", [sys.executable, str(REPO / "bench" / "flood.py"), "--dst", v4("coredns"),
                             "--port", "53", "--kind", "blocked", "--duration", str(seconds),
                             "--max", "10000000"], timeout=seconds + 30)
        time.sleep(1.5)  # folded lines are written once their one-second window closes
        c1, t1 = cpu_ms(pid), time.monotonic()
        flood = json.loads(out.stdout.strip().splitlines()[-1])
        verdicts = guard.verdicts()
        return {"cpu_ms_per_s": (c1 - c0) / (t1 - t0), "lines": len(verdicts),
                "decisions": sum(v.get("count", 1) for v in verdicts), "pps": flood["pps"],
                "sent": flood["sent"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("binaries", nargs="+", help="dns-guard binaries to compare")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("log_cost.py needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    results: dict[str, list[dict]] = {b: [] for b in args.binaries}
    for r in range(args.rounds):
        for b in args.binaries if r % 2 == 0 else reversed(args.binaries):
            results[b].append(one_round(b, args.seconds))
            print(f"round {r + 1} {b}: {results[b][-1]}", file=sys.stderr, flush=True)
    print(f"| binary | dns-guard CPU ms/s (median, range) | verdict lines per round | decisions logged / sent | flood pps |")
    print("|---|---:|---:|---:|---:|")
    for b, rs in results.items():
        cpu = [x["cpu_ms_per_s"] for x in rs]
        print(f"| `{b}` | {statistics.median(cpu):.0f} ({min(cpu):.0f}–{max(cpu):.0f}) | "
              f"{statistics.median(x['lines'] for x in rs):,.0f} | "
              f"{statistics.median(x['decisions'] / x['sent'] for x in rs):.2f} | "
              f"{statistics.median(x['pps'] for x in rs):,.0f} |")
    print(f"\n{args.rounds} interleaved rounds of {args.seconds} s; nproc {os.cpu_count()}, kernel {os.uname().release}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
