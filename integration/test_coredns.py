"""CoreDNS end to end: the real CoreDNS runs each corefile-examples/ Corefile in the coredns pod,
with dns-guard attached to that pod's eth0 (and, once it exists, its proxy on 127.0.0.1:5353).

Lab adaptation (coredns.py): the `kubernetes` plugin needs an API server, which does not exist
here, so a `hosts` block serving cluster.local stands in for it (a mock stands in only for
what cannot run here); `/etc/resolv.conf` and the corporate server become the lab upstream.
Everything else is the example as shipped.

Scenario per example: clients resolve through CoreDNS; blocked names are answered by XDP and
CoreDNS never sees them (its `log` plugin and its own Prometheus counters); dns-guard's admin
port reports the XDP verdicts and readiness. With the proxy: rebinding answers never reach
clients or CoreDNS's cache, and forged upstream replies are never cached.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

import coredns
import lab as labmod
from conftest import _unavailable, require_root
from lab import GOOD_V4, UP_V4, metric, v4

BLOCKLIST = "||blocked.test^\n||evil.corp.example^\n"
CORP_V4 = "198.19.0.77"
DRY_RUN_NAME, DRY_RUN_V4 = "dry.blocked.test", "198.19.0.78"  # listed, and the upstream has it
REBIND_V4 = "10.1.2.3"  # only ever data in an answer: nothing is sent there
TORTURED = "torture.test"  # the zone of the random-subdomain flood
PROXY_LINE = "dns-guard proxy listening on"

pytestmark = pytest.mark.needs_guard


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clab():
    """A lab whose coredns pod runs the real CoreDNS; the upstream also serves the stub zone."""
    require_root()
    why = coredns.available()
    if why:
        _unavailable(why)
    with labmod.Lab(resolver="coredns") as the_lab:
        up = the_lab.upstream
        labmod._stop_pid(up.proc)
        up.records += [f"--address=/corp.example/{CORP_V4}", f"--host-record=rebind.test,{REBIND_V4}",
                       f"--host-record={DRY_RUN_NAME},{DRY_RUN_V4}",
                       f"--address=/{TORTURED}/"]  # NXDOMAIN for the zone and every name under it
        up.start()
        _wait_upstream(the_lab)
        yield the_lab


def _wait_upstream(the_lab) -> None:
    ok = labmod._wait_for(lambda: the_lab.dig("c1", "good.test", v4("up"), "+timeout=1").addresses, 10, 0.2)
    assert ok, "lab upstream did not come back"


@pytest.fixture
def cguard(clab):
    """Factory like conftest's start_guard, for the CoreDNS lab."""
    if not clab.binary.exists():
        _unavailable(f"{clab.binary} is not built (cargo build --release)")
    started = []

    def start(config=None, lists=None):
        # The lab upstream is a flat dnsmasq, not a signed hierarchy: DNSSEC validation has
        # its own tests (test_forwarder.py), here it would judge every answer bogus.
        config = labmod.deep_merge({"proxy": {"dnssec": "off"}}, config or {})
        guard = clab.prepare_guard(config, lists if lists is not None else {"block.txt": BLOCKLIST})
        started.append(guard)
        return guard.start()

    yield start
    for guard in started:
        guard.cleanup()
        clab.guards.remove(guard)


def proxy_listening(guard) -> bool:
    return PROXY_LINE in guard.stderr()


def run_example(clab, guard, name: str, **adapt) -> str:
    """Start CoreDNS on the lab version of an example; through the proxy when it is up."""
    adapt.setdefault("direct", not proxy_listening(guard))
    corefile = coredns.adapt(coredns.example(name), clab.resolver.dir, **adapt)
    clab.resolver.restart(corefile)
    return corefile


# --------------------------------------------------------------------------- the examples


def test_every_example_is_lab_safe_and_mocks_only_kubernetes(tmp_path):
    names = coredns.examples()
    assert set(names) >= {"kubeadm-default.Corefile", "direct-fallback.Corefile",
                          "prefetch-serve-stale.Corefile", "stub-domain.Corefile"}
    for name in names:
        text = coredns.example(name)
        assert text.lstrip().startswith("#"), f"{name} must say when to use it"
        assert "forward . 127.0.0.1:5353" in text, name
        lab_text = coredns.adapt(text, tmp_path, direct=True)
        assert "kubernetes " not in lab_text.replace("# lab: the kubernetes plugin", "")
        assert "/etc/resolv.conf" not in coredns.forward_targets(lab_text)
        # Everything except the kubernetes block and forward targets is untouched.
        for plugin in ("cache", "loop", "reload", "health", "ready", "prometheus", "loadbalance"):
            assert (plugin in text) == (plugin in lab_text), (name, plugin)


