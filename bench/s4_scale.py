"""Scenario 4: what a big list costs, in the kernel and in the real binary.

XDP cost per packet: guard/benches/xdp.rs runs the real program with BPF_PROG_TEST_RUN at
each list size (0, 100k, 1M, 5M names of a hosts file) and writes every round's values to a
JSON file (DG_BENCH_JSON). Each number here is the **net** cost, dns_guard − an XDP_PASS
floor program run on the same packet in the same round, as a median (min–max) over the
rounds. Modes: hot (one clean 4-label name, repeat 200k; its walk stops at its last two labels,
as deep marks allow for a name under a domain no listed name is below), hot under a listed
domain (a clean 4-label name whose every label is hashed and tested), single runs, cold
(a different name every call, timed by the kernel's bpf_stats) and a blocked name answered
NXDOMAIN. The bench also reports kernel bytes per name (the table map's memlock) and its
in-process parse + build + fill time.

The real binary: ``dns-guard run`` in the coredns pod (XDP on eth0, proxy on) with a hosts file
of N names generated into a temporary directory (deleted afterwards). Measured per start:
wall time from spawn to its ``dns-guard ready`` line; the table build + install time it logs;
VmRSS and VmHWM from /proc/PID/status 7 s after ready (after both heap trims); then a reload (the file is touched, as a
ConfigMap update would): wall time from the touch to ``dns-guard lists reloaded``, the
reload's own work from its log timestamps (``list file changed`` -> ``list table installed``,
so the 200 ms debounce is left out), and VmRSS / VmHWM 7 s after it.

Goals (issue 5): at 1M names, at most 100 ns median for a clean 4-label name with the same
packet repeated, at most 200 ns across varied names, and at most 12 B per name in the kernel.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common as C
from lab import LabError

KEY = "4"
# dns-guard trims its heap 2 s after a load or reload, and with the proxy on again after
# proxy.query_timeout_ms + 1 s (6 s by default; app::trim_heap_soon): RSS is read after both.
SETTLE_S = 7

TITLE = "List scale: XDP cost per packet, memory, load and reload"
MODES = [("hot", "hot, same packet ×200k"),
         ("hot_under_listed_domain", "hot, under a listed domain (full walk)"),
         ("single", "single runs, same packet"),
         ("cold_bpf_stats", "**cold, varied names (bpf_stats)**"),
         ("cold_test_run", "cold, varied names (test_run − floor)"), ("blocked", "blocked NXDOMAIN, single runs")]
GOAL_SIZE = 1_000_000
# Userspace and kernel memory per name, generously: a 5M-name run must not push the box into OOM.
BYTES_PER_NAME_BUDGET = 1000


def tools() -> list[str]:
    return ["dig"]


def hosts_line(i: int) -> str:
    # The same shape as guard/benches/xdp.rs's list, so both halves of this scenario agree.
    return f"0.0.0.0 host{i}.ads-{i % 977}.example{i % 13}\n"


def write_hosts(path: Path, n: int) -> int:
    with path.open("w") as f:
        for start in range(0, n, 100_000):
            f.write("".join(hosts_line(i) for i in range(start, min(n, start + 100_000))))
    return path.stat().st_size


def mem_available() -> int:
    return int(re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024


def cargo() -> str:
    return shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")


# --------------------------------------------------------------------------- the XDP bench


def xdp_bench(bench) -> list[dict]:
    args = bench.args
    out = bench.lab.workdir / "xdp-bench.jsonl"
    out.unlink(missing_ok=True)
    env = dict(os.environ, DG_BENCH_SIZES=",".join(map(str, args.sizes)), DG_BENCH_JSON=str(out))
    if args.smoke:
        env.update(DG_BENCH_ROUNDS="2", DG_BENCH_SINGLES="200")
    print(f"scenario 4: cargo bench --bench xdp at {args.sizes} names (builds the bench first)",
          file=sys.stderr, flush=True)
    r = subprocess.run([cargo(), "bench", "-q", "-p", "dns-guard", "--bench", "xdp"], cwd=C.REPO, env=env,
                       capture_output=True, text=True, timeout=3600)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    if r.returncode != 0 or [row["names"] for row in rows] != args.sizes:
        bench.failures.append(f"4: the XDP bench failed (exit {r.returncode}); stdout:\n{r.stdout[-2000:]}\n"
                              f"stderr:\n{r.stderr[-3000:]}")
    for row in rows:
        for mode, _ in MODES:
            if row.get(mode):
                row[f"{mode}_net"] = [o - f for o, f in zip(row[mode]["ours"], row[mode]["floor"])]
    return rows


# --------------------------------------------------------------------------- the real binary

_TS = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+Z)\s+\w+\s+\S+ (.*)$", re.M)


def log_times(stderr: str, message: str) -> list[tuple[float, str]]:
    """(unix time, rest of line) of every tracing line whose message starts with ``message``."""
    out = []
    for ts, rest in _TS.findall(stderr):
        if rest.startswith(message):
            out.append((datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp(), rest))
    return out


def field(line: str, name: str) -> float | None:
    m = re.search(rf'\b{name}="?([\d.]+)', line)
    return float(m.group(1)) if m else None


def binary_round(bench, path: Path, n: int) -> dict:
    cfg = bench.guard_config("clean")
    cfg["blocklists"] = [str(path)]
    t0 = time.monotonic()
    guard = bench.attach_guard("clean", lists={}, config=cfg, ready_timeout=600)
    r = {"names": n, "ready_s": time.monotonic() - t0}
    try:
        pid = guard.proc.pid
        if Path(f"/proc/{pid}/comm").read_text().strip() != "dns-guard":
            raise LabError(f"pid {pid} is not dns-guard; its memory would be someone else's")
        blocked = f"host{n - 1}.ads-{(n - 1) % 977}.example{(n - 1) % 13}"
        bench.dig_expect("scenario 4, loaded", blocked, bench.addresses["alone"], 53, "NXDOMAIN")
        bench.dig_expect("scenario 4, loaded", "good.test", bench.addresses["alone"], 53, "NOERROR")
        installed = log_times(guard.stderr(), "list table installed")
        if installed:
            line = installed[-1][1]
            r["build_install_ms"] = field(line, "load_ms")
            r["bytes_per_name"] = field(line, "bytes_per_name")
            r["kernel_bytes"] = field(line, "kernel_bytes")
        time.sleep(SETTLE_S)
        st = C.proc_status(pid)
        r["rss_mib"], r["hwm_mib"] = st["VmRSS"] / 1024, st["VmHWM"] / 1024

        touched = time.time()
        t1 = time.monotonic()
        os.utime(path)  # a new mtime: what a ConfigMap update or a rewrite looks like to the watcher
        guard.wait_stderr("dns-guard lists reloaded (generation 2)", 600, what="reload")
        r["reload_wall_s"] = time.monotonic() - t1
        log = guard.stderr()
        changed = [t for t, _ in log_times(log, "list file changed") if t >= touched - 1]
        gen2 = [t for t, line in log_times(log, "list table installed") if field(line, "generation") == 2]
        if changed and gen2:
            r["reload_work_s"] = gen2[-1] - changed[0]
        bench.dig_expect("scenario 4, reloaded", blocked, bench.addresses["alone"], 53, "NXDOMAIN")
        time.sleep(SETTLE_S)
        st = C.proc_status(pid)
        r["rss_reload_mib"], r["hwm_reload_mib"] = st["VmRSS"] / 1024, st["VmHWM"] / 1024
    finally:
        bench.detach_guard()
    return r


def binary_runs(bench) -> list[dict]:
    args = bench.args
    rounds = 1 if args.smoke else 3
    d = bench.lab.workdir / "scale"
    d.mkdir(exist_ok=True)
    rows = []
    try:
        for n in args.rss_sizes:
            need = n * BYTES_PER_NAME_BUDGET * 2  # the old and the new list side by side during a reload
            if mem_available() < need:
                bench.failures.append(f"4: {n} names need about {need / 2**30:.1f} GiB free; "
                                      f"{mem_available() / 2**30:.1f} GiB available, size skipped")
                continue
            path = d / f"hosts-{n}.txt"
            size = write_hosts(path, n)
            try:
                for rnd in range(rounds):
                    row = binary_round(bench, path, n)
                    row["file_mib"] = size / 2**20
                    rows.append(row)
                    print(f"scenario 4: {n} names, start {rnd + 1}/{rounds}: ready in {row['ready_s']:.1f} s, "
                          f"RSS {row['rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
            finally:
                path.unlink(missing_ok=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return rows


def run(bench) -> dict:
    return {"xdp": xdp_bench(bench), "binary": binary_runs(bench)}


# --------------------------------------------------------------------------- report


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n and n % 1_000_000 == 0 else f"{n // 1000}k" if n and n % 1000 == 0 else str(n)


def table(key: str, res: dict) -> list[str]:
    out = ["XDP program, ns per packet, net of the XDP_PASS floor (median (min–max) over rounds):", "",
           "| names | " + " | ".join(label for _, label in MODES) + " | kernel B/name | parse + build + fill ms |",
           "|---:|" + "---:|" * (len(MODES) + 2)]
    for row in res["xdp"]:
        cells = [C.summary(row.get(f"{m}_net", []), ".0f") if row.get(f"{m}_net") else "–" for m, _ in MODES]
        bpn = f"{row['bytes_per_name']:.2f}" if row.get("bytes_per_name") else "–"
        out.append(f"| {row['names']:,} | " + " | ".join(cells) + f" | {bpn} | {row['load_ms']:,.0f} |")
    if res["xdp"]:
        out.append("")
        out.append(f"{res['xdp'][0].get('verified_instructions', '?')} instructions verified; "
                   f"{len(res['xdp'][0]['hot']['ours'])} rounds per size.")
    out += ["", "The real binary (`dns-guard run`, XDP attached and proxy on), median (min–max) over starts:", "",
            "| names | list file MiB | start → ready s | table build + install ms (its log) | "
            "reload: touch → reloaded s | reload work s (its log) | VmRSS loaded MiB | VmHWM loaded MiB | "
            "VmRSS after reload MiB | VmHWM after reload MiB | kernel B/name |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in sorted({r["names"] for r in res["binary"]}):
        rs = [r for r in res["binary"] if r["names"] == n]
        out.append(f"| {n:,} | {C.med_cell(rs, 'file_mib', '.1f')} | {C.cell(rs, 'ready_s', '.2f')} | "
                   f"{C.cell(rs, 'build_install_ms', ',.0f')} | {C.cell(rs, 'reload_wall_s', '.2f')} | "
                   f"{C.cell(rs, 'reload_work_s', '.2f')} | {C.cell(rs, 'rss_mib')} | {C.cell(rs, 'hwm_mib')} | "
                   f"{C.cell(rs, 'rss_reload_mib')} | {C.cell(rs, 'hwm_reload_mib')} | "
                   f"{C.med_cell(rs, 'bytes_per_name', '.2f')} |")
    return out


def _at(res: dict, n: int) -> dict | None:
    return next((row for row in res["xdp"] if row["names"] == n), None)


def goals(key: str, res: dict) -> list[tuple[str, str, str | None]]:
    row = _at(res, GOAL_SIZE)
    if not row:
        return [("4: XDP cost and bytes per name at 1M names", "not measured (size not run)", None)]
    hot, cold = row.get("hot_net", []), row.get("cold_bpf_stats_net", [])
    bpn = row.get("bytes_per_name")
    return [("4: XDP, clean 4-label name, same packet repeated, 1M names ≤ 100 ns", C.summary(hot, ".0f") + " ns",
             C.judge(hot, lambda v: v <= 100)),
            ("4: XDP, varied names (cold, bpf_stats), 1M names ≤ 200 ns", C.summary(cold, ".0f") + " ns",
             C.judge(cold, lambda v: v <= 200)),
            ("4: kernel bytes per name, 1M names ≤ 12", f"{bpn:.2f}" if bpn else "n/a",
             C.judge([bpn] if bpn else [], lambda v: v <= 12))]


def panels(key: str, res: dict) -> list[dict]:
    rows = [r for r in res["xdp"]]
    out = [{"title": "4: XDP ns per packet (net of floor)", "ylabel": "ns", "groups": [_label(r["names"]) for r in rows],
            "series": {"hot": [r.get("hot_net", []) for r in rows],
                       "cold": [r.get("cold_bpf_stats_net", []) for r in rows]}}]
    sizes = sorted({r["names"] for r in res["binary"]})
    if sizes:
        by = {n: [r for r in res["binary"] if r["names"] == n] for n in sizes}
        out.append({"title": "4: dns-guard memory", "ylabel": "MiB", "groups": [_label(n) for n in sizes],
                    "series": {"VmRSS": [C.values(by[n], "rss_mib") for n in sizes],
                               "VmHWM after reload": [C.values(by[n], "hwm_reload_mib") for n in sizes]}})
    return out
