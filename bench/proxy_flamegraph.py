"""Flame graphs of the validating forwarder under load, and where its CPU goes.

One lab and the private hierarchy (integration/hierarchy.py), as in integration/bench_proxy.py.
For each mode, a dns-guard proxy (no XDP, ``log.allow_sample: 0``) forwards to the hierarchy's
Unbound while dnsperf in c1 sends it names nobody asked before, at full speed; ``perf record
--call-graph dwarf`` samples the proxy meanwhile, and inferno draws the flame graph:

  off       ``dnssec: off``, names under wild.unsigned.lab: the forwarding path alone;
  validate  ``dnssec: validate`` with the private root's anchor, names under wild.signed.lab
            (NSEC3, wildcard answers): every answer costs two signature checks.

It prints the share of the proxy's samples under a few frames (validation, ring's P-256 code,
the socket syscalls), so the reading in docs/benchmarks.md can be checked against a new run.

    python3 bench/proxy_flamegraph.py                 # both modes, SVGs into docs/
    python3 bench/proxy_flamegraph.py --modes validate --seconds 8 --out /tmp

Needs root, perf and inferno (``cargo install inferno --locked``). Run it on an idle machine:
perf's unwinding costs the proxy throughput, so the QPS printed is not a benchmark result.
Traffic stays inside the lab; the lab is torn down on exit.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "integration"))

import hierarchy as H  # noqa: E402
from lab import Lab, LabError  # noqa: E402

MODES = {"off": "unsigned.lab", "validate": "signed.lab"}
# Frame substrings whose share of all samples is printed (a sample counts once per row).
SHARES = [
    ("validation (hickory, under Validator::validate)", "dns_guard::proxy::dnssec::Validator::validate"),
    ("ring P-256 verification", "EcdsaVerificationAlgorithm"),
    ("  of which ring's constant-time point multiply", "p256_point_mul;"),
    ("upstream exchange (socket, send, receive)", "dns_guard::proxy::upstream::Upstreams::udp_exchange"),
    ("all sendto (query upstream, reply to client)", "__libc_sendto"),
    ("parsing and encoding (hickory-proto Message)", "hickory_proto::op::message::Message::"),
    ("malloc (every frame named *malloc*)", "malloc"),
]


def folded_shares(folded: str) -> tuple[int, list[tuple[str, float]]]:
    """Total weight and, per SHARES row, the percentage of it whose stack has the frame. perf's
    cpu-clock weighs each sample by its period, so the total is nanoseconds of CPU sampled."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        for label, frame in SHARES:
            if frame in stack + ";":
                counts[label] += int(n)
    return total, [(label, 100.0 * counts[label] / max(1, total)) for label, _ in SHARES]


def record(lab: Lab, guard, port: int, zone: str, seconds: float, freq: int, tag: str) -> tuple[Path, float]:
    data = lab.workdir / f"perf-{tag}.data"
    names = [f"fg{tag[0]}{i}.wild.{zone}" for i in range(int(seconds * 40_000))]
    perf = subprocess.Popen(["perf", "record", "--call-graph", "dwarf,16384", "-F", str(freq),
                             "-p", str(guard.proc.pid), "-o", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # perf attached before the load starts
        res = lab.dnsperf("c1", H.PROXY_ADDR, names, duration=seconds, clients=4, timeout=2,
                          outstanding=50, extra=["-p", str(port), "-n", "1"])
    finally:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
    if set(res.rcodes) != {"NOERROR"}:
        raise LabError(f"{tag}: want only NOERROR under load, got {res.rcodes}")
    return data, res.qps


def render(data: Path, svg: Path, title: str) -> str:
    script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, check=True).stdout
    folded = subprocess.run(["inferno-collapse-perf"], input=script, capture_output=True, check=True).stdout
    svg.write_bytes(subprocess.run(["inferno-flamegraph", "--title", title, "--minwidth", "0.2"],
                                   input=folded, capture_output=True, check=True).stdout)
    return folded.decode()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modes", default="off,validate", help="comma-separated, from off,validate")
    p.add_argument("--seconds", type=float, default=5, help="seconds of load per mode (default 5)")
    p.add_argument("--freq", type=int, default=999, help="perf sampling frequency, Hz (default 999)")
    p.add_argument("--out", type=Path, default=REPO / "docs", help="where the SVGs go (default docs/)")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES) or args.seconds <= 0 or args.freq <= 0:
        p.error(f"--modes takes {','.join(MODES)}; --seconds and --freq must be positive")
    if os.geteuid() != 0:
        print("proxy_flamegraph.py needs root (network namespaces, perf -p)", file=sys.stderr)
        return 2
    missing = [t for t in ("perf", "inferno-collapse-perf", "inferno-flamegraph") if not shutil.which(t)]
    missing += H.missing_tools()
    if missing:
        print(f"proxy_flamegraph.py needs {' '.join(missing)} (perf: apt install linux-perf; "
              f"inferno: cargo install inferno --locked; the rest: scripts/setup.sh)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still tears the lab down
    args.out.mkdir(parents=True, exist_ok=True)
    with Lab() as lab, H.Hierarchy(lab) as h:
        for i, mode in enumerate(modes):
            port = H.PROXY_PORT + i
            cfg = h.proxy_config(listen=f"{H.PROXY_ADDR}:{port}", dnssec=mode,
                                 anchor="dnskey" if mode == "validate" else None)
            cfg["log"] = {"allow_sample": 0}  # the production default
            cfg["metrics"] = {"listen": "127.0.0.1:0"}
            guard = lab.start_guard(cfg)
            if not guard.proxy_listening(5.0):
                raise LabError(f"proxy ({mode}) did not start:\n{guard.stderr_tail()}")
            # The zone's DS/DNSKEY chain into the proxy's cache before sampling.
            lab.dig("c1", f"warm.wild.{MODES[mode]}", H.PROXY_ADDR, "-p", str(port))
            data, qps = record(lab, guard, port, MODES[mode], args.seconds, args.freq, mode)
            svg = args.out / f"proxy-flamegraph-{mode}.svg"
            folded = render(data, svg, f"dns-guard proxy, dnssec: {mode}, unique names at full speed")
            total, shares = folded_shares(folded)
            print(f"\n{mode}: {svg} ({total / 1e9:.1f} s of the proxy's CPU sampled at {args.freq} Hz, "
                  f"{qps:,.0f} QPS under perf)")
            for label, pct in shares:
                print(f"  {pct:5.1f} %  {label}")
            guard.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
