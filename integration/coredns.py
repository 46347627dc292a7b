"""Real CoreDNS as the lab's pod resolver, and the lab adaptation of corefile-examples/.

CoreDNS is built by scripts/setup.sh into ``.cache/bin/coredns`` (``DG_COREDNS`` overrides).
Only what cannot run in a lab of network namespaces is replaced, and each replacement says
so in the Corefile it writes:

* ``kubernetes`` needs an API server, and there is none here: a ``hosts`` block serving
  ``cluster.local`` (and its reverse zones) from a small file stands in for it. A mock
  stands in only for what cannot run here; every other plugin is the real one.
* A ``forward`` to ``/etc/resolv.conf`` or to a corporate DNS server becomes the lab
  upstream (198.18.0.54), so nothing ever leaves the lab; ``assert_lab_only`` checks
  every ``forward`` target before CoreDNS starts.
* Without a dns-guard proxy listening, ``forward . 127.0.0.1:5353`` has nobody to talk
  to; ``direct=True`` points it at the lab upstream for XDP-only scenarios.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
from pathlib import Path

import lab as labmod
from lab import Resolver, http_get, v4

COREDNS_VERSION = "1.15.0"  # keep in step with scripts/setup.sh
DEFAULT_BIN = labmod.REPO / ".cache" / "bin" / "coredns"
EXAMPLES = labmod.REPO / "corefile-examples"
PROXY = "127.0.0.1:5353"
CORP_DNS_PLACEHOLDER = "192.0.2.53"  # the examples' stand-in for a corporate server (TEST-NET-1)

# What the hosts block answers for cluster.local: addresses inside the lab's answer range.
CLUSTER_HOSTS = {
    "kubernetes.default.svc.cluster.local": "198.19.96.1",
    "kube-dns.kube-system.svc.cluster.local": "198.19.96.10",
    "web.shop.svc.cluster.local": "198.19.97.20",
}

_LAB_NETS = [ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("fd53:6775:6172::/48")]


def binary() -> Path:
    return Path(os.environ.get("DG_COREDNS", DEFAULT_BIN))


def available() -> str | None:
    """None when CoreDNS can run here, else why not."""
    b = binary()
    if not b.exists():
        return f"{b} missing; scripts/setup.sh builds it (go install github.com/coredns/coredns@v{COREDNS_VERSION})"
    return None


def example(name: str) -> str:
    return (EXAMPLES / name).read_text()


def examples() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.Corefile"))


# --------------------------------------------------------------------------- adaptation

_KUBERNETES_BLOCK = re.compile(r"^(?P<indent>[ \t]*)kubernetes\b[^\n{]*(\{[^}]*\})?[ \t]*\n", re.M)
_FORWARD = re.compile(r"^(?P<indent>[ \t]*)forward[ \t]+(?P<from>\S+)[ \t]+(?P<to>[^{\n]+?)[ \t]*(?P<brace>\{)?[ \t]*$", re.M)
_ERRORS = re.compile(r"^(?P<indent>[ \t]*)errors[ \t]*$", re.M)
_CACHE = re.compile(r"^(?P<indent>[ \t]*)cache[ \t]+\d+", re.M)


def adapt(text: str, workdir: Path, direct: bool = False, cache_ttl: int | None = None) -> str:
    """The lab version of an example Corefile (see the module docstring)."""
    upstream = v4("up")
    hosts = workdir / "cluster.hosts"
    hosts.write_text("".join(f"{ip} {name}\n" for name, ip in CLUSTER_HOSTS.items()))

    def kubernetes(m: re.Match) -> str:
        i = m.group("indent")
        return (f"{i}# lab: the kubernetes plugin needs an API server, which does not exist here;\n"
                f"{i}# a hosts file serving cluster.local stands in for it (a mock only for what cannot run here).\n"
                f"{i}hosts {hosts} cluster.local in-addr.arpa ip6.arpa {{\n"
                f"{i}    ttl 30\n"
                f"{i}    fallthrough in-addr.arpa ip6.arpa\n"
                f"{i}}}\n")

    text = _KUBERNETES_BLOCK.sub(kubernetes, text)

    def forward(m: re.Match) -> str:
        targets = []
        for t in m.group("to").split():
            if t == PROXY and direct:
                t = upstream
            elif t == "/etc/resolv.conf" or t == CORP_DNS_PLACEHOLDER:
                t = upstream
            if t not in targets:
                targets.append(t)
        line = f"{m.group('indent')}forward {m.group('from')} {' '.join(targets)}"
        return line + (" {" if m.group("brace") else "")

    text = _FORWARD.sub(forward, text)
    # The log plugin makes every query CoreDNS received visible to the test.
    text = _ERRORS.sub(lambda m: f"{m.group(0)}\n{m.group('indent')}log", text)
    if cache_ttl is not None:
        text = _CACHE.sub(lambda m: f"{m.group('indent')}cache {cache_ttl}", text)
    assert_lab_only(text)
    return text


def forward_targets(text: str) -> list[str]:
    return [t for m in _FORWARD.finditer(text) for t in m.group("to").split()]


def assert_lab_only(text: str) -> None:
    """Refuse a Corefile that could send a query outside the lab."""
    for t in forward_targets(text):
        if t == PROXY:
            continue
        host = t.split("://")[-1]
        if host.startswith("["):
            host = host[1:host.index("]")]
        elif host.count(":") == 1:
            host = host.split(":")[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise AssertionError(f"Corefile forwards to {t!r}, which is not a lab address:\n{text}")
        # Loopback is the pod's own: each pod is a network namespace with its own lo.
        if not ip.is_loopback and not any(ip in n for n in _LAB_NETS):
            raise AssertionError(f"Corefile forwards to {t}, outside the lab:\n{text}")


# --------------------------------------------------------------------------- the resolver


class CoreDns(Resolver):
    """CoreDNS in a pod. The default Corefile is the lab-adapted kubeadm example, forwarding
    straight to the lab upstream (nothing listens on 127.0.0.1:5353 until a guard does)."""

    name = "coredns"

    def __init__(self, lab, pod, upstream=None, corefile: str | None = None):
        super().__init__(lab, pod, upstream)
        self.corefile_path = self.dir / "Corefile"
        self.corefile = corefile or adapt(example("kubeadm-default.Corefile"), self.dir, direct=True)

    def argv(self) -> list[str]:
        assert_lab_only(self.corefile)
        self.corefile_path.write_text(self.corefile)
        return [str(binary()), "-conf", str(self.corefile_path)]

    def start(self) -> None:
        if available():
            raise labmod.LabError(available())
        # The log plugin writes to stdout: that file is the query log.
        self.proc = self.lab.spawn(self.pod, self.argv(), self.label, stdout=self.log)

    def restart(self, corefile: str) -> None:
        """Swap the Corefile: stop by pid, start afresh, wait until it answers."""
        if self.proc:
            labmod._stop_pid(self.proc, signal.SIGTERM, 10)
        self.corefile = corefile
        self.start()
        self.lab._wait_resolution()

    # [INFO] 198.18.0.11:40211 - 12345 "A IN good.test. udp 50 false 1232" NOERROR qr,aa,rd 60 0.000s
    _Q = re.compile(r'\[INFO\] \[?([0-9a-fA-F.:]+?)\]?:\d+ - \d+ "(\w+) IN (\S+) (?:udp|tcp)')

    def queries(self):
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [(t, n.rstrip("."), c) for c, t, n in self._Q.findall(text)]

    def metric(self, name: str, port: int = 9153) -> float:
        """Sum of a Prometheus metric from CoreDNS's own /metrics (all label sets)."""
        _, body = http_get(self.lab, self.pod, f"http://127.0.0.1:{port}/metrics")
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(None, 1)[1])
        return total



