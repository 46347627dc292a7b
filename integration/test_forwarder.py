"""The validating forwarder end to end, against a private signed hierarchy (hierarchy.py).

These tests are the proxy's contract. dns-guard runs proxy-only (no `interface:`) listening
on the coredns pod's 198.18.0.53:5353, forwarding to Unbound (validation OFF there, so every
DNSSEC verdict is dns-guard's own), with the private root key as `proxy.trust_anchor`.
Clients dig it with DO and AD set; EDE codes come from dig's `; EDE:` lines.
"""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import hierarchy as H
from forger import MARKER_V4, MARKER_V6
from lab import SCAPY_PYTHON, _stop_pid, _wait_for, http_get, v4

HERE = Path(__file__).resolve().parent
EDE_BOGUS, EDE_BLOCKED = 6, 15
THRESHOLD = 3  # proxy.spoof.threshold in the forgery test


def proxy_verdict(guard, timeout=3.0, **match):
    v = guard.wait_verdict(timeout=timeout, layer="proxy", **match)
    assert v, f"no proxy verdict matching {match}; last verdicts: {guard.verdicts()[-6:]}"
    return v


def guard_pid(guard) -> int:
    # lab.spawn runs `nsenter --net=... dns-guard`; nsenter execs, so the pid is dns-guard's.
    pid = guard.proc.pid
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    assert comm.startswith("dns-guard"), f"pid {pid} is {comm!r}, not dns-guard"
    return pid


def metric_sum(lab, prefix: str) -> float:
    """Sum of every sample of a Prometheus metric from the guard's metrics listener (0 if none).

    proxy_config() always sets metrics.listen, so an unreadable endpoint is a failure, not a
    reason to fall back to a weaker check."""
    url = f"http://{H.METRICS}/metrics"
    code, body = http_get(lab, "coredns", url)
    assert code == 200, f"could not read {url} in the coredns pod: {code} {body[-1000:]}"
    total = None
    for line in body.splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            total = (total or 0.0) + float(line.rsplit(None, 1)[1])
    return total if total is not None else 0.0


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


# --------------------------------------------------------------------------- the hierarchy alone


@pytest.mark.parametrize("anchor", ["dnskey", "ds"])
def test_hierarchy_validates_from_private_root(hierarchy, anchor):
    """Independent proof (BIND's delv) that the zones are what the proxy tests assume."""
    h = hierarchy
    for name in ("www.signed.lab", "x.wild.signed.lab", "x.wild.signednsec.lab", "ok.bogus.lab", H.DNAME_NAME):
        out = h.delv(name, anchor=anchor)
        assert "; fully validated" in out, f"{name}:\n{out}"
    for name in (H.BOGUS_DATA, H.BOGUS_SIG):
        out = h.delv(name, anchor=anchor)
        assert "resolution failed" in out and "fully validated" not in out, f"{name}:\n{out}"
    assert "; unsigned answer" in h.delv("www.unsigned.lab", anchor=anchor)
    assert "negative response, fully validated" in h.delv("nx.signed.lab", anchor=anchor)


def test_hierarchy_data_reaches_upstream_unvalidated(lab, hierarchy):
    # Unbound runs iterator-only: bogus data is passed on, not SERVFAILed, so the proxy decides.
    r = lab.dig("c1", H.BOGUS_DATA, H.REC, "+dnssec")
    assert r.status == "NOERROR" and r.addresses == ["198.19.2.99"], r.raw
    assert any(a[3] == "RRSIG" for a in r.answers), r.raw
    for name, (qtype, addr) in {**H.REBIND, **H.CLUSTER}.items():
        r = lab.dig("c1", name, H.REC, qtype=qtype)
        assert r.addresses == [addr], r.raw


# --------------------------------------------------------------------------- DNSSEC


@pytest.mark.needs_guard
@pytest.mark.parametrize("anchor", ["dnskey", "ds", "both"])
def test_signed_zone_is_secure(hierarchy, start_proxy, anchor):
    # AAAA_SIGNED is a lab ULA (fc00::/7), which check 7 blocks by default like any private
    # address (see private.signed.lab in H.REBIND); allow the zone so the AAAA half tests DNSSEC.
    guard = start_proxy(hierarchy.proxy_config(anchor=anchor, rebinding={"allow": ["signed.lab"]}))
    r = hierarchy.dig("c1", "www.signed.lab")
    assert r.status == "NOERROR" and r.addresses == [H.A["www.signed.lab"]], r.raw
    assert r.ad, f"no AD bit on a secure answer (trust anchor form: {anchor}):\n{r.raw}"
    v = proxy_verdict(guard, qname="www.signed.lab", qtype="A")
    assert v["dnssec"] == "secure" and v["verdict"] == "allow", v
    aaaa = hierarchy.dig("c2", "www.signed.lab", qtype="AAAA")
    assert aaaa.addresses == [H.AAAA_SIGNED] and aaaa.ad, aaaa.raw


@pytest.mark.needs_guard
def test_a_signed_any_answer_is_secure(hierarchy, start_proxy):
    """hickory 0.26.3 finds no record of type ANY in an ANY answer and judges it as a denial,
    which a signed name's records fail: SERVFAIL before. Its RRsets verified, it is secure."""
    guard = start_proxy(hierarchy.proxy_config(rebinding={"allow": ["signed.lab"]}))
    r = hierarchy.dig("c1", "www.signed.lab", qtype="ANY")
    assert r.status == "NOERROR" and r.ad and H.A["www.signed.lab"] in r.addresses, r.raw
    assert proxy_verdict(guard, qname="www.signed.lab", qtype="ANY")["dnssec"] == "secure"


