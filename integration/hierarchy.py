"""A private DNS hierarchy for the validating forwarder: signed root, TLD and zones on NSD,
Unbound recursing from the private root, and upstream test doubles (slow link, garbage, down).

Everything lives in namespaces added to the lab's bridge and answers only inside the lab:
NSD serves local zone files, Unbound's only root hints are the private root (no internet
hints, no unbound-anchor), and the doubles only relay to that Unbound.

    auth  .61  NSD, root zone "."                     (signed, NSEC)
          .62  NSD, "lab." and "local."               (lab. signed NSEC; local. unsigned)
          .63  NSD, the leaf zones:
               signed.lab.      NSEC3, DS in lab.: validates from the private root anchor;
                                a DNAME into signednsec.lab.; CNAMEs (some from wildcards)
                                into denials
               signednsec.lab.  NSEC, DS in lab.: wildcard case of hickory #2882; a DNAME
                                into signed.lab.
               bogus.lab.       signed, DS in lab., then records/RRSIGs corrupted
               slow.lab.        NSEC3 with 150 iterations, DS in lab.: denials past RFC 9276's limit
               unsigned.lab.    no DS: insecure; rebinding answers and a CNAME hop
               adnet.lab.       unsigned; the blocklisted target of a CNAME-cloaked tracker
    rec   .55  Unbound, iterator only (validation OFF, so bogus data reaches dns-guard and
               dns-guard's own validator is what the tests exercise)
          .57  slow-link relay to .55 (UDP+TCP, RELAY_DELAY s): the forgery window
    fault .56  nothing listens (upstream down: ICMP port unreachable)
          .58  answers correctly but only after SLOW_DELAY s (past any proxy timeout)
          .59  answers every query with garbage
    dot   .65  Unbound serving DNS over TLS only (DotServer, started by the tests that use it)

Run ``python3 hierarchy.py serve --mode relay|garbage ...`` to start a double by hand; the
lab starts them itself.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

P = "198.18.0."
ROOT_NS, TLD_NS, ZONE_NS = P + "61", P + "62", P + "63"
REC = P + "55"
RELAY = P + "57"
DOWN, SLOW, GARBAGE = P + "56", P + "58", P + "59"
PROXY_ADDR, PROXY_PORT = P + "53", 5353
METRICS = "127.0.0.1:9253"  # inside the coredns pod's own loopback
RELAY_DELAY = 0.3
SLOW_DELAY = 8.0

# Answers the tests look for (all inside 198.18.0.0/15 or private on purpose).
A = {
    "www.signed.lab": "198.19.1.1",
    "x.wild.signed.lab": "198.19.1.2",
    "www.signednsec.lab": "198.19.4.1",
    "x.wild.signednsec.lab": "198.19.4.2",
    "ok.bogus.lab": "198.19.2.3",
    "www.unsigned.lab": "198.19.3.1",
    "x.wild.unsigned.lab": "198.19.3.2",
    "metrics.adnet.lab": "198.19.9.9",
}
AAAA_SIGNED = "fd53:6775:6172:1::1:1"
# Rebinding: public-looking names pointing at private / special addresses.
REBIND = {
    "rfc1918.unsigned.lab": ("A", "10.1.2.3"),
    "metadata.unsigned.lab": ("A", "169.254.169.254"),
    "loopback.unsigned.lab": ("A", "127.0.0.1"),
    "mapped.unsigned.lab": ("AAAA", "::ffff:127.0.0.1"),
    "private.signed.lab": ("A", "10.1.2.3"),  # secure data is still a rebinding answer
}
CLUSTER = {
    "kube-dns.kube-system.svc.cluster.local": ("A", "10.96.0.10"),
    "web.default.svc.cluster.local": ("A", "10.244.1.5"),
}
# CNAME cloaking: a first-party-looking name whose chain ends in a blocklisted tracker.
# RFC 6672: NSD answers names under alias.signed.lab with the signed DNAME and a CNAME it
# synthesizes, unsigned, into signednsec.lab.
DNAME_OWNER, DNAME_NAME, DNAME_TARGET = "alias.signed.lab", "www.alias.signed.lab", "www.signednsec.lab"
CLOAKED = "tracker.signed.lab"  # -> cdn.unsigned.lab -> metrics.adnet.lab
BLOCKED_TARGET = "adnet.lab"
# Corrupted after signing: the A record's data changed / its RRSIG's signature flipped.
BOGUS_DATA = "www.bogus.lab"
BOGUS_SIG = "badsig.bogus.lab"

SOA = "{ns} hostmaster.lab. 1 3600 900 604800 60"


def _zone(origin: str, ns_name: str, body: str) -> str:
    return (f"$ORIGIN {origin}\n$TTL 300\n"
            f"@ IN SOA {SOA.format(ns=ns_name)}\n@ IN NS {ns_name}\n{body}")


ZONES = {
    # zone: (server, nsec mode or None, body)
    ".": (ROOT_NS, "nsec", f"""\
a.root-servers.lab. IN A {ROOT_NS}
lab. IN NS ns.nic.lab.
ns.nic.lab. IN A {TLD_NS}
local. IN NS ns.nic.lab.
"""),
    "lab.": (TLD_NS, "nsec", f"""\
