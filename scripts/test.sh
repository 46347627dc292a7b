#!/usr/bin/env bash
# Runs every test: installs what is missing, builds, lints, then the Rust unit
# and kernel-fixture tests and the privileged lab tests in integration/.
# Needs root (XDP, network namespaces); CI runs it as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# setup.sh finds a rustup toolchain in ~/.cargo/bin for its own run only.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi

echo "== cargo clippy (every target, warnings are errors)"
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --release --all-targets -- -D warnings
elif [ -n "${CI:-}" ]; then
    echo "!! clippy is not installed with this toolchain, and CI must lint" >&2
    exit 1
else
    # rustup's servers are out of reach here: nothing to install it from.
    echo "!! clippy is not installed with this toolchain: lint SKIPPED" >&2
fi

echo "== cargo test (unit tests, ABI, BPF_PROG_TEST_RUN fixtures)"
cargo test --workspace --release

echo "== lab tests (integration/)"
# Debian's python3 carries scapy and pytest from apt (scripts/setup.sh).
cd integration
status=0
/usr/bin/python3 -m pytest -v -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
if [ "$#" -eq 0 ]; then
    # The run above attaches in `auto` mode, which is generic on the lab's
    # veths. Native (driver) mode is the other path users can pick; its
    # replies only arrive when the peer veth has an XDP program, which the
    # lab adds for this pass (integration/lab.py, DG_PEER_XDP).
    echo "== fast-path lab tests again in native XDP mode"
    DG_XDP_MODE=native /usr/bin/python3 -m pytest -v -p no:cacheprovider test_fastpath.py || status=$?
fi
exit "$status"