@pytest.mark.needs_guard
def test_secure_answer_is_not_cached_past_its_signature(hierarchy, start_proxy):
    """RFC 4035 §5.3.3: the record's TTL is a day, its RRSIG expires within the hour. The
    upstream hands out the day; CoreDNS would cache what the proxy returns, so the proxy caps
    the TTL of the RRset and its RRSIG at the time left on the signature."""
    guard = start_proxy(hierarchy.proxy_config())
    direct = hierarchy.dig("c1", H.SHORT_SIG_NAME, "+cd", server=H.REC, port=53)
    assert max(a[1] for a in direct.answers) > H.SHORT_SIG_EXPIRY, f"upstream TTL not long:\n{direct.raw}"
    r = hierarchy.dig("c1", H.SHORT_SIG_NAME)
    assert r.status == "NOERROR" and r.addresses == ["198.19.4.3"] and r.ad, r.raw
    ttls = [a[1] for a in r.answers]
    assert len(ttls) == 2 and max(ttls) <= H.SHORT_SIG_EXPIRY, f"TTL not capped at the signature:\n{r.raw}"
    assert proxy_verdict(guard, qname=H.SHORT_SIG_NAME)["dnssec"] == "secure"


@pytest.mark.needs_guard
def test_ad_only_when_asked(hierarchy, start_proxy):
    # RFC 6840 5.7/5.8: AD is set for a client that set DO or AD; a plain query gets data only.
    start_proxy(hierarchy.proxy_config())
    r = hierarchy.lab.dig("c1", "www.signed.lab", H.PROXY_ADDR, "-p", str(H.PROXY_PORT), "+noadflag")
    assert r.status == "NOERROR" and r.addresses == [H.A["www.signed.lab"]], r.raw
    assert not r.ad, r.raw


@pytest.mark.needs_guard
@pytest.mark.parametrize("zone", ["signed.lab", "signednsec.lab"], ids=["nsec3", "nsec"])
def test_wildcard_answer_is_secure(hierarchy, start_proxy, zone):
    # hickory-dns #2882: NSEC-signed wildcard answers are wrongly bogus; NSEC3 ones validate.
    guard = start_proxy(hierarchy.proxy_config())
    name = f"x.wild.{zone}"
    r = hierarchy.dig("c1", name)
    assert r.status == "NOERROR" and r.addresses == [H.A[name]], r.raw
    assert r.ad, f"wildcard answer in a {zone} zone not secure:\n{r.raw}"
    assert proxy_verdict(guard, qname=name)["dnssec"] == "secure"


@pytest.mark.needs_guard
def test_a_cname_synthesized_from_a_signed_dname_is_secure(hierarchy, start_proxy):
    """RFC 6672 §5.3.3: NSD answers www.alias.signed.lab with the signed DNAME and a CNAME it
    synthesizes, which no key signs. The validator checks the DNAME's signature and that the
    CNAME is exactly its synthesis. hickory 0.26.3 alone judged the unsigned CNAME: bogus."""
    guard = start_proxy(hierarchy.proxy_config())
    r = hierarchy.dig("c1", H.DNAME_NAME)
    assert r.status == "NOERROR" and r.addresses == [H.A[H.DNAME_TARGET]] and r.ad, r.raw
    by_type = {a[3]: a for a in r.answers}
    assert by_type["DNAME"][0] == f"{H.DNAME_OWNER}." and by_type["CNAME"][4] == f"{H.DNAME_TARGET}.", r.raw
    v = proxy_verdict(guard, qname=H.DNAME_NAME, qtype="A")
    assert v["dnssec"] == "secure" and v["verdict"] == "allow", v
    # Asked for the CNAME itself, the synthesis is the answer, proven by the DNAME.
    c = hierarchy.dig("c1", H.DNAME_NAME, qtype="CNAME")
    assert c.status == "NOERROR" and c.ad and any(a[3] == "CNAME" for a in c.answers), c.raw
    assert proxy_verdict(guard, qname=H.DNAME_NAME, qtype="CNAME")["dnssec"] == "secure"


@pytest.mark.needs_guard
def test_a_synthesized_cname_lives_no_longer_than_its_dname(lab, hierarchy, start_proxy):
    """No signature covers the CNAME synthesized from a DNAME, so a hostile upstream (a relay
    in the fault pod) can stretch its TTL to a day, and a cache would keep the redirect long
    after the DNAME changed. The proxy caps it at the DNAME's TTL; the answer stays secure."""
    port = 5307
    with relay_in_fault_pod(lab, port, "--stretch-cname-ttl", H.DNAME_NAME):
        direct = lab.dig("c1", H.DNAME_NAME, H.GARBAGE, "-p", str(port), "+dnssec")
        stretched = {a[3]: a[1] for a in direct.answers}
        assert stretched.get("CNAME") == H.TtlStretcher.TTL > stretched.get("DNAME", 0), direct.raw
        guard = start_proxy(hierarchy.proxy_config(upstreams=[f"{H.GARBAGE}:{port}"]))
        r = hierarchy.dig("c1", H.DNAME_NAME)
        assert r.status == "NOERROR" and r.addresses == [H.A[H.DNAME_TARGET]] and r.ad, r.raw
        ttl = {a[3]: a[1] for a in r.answers}
        assert ttl["CNAME"] <= ttl["DNAME"] <= stretched["DNAME"], r.raw
        assert proxy_verdict(guard, qname=H.DNAME_NAME, qtype="A")["dnssec"] == "secure"


@pytest.mark.needs_guard
@pytest.mark.parametrize("name,target", [("towild.signed.lab", "x.wild.signed.lab"),
                                         ("towild-nsec.signed.lab", "x.wild.signednsec.lab")], ids=["nsec3", "nsec"])
def test_a_signed_cname_into_a_wildcard_is_secure(hierarchy, start_proxy, name, target):
    """A CNAME into a name a wildcard serves (a CDN's catch-all, say): hickory 0.26.3 measures
    the first answer RRSIG against the query name and called these bogus. Each expansion is now
    proven on its own, with its zone's NSEC or NSEC3 (guard/src/proxy/expansion.rs)."""
    guard = start_proxy(hierarchy.proxy_config())
    r = hierarchy.dig("c1", name)
    assert r.status == "NOERROR" and r.addresses == [H.A[target]] and r.ad, r.raw
    assert proxy_verdict(guard, qname=name, qtype="A")["dnssec"] == "secure"


