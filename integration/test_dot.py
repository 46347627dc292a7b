"""DNS over TLS upstreams (`tls://IP[:853]@servername`), end to end.

The upstream is a real Unbound serving DNS over TLS only (hierarchy.DotServer: no plain
DNS listener at all), recursing from the private signed root, with a server certificate
for dot.lab from a throwaway CA that openssl makes in the lab's workdir; dns-guard trusts
that CA through `proxy.tls_ca` and validates what comes over TLS with the private root key.
"""

import re
import time

import pytest

import hierarchy as H
from lab import _wait_for
from test_forwarder import fd_count, guard_pid, proxy_verdict

GOOD = f"tls://{H.DOT_ADDR}@{H.DOT_NAME}"
LABEL = f"tls://{H.DOT_ADDR}:{H.DOT_PORT}@{H.DOT_NAME}"
UNUSABLE = "DNS over TLS upstream unusable"  # dns-guard's one warning per failure reason


@pytest.fixture(scope="module")
def dot(lab, hierarchy):
    from conftest import _unavailable

    missing = [t for t in H.DOT_TOOLS if not H.shutil.which(t)]
    if missing:
        _unavailable(f"missing {' '.join(missing)} (packages openssl knot-dnsutils; scripts/setup.sh)")
    with H.DotServer(lab, hierarchy) as server:
        yield server


def dot_config(hierarchy, dot, upstreams=(GOOD,), ca=True, **proxy):
    extra = {"tls_ca": str(dot.pki["ca"])} if ca else {}
    return hierarchy.proxy_config(upstreams=list(upstreams), **extra, **proxy)


def established_to_dot(lab) -> int:
    """TCP connections from the coredns pod (where dns-guard runs) to the DoT server's port."""
    r = lab.run("coredns", ["ss", "-H", "-tn", "state", "established", f"( dport = :{H.DOT_PORT} )"], check=False)
    return len([l for l in r.stdout.splitlines() if l.strip()])


def test_dot_server_speaks_tls_only(lab, dot):
    """The premise of every test below: plain DNS to this server gets nothing."""
    r = dot.kdig("www.signed.lab")
    assert "status: NOERROR" in r.stdout and H.A["www.signed.lab"] in r.stdout, r.stdout + r.stderr
    plain = lab.dig("c1", "www.signed.lab", H.DOT_ADDR, "+timeout=1")
    assert plain.status is None, f"plain UDP/53 answered:\n{plain.raw}"
    plain_tcp = lab.dig("c1", "www.signed.lab", H.DOT_ADDR, "+tcp", "+timeout=1")
    assert plain_tcp.status is None, plain_tcp.raw
    listening = lab.run("dot", ["ss", "-H", "-lntu"]).stdout.split("\n")
    ports = {l.split()[4].rsplit(":", 1)[1] for l in listening if l.strip()}
    assert ports == {str(H.DOT_PORT)}, f"the DoT server listens on more than {H.DOT_PORT}/tcp:\n{listening}"


@pytest.mark.needs_guard
@pytest.mark.parametrize("upstream", [GOOD, f"tls://[{H.DOT_ADDR6}]:{H.DOT_PORT}@{H.DOT_NAME}"], ids=["v4", "v6"])
def test_resolution_over_tls_is_validated(lab, hierarchy, dot, start_proxy, upstream):
    guard = start_proxy(dot_config(hierarchy, dot, upstreams=[upstream]))
    r = hierarchy.dig("c1", "www.signed.lab")
    assert r.status == "NOERROR" and r.addresses == [H.A["www.signed.lab"]], r.raw
    assert r.ad, f"no AD bit on a secure answer that came over TLS:\n{r.raw}"
    v = proxy_verdict(guard, qname="www.signed.lab")
    assert (v["verdict"], v["reason"], v["dnssec"]) == ("allow", "ok-tls", "secure"), v
    assert v["upstream"].startswith("tls://") and v["upstream"].endswith(f"@{H.DOT_NAME}"), v
    # Bogus data is bogus over TLS too: TLS authenticates the resolver, not the data.
    bogus = hierarchy.dig("c1", H.BOGUS_DATA)
    assert bogus.status == "SERVFAIL" and 6 in bogus.ede_codes, bogus.raw
    assert not hierarchy.dig("c1", "www.unsigned.lab").ad
    # Every query and the validator's DS/DNSKEY lookups shared one connection.
    for i in range(5):
        assert hierarchy.dig("c2", f"r{i}.wild.signed.lab").ad
    assert established_to_dot(lab) == 1, lab.run("coredns", ["ss", "-tn"]).stdout


