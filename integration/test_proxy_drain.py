"""SIGTERM drain of the validating forwarder, end to end: queries in flight to a slow upstream
when SIGTERM lands still get their answers, new ones are not taken, and dns-guard exits within
the drain grace period (admin.rs DRAIN_GRACE, 10 s; below Kubernetes's 30 s)."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

import hierarchy as H
from lab import _stop_pid, _wait_for, http_get, parse_dig

DRAIN_GRACE_S = 10.0  # guard/src/admin.rs DRAIN_GRACE
SLOW_UP = "198.18.0.64"  # a relay holding each exchange DELAY s: the queries are in flight
DELAY = 2.0


@pytest.fixture
def slow_upstream(lab, hierarchy):
    lab.add_pod("drainup", [64], v6=False)
    proc = lab.spawn("drainup", [sys.executable, str(H.HERE / "hierarchy.py"), "serve", "--mode", "relay",
                                 "--listen", SLOW_UP, "--to", H.REC, "--delay", str(DELAY)], "drain-relay")
    try:
        ok = _wait_for(lambda: lab.dig("c1", "www.unsigned.lab", SLOW_UP, "+timeout=4").status == "NOERROR", 15, 0.2)
        assert ok, f"slow relay never answered: {(lab.workdir / 'drain-relay.err').read_text()[-1000:]}"
        yield SLOW_UP
    finally:
        _stop_pid(proc, signal.SIGTERM, 3)
        lab.remove_pod("drainup")


def _dig(lab, name: str, timeout: int) -> subprocess.Popen:
    argv = ["dig", f"@{H.PROXY_ADDR}", "-p", str(H.PROXY_PORT), name, "A", "+tries=1", f"+timeout={timeout}"]
    return subprocess.Popen(lab._nsenter("c1", argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.needs_guard
def test_sigterm_drains_in_flight_queries(lab, hierarchy, start_proxy, slow_upstream):
    # dnssec off: validating would add DS/DNSKEY exchanges through the slow relay, each DELAY s.
    guard = start_proxy(hierarchy.proxy_config(upstreams=[slow_upstream], timeout_ms=5000, anchor=None,
                                               dnssec="off"))
    pid = guard.proc.pid
    assert open(f"/proc/{pid}/comm").read().startswith("dns-guard")
    names = ["www.unsigned.lab", "x.wild.unsigned.lab", "www.signed.lab", "x.wild.signed.lab"]
    digs = [(n, _dig(lab, n, 8)) for n in names]
    time.sleep(0.7)  # the proxy has read them all and is waiting on the relay (DELAY s)
    os.kill(pid, signal.SIGTERM)
    t_term = time.monotonic()
    time.sleep(0.3)
    late = _dig(lab, "y.wild.unsigned.lab", 2)  # after SIGTERM: must not be taken

    try:
        results = [(n, parse_dig(p.communicate(timeout=15)[0], p.returncode)) for n, p in digs]
        late_r = parse_dig(late.communicate(timeout=10)[0], late.returncode)
        rc = guard.proc.wait(timeout=DRAIN_GRACE_S + 5)
    finally:
        for _, p in digs + [("late", late)]:
            if p.poll() is None:
                p.kill()
    exited_after = time.monotonic() - t_term

    lost = [(n, r.status, r.raw[-300:]) for n, r in results if r.status != "NOERROR" or r.addresses != [H.A[n]]]
    assert not lost, f"in-flight queries lost their answers in the drain: {lost}"
    assert late_r.status is None, f"a query sent after SIGTERM was answered:\n{late_r.raw}"
    assert rc == 0, f"dns-guard exited {rc}:\n{guard.stderr_tail()}"
    assert exited_after < DRAIN_GRACE_S, f"exit {exited_after:.1f}s after SIGTERM (grace {DRAIN_GRACE_S}s)"
    # It waited for the in-flight answers (the relay holds each DELAY s), not just exited.
    assert exited_after > DELAY - 0.7 - 0.5, f"exited {exited_after:.1f}s after SIGTERM: did it drain?"
    # app.rs logs `info!(abandoned, "drained")` on every exit, so "drained" alone proves nothing:
    # the count must be zero (a query still in flight at the grace deadline would be abandoned).
    assert re.search(r"drained abandoned=0\b", guard.stderr()), guard.stderr_tail()


@pytest.mark.needs_guard
def test_sigterm_keeps_answering_through_the_lameduck(lab, hierarchy, start_proxy):
    """The kubelet sends SIGTERM to CoreDNS and the sidecar at once, and CoreDNS's `health {
    lameduck 5s }` goes on forwarding to us meanwhile: the sidecar answers for
    proxy.lameduck_s too, unready, and only then drains and exits. The lab sets 0 elsewhere."""
    lameduck = 3
    guard = start_proxy(hierarchy.proxy_config(dnssec="off", anchor=None, lameduck_s=lameduck))
    ready = f"http://{guard.admin_addr()}/readyz"
    assert http_get(lab, guard.pod, ready)[0] == 200
    os.kill(guard.proc.pid, signal.SIGTERM)
    t_term = time.monotonic()
    try:
        assert _wait_for(lambda: http_get(lab, guard.pod, ready)[0] == 503, 2, 0.1), \
            f"not unready (503) within 2 s of SIGTERM (alive: {guard.alive()}): the Service would keep sending queries"
        time.sleep(1.0)
        r = lab.dig("c1", "www.unsigned.lab", H.PROXY_ADDR, "-p", str(H.PROXY_PORT), "+tries=1", "+timeout=2")
        answered_at = time.monotonic() - t_term
        assert guard.alive(), f"exited {answered_at:.1f}s into a {lameduck}s lameduck:\n{guard.stderr_tail()}"
        assert (r.status, r.addresses) == ("NOERROR", [H.A["www.unsigned.lab"]]), r.raw
        rc = guard.proc.wait(timeout=lameduck + DRAIN_GRACE_S + 5)
    finally:
        if guard.alive():
            guard.proc.kill()
    exited_after = time.monotonic() - t_term
    assert rc == 0, f"dns-guard exited {rc}:\n{guard.stderr_tail()}"
    assert lameduck - 0.3 < exited_after < lameduck + 3, f"exited {exited_after:.1f}s after SIGTERM"
    assert "still answering for proxy.lameduck_s" in guard.stderr(), guard.stderr_tail()


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler (bit 15 of SigCgt in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.needs_guard
def test_a_sigterm_during_startup_is_handled(lab, hierarchy, guard_binary):
    """dns-guard is PID 1 in its container, and the kernel discards a signal sent to a
    namespace's init that has no handler: a SIGTERM while the lists load would be lost and the
    pod would wait for SIGKILL. The handler must be there from the start, long before ready
    (a large list makes start-up last); the stop then waits for start-up, drains, exits 0."""
    names = "".join(f"n{i}.startup.test\n" for i in range(600_000))
    guard = lab.prepare_guard(hierarchy.proxy_config(dnssec="off", anchor=None), {"block.txt": names})
    try:
        guard.spawn()
        pid = guard.proc.pid
        assert _wait_for(lambda: guard.proc.poll() is not None or _catches_sigterm(pid), 10, 0.005), \
            f"no SIGTERM handler within 10 s:\n{guard.stderr_tail()}"
        assert "dns-guard ready" not in guard.stderr(), \
            "the SIGTERM handler came only after start-up: a SIGTERM while starting would be lost as PID 1"
        os.kill(pid, signal.SIGTERM)
        rc = guard.proc.wait(timeout=30)
    finally:
        if guard.alive():
            guard.proc.kill()
    assert rc == 0, f"dns-guard exited {rc} on a SIGTERM during start-up:\n{guard.stderr_tail()}"
    assert re.search(r"drained abandoned=0\b", guard.stderr()), guard.stderr_tail()


@pytest.mark.needs_guard
def test_sigterm_during_a_reload_turns_unready_at_once(lab, hierarchy, start_proxy):
    """A reload of a large list keeps the main loop busy for a second or more; a SIGTERM then
    must still turn /readyz 503 at once, so the Service stops sending queries before the
    reload ends."""
    names = lambda tag: "".join(f"{tag}{i}.reload.test\n" for i in range(1_000_000))
    guard = start_proxy(hierarchy.proxy_config(dnssec="off", anchor=None), {"block.txt": names("a")},
                        ready_timeout=60)
    ready = f"http://{guard.admin_addr()}/readyz"
    assert http_get(lab, guard.pod, ready)[0] == 200
    (guard.dir / "lists" / "block.txt").write_text(names("b"))
    guard.wait_stderr("list file changed", 10, "the reload's start")
    os.kill(guard.proc.pid, signal.SIGTERM)
    try:
        code = http_get(lab, guard.pod, ready)[0]
        reloaded = "lists reloaded" in guard.stderr()
        rc = guard.proc.wait(timeout=DRAIN_GRACE_S + 20)
    finally:
        if guard.alive():
            guard.proc.kill()
    assert not reloaded, "the reload ended before /readyz was asked: nothing tested (a faster machine?)"
    assert code == 503, f"/readyz answered {code} after SIGTERM, while the reload ran"
    assert rc == 0, guard.stderr_tail()