@pytest.mark.needs_guard
@pytest.mark.parametrize("name,qtype,status", [
    ("dangling.signed.lab", "A", "NXDOMAIN"),       # NSEC3 denial of the target
    ("dangling-nsec.signed.lab", "A", "NXDOMAIN"),  # NSEC denial, from the target's own zone
    ("tracker.signed.lab", "TXT", "NOERROR"),       # CNAME chain into the insecure zones: no AD
    ("dangling.signed.lab", "TXT", "NXDOMAIN"),
    ("hop.signed.lab", "A", "NXDOMAIN"),            # two CNAMEs, then the denial
    ("towww.signed.lab", "TXT", "NOERROR"),         # NODATA: the target exists, without TXT
    ("x.wcname.signed.lab", "TXT", "NOERROR"),      # a catch-all CNAME into NODATA
    ("x.wcgone.signed.lab", "A", "NXDOMAIN"),       # ... into NXDOMAIN
    ("x.wcnsec.signed.lab", "TXT", "NOERROR"),      # ... into NODATA of an NSEC zone
    ("x.wcplain.signed.lab", "TXT", "NOERROR"),     # ... into NODATA of an unsigned zone
    ("x.wcplaingone.signed.lab", "A", "NXDOMAIN"),  # ... into NXDOMAIN there
    ("www.tosigned.signednsec.lab", "TXT", "NOERROR"),  # a DNAME into NSEC3 NODATA
])
def test_a_signed_cname_chain_that_ends_in_a_denial(hierarchy, start_proxy, name, qtype, status):
    """A chain that ends in nothing denies the name at its end (RFC 4035 §5.4); hickory 0.26.3
    judges a denial only for the query name, so the validator judges it again for the end: a
    proven denial is secure, one in an insecure zone insecure (see the unit tests for the
    forgeries: the target's data dropped from a genuine answer is bogus, never secure). A
    wildcard CNAME's expansion is proven on its own, by its zone's denial beside the end's."""
    guard = start_proxy(hierarchy.proxy_config())
    r = hierarchy.dig("c1", name, qtype=qtype)
    assert r.status == status and any(a[3] == "CNAME" for a in r.answers), r.raw
    v = proxy_verdict(guard, qname=name, qtype=qtype)
    want = "insecure" if name == H.CLOAKED or name.startswith("x.wcplain") else "secure"
    assert v["dnssec"] == want and r.ad == (want == "secure"), (v, r.raw)


@pytest.mark.needs_guard
@pytest.mark.parametrize("zone", ["signed.lab", "signednsec.lab"], ids=["nsec3", "nsec"])
def test_new_wildcard_names_reuse_verified_signatures(lab, hierarchy, start_proxy, zone):
    """Every new name under a signed wildcard comes with the same wildcard signature and one of
    the zone's few NSEC3 (or NSEC) records. The validator's shortcut (positive_proof.rs) proves
    such answers with the zone's proven keys and the signatures it has verified before, so the
    crypto runs about once per distinct record, not twice per name; every answer stays secure."""
    start_proxy(hierarchy.proxy_config())
    names = [f"n{i}.wild.{zone}" for i in range(20)]
    for name in names:
        r = hierarchy.dig("c1", name)
        assert r.status == "NOERROR" and r.addresses == [H.A[f"x.wild.{zone}"]] and r.ad, r.raw
    shortcut = metric_sum(lab, 'dns_guard_dnssec_validations_total{path="shortcut"}')
    crypto = metric_sum(lab, 'dns_guard_dnssec_signature_checks_total{source="crypto"}')
    memo = metric_sum(lab, 'dns_guard_dnssec_signature_checks_total{source="memo"}')
    print(f"{zone}: {len(names)} names, shortcut {shortcut:.0f}, signature checks crypto {crypto:.0f} memo {memo:.0f}")
    assert shortcut == len(names), f"{shortcut} of {len(names)} answers took the shortcut"
    # At most one check per denial record of the zone, and the wildcard's signature is one more.
    # The zone's keys are proven once along the chain of trust: the root's DNSKEY set, lab.'s DS
    # and DNSKEY sets, the zone's DS and DNSKEY sets (five checks).
    kind = "NSEC3" if zone == "signed.lab" else "NSEC"
    denials = sum(1 for line in hierarchy.zone_files[f"{zone}."].read_text().splitlines() if line.split()[3:4] == [kind])
    assert crypto <= denials + 1 + 5 and memo >= len(names), f"crypto {crypto}, memo {memo} for {len(names)} names, {denials} {kind}"


@pytest.mark.needs_guard
@pytest.mark.parametrize("qtype", ["DNSKEY", "DS"])
def test_answers_hickory_judges_pass_the_second_opinion(lab, hierarchy, start_proxy, qtype):
    """The shortcut leaves DNSKEY and DS answers to hickory; when hickory calls one secure, the
    second opinion checks its signatures with the signer's proven keys (the zone's own KSK for
    DNSKEY, lab.'s keys for DS). Real signed data must come through it secure, not bogus."""
    guard = start_proxy(hierarchy.proxy_config())
    r = hierarchy.dig("c1", "signed.lab", qtype=qtype)
    assert r.status == "NOERROR" and r.answers and r.ad, r.raw
    v = proxy_verdict(guard, qname="signed.lab", qtype=qtype)
    assert v["dnssec"] == "secure" and v["verdict"] == "allow", v
    assert metric_sum(lab, 'dns_guard_dnssec_validations_total{path="full"}') >= 1


@pytest.mark.needs_guard
def test_secure_nxdomain(hierarchy, start_proxy):
    start_proxy(hierarchy.proxy_config())
    r = hierarchy.dig("c1", "nx.signed.lab")
    assert r.status == "NXDOMAIN" and r.ad, r.raw


@pytest.mark.needs_guard
@pytest.mark.parametrize("name", [H.BOGUS_DATA, H.BOGUS_SIG], ids=["data-changed", "rrsig-corrupted"])
def test_bogus_is_servfail_with_ede6(hierarchy, start_proxy, name):
    guard = start_proxy(hierarchy.proxy_config())
    r = hierarchy.dig("c1", name)
    assert r.status == "SERVFAIL", r.raw
    assert EDE_BOGUS in r.ede_codes, f"no EDE 6 (DNSSEC Bogus):\n{r.raw}"
    assert not r.addresses, r.raw
    v = proxy_verdict(guard, qname=name)
    assert v["verdict"] == "bogus" and v.get("rcode") == "SERVFAIL", v
    # Same zone, valid signature: only the corrupted names are bogus.
    ok = hierarchy.dig("c1", "ok.bogus.lab")
    assert ok.status == "NOERROR" and ok.ad and ok.addresses == [H.A["ok.bogus.lab"]], ok.raw


