"""The forwarder benchmark's harness works: `bench_proxy.py --smoke` exits 0.

The smoke run asserts answers (the right address from every case, AD only on the validated
signed-zone answers, no loss in the latency rounds); it never asserts timings. It builds its
own lab and hierarchy, so it does not use the session fixtures.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import hierarchy as H
from conftest import _unavailable, require_root
from lab import DEFAULT_BIN

pytestmark = pytest.mark.needs_guard

BENCH = Path(__file__).resolve().parent / "bench_proxy.py"


def test_bench_proxy_smoke():
    require_root()
    binary = Path(os.environ.get("DNS_GUARD_BIN", DEFAULT_BIN))
    if not binary.exists():
        _unavailable(f"{binary} is not built (cargo build --release)")
    missing = H.missing_tools()
    if missing:
        _unavailable(f"missing {' '.join(missing)} (scripts/setup.sh)")
    r = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}"
    for row in ("| B vs A |", "| C vs E |", "| D vs A |"):
        assert row in r.stdout, r.stdout
