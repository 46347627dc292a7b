#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (as root) to build DNS Guard and run its lab tests.
# Idempotent: installs only what is missing, mounts bpffs if needed, then builds.
#
#   scripts/setup.sh             # packages + bpffs + cargo build --release
#   scripts/setup.sh --no-build  # skip the build
set -euo pipefail

build=1
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root (packages, bpffs and the lab need it)"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

packages=(
  # build: clang compiles the BPF C, bindgen needs libclang, asm/types.h comes from linux-libc-dev
  build-essential pkg-config clang llvm libclang-dev libbpf-dev bpftool linux-libc-dev
  # lab: namespaces, resolvers, clients, load and packet crafting
  iproute2 util-linux dnsmasq-base unbound dnsutils knot-dnsutils dnsperf
  openssl  # DNS over TLS tests: a throwaway CA and server certificate
  nsd bind9-utils  # forwarder tests: authoritative servers and DNSSEC signing for the private hierarchy
  dnsdist  # bench/peers.py: dnsdist in front of CoreDNS, a peer to compare against (issue 5)
  python3 python3-pytest python3-scapy
  python3-matplotlib  # bench/report.py draws docs/peers.png (the peer bench and its smoke test)
  # manifests test: a venv for kubernetes-validate (PyPI), whose Kubernetes schemas ship inside it
  python3-venv
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  say "installing: ${missing[*]}"
  # Keep package scripts from starting services: a started unbound.service would run
  # unbound-anchor against the internet and sit on 127.0.0.1:53. The lab starts its own.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
  fi
  trap 'if [[ $own_policy == 1 ]]; then rm -f "$policy"; fi' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl disable --now unbound.service nsd.service dnsdist.service >/dev/null 2>&1 || true
  fi
else
  say "packages: all present"
fi

# bpffs: pins must land in the host's bpffs so they outlive dns-guard (see docs on nsenter).
if ! mountpoint -q /sys/fs/bpf; then
  say "mounting bpffs at /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi

# Rust: a rustup toolchain if there is one; otherwise Debian 12's own current
# Rust, rustc-web and cargo-web (kept up to date in bookworm for the browsers'
# builds; 1.96 in December 2026), from apt like everything else above.
if ! command -v cargo >/dev/null; then
  [[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
  say "no cargo: installing Debian's rustc-web and cargo-web"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rustc-web cargo-web >/dev/null \
    || die "cargo not found and apt could not install rustc-web/cargo-web; install Rust 1.89 or newer"
fi
rust_version=$(rustc --version 2>/dev/null || true)
rust_minor=$(sed -n 's/^rustc 1\.\([0-9]*\).*/\1/p' <<<"$rust_version")
if [[ -z $rust_minor || $rust_minor -lt 89 ]]; then
  # Not replaced behind the user's back: rustc-web conflicts with (and would remove) the
  # packaged rustc/cargo, or this may be someone's pinned toolchain.
  die "Rust 1.89 or newer is needed; rustc says: ${rust_version:-nothing}. On Debian 12:
  apt-get install rustc-web cargo-web   (Rust 1.96; replaces the packaged rustc 1.63)
  or update your rustup toolchain, then run $0 again"
fi
say "$(cargo --version)"

# ---- CoreDNS, kustomize, kubernetes-validate (issue 4) -------------------------
# Real CoreDNS for the lab's coredns pod and kustomize for the manifests test, built from
# source through the Go module proxy into .cache/bin (gitignored); skipped when the
# binary already reports the pinned version. Bump both pins together with
# integration/coredns.py (COREDNS_VERSION) and integration/test_manifests.py.
COREDNS_VERSION=v1.15.0        # newest release whose go.mod accepts go1.26
KUSTOMIZE_VERSION=v5.8.1       # v5.8.2+ needs go >= 1.27
KUBERNETES_VALIDATE_VERSION=1.37.0
cache_bin="$repo/.cache/bin"
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
go_tool() {  # go_tool NAME MODULE VERSION VERSION-COMMAND...
  local name=$1 module=$2 version=$3; shift 3
  if [[ -x $cache_bin/$name ]] && "$cache_bin/$name" "$@" 2>/dev/null | grep -qF "${version#v}"; then
    say "$name ${version}: cached"
  elif command -v go >/dev/null; then
    say "building $name $version (go install, a few minutes the first time)"
    mkdir -p "$cache_bin"
    if ! GOBIN="$cache_bin" GOTOOLCHAIN=local GOFLAGS=-buildvcs=false go install "$module@$version"; then
      # An older Go than the module's go.mod asks for, or no module proxy.
      # The demo needs neither tool, so only CI stops here.
      say "WARNING: go install $module@$version failed with $(go version); tests that need $name skip (and fail under CI)"
      [[ -z ${CI:-} ]] || exit 1
    fi
  else
    say "WARNING: no Go toolchain: $name not built; tests that need it skip (and fail under CI)"
  fi
}
go_tool coredns github.com/coredns/coredns "$COREDNS_VERSION" -version
go_tool kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION" version
venv="$repo/.cache/venv"
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -qF "$KUBERNETES_VALIDATE_VERSION"; then
  say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
  /usr/bin/python3 -m venv "$venv"
  if ! "$venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"; then
    say "WARNING: kubernetes-validate not installed; the manifest tests skip (and fail under CI)"
    [[ -z ${CI:-} ]] || exit 1
  fi
else
  say "kubernetes-validate $KUBERNETES_VALIDATE_VERSION: cached"
fi
# ---- end CoreDNS, kustomize, kubernetes-validate --------------------------------

if ((build)); then
  say "cargo build --release"
  (cd "$repo" && cargo build --release --quiet)
  say "built $repo/target/release/dns-guard"
fi
say "lab tests: cd $repo/integration && python3 -m pytest -v"
