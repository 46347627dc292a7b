"""Lab harness: a CoreDNS-shaped pod, its clients and an upstream, in network namespaces.

Every object the lab creates carries a per-run prefix (``dg`` + 5 hex digits) so parallel
or leftover runs never collide, and everything is torn down by pid / by name, never by a
broad pattern. Traffic only ever goes to addresses inside these namespaces
(198.18.0.0/24 and fd53:6775:6172::/64); the resolvers never read /etc/resolv.conf.

Topology (all pods joined by a bridge that lives in its own namespace, like a node's cni0):

    c1 .11 ─┐
    c2 .12 ─┼─ br0 (ns <prefix>-br)
    dns .53 ┤      resolver on :53, forwards only to up; dns-guard attaches XDP to its eth0
    up .54 ─┘      authoritative-ish dnsmasq answering *.test from local data only

Run ``python3 lab.py shell`` to keep a lab up for manual poking, ``python3 lab.py cleanup``
to remove labs whose owning process died.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import glob
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_BIN = REPO / "target" / "release" / "dns-guard"
BPFFS = Path("/sys/fs/bpf")
# Debian's interpreter has python3-scapy; the test runner may be a pyenv python without it.
SCAPY_PYTHON = os.environ.get("DG_SCAPY_PYTHON", "/usr/bin/python3")
STATE_ROOT = Path(tempfile.gettempdir())

V4_PREFIX = "198.18.0."
V6_PREFIX = "fd53:6775:6172::"
PODS = {"c1": 11, "c2": 12, "coredns": 53, "up": 54}
# Answers handed out by the upstream; inside the lab ranges so nothing points outside.
UP_V4 = "198.19.0.1"
UP_V6 = "fd53:6775:6172:1::1"
GOOD_V4 = "198.19.0.10"
GOOD_V6 = "fd53:6775:6172:1::10"

PREFIX_RE = re.compile(r"^dg[0-9a-f]{5}$")

# Native XDP_TX on a veth is silently lost unless the peer veth has an XDP program of its
# own (measured on 6.18). A CNI's host-side veth usually has none, which is why `auto`
# should pick generic there; to exercise native mode anyway the lab can put this on the
# bridge-side peer of the coredns pod (DG_PEER_XDP=1, default on when DG_XDP_MODE=native).
PEER_XDP_PASS_C = """\
#include <linux/bpf.h>
__attribute__((section("xdp"), used)) int peer_pass(struct xdp_md *ctx) { return XDP_PASS; }
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


def v4(pod: str) -> str:
    return f"{V4_PREFIX}{PODS[pod]}"


def v6(pod: str) -> str:
    return f"{V6_PREFIX}{PODS[pod]}"


class LabError(RuntimeError):
    pass


class GuardError(RuntimeError):
    pass


# --------------------------------------------------------------------------- tool results


@dataclasses.dataclass
class DigResult:
    status: str | None  # NOERROR, NXDOMAIN, REFUSED, ... ; None when no reply arrived
    answers: list[tuple[str, int, str, str, str]]  # (name, ttl, class, type, rdata)
    flags: set[str]
    timed_out: bool
    tcp_retry: bool  # dig saw TC=1 and retried over TCP
    ede: list[str]
    rc: int
    raw: str

    @property
    def addresses(self) -> list[str]:
        return [a[4] for a in self.answers if a[3] in ("A", "AAAA")]

    @property
    def ede_codes(self) -> list[int]:
        """RFC 8914 info codes from dig's `; EDE: 6 (DNSSEC Bogus): (text)` lines."""
        return [int(m.group(1)) for e in self.ede if (m := re.match(r"(\d+)", e))]

    @property
    def ad(self) -> bool:
        return "ad" in self.flags


@dataclasses.dataclass
class DnsperfResult:
    sent: int
    completed: int
    lost: int
    rcodes: dict[str, int]
    qps: float
    raw: str

    def __str__(self) -> str:
        return (f"sent={self.sent} completed={self.completed} lost={self.lost} "
                f"rcodes={self.rcodes} qps={self.qps:.0f}")


_STATUS_RE = re.compile(r"->>HEADER<<- opcode: \w+, status: (\w+)")
_FLAGS_RE = re.compile(r"^;; flags:([^;]*);", re.M)
_EDE_RE = re.compile(r"^; EDE: (.*)$", re.M)


