"""The peers benchmark's harness works: `bench/peers.py --smoke` exits 0.

The smoke run checks that each configuration (CoreDNS alone, dnsdist in front of it,
dns-guard) answers a clean name and blocks bl.test its own way, that every scenario ran
(the attacker sent, the legitimate client got answers to clean traffic) and that a table
and a chart come out. It never asserts timings. It builds its own lab, so it does not use
the session lab fixture.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import coredns
from conftest import _unavailable, require_root
from lab import DEFAULT_BIN

pytestmark = pytest.mark.needs_guard

BENCH = Path(__file__).resolve().parent.parent / "bench" / "peers.py"


def test_peer_bench_smoke(tmp_path):
    require_root()
    binary = Path(os.environ.get("DNS_GUARD_BIN", DEFAULT_BIN))
    if not binary.exists():
        _unavailable(f"{binary} is not built (cargo build --release)")
    if coredns.available():
        _unavailable(coredns.available())
    if not shutil.which("dnsdist"):
        _unavailable("dnsdist missing (Debian package dnsdist; scripts/setup.sh)")
    chart = tmp_path / "peers.png"
    r = subprocess.run([sys.executable, str(BENCH), "--smoke", "--chart", str(chart)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}"
    for row in ("| 2a | **guard/coredns** |", "| 2b | **guard/dnsdist** |", "| 1 | **guard/coredns** |"):
        assert row in r.stdout, r.stdout
    assert chart.stat().st_size > 0