ns.nic IN A {TLD_NS}
a.root-servers IN A {ROOT_NS}
ns.zones IN A {ZONE_NS}
signed IN NS ns.zones
signednsec IN NS ns.zones
slow IN NS ns.zones
bogus IN NS ns.zones
unsigned IN NS ns.zones
adnet IN NS ns.zones
"""),
    "local.": (TLD_NS, None, """\
kube-dns.kube-system.svc.cluster IN A 10.96.0.10
web.default.svc.cluster IN A 10.244.1.5
web.default.svc.cluster IN AAAA fd00:10:244::5
"""),
    "signed.lab.": (ZONE_NS, "nsec3", f"""\
www IN A 198.19.1.1
www IN AAAA {AAAA_SIGNED}
*.wild IN A 198.19.1.2
private IN A 10.1.2.3
tracker IN CNAME cdn.unsigned.lab.
alias IN DNAME signednsec.lab.
dangling IN CNAME gone.signed.lab.
dangling-nsec IN CNAME gone.signednsec.lab.
hop IN CNAME dangling.signed.lab.
towww IN CNAME www.signed.lab.
towild IN CNAME y.wild.signed.lab.
towild-nsec IN CNAME y.wild.signednsec.lab.
*.wcname IN CNAME www.signed.lab.
*.wcgone IN CNAME gone.signed.lab.
*.wcnsec IN CNAME www.signednsec.lab.
*.wcplain IN CNAME www.unsigned.lab.
*.wcplaingone IN CNAME gone.unsigned.lab.
"""),
    "signednsec.lab.": (ZONE_NS, "nsec", """\
www IN A 198.19.4.1
*.wild IN A 198.19.4.2
longttl 86400 IN A 198.19.4.3
tosigned IN DNAME signed.lab.
"""),
    "bogus.lab.": (ZONE_NS, "nsec3", """\
www IN A 198.19.2.1
badsig IN A 198.19.2.2
ok IN A 198.19.2.3
"""),
    "slow.lab.": (ZONE_NS, "nsec3-150", """\
www IN A 198.19.5.1
"""),
    "unsigned.lab.": (ZONE_NS, None, """\
www IN A 198.19.3.1
*.wild IN A 198.19.3.2
rfc1918 IN A 10.1.2.3
metadata IN A 169.254.169.254
loopback IN A 127.0.0.1
mapped IN AAAA ::ffff:127.0.0.1
cdn IN CNAME metrics.adnet.lab.
"""),
    "adnet.lab.": (ZONE_NS, None, """\