@contextmanager
def relay_in_fault_pod(lab, port, *options, delay=0.0):
    """hierarchy.py's relay to the lab's resolver on H.GARBAGE:`port` in the fault pod, holding
    each exchange `delay` s, with `options` such as `--forge-nxdomain NAME` (a hostile
    upstream); running once it relays, stopped on exit."""
    relay = lab.spawn("fault", [sys.executable, str(HERE / "hierarchy.py"), "serve", "--mode", "relay",
                                "--listen", H.GARBAGE, "--port", str(port), "--delay", str(delay), *options],
                      f"relay-{port}")
    try:
        _wait_for(lambda: lab.dig("c1", "signed.lab", H.GARBAGE, "-p", str(port), qtype="SOA").status == "NOERROR",
                  10, 0.2)  # the relay is starting
        yield
    finally:
        _stop_pid(relay)


@pytest.mark.needs_guard
def test_forged_nxdomain_with_another_zones_unsigned_soa_is_bogus(lab, hierarchy, start_proxy):
    """A hostile upstream (a relay in the fault pod, a test double for a compromised resolver
    or an on-path forger) answers www.signed.lab with NXDOMAIN whose only authority record is
    the SOA of unsigned.lab, a real insecure zone. hickory 0.26.3 alone calls that insecure,
    because every authority record is; the proxy must drop the foreign SOA and find the
    denial unproven in a signed zone."""
    port = 5300
    with relay_in_fault_pod(lab, port, "--forge-nxdomain", "www.signed.lab"):
        # The forgery is what the test says it is: NXDOMAIN, only unsigned.lab's SOA.
        direct = lab.dig("c1", "www.signed.lab", H.GARBAGE, "-p", str(port), "+dnssec", "+timeout=1")
        assert direct.status == "NXDOMAIN" and "unsigned.lab.\t" in direct.raw and "RRSIG" not in direct.raw, direct.raw
        guard = start_proxy(hierarchy.proxy_config(upstreams=[f"{H.GARBAGE}:{port}"]))
        # Everything else is relayed and still validates through it.
        ok = hierarchy.dig("c1", "x.wild.signed.lab")
        assert ok.status == "NOERROR" and ok.ad, ok.raw
        r = hierarchy.dig("c1", "www.signed.lab")
        assert r.status == "SERVFAIL", f"forged NXDOMAIN passed:\n{r.raw}"
        assert EDE_BOGUS in r.ede_codes, r.raw
        v = proxy_verdict(guard, qname="www.signed.lab")
        assert v["verdict"] == "bogus" and v["dnssec"] == "bogus", v


# Two AAAA RRsets with one key in hickory 0.26.3's cache of DNSSEC proofs under the query
# www.signed.lab AAAA, found in 32 s (2026-12-05) with
# `cargo run --release --example proof_key_collision -- www.signed.lab. x.unsigned.lab. www.signed.lab.`:
# an address in unsigned.lab (provably insecure), and a forged address for www.signed.lab.
# guard/src/proxy/dnssec.rs checks that they collide.
COLLIDING = [("x.unsigned.lab", "2001:db8:1:0:84b2:c11d:458c:957c"), ("www.signed.lab", "2001:db8:666:0:beaa:5f14:2b5b:2709")]


@pytest.mark.needs_guard
def test_a_forgery_that_collides_in_hickorys_proof_cache_is_refused(lab, hierarchy, start_proxy):
    """A hostile upstream (a relay in the fault pod, relaying the rest to the lab's resolver)
    answers www.signed.lab AAAA first with an address in x.unsigned.lab, and from then on with
    a forged address for www.signed.lab; the two RRsets share one key in hickory's proof cache
    (COLLIDING). hickory alone then serves the forgery the first RRset's insecure proof: the
    unit test `hickory_alone_serves_the_insecure_proof_…` in guard/src/proxy/dnssec.rs shows
    that with the same kind of pair. dns-guard's proof ledger refuses the second: SERVFAIL with
    EDE 6, verdict bogus with reason proof-cache-collision, and the forged address never
    reaches the client. Other names keep validating through the same relay."""
    port = 5305
    (owner1, addr1), (owner2, addr2) = COLLIDING
    with relay_in_fault_pod(lab, port, "--forge-collision", "www.signed.lab", owner1, addr1, owner2, addr2):
        guard = start_proxy(hierarchy.proxy_config(upstreams=[f"{H.GARBAGE}:{port}"]))
        # The attacker's RRset, alone in an answer about www.signed.lab: no proof for that
        # name, so bogus, but hickory has proven x.unsigned.lab insecure and cached it.
        first = hierarchy.dig("c1", "www.signed.lab", qtype="AAAA")
        assert first.status == "SERVFAIL" and addr1 not in first.raw, first.raw
        v = proxy_verdict(guard, qname="www.signed.lab", qtype="AAAA")
        assert v["verdict"] == "bogus" and v["reason"] != "proof-cache-collision", v
        # The forgery, whose key hickory's cache now holds for the attacker's RRset.
        second = hierarchy.dig("c1", "www.signed.lab", qtype="AAAA")
        assert second.status == "SERVFAIL", f"the colliding forgery passed:\n{second.raw}"
        assert EDE_BOGUS in second.ede_codes and addr2 not in second.raw, second.raw
        v = proxy_verdict(guard, qname="www.signed.lab", qtype="AAAA", reason="proof-cache-collision")
        assert (v["verdict"], v["dnssec"]) == ("bogus", "bogus"), v
        # Everything else is relayed and still validates.
        ok = hierarchy.dig("c1", "x.wild.signed.lab")
        assert ok.status == "NOERROR" and ok.ad, ok.raw


