"""The round-trip benchmark's harness works: `bench_roundtrip.py --smoke` exits 0.

The smoke run asserts answers (NXDOMAIN from XDP, NXDOMAIN and NOERROR from the resolver)
and that the resolver never handled the blocklisted queries; it never asserts timings.
It builds its own lab, so it does not use the session lab fixture.
"""

import os
import sys
from pathlib import Path

import pytest

from conftest import _unavailable, require_root, run_lab_script
from lab import DEFAULT_BIN

pytestmark = pytest.mark.needs_guard

BENCH = Path(__file__).resolve().parent / "bench_roundtrip.py"


def test_bench_roundtrip_smoke():
    require_root()
    binary = Path(os.environ.get("DNS_GUARD_BIN", DEFAULT_BIN))
    if not binary.exists():
        _unavailable(f"{binary} is not built (cargo build --release)")
    r = run_lab_script([sys.executable, str(BENCH), "--smoke"], timeout=300)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}"
    assert "| **A/B** |" in r.stdout, r.stdout