@ IN A 198.19.9.9
metrics IN A 198.19.9.9
"""),
}
NS_NAME = {ROOT_NS: "a.root-servers.lab.", TLD_NS: "ns.nic.lab.", ZONE_NS: "ns.zones.lab."}
# Children before parents, so each parent is signed with its children's DS records.
# Signatures that expire within the hour, over a record with a day's TTL: a validator must not
# let the answer be cached past the signature (RFC 4035 §5.3.3). A lab kept up for longer than
# an hour (lab.py shell) sees signednsec.lab turn bogus.
SIGN_EXTRA = {"signednsec.lab.": ["-e", "now+3600"]}
SHORT_SIG_NAME, SHORT_SIG_EXPIRY = "longttl.signednsec.lab", 3600
SIGN_ORDER = ["signed.lab.", "signednsec.lab.", "slow.lab.", "bogus.lab.", "unsigned.lab.", "adnet.lab.",
              "local.", "lab.", "."]
PARENT = {"lab.": ".", "local.": ".", "signed.lab.": "lab.", "signednsec.lab.": "lab.", "slow.lab.": "lab.",
          "bogus.lab.": "lab.", "unsigned.lab.": "lab.", "adnet.lab.": "lab."}

TOOLS = ["nsd", "unbound", "dnssec-keygen", "dnssec-signzone", "dnssec-dsfromkey", "delv"]
DOT_TOOLS = ["openssl", "kdig"]  # DotServer: certificates, and a TLS client to check it


class HierarchyError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    return [t for t in TOOLS if not shutil.which(t)]


def _run(argv: list[str], cwd: Path | None = None) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=60)
    if r.returncode != 0:
        raise HierarchyError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r.stdout


# --------------------------------------------------------------------------- signing


def _flip_b64(sig: str) -> str:
    """Change one byte in the middle of a base64 signature, keeping it valid base64."""
    raw = bytearray(base64.b64decode(sig))
    raw[len(raw) // 2] ^= 0x55
    return base64.b64encode(bytes(raw)).decode()


def corrupt_bogus(text: str) -> str:
    """Break bogus.lab. after signing: one record's data, one RRSIG's signature."""
    out, changed = [], set()
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 5 and f[0] == BOGUS_DATA + "." and f[3] == "A":
            line = line.replace("198.19.2.1", "198.19.2.99")  # signed data altered afterwards
            changed.add("data")
        elif len(f) >= 13 and f[0] == BOGUS_SIG + "." and f[3] == "RRSIG" and f[4] == "A":
            line = " ".join(f[:-1] + [_flip_b64(f[-1])])
            changed.add("sig")
        out.append(line)
    if changed != {"data", "sig"}:
        raise HierarchyError(f"could not corrupt bogus.lab. (changed {changed}); signer output format?")
    return "\n".join(out) + "\n"


def build_zones(workdir: Path) -> dict:
    """Write, sign and corrupt every zone; return paths and the root anchors."""
    keys, zdir = workdir / "keys", workdir / "zones"
    keys.mkdir(parents=True, exist_ok=True)
    zdir.mkdir(parents=True, exist_ok=True)
    ds: dict[str, str] = {}
    files: dict[str, Path] = {}
    root_ksk = None
    for zone in SIGN_ORDER:
        server, mode, body = ZONES[zone]
        extra = "".join(ds.get(child, "") for child, parent in PARENT.items() if parent == zone)
        fname = "root" if zone == "." else zone.rstrip(".")
        src = zdir / f"{fname}.zone"
        src.write_text(_zone(zone, NS_NAME[server], body + extra))
        if mode is None:
            files[zone] = src
            continue
        alg = ["-a", "ECDSAP256SHA256"]
        ksk = _run(["dnssec-keygen", "-q", "-K", str(keys), *alg, "-f", "KSK", "-n", "ZONE", zone]).strip()
        _run(["dnssec-keygen", "-q", "-K", str(keys), *alg, "-n", "ZONE", zone])
        out = zdir / f"{fname}.signed"
        argv = ["dnssec-signzone", "-q", "-S", "-K", str(keys), "-d", str(zdir), "-o", zone,
                "-O", "full", "-f", str(out)]
        if mode == "nsec3":
            argv += ["-3", "-", "-H", "0"]  # RFC 9276: no salt, no extra iterations
        elif mode == "nsec3-150":
            argv += ["-3", "ab", "-H", "150"]  # past RFC 9276 §3.2's 100: validators may call its denials insecure
        argv += SIGN_EXTRA.get(zone, [])
        _run(argv + [str(src)], cwd=zdir)
        dsset = zdir / f"dsset-{zone}"
        ds[zone] = dsset.read_text() if dsset.exists() else _run(["dnssec-dsfromkey", "-2", str(keys / f"{ksk}.key")])
        if zone == "bogus.lab.":
            out.write_text(corrupt_bogus(out.read_text()))
        if zone == ".":
            root_ksk = keys / f"{ksk}.key"
        files[zone] = out
    return {"files": files, "root_ksk": root_ksk}


def write_anchors(workdir: Path, root_ksk: Path) -> dict[str, Path]:
    """Trust anchor files for dns-guard (presentation format) and for delv (named.conf syntax)."""
    key = next(l for l in root_ksk.read_text().splitlines() if l and not l.startswith(";"))
    f = key.split()
    i = f.index("DNSKEY")
    flags, proto, alg, pub = f[i + 1], f[i + 2], f[i + 3], "".join(f[i + 4:])
    dnskey = f". 3600 IN DNSKEY {flags} {proto} {alg} {pub}\n"
    ds_line = _run(["dnssec-dsfromkey", "-2", str(root_ksk)]).strip()
    d = ds_line.split()
    j = d.index("DS")
    tag, dalg, dtype, digest = d[j + 1], d[j + 2], d[j + 3], "".join(d[j + 4:])
    ds = f". 3600 IN DS {tag} {dalg} {dtype} {digest}\n"
    adir = workdir / "anchors"
    adir.mkdir(exist_ok=True)
    paths = {
        "dnskey": adir / "root-dnskey.key",
        "ds": adir / "root-ds.key",
        "both": adir / "root-both.key",
        "delv-dnskey": adir / "delv-dnskey.conf",
        "delv-ds": adir / "delv-ds.conf",
    }
    paths["dnskey"].write_text("; private lab root KSK\n" + dnskey)
    paths["ds"].write_text("; private lab root KSK digest\n" + ds)
    paths["both"].write_text(dnskey + ds)
    paths["delv-dnskey"].write_text(
        f'trust-anchors {{ "." static-key {flags} {proto} {alg} "{pub}"; }};\n')
    paths["delv-ds"].write_text(
        f'trust-anchors {{ "." static-ds {tag} {dalg} {dtype} "{digest}"; }};\n')
    return paths


# --------------------------------------------------------------------------- the hierarchy


class Hierarchy:
    """Start with ``with Hierarchy(lab) as h:``; everything it adds to the lab is removed on exit."""

    PODS = {"auth": [61, 62, 63], "rec": [55, 57], "fault": [56, 58, 59]}

    def __init__(self, lab, log_queries: bool = True):
        self.lab = lab
        # Benchmarks turn Unbound's query log off: a write per query would bill the upstream.
        self.log_queries = log_queries
        self.dir = lab.workdir / "hierarchy"
        self.procs: list = []
        self.pods: list[str] = []
        self.anchors: dict[str, Path] = {}
        self.unbound_log = self.dir / "unbound" / "unbound.log"

    # --- lifecycle
    def __enter__(self) -> "Hierarchy":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "Hierarchy":
        missing = missing_tools()
        if missing:
            raise HierarchyError(f"missing tools: {' '.join(missing)}; run scripts/setup.sh "
                                 "(packages nsd, bind9-utils, bind9-dnsutils, unbound)")
        self.dir.mkdir(parents=True, exist_ok=True)
        for pod, hosts in self.PODS.items():
            self.lab.add_pod(pod, hosts, v6=(pod == "rec"))
            self.pods.append(pod)
        built = build_zones(self.dir)
        self.zone_files = built["files"]
        self.anchors = write_anchors(self.dir, built["root_ksk"])
        for server in (ROOT_NS, TLD_NS, ZONE_NS):
            self._start_nsd(server, [z for z, (s, _, _) in ZONES.items() if s == server])
        self._start_unbound()
        self._spawn("rec", ["serve", "--mode", "relay", "--listen", RELAY, "--to", REC,
                            "--delay", str(RELAY_DELAY)], "relay")
        self._spawn("fault", ["serve", "--mode", "relay", "--listen", SLOW, "--to", REC,
                              "--delay", str(SLOW_DELAY)], "slow")
        self._spawn("fault", ["serve", "--mode", "garbage", "--listen", GARBAGE], "garbage")
        self._wait_ready()
        return self

    def close(self) -> None:
        from lab import _stop_pid  # the lab's stop-by-pid helper

        for _, proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                _stop_pid(proc, signal.SIGTERM, 3)
        # NSD forks its server and xfrd children; anything still in our namespaces was ours.
        for pod in self.pods:
            pids = subprocess.run(["ip", "netns", "pids", self.lab.ns(pod)], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for pod in reversed(self.pods):
            self.lab.remove_pod(pod)
        self.pods.clear()

    # --- servers
    def _spawn(self, pod: str, args: list[str], label: str):
        proc = self.lab.spawn(pod, [sys.executable, str(HERE / "hierarchy.py"), *args], f"h-{label}")
        self.procs.append((label, proc))
        return proc

    def _start_nsd(self, addr: str, zones: list[str]) -> None:
        d = self.dir / f"nsd-{addr.rsplit('.', 1)[1]}"
        d.mkdir(exist_ok=True)
        zconf = "".join(f'zone:\n    name: "{z}"\n    zonefile: "{self.zone_files[z]}"\n' for z in zones)
        conf = d / "nsd.conf"
        conf.write_text(f"""server:
    ip-address: {addr}
    port: 53
    do-ip4: yes
    do-ip6: no
    server-count: 1
    reuseport: no
    username: ""
    chroot: ""
    zonesdir: "{d}"
    database: ""
    zonelistfile: "{d}/zone.list"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    pidfile: "{d}/nsd.pid"
    logfile: "{d}/nsd.log"
    verbosity: 1
    hide-version: yes
    # Debian's NSD answers one source with at most 200 responses/s per kind (RRL) and
    # drops or truncates the rest: the lab's own recursor asking for many names under one
    # wildcard would measure that limit (and its retries) instead of the path under test.
    rrl-ratelimit: 0
