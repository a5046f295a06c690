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
    thaw       forward again, both ways, what was held and what comes
    count      answer the number of bytes forwarded so far

Two commands act on the next COLO CHECKPOINT message (migration/colo/
protocol.h) the primary sends, and answer only once it has gone by; arm
them while no checkpoint is on the way:

    forge HEX  replace it with a well-framed one (same checkpoint number,
               valid checksums) that carries no RAM and the device state
               HEX: a hostile or broken primary
    forge-ram HEX
               the same, carrying the RAM records HEX and no device state
    reset      forward it whole, wait until the secondary's kernel has it,
               then reset the secondary's connection before the secondary
               acknowledges it; answers "reset SEQ", or "late" if the
               acknowledgement came first

It exits when either side closes, or on SIGTERM.
"""

import fcntl
import os
import random
import select
import socket
import struct
import sys
import termios
import time

COLO_MAGIC = b"COLO"
COLO_HEADER = 32
COLO_TRAILER = 4
COLO_CHECKPOINT = 2


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C (Castagnoli), the checksum of COLO's headers and payloads."""
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def colo_header(buf):
    """(type, seq, length) of a valid COLO header at the start of BUF."""
    if len(buf) < COLO_HEADER or buf[:4] != COLO_MAGIC:
        return None
    if crc32c(buf[:28]) != struct.unpack(">I", buf[28:32])[0]:
        return None
    mtype, _, seq, length = struct.unpack(">HHQQ", buf[4:24])
    return mtype, seq, length


def colo_message(mtype, seq, payload):
    """A whole message: header, payload, and the payload's checksum."""
    head = COLO_MAGIC + struct.pack(">HHQQI", mtype, 0, seq, len(payload), 0)
    return (head + struct.pack(">I", crc32c(head)) + payload +
            struct.pack(">I", crc32c(payload)))


def pass_leading_messages(held, dst):
    """While armed, whole messages before the CHECKPOINT (the primary's
    heartbeats) go on at once: holding them would make the secondary
    hear nothing.  Returns (what is still held, bytes sent)."""
    sent = 0
    while True:
        h = colo_header(held[:COLO_HEADER])
        n = COLO_HEADER + h[2] + COLO_TRAILER if h else 0
        if not h or h[0] == COLO_CHECKPOINT or len(held) < n:
            return held, sent
        dst.sendall(held[:n])
        held = held[n:]
        sent += n


def find_checkpoint(buf):
    """Offset of the first valid CHECKPOINT header in BUF, or None."""
    i = buf.find(COLO_MAGIC)
    while i >= 0:
        h = colo_header(buf[i:i + COLO_HEADER])
        if h and h[0] == COLO_CHECKPOINT:
            return i
        i = buf.find(COLO_MAGIC, i + 1)
    return None


def unacked(sock):
    """Bytes sent on SOCK that its peer's kernel has not acknowledged."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ,
                                          b"\0\0\0\0"))[0]


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
    armed = None        # (command, argument, control socket) for CHECKPOINT
    held = b""          # forward bytes held while looking for it
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
                elif cmd == "thaw":
                    frozen = False
                elif cmd == "count":
                    r.sendall(b"%d\n" % forwarded)
                    continue
                elif cmd in ("forge", "forge-ram", "reset"):
                    armed = (cmd, arg, r)
                    continue
                r.sendall(b"ok\n")
                continue
            data = r.recv(1 << 16)
            if not data:
                return 0
            if r is dst:
                src.sendall(data)
                continue
            if armed:
                held, sent = pass_leading_messages(held + data, dst)
                forwarded += sent
                done = on_checkpoint(armed, held, src, dst)
                if done is None:
                    continue
                sent, answer = done
                armed[2].sendall(answer.encode() + b"\n")
                armed = None
                if answer.startswith("reset"):
                    src.shutdown(socket.SHUT_RDWR)
                    return 0
                forwarded += sent
                held = b""
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


def on_checkpoint(armed, held, src, dst):
    """Act on the CHECKPOINT in HELD once it is whole: returns (bytes sent
    on, answer), or None while it is not whole yet."""
    cmd, arg, _ = armed
    at = find_checkpoint(held)
    if at is None:
        return None
    _, seq, length = colo_header(held[at:at + COLO_HEADER])
    end = at + COLO_HEADER + length + COLO_TRAILER
    if len(held) < end:
        return None
    if cmd in ("forge", "forge-ram"):
        forged = bytes.fromhex(arg)
        body = (struct.pack(">Q", len(forged)) + forged if cmd == "forge-ram"
                else struct.pack(">Q", 0) + forged)
        msg = colo_message(COLO_CHECKPOINT, seq, body)
        dst.sendall(held[:at] + msg + held[end:])
        return len(held) - (end - at) + len(msg), "ok"
    # reset: everything up to the end of the checkpoint, nothing after.
    dst.sendall(held[:end])
    deadline = time.monotonic() + 5
    while unacked(dst) and time.monotonic() < deadline:
        pass
    if select.select([dst], [], [], 0)[0]:
        return 0, "late"
    dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                   struct.pack("ii", 1, 0))
    dst.close()
    return 0, "reset %d" % seq


if __name__ == "__main__":
    sys.exit(main(sys.argv))
