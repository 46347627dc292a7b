"""Cache poisoning against the real CoreDNS, with and without dns-guard (poison_demo.py).

An off-path racer (racer.py) triggers CoreDNS cache misses for fresh names and floods CoreDNS
with answers forged from the upstream's address, every txid spread over the coredns pod's source
ports, narrowed to four (the same fair chance in every setup). One lab run, three setups, the
same budget of names and forged packets; the summary table is printed to stderr.

What protects each setup (the zone is unsigned, so DNSSEC plays no part):

    coredns       nothing but a 16-bit txid and a port it reuses: it must be poisoned, or the
                  attack is not real and the other results mean nothing
    guard-checks  dns-guard's checks alone (TCP switch off): source address and port, txid,
                  a fresh random port per query, and the 0x20 case of a 22-letter name; the
                  right-txid forgeries CoreDNS alone would have taken are refused for their case
    guard         the default config: the same checks, and after 10 refused responses the
                  upstream is asked over TCP, where an off-path racer cannot answer at all
"""

from __future__ import annotations

import contextlib

import pytest

import coredns
import lab as labmod
import poison_demo as demo
from conftest import _unavailable, require_root

pytestmark = pytest.mark.needs_guard


@pytest.fixture(scope="module")
def results(request) -> dict[str, dict]:
    require_root()
    why = coredns.available()
    if why:
        _unavailable(why)
    if demo.missing_tools():
        _unavailable(f"missing {' '.join(demo.missing_tools())} (scripts/setup.sh installs them)")
    with labmod.Lab(resolver="coredns") as lab:
        if not lab.binary.exists():
            _unavailable(f"{lab.binary} is not built (cargo build --release)")
        res = demo.run_demo(lab)
    # Past pytest's capture: the counts are the point of this test.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + demo.table(res, demo.PORTS, demo.DELAY_MS), flush=True)
    return {r["setup"]: r for r in res}


def poisoned(r: dict) -> tuple[int, int, int]:
    return r["poisoned_answer"], r["poisoned_cache"], r["poisoned_other_client"]


def test_coredns_alone_is_poisoned(results):
    r = results["coredns"]
    # The attack is real: a forged answer went to the racer, into the cache (asked again), and
    # from the cache to another pod.
    assert all(n >= 1 for n in poisoned(r)), (poisoned(r), r["racer"]["attempts"][-3:])
    assert r["upstream_udp"] >= r["names"] - 1, r  # every name raced went upstream over UDP
    assert r["upstream_mixed_case"] == 0, "CoreDNS forwards the name in the case it was asked"


@pytest.mark.parametrize("setup", ["guard-checks", "guard"])
def test_nothing_forged_is_cached_behind_dns_guard(results, setup):
    alone, r = results["coredns"], results[setup]
    # The same budget as the attack that worked, or more.
    assert r["names"] == max(demo.ATTEMPTS, alone["names"]), (r["names"], alone["names"])
    assert r["sent"] >= alone["sent"] and r["sent"] == r["names"] * 65536, r["sent"]
    assert poisoned(r) == (0, 0, 0), (poisoned(r), [a for a in r["racer"]["attempts"] if a["poisoned"]])
    # The forgeries did reach dns-guard's sockets, and were refused by its checks.
    assert r["spoof"].get("wrong_txid", 0) > 0, r["spoof"]
    assert r["poisoning_attempts"], "no poisoning-attempt verdict"


def test_checks_alone_keep_every_race_on_udp(results):
    r = results["guard-checks"]
    assert r["upstream_tcp"] == 0 and r["upstream_udp"] > 0, r
    assert [p["action"] for p in r["poisoning_attempts"]] == ["log"], r["poisoning_attempts"]
    # All in mixed case (one chance in 2^22 per name to come out all lower case).
    assert r["upstream_mixed_case"] == r["upstream_udp"], "dns-guard asks in 0x20 mixed case"


def test_default_config_moves_the_upstream_to_tcp(results):
    r = results["guard"]
    assert [p["action"] for p in r["poisoning_attempts"]] == ["tcp"], r["poisoning_attempts"]
    assert r["tcp_forced"] == 1, r
    # The first race is on UDP; from the switch on, every query goes over TCP.
    assert r["upstream_tcp"] >= r["names"] - 2 and r["upstream_udp"] <= 2, r
