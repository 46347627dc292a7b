"""Fixtures: one lab per session, one dns-guard per test, everything torn down even on failure."""

import os
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lab as labmod  # noqa: E402


def _unavailable(reason: str):
    """Under CI a missing prerequisite is a failure; on a laptop it is a loud skip."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    # sys.__stderr__: pytest captures sys.stderr, and this must be seen.
    print(f"\nSKIPPED: {reason}", file=sys.__stderr__, flush=True)
    pytest.skip(reason)


def require_root():
    if os.geteuid() != 0:
        _unavailable("lab tests need root")


def run_lab_script(argv: list[str], timeout: float, grace: float = 60.0) -> subprocess.CompletedProcess:
    """Run a script that builds its own lab (a bench harness), capturing its text output.

    Not subprocess.run(timeout=...): that SIGKILLs the child on timeout, so the SIGTERM
    handler that unwinds its `with Lab()` never runs and its namespaces, pins and daemons
    stay behind. Here a timeout sends SIGTERM, allows `grace` s for that teardown, then
    SIGKILLs, and fails the test with what the script printed.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err, how = _stop_lab_script(proc, grace)
        pytest.fail(f"{' '.join(map(str, argv))} ran past its {timeout:.0f} s timeout ({how})\n"
                    f"stdout:\n{out[-4000:]}\nstderr:\n{err[-6000:]}", pytrace=False)
    except BaseException:  # KeyboardInterrupt, say: the script must not outlive the test either
        _stop_lab_script(proc, grace)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _stop_lab_script(proc: subprocess.Popen, grace: float) -> tuple[str, str, str]:
    """SIGTERM, `grace` s for the script's own teardown, then SIGKILL; returns its output."""
    proc.send_signal(signal.SIGTERM)
    try:
        # communicate() again after a TimeoutExpired loses no output (subprocess docs).
        out, err = proc.communicate(timeout=grace)
        how = f"SIGTERM; it exited {proc.returncode} after its teardown"
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        how = (f"SIGTERM, then SIGKILL {grace:.0f} s later: its lab may be left behind "
               "(python3 integration/lab.py cleanup)")
    return out or "", err or "", how


@pytest.fixture(scope="session")
def lab():
    require_root()
    with labmod.Lab() as the_lab:
        yield the_lab


@pytest.fixture
def guard_binary(lab):
    if not lab.binary.exists():
        _unavailable(f"{lab.binary} is not built (cargo build --release)")
    return lab.binary


@pytest.fixture
def start_guard(lab, guard_binary):
    """Factory: start_guard(config_overrides, {"block.txt": "..."}) -> running Guard.

    Every guard it started is stopped, detached and unpinned after the test, and the dns
    pod's eth0 is left with no XDP program, so the next test starts clean.
    """
    started = []

    def start(config=None, lists=None, layout="files", ready_timeout=20.0):
        guard = lab.prepare_guard(config, lists, layout)
        started.append(guard)
        return guard.start(ready_timeout)

    yield start
    for guard in started:
        guard.cleanup()
        lab.guards.remove(guard)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the guard's stderr tail so the report says what the guard thought."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "lab" in item.funcargs:
        for guard in item.funcargs["lab"].guards:
            report.sections.append((f"dns-guard stderr ({guard.dir.name})", guard.stderr_tail(60)))


# --------------------------------------------------------------------------- forwarder (proxy) tests

PROXY_LINE = labmod.Guard.PROXY_LINE


_HAS_PROXY: dict = {}


def _binary_has_proxy(binary) -> bool:
    """Whether this build can print the proxy's start-up line at all (cached per build)."""
    st = os.stat(binary)
    key = (str(binary), st.st_mtime_ns, st.st_size)
    if key not in _HAS_PROXY:
        with open(binary, "rb") as f:
            _HAS_PROXY[key] = PROXY_LINE.encode() in f.read()
    return _HAS_PROXY[key]


@pytest.fixture(scope="session")
def hierarchy(lab):
    """Signed private root, TLD and zones on NSD, Unbound recursing from it, upstream doubles."""
    import hierarchy as hmod

    missing = hmod.missing_tools()
    if missing:
        _unavailable(f"missing {' '.join(missing)} (packages nsd bind9-utils bind9-dnsutils; scripts/setup.sh)")
    with hmod.Hierarchy(lab) as h:
        yield h


@pytest.fixture
def start_proxy(start_guard, hierarchy, guard_binary):
    """Factory like start_guard that also requires the forwarder to be listening.

    A build with no proxy at all (the start-up line is not even in the binary) is a loud
    skip, or a failure under CI; a build that has one but does not start it is a failure.
    """

    def start(config=None, lists=None, ready_timeout=20.0):
        if not _binary_has_proxy(guard_binary):
            _unavailable(f"{guard_binary} has no forwarder yet (never prints '{PROXY_LINE} <addr>')")
        guard = start_guard(config, lists, ready_timeout=ready_timeout)
        if guard.proxy_listening(5.0):
            return guard
        if not guard.alive():
            pytest.fail(f"dns-guard exited ({guard.proc.returncode}) before its proxy listened:\n"
                        f"{guard.stderr_tail()}", pytrace=False)
        pytest.fail(f"no '{PROXY_LINE}' line within 5 s of ready; stderr:\n{guard.stderr_tail()}",
                    pytrace=False)

    return start