remote-control:
    control-enable: no
{zconf}""")
        proc = self.lab.spawn("auth", ["nsd", "-d", "-c", str(conf)], f"h-nsd-{addr}")
        self.procs.append((f"nsd-{addr}", proc))

    def _start_unbound(self) -> None:
        d = self.dir / "unbound"
        d.mkdir(exist_ok=True)
        hints = d / "root.hints"
        hints.write_text(f".  3600000 NS a.root-servers.lab.\na.root-servers.lab. 3600000 A {ROOT_NS}\n")
        conf = d / "unbound.conf"
        conf.write_text(f"""server:
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{d}"
    pidfile: ""
    logfile: "{self.unbound_log}"
    use-syslog: no
    log-queries: {"yes" if self.log_queries else "no"}
    verbosity: 1
    num-threads: 1
    so-reuseport: no
    interface: {REC}
    interface: fd53:6775:6172::55
    port: 53
    do-ip6: no
    access-control: 198.18.0.0/15 allow
    access-control: fd53:6775:6172::/48 allow
    # The private root is the only root this server knows: no internet hints, no anchor fetch.
    root-hints: "{hints}"
    # Validation OFF: bogus data must reach dns-guard, whose own validator is under test.
    module-config: "iterator"
    qname-minimisation: no
    minimal-responses: no
    prefetch: no
    # A day, like a real resolver: longttl.signednsec.lab must reach dns-guard with its TTL.
    cache-max-ttl: 86400
    cache-max-negative-ttl: 5
    # RFC 6761/6762 names unbound would otherwise answer itself.
    local-zone: "local." nodefault
remote-control:
    control-enable: no
