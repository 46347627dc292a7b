"""The forwarder benchmark's harness works: `bench_proxy.py --smoke` exits 0.

The smoke run asserts answers (the right address from every case, the bare relay, dnsdist
and an ``--alt`` build included, AD only on the validated signed-zone answers, no loss in the latency
rounds); it never asserts timings. It builds its
own lab and hierarchy, so it does not use the session fixtures.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

import hierarchy as H
from conftest import _unavailable, require_root, run_lab_script
from lab import DEFAULT_BIN

pytestmark = pytest.mark.needs_guard

BENCH = Path(__file__).resolve().parent / "bench_proxy.py"


def test_bench_proxy_smoke():
    require_root()
    binary = Path(os.environ.get("DNS_GUARD_BIN", DEFAULT_BIN))
    if not binary.exists():
        _unavailable(f"{binary} is not built (cargo build --release)")
    missing = H.missing_tools() + ([] if shutil.which("dnsdist") else ["dnsdist"])
    if missing:
        _unavailable(f"missing {' '.join(missing)} (scripts/setup.sh)")
    # --relay (the bare relay, built by cargo), --dnsdist (a peer forwarder) and --alt (another
    # build; here the same one) are what the docs' runs use: their cases must answer too.
    r = run_lab_script([sys.executable, str(BENCH), "--smoke", "--relay", "--dnsdist", "--alt", f"same={binary}"],
                       timeout=600)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}"
    for row in ("| B vs A |", "| C vs E |", "| D vs A |", "| R vs A |", "| D vs R |", "| P vs A |", "| F vs D |"):
        assert row in r.stdout, r.stdout
