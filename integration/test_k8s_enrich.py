"""Kubernetes enrichment with the real binary, kernel and lab: XDP verdict lines name the client's pod.

No Kubernetes API server runs here, so k8s_fake_api.py stands in for it with canned pod lists
(the Rust test guard/tests/k8s_enrich.rs covers watch events against the same fixtures). It runs
in the coredns pod's network namespace, where dns-guard reaches it at 127.0.0.1 through KUBECONFIG
(`kubernetes.enrich: on`, which also accepts a kubeconfig; `auto` needs a service account token).
"""

import re
import signal
import sys
from pathlib import Path

import pytest

from lab import _stop_pid, _wait_for, v4, v6

pytestmark = pytest.mark.needs_guard

LISTS = {"block.txt": "||blocked.test^\n"}
CART = "shop/cart-5f9c7d8b6-qwert"


def kubeconfig(lab, port: int):
    path = lab.workdir / f"kubeconfig-{port}"
    path.write_text(f"""\
apiVersion: v1
kind: Config
clusters: [{{name: lab, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: lab, user: {{}}}}]
contexts: [{{name: lab, context: {{cluster: lab, user: lab}}}}]
current-context: lab
""")
    return path


@pytest.fixture
def fake_api(lab):
    """Factory: fake_api(*pods) starts the stand-in API in the coredns pod and returns its port and
    a reader of its request log. The coredns pod outlives the test, so teardown stops it by pid."""
    procs = []

    def start(*pods: str):
        out = lab.workdir / "k8s-api.out"
        err = lab.workdir / "k8s-api.err"
        out.unlink(missing_ok=True)  # spawn appends: an earlier run's line must not count
        err.unlink(missing_ok=True)
        fake = Path(__file__).resolve().parent / "k8s_fake_api.py"
        procs.append(lab.spawn("coredns", [sys.executable, str(fake), *pods], "k8s-api", stdout=out, stderr=err))
        line = _wait_for(lambda: re.search(r"listening on (\d+)", out.read_text()) if out.exists() else None, 10)
        assert line, f"the stand-in API server did not start: {err.read_text()[-1000:] if err.exists() else ''}"
        return int(line.group(1)), lambda: err.read_text().splitlines()

    yield start
    for proc in procs:
        _stop_pid(proc, signal.SIGTERM, 3)


def blocked(lab, guard, client, server, name):
    r = lab.dig(client, name, server)
    assert r.status == "NXDOMAIN", r.raw
    v = guard.wait_verdict(qname=name)
    assert v and v["layer"] == "xdp" and v["verdict"] == "block", (v, guard.verdicts())
    return v


def test_xdp_verdicts_name_the_client_pod(lab, fake_api, start_guard, monkeypatch):
    # fake_api before start_guard: teardown stops the guard first, then the API it watches.
    port, requests = fake_api(f"{v4('c1')},{v6('c1')}={CART}")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(lab, port)))
    guard = start_guard({"kubernetes": {"enrich": "on"}}, LISTS)
    guard.wait_stderr("pod cache synced", 10)

    for server in (v4("coredns"), v6("coredns")):
        v = blocked(lab, guard, "c1", server, f"c1-{len(server)}.blocked.test")
        assert (v["pod_namespace"], v["pod_name"]) == tuple(CART.split("/")), v
    # c2 is no pod the API knows: the line goes out without pod fields.
    v = blocked(lab, guard, "c2", v4("coredns"), "c2.blocked.test")
    assert "pod_namespace" not in v and "pod_name" not in v, v
    assert requests()[0].startswith("/api/v1/pods?") and "watch=true" not in requests()[0], requests()
    assert _wait_for(lambda: any("watch=true" in r for r in requests()), 5), requests()


def test_an_unreachable_api_leaves_enforcement_alone(lab, start_guard, monkeypatch):
    # Nothing listens on port 1 inside the coredns pod's fresh network namespace.
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(lab, 1)))
    guard = start_guard({"kubernetes": {"enrich": "on"}}, LISTS)
    guard.wait_stderr("pod watch failed", 10)
    v = blocked(lab, guard, "c1", v4("coredns"), "down.blocked.test")
    assert "pod_name" not in v, v
    assert guard.alive()