""")
        proc = self.lab.spawn("rec", ["unbound", "-d", "-c", str(conf)], "h-unbound")
        self.procs.append(("unbound", proc))

    def _wait_ready(self, timeout: float = 20.0) -> None:
        from lab import _tail, _wait_for

        checks = [(ROOT_NS, ".", "SOA"), (TLD_NS, "lab.", "SOA"), (ZONE_NS, "signed.lab.", "SOA"),
                  (REC, "www.signed.lab", "A"), (RELAY, "www.unsigned.lab", "A")]
        for server, name, qtype in checks:
            def ok():
                r = self.lab.dig("coredns", name, server, "+timeout=1", "+norecurse" if server in NS_NAME else "+recurse",
                                 qtype=qtype)
                return r.status == "NOERROR" and r.answers
            if not _wait_for(ok, timeout, 0.2):
                logs = "\n".join(f"--- {p}\n{_tail(p, 15)}" for p in
                                 sorted(self.dir.glob("nsd-*/nsd.log")) + [self.unbound_log])
                errs = "\n".join(f"--- {p.name}\n{_tail(p, 15)}" for p in self.lab.workdir.glob("h-*.err"))
                raise HierarchyError(f"{server} never answered {name} {qtype}\n{logs}\n{errs}")

    # --- helpers for tests
    def dig(self, pod: str, name: str, *opts: str, qtype: str = "A", server: str = PROXY_ADDR,
            port: int = PROXY_PORT, timeout: int = 4):
        """dig the proxy with DO and AD set; the result carries EDE codes (DigResult.ede_codes)."""
        return self.lab.dig(pod, name, server, "-p", str(port), "+dnssec", "+adflag",
                            f"+timeout={timeout}", *opts, qtype=qtype)

    def delv(self, name: str, qtype: str = "A", anchor: str = "dnskey", server: str = REC) -> str:
        """Validate with BIND's delv against the private root anchor; returns its output."""
        r = self.lab.run("coredns", ["delv", f"@{server}", "-a", str(self.anchors[f"delv-{anchor}"]),
                                 "+root", name, qtype], check=False, timeout=30)
        return r.stdout + r.stderr

    def proxy_config(self, upstreams=(REC,), anchor: str | None = "dnskey", **proxy) -> dict:
        """guard.yaml overrides for a proxy-only dns-guard on PROXY_ADDR:PROXY_PORT."""
        p = {"listen": f"{PROXY_ADDR}:{PROXY_PORT}", "upstreams": list(upstreams),
             "dnssec": "validate", "timeout_ms": 2000}
        if anchor:
            p["trust_anchor"] = str(self.anchors[anchor])
        p.update(proxy)
        return {"interface": None, "proxy": p, "log": {"allow_sample": 1}, "metrics": {"listen": METRICS}}

    def warm(self, names: list[tuple[str, str]]) -> None:
        """Resolve names at Unbound directly (DO set, so RRSIGs are cached too)."""
        for name, qtype in names:
            self.lab.dig("coredns", name, REC, "+dnssec", "+timeout=2", qtype=qtype)


# --------------------------------------------------------------------------- DNS over TLS

DOT_ADDR, DOT_ADDR6 = P + "65", "fd53:6775:6172::65"
DOT_NAME = "dot.lab"  # the name on the DoT server's certificate
DOT_PORT = 853


