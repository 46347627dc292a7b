"""An on-path DNS forger for the lab, run with Debian's python3 (python3-scapy) in its own pod.

The lab mirrors every frame the coredns pod sends into this pod's eth0 (tc mirred on the bridge
port), so the forger sees the proxy's upstream queries like an attacker on the path would.
For each UDP query to the upstream it races the real answer with forged replies whose
answer is the marker address (MARKER_V4 / MARKER_V6), none of which a correct proxy accepts:

    blind           spoofed upstream source and port, right question, random txid (never the real one)
    wrong-source    right txid/port/question, but from the attacker's own address
    wrong-question  spoofed source, right txid and port, a different qname
    wrong-case      spoofed source, right txid and port, the qname with its letter case flipped

Perfect forgeries (source, port, txid, question and case all right) are never sent: no check
can tell one apart from the real answer, and these tests are about the checks.

It also records the proxy's TCP SYNs to the upstream (the switch to TCP after a spoof burst).

    forger.py attack --proxy 198.18.0.53 --upstream 198.18.0.57 --out RESULT.json --ready FILE
    forger.py probe --dst 198.18.0.53 --port 5353 --out RESULT.json   # malformed client requests
"""

import argparse
import json
import random
import signal
import socket
import struct
import sys
import time

MARKER_V4 = "198.18.66.66"
MARKER_V6 = "fd53:6775:6172:66::66"
KINDS = ("blind", "wrong-source", "wrong-question", "wrong-case")


def flip_case(name: str) -> str:
    return "".join(c.lower() if c.isupper() else c.upper() for c in name)


def cmd_attack(args) -> None:
    from scapy.all import DNS, DNSQR, DNSRR, IP, TCP, UDP, AsyncSniffer, conf  # noqa: PLC0415

    conf.verb = 0
    l3 = conf.L3socket()
    rng = random.Random()
    result = {"queries": [], "syns": [], "sent": {k: 0 for k in KINDS}, "errors": []}

    def forge(src, sport, dport, txid, qname, qtype):
        rdata = MARKER_V6 if qtype == 28 else MARKER_V4
        rtype = qtype if qtype in (1, 28) else 1
        dns = DNS(id=txid, qr=1, aa=1, rd=1, ra=1, qd=DNSQR(qname=qname, qtype=qtype),
                  an=DNSRR(rrname=qname, type=rtype, ttl=86400, rdata=rdata))
        return IP(src=src, dst=args.proxy) / UDP(sport=sport, dport=dport) / dns

    def on_packet(p):
        try:
            if IP not in p or p[IP].src != args.proxy or p[IP].dst != args.upstream:
                return
            if TCP in p and p[TCP].dport == 53 and p[TCP].flags & 0x02 and not p[TCP].flags & 0x10:
                result["syns"].append({"t": time.time(), "sport": p[TCP].sport})
                return
            if UDP not in p or p[UDP].dport != 53 or DNS not in p or p[DNS].qr != 0 or not p[DNS].qd:
                return
            q = p[DNS]
            txid, sport = q.id, p[UDP].sport
            qname = q.qd.qname.decode(errors="replace") if isinstance(q.qd.qname, bytes) else q.qd.qname
            qtype = q.qd.qtype
            batch = []
            for _ in range(args.blind):
                wrong = rng.randrange(65536)
                while wrong == txid:
                    wrong = rng.randrange(65536)
                batch.append(("blind", forge(args.upstream, 53, sport, wrong, qname, qtype)))
            batch.append(("wrong-source", forge(args.attacker, 53, sport, txid, qname, qtype)))
            batch.append(("wrong-question", forge(args.upstream, 53, sport, txid, "poison." + qname, qtype)))
            if flip_case(qname) != qname:
                batch.append(("wrong-case", forge(args.upstream, 53, sport, txid, flip_case(qname), qtype)))
            t0 = time.time()
            for kind, pkt in batch:
                l3.send(pkt)
                result["sent"][kind] += 1
            result["queries"].append({"t": t0, "sport": sport, "txid": txid, "qname": qname,
                                      "qtype": qtype, "forged": {k: sum(1 for b, _ in batch if b == k) for k in KINDS},
                                      "send_ms": round((time.time() - t0) * 1e3, 2)})
        except Exception as e:  # keep sniffing; report at the end
            result["errors"].append(repr(e))

    sniffer = AsyncSniffer(iface=args.iface, prn=on_packet, store=False, promisc=True)
    sniffer.start()
    time.sleep(0.3)
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    open(args.ready, "w").close()
    deadline = time.monotonic() + args.max_seconds
    while not stop["now"] and time.monotonic() < deadline:
        time.sleep(0.05)
    sniffer.stop()
    with open(args.out, "w") as f:
        json.dump(result, f)


# --------------------------------------------------------------------------- malformed clients


def probe_corpus() -> dict:
    """name -> (payload, what a correct server may do): request shapes a proxy must survive."""
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from scapy_tools import corpus, header  # noqa: PLC0415

    c = {name: (payload, "formerr-or-silence") for name, payload in corpus().items()}
    c["garbage_response"] = (c["garbage_response"][0], "silence")  # QR=1: never answer a response
    c["qdcount_0"] = (header(qdcount=0), "formerr-or-silence")
    c["header_only_qr0"] = (struct.pack("!HHHHHH", 0x5151, 0x0100, 1, 0, 0, 0), "formerr-or-silence")
    c["empty"] = (b"", "silence")
    c["one_byte"] = (b"\x00", "silence")
    return c


def cmd_probe(args) -> None:
    out = []
    family = socket.AF_INET6 if ":" in args.dst else socket.AF_INET
    for name, (payload, allowed) in probe_corpus().items():
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(args.wait)
            s.connect((args.dst, args.port))
            s.send(payload)
            try:
                reply = s.recv(65535)
            except (socket.timeout, ConnectionRefusedError):
                reply = None
        rec = {"name": name, "allowed": allowed, "reply": reply.hex() if reply is not None else None}
        if reply is not None and len(reply) >= 4:
            rec["id_echoed"] = reply[:2] == payload[:2]
            rec["qr"] = bool(reply[2] & 0x80)
            rec["rcode"] = reply[3] & 0x0F
        out.append(rec)
    with open(args.out, "w") as f:
        json.dump(out, f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("attack")
    a.add_argument("--proxy", required=True, help="the proxy's address (source of upstream queries)")
    a.add_argument("--upstream", required=True, help="the upstream the proxy queries (spoofed source)")
    a.add_argument("--attacker", default="198.18.0.66", help="this pod's own address")
    a.add_argument("--iface", default="eth0")
    a.add_argument("--blind", type=int, default=8, help="random-txid forgeries per query")
    a.add_argument("--max-seconds", type=float, default=120)
    a.add_argument("--out", required=True)
    a.add_argument("--ready", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--wait", type=float, default=1.0)
    p.add_argument("--out", required=True)
    args = ap.parse_args()
    {"attack": cmd_attack, "probe": cmd_probe}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
