"""The README's first command ends in demo.py: it must keep doing what the README says.

demo.py builds its own lab and checks each thing it narrates (a blocked name answered by the
kernel and unseen by the resolver, a flood limited while the other client is not, verdict
lines naming both); here it runs as a user would run it, and its output is checked too.
"""

import json
import os
import sys

import pytest

from conftest import require_root, run_lab_script
from lab import v4

pytestmark = pytest.mark.needs_guard

HERE = os.path.dirname(os.path.abspath(__file__))


def test_the_readme_demo_shows_blocks_a_limited_flood_and_the_verdict_log():
    require_root()
    r = run_lab_script([sys.executable, os.path.join(HERE, "demo.py")], timeout=180)
    assert r.returncode == 0, f"demo.py exited {r.returncode}\nstdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    assert "done: every claim above held" in r.stdout, r.stdout[-4000:]
    out = r.stdout
    lines = out.splitlines()
    asked = next(i for i, line in enumerate(lines) if line.endswith(f"dig @{v4('coredns')} ads.example.test"))
    assert lines[asked + 1].strip().startswith("status: NXDOMAIN"), lines[asked:asked + 2]
    assert "resolver saw ads.example.test? False" in out, out
    verdicts = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
    kinds = {v["verdict"] for v in verdicts}
    assert {"block", "ratelimit"} <= kinds, f"the demo's verdict log shows only {kinds}"