@pytest.mark.parametrize("name", coredns.examples())
def test_example_resolves_and_xdp_blocks_before_coredns(clab, cguard, name):
    guard = cguard()
    run_example(clab, guard, name)
    before = clab.resolver.metric("coredns_dns_requests_total")

    r = clab.dig("c1", "good.test")
    assert r.status == "NOERROR" and GOOD_V4 in r.addresses, r.raw
    r = clab.dig("c2", "kubernetes.default.svc.cluster.local")
    assert r.status == "NOERROR" and r.addresses == [coredns.CLUSTER_HOSTS["kubernetes.default.svc.cluster.local"]], r.raw

    for qname in ("ads.blocked.test", "blocked.test"):
        r = clab.dig("c1", qname)
        assert r.status == "NXDOMAIN", r.raw
        assert guard.wait_verdict(qname=qname, verdict="block", layer="xdp"), guard.verdicts()
        assert not clab.resolver_saw(qname), f"CoreDNS saw {qname}; its log:\n{clab.resolver.log.read_text()[-2000:]}"
    # CoreDNS's own counters agree: good.test, the cluster name and the barrier queries only.
    seen = clab.resolver.metric("coredns_dns_requests_total") - before
    assert seen <= 6, f"CoreDNS counted {seen} requests; blocked ones must not reach it"

    # The admin port, from inside the pod as the kubelet's probes would ask.
    base = f"http://{guard.admin_addr()}"
    assert coredns.http_get(clab, "coredns", base + "/healthz")[0] == 200
    assert coredns.http_get(clab, "coredns", base + "/readyz")[0] == 200
    code, text = coredns.http_get(clab, "coredns", base + "/metrics")
    assert code == 200, text
    assert metric(text, 'dns_guard_xdp_packets_total{reason="blocklist_suffix"}') >= 1, text
    assert metric(text, 'dns_guard_xdp_packets_total{reason="blocklist_exact"}') >= 1, text
    assert metric(text, 'dns_guard_xdp_packets_total{reason="clean"}') >= 2, text
    assert metric(text, 'dns_guard_list_names{kind="block"}') == 2, text
    assert re.search(r'^dns_guard_build_info\{version="[^"]+"\} 1$', text, re.M), text


def test_direct_fallback_keeps_resolving_and_xdp_keeps_blocking_without_the_sidecar(clab, cguard):
    guard = cguard()
    # Keep 127.0.0.1:5353 first even when nothing listens there: that is the point.
    run_example(clab, guard, "direct-fallback.Corefile", direct=False)
    assert clab.dig("c1", "good.test").status == "NOERROR"
    assert guard.stop() == 0, guard.stderr_tail()  # SIGTERM: the sidecar is gone, its pins stay

    r = clab.dig("c1", "good.test", None, "+timeout=5")
    assert r.status == "NOERROR" and GOOD_V4 in r.addresses, r.raw
    r = clab.dig("c2", "www.blocked.test")
    assert r.status == "NXDOMAIN", r.raw
    assert not clab.resolver_saw("www.blocked.test"), "the pinned XDP program must keep enforcing"


def test_serve_stale_answers_while_the_upstream_is_down(clab, cguard):
    guard = cguard()
    # A 2 s cache cap instead of 30 s so the test does not wait for expiry.
    run_example(clab, guard, "prefetch-serve-stale.Corefile", cache_ttl=2)
    r = clab.dig("c1", "stale.test")
    assert r.status == "NOERROR" and UP_V4 in r.addresses, r.raw
    up = clab.upstream
    labmod._stop_pid(up.proc)
    try:
        time.sleep(3)
        r = clab.dig("c1", "stale.test", None, "+timeout=6")
        assert r.status == "NOERROR" and UP_V4 in r.addresses, f"no stale answer:\n{r.raw}"
        r = clab.dig("c1", "never-asked.test", None, "+timeout=6")
        assert not r.addresses, f"a name never cached cannot be served stale:\n{r.raw}"
        r = clab.dig("c1", "x.blocked.test")
        assert r.status == "NXDOMAIN", r.raw
    finally:
        up.start()
        _wait_upstream(clab)


def test_stub_domain_goes_straight_to_the_corporate_server_and_xdp_still_applies(clab, cguard):
    guard = cguard()
    corefile = run_example(clab, guard, "stub-domain.Corefile")
    assert f"forward . {v4('up')}" in corefile.split(".:53")[0], corefile
    r = clab.dig("c1", "intranet.corp.example")
    assert r.status == "NOERROR" and r.addresses == [CORP_V4], r.raw
    assert clab.resolver_saw("intranet.corp.example")
    r = clab.dig("c1", "evil.corp.example")
    assert r.status == "NXDOMAIN", r.raw
    assert not clab.resolver_saw("evil.corp.example")
    assert guard.wait_verdict(qname="evil.corp.example", verdict="block")


