"""The issue-5 benchmark harness works: `bench/peers.py --smoke` runs every scenario and exits 0.

The smoke run checks answers, never timings. Before measuring, each configuration must answer
a clean name and block bl.test its own way; dns-guard's proxy must be in CoreDNS's forward path
(a cache miss raises its verdict count); on the cache-miss path (3) both validating forwarders
answer SERVFAIL for a bogus signed name and the plain path does not; every measurement's
answers carry the expected rcode (NOERROR for clean traffic, NXDOMAIN for blocked names,
with CoreDNS's own request counter showing it never saw the names XDP answered); scenario 4's
XDP bench writes a row per list size and the real binary blocks the list's last name before
and after a reload. Any of these going wrong makes the harness exit 1. The test then checks
that every scenario's table, the goals, the chart and the docs section came out, and that the
docs file changed only between its markers. It builds its own lab, so it does not use the
session lab fixture.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

import coredns
import hierarchy
from conftest import _unavailable, require_root, run_lab_script
from lab import DEFAULT_BIN

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
BENCH = BENCH_DIR / "peers.py"
sys.path.insert(0, str(BENCH_DIR))

import report  # noqa: E402  (bench/report.py)

DOC = f"""# Title

Hand-written introduction.

{report.BEGIN}
old generated text
{report.END}

## Analysis

Hand-written analysis that must survive.
"""


def test_docs_section_is_replaced_between_the_markers_only(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC)
    report.write_docs(doc, "## New\n\n| a |\n", None)
    text = doc.read_text()
    assert "old generated text" not in text
    assert f"{report.BEGIN}\n## New\n\n| a |\n{report.END}" in text
    assert text.startswith("# Title\n\nHand-written introduction.\n\n")
    assert text.endswith("## Analysis\n\nHand-written analysis that must survive.\n")
    # Run twice: the markers stay, one pair.
    report.write_docs(doc, "## Newer\n", None)
    assert doc.read_text().count(report.BEGIN) == 1 and "## New\n\n| a |" not in doc.read_text()

    missing = tmp_path / "no-markers.md"
    missing.write_text("# nothing to replace\n")
    with pytest.raises(SystemExit, match="markers"):
        report.write_docs(missing, "x", None)
    assert missing.read_text() == "# nothing to replace\n"


@pytest.mark.needs_guard
def test_peer_bench_smoke_runs_every_scenario(tmp_path):
    require_root()
    binary = Path(os.environ.get("DNS_GUARD_BIN", DEFAULT_BIN))
    if not binary.exists():
        _unavailable(f"{binary} is not built (cargo build --release)")
    if coredns.available():
        _unavailable(coredns.available())
    missing = [t for t in ["dnsdist", "dnsperf", *hierarchy.TOOLS] if not shutil.which(t)]
    if missing:
        _unavailable(f"missing {' '.join(missing)} (scripts/setup.sh)")
    chart = tmp_path / "peers.png"
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC)
    # Scenario 4 builds guard/benches/xdp.rs first (a few minutes on a cold target/).
    r = run_lab_script([sys.executable, str(BENCH), "--smoke", "--chart", str(chart), "--docs", str(doc)],
                       timeout=1500)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-6000:]}"
    out = r.stdout
    for heading in ("### 1.", "### 2a.", "### 2b.", "### 2c.", "### 3.", "### 4.", "### 5."):
        assert heading in out, out
    for row in ("| **guard/coredns** |", "| **guard/dnsdist** |", "| **dnsdist/coredns** |",
                "| **guard vs coredns** |", "| **unbound vs coredns** |",
                "| 1,000 |",  # scenario 4: the XDP bench's row at 1000 names
                "| 10,000 |",  # scenario 4: the real binary with a 10k-name list
                "| goal (issue 5) | measured | met |"):
        assert row in out, out
    assert "python3 bench/peers.py --smoke" in out, "the exact command is recorded"
    assert chart.stat().st_size > 0
    text = doc.read_text()
    assert "old generated text" not in text and "### 3. Cache-miss path" in text
    assert text.startswith("# Title\n\nHand-written introduction.\n\n")
    assert text.endswith("## Analysis\n\nHand-written analysis that must survive.\n")

    # The raw rounds are kept beside the docs, and the report can be written again from them.
    raw = tmp_path / "peers-results.json"
    again = tmp_path / "again" / "benchmarks.md"
    again.parent.mkdir()
    again.write_text(DOC)
    r = run_lab_script([sys.executable, str(BENCH), "--render", str(raw), "--docs", str(again),
                        "--chart", str(again.with_name("peers.png"))], timeout=300)
    assert r.returncode == 0, r.stderr
    strip = lambda t: t.replace(" Tables re-rendered from that run's raw results (`--render`), not re-measured.", "")
    assert strip(again.read_text()) == text