@pytest.mark.needs_guard
def test_a_forged_cname_beside_a_high_iteration_denial_is_bogus(lab, hierarchy, start_proxy):
    """A hostile upstream answers www.signed.lab A with NXDOMAIN behind a forged, unsigned CNAME
    into slow.lab, whose genuine NSEC3 records (150 iterations, past RFC 9276's 100) deny the
    target. hickory 0.26.3 calls such a denial insecure before it looks at the CNAME, and the
    build before f24d280 took that for the whole answer: the forged NXDOMAIN for a signed name
    reached the client. Now it is SERVFAIL with EDE 6, verdict bogus, and the relay's other
    answers, slow.lab's own denial included, are judged as before."""
    port = 5306
    with relay_in_fault_pod(lab, port, "--forge-chain", "www.signed.lab", "gone.slow.lab"):
        forged = lab.dig("c1", "www.signed.lab", H.GARBAGE, "-p", str(port), "+dnssec")
        assert forged.status == "NXDOMAIN" and any(a[3] == "CNAME" for a in forged.answers), forged.raw
        assert "NSEC3" in forged.raw and " 150 " in forged.raw, f"the relay carried no slow.lab denial:\n{forged.raw}"
        guard = start_proxy(hierarchy.proxy_config(upstreams=[f"{H.GARBAGE}:{port}"]))
        r = hierarchy.dig("c1", "www.signed.lab")
        assert r.status == "SERVFAIL" and EDE_BOGUS in r.ede_codes, f"the forged CNAME passed:\n{r.raw}"
        v = proxy_verdict(guard, qname="www.signed.lab", qtype="A")
        assert (v["verdict"], v["dnssec"]) == ("bogus", "bogus"), v
        # slow.lab's own denial, genuine, is what RFC 9276 allows: insecure, no AD.
        nx = hierarchy.dig("c1", "gone.slow.lab")
        assert nx.status == "NXDOMAIN" and not nx.ad, nx.raw
        assert proxy_verdict(guard, qname="gone.slow.lab")["dnssec"] == "insecure"
        ok = hierarchy.dig("c1", "x.wild.signed.lab")
        assert ok.status == "NOERROR" and ok.ad, ok.raw


@pytest.mark.needs_guard
def test_a_chain_walk_that_outlasts_the_query_budget_is_servfail_not_bogus(lab, hierarchy, start_proxy):
    """A slow upstream (a relay in the fault pod holding every exchange 0.3 s) and a proxy with
    a cold chain: validating www.signed.lab takes the answer and then a DS or DNSKEY fetch per
    level, each within one attempt's timeout (1 s) but together past proxy.query_timeout_ms
    (1.2 s). The whole query ends at the budget with SERVFAIL and EDE 22, not the EDE 6 that
    would call signed.lab's data bogus; the upstream is not marked down for the fetch the budget
    cut to under half its timeout. Unbound behind the relay is warmed, so only the relay's
    delays count."""
    port = 5301
    upstream = f"{H.GARBAGE}:{port}"
    with relay_in_fault_pod(lab, port, delay=0.3):
        hierarchy.warm([("www.signed.lab", "A"), ("signed.lab", "DNSKEY"), ("signed.lab", "DS"),
                        ("lab", "DNSKEY"), ("lab", "DS"), (".", "DNSKEY")])
        guard = start_proxy(hierarchy.proxy_config(upstreams=[upstream], timeout_ms=1000, query_timeout_ms=1200))
        r = hierarchy.dig("c1", "www.signed.lab")
        assert r.status == "SERVFAIL", f"the chain walk was not cut at the budget:\n{r.raw}"
        assert 22 in r.ede_codes and EDE_BOGUS not in r.ede_codes, r.raw
        assert "query_timeout_ms (1200 ms)" in r.raw, r.raw
        v = proxy_verdict(guard, qname="www.signed.lab")
        assert (v["verdict"], v["reason"], v["dnssec"]) == ("servfail", "query-timeout", "indeterminate"), v
        assert guard.metric(f'dns_guard_upstream_healthy{{upstream="{upstream}"}}') == 1, guard.scrape()


def _faulty_relay(lab, port: int, fault: str, qtype: int):
    """A relay to the lab's resolver in the fault pod on GARBAGE:port, with one fault
    (`swallow` or `servfail`) for queries of `qtype`. Returns its pid and a dig straight at it
    for signed.lab, once it answers."""
    relay = lab.spawn("fault", [sys.executable, str(HERE / "hierarchy.py"), "serve", "--mode", "relay",
                                "--listen", H.GARBAGE, "--port", str(port), "--delay", "0", f"--{fault}", str(qtype)],
                      f"{fault}-{qtype}")

    def direct(qt):
        return lab.dig("c1", "signed.lab", H.GARBAGE, "-p", str(port), "+dnssec", "+timeout=1", qtype=qt)
    try:
        _wait_for(lambda: direct("SOA").status == "NOERROR", 10, 0.2)  # the relay is starting
    except BaseException:
        _stop_pid(relay)
        raise
    return relay, direct


def _two_lookups_are_indeterminate(hierarchy, guard, qname: str = "www.signed.lab") -> None:
    """`qname`, asked twice, gets SERVFAIL with EDE 22 and never EDE 6 both times, and both
    lines say servfail / validation-unreachable / indeterminate; nothing is logged bogus."""
    for attempt in (1, 2):
        r = hierarchy.dig("c1", qname)
        assert r.status == "SERVFAIL", r.raw
        assert 22 in r.ede_codes and EDE_BOGUS not in r.ede_codes, f"lookup {attempt}:\n{r.raw}"
    _wait_for(lambda: len(guard.find_verdicts(layer="proxy", qname=qname)) >= 2, 3, 0.1)
    lines = guard.find_verdicts(layer="proxy", qname=qname)
    assert len(lines) == 2, lines
    for v in lines:
        assert (v["verdict"], v["reason"], v["dnssec"]) == ("servfail", "validation-unreachable", "indeterminate"), v
    assert not guard.find_verdicts(verdict="bogus"), guard.verdicts()[-4:]