# --------------------------------------------------------------------------- with the proxy


def _require_proxy(guard) -> None:
    if not proxy_listening(guard):
        _unavailable("the dns-guard proxy is not listening (no 'dns-guard proxy listening on' line)")


def test_rebinding_answer_never_reaches_clients_or_the_cache(clab, cguard):
    guard = cguard()
    _require_proxy(guard)
    run_example(clab, guard, "kubeadm-default.Corefile")
    for _ in range(2):  # the second ask would come from CoreDNS's cache
        r = clab.dig("c1", "rebind.test", None, "+timeout=5")
        assert REBIND_V4 not in r.addresses, r.raw
    assert clab.resolver_saw("rebind.test"), "CoreDNS did get the query (the proxy judges the answer)"
    # The cluster's own names may be private: the hosts mock answers them before forward.
    r = clab.dig("c1", "web.shop.svc.cluster.local")
    assert r.addresses == [coredns.CLUSTER_HOSTS["web.shop.svc.cluster.local"]], r.raw


def test_a_dry_run_blocks_nothing_in_either_layer_and_logs_both(clab, cguard):
    """xdp.action: log is a dry run end to end: a listed name passes the kernel, CoreDNS
    forwards its cache miss to the proxy, the proxy forwards it upstream, and each layer logs
    what it would have blocked, with action `log`."""
    guard = cguard({"xdp": {"action": "log"}, "log": {"allow_sample": 1}})
    _require_proxy(guard)
    run_example(clab, guard, "kubeadm-default.Corefile")
    r = clab.dig("c1", DRY_RUN_NAME, None, "+timeout=5")
    assert r.status == "NOERROR" and r.addresses == [DRY_RUN_V4], r.raw
    assert clab.resolver_saw(DRY_RUN_NAME), "CoreDNS got the query"
    for layer in ("xdp", "proxy"):
        v = guard.wait_verdict(qname=DRY_RUN_NAME, layer=layer, verdict="block")
        assert v and v["action"] == "log" and v["rule"] == "||blocked.test^", (layer, guard.verdicts())
    forwarded = guard.wait_verdict(qname=DRY_RUN_NAME, layer="proxy", verdict="allow")
    assert forwarded and forwarded["action"] == "forward", guard.verdicts()


FORGED_V4 = "198.18.66.99"


def _forging_upstream(sock: socket.socket, stop: threading.Event) -> None:
    """For each query: forged replies (same txid and port) for a different question and for the
    case-flipped question right away, the true answer 50 ms later."""
    def answer(query: bytes, qname_wire: bytes, addr: str) -> bytes:
        txid = query[:2]
        rd = query[2] & 0x01
        hdr = txid + bytes([0x84 | rd, 0x80]) + struct.pack(">HHHH", 1, 1, 0, 0)
        rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4) + socket.inet_aton(addr)
        return hdr + qname_wire + b"\x00\x01\x00\x01" + rr

    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            q, peer = sock.recvfrom(4096)
        except socket.timeout:
            continue
        end = 12
        while q[end] != 0:
            end += q[end] + 1
        qname = q[12:end + 1]
        wrong = b"\x05forge" + qname  # a different question, same txid
        sock.sendto(answer(q, wrong, FORGED_V4), peer)
        # The question with its letter case flipped: CoreDNS's own forward compares names
        # case-insensitively and would take this one; only a 0x20 check stops it.
        sock.sendto(answer(q, qname.swapcase(), FORGED_V4), peer)
        time.sleep(0.05)
        sock.sendto(answer(q, qname, GOOD_V4), peer)


def _tcp_upstream(srv: socket.socket) -> None:
    """The true answer over TCP, where no off-path forgery can land: after a spoof burst the
    proxy rightly moves this upstream to TCP (PowerDNS Recursor's behaviour)."""
    while True:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(2)
            try:
                n = struct.unpack(">H", conn.recv(2))[0]
                q = b""
                while len(q) < n:
                    q += conn.recv(n - len(q))
                end = 12
                while q[end] != 0:
                    end += q[end] + 1
                qname = q[12:end + 1]
                hdr = q[:2] + bytes([0x84 | (q[2] & 1), 0x80]) + struct.pack(">HHHH", 1, 1, 0, 0)
                rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4) + socket.inet_aton(GOOD_V4)
                msg = hdr + qname + b"\x00\x01\x00\x01" + rr
                conn.sendall(struct.pack(">H", len(msg)) + msg)
            except (OSError, IndexError, struct.error):
                pass


