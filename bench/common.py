"""What every scenario of bench/peers.py measures with and reports in: CPU time, dnsperf's
per-query latencies, medians with their spread over rounds, per-round ratios, machine facts.

A number is only ever reported as a median with its spread (min–max over the rounds); a
comparison is a ratio (or difference) taken inside each round, between configurations that
ran back to back, so the drift of a shared machine between rounds cancels out of it.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")

# `dnsperf -v` prints one line per answered query: "> NOERROR name A 0.000123".
_VERBOSE = re.compile(r"^> (\w+) (\S+) (\w+) ([\d.]+)$", re.M)
_AVG = re.compile(r"Average Latency \(s\):\s+([\d.]+)")


# --------------------------------------------------------------------------- measurements


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks (fields 14, 15 of proc(5))."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def box_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine; idle and iowait count as not busy."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(vals) - vals[3] - vals[4], sum(vals)


class CpuMeter:
    """CPU ms per second of wall time of some processes, and the whole box's busy %."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.start = {k: cpu_ticks(p) for k, p in pids.items()}
        self.box = box_busy()
        self.t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        secs = max(1e-6, time.monotonic() - self.t0)
        box = box_busy()
        out = {f"{k}_ms": (cpu_ticks(p) - self.start[k]) * TICK_MS / secs for k, p in self.pids.items()}
        out["box_pct"] = 100.0 * (box[0] - self.box[0]) / max(1, box[1] - self.box[1])
        return out


def udp_rcvbuf_errors(lab, pod: str) -> int:
    """UDP datagrams a pod's sockets dropped for a full receive buffer (netstat's UdpRcvbufErrors,
    namespaced). nstat -a reads the absolute counter, -s leaves its history file alone."""
    out = lab.run(pod, ["nstat", "-asz", "UdpRcvbufErrors"]).stdout
    m = re.search(r"^UdpRcvbufErrors\s+(\d+)", out, re.M)
    return int(m.group(1)) if m else 0


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of /proc/PID/status, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k.startswith("Vm") and v.strip().endswith("kB"):
            out[k] = int(v.split()[0])
    return out


def verbose_latencies(raw: str, rcode: str | None = None) -> list[float]:
    """Per-query latencies in µs from `dnsperf -v` output (only answers with ``rcode``, if given)."""
    return [float(s) * 1e6 for rc, _, _, s in _VERBOSE.findall(raw) if rcode is None or rc == rcode]


def verbose_rcodes(raw: str) -> set[str]:
    return {rc for rc, *_ in _VERBOSE.findall(raw)}


def average_latency_us(raw: str) -> float:
    m = _AVG.search(raw)
    return float(m.group(1)) * 1e6 if m else 0.0


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported value was measured)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


# --------------------------------------------------------------------------- statistics


def values(rounds: list[dict], field: str) -> list[float]:
    return [r[field] for r in rounds if r.get(field) is not None]


def med(rounds: list[dict], field: str) -> float:
    v = values(rounds, field)
    return statistics.median(v) if v else float("nan")


def med_cell(rounds: list[dict], field: str, fmt: str = ".0f") -> str:
    """The median alone, or '–' when no round measured ``field`` (e.g. a process not running)."""
    v = values(rounds, field)
    return format(statistics.median(v), fmt) if v else "–"


def median_of(vals: list[float]) -> float:
    return statistics.median(vals) if vals else float("nan")


def summary(vals: list[float], fmt: str = ",.0f") -> str:
    """'median (min–max)'; a single value alone."""
    if not vals:
        return "n/a"
    m = format(statistics.median(vals), fmt)
    if len(vals) == 1:
        return m
    return f"{m} ({format(min(vals), fmt)}–{format(max(vals), fmt)})"


def cell(rounds: list[dict], field: str, fmt: str = ",.0f") -> str:
    return summary(values(rounds, field), fmt)


def judge(vals: list[float], ok) -> str | None:
    """Whether a goal is met: by the median, and saying so when some rounds disagree (on a
    shared machine a median alone can hide that the rounds fell on both sides of the goal)."""
    if not vals:
        return None
    met = ok(statistics.median(vals))
    other = sum(1 for v in vals if bool(ok(v)) != bool(met))
    if not other:
        return "yes" if met else "no"
    return (f"yes at the median; {other} of {len(vals)} rounds miss" if met
            else f"no at the median; {other} of {len(vals)} rounds meet it")


def per_round(a: list[dict], b: list[dict], field: str, op: str = "ratio") -> list[float]:
    """a_i / b_i (or a_i − b_i) for each round i: both ran back to back in round i."""
    out = []
    for x, y in zip(a, b):
        if x.get(field) is None or y.get(field) is None:
            continue
        if op == "ratio":
            if y[field]:
                out.append(x[field] / y[field])
        else:
            out.append(x[field] - y[field])
    return out


def ratio_of_medians(a: list[dict], b: list[dict], field: str) -> str:
    ma, mb = med(a, field), med(b, field)
    if not mb or mb != mb:
        return "n/a"
    r = ma / mb
    return f"{r:.2f}" if r >= 0.1 else f"{r:.3f}"


# --------------------------------------------------------------------------- machine facts


def tool_version(argv: list[str], pattern: str) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(0) if m else "?"


def git_revision() -> str:
    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    rev = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{rev} plus uncommitted changes" if dirty else rev


def machine_facts() -> dict:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "loadavg_start": load_average(),
        "revision": git_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
