"""The lab itself, without dns-guard: if these fail, no other result in this directory means anything."""

import sys

import pytest

from conftest import run_lab_script
from lab import GOOD_V4, GOOD_V6, v4, v6


@pytest.mark.parametrize("client", ["c1", "c2"])
@pytest.mark.parametrize("server", [v4("coredns"), v6("coredns")], ids=["ipv4", "ipv6"])
def test_resolution_through_coredns_pod(lab, client, server):
    r = lab.dig(client, "good.test", server)
    assert r.status == "NOERROR", r.raw
    assert r.addresses == [GOOD_V4]
    aaaa = lab.dig(client, "good.test", server, qtype="AAAA")
    assert aaaa.addresses == [GOOD_V6], aaaa.raw


def test_tcp_to_resolver(lab):
    # Truncation tests depend on the resolver answering over TCP.
    r = lab.dig("c1", "tcp.example.test", v4("coredns"), "+tcp")
    assert r.status == "NOERROR" and r.addresses, r.raw


def test_resolver_logs_queries(lab):
    lab.dig("c1", "logged.example.test")
    assert lab.resolver_saw("logged.example.test")
    assert not lab.resolver_saw("never-asked.example.test")


def test_names_outside_lab_zone_stay_inside(lab):
    # The upstream has no forwarders: anything outside .test is refused (unbound reports
    # SERVFAIL), and the only server that was asked is the lab's upstream.
    assert lab.dig("c1", "outside.example.com").status in ("REFUSED", "SERVFAIL")
    lab.resolver_barrier()
    assert any(n == "outside.example.com" for _, n, _ in lab.upstream.queries())


def test_dnsperf_baseline(lab):
    res = lab.dnsperf("c2", v4("coredns"), ["good.test", "a.example.test"], duration=1, qps=200)
    assert res.lost == 0 and res.rcodes == {"NOERROR": res.completed}, res


def test_sniffer_sees_malformed_without_guard(lab):
    with lab.sniff("coredns") as seen:
        lab.scapy("c1", "malformed", "--dst", v4("coredns"), "--sport-base", "45000",
                  "--out", str(lab.workdir / "lab-malformed.json"))
    assert {s["sport"] for s in seen} >= set(range(45000, 45006)), seen


# A stand-in for a bench script: says it is up, then outlives any timeout. With "trap" it
# tears down on SIGTERM (writes the marker) like the bench scripts' handlers; without, it
# ignores SIGTERM and only SIGKILL ends it.
_SLOW_SCRIPT = """
import signal, sys, time
def down(*_):
    open(sys.argv[1], "w").write("torn down")
    sys.exit(143)
signal.signal(signal.SIGTERM, down if sys.argv[2] == "trap" else signal.SIG_IGN)
print("up", flush=True)
time.sleep(120)
"""


def test_lab_script_timeout_lets_its_teardown_run(tmp_path):
    marker = tmp_path / "down"
    with pytest.raises(pytest.fail.Exception) as failed:
        run_lab_script([sys.executable, "-c", _SLOW_SCRIPT, str(marker), "trap"], timeout=3, grace=10)
    assert marker.read_text() == "torn down", "SIGKILLed before its SIGTERM handler ran"
    msg = str(failed.value)
    assert "timeout" in msg and "exited 143" in msg and "stdout:\nup" in msg, msg


def test_lab_script_ignoring_sigterm_is_killed_after_grace(tmp_path):
    marker = tmp_path / "down"
    with pytest.raises(pytest.fail.Exception) as failed:
        run_lab_script([sys.executable, "-c", _SLOW_SCRIPT, str(marker), "ignore"], timeout=3, grace=1)
    assert not marker.exists()
    assert "SIGKILL" in str(failed.value), failed.value