def parse_dig(out: str, rc: int) -> DigResult:
    # dig prints one header per reply it got (UDP, then TCP after TC=1); the last one counts.
    statuses = _STATUS_RE.findall(out)
    flags = _FLAGS_RE.findall(out)
    answers: list[tuple[str, int, str, str, str]] = []
    in_answer = False
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION:"):
            in_answer, answers = True, []
            continue
        if in_answer:
            if not line.strip() or line.startswith(";"):
                in_answer = False
                continue
            parts = line.split(None, 4)
            if len(parts) == 5:
                answers.append((parts[0], int(parts[1]), parts[2], parts[3], parts[4]))
    timed_out = not statuses and ("timed out" in out or "no servers could be reached" in out
                                  or rc == 9)
    return DigResult(
        status=statuses[-1] if statuses else None,
        answers=answers,
        flags=set(flags[-1].split()) if flags else set(),
        timed_out=timed_out,
        tcp_retry="retrying in TCP mode" in out,
        ede=_EDE_RE.findall(out),
        rc=rc,
        raw=out,
    )


def parse_dnsperf(out: str) -> DnsperfResult:
    def num(label: str) -> int:
        m = re.search(rf"{label}:\s+(\d+)", out)
        return int(m.group(1)) if m else 0

    rcodes: dict[str, int] = {}
    m = re.search(r"Response codes:\s+(.*)", out)
    if m:
        for code, count in re.findall(r"([A-Z]+) (\d+) \(", m.group(1)):
            rcodes[code] = int(count)
    q = re.search(r"Queries per second:\s+([\d.]+)", out)
    return DnsperfResult(
        sent=num("Queries sent"),
        completed=num("Queries completed"),
        lost=num("Queries lost"),
        rcodes=rcodes,
        qps=float(q.group(1)) if q else 0.0,
        raw=out,
    )


# --------------------------------------------------------------------------- config files


def to_yaml(obj, indent: int = 0) -> str:
    """Emit the small subset of YAML the guard config needs (no PyYAML dependency).

    Scalars are JSON-encoded, which is valid YAML; lists of scalars use flow style.
    """
    pad = "  " * indent
    lines = []
    for key, value in obj.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.append(to_yaml(value, indent + 1))
        elif isinstance(value, (list, tuple)):
            lines.append(f"{pad}{key}: [{', '.join(json.dumps(v) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {json.dumps(value)}")
    return "\n".join(lines)


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# A stdlib HTTP GET run inside a pod (no curl dependency): prints status then body.
_FETCH = """\
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=5)
    code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
sys.stdout.write(f"{code}\\n"); sys.stdout.write(body.decode())
"""


def http_get(lab, pod: str, url: str) -> tuple[int, str]:
    """GET ``url`` from inside a pod's network namespace."""
    r = lab.run(pod, [sys.executable, "-c", _FETCH, url], check=False, timeout=30)
    if r.returncode != 0:
        return 0, r.stderr
    code, _, body = r.stdout.partition("\n")
    return int(code), body


def metric(text: str, series: str) -> float | None:
    """The value of one Prometheus series (name with its labels, as exposed) in a scrape."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "<missing>"


def remove_iproute_dirs() -> None:
    """Removes iproute2's bpffs dirs (tc/globals, and the ip and xdp links to tc) if empty.
    Something else's pins in them keep them: rmdir of a non-empty dir fails, harmlessly."""
    with contextlib.suppress(OSError):
        (BPFFS / "tc" / "globals").rmdir()
        (BPFFS / "tc").rmdir()
        for link in ("ip", "xdp"):
            p = BPFFS / link
            if p.is_symlink() and not p.exists():  # its target, tc, is gone
                p.unlink()