@pytest.mark.needs_guard
def test_a_chain_the_upstream_will_not_serve_is_indeterminate_not_bogus(lab, hierarchy, start_proxy):
    """An upstream that answers everything but DS queries (a relay in the fault pod that
    swallows them): the validator gets signed.lab's DNSKEYs but cannot tie them to lab's DS.
    RFC 4035 §4.3 calls an answer whose DNSSEC records cannot be obtained indeterminate:
    SERVFAIL with EDE 22, reason validation-unreachable, never the `bogus` verdict and EDE 6
    that mean signed.lab's data failed its signatures. Asked twice: a failed chain walk must
    not be remembered as a bogus proof (hickory keeps those up to 300 s by default), or the
    second lookup would come back EDE 6."""
    port = 5302
    relay, direct = _faulty_relay(lab, port, "swallow", 43)
    try:
        assert direct("DS").status is None, "the relay answered a DS query"
        guard = start_proxy(hierarchy.proxy_config(upstreams=[f"{H.GARBAGE}:{port}"], timeout_ms=500))
        _two_lookups_are_indeterminate(hierarchy, guard)
    finally:
        _stop_pid(relay)


@pytest.mark.needs_guard
@pytest.mark.parametrize("fault,port,direct_status", [("swallow", 5303, None), ("servfail", 5304, "SERVFAIL")])
def test_a_ds_trust_anchor_whose_keys_cannot_be_fetched_is_indeterminate(lab, hierarchy, start_proxy,
                                                                         fault, port, direct_status):
    """With a DS trust anchor the validator first fetches the root's DNSKEYs, the keys the DS
    covers. An upstream that swallows DNSKEY queries, or answers them SERVFAIL, leaves it
    nothing to check, which proves nothing (RFC 4035 §4.3): SERVFAIL with EDE 22, reason
    validation-unreachable, and the next query tries again. Not `bogus` with EDE 6 (reason
    no-trust-anchor), which says the root's keys failed the anchor; the build before this test
    answered so."""
    relay, direct = _faulty_relay(lab, port, fault, 48)
    try:
        assert direct("DNSKEY").status == direct_status, f"the relay's DNSKEY answer is not {fault}"
        guard = start_proxy(hierarchy.proxy_config(upstreams=[f"{H.GARBAGE}:{port}"], anchor="ds", timeout_ms=500))
        _two_lookups_are_indeterminate(hierarchy, guard)
    finally:
        _stop_pid(relay)


@pytest.mark.needs_guard
def test_unsigned_zone_is_insecure(hierarchy, start_proxy):
    guard = start_proxy(hierarchy.proxy_config())
    r = hierarchy.dig("c1", "www.unsigned.lab")
    assert r.status == "NOERROR" and r.addresses == [H.A["www.unsigned.lab"]], r.raw
    assert not r.ad, r.raw
    v = proxy_verdict(guard, qname="www.unsigned.lab")
    assert v["dnssec"] == "insecure" and v["verdict"] == "allow", v


# --------------------------------------------------------------------------- rebinding, cloaking


@pytest.mark.needs_guard
def test_rebinding_answers_blocked(hierarchy, start_proxy):
    guard = start_proxy(hierarchy.proxy_config())
    failures = []
    for name, (qtype, addr) in H.REBIND.items():
        r = hierarchy.dig("c1", name, qtype=qtype)
        if r.status != "NOERROR" or r.addresses or EDE_BLOCKED not in r.ede_codes:
            failures.append(f"{name} {qtype} -> {addr}: status {r.status}, answers {r.addresses}, "
                            f"EDE {r.ede}")
            continue
        v = guard.wait_verdict(layer="proxy", qname=name, verdict="rebind")
        if not v:
            failures.append(f"{name}: no rebind verdict")
    assert not failures, "\n".join(failures) + f"\nverdicts: {guard.verdicts()[-8:]}"


@pytest.mark.needs_guard
def test_cluster_local_private_answers_allowed(hierarchy, start_proxy):
    # Default rebinding.allow has cluster.local: pod and service addresses are private by design.
    start_proxy(hierarchy.proxy_config())
    for name, (qtype, addr) in H.CLUSTER.items():
        r = hierarchy.dig("c1", name, qtype=qtype)
        assert r.status == "NOERROR" and r.addresses == [addr], r.raw
        assert EDE_BLOCKED not in r.ede_codes, r.raw


@pytest.mark.needs_guard
def test_cname_cloaking_blocked(hierarchy, start_proxy):
    # tracker.signed.lab -> cdn.unsigned.lab -> metrics.adnet.lab, and adnet.lab is listed.
    guard = start_proxy(hierarchy.proxy_config(), {"block.txt": f"||{H.BLOCKED_TARGET}^\n"})
    r = hierarchy.dig("c1", H.CLOAKED)
    assert not r.addresses, f"cloaked tracker resolved:\n{r.raw}"
    assert r.status in ("NXDOMAIN", "NOERROR", "REFUSED"), r.raw
    assert EDE_BLOCKED in r.ede_codes, r.raw
    v = proxy_verdict(guard, qname=H.CLOAKED, verdict="block")
    assert v.get("rule") or v.get("list"), v
    # The listed name itself, asked directly, is blocked by the proxy too (no XDP here).
    direct = hierarchy.dig("c1", "metrics.adnet.lab")
    assert not direct.addresses and EDE_BLOCKED in direct.ede_codes, direct.raw
    assert hierarchy.dig("c1", "www.signed.lab").addresses == [H.A["www.signed.lab"]]


# --------------------------------------------------------------------------- upstream faults


@pytest.mark.needs_guard
@pytest.mark.parametrize("upstream", [H.DOWN, H.SLOW, H.GARBAGE], ids=["down", "slow", "garbage"])
def test_faulty_upstream_servfails_within_timeout(hierarchy, start_proxy, upstream):
    # SLOW is a tiny Python relay that holds each answer 8 s: a test double, not a real server.
    timeout_ms = 1000
    guard = start_proxy(hierarchy.proxy_config(upstreams=[upstream], timeout_ms=timeout_ms))
    for i in range(3):
        t0 = time.monotonic()
        r = hierarchy.dig("c1", f"f{i}.wild.unsigned.lab", timeout=8)
        took = time.monotonic() - t0
        assert r.status == "SERVFAIL", f"{upstream}: {r.raw}"
        assert not r.addresses, r.raw
        # One upstream, so one timeout (plus a TCP retry after a garbage reply, at most).
        assert took < 2 * timeout_ms / 1000 + 1.0, f"SERVFAIL took {took:.1f}s (timeout_ms {timeout_ms})"
    assert guard.alive(), guard.stderr_tail()
    assert guard.wait_verdict(layer="proxy", verdict="servfail"), guard.verdicts()[-5:]


