"""A lease arbiter for the tests: the management process of a COLO pair
with an arbiter (capability x-colo-arbitrated), by the rule of
docs/devel/migration/colo.rst, "An arbiter" (colo-manager does the same
with etcd's leases).

    arb = Arbiter(primary_sock, secondary_sock, validity_ms=2000)
    arb.start()          # grants and renews the primary's lease
    arb.down = True      # a frozen or dead arbiter: no renewal, no grant
    arb.stop()

Each side's QEMU has a QMP monitor of its own for the arbiter
(qmp_args()).  The rule it keeps:

  - a lease runs from a reading of the holder's lease clock
    (query-colo-status's x-lease.clock-ms); the arbiter counts it from
    when that reading reached it, plus VALIDITY * RHO and EPS_S for the
    clocks' drift, and from before the grant goes out (a grant whose
    answer never comes may still take effect, late);
  - a primary that reports serving alone is recorded so (the secondary
    will never be handed over) before it is granted a sole lease;
  - the secondary is handed over (granted the lease) only when the
    primary's lease has run out by the arbiter's count, the primary was
    never recorded alone, and the secondary reports its primary silent.
"""

import json
import socket
import threading
import time

RHO = 0.01          # the clocks' drift the arbiter allows for
EPS_S = 0.05        # and a little more
QMP_TIMEOUT_S = 0.3


def qmp_args(sock_path):
    """QEMU options for a QMP monitor of the arbiter's own."""
    return ["-chardev", "socket,id=arbiter,path=%s,server=on,wait=off"
            % sock_path, "-mon", "chardev=arbiter,mode=control"]


class QMPLink:
    """A QMP connection with a timeout on every command.  After a timeout
    the connection is dropped: an answer that comes late must not be read
    as a later command's."""

    def __init__(self, path, timeout=QMP_TIMEOUT_S):
        self.path = path
        self.timeout = timeout
        self.sock = None
        self.buf = b""

    def _line(self):
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("QMP closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def _connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
            self.sock, self.buf = s, b""
            self._line()                        # greeting
            self._send("qmp_capabilities", {})
        except Exception:
            self.close()
            s.close()
            raise

    def _send(self, name, args):
        self.sock.sendall(json.dumps({"execute": name,
                                      "arguments": args}).encode() + b"\n")
        while True:
            r = self._line()
            if "event" in r:
                continue
            if "error" in r:
                raise RuntimeError("%s: %s" % (name, r["error"]["desc"]))
            return r["return"]

    def cmd(self, name, args=None):
        """The command's return value; raises on an error, a timeout or a
        closed connection (then reconnects at the next command)."""
        if self.sock is None:
            self._connect()
        try:
            return self._send(name, args or {})
        except (OSError, ConnectionError, ValueError):
            self.close()
            raise

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


class Arbiter:
    def __init__(self, primary_sock, secondary_sock, validity_ms=2000):
        self.validity_ms = validity_ms
        self.links = {"primary": QMPLink(primary_sock),
                      "secondary": QMPLink(secondary_sock)}
        self.holder = "primary"
        self.primary_alone = False      # recorded: never hand over
        self.expiry = {"primary": 0.0, "secondary": 0.0}
        self.handover_t = None          # monotonic time of the handover
        self.sole_grant_t = None        # just before the first sole grant
        self.down = False
        self.log = []                   # (monotonic time, what)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _note(self, what):
        self.log.append((time.monotonic(), what))

    def _grant(self, side, sole):
        link = self.links[side]
        st = link.cmd("query-colo-status")
        clock = st["x-lease"]["clock-ms"]
        t_reading = time.monotonic()
        # Counted before it goes out: it may take effect unanswered.
        self.expiry[side] = max(self.expiry[side],
                                t_reading + self.validity_ms / 1e3 *
                                (1 + RHO) + EPS_S)
        link.cmd("x-colo-lease-grant", {"validity-ms": self.validity_ms,
                                        "clock-ms": clock, "sole": sole})
        return st

    def _primary_round(self):
        try:
            st = self.links["primary"].cmd("query-colo-status")
            if st["x-lease"]["alone"] and not self.primary_alone:
                self.primary_alone = True
                self._note("primary alone")
                # Nothing uncovered may reach a client before this grant.
                self.sole_grant_t = time.monotonic()
            self._grant("primary", self.primary_alone)
        except Exception as e:  # a silent or dead primary: no renewal
            self._note("primary: %s" % e)
        if self.primary_alone or time.monotonic() < self.expiry["primary"]:
            return
        try:
            st = self.links["secondary"].cmd("query-colo-status")
            if st["mode"] == "secondary" and st["x-liveness"]["peer-silent"]:
                self.holder = "secondary"
                self.handover_t = time.monotonic()
                self._note("handover")
                self._grant("secondary", True)
        except Exception as e:
            self._note("secondary: %s" % e)

    def _run(self):
        period = self.validity_ms / 4e3
        while not self._stop.is_set():
            if not self.down:
                if self.holder == "primary":
                    self._primary_round()
                else:
                    try:
                        self._grant("secondary", True)
                    except Exception as e:
                        self._note("secondary: %s" % e)
            self._stop.wait(period)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)
        for link in self.links.values():
            link.close()