def _wait_for(pred: Callable[[], object], timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def _stop_pid(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
    if proc.poll() is not None:
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        return proc.wait(5)


# --------------------------------------------------------------------------- resolvers


class Resolver:
    """A DNS server started in one pod. Subclasses decide the software; the lab does not care."""

    name = "resolver"

    def __init__(self, lab: "Lab", pod: str, upstream: str | None):
        self.lab, self.pod, self.upstream = lab, pod, upstream
        # "coredns" for CoreDNS in the coredns pod, not "coredns-coredns".
        self.label = pod if pod == self.name else f"{pod}-{self.name}"
        self.dir = lab.workdir / self.label
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "query.log"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.proc = self.lab.spawn(self.pod, self.argv(), self.label)

    def queries(self) -> list[tuple[str, str, str]]:
        """(qtype, qname without trailing dot, client) for every query the server logged."""
        raise NotImplementedError


class Dnsmasq(Resolver):
    name = "dnsmasq"

    def __init__(self, lab, pod, upstream=None, records: Iterable[str] = ()):
        super().__init__(lab, pod, upstream)
        self.records = list(records)

    def argv(self) -> list[str]:
        argv = [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=",
            "--user=root", "--group=root",
            "--no-resolv", "--no-hosts", "--no-poll",  # never read /etc/resolv.conf or /etc/hosts
            "--bind-dynamic", f"--listen-address={v4(self.pod)}", f"--listen-address={v6(self.pod)}",
            "--port=53", "--cache-size=1000", "--dns-forward-max=1000", "--local-ttl=60",
            "--log-queries", f"--log-facility={self.log}",
        ]
        if self.upstream:
            argv.append(f"--server={self.upstream}")
        return argv + self.records

    _Q = re.compile(r"query\[(\w+)\] (\S+) from (\S+)")

    def queries(self):
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [(t, n.rstrip("."), c) for t, n, c in self._Q.findall(text)]


class Unbound(Resolver):
    """Unbound as the pod resolver: forward-zone "." to the lab upstream only, no root hints used."""

    name = "unbound"

    def argv(self) -> list[str]:
        conf = self.dir / "unbound.conf"
        conf.write_text(f"""server:
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{self.dir}"
    pidfile: ""
    logfile: "{self.log}"
    log-queries: yes
    use-syslog: no
    num-threads: 1
    so-reuseport: no
    interface: {v4(self.pod)}
    interface: {v6(self.pod)}
    port: 53
    do-ip6: yes
    access-control: 198.18.0.0/15 allow
    access-control: fd53:6775:6172::/48 allow
    qname-minimisation: no
    do-not-query-localhost: no
    module-config: "iterator"
    domain-insecure: "test"
    # RFC 6761 makes unbound answer .test itself (NXDOMAIN); the lab zone lives upstream.
    local-zone: "test." nodefault
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: {self.upstream}
    forward-first: no
""")
        return ["unbound", "-d", "-c", str(conf)]

    _Q = re.compile(r"info: (\S+) (\S+) (\w+) IN")

    def queries(self):
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [(t, n.rstrip("."), c) for c, n, t in self._Q.findall(text)]


RESOLVERS = {"dnsmasq": Dnsmasq, "unbound": Unbound}


def resolver_class(kind: str) -> type[Resolver]:
    """RESOLVERS, plus real CoreDNS (coredns.py builds on this module, so it is imported late)."""
    if kind == "coredns":
        from coredns import CoreDns
        return CoreDns
    if kind not in RESOLVERS:
        raise LabError(f"unknown resolver {kind!r}; pick one of {', '.join([*RESOLVERS, 'coredns'])}")
    return RESOLVERS[kind]


# --------------------------------------------------------------------------- dns-guard


class Guard:
    """One dns-guard configuration running in the coredns pod (possibly across restarts)."""

    def __init__(self, lab: "Lab", gdir: Path, config: dict, config_path: Path, layout: str, pod: str = "coredns",
                 binary: Path | None = None):
        self.lab, self.dir, self.config, self.config_path, self.layout = lab, gdir, config, config_path, layout
        self.pod = pod
        self.binary = binary or lab.binary  # benches may run another build beside the lab's
        self.pin_dir = Path(config["xdp"]["pin_dir"])
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self._generation = 0

    # --- process control
    @property
    def stdout_path(self) -> Path:
        return self.dir / f"verdicts-{self.runs}.jsonl"

    @property
    def stderr_path(self) -> Path:
        return self.dir / f"stderr-{self.runs}.log"

    def start(self, ready_timeout: float = 20.0) -> "Guard":
        self.spawn()
        self.wait_stderr("dns-guard ready", ready_timeout, what="ready")
        return self

    def spawn(self) -> "Guard":
        """Starts `dns-guard run` without waiting for it to be ready."""
        if self.proc and self.proc.poll() is None:
            raise GuardError("guard already running")
        self.runs += 1
        self.proc = self.lab.spawn(
            self.pod, [str(self.binary), "run", "--config", str(self.config_path)],
            f"guard-{self.dir.name}-{self.runs}", stdout=self.stdout_path, stderr=self.stderr_path)
        return self

    restart = start

    PROXY_LINE = "dns-guard proxy listening on"

    def proxy_listening(self, timeout: float = 5.0) -> str | None:
        """The address from the proxy's `dns-guard proxy listening on <addr>` stderr line, or None
        if it never printed one (a build without the forwarder, or proxy start-up failed)."""
        def line():
            if not self.stderr_path.exists():
                return None
            for text in self.stderr_path.read_text(errors="replace").splitlines():
                if self.PROXY_LINE in text:
                    return text.split(self.PROXY_LINE, 1)[1].strip() or "?"
            return None

        return _wait_for(lambda: line() or (self.proc and self.proc.poll() is not None), timeout) and line()

    def alive(self) -> bool:
        return bool(self.proc) and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM: the guard exits but leaves the pinned program enforcing."""
        return _stop_pid(self.proc, signal.SIGTERM, timeout) if self.proc else None

    def kill9(self) -> int | None:
        if not self.proc:
            return None
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        return self.proc.wait(5)

    def detach(self) -> subprocess.CompletedProcess:
        return self.lab.run(self.pod, [str(self.binary), "detach", "--config", str(self.config_path)],
                            check=False, timeout=30)

    def cleanup(self) -> None:
        """Leave the guard's pod as we found it, whatever state the guard is in."""
        if self.proc:
            _stop_pid(self.proc, signal.SIGTERM, 5)
        if self.pin_dir.exists() and self.binary.exists():
            with contextlib.suppress(Exception):
                self.detach()
        shutil.rmtree(self.pin_dir, ignore_errors=True)
        # Unpinned links die with the last reference; this catches a netlink-attached program.
        if self.lab.ns(self.pod) in self.lab.namespaces:
            self.lab.clear_xdp(self.pod)

    # --- admin endpoints
    def admin_addr(self) -> str:
        """The admin listener of the current run (each run binds a fresh port)."""
        text = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        m = re.search(r"dns-guard admin listening on (\S+)", text)
        if not m:
            raise GuardError(f"no admin address in stderr:\n{self.stderr_tail()}")
        return m.group(1)

    def scrape(self) -> str:
        """The current run's /metrics, fetched from inside its pod."""
        url = f"http://{self.admin_addr()}/metrics"
        code, body = http_get(self.lab, self.pod, url)
        if code != 200:
            raise GuardError(f"{url} in {self.pod} answered {code}: {body[-1000:]}")
        return body

    def metric(self, series: str) -> float | None:
        """One series of the current run's /metrics (None when it is not exposed)."""
        return metric(self.scrape(), series)

    # --- logs
    def stderr(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("stderr-*.log")))

    def stderr_tail(self, n: int = 40) -> str:
        return _tail(self.stderr_path, n)

    def wait_stderr(self, needle: str, timeout: float, what: str | None = None, count: int = 1) -> None:
        def seen():
            return self.stderr_path.exists() and self.stderr_path.read_text(errors="replace").count(needle) >= count

        deadline = time.monotonic() + timeout
        while not seen():
            if self.proc and self.proc.poll() is not None:
                raise GuardError(f"dns-guard exited with {self.proc.returncode} before {what or needle!r}; "
                                 f"stderr tail:\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise GuardError(f"no {what or needle!r} from dns-guard within {timeout}s; "
                                 f"stderr tail:\n{self.stderr_tail()}")
            time.sleep(0.05)

    def verdicts(self) -> list[dict]:
        """Every verdict line so far. stdout carries verdicts only (diagnostics go to stderr), so
        any complete line that is not a JSON object fails the test. The last line may still be
        being written (or cut by kill -9) when it has no newline yet; it is left out."""
        out = []
        for path in sorted(self.dir.glob("verdicts-*.jsonl")):
            text = path.read_text(errors="replace")
            complete = text if text.endswith("\n") else text[:text.rfind("\n") + 1]
            for n, line in enumerate(complete.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    v = json.loads(line)
                except ValueError:
                    v = None
                if not isinstance(v, dict):
                    raise GuardError(f"{path.name}:{n}: stdout line is not a JSON verdict: {line[:200]!r}")
                out.append(v)
        return out

    def find_verdicts(self, **match) -> list[dict]:
        def ok(v):
            for k, want in match.items():
                got = v.get(k)
                if k == "qname" and isinstance(got, str) and isinstance(want, str):
                    if got.lower().rstrip(".") != want.lower().rstrip("."):
                        return False
                elif got != want:
                    return False
            return True

        return [v for v in self.verdicts() if ok(v)]

    def wait_verdict(self, timeout: float = 3.0, **match) -> dict | None:
        found = _wait_for(lambda: self.find_verdicts(**match), timeout)
        return found[0] if found else None

    # --- lists
    def list_path(self, name: str) -> Path:
        return self.dir / "lists" / name

    def update_list(self, name: str, content: str) -> None:
        """Replace a list atomically, the way a deployment would.

        layout "files": write a temp file and rename(2) it over the old one.
        layout "configmap": kubelet's scheme: new timestamped dir, then swap the ``..data`` symlink.
        """
        lists = self.dir / "lists"
        if self.layout == "configmap":
            self._generation += 1
            old = os.readlink(lists / "..data")
            gen = lists / f"..gen_{self._generation:04d}"
            shutil.copytree(lists / old, gen)
            (gen / name).write_text(content)
            tmp = lists / "..data_tmp"
            os.symlink(gen.name, tmp)
            os.rename(tmp, lists / "..data")
            if not (lists / name).is_symlink():
                os.symlink(f"..data/{name}", lists / name)
            shutil.rmtree(lists / old)
        else:
            tmp = lists / f".{name}.tmp"
            tmp.write_text(content)
            os.rename(tmp, lists / name)


# --------------------------------------------------------------------------- the lab


def _multiarch_include() -> list[str]:
    """-I for the directory Debian keeps asm/types.h in (linux-libc-dev), which clang's
    -target bpf does not search; as guard-ebpf/build.rs finds it."""
    try:
        triplet = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
    except OSError:
        triplet = ""
    for d in (Path("/usr/include") / t for t in (triplet, f"{os.uname().machine}-linux-gnu") if t):
        if (d / "asm" / "types.h").exists():
            return ["-I", str(d)]
    return []


class Lab:
    def __init__(self, resolver: str | None = None, binary: str | os.PathLike | None = None,
                 prefix: str | None = None, peer_xdp: bool | None = None):
        self.prefix = prefix or f"dg{secrets.token_hex(3)[:5]}"
        assert PREFIX_RE.match(self.prefix), self.prefix
        self.resolver_kind = resolver or os.environ.get("DG_RESOLVER", "dnsmasq")
        self.binary = Path(binary or os.environ.get("DNS_GUARD_BIN", DEFAULT_BIN))
        self.workdir = STATE_ROOT / f"dglab-{self.prefix}"
        if peer_xdp is None:
            peer_xdp = os.environ.get("DG_PEER_XDP", "1" if os.environ.get("DG_XDP_MODE") == "native" else "0") == "1"
        self.peer_xdp = peer_xdp
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.namespaces: list[str] = []
        self.guards: list[Guard] = []
        self.resolver: Resolver | None = None
        self.upstream: Resolver | None = None
        self._guard_seq = 0
        self._barrier_seq = 0
        self._closed = False
        self._lock = threading.Lock()

    # --- names
    def ns(self, pod: str) -> str:
        """Full namespace name of a pod ("c1" -> "dgab12c-c1"); full names pass through."""
        return pod if pod.startswith(self.prefix) else f"{self.prefix}-{pod}"

    def addr(self, pod: str, family: int = 4) -> str:
        return v4(pod) if family == 4 else v6(pod)

    # --- lifecycle
    def __enter__(self) -> "Lab":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "Lab":
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, XDP, bpffs)")
        missing = [t for t in ("ip", "nsenter", "dig", "dnsmasq") if not shutil.which(t)]
        if missing:
            raise LabError(f"missing tools: {' '.join(missing)}; run scripts/setup.sh")
        if not os.path.ismount(BPFFS):
            raise LabError("bpffs is not mounted at /sys/fs/bpf; run scripts/setup.sh "
                           "(or: mount -t bpf bpf /sys/fs/bpf)")
        atexit.register(self.close)
        # iproute2 makes its own bpffs dirs (tc/globals, with ip and xdp linking to it) the first
        # time `ip ... obj` loads a program; if this lab is what made them, close() removes them.
        self._iproute_dirs_existed = (BPFFS / "tc").exists()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "owner.pid").write_text(str(os.getpid()))
        self._build_network()
        if self.peer_xdp:
            self._attach_peer_xdp()
        self.upstream = Dnsmasq(self, "up", None, records=[
            f"--host-record=good.test,{GOOD_V4},{GOOD_V6}",
            f"--address=/test/{UP_V4}", f"--address=/test/{UP_V6}",
        ])
        self.upstream.start()
        self.resolver = resolver_class(self.resolver_kind)(self, "coredns", v4("up"))
        self.resolver.start()
        self._wait_resolution()
        return self

    def _ip(self, *args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise LabError(f"ip {' '.join(args)}: {r.stderr.strip()}")

    def _build_network(self) -> None:
        br = self.ns("br")
        for name in [br] + [self.ns(p) for p in PODS]:
            self._ip("netns", "add", name)
            self.namespaces.append(name)
            self._ip("-n", name, "link", "set", "lo", "up")
        self._ip("-n", br, "link", "add", "br0", "type", "bridge",
                 "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0")
        self._ip("-n", br, "link", "set", "br0", "up")
        for pod, host in PODS.items():
            ns = self.ns(pod)
            # The bridge side lives in the bridge namespace, so short names cannot collide.
            self._ip("-n", br, "link", "add", f"v{pod}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._ip("-n", br, "link", "set", f"v{pod}", "master", "br0", "up")
            self._ip("-n", ns, "addr", "add", f"{V4_PREFIX}{host}/24", "dev", "eth0")
            self._ip("-n", ns, "addr", "add", f"{V6_PREFIX}{host}/64", "dev", "eth0", "nodad")
            self._ip("-n", ns, "link", "set", "eth0", "up")

    def add_pod(self, pod: str, hosts: Iterable[int], v6: bool = True) -> str:
        """Attach one more namespace to the bridge with 198.18.0.<host> (and ::<host>) for each host.

        For scenario-specific servers (authoritative hierarchy, attackers, fault doubles);
        the lab removes it at close, or call remove_pod() earlier.
        """
        ns, br = self.ns(pod), self.ns("br")
        hosts = list(hosts)
        if pod in PODS or ns in self.namespaces or len(f"v{pod}") > 15:
            raise LabError(f"pod name {pod!r} taken or too long")
        self._ip("netns", "add", ns)
        self.namespaces.append(ns)
        self._ip("-n", ns, "link", "set", "lo", "up")
        self._ip("-n", br, "link", "add", f"v{pod}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._ip("-n", br, "link", "set", f"v{pod}", "master", "br0", "up")
        for host in hosts:
            self._ip("-n", ns, "addr", "add", f"{V4_PREFIX}{host}/24", "dev", "eth0")
            if v6:
                self._ip("-n", ns, "addr", "add", f"{V6_PREFIX}{host}/64", "dev", "eth0", "nodad")
        self._ip("-n", ns, "link", "set", "eth0", "up")
        if self.peer_xdp:  # a guard may run in this pod too: let native XDP_TX replies out
            self._attach_peer_xdp(pod)
        return ns

    def remove_pod(self, pod: str) -> None:
        """Delete a pod made by add_pod(); stop its processes (spawned with that pod) first."""
        ns = self.ns(pod)
        if ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            self.namespaces.remove(ns)

    def _attach_peer_xdp(self, pod: str = "coredns") -> None:
        src, obj = self.workdir / "peer_pass.c", self.workdir / "peer_pass.o"
        if not obj.exists():
            src.write_text(PEER_XDP_PASS_C)
            r = subprocess.run(["clang", "-O2", "-target", "bpf", *_multiarch_include(),
                                "-c", str(src), "-o", str(obj)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise LabError(f"compiling the peer XDP_PASS program failed: {r.stderr}")
        self._ip("-n", self.ns("br"), "link", "set", "dev", f"v{pod}", "xdpdrv", "obj", str(obj), "sec", "xdp")

    def _wait_resolution(self) -> None:
        def ok():
            r = self.dig("c1", "good.test", v4("coredns"), "+timeout=1")
            return r.status == "NOERROR" and r.addresses
        if not _wait_for(ok, 10, 0.2):
            raise LabError(f"lab resolver never answered; resolver log:\n{_tail(self.resolver.log)}\n"
                           f"upstream log:\n{_tail(self.upstream.log)}")

    def close(self) -> None:
        """Tear down in dependency order: processes by pid, pins, then namespaces."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for g in self.guards:
            with contextlib.suppress(Exception):
                g.cleanup()
        for _, proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                _stop_pid(proc, signal.SIGTERM, 3)
        for path in glob.glob(str(BPFFS / f"{self.prefix}*")):
            shutil.rmtree(path, ignore_errors=True)
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        if not getattr(self, "_iproute_dirs_existed", True):
            remove_iproute_dirs()
        if not os.environ.get("DG_KEEP_WORKDIR"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    # --- running things in pods
    def _nsenter(self, pod: str, argv: list[str]) -> list[str]:
        # nsenter --net only: `ip netns exec` would also remount /sys and hide /sys/fs/bpf.
        return ["nsenter", f"--net=/run/netns/{self.ns(pod)}", *argv]

    def run(self, pod: str, argv: list[str], check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run(self._nsenter(pod, argv), capture_output=True, text=True,
                           timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise LabError(f"[{pod}] {' '.join(argv)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def spawn(self, pod: str, argv: list[str], label: str, stdout: Path | None = None,
              stderr: Path | None = None) -> subprocess.Popen:
        """Start a long-running process in a pod; the lab stops it by pid at teardown."""
        out = open(stdout or self.workdir / f"{label}.out", "ab")
        err = open(stderr or self.workdir / f"{label}.err", "ab")
        try:
            proc = subprocess.Popen(self._nsenter(pod, argv), stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            out.close()
            err.close()
        self.procs.append((label, proc))
        return proc

    def dig(self, pod: str, name: str, server: str | None = None, *opts: str, qtype: str = "A") -> DigResult:
        server = server or v4("coredns")
        argv = ["dig", f"@{server}", name, qtype, "+tries=1", "+timeout=2", *opts]
        r = self.run(pod, argv, check=False, timeout=30)
        return parse_dig(r.stdout + r.stderr, r.returncode)

    def kdig(self, pod: str, name: str, server: str | None = None, *opts: str) -> subprocess.CompletedProcess:
        return self.run(pod, ["kdig", f"@{server or v4('coredns')}", name, *opts], check=False)

    def dnsperf(self, pod: str, server: str | None, queries: Iterable[str | tuple[str, str]],
                duration: float = 2, qps: int | None = None, clients: int = 1, timeout: float = 1,
                wait: bool = True, extra: Iterable[str] = (), outstanding: int | None = None):
        """Run dnsperf looping over ``queries`` for ``duration`` seconds.

        Returns DnsperfResult, or with wait=False a handle whose .result() blocks for it.
        dnsperf never has more than ``outstanding`` queries in flight; the default leaves room
        for ``qps`` queries per second that all go unanswered (a flood into a drop rule).
        """
        if outstanding is None:
            outstanding = max(100, int((qps or 0) * (timeout + 1)))
        self._guard_seq += 1
        data = self.workdir / f"dnsperf-{self._guard_seq}.txt"
        data.write_text("".join(f"{q} A\n" if isinstance(q, str) else f"{q[0]} {q[1]}\n" for q in queries))
        argv = ["dnsperf", "-s", server or v4("coredns"), "-d", str(data), "-l", str(duration),
                "-t", str(timeout), "-c", str(clients), "-q", str(outstanding)]
        if qps:
            argv += ["-Q", str(qps)]
        argv += list(extra)
        proc = subprocess.Popen(self._nsenter(pod, argv), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.procs.append((f"dnsperf-{self._guard_seq}", proc))
        handle = _DnsperfHandle(proc, duration + timeout + 30)
        return handle.result() if wait else handle

    def scapy(self, pod: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.run(pod, [SCAPY_PYTHON, str(HERE / "scapy_tools.py"), *args], timeout=timeout)

    @contextlib.contextmanager
    def sniff(self, pod: str = "coredns", port: int = 53) -> Iterator[list[dict]]:
        """Capture UDP datagrams to ``port`` arriving on a pod's eth0.

        XDP runs before packet taps (native and generic), so this sees exactly what the
        guard passed up the stack. The yielded list is filled when the block exits.
        """
        self._guard_seq += 1
        out = self.workdir / f"sniff-{self._guard_seq}.json"
        ready = self.workdir / f"sniff-{self._guard_seq}.ready"
        proc = self.spawn(pod, [SCAPY_PYTHON, str(HERE / "scapy_tools.py"), "sniff", "--port", str(port),
                                "--dst", v4(pod), "--dst", v6(pod), "--out", str(out), "--ready", str(ready)],
                          f"sniff-{self._guard_seq}")
        if not _wait_for(lambda: ready.exists() or proc.poll() is not None, 30) or not ready.exists():
            _stop_pid(proc)
            raise LabError(f"sniffer did not start: {_tail(self.workdir / f'sniff-{self._guard_seq}.err')}")
        captured: list[dict] = []
        try:
            yield captured
        finally:
            time.sleep(0.3)
            _stop_pid(proc, signal.SIGINT, 10)
            if out.exists():
                captured.extend(json.loads(out.read_text()))

    # --- resolver observations
    def resolver_queries(self) -> list[tuple[str, str, str]]:
        return self.resolver.queries()

    def resolver_barrier(self, timeout: float = 3.0) -> None:
        """Make sure every query sent so far has reached the resolver's log.

        Sends a unique marker query and waits until the resolver logged it; queries sent
        before it were received (or never will be) by then.
        """
        self._barrier_seq += 1
        marker = f"barrier-{self._barrier_seq}.{self.prefix}.sync.test"
        self.dig("c2", marker, v4("coredns"), "+timeout=1")
        if not _wait_for(lambda: any(n.lower() == marker for _, n, _ in self.resolver_queries()), timeout):
            raise LabError(f"resolver never logged barrier {marker}; log tail:\n{_tail(self.resolver.log)}")

    def resolver_saw(self, name: str, qtype: str | None = None, sync: bool = True) -> bool:
        if sync:
            self.resolver_barrier()
        want = name.lower().rstrip(".")
        return any(n.lower() == want and (qtype is None or t == qtype)
                   for t, n, _ in self.resolver_queries())

    # --- dns-guard
    def guard_config(self, pin_dir: str, overrides: dict | None = None) -> dict:
        base = {
            "interface": "eth0",
            "xdp": {
                "mode": os.environ.get("DG_XDP_MODE", "auto"),
                "ports": [53],
                "action": "nxdomain",
                "pin_dir": pin_dir,
                "ratelimit": {"qps": 0, "burst": 200, "ipv4_prefix": 32, "ipv6_prefix": 64, "action": "drop"},
            },
            "blocklists": [],
            "allowlists": [],
            "metrics": {"listen": "127.0.0.1:0"},
            "log": {"allow_sample": 0},
            # Belt and braces: if a proxy ever starts, it must not fall back to /etc/resolv.conf.
            # lameduck_s: 0, or every stop would wait out the lameduck (6 s by default).
            "proxy": {"upstreams": [v4("up")], "lameduck_s": 0},
        }
        # A top-level None removes the key: {"interface": None} runs the proxy only.
        return {k: v for k, v in deep_merge(base, overrides or {}).items() if v is not None}

    def prepare_guard(self, config: dict | None = None, lists: dict[str, str] | None = None,
                      layout: str = "files", pod: str = "coredns", binary: Path | None = None) -> Guard:
        """Write config + lists into a fresh directory and return an unstarted Guard for ``pod``.

        ``lists`` maps file name -> content. Unless the config names them, files whose name
        starts with "allow" become allowlists and the rest blocklists. Relative names in
        config["blocklists"/"allowlists"] refer to these files.
        """
        binary = binary or self.binary
        if not binary.exists():
            raise GuardError(f"{binary} not built; run `cargo build --release` (or scripts/setup.sh)")
        self._guard_seq += 1
        gdir = self.workdir / f"guard{self._guard_seq}"
        ldir = gdir / "lists"
        ldir.mkdir(parents=True)
        lists = lists or {}
        if layout == "configmap":
            data = ldir / "..gen_0000"
            data.mkdir()
            for name, content in lists.items():
                (data / name).write_text(content)
                os.symlink(f"..data/{name}", ldir / name)
            os.symlink(data.name, ldir / "..data")
        else:
            for name, content in lists.items():
                (ldir / name).write_text(content)
        config = dict(config or {})
        for key in ("blocklists", "allowlists"):
            if key in config:
                config[key] = [p if os.path.isabs(p) else str(ldir / p) for p in config[key]]
        config.setdefault("blocklists", [str(ldir / n) for n in lists if not n.startswith("allow")])
        config.setdefault("allowlists", [str(ldir / n) for n in lists if n.startswith("allow")])
        full = self.guard_config(str(BPFFS / f"{self.prefix}-g{self._guard_seq}"), config)
        path = gdir / "guard.yaml"
        path.write_text(to_yaml(full) + "\n")
        guard = Guard(self, gdir, full, path, layout, pod, binary)
        self.guards.append(guard)
        return guard

    def start_guard(self, config: dict | None = None, lists: dict[str, str] | None = None,
                    layout: str = "files", ready_timeout: float = 20.0, binary: Path | None = None) -> Guard:
        return self.prepare_guard(config, lists, layout, binary=binary).start(ready_timeout)

    def check_config(self, config_path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.binary), "check", "--config", str(config_path)],
                              capture_output=True, text=True, timeout=30)

    def xdp_attached(self, pod: str = "coredns") -> bool:
        out = self.run(pod, ["ip", "-d", "link", "show", "dev", "eth0"]).stdout
        return "prog/xdp" in out or re.search(r"\bxdp(generic|drv|offload)?\b", out) is not None

    def clear_xdp(self, pod: str = "coredns") -> None:
        for kind in ("xdp", "xdpgeneric", "xdpdrv"):
            self.run(pod, ["ip", "link", "set", "dev", "eth0", kind, "off"], check=False)


class _DnsperfHandle:
    def __init__(self, proc: subprocess.Popen, timeout: float):
        self.proc, self.timeout = proc, timeout

    def result(self) -> DnsperfResult:
        out, _ = self.proc.communicate(timeout=self.timeout)
        res = parse_dnsperf(out)
        if self.proc.returncode != 0 or res.sent == 0:
            raise LabError(f"dnsperf failed (rc={self.proc.returncode}):\n{out}")
        return res


@contextlib.contextmanager
def lab(**kw) -> Iterator[Lab]:
    with Lab(**kw) as the_lab:
        yield the_lab


# --------------------------------------------------------------------------- CLI


def cleanup_stale() -> None:
    """Remove labs whose owning process is gone (a run that was SIGKILLed)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    prefixes = {n.split("-")[0] for n in names if PREFIX_RE.match(n.split("-")[0])}
    for prefix in sorted(prefixes):
        owner = STATE_ROOT / f"dglab-{prefix}" / "owner.pid"
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(owner.read_text())
            if Path(f"/proc/{pid}").exists():
                print(f"{prefix}: owner {pid} still running, left alone")
                continue
        for ns in [n for n in names if n.startswith(prefix + "-")]:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for path in glob.glob(str(BPFFS / f"{prefix}*")):
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(STATE_ROOT / f"dglab-{prefix}", ignore_errors=True)
        print(f"{prefix}: removed")


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "help"
    if cmd == "cleanup":
        cleanup_stale()
        return 0
    if cmd == "shell":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with Lab() as the_lab:
            print(f"lab {the_lab.prefix} up; namespaces: {' '.join(the_lab.namespaces)}")
            print(f"  nsenter --net=/run/netns/{the_lab.ns('c1')} dig @{v4('coredns')} good.test")
            print(f"  resolver log: {the_lab.resolver.log}")
            print("Ctrl-C tears it down.")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return 0
    print(__doc__)
    return 0 if cmd == "help" else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