FORGER_PY = f"""
import socket, sys, threading, time
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import test_coredns as t
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.18.0.70", 53))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("198.18.0.70", 53)); tcp.listen(16)
threading.Thread(target=t._tcp_upstream, args=(tcp,), daemon=True).start()
open(sys.argv[1], "w").close()
t._forging_upstream(s, threading.Event())
"""


def test_forged_upstream_replies_are_never_cached(clab, cguard):
    clab.add_pod("fup", [70], v6=False)
    forger = None
    try:
        ready = clab.workdir / "fup.ready"
        forger = clab.spawn("fup", [sys.executable, "-c", FORGER_PY, str(ready)], "fup")
        assert labmod._wait_for(ready.exists, 10), (clab.workdir / "fup.err").read_text()
        guard = cguard({"proxy": {"upstreams": ["198.18.0.70"]}})
        _require_proxy(guard)
        run_example(clab, guard, "kubeadm-default.Corefile")
        for _ in range(3):
            r = clab.dig("c1", "victim.test", None, "+timeout=5")
            assert FORGED_V4 not in r.addresses, r.raw
            assert r.status == "NOERROR" and GOOD_V4 in r.addresses, r.raw
    finally:
        # `ip netns del` only unmounts the name: a live forger would keep pod fup, and its
        # link on the bridge, until the module's lab closes.
        if forger is not None:
            labmod._stop_pid(forger, signal.SIGTERM, 3)
        clab.remove_pod("fup")


def test_random_subdomain_flood_is_stopped_in_the_kernel_after_the_threshold(clab, cguard):
    """Water torture: random names under one zone, each a cache miss that CoreDNS forwards. The
    proxy sees the zone fail again and again; past the threshold the zone's subdomains are
    refused by XDP, before CoreDNS, while its apex and every other name keep resolving."""
    guard = cguard({"proxy": {"random_subdomain": {"threshold": 40, "window_s": 10, "block_s": 60}}})
    _require_proxy(guard)
    run_example(clab, guard, "kubeadm-default.Corefile")
    names = [f"r{i:05d}x.{TORTURED}" for i in range(3000)]  # each asked once: no cache helps
    res = clab.dnsperf("c2", None, names, duration=3, qps=400, timeout=1)
    rcodes = res.rcodes
    assert rcodes.get("NXDOMAIN", 0) >= 40, f"the flood reached the upstream first: {res}"
    assert rcodes.get("REFUSED", 0) >= 500, f"then was refused: {res}"

    start = guard.wait_verdict(verdict="random-subdomain", layer="proxy")
    assert start, guard.verdicts()[-20:]
    assert start["rule"] == f"*.{TORTURED}" and start["qname"] == TORTURED, start
    assert start["list"] == "xdp+proxy", f"the block must be set in the kernel: {start}"
    assert start["count"] > 40, start
    xdp = guard.wait_verdict(verdict="block", layer="xdp", reason="random_subdomain")
    assert xdp and xdp["rule"] == f"*.{TORTURED}" and xdp["list"] == "random-subdomain", xdp

    # A fresh random name now: refused by the kernel, never seen by CoreDNS.
    fresh = f"fresh-after-block.{TORTURED}"
    r = clab.dig("c1", fresh, None, "+timeout=3")
    assert r.status == "REFUSED", r.raw
    assert not clab.resolver_saw(fresh), "XDP must refuse it before CoreDNS"
    # The apex is not a subdomain: CoreDNS asks upstream (which says NXDOMAIN), not REFUSED.
    r = clab.dig("c1", TORTURED, None, "+timeout=3")
    assert r.status == "NXDOMAIN", r.raw
    r = clab.dig("c1", "good.test", None, "+timeout=3")
    assert r.status == "NOERROR" and GOOD_V4 in r.addresses, r.raw

    # A list reload makes a table with a new hash seed; the block is keyed under it before the
    # swap, so the kernel keeps refusing across the reload.
    guard.update_list("block.txt", BLOCKLIST + "||another.test^\n")
    guard.wait_stderr("dns-guard lists reloaded", 10, "the list reload")
    fresh = f"fresh-after-reload.{TORTURED}"
    r = clab.dig("c1", fresh, None, "+timeout=3")
    assert r.status == "REFUSED", r.raw
    assert not clab.resolver_saw(fresh), "the block must survive the reload in the kernel"
    assert clab.dig("c1", "x.another.test").status == "NXDOMAIN", "the reloaded list is enforced"

    code, text = coredns.http_get(clab, "coredns", f"http://{guard.admin_addr()}/metrics")
    assert code == 200, text
    assert metric(text, "dns_guard_random_subdomain_blocks_total") == 1, text
    assert metric(text, "dns_guard_random_subdomain_blocked_zones") == 1, text
    assert metric(text, 'dns_guard_xdp_packets_total{reason="random_subdomain"}') >= 500, text
