#!/usr/bin/env python3
"""A TCP forwarder between a COLO primary and its secondary that can break
the replication stream on command: the fault injector of the bed.

    stream_proxy.py LISTEN_PORT TARGET_PORT CONTROL_SOCKET

It accepts one connection on 127.0.0.1:LISTEN_PORT (the primary's
`migrate`), connects to 127.0.0.1:TARGET_PORT (the secondary's -incoming)
and forwards both ways.  Commands, one line each on the UNIX socket
CONTROL_SOCKET, act on the forward (primary -> secondary) direction and
answer "ok":

    cut N      forward N more bytes, then close both connections
    flip N     flip every bit of the byte N bytes from now
    inject N   send N random bytes to the secondary now
    freeze     forward nothing more either way, keep both connections open
               (a primary that vanished without its host closing anything)
    freeze N   the same after forwarding N more bytes (mid-checkpoint)
    count      answer the number of bytes forwarded so far

It exits when either side closes, or on SIGTERM.
"""

import os
import random
import select
import socket
import sys


def main(argv):
    listen_port, target_port, control_path = int(argv[1]), int(argv[2]), argv[3]
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", listen_port))
    lsock.listen(1)
    csock = socket.socket(socket.AF_UNIX)
    if os.path.exists(control_path):
        os.unlink(control_path)
    csock.bind(control_path)
    csock.listen(4)
    print("proxy ready", flush=True)

    src, _ = lsock.accept()
    dst = socket.create_connection(("127.0.0.1", target_port))
    for s in (src, dst):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    forwarded = 0
    cut_at = None       # absolute forward offset where to close
    freeze_at = None    # absolute forward offset where to stop forwarding
    flip_at = None      # absolute forward offset of the byte to flip
    controls = []
    frozen = False
    while True:
        peers = [] if frozen else [src, dst]
        rlist, _, _ = select.select(peers + [csock] + controls, [], [], 60)
        for r in rlist:
            if r is csock:
                controls.append(csock.accept()[0])
                continue
            if r in controls:
                line = r.recv(256).decode().strip()
                if not line:
                    controls.remove(r)
                    r.close()
                    continue
                cmd, _, arg = line.partition(" ")
                if cmd == "cut":
                    cut_at = forwarded + int(arg)
                elif cmd == "flip":
                    flip_at = forwarded + int(arg)
                elif cmd == "inject":
                    dst.sendall(bytes(random.getrandbits(8)
                                      for _ in range(int(arg))))
                elif cmd == "freeze" and arg:
                    freeze_at = forwarded + int(arg)
                elif cmd == "freeze":
                    frozen = True
                elif cmd == "count":
                    r.sendall(b"%d\n" % forwarded)
                    continue
                r.sendall(b"ok\n")
                continue
            data = r.recv(1 << 16)
            if not data:
                return 0
            if r is dst:
                src.sendall(data)
                continue
            if flip_at is not None and forwarded <= flip_at < forwarded + len(data):
                i = flip_at - forwarded
                data = data[:i] + bytes([data[i] ^ 0xff]) + data[i + 1:]
                flip_at = None
            if freeze_at is not None and forwarded + len(data) >= freeze_at:
                dst.sendall(data[:freeze_at - forwarded])
                forwarded = freeze_at
                freeze_at = None
                frozen = True
                continue
            if cut_at is not None and forwarded + len(data) >= cut_at:
                dst.sendall(data[:cut_at - forwarded])
                src.shutdown(socket.SHUT_RDWR)
                dst.shutdown(socket.SHUT_RDWR)
                return 0
            dst.sendall(data)
            forwarded += len(data)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
