"""Packet tools run inside a lab pod with Debian's python3 (python3-scapy).

    scapy_tools.py malformed --dst 198.18.0.53 --sport-base 40000 --out sent.json
        Send the malformed-query corpus, one datagram per source port, and record what was sent.
    scapy_tools.py sniff --dst 198.18.0.53 --port 53 --out seen.json --ready FILE
        Record UDP datagrams to dst:port arriving on eth0 until SIGINT/SIGTERM.
"""

import argparse
import json
import random
import signal
import struct
import sys
import time

from scapy.all import DNSQR, IP, IPv6, UDP, AsyncSniffer, Raw, conf, raw, send  # noqa: E402

conf.verb = 0


def header(qdcount=1, id_=0x4447):
    # Packed by hand: scapy's DNS() adds a default question (www.example.com) of its own.
    return struct.pack("!HHHHHH", id_, 0x0100, qdcount, 0, 0, 0)


def corpus():
    """name -> payload: each one a query shape that a kernel parser must not trust."""
    ok_question = raw(DNSQR(qname="good.test", qtype="A"))
    rng = random.Random(0x5EED)
    garbage = bytearray(rng.getrandbits(8) for _ in range(77))
    garbage[2] &= 0x7F  # QR=0: junk that claims to be a query must be judged malformed
    return {
        # Shorter than the 12-byte DNS header (RFC 1035 4.1.1).
        "truncated_header": header()[:7],
        # A 64-byte label: the length byte's top bits are 01, reserved (RFC 1035 2.3.4, RFC 6891 old ELT).
        "label_64": header() + b"\x40" + b"a" * 64 + b"\x04test\x00" + b"\x00\x01\x00\x01",
        # A compression pointer in the question name, pointing back at the header.
        "compression_pointer": header() + b"\xc0\x0c" + b"\x00\x01\x00\x01",
        # Two questions: servers answer at most one; a parser reading only the first is lied to.
        "qdcount_2": header(qdcount=2) + ok_question + raw(DNSQR(qname="blocked.test", qtype="A")),
        # Not DNS at all.
        "garbage": bytes(garbage),
        # Junk with QR=1 looks like a response: passed untouched, not judged (expect "pass").
        "garbage_response": bytes(garbage[:2]) + bytes([garbage[2] | 0x80]) + bytes(garbage[3:]),
    }


# What the guard must do with each: every one reaches the resolver (fail-open); these are
# also logged as malformed.
PASS_ONLY = {"garbage_response"}


def cmd_malformed(args):
    sent = []
    family6 = ":" in args.dst
    for i, (name, payload) in enumerate(corpus().items()):
        sport = args.sport_base + i
        ip = IPv6(dst=args.dst) if family6 else IP(dst=args.dst)
        send(ip / UDP(sport=sport, dport=args.port) / Raw(payload))
        sent.append({"name": name, "sport": sport, "payload": payload.hex(),
                     "expect": "pass" if name in PASS_ONLY else "malformed"})
        time.sleep(0.02)
    with open(args.out, "w") as f:
        json.dump(sent, f)


def cmd_sniff(args):
    dsts = set(args.dst)
    seen = []

    def keep(p):
        l3 = p[IP] if IP in p else (p[IPv6] if IPv6 in p else None)
        return (l3 is not None and UDP in p and p[UDP].dport == args.port and l3.dst in dsts)

    def record(p):
        l3 = p[IP] if IP in p else p[IPv6]
        seen.append({"src": l3.src, "sport": p[UDP].sport, "payload": bytes(p[UDP].payload).hex()})

    sniffer = AsyncSniffer(iface="eth0", lfilter=keep, prn=record, store=False)
    sniffer.start()
    time.sleep(0.3)  # the socket is bound once start() returns; give the thread a moment
    stop = {"now": False}

    def on_signal(*_):
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    open(args.ready, "w").close()
    while not stop["now"]:
        time.sleep(0.05)
    sniffer.stop()
    with open(args.out, "w") as f:
        json.dump(seen, f)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("malformed")
    m.add_argument("--dst", required=True)
    m.add_argument("--port", type=int, default=53)
    m.add_argument("--sport-base", type=int, default=40000)
    m.add_argument("--out", required=True)
    s = sub.add_parser("sniff")
    s.add_argument("--dst", action="append", required=True)
    s.add_argument("--port", type=int, default=53)
    s.add_argument("--out", required=True)
    s.add_argument("--ready", required=True)
    args = ap.parse_args()
    {"malformed": cmd_malformed, "sniff": cmd_sniff}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
