"""Fast path end to end: XDP on the coredns pod's eth0 answers or drops before the resolver sees a packet.

Every test but the one that changes modes across a restart runs dns-guard with `mode: auto`
(override with DG_XDP_MODE; scripts/test.sh runs them again with `native`) against the session
lab, so every pass also proves the client received a synthesized reply in that mode.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import BPFFS, GOOD_V4, _wait_for as lab_wait, to_yaml, v4, v6

pytestmark = pytest.mark.needs_guard

# 253 characters, the longest name DNS allows (255 octets on the wire, RFC 1035 2.3.4).
LONG_NAME = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 56, "test"])
LONG_CLEAN = ".".join(["a" * 63, "b" * 63, "c" * 63, "e" * 56, "test"])
assert len(LONG_NAME) == 253 and len(LONG_CLEAN) == 253

BLOCK = f"""\
# AdGuard syntax: name and subdomains
||blocked.test^
||suffix.test^
! subdomains only
*.wild.test
exact.test
0.0.0.0 hosts.test
Upper.Case.Test.
{LONG_NAME}
"""
ALLOW = """\
# allowlist beats blocklist (Pi-hole / AdGuard semantics)
ok.blocked.test
"""
LISTS = {"block.txt": BLOCK, "allow.txt": ALLOW}


def assert_unseen(lab, name):
    assert not lab.resolver_saw(name), f"resolver saw {name}: XDP let it through"


# --------------------------------------------------------------------------- actions


@pytest.mark.parametrize("client,server", [("c1", v4("coredns")), ("c2", v6("coredns"))], ids=["ipv4", "ipv6"])
def test_blocked_name_answered_nxdomain_in_kernel(lab, start_guard, client, server):
    guard = start_guard({"xdp": {"action": "nxdomain"}}, LISTS)
    assert lab.xdp_attached("coredns"), "dns-guard said ready but eth0 has no XDP program"
    name = f"www.{client}.blocked.test"
    r = lab.dig(client, name, server)
    assert r.status == "NXDOMAIN", r.raw
    assert "qr" in r.flags and not r.answers
    assert_unseen(lab, name)
    v = guard.wait_verdict(qname=name)
    assert v, f"no verdict for {name}: {guard.verdicts()}"
    assert v["layer"] == "xdp" and v["verdict"] == "block" and v["action"] == "nxdomain", v
    assert v["client"] == (v4(client) if ":" not in server else v6(client)), v
    assert v["qtype"] == "A" and v["list"] and v["rule"], v
    # A clean name still goes through the resolver.
    clean = lab.dig(client, "good.test", server)
    assert clean.status == "NOERROR" and clean.addresses == [GOOD_V4], clean.raw


def test_action_refused(lab, start_guard):
    guard = start_guard({"xdp": {"action": "refused"}}, LISTS)
    r = lab.dig("c1", "refused.blocked.test")
    assert r.status == "REFUSED", r.raw
    assert_unseen(lab, "refused.blocked.test")
    assert guard.wait_verdict(qname="refused.blocked.test", action="refused")


def test_action_drop(lab, start_guard):
    guard = start_guard({"xdp": {"action": "drop"}}, LISTS)
    r = lab.dig("c1", "drop.blocked.test", None, "+tries=1", "+timeout=1")
    assert r.timed_out and r.status is None, r.raw
    assert_unseen(lab, "drop.blocked.test")
    assert guard.wait_verdict(qname="drop.blocked.test", action="drop")
    assert lab.dig("c1", "good.test").status == "NOERROR"


def test_action_log_resolves_and_logs(lab, start_guard):
    guard = start_guard({"xdp": {"action": "log"}}, LISTS)
    r = lab.dig("c1", "log.blocked.test")
    assert r.status == "NOERROR" and r.addresses, r.raw
    assert lab.resolver_saw("log.blocked.test")
    v = guard.wait_verdict(qname="log.blocked.test", action="log")
    assert v, guard.verdicts()


def test_allow_sample_logs_allowed_queries(lab, start_guard):
    # log.allow_sample: 1 -> every query XDP passes is logged as allow.
    guard = start_guard({"log": {"allow_sample": 1}}, LISTS)
    r = lab.dig("c1", "good.test")
    assert r.status == "NOERROR" and r.addresses, r.raw
    v = guard.wait_verdict(qname="good.test", verdict="allow")
    assert v and v["action"] == "pass" and v["reason"] == "clean", guard.verdicts()
    # The default (0) logs nothing for allowed queries.
    guard.stop()
    guard.detach()
    quiet = start_guard({}, LISTS)
    assert lab.dig("c1", "good.test").status == "NOERROR"
    assert quiet.wait_verdict(qname="good.test", timeout=1.0) is None, quiet.verdicts()


# --------------------------------------------------------------------------- matching

MATCHING = [
    # (client, server family, query, expected status)
    ("c1", 4, "blocked.test", "NXDOMAIN"),              # ||x^ covers the apex
    ("c1", 4, "a.b.suffix.test", "NXDOMAIN"),           # ... and any depth below it
    ("c1", 4, "notsuffix.test", "NOERROR"),             # label boundary, not a string suffix
    ("c1", 4, "wild.test", "NOERROR"),                  # *.x leaves the apex alone
    ("c1", 4, "x.wild.test", "NXDOMAIN"),
    ("c1", 4, "deep.x.wild.test", "NXDOMAIN"),
    ("c1", 4, "exact.test", "NXDOMAIN"),                # a plain name is exact
    ("c1", 4, "sub.exact.test", "NOERROR"),
    ("c1", 4, "hosts.test", "NXDOMAIN"),                # hosts-file line
    ("c1", 4, "sub.hosts.test", "NOERROR"),
    ("c1", 4, "ok.blocked.test", "NOERROR"),            # allowlist beats blocklist
    ("c1", 4, "not-ok.blocked.test", "NXDOMAIN"),
    ("c1", 4, "EXACT.TEST", "NXDOMAIN"),                # case-insensitive (RFC 4343)
    ("c1", 4, "ExAcT.tEsT.", "NXDOMAIN"),               # mixed case, trailing dot
    ("c1", 4, "upper.case.test", "NXDOMAIN"),           # list entry had capitals and a trailing dot
    ("c2", 6, "exact.test", "NXDOMAIN"),                # IPv6 client
    ("c2", 6, "Sub.Suffix.Test", "NXDOMAIN"),
    ("c2", 6, "good.test", "NOERROR"),
    ("c1", 4, LONG_NAME, "NXDOMAIN"),                   # 253-byte name
    ("c1", 4, LONG_CLEAN, "NOERROR"),
    ("c2", 6, LONG_NAME.upper(), "NXDOMAIN"),
]


def test_matching_semantics(lab, start_guard):
    start_guard({}, LISTS)
    failures = []
    for client, fam, name, want in MATCHING:
        server = v4("coredns") if fam == 4 else v6("coredns")
        r = lab.dig(client, name, server)
        if r.status != want:
            failures.append(f"{client} -> {server} {name!r}: got {r.status}, want {want}")
    assert not failures, "\n".join(failures)
    lab.resolver_barrier()
    for _, _, name, want in MATCHING:
        if want == "NXDOMAIN":
            assert not lab.resolver_saw(name, sync=False), f"resolver saw blocked {name}"


RPZ_ZONE = """\
$TTL 300
$ORIGIN rpz.lab.
@ SOA localhost. hostmaster.localhost. 1 3600 600 86400 300
@ NS localhost.
nx.rpz.test CNAME .
*.sub.rpz.test CNAME .
ok.sub.rpz.test CNAME rpz-passthru.
drop.rpz.test CNAME rpz-drop.
*.drop.rpz.test CNAME .
"""


def test_rpz_zone_actions_per_trigger(lab, start_guard):
    # An RPZ file among the blocklists: its actions override xdp.action (refused here),
    # each for the trigger it was written for, and rpz-passthru allows.
    guard = start_guard({"xdp": {"action": "refused"}}, {"block.txt": BLOCK, "policy.rpz": RPZ_ZONE})
    cases = [("nx.rpz.test", "NXDOMAIN"), ("a.sub.rpz.test", "NXDOMAIN"), ("sub.rpz.test", "NOERROR"),
             ("ok.sub.rpz.test", "NOERROR"), ("x.drop.rpz.test", "NXDOMAIN"), ("drop.rpz.test", None),
             ("refused.blocked.test", "REFUSED")]
    got = {name: lab.dig("c1", name, None, "+tries=1", "+timeout=1").status for name, _ in cases}
    assert got == dict(cases), got
    for name in ("nx.rpz.test", "a.sub.rpz.test", "x.drop.rpz.test", "drop.rpz.test"):
        assert_unseen(lab, name)
    v = guard.wait_verdict(qname="drop.rpz.test", action="drop")
    assert v and v["rule"] == "drop.rpz.test" and v["list"].endswith("policy.rpz:8"), v or guard.verdicts()


def test_verdict_qname_is_normalized(lab, start_guard):
    guard = start_guard({}, LISTS)
    assert lab.dig("c1", "Norm.Blocked.Test.").status == "NXDOMAIN"
    v = guard.wait_verdict(qname="norm.blocked.test")
    assert v, guard.verdicts()
    assert not v["qname"].endswith("."), v
    v = None
    assert lab.dig("c1", LONG_NAME).status == "NXDOMAIN"
    v = guard.wait_verdict(qname=LONG_NAME)
    assert v and len(v["qname"]) == 253, guard.verdicts()[-3:]


# --------------------------------------------------------------------------- rate limit


def test_ratelimit_limits_flooding_client_only(lab, start_guard):
    guard = start_guard({"xdp": {"ratelimit": {"qps": 50, "burst": 50, "action": "drop"}}}, LISTS)
    flood = lab.dnsperf("c1", v4("coredns"), [f"flood{i}.example.test" for i in range(50)],
                        duration=3, qps=1000, timeout=1, wait=False)
    time.sleep(0.5)
    calm = []
    for i in range(20):  # 10 qps from c2, well under its own 50 qps budget
        calm.append(lab.dig("c2", f"calm{i}.example.test"))
        time.sleep(0.1)
    res = flood.result()
    assert res.sent > 1500, res
    # 3 s at 50 qps + a 50-query burst lets at most ~200 through.
    assert res.lost >= 0.8 * res.sent, f"c1 was not limited: {res}"
    assert res.completed <= 400, f"c1 was not limited: {res}"
    bad = [(i, r.status) for i, r in enumerate(calm) if r.status != "NOERROR"]
    assert not bad, f"c2 was limited too: {bad}"
    assert guard.wait_verdict(verdict="ratelimit", client=v4("c1")), guard.verdicts()[-5:]
    assert not guard.find_verdicts(verdict="ratelimit", client=v4("c2"))
    # The flood's random names fold into about one line per second for c1, and the lines'
    # counts add up to every query the kernel refused.
    lines = _folded(guard, res.lost, verdict="ratelimit", client=v4("c1"))
    assert len(lines) <= 8, f"{len(lines)} ratelimit lines for a 3 s flood: not folded"


def _folded(guard, at_least, **match):
    """Verdict lines matching ``match`` once their counts cover ``at_least`` decisions."""
    def covered():
        lines = guard.find_verdicts(**match)
        return lines if sum(v["count"] for v in lines) >= at_least else None
    lines = lab_wait(covered, 5.0) or guard.find_verdicts(**match)
    total = sum(v["count"] for v in lines)
    assert total >= at_least, f"counts add up to {total}, want >= {at_least}: {lines[-3:]}"
    return lines


def test_a_flood_of_one_blocked_name_is_one_counted_line_per_second(lab, start_guard):
    guard = start_guard({"xdp": {"action": "nxdomain"}}, LISTS)
    res = lab.dnsperf("c1", v4("coredns"), ["flood.blocked.test"], duration=3, qps=2000, timeout=1)
    answered = res.rcodes.get("NXDOMAIN", 0)
    assert answered >= 0.9 * res.sent, res
    lines = _folded(guard, answered, qname="flood.blocked.test")
    # The first query's line is written at once, then one line per closed 1 s window.
    assert lines[0]["count"] == 1, lines[0]
    assert 2 <= len(lines) <= 6, f"{len(lines)} lines for {answered} blocked queries: {lines}"
    assert all(v["verdict"] == "block" and v["client"] == v4("c1") for v in lines), lines


def test_a_shutdown_writes_the_folds_still_open(lab, start_guard):
    guard = start_guard({"xdp": {"action": "nxdomain"}}, LISTS)
    res = lab.dnsperf("c1", v4("coredns"), ["last-second.blocked.test"], duration=1.5, qps=2000, timeout=1)
    answered = res.rcodes.get("NXDOMAIN", 0)
    assert answered >= 0.9 * res.sent, res
    # SIGTERM at once: the window the last queries folded into has not closed yet.
    assert guard.stop() == 0, guard.stderr_tail()
    lines = guard.find_verdicts(qname="last-second.blocked.test")
    total = sum(v["count"] for v in lines)
    assert total == answered, f"{total} decisions logged for {answered} answered queries: {lines}"


def test_ratelimit_truncate_sends_client_to_tcp(lab, start_guard):
    guard = start_guard({"xdp": {"ratelimit": {"qps": 5, "burst": 5, "action": "truncate"}}}, LISTS)
    flood = lab.dnsperf("c1", v4("coredns"), ["tc-flood.example.test"], duration=3, qps=500, wait=False)
    time.sleep(0.5)
    results = [lab.dig("c1", "good.test", None, "+timeout=2") for _ in range(3)]
    flood.result()
    assert any(r.tcp_retry for r in results), "no TC=1 seen:\n" + results[0].raw
    for r in results:
        assert r.status == "NOERROR" and r.addresses == [GOOD_V4], r.raw
    v = guard.wait_verdict(verdict="ratelimit", action="truncate")
    assert v and v["client"] == v4("c1"), guard.verdicts()[-5:]


# --------------------------------------------------------------------------- malformed


def test_malformed_queries_fail_open(lab, start_guard):
    guard = start_guard({}, LISTS)
    with lab.sniff("coredns") as seen:
        lab.scapy("c1", "malformed", "--dst", v4("coredns"), "--sport-base", "40000",
                  "--out", str(guard.dir / "sent4.json"))
        lab.scapy("c2", "malformed", "--dst", v6("coredns"), "--sport-base", "41000",
                  "--out", str(guard.dir / "sent6.json"))
    sent = json.loads((guard.dir / "sent4.json").read_text()) + json.loads((guard.dir / "sent6.json").read_text())
    got = {(s["sport"], s["payload"]) for s in seen}
    missing = [s["name"] + f"(sport {s['sport']})" for s in sent if (s["sport"], s["payload"]) not in got]
    assert not missing, f"XDP did not pass these up to the resolver: {missing}"
    assert guard.alive(), f"dns-guard died: {guard.stderr_tail()}"
    time.sleep(0.5)
    malformed_ports = {v.get("client_port") for v in guard.find_verdicts(verdict="malformed")}
    unlogged = [f"{s['name']}(sport {s['sport']})" for s in sent
                if s["expect"] == "malformed" and s["sport"] not in malformed_ports]
    assert not unlogged, f"not logged as malformed: {unlogged}; verdicts: {guard.verdicts()[-12:]}"
    # Still enforcing afterwards.
    assert lab.dig("c1", "after-malformed.blocked.test").status == "NXDOMAIN"


# --------------------------------------------------------------------------- reload


@pytest.mark.parametrize("layout", ["files", "configmap"], ids=["rename", "configmap-symlink"])
def test_reload_under_load(lab, start_guard, layout):
    guard = start_guard({}, {"block.txt": "old.reload.test\nkept.reload.test\n"}, layout=layout)
    assert lab.dig("c1", "old.reload.test").status == "NXDOMAIN"
    assert lab.dig("c2", "new.reload.test").status == "NOERROR"

    legit = [f"legit{i}.example.test" for i in range(20)] + ["good.test"]
    load = lab.dnsperf("c1", v4("coredns"), legit, duration=5, qps=300, timeout=2, wait=False)
    # A name in both lists, asked across the swap: no answer may slip through in between.
    kept = lab.dnsperf("c2", v4("coredns"), ["kept.reload.test"], duration=5, qps=200, timeout=2, wait=False)
    time.sleep(1)
    t0 = time.monotonic()
    guard.update_list("block.txt", "# replaced\nnew.reload.test\nkept.reload.test\n")
    took = None
    while time.monotonic() - t0 < 2.0:
        if lab.dig("c2", "new.reload.test", None, "+timeout=1").status == "NXDOMAIN":
            took = time.monotonic() - t0
            break
        time.sleep(0.1)
    assert took is not None, f"new entry not enforced within 2 s; stderr:\n{guard.stderr_tail()}"
    guard.wait_stderr("lists reloaded", 2)
    assert lab.dig("c2", "old.reload.test").status == "NOERROR", "removed entry still blocked"
    res = load.result()
    assert res.lost == 0 and res.rcodes == {"NOERROR": res.completed}, f"legitimate queries failed: {res}"
    res = kept.result()
    assert res.completed > 500 and res.rcodes == {"NXDOMAIN": res.completed}, \
        f"a name listed before and after the reload was answered during it: {res}"
    assert not lab.resolver_saw("kept.reload.test"), "the resolver saw a name blocked throughout"


def test_a_list_written_in_place_is_not_enforced_half_written(lab, start_guard):
    """A download straight into the list's path (`curl > list`) truncates it first, then
    stalls: the file is not read while its writer has it open. A download that ends empty,
    or with an error page saved over the list, must not replace the table either (every
    block would lapse). Once the whole file is there, it reloads."""
    guard = start_guard({}, {"block.txt": "a.inplace.test\nb.inplace.test\n"})
    assert lab.dig("c1", "a.inplace.test").status == "NXDOMAIN"
    path = guard.dir / "lists" / "block.txt"
    with open(path, "w") as f:  # truncated, and the download stalls between lines
        f.write("a.inplace.test\n")
        f.flush()
        time.sleep(1.5)  # seven quiet times (200 ms) and more
        assert "reload" not in guard.stderr_tail(), guard.stderr_tail()
        assert lab.dig("c1", "b.inplace.test").status == "NXDOMAIN", "the part written so far was enforced"
        assert "is still open for writing" in guard.stderr_tail(), guard.stderr_tail()
        f.truncate(0)
    # The download ended with nothing.
    guard.wait_stderr("reload refused", 10, "the empty list refused")
    assert "block.txt is empty and no rule, where it had 2" in guard.stderr_tail()
    assert lab.dig("c1", "a.inplace.test").status == "NXDOMAIN", "blocking lapsed on an empty list file"
    path.write_text("<html><body>502 Bad Gateway</body></html>\n")
    guard.wait_stderr("reload refused", 10, "the error page refused", count=2)
    assert lab.dig("c1", "b.inplace.test").status == "NXDOMAIN", "blocking lapsed on an error page"
    assert "has 1 lines that are not list entries and no rule" in guard.stderr_tail()
    path.write_text("a.inplace.test\nc.inplace.test\n")
    guard.wait_stderr("lists reloaded", 10, "the whole file reloaded")
    assert lab.dig("c1", "c.inplace.test").status == "NXDOMAIN"
    assert lab.dig("c1", "b.inplace.test").status == "NOERROR"


def live_table(guard) -> dict:
    """The table map the program uses now: slot 0 of the pinned guard_tables, via bpftool."""
    outer = next(guard.pin_dir.glob("*/guard_tables"))
    r = subprocess.run(["bpftool", "-j", "map", "lookup", "pinned", str(outer), "key", "0", "0", "0", "0"],
                       capture_output=True, text=True, check=True)
    # A map-of-maps slot reads back as the inner map's id, as 4 little-endian bytes.
    inner_id = int.from_bytes(bytes(int(b, 16) for b in json.loads(r.stdout)["value"]), sys.byteorder)
    return table_map(inner_id)


def table_map(map_id: int) -> dict | None:
    r = subprocess.run(["bpftool", "-j", "map", "show", "id", str(map_id)], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def test_a_reload_frees_the_old_table_and_the_new_one_stays_within_12_bytes_a_name(lab, start_guard):
    # Issue 2: the steady state after a reload counts against the 12-byte budget, so the
    # old table must be gone from the kernel, not just unreferenced by the program.
    n = 300_000
    first_list = "".join(f"first{i}.bulk.test\n" for i in range(n))
    guard = start_guard({}, {"block.txt": first_list})
    first = live_table(guard)
    assert first["name"] == "guard_table", first
    assert first["bytes_memlock"] / n <= 12, f"{first['bytes_memlock'] / n:.2f} B/name at load"

    guard.update_list("block.txt", "".join(f"second{i}.bulk.test\n" for i in range(n)))
    guard.wait_stderr("lists reloaded", 20)
    second = live_table(guard)
    assert second["id"] != first["id"], "the reload did not install a new table"
    # The kernel frees an inner map after an RCU grace period once slot 0 lets go of it.
    assert lab_wait(lambda: table_map(first["id"]) is None, 5), \
        f"the old table (map id {first['id']}) is still in the kernel after the reload"
    per_name = second["bytes_memlock"] / n
    assert per_name <= 12, f"{per_name:.2f} B/name after the reload"
    gauge = guard.metric("dns_guard_xdp_table_bytes")
    assert gauge == second["bytes_memlock"], \
        f"dns_guard_xdp_table_bytes {gauge} disagrees with bpftool's {second['bytes_memlock']}"
    assert lab.dig("c1", f"second{n - 1}.bulk.test").status == "NXDOMAIN"
    assert lab.dig("c1", "first0.bulk.test").status == "NOERROR"
    print(f"table after reload: {second['bytes_memlock']} B for {n} names = {per_name:.2f} B/name")


def test_reloads_give_the_freed_list_memory_back(lab, start_guard):
    """Each reload parses a new list beside the old one; once the old one is let go, its heap
    goes back to the kernel. Two things keep it so: the rule map holds a list in three large
    allocations (lists/rule_map.rs), which free whole, and the heap is trimmed after a load.
    Before the trim RSS grew by a list's worth over the first reloads (1M names: 183 MiB
    loaded, 331 MiB after reloads); with the trim but a map holding one small string per name,
    glibc could not give back pages the new list's strings shared with the old one's (up to
    1.68x here, in CI). The peak during a reload (VmHWM) is not judged: two lists side by side is
    the design. RSS is read once both trims have run (2 s, and proxy.query_timeout_ms + 1 s =
    6 s, after a load)."""
    n, settle = 300_000, 7.5

    def rss_kib() -> int:
        status = Path(f"/proc/{guard.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    guard = start_guard({}, {"block.txt": "".join(f"gen1-{i}.bulk.test\n" for i in range(n))})
    assert Path(f"/proc/{guard.proc.pid}/comm").read_text().strip() == "dns-guard"
    time.sleep(settle)
    loaded = rss_kib()
    for gen in range(2, 7):
        guard.update_list("block.txt", "".join(f"gen{gen}-{i}.bulk.test\n" for i in range(n)))
        guard.wait_stderr(f"lists reloaded (generation {gen})", 30)
    assert lab.dig("c1", f"gen6-{n - 1}.bulk.test").status == "NXDOMAIN"
    # Both trims of the last reload have run by `settle`; on a loaded box give them longer.
    deadline = time.monotonic() + settle + 10
    time.sleep(settle)
    while (after := rss_kib()) > loaded * 1.25 and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"VmRSS: {loaded / 1024:.0f} MiB loaded, {after / 1024:.0f} MiB after 5 reloads of {n} names")
    # Measured: 1.00x (27 -> 27 MiB, seven runs, generic and native), once 1.41x in CI before
    # the fixed mmap threshold (main.rs). The map of small strings gave 1.02-1.68x, and 2.3x
    # without the trim.
    assert after <= loaded * 1.25, f"VmRSS {after / 1024:.0f} MiB after 5 reloads, {loaded / 1024:.0f} MiB loaded"


# --------------------------------------------------------------------------- restart / detach


def test_pinned_program_survives_kill_and_restart(lab, start_guard):
    guard = start_guard({}, LISTS)
    assert lab.dig("c1", "r1.blocked.test").status == "NXDOMAIN"

    guard.kill9()
    assert lab.dig("c1", "r2.blocked.test").status == "NXDOMAIN", "pinned link stopped enforcing after kill -9"
    assert_unseen(lab, "r2.blocked.test")

    guard.restart()
    assert "dns-guard ready: XDP reused on" in guard.stderr_tail(), \
        f"the restart did not take over the pinned link:\n{guard.stderr_tail()}"
    assert "xdp.mode differs" not in guard.stderr(), guard.stderr_tail()
    assert lab.dig("c1", "r3.blocked.test").status == "NXDOMAIN"
    assert guard.wait_verdict(qname="r3.blocked.test"), "restarted guard logs no verdicts"
    # The kernel's counters are pinned state too: r2, dropped while no process ran, still counts.
    blocked = guard.metric('dns_guard_xdp_packets_total{reason="blocklist_suffix"}')
    assert blocked is not None and blocked >= 3, f"counters did not survive the restart: {blocked}"
    assert lab.dig("c1", "good.test").status == "NOERROR"

    rc = guard.stop()
    assert rc == 0, f"SIGTERM exit {rc}: {guard.stderr_tail()}"
    assert lab.dig("c1", "r4.blocked.test").status == "NXDOMAIN", "SIGTERM detached the program"

    d = guard.detach()
    assert d.returncode == 0, d.stderr
    r = lab.dig("c1", "r5.blocked.test")
    assert r.status == "NOERROR" and r.addresses, r.raw
    assert lab.resolver_saw("r5.blocked.test")
    leftover = list(guard.pin_dir.rglob("*")) if guard.pin_dir.exists() else []
    assert not guard.pin_dir.exists() or not leftover, f"pins left: {leftover}"
    assert not lab.xdp_attached("coredns"), "detach left an XDP program on eth0"


def test_a_restart_with_another_xdp_mode_keeps_the_link_and_says_so(lab, start_guard):
    guard = start_guard({"xdp": {"mode": "generic"}}, LISTS)
    guard.kill9()
    guard.config["xdp"]["mode"] = "native"
    guard.config_path.write_text(to_yaml(guard.config) + "\n")
    guard.restart()
    err = guard.stderr()
    assert "dns-guard ready: XDP reused on" in err, guard.stderr_tail()
    assert "xdp.mode differs from the pinned link's mode" in err and "pinned=Generic" in err, \
        f"no warning that native was asked for and the generic link kept:\n{guard.stderr_tail()}"
    # The link stayed generic, so replies still arrive whatever the peer has.
    assert lab.dig("c1", "mode.blocked.test").status == "NXDOMAIN"


def test_a_restart_with_another_max_clients_makes_the_rate_limit_map_that_size(lab, start_guard):
    """The rate-limit map is pinned, and a pin is reused as it is: a new xdp.ratelimit.max_clients
    was silently ignored until `dns-guard detach`. A restart now makes the map the size asked."""
    def pinned_entries() -> int:
        pin = next(guard.pin_dir.glob("*/guard_ratelimit"))
        r = subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(pin)], capture_output=True, text=True, check=True)
        return json.loads(r.stdout)["max_entries"]

    guard = start_guard({"xdp": {"ratelimit": {"max_clients": 1000}}}, LISTS)
    assert pinned_entries() == 1000
    guard.stop()
    guard.config["xdp"]["ratelimit"]["max_clients"] = 3000
    guard.config_path.write_text(to_yaml(guard.config) + "\n")
    guard.restart()
    assert pinned_entries() == 3000, guard.stderr_tail()
    assert "xdp.ratelimit.max_clients changed" in guard.stderr(), guard.stderr_tail()
    assert lab.dig("c1", "rl.blocked.test").status == "NXDOMAIN"
    assert lab.dig("c1", "good.test").status == "NOERROR"


# --------------------------------------------------------------------------- config check


def test_pins_of_a_gone_pod_are_swept_and_a_live_pods_are_kept(lab, start_guard):
    """CoreDNS pods on one node share the node's bpffs. A pod deleted without `dns-guard detach`
    leaves its pins (and name tables) behind; the next dns-guard start on the node removes them,
    because the pod's XDP link lost its device, and leaves a live pod's pins alone."""
    shared = str(BPFFS / f"{lab.prefix}-node")
    cfg = {"xdp": {"pin_dir": shared}}
    guards = []
    try:
        lab.add_pod("gone", [81])
        lab.add_pod("live", [82])
        gone = lab.prepare_guard(cfg, LISTS, pod="gone")
        guards.append(gone)
        live = lab.prepare_guard(cfg, LISTS, pod="live")
        guards.append(live)
        gone.start()
        live.start()
        dirs = {p.name: p for p in Path(shared).iterdir()}
        inode = lambda pod: os.stat(f"/run/netns/{lab.ns(pod)}").st_ino  # noqa: E731
        gone_dir, live_dir = dirs[f"eth0-netns{inode('gone')}"], dirs[f"eth0-netns{inode('live')}"]
        assert lab.dig("c1", "x.blocked.test", "198.18.0.82").status == "NXDOMAIN"

        gone.kill9()            # no detach: the pod is deleted with the sidecar in it
        lab.remove_pod("gone")  # its netns and eth0 go; the pinned link loses its device
        assert gone_dir.exists(), "the kernel removed the pins by itself; nothing to sweep"

        start_guard(cfg, LISTS)  # the next dns-guard on this node
        assert not gone_dir.exists(), f"pins of the deleted pod left behind: {list(gone_dir.iterdir())}"
        assert live_dir.exists() and (live_dir / "link").exists(), "a live pod's pins were removed"
        assert lab.dig("c1", "y.blocked.test", "198.18.0.82").status == "NXDOMAIN", "live pod lost XDP"
    finally:
        for g in guards:
            g.cleanup()
            lab.guards.remove(g)
        # remove_pod is a no-op for a pod already removed (or never added): "gone" is only
        # removed above if the test got that far.
        lab.remove_pod("gone")
        lab.remove_pod("live")
        shutil.rmtree(shared, ignore_errors=True)


def test_check_reports_every_error_with_line(lab, guard_binary, tmp_path):
    bad = tmp_path / "guard.yaml"
    bad.write_text('interface: "eth0"\nxdp:\n  mode: "sideways"\n  action: "explode"\n'
                   'blocklists: ["/nonexistent/block.txt"]\n')
    r = lab.check_config(bad)
    assert r.returncode == 64, (r.returncode, r.stdout, r.stderr)
    out = r.stdout + r.stderr
    for line in (3, 4, 5):
        assert f"{bad}:{line}" in out, f"no error at line {line}:\n{out}"


def test_check_prints_counts_per_list_and_skips_bad_lines_with_their_place(lab, tmp_path):
    """`dns-guard check` on a good config: counts per list, and a malformed line is reported as
    file:line and skipped, not fatal (exit 0)."""
    block, allow = tmp_path / "block.txt", tmp_path / "allow.txt"
    block.write_text("||ads.test^\nbad..name\nexact.test\n*.wild.test\n")
    allow.write_text("ok.ads.test\n")
    cfg = tmp_path / "guard.yaml"
    cfg.write_text(f"interface: eth0\nblocklists: [{block}]\nallowlists: [{allow}]\n")
    r = lab.check_config(cfg)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert f"blocklist {block}: 3 rules, 1 lines skipped" in r.stdout, r.stdout
    assert f"allowlist {allow}: 1 rules, 0 lines skipped" in r.stdout, r.stdout
    assert re.search(rf"skipped {re.escape(str(block))}:2\b", r.stdout), r.stdout
    assert re.search(r"table: 4 names \(3 block, 1 allow\)", r.stdout), r.stdout