def make_pki(workdir: Path, name: str) -> dict[str, Path]:
    """A throwaway CA and a server certificate for ``name`` signed by it (openssl, EC P-256)."""
    d = workdir / "pki"
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (d / f for f in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
          "-subj", "/CN=dns-guard lab CA", "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    _run(["openssl", "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"])
    ext = d / "server.ext"
    ext.write_text(f"subjectAltName=DNS:{name}\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
          "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext)])
    return {"ca": ca, "key": key, "cert": cert}


class DotServer:
    """Unbound serving DNS over TLS only (``ADDR@853``, no plain port), recursing from the
    private root like ``rec``, with a certificate for DOT_NAME from a throwaway CA.

    ``with DotServer(lab, hierarchy) as dot:``; ``dot.pki["ca"]`` is the CA for proxy.tls_ca.
    """

    def __init__(self, lab, hierarchy: "Hierarchy"):
        self.lab, self.h = lab, hierarchy
        self.dir = lab.workdir / "dot"
        self.proc = None
        self.pod = None
        self.log = self.dir / "unbound.log"

    def __enter__(self) -> "DotServer":
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.pki = make_pki(self.dir, DOT_NAME)
            self.pod = "dot"
            self.lab.add_pod(self.pod, [int(DOT_ADDR.rsplit(".", 1)[1])], v6=True)
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.pod:
            self.lab.remove_pod(self.pod)
            self.pod = None

    def start(self) -> None:
        hints = self.dir / "root.hints"
        hints.write_text(f".  3600000 NS a.root-servers.lab.\na.root-servers.lab. 3600000 A {ROOT_NS}\n")
        conf = self.dir / "unbound.conf"
        conf.write_text(f"""server:
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{self.dir}"
    pidfile: ""
    logfile: "{self.log}"
    use-syslog: no
    verbosity: 1
    num-threads: 1
    so-reuseport: no
    # TLS only: no plain DNS listener at all, so an answer proves the query came over TLS.
    interface: {DOT_ADDR}@{DOT_PORT}
    interface: {DOT_ADDR6}@{DOT_PORT}
    tls-port: {DOT_PORT}
    tls-service-key: "{self.pki['key']}"
    tls-service-pem: "{self.pki['cert']}"
    do-ip6: yes
    outgoing-interface: {DOT_ADDR}
    access-control: 198.18.0.0/15 allow
    access-control: fd53:6775:6172::/48 allow
    root-hints: "{hints}"
    # Validation OFF, as on rec: dns-guard's own validator judges what comes over TLS.
    module-config: "iterator"
    qname-minimisation: no
    minimal-responses: no
    prefetch: no
    cache-max-ttl: 300
    cache-max-negative-ttl: 5
    local-zone: "local." nodefault
remote-control:
    control-enable: no
""")
        self.proc = self.lab.spawn(self.pod, ["unbound", "-d", "-c", str(conf)], "dot-unbound")
        self.wait_ready()

    def stop(self) -> None:
        if self.proc:
            from lab import _stop_pid

            _stop_pid(self.proc, signal.SIGTERM, 5)
            self.proc = None

    def kdig(self, name: str, *opts: str, addr: str = DOT_ADDR):
        """kdig over TLS, checking the certificate against the lab CA and DOT_NAME."""
        return self.lab.run("coredns", ["kdig", f"@{addr}", "-p", str(DOT_PORT), "+tls", f"+tls-ca={self.pki['ca']}",
                                    f"+tls-hostname={DOT_NAME}", "+timeout=2", "+retry=0", name, *opts],
                            check=False, timeout=20)

    def wait_ready(self, timeout: float = 20.0) -> None:
        from lab import _tail, _wait_for

        def ok():
            r = self.kdig("www.signed.lab")
            return "status: NOERROR" in r.stdout and A["www.signed.lab"] in r.stdout
        if not _wait_for(ok, timeout, 0.3):
            raise HierarchyError(f"the DoT server never answered over TLS\n{_tail(self.log, 20)}\n"
                                 f"{_tail(self.lab.workdir / 'dot-unbound.err', 20)}\n{self.kdig('www.signed.lab').stdout}")



# --------------------------------------------------------------------------- test doubles


def _name_wire(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"


def _question(query: bytes) -> tuple[str, int, int] | None:
    """A query's first question: its name (case as sent, no trailing dot), its QTYPE, and
    where the question ends. None when the question is cut short."""
    labels, i = [], 12
    while i < len(query) and query[i]:
        labels.append(query[i + 1:i + 1 + query[i]].decode(errors="replace"))
        i += 1 + query[i]
    end = i + 5  # the root label, QTYPE, QCLASS
    if len(query) < end:
        return None
    return ".".join(labels), struct.unpack("!H", query[i + 1:i + 3])[0], end


def forged_nxdomain(query: bytes, victim: str) -> bytes | None:
    """For an A query for ``victim``: an NXDOMAIN whose only authority record is an unsigned SOA
    of unsigned.lab, a real zone that is provably insecure, so a validator that judges the
    answer by its authority records alone calls it insecure. The question is echoed byte for
    byte (0x20 case included), as an on-path forger or a hostile upstream would. None otherwise."""
    q = _question(query)
    if q is None or q[0].lower() != victim.rstrip(".").lower() or q[1] != 1:
        return None
    end = q[2]
    rdata = _name_wire("ns.unsigned.lab") + _name_wire("hostmaster.unsigned.lab") + struct.pack("!5I", 1, 3600, 600, 86400, 300)
    soa = _name_wire("unsigned.lab") + struct.pack("!HHIH", 6, 1, 300, len(rdata)) + rdata
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0x8000, 0)  # EDNS0 with DO
    flags = 0x8000 | (query[2] & 0x01) << 8 | 0x0080 | 3  # QR, RD as asked, RA, NXDOMAIN
    return query[:2] + struct.pack("!5H", flags, 1, 0, 1, 1) + query[12:end] + soa + opt


class CollidingForger:
    """A hostile upstream's answers to ``victim``'s AAAA queries: the first gets the
    attacker's own RRset (an address for a name in an insecure zone it controls), every later
    one a forged address for ``victim``. The two RRsets are chosen to share one key in hickory 0.26.3's
    cache of DNSSEC proofs (``cargo run --release --example proof_key_collision``), so a
    validator that trusts that cache serves the forgery the first RRset's insecure proof. The
    question is echoed byte for byte (0x20 case included)."""

    def __init__(self, victim: str, rrsets: list[tuple[str, str]]):
        self.victim, self.rrsets = victim.rstrip(".").lower(), rrsets
        self.turn, self.lock = 0, threading.Lock()

    def answer(self, query: bytes) -> bytes | None:
        q = _question(query)
        if q is None or q[0].lower() != self.victim or q[1] != 28:
            return None
        with self.lock:
            owner, address = self.rrsets[min(self.turn, len(self.rrsets) - 1)]
            self.turn += 1
        rdata = socket.inet_pton(socket.AF_INET6, address)
        record = _name_wire(owner) + struct.pack("!HHIH", 28, 1, 300, len(rdata)) + rdata
        opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0x8000, 0)  # EDNS0 with DO
        flags = 0x8000 | (query[2] & 0x01) << 8 | 0x0080  # QR, RD as asked, RA, NOERROR
        return query[:2] + struct.pack("!5H", flags, 1, 1, 0, 1) + query[12:q[2]] + record + opt


def _read_name(msg: bytes, i: int) -> tuple[str, int]:
    """The name at ``msg[i]``, compression pointers followed, and where it ends."""
    labels, end = [], None
    for _ in range(128):
        n = msg[i]
        if n & 0xC0 == 0xC0:
            end = i + 2 if end is None else end
            i = (n & 0x3F) << 8 | msg[i + 1]
            continue
        if n == 0:
            return ".".join(labels), i + 1 if end is None else end
        labels.append(msg[i + 1:i + 1 + n].decode())
        i += 1 + n
    raise ValueError("compression loop")


class ChainForger:
    """A hostile upstream's answer to ``victim``'s A queries: NXDOMAIN behind a forged,
    unsigned CNAME to ``target``, a name that does not exist in slow.lab, with the genuine
    NSEC3 records (and their signatures) that deny it, fetched from ``upstream`` for each
    query. slow.lab's NSEC3 takes 150 iterations, past the 100 above which RFC 9276 §3.2 lets
    a validator call a denial insecure, and hickory 0.26.3 does so before it looks at the rest
    of the answer. The question is echoed byte for byte (0x20 case included)."""

    def __init__(self, victim: str, target: str, upstream: str):
        self.victim, self.target, self.upstream = victim.rstrip(".").lower(), target, upstream

    def denial(self) -> list[bytes]:
        """The upstream's NSEC3 records and their RRSIGs for ``target``, without compression."""
        opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0x8000, 0)  # EDNS0 with DO
        ask = struct.pack("!6H", 0x5EED, 0x0100, 1, 0, 0, 1) + _name_wire(self.target) + struct.pack("!HH", 1, 1) + opt
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.connect((self.upstream, 53))
            s.send(ask)
            msg = s.recv(65535)
        an, ns = struct.unpack("!HH", msg[6:10])
        i = _question(msg)[2]
        records = []
        for _ in range(an + ns):
            owner, i = _read_name(msg, i)
            rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", msg[i:i + 10])
            rdata = msg[i + 10:i + 10 + rdlen]
            i += 10 + rdlen
            if rtype == 50 or rtype == 46 and rdata[:2] == b"\x00\x32":  # NSEC3, RRSIG over NSEC3
                records.append(_name_wire(owner) + struct.pack("!HHIH", rtype, rclass, ttl, rdlen) + rdata)
        return records

    def answer(self, query: bytes) -> bytes | None:
        q = _question(query)
        if q is None or q[0].lower() != self.victim or q[1] != 1:
            return None
        denial = self.denial()
        target = _name_wire(self.target)
        cname = _name_wire(self.victim) + struct.pack("!HHIH", 5, 1, 300, len(target)) + target
        opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0x8000, 0)
        flags = 0x8000 | (query[2] & 0x01) << 8 | 0x0080 | 3  # QR, RD as asked, RA, NXDOMAIN
        return query[:2] + struct.pack("!5H", flags, 1, 1, len(denial), 1) + query[12:q[2]] + cname + b"".join(denial) + opt


