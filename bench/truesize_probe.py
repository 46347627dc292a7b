"""How many bytes of a UDP socket's receive buffer one small DNS query takes (skb truesize),
with and without an XDP program on the receiving pod's eth0 (issue 5, scenario 1).

A socket in the coredns pod binds a port and never reads; c1 sends it N queries; the socket's
rx_queue in /proc/net/udp (sk_rmem_alloc) divided by N is the truesize per query. Generic XDP
re-allocates any skb with less than XDP_PACKET_HEADROOM (256) bytes of headroom, which is
every packet a veth delivers, and the reallocated skb is charged at its new size.

    python3 bench/truesize_probe.py [OBJ[:SECTION] ...]   # as root; each object in generic mode
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

from lab import BPFFS, Lab, v4  # noqa: E402

GLOBALS = BPFFS / "tc" / "globals"  # where `ip ... obj` pins an object's maps (LIBBPF_PIN_BY_NAME)

PORT = 5399
N = 200
SINK = f"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE (33): room for every query sent
s.bind(("0.0.0.0", {PORT}))
print("bound", flush=True)
time.sleep(30)
"""
SEND = f"""
import socket
q = bytes.fromhex("1234010000010000000000000471303030026f6b0474657374000001 0001".replace(" ", ""))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range({N}):
    s.sendto(q, ("{v4('coredns')}", {PORT}))
"""


def rx_queue(lab: Lab) -> int:
    for line in lab.run("coredns", ["cat", "/proc/net/udp"]).stdout.splitlines()[1:]:
        f = line.split()
        if f[1].endswith(f":{PORT:04X}"):
            return int(f[4].split(":")[1], 16)
    raise RuntimeError("sink socket not found")


def per_query(lab: Lab) -> float:
    sink = lab.spawn("coredns", [sys.executable, "-c", SINK], f"sink-{time.monotonic_ns()}")
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                rx_queue(lab)
                break
            except RuntimeError:
                time.sleep(0.05)
        lab.run("c1", [sys.executable, "-c", SEND])
        time.sleep(0.2)
        return rx_queue(lab) / N
    finally:
        sink.kill()
        sink.wait()


def main(argv: list[str]) -> int:
    with Lab() as lab:
        print(f"no XDP: {per_query(lab):.0f} B per query")
        for spec in argv:
            obj, _, sec = spec.partition(":")
            before = set(GLOBALS.iterdir()) if GLOBALS.is_dir() else set()
            lab.run("coredns", ["ip", "link", "set", "dev", "eth0", "xdpgeneric", "obj", obj, "sec", sec or "xdp"])
            try:
                print(f"{Path(obj).name} ({sec or 'xdp'}), generic: {per_query(lab):.0f} B per query")
            finally:
                lab.clear_xdp("coredns")
                # guard.bpf.o's maps pin by name: iproute2 put them here; this probe removes them.
                for pin in (set(GLOBALS.iterdir()) if GLOBALS.is_dir() else set()) - before:
                    pin.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