@pytest.mark.needs_guard
@pytest.mark.parametrize("upstreams", [[H.DOWN, H.GARBAGE, H.REC], [H.SLOW, H.REC]], ids=["down-garbage", "slow"])
def test_failover_to_next_upstream(hierarchy, start_proxy, upstreams):
    # Three upstreams at most per query: the working one is within reach of the first query.
    timeout_ms = 700
    guard = start_proxy(hierarchy.proxy_config(upstreams=upstreams, timeout_ms=timeout_ms))
    for name in ("www.signed.lab", "x.wild.signed.lab", "www.unsigned.lab"):
        r = hierarchy.dig("c1", name, timeout=15)
        assert r.status == "NOERROR" and r.addresses == [H.A[name]], f"no failover for {name}:\n{r.raw}"
    # Once an upstream has failed, the working one is asked first: no timeout per query.
    # SLOW and GARBAGE never give a usable answer, so asking either first costs a whole
    # timeout_ms inside the proxy; its own latency_ms shows that, where the wall time of
    # nsenter + dig would mostly measure process start-up. dig's +timeout=5 bounds liveness.
    name = "y.wild.unsigned.lab"
    r = hierarchy.dig("c1", name, timeout=5)
    assert r.status == "NOERROR" and r.addresses == [H.A["x.wild.unsigned.lab"]], r.raw
    v = proxy_verdict(guard, qname=name)
    assert v["upstream"] == f"{H.REC}:53", f"answered by {v['upstream']}, not the healthy upstream: {v}"
    assert v["latency_ms"] < timeout_ms, f"{v['latency_ms']} ms: a failed upstream was asked first: {v}"
    assert hierarchy.dig("c1", "www.signed.lab").ad
    assert guard.alive()


@pytest.mark.needs_guard
def test_a_verdict_log_nobody_reads_never_stalls_answers(lab, hierarchy, start_proxy):
    """A container's log pipe can stall (the node's disk is slow, the runtime is busy): a blocking
    write to stdout held the proxy's workers, and DNS stopped with it. The verdict log is written
    by a thread of its own, behind a bounded queue: a pipe nobody reads costs verdict lines,
    counted in dns_guard_verdict_log_dropped_total, and no answer."""
    guard = start_proxy(hierarchy.proxy_config(dnssec="off"))
    guard.stop()
    fifo = guard.dir / f"verdicts-{guard.runs + 1}.jsonl"  # the next run's stdout
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # held open, never read: the pipe fills
    try:
        guard.start()
        assert guard.proxy_listening(5.0), guard.stderr_tail()
        # allow_sample 1: a line per answer, ~300 bytes; the pipe holds 64 KiB, the queue 4 MiB.
        res = lab.dnsperf("c1", v4("coredns"), [f"s{i}.wild.unsigned.lab" for i in range(200)],
                          duration=10, qps=2500, timeout=2, extra=["-p", str(H.PROXY_PORT)])
        assert res.completed >= 0.99 * res.sent and res.rcodes == {"NOERROR": res.completed}, \
            f"answers stalled behind the verdict log: {res}; stderr:\n{guard.stderr_tail()}"
        dropped = metric_sum(lab, "dns_guard_verdict_log_dropped_total")
        assert dropped > 0, f"{res.completed} answers, a pipe nobody reads, and no verdict line counted lost"
        assert "dropping verdicts until it catches up" in guard.stderr_tail(200)
        # SIGTERM with the reader still stalled: the drain waits a bounded time, never for it.
        rc = guard.stop()
        assert rc == 0, f"SIGTERM exit {rc} with the log's reader stalled: {guard.stderr_tail()}"
    finally:
        os.close(reader)


def test_fault_storm_no_crash_no_fd_leak(lab, hierarchy, start_proxy):
    timeout_ms = 500
    guard = start_proxy(hierarchy.proxy_config(upstreams=[H.DOWN, H.GARBAGE, H.SLOW], timeout_ms=timeout_ms))
    pid = guard_pid(guard)
    hierarchy.dig("c1", "warm.wild.unsigned.lab", timeout=5)
    time.sleep(timeout_ms / 1000 * 4)
    before = fd_count(pid)
    res = lab.dnsperf("c1", v4("coredns"), [f"s{i}.wild.unsigned.lab" for i in range(200)] + [H.BOGUS_DATA],
                      duration=3, qps=150, timeout=3, extra=["-p", str(H.PROXY_PORT)])
    assert res.completed > 0.9 * res.sent, f"queries went unanswered (want SERVFAIL): {res}"
    assert set(res.rcodes) <= {"SERVFAIL"}, res
    assert guard.alive(), guard.stderr_tail()
    # Every faulty exchange has timed out by now; its sockets must be gone.
    after = _wait_for(lambda: (n := fd_count(pid)) <= before + 4 and n, 3 * timeout_ms / 1000 * 3 + 5) or fd_count(pid)
    assert after <= before + 4, f"fd leak: {before} before, {after} after {res.sent} faulty queries"


# --------------------------------------------------------------------------- malformed clients


@pytest.mark.needs_guard
def test_malformed_requests_formerr_or_silence(lab, hierarchy, start_proxy):
    guard = start_proxy(hierarchy.proxy_config())
    out = lab.workdir / "probe.json"
    lab.run("c1", [SCAPY_PYTHON, str(HERE / "forger.py"), "probe", "--dst", H.PROXY_ADDR,
                   "--port", str(H.PROXY_PORT), "--out", str(out)], timeout=60)
    bad = []
    for rec in json.loads(out.read_text()):
        if rec["reply"] is None:
            continue
        if rec["allowed"] == "silence":
            bad.append(f"{rec['name']}: answered {rec['reply'][:40]}")
        elif not (rec.get("qr") and rec.get("rcode") == 1 and rec.get("id_echoed")):
            bad.append(f"{rec['name']}: want FORMERR echoing the id or no reply, got {rec}")
    assert not bad, "\n".join(bad)
    assert guard.alive(), f"dns-guard died on malformed input:\n{guard.stderr_tail()}"
    r = hierarchy.dig("c1", "www.signed.lab")
    assert r.status == "NOERROR" and r.ad, r.raw


