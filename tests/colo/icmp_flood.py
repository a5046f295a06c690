"""Send COUNT ICMP echo requests to HOST at RATE per second, then wait up
to WAIT seconds for the replies; print one JSON line: sent, received.

    python3 icmp_flood.py HOST COUNT RATE WAIT

Run inside the test bed's namespace (a raw socket needs root there).
Used by test_colo.py to make the guest emit more packets in one
checkpoint period than output commit can hold.
"""

import json
import os
import select
import socket
import struct
import sys
import time


SO_RCVBUFFORCE = 33     # linux/socket.h; not in Python's socket module


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff


def echo_request(ident, seq):
    payload = b"colo-flood" + bytes(22)
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, checksum(hdr + payload), ident,
                       seq) + payload


def main(argv):
    host, count, rate, wait = argv[0], int(argv[1]), float(argv[2]), \
        float(argv[3])
    ident = os.getpid() & 0xffff
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    # Released at once after a checkpoint: room for all (root may force).
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    seen = set()

    def drain(timeout):
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                return
            pkt = s.recv(2048)
            ihl = (pkt[0] & 0x0f) * 4
            typ, _, _, rid, seq = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
            if typ == 0 and rid == ident:
                seen.add(seq)

    t0 = time.monotonic()
    for seq in range(count):
        # Paced: the guest's receive ring is not what is tested.
        while time.monotonic() < t0 + seq / rate:
            drain(max(0.0, t0 + seq / rate - time.monotonic()))
        s.sendto(echo_request(ident, seq & 0xffff), (host, 0))
    end = time.monotonic() + wait
    while len(seen) < count and time.monotonic() < end:
        drain(min(0.5, end - time.monotonic()))
    print(json.dumps({"sent": count, "received": len(seen),
                      "seconds": round(time.monotonic() - t0, 3)}))


if __name__ == "__main__":
    main(sys.argv[1:])