class TtlStretcher:
    """A hostile upstream's answer to ``victim``'s A queries: the upstream's own answer, fetched
    for each query, with every CNAME's TTL raised to a day. For a CNAME synthesized from a
    signed DNAME, which no signature covers, that would keep a redirect in caches long after
    the DNAME changed; a validator must not let the synthesis outlive the DNAME."""

    TTL = 86400

    def __init__(self, victim: str, upstream: str):
        self.victim, self.upstream = victim.rstrip(".").lower(), upstream

    def answer(self, query: bytes) -> bytes | None:
        q = _question(query)
        if q is None or q[0].lower() != self.victim or q[1] != 1:
            return None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.connect((self.upstream, 53))
            s.send(query)
            msg = bytearray(s.recv(65535))
        an = struct.unpack("!H", msg[6:8])[0]
        i = _question(bytes(msg))[2]
        for _ in range(an):
            _, i = _read_name(bytes(msg), i)
            rtype, rdlen = struct.unpack("!H", msg[i:i + 2])[0], struct.unpack("!H", msg[i + 8:i + 10])[0]
            if rtype == 5:
                msg[i + 4:i + 8] = struct.pack("!I", self.TTL)
            i += 10 + rdlen
        return bytes(msg)


def error_answer(query: bytes, rcode: int) -> bytes | None:
    """The query's own id and question with QR, RA and ``rcode`` set, and no records: an
    upstream that will not serve it. None when the question is cut short."""
    q = _question(query)
    if q is None:
        return None
    flags = 0x8000 | (query[2] & 0x01) << 8 | 0x0080 | rcode  # QR, RD as asked, RA
    return query[:2] + struct.pack("!5H", flags, 1, 0, 0, 0) + query[12:q[2]]


def qtype_of(query: bytes) -> int | None:
    """The QTYPE of a query's first question, or None when it is cut short."""
    q = _question(query)
    return q[1] if q else None