@pytest.mark.needs_guard
def test_connection_reopened_after_server_restart(lab, hierarchy, dot, start_proxy):
    guard = start_proxy(dot_config(hierarchy, dot))
    assert hierarchy.dig("c1", "www.signed.lab").ad
    dot.stop()
    dot.start()
    # The old connection was closed by the server; the next query must not fail for it.
    r = hierarchy.dig("c1", "x.wild.signed.lab")
    assert r.status == "NOERROR" and r.ad and r.addresses == [H.A["x.wild.signed.lab"]], r.raw
    assert established_to_dot(lab) == 1
    assert not guard.find_verdicts(layer="proxy", verdict="servfail"), guard.verdicts()[-4:]


@pytest.mark.needs_guard
@pytest.mark.parametrize("case", ["wrong-name", "unknown-ca"])
def test_certificate_failure_fails_over_then_servfails(lab, hierarchy, dot, start_proxy, case):
    # wrong-name: the lab CA is trusted but the certificate is for dot.lab, not wrong.lab.
    # unknown-ca: no proxy.tls_ca, so the built-in web PKI roots, which never signed the lab CA.
    bad, ca, why = {
        "wrong-name": (f"tls://{H.DOT_ADDR}@wrong.lab", True, "not valid for name"),
        "unknown-ca": (GOOD, False, "UnknownIssuer"),
    }[case]
    guard = start_proxy(dot_config(hierarchy, dot, upstreams=[bad, H.REC], ca=ca, timeout_ms=1000))
    for name in ("www.signed.lab", "x.wild.signed.lab", "www.unsigned.lab"):
        r = hierarchy.dig("c1", name)
        assert r.status == "NOERROR" and r.addresses == [H.A[name]], f"no failover for {name}:\n{r.raw}"
    assert proxy_verdict(guard, qname="www.signed.lab")["upstream"] == f"{H.REC}:53"
    guard.wait_stderr(why, 3, what=f"the handshake failure ({why}) in the log")
    guard.stop()

    guard = start_proxy(dot_config(hierarchy, dot, upstreams=[bad], ca=ca, timeout_ms=1000))
    for i in range(10):
        t0 = time.monotonic()
        r = hierarchy.dig("c1", f"f{i}.wild.unsigned.lab", timeout=5)
        assert r.status == "SERVFAIL" and 22 in r.ede_codes, r.raw
        assert time.monotonic() - t0 < 2.5, f"SERVFAIL took {time.monotonic() - t0:.1f}s (timeout_ms 1000)"
    assert any(why in e or "not redialing" in e for e in r.ede), r.ede
    assert guard.alive(), guard.stderr_tail()
    # Why, once: not a line per query.
    text = guard.stderr()
    assert why in text, text[-3000:]
    assert text.count(UNUSABLE) == 1, re.findall(f".*{UNUSABLE}.*", text)


@pytest.mark.needs_guard
def test_dot_load_with_failing_upstreams_no_fd_leak(lab, hierarchy, dot, start_proxy):
    # Nothing listens on DOWN:853 (refused); wrong.lab fails the certificate check.
    upstreams = [f"tls://{H.DOWN}@{H.DOT_NAME}", f"tls://{H.DOT_ADDR}@wrong.lab", GOOD]
    guard = start_proxy(dot_config(hierarchy, dot, upstreams=upstreams, timeout_ms=1000))
    pid = guard_pid(guard)
    assert hierarchy.dig("c1", "warm.wild.unsigned.lab", timeout=5).status == "NOERROR"
    before = fd_count(pid)
    names = [f"s{i}.wild.unsigned.lab" for i in range(300)] + ["www.signed.lab", H.BOGUS_DATA]
    res = lab.dnsperf("c1", H.PROXY_ADDR, names, duration=4, qps=200, timeout=3,
                      extra=["-p", str(H.PROXY_PORT)])
    assert res.completed > 0.95 * res.sent, res
    assert set(res.rcodes) <= {"NOERROR", "SERVFAIL"} and res.rcodes.get("SERVFAIL", 0) <= res.sent // 100 + 2, res
    assert guard.alive(), guard.stderr_tail()
    # Pipelined on one connection, however many queries were in flight.
    assert established_to_dot(lab) == 1
    after = _wait_for(lambda: (n := fd_count(pid)) <= before + 4 and n, 8) or fd_count(pid)
    assert after <= before + 4, f"fd leak: {before} before, {after} after {res.sent} queries"
    text = guard.stderr()
    assert text.count(UNUSABLE) == 2, re.findall(f".*{UNUSABLE}.*", text)
