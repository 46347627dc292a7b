"""Userspace memory of `dns-guard run` across list reloads, one or more builds side by side.

Each build, in turn and for `--rounds` rounds, attaches XDP (generic) to a veth in its own
network namespace with a hosts-format blocklist of `--names` names, then rewrites the list's
mtime `--reloads` times. VmRSS is read `--settle` seconds after ready and after each reload
(the heap is trimmed 2 s after a load); VmHWM is the peak. No traffic is sent.

    python3 bench/reload_rss.py [--names 1000000] [--reloads 7] BIN [BIN ...]   # as root
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NETNS = "dgrss"
PIN_DIR = Path("/sys/fs/bpf/dgrss")


def status(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}


def wait_for(path: Path, needle: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while needle not in path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"no {needle!r} from dns-guard:\n{path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)


def one_run(binary: str, work: Path, reloads: int, settle: float) -> list[dict[str, int]]:
    cfg = work / "guard.yaml"
    cfg.write_text(f"interface: vrss0\nxdp:\n  mode: generic\n  pin_dir: {PIN_DIR}\n"
                   f"blocklists: [{work / 'hosts.txt'}]\nmetrics:\n  listen: 127.0.0.1:9911\n")
    err = work / "stderr.log"
    PIN_DIR.mkdir(exist_ok=True)
    # nsenter --net only: `ip netns exec` would remount /sys and hide /sys/fs/bpf.
    with err.open("w") as e:
        proc = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{NETNS}", binary, "run", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=e)
    try:
        wait_for(err, "dns-guard ready", proc)
        time.sleep(settle)
        rows = [status(proc.pid)]
        for gen in range(2, reloads + 2):
            os.utime(work / "hosts.txt")
            wait_for(err, f"lists reloaded (generation {gen})", proc)
            time.sleep(settle)
            rows.append(status(proc.pid))
        return rows
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "-n", NETNS, "link", "set", "vrss0", "xdp", "off"], check=False)
        shutil.rmtree(PIN_DIR, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--reloads", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settle", type=float, default=4.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (a network namespace, XDP, bpffs)")
    work = Path(tempfile.mkdtemp(prefix="dgrss-"))
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(["ip", "link", "add", "vrss0", "netns", NETNS, "type", "veth", "peer", "name", "vrss1",
                        "netns", NETNS], check=True)
        for link in ("vrss0", "vrss1", "lo"):
            subprocess.run(["ip", "-n", NETNS, "link", "set", link, "up"], check=True)
        with (work / "hosts.txt").open("w") as f:  # the shape of bench/s4_scale.py's lists
            f.writelines(f"0.0.0.0 host{i}.ads-{i % 977}.example{i % 13}\n" for i in range(args.names))
        runs: dict[str, list[list[dict[str, int]]]] = {b: [] for b in args.binaries}
        for rnd in range(args.rounds):
            for b in args.binaries:
                runs[b].append(one_run(b, work, args.reloads, args.settle))
                print(f"round {rnd + 1}: {b} done", file=sys.stderr, flush=True)
        print(f"{args.names:,} names, {args.reloads} reloads, {args.rounds} rounds; MiB, median over rounds\n")
        print("| build | VmRSS loaded | VmRSS after 1 reload | VmRSS after last reload | VmHWM |")
        print("|---|---:|---:|---:|---:|")
        for b, rs in runs.items():
            med = [statistics.median(r[i]["VmRSS"] for r in rs) / 1024 for i in (0, 1, -1)]
            hwm = statistics.median(r[-1]["VmHWM"] for r in rs) / 1024
            print(f"| {b} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.0f} | {hwm:.0f} |")
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