def _serve_relay(listen: str, to: str, delay: float, port: int = 53, forge_nxdomain: str | None = None,
                 swallow: int | None = None, servfail: int | None = None,
                 forger: CollidingForger | ChainForger | TtlStretcher | None = None) -> None:
    """UDP and TCP relay that holds every exchange ``delay`` seconds: a distant upstream.
    With ``forge_nxdomain``, a hostile one: that name's A queries get forged_nxdomain().
    With ``forger`` (CollidingForger, ChainForger, TtlStretcher), a hostile one too: its victim
    gets its answers.
    With ``swallow`` (a QTYPE), queries of that type are read and never answered; with
    ``servfail`` (a QTYPE), they are answered SERVFAIL at once."""

    def servfailed(msg: bytes) -> bytes | None:
        return error_answer(msg, 2) if servfail is not None and qtype_of(msg) == servfail else None

    slots = threading.BoundedSemaphore(256)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((listen, port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((listen, port))
    tcp.listen(64)

    def udp_one(data: bytes, client) -> None:
        try:
            if swallow is not None and qtype_of(data) == swallow:
                return
            if answer := servfailed(data):
                udp.sendto(answer, client)
                return
            time.sleep(delay)
            forged = forged_nxdomain(data, forge_nxdomain) if forge_nxdomain else None
            forged = forged or (forger.answer(data) if forger else None)
            if forged:
                udp.sendto(forged, client)
                return
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.connect((to, 53))
                s.send(data)
                udp.sendto(s.recv(65535), client)
        except OSError:
            pass
        finally:
            slots.release()

    def recv_exact(s: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise OSError("closed")
            buf += chunk
        return buf

    def tcp_one(conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            with conn, socket.create_connection((to, 53), timeout=5) as up:
                for _ in range(100):  # bounded: a client may pipeline several queries
                    n = struct.unpack("!H", recv_exact(conn, 2))[0]
                    msg = recv_exact(conn, n)
                    if swallow is not None and qtype_of(msg) == swallow:
                        continue
                    if answer := servfailed(msg):
                        conn.sendall(struct.pack("!H", len(answer)) + answer)
                        continue
                    time.sleep(delay)
                    forged = forged_nxdomain(msg, forge_nxdomain) if forge_nxdomain else None
                    forged = forged or (forger.answer(msg) if forger else None)
                    if forged:
                        conn.sendall(struct.pack("!H", len(forged)) + forged)
                        continue
                    up.sendall(struct.pack("!H", len(msg)) + msg)
                    m = struct.unpack("!H", recv_exact(up, 2))[0]
                    conn.sendall(struct.pack("!H", m) + recv_exact(up, m))
        except OSError:
            pass
        finally:
            slots.release()

    def tcp_loop() -> None:
        while True:
            conn, _ = tcp.accept()
            if slots.acquire(blocking=False):
                threading.Thread(target=tcp_one, args=(conn,), daemon=True).start()
            else:
                conn.close()

    threading.Thread(target=tcp_loop, daemon=True).start()
    while True:
        data, client = udp.recvfrom(65535)
        if slots.acquire(blocking=False):
            threading.Thread(target=udp_one, args=(data, client), daemon=True).start()


def _serve_garbage(listen: str) -> None:
    """Answers every datagram with something that is not a usable DNS reply."""
    rng = random.Random(0x6A7B)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((listen, 53))
    n = 0
    while True:
        data, client = udp.recvfrom(65535)
        n += 1
        kind = n % 4
        if kind == 0:  # pure noise
            reply = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 80)))
        elif kind == 1:  # right txid, QR set, then noise: passes the id check, fails parsing
            reply = data[:2] + b"\x81\x80" + bytes(rng.getrandbits(8) for _ in range(40))
        elif kind == 2:  # shorter than a header
            reply = data[:2] + b"\x81"
        else:  # header claiming 1 answer with nothing behind it
            reply = data[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, 1, 0, 0) + data[12:]
        udp.sendto(reply, client)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run an upstream test double in the current namespace")
    s.add_argument("--mode", choices=["relay", "garbage"], required=True)
    s.add_argument("--listen", required=True)
    s.add_argument("--to", default=REC)
    s.add_argument("--delay", type=float, default=RELAY_DELAY)
    s.add_argument("--port", type=int, default=53)
    s.add_argument("--forge-nxdomain", metavar="NAME", help="relay mode: answer NAME's A queries with forged_nxdomain()")
    s.add_argument("--forge-collision", nargs=5, metavar=("VICTIM", "OWNER1", "ADDR1", "OWNER2", "ADDR2"),
                   help="relay mode: answer VICTIM's first AAAA query with OWNER1 AAAA ADDR1, every later one "
                        "with OWNER2 AAAA ADDR2 (CollidingForger)")
    s.add_argument("--forge-chain", nargs=2, metavar=("VICTIM", "TARGET"),
                   help="relay mode: answer VICTIM's A queries with a forged CNAME to TARGET and the upstream's "
                        "genuine NSEC3 denial of TARGET (ChainForger)")
    s.add_argument("--stretch-cname-ttl", metavar="VICTIM",
                   help="relay mode: relay VICTIM's A answers with every CNAME's TTL raised to a day (TtlStretcher)")
    s.add_argument("--swallow", metavar="QTYPE", type=int, help="relay mode: never answer queries of this numeric type")
    s.add_argument("--servfail", metavar="QTYPE", type=int, help="relay mode: answer queries of this numeric type SERVFAIL")
    args = ap.parse_args(argv[1:])
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if args.mode == "relay":
        forger = None
        if args.forge_collision:
            victim, o1, a1, o2, a2 = args.forge_collision
            forger = CollidingForger(victim, [(o1, a1), (o2, a2)])
        elif args.forge_chain:
            forger = ChainForger(*args.forge_chain, args.to)
        elif args.stretch_cname_ttl:
            forger = TtlStretcher(args.stretch_cname_ttl, args.to)
        _serve_relay(args.listen, args.to, args.delay, args.port, args.forge_nxdomain, args.swallow, args.servfail,
                     forger)
    else:
        _serve_garbage(args.listen)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
