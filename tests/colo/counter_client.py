#!/usr/bin/python3
"""Client of the test guest's counter service, and analysis of its log.

The guest's service (TCP, line based) answers one line per request line:
  inc   -> increments the counter held in guest RAM, answers the new value
  get   -> the current value
  disk  -> the last completed disk-writer sequence number
  stats -> one line of key=value

Run as a program (inside the bed's namespace) it keeps ONE connection open
and sends `inc` every --interval seconds, until --duration elapses, SIGTERM
/ SIGINT arrives or --stop-file appears.  Every reply is appended to --out as
a JSON line, flushed at once:

  {"t": <time.monotonic()>, "value": N, "rtt": seconds}

and everything else is recorded too, never silently:

  {"t": ..., "event": "connected", "peer": "10.77.0.10:7777"}
  {"t": ..., "event": "error", "error": "...", "pending": "inc"}
  {"t": ..., "event": "reconnect", "attempt": k}      (only with --reconnect)
  {"t": ..., "event": "bad-reply", "reply": "..."}
  {"t": ..., "event": "stop", "reason": "duration|signal|stop-file|error"}

The per-request timeout (--timeout, default 30 s) is long on purpose: a
migration or a failover pauses the guest, and TCP retransmits must be able to
carry the connection across the pause.  Without --reconnect the client stops
at the first error (exit status 2); the test decides what an error means.

`--query CMD` instead sends one request on a fresh connection and prints the
answer (e.g. the final `get`).

time.monotonic() is CLOCK_MONOTONIC, common to all processes of the machine,
so the test can place its own events (migration start, ...) on the same axis.

The library part: CounterLog (load a log, check it, find the longest gap)
and CounterClient (start/stop the program inside a NetBed).
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

DEFAULT_PORT = 7777
DEFAULT_HOST = "10.77.0.10"


# ---------------------------------------------------------------------------
# The program
# ---------------------------------------------------------------------------

class _LineConn:
    """One TCP connection, with line reads under a per-request timeout."""

    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, line, timeout):
        deadline = time.monotonic() + timeout
        self.sock.sendall(line.encode() + b"\n")
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no reply in %.1f s" % timeout)
            self.sock.settimeout(left)
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("connection closed by peer")
            self.buf += data
        reply, self.buf = self.buf.split(b"\n", 1)
        return reply.decode(errors="replace").strip()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def query(host, port, cmd, timeout=10.0):
    """Send one request on a new connection, return the reply line."""
    c = _LineConn(host, port, timeout)
    try:
        return c.request(cmd, timeout)
    finally:
        c.close()


def run_client(host, port, out, interval=0.02, duration=60.0, timeout=30.0,
               stop_file=None, reconnect=False, max_reconnects=5,
               command="inc"):
    stopping = []

    def on_signal(signum, frame):
        stopping.append("signal")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    f = open(out, "a", buffering=1)

    def rec(**kw):
        d = {"t": time.monotonic()}
        d.update(kw)
        f.write(json.dumps(d) + "\n")
        f.flush()

    end = time.monotonic() + duration
    conn = None
    status = 0
    attempts = 0
    try:
        try:
            conn = _LineConn(host, port, timeout)
            rec(event="connected", peer="%s:%d" % (host, port))
        except OSError as e:
            rec(event="error", error="connect: %s" % e)
            rec(event="stop", reason="error")
            return 2
        next_t = time.monotonic()
        while True:
            if stopping:
                reason = stopping[0]
                break
            if stop_file and os.path.exists(stop_file):
                reason = "stop-file"
                break
            now = time.monotonic()
            if now >= end:
                reason = "duration"
                break
            if next_t > now:
                time.sleep(min(next_t - now, end - now))
                continue
            next_t = max(next_t + interval, now)
            t0 = time.monotonic()
            try:
                reply = conn.request(command, timeout)
            except OSError as e:
                rec(event="error", error="%s: %s" % (type(e).__name__, e),
                    pending=command, sent=t0)
                conn.close()
                conn = None
                if not reconnect or attempts >= max_reconnects:
                    reason = "error"
                    status = 2
                    break
                attempts += 1
                rec(event="reconnect", attempt=attempts)
                try:
                    conn = _LineConn(host, port, timeout)
                    rec(event="connected", peer="%s:%d" % (host, port))
                except OSError as e2:
                    rec(event="error", error="connect: %s" % e2)
                    reason = "error"
                    status = 2
                    break
                continue
            t1 = time.monotonic()
            try:
                value = int(reply)
            except ValueError:
                rec(event="bad-reply", reply=reply[:200])
                continue
            f.write(json.dumps({"t": t1, "value": value,
                                "rtt": round(t1 - t0, 6)}) + "\n")
            f.flush()
        rec(event="stop", reason=reason)
        return status
    finally:
        if conn is not None:
            conn.close()
        f.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default=DEFAULT_HOST)
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--out", help="JSON-lines log to append to")
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="per-request timeout (s)")
    ap.add_argument("--stop-file")
    ap.add_argument("--reconnect", action="store_true",
                    help="after an error, reconnect (recorded) and go on")
    ap.add_argument("--max-reconnects", type=int, default=5)
    ap.add_argument("--command", default="inc",
                    help="request sent in the loop (default inc)")
    ap.add_argument("--query", metavar="CMD",
                    help="send CMD once, print the reply, exit")
    a = ap.parse_args(argv)
    if a.query:
        try:
            print(query(a.host, a.port, a.query, min(a.timeout, 30.0)))
        except OSError as e:
            print("error: %s" % e, file=sys.stderr)
            return 2
        return 0
    if not a.out:
        ap.error("--out is required")
    return run_client(a.host, a.port, a.out, a.interval, a.duration,
                      a.timeout, a.stop_file, a.reconnect, a.max_reconnects,
                      a.command)


# ---------------------------------------------------------------------------
# The library: analysis
# ---------------------------------------------------------------------------

class CounterLog:
    """A client log loaded from its JSON-lines file."""

    def __init__(self, path):
        self.path = path
        self.replies = []   # [(t, value)]
        self.events = []    # dicts with an "event" key
        self.garbage = []   # lines that did not parse (a torn last line)
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except ValueError:
                self.garbage.append(line)
                continue
            if "value" in d:
                self.replies.append((d["t"], d["value"]))
            else:
                self.events.append(d)

    @property
    def count(self):
        return len(self.replies)

    @property
    def values(self):
        return [v for _, v in self.replies]

    def last_value(self):
        return self.replies[-1][1] if self.replies else None

    def value_at(self, t):
        """Last value replied at or before monotonic time T (None if none)."""
        v = None
        for rt, rv in self.replies:
            if rt > t:
                break
            v = rv
        return v

    def replies_after(self, t):
        return [(rt, rv) for rt, rv in self.replies if rt > t]

    def errors(self):
        return [e for e in self.events
                if e["event"] in ("error", "bad-reply")]

    def reconnects(self):
        return [e for e in self.events if e["event"] == "reconnect"]

    def stop_reason(self):
        stops = [e for e in self.events if e["event"] == "stop"]
        return stops[-1].get("reason") if stops else None

    def first_violation(self, strict=True):
        """(index, previous, value) of the first reply that went backwards
        (strict: that did not increase), or None."""
        for i in range(1, len(self.replies)):
            prev, cur = self.replies[i - 1][1], self.replies[i][1]
            if cur < prev or (strict and cur == prev):
                return (i, prev, cur)
        return None

    def never_backwards(self):
        """No reply smaller than the one before it."""
        return self.first_violation(strict=False) is None

    def strictly_increasing(self):
        """Each reply larger than the one before it."""
        return self.first_violation(strict=True) is None

    def skips(self):
        """Replies that were not previous+1: [(index, previous, value)].

        With one client sending `inc`, a skip means an increment that was
        applied without its answer reaching the client (or another client).
        """
        return [(i, self.replies[i - 1][1], self.replies[i][1])
                for i in range(1, len(self.replies))
                if self.replies[i][1] != self.replies[i - 1][1] + 1]

    def longest_gap(self):
        """(gap_s, t_before, t_after, value_before) between consecutive
        replies; (0.0, None, None, None) with fewer than two replies."""
        best = (0.0, None, None, None)
        for i in range(1, len(self.replies)):
            g = self.replies[i][0] - self.replies[i - 1][0]
            if g > best[0]:
                best = (g, self.replies[i - 1][0], self.replies[i][0],
                        self.replies[i - 1][1])
        return best

    def summary(self, t0=None):
        """A dict for reports; times relative to T0 when given."""
        rel = (lambda t: None if t is None else round(t - t0, 3)) \
            if t0 is not None else (lambda t: t)
        gap, ta, tb, v = self.longest_gap()
        return {
            "count": self.count,
            "first_value": self.values[0] if self.replies else None,
            "last_value": self.last_value(),
            "errors": self.errors(),
            "reconnects": len(self.reconnects()),
            "skips": len(self.skips()),
            "strictly_increasing": self.strictly_increasing(),
            "longest_gap_s": round(gap, 4),
            "longest_gap_from": rel(ta),
            "longest_gap_to": rel(tb),
            "longest_gap_after_value": v,
            "stop_reason": self.stop_reason(),
        }


# ---------------------------------------------------------------------------
# The library: driving the program from a test
# ---------------------------------------------------------------------------

class CounterClient:
    """The client program running in a NetBed, logging to OUT."""

    def __init__(self, bed, out, host=DEFAULT_HOST, port=DEFAULT_PORT,
                 interval=0.02, duration=600.0, timeout=30.0,
                 reconnect=False):
        self.bed = bed
        self.out = out
        self.timeout = timeout
        self.stop_file = out + ".stop"
        self.stderr_path = out + ".stderr"
        argv = ["/usr/bin/python3", os.path.abspath(__file__),
                "--host", host, "--port", str(port), "--out", out,
                "--interval", str(interval), "--duration", str(duration),
                "--timeout", str(timeout), "--stop-file", self.stop_file]
        if reconnect:
            argv.append("--reconnect")
        self._stderr = open(self.stderr_path, "w")
        self.proc = bed.popen(argv, stdout=self._stderr,
                              stderr=subprocess.STDOUT)

    def log(self):
        return CounterLog(self.out)

    def running(self):
        return self.proc.poll() is None

    def wait_replies(self, n, timeout, after=None):
        """Wait (bounded) until the log holds N replies (after monotonic
        time AFTER when given); returns the CounterLog.  Raises if the
        client stops or the deadline passes first."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            got = len(log.replies_after(after)) if after is not None \
                else log.count
            if got >= n:
                return log
            if not self.running():
                raise AssertionError(
                    "counter client exited (status %s) with %d/%d replies; "
                    "events: %s; stderr: %s" % (
                        self.proc.returncode, got, n, log.events[-5:],
                        self.stderr_text()[-2000:]))
            if time.monotonic() > deadline:
                raise AssertionError(
                    "counter client: %d/%d replies after %.0f s; last "
                    "events: %s" % (got, n, timeout, log.events[-5:]))
            time.sleep(0.05)

    def stderr_text(self):
        try:
            with open(self.stderr_path) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout=None):
        """Ask the client to stop (stop file + SIGTERM); it finishes the
        request in flight.  SIGKILL when it has not exited after the
        per-request timeout plus a margin.  Returns the exit status."""
        if timeout is None:
            timeout = self.timeout + 5
        if self.proc.poll() is None:
            open(self.stop_file, "w").close()
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._stderr.close()
        return self.proc.returncode


if __name__ == "__main__":
    sys.exit(main())