# --------------------------------------------------------------------------- forgery


@pytest.fixture
def attacker(lab, hierarchy):
    """Pod `atk` (198.18.0.66) on the bridge, receiving a mirror of every frame the coredns pod sends."""
    lab.add_pod("atk", [66], v6=False)
    br = lab.ns("br")
    tc = ["tc", "-n", br]
    try:
        for argv in (tc + ["qdisc", "add", "dev", "vcoredns", "clsact"],
                     tc + ["filter", "add", "dev", "vcoredns", "ingress", "protocol", "all", "u32",
                           "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "vatk"]):
            r = subprocess.run(argv, capture_output=True, text=True)
            if r.returncode != 0:
                pytest.fail(f"{' '.join(argv)}: {r.stderr}", pytrace=False)
        yield "198.18.0.66"
    finally:
        subprocess.run(tc + ["qdisc", "del", "dev", "vcoredns", "clsact"], capture_output=True)
        lab.remove_pod("atk")


@pytest.mark.needs_guard
def test_forged_replies_rejected_counted_and_tcp_fallback(lab, hierarchy, start_proxy, attacker):
    # The upstream is the relay (0.3 s per exchange, like a distant resolver), so forged
    # replies sent when the query is seen arrive while the proxy's socket is still waiting.
    guard = start_proxy(hierarchy.proxy_config(
        upstreams=[H.RELAY], timeout_ms=3000,
        spoof={"threshold": THRESHOLD, "window_s": 60, "tcp_cooldown_s": 300}))
    out, ready = lab.workdir / "forger.json", lab.workdir / "forger.ready"
    out.unlink(missing_ok=True)
    ready.unlink(missing_ok=True)
    proc = lab.spawn("atk", [SCAPY_PYTHON, str(HERE / "forger.py"), "attack", "--proxy", H.PROXY_ADDR,
                             "--upstream", H.RELAY, "--attacker", attacker, "--out", str(out),
                             "--ready", str(ready), "--max-seconds", "150"], "forger")
    try:
        if not _wait_for(lambda: ready.exists() or proc.poll() is not None, 30) or not ready.exists():
            pytest.fail(f"forger did not start: {(lab.workdir / 'forger.err').read_text()}", pytrace=False)
        results = []
        for i in range(15):
            name = f"p{i}.wild.signed.lab"
            results.append((name, hierarchy.dig("c1", name, timeout=10)))
    finally:
        _stop_pid(proc, signal.SIGINT, 15)
    assert out.exists(), f"forger wrote no result: {(lab.workdir / 'forger.err').read_text()[-2000:]}"
    seen = json.loads(out.read_text())
    assert not seen["errors"], seen["errors"][:5]
    attacked = seen["queries"]
    assert attacked, "the forger never saw a UDP query from the proxy to its upstream (mirror broken?)"

    # 1. No forged record ever reaches a client.
    poisoned = [(n, r.raw) for n, r in results if MARKER_V4 in r.raw or MARKER_V6 in r.raw]
    assert not poisoned, f"forged answer delivered to the client: {poisoned[0]}"
    # 2. Resolution keeps working.
    broken = [(n, r.status, r.addresses) for n, r in results
              if r.status != "NOERROR" or r.addresses != ["198.19.1.2"]]
    assert not broken, f"resolution broke under attack: {broken}"
    # 3. Every forgery that reached an open socket is counted. Forgeries for a query all leave
    #    within send_ms of it while the relay holds the real answer RELAY_DELAY s, so those of
    #    queries sent well inside that window all arrived while the proxy was still listening.
    sent = seen["sent"]
    #    Wrong-source forgeries are left out of the lower bound: a connected socket never sees them.
    in_window = sum(n for q in attacked if q["send_ms"] < H.RELAY_DELAY * 1000 * 0.7
                    for kind, n in q["forged"].items() if kind != "wrong-source")
    counted = metric_sum(lab, "dns_guard_spoof_responses")
    spoofs = guard.find_verdicts(layer="proxy", verdict="spoof")
    assert in_window <= counted <= sum(sent.values()), (
        f"spoof_responses counter {counted}, forgeries sent {sent} ({in_window} surely in the window)")
    assert spoofs, "no spoof verdict line at all"
    # 4. Past the threshold: a poisoning-attempt verdict and the upstream moves to TCP.
    assert guard.wait_verdict(layer="proxy", verdict="poisoning-attempt"), guard.verdicts()[-8:]
    assert seen["syns"], f"no TCP SYN to the upstream after {counted} spoofs ({len(attacked)} UDP queries)"
    assert seen["syns"][0]["t"] >= attacked[0]["t"], "TCP before any attack: not a reaction to spoofing"
    assert guard.alive(), guard.stderr_tail()


# --------------------------------------------------------------------------- both layers


@pytest.mark.needs_guard
def test_both_layers(lab, hierarchy, start_proxy):
    """XDP on the coredns pod's eth0 guards the proxy's port; the proxy catches what XDP cannot see."""
    guard = start_proxy({**hierarchy.proxy_config(), "interface": "eth0", "xdp": {"ports": [H.PROXY_PORT]}},
                        {"block.txt": f"||{H.BLOCKED_TARGET}^\n"})
    assert lab.xdp_attached("coredns")
    direct = hierarchy.dig("c1", "metrics.adnet.lab")
    assert direct.status == "NXDOMAIN", direct.raw
    assert guard.wait_verdict(layer="xdp", qname="metrics.adnet.lab", verdict="block"), guard.verdicts()[-4:]
    cloaked = hierarchy.dig("c1", H.CLOAKED)
    assert not cloaked.addresses and EDE_BLOCKED in cloaked.ede_codes, cloaked.raw
    proxy_verdict(guard, qname=H.CLOAKED, verdict="block")
    r = hierarchy.dig("c2", "www.signed.lab")
    assert r.status == "NOERROR" and r.ad and r.addresses == [H.A["www.signed.lab"]], r.raw
