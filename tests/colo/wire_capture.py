"""Which QEMU answered: a capture of what the guest sends out of each host.

Both QEMUs of a pair run the guest with the same MAC, so the client cannot
tell who answered it; each host's own link can.  WireCapture listens on
every host's LAN veth (lan0 in its namespace, hostbed.HostNs), takes the
frames leaving the host from the guest's MAC, and keeps the TCP segments
of the guest's service (its source port):

    cap = WireCapture({"host-a": ns_a, "host-b": ns_b}).start()
    ...
    cap.stop()
    verdict = cap.verdict()      # who emitted each byte of each stream

The verdict holds, per stream (the client's port), the first emitter of
every byte in stream order, and every byte that two emissions (two hosts,
or a host's retransmission) disagree on.  A pair in which two QEMUs serve
from diverging states sends different bytes at the same stream position;
a pair that hands over sends the old primary's bytes first, then the
survivor's: the first emitters change at most once, in stream order.  A
survivor may retransmit what the old primary sent (same bytes), and an old
primary may release late output a checkpoint covered (same bytes again).

Timestamps are the kernel's (SO_TIMESTAMPNS, CLOCK_REALTIME).
"""

import socket
import struct
import threading

from hostbed import socket_in_ns
from vm import GUEST_MAC, GUEST_PORT

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
POLL_S = 0.2            # how often a capture thread looks at its stop flag


def _mac(text):
    return bytes(int(x, 16) for x in text.split(":"))


def parse_segment(frame, mac=_mac(GUEST_MAC), port=GUEST_PORT):
    """(client port, sequence number, payload) of a TCP segment with a
    payload from MAC's service PORT over IPv4, else None."""
    if len(frame) < 14 + 20 + 20 or frame[6:12] != mac or \
            frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0f) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    if ip[9] != 6 or len(ip) < ihl + 20:
        return None
    tcp = ip[ihl:total]
    sport, dport, seq = struct.unpack("!HHI", tcp[:8])
    payload = tcp[(tcp[12] >> 4) * 4:]
    if sport != port or not payload:
        return None
    return dport, seq, bytes(payload)


class WireCapture:
    def __init__(self, hosts, link="lan0"):
        """HOSTS: {name: the host's namespace (HostNs)}."""
        self.segments = []          # (t, host, client port, seq, payload)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self._socks = []
        for name, ns in hosts.items():
            s = socket_in_ns(ns.ns, socket.AF_PACKET, socket.SOCK_RAW,
                             socket.htons(ETH_P_ALL))
            self._socks.append(s)
            s.bind((link, 0))
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.settimeout(POLL_S)
            self._threads.append(threading.Thread(
                target=self._run, args=(name, s), daemon=True))

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def _run(self, name, s):
        while not self._stop.is_set():
            try:
                frame, anc, _, addr = s.recvmsg(65536, 64)
            except socket.timeout:
                continue
            except OSError:
                return
            if addr[2] != PACKET_OUTGOING:
                continue            # the other host's, flooded back
            seg = parse_segment(frame)
            if seg is None:
                continue
            t = None
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", data[:16])
                    t = sec + nsec / 1e9
            with self._lock:
                self.segments.append((t, name) + seg)

    def stop(self):
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=5 * POLL_S + 5)
        for s in self._socks:
            s.close()

    def verdict(self):
        """{"streams": {client port: {"runs": [[host, bytes], ...],
        "conflicts": [...]}}, "segments": {host: n}, "first": {host: t},
        "last": {host: t}}.  RUNS: the first emitter of each byte, in
        stream order, run-length encoded; CONFLICTS: (offset, bytes seen)
        where emissions disagree."""
        with self._lock:
            segs = sorted(self.segments, key=lambda s: s[0] or 0)
        streams = {}
        count, first, last = {}, {}, {}
        for t, host, cport, seq, payload in segs:
            count[host] = count.get(host, 0) + 1
            first.setdefault(host, t)
            last[host] = t
            st = streams.setdefault(cport, {"base": seq, "bytes": {}})
            # Offsets from the first segment seen: a short test does not
            # wrap the 32-bit sequence space.
            off0 = (seq - st["base"]) & 0xffffffff
            for i, b in enumerate(payload):
                seen = st["bytes"].get(off0 + i)
                if seen is None:
                    st["bytes"][off0 + i] = (host, b, {b})
                else:
                    seen[2].add(b)
        out = {"streams": {}, "segments": count, "first": first,
               "last": last}
        for cport, st in streams.items():
            runs, conflicts = [], []
            for off in sorted(st["bytes"]):
                host, _, values = st["bytes"][off]
                if len(values) > 1:
                    conflicts.append((off, sorted(values)))
                if runs and runs[-1][0] == host:
                    runs[-1][1] += 1
                else:
                    runs.append([host, 1])
            out["streams"][cport] = {"runs": runs, "conflicts": conflicts}
        return out

    def first_from(self, host, after):
        """Kernel time of HOST's first segment sent after AFTER, or None."""
        with self._lock:
            ts = [s[0] for s in self.segments
                  if s[1] == host and s[0] is not None and s[0] > after]
        return min(ts) if ts else None
