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
  # build: clang compiles the BPF C, bindgen needs libclang, asm/types.h comes via gcc-multilib
  build-essential pkg-config clang llvm libclang-dev libbpf-dev bpftool linux-libc-dev gcc-multilib
  # lab: namespaces, resolvers, clients, load and packet crafting
  iproute2 util-linux dnsmasq-base unbound dnsutils knot-dnsutils dnsperf
  nsd bind9-utils  # forwarder tests: authoritative servers and DNSSEC signing for the private hierarchy
  python3 python3-pytest python3-scapy
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
    systemctl disable --now unbound.service nsd.service >/dev/null 2>&1 || true
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

# Rust: present on the project machines; never installed behind the user's back.
if ! command -v cargo >/dev/null; then
  [[ -x $HOME/.cargo/bin/cargo ]] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
  die "cargo not found. Install Rust (1.87 or newer), e.g.:
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . \"\$HOME/.cargo/env\" && $0"
fi
say "$(cargo --version)"

if ((build)); then
  say "cargo build --release"
  (cd "$repo" && cargo build --release --quiet)
  say "built $repo/target/release/dns-guard"
fi
say "lab tests: cd $repo/integration && python3 -m pytest -v"
