"""A bounded UDP DNS flooder: the attacker pod of bench/peers.py.

It sends pre-built queries as fast as one Python process can, never reads replies (an
attacker does not care), and stops at --duration seconds or --max packets, whichever
comes first. Only lab addresses are accepted as the target, so it cannot leave the lab.

    flood.py --dst 198.18.0.53 --port 53 --kind blocked --duration 5 --max 2000000
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import socket
import struct
import sys
import time

LAB_NETS = [ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("fd53:6775:6172::/48")]
POOL = 4096  # distinct pre-built packets; random enough to defeat caches, cheap to build


def qname_wire(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


def query(txid: int, name: str) -> bytes:
    # RFC 1035 4.1.1 header: RD=1, one question; then QTYPE A, QCLASS IN.
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + qname_wire(name) + struct.pack("!HH", 1, 1)


def names(kind: str, rng: random.Random) -> list[str]:
    def rnd() -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    zone = {"blocked": "bl.test", "random": None, "victim": "victim.test"}[kind]
    if zone is None:  # random names under random second-level domains: nothing to group by
        return [f"{rnd()}.{rnd()[:6]}.test" for _ in range(POOL)]
    return [f"{rnd()}.{zone}" for _ in range(POOL)]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--src", action="append", default=[], help="source address (repeat to rotate)")
    p.add_argument("--kind", choices=["blocked", "random", "victim"], required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--max", type=int, default=5_000_000, help="hard cap on packets sent")
    args = p.parse_args(argv)
    if not any(ipaddress.ip_address(args.dst) in n for n in LAB_NETS):
        p.error(f"{args.dst} is not a lab address")
    if not 0 < args.duration <= 120:
        p.error("--duration must be in (0, 120]")

    rng = random.Random(0x5EED)
    packets = [query(rng.getrandbits(16), n) for n in names(args.kind, rng)]
    socks = []
    for src in args.src or [None]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        if src:
            s.bind((src, 0))
        s.connect((args.dst, args.port))
        socks.append(s)

    sent = errors = 0
    t0 = time.monotonic()
    deadline = t0 + args.duration
    n_socks, n_pk = len(socks), len(packets)
    while sent < args.max:
        # Check the clock every 256 packets: time.monotonic() per packet would halve the rate.
        if (sent & 0xFF) == 0 and time.monotonic() >= deadline:
            break
        try:
            socks[sent % n_socks].send(packets[sent % n_pk])
        except (BlockingIOError, ConnectionRefusedError):
            errors += 1
            if errors > args.max:
                break
            continue
        sent += 1
    secs = time.monotonic() - t0
    json.dump({"sent": sent, "secs": round(secs, 3), "pps": round(sent / secs), "errors": errors}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
