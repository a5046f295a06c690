"""A private network for one test: a network namespace with a bridge and taps.

    bed = NetBed()
    bed.add_tap("tap-p")            # one tap per VM, attached to br0
    p = bed.popen(["qemu-system-x86_64", ...])   # runs inside the namespace
    ...
    bed.close()                     # kills what it started, deletes the netns

Layout inside the namespace "colo-<pid>-<n>":

    lo                  up (127.0.0.1: migration streams between QEMUs)
                        IPv6 is disabled in the namespace
    br0 10.77.0.1/24    the client end; the guest is 10.77.0.10
     +- tap-p           VM "primary"   (persistent tap, QEMU attaches by name)
     +- tap-s           VM "secondary"

No traffic ever leaves the namespace: it has no link to the host.

The bridge learns the guest MAC on the port of whichever QEMU sends from it.
After a migration the destination QEMU announces the guest (RARP frames from
QEMU, or gratuitous ARP from the guest when VIRTIO_NET_F_GUEST_ANNOUNCE is
negotiated), which moves the FDB entry to the destination's tap.  In
addition the bridge is created with a short ageing time (AGEING_S): if an
announce is ever lost, the stale entry pointing at the stopped source ages
out and the bridge floods again, so a missed announce costs at most a few
seconds (TCP retransmits ride it out) instead of a hang.
"""

import itertools
import os
import re
import signal
import subprocess
import time

NS_PREFIX = "colo-"
NS_RE = re.compile(r"^colo-(\d+)-(\d+)$")
BRIDGE = "br0"
HOST_ADDR = "10.77.0.1"
PREFIXLEN = 24
AGEING_S = 5

_counter = itertools.count()


def _run(argv, check=True, timeout=30):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s" % (
            p.returncode, " ".join(argv), (p.stderr or p.stdout).strip()))
    return p


def _ns_pids(ns):
    p = _run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


def _kill_ns_pids(ns, deadline_s=10):
    """SIGKILL every process in namespace NS and wait (bounded) for them."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        pids = _ns_pids(ns)
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return not _ns_pids(ns)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_namespaces():
    p = _run(["ip", "netns", "list"], check=False)
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def sweep_stale(log=print):
    """Delete colo-<pid>-<n> namespaces left by a dead run of this harness.

    Only namespaces whose creating process (the pid in the name) is gone are
    touched; the processes still inside one (QEMUs, clients) are killed
    first.  Returns the names removed.
    """
    removed = []
    for ns in list_namespaces():
        m = NS_RE.match(ns)
        if not m or _pid_alive(int(m.group(1))):
            continue
        log("netbed: removing stale namespace %s (pid %s is gone)"
            % (ns, m.group(1)))
        _kill_ns_pids(ns)
        _run(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
    return removed


class NetBed:
    """One network namespace with bridge br0 (10.77.0.1/24) and taps.
    BRIDGE and BRIDGE_ADDR (None: no address) name another bridge
    (hostbed.HostNs)."""

    def __init__(self, ageing_s=AGEING_S, bridge=BRIDGE,
                 bridge_addr=HOST_ADDR):
        self.ns = "%s%d-%d" % (NS_PREFIX, os.getpid(), next(_counter))
        self.bridge = bridge
        self.taps = []
        self.procs = []
        self.closed = False
        self._created = False
        try:
            _run(["ip", "netns", "add", self.ns])
            self._created = True
            # No IPv6: the bed stays quiet (no DAD, router solicitations or
            # MLD reports from br0 towards the guests).
            self.run(["sysctl", "-q", "-w",
                      "net.ipv6.conf.all.disable_ipv6=1",
                      "net.ipv6.conf.default.disable_ipv6=1"])
            self.ip("link", "set", "lo", "up")
            self.ip("link", "add", bridge, "type", "bridge",
                    "stp_state", "0", "forward_delay", "0",
                    "ageing_time", str(int(ageing_s * 100)))
            if bridge_addr:
                self.ip("addr", "add", "%s/%d" % (bridge_addr, PREFIXLEN),
                        "dev", bridge)
            self.ip("link", "set", bridge, "up")
        except BaseException:
            self.close()
            raise

    # -- running things in the namespace ---------------------------------

    def ip(self, *args, check=True):
        """Run `ip -n NS ARGS...`; returns the CompletedProcess."""
        return _run(["ip", "-n", self.ns] + list(args), check=check)

    def wrap(self, argv):
        """ARGV prefixed so that it runs inside the namespace."""
        return ["ip", "netns", "exec", self.ns] + list(argv)

    def run(self, argv, check=True, timeout=30):
        """Run ARGV inside the namespace to completion (bounded)."""
        return _run(self.wrap(argv), check=check, timeout=timeout)

    def popen(self, argv, **kw):
        """Start ARGV inside the namespace; the bed kills it at close().

        `ip netns exec` execs the command, so the Popen's pid is the
        command's own pid.
        """
        if self.closed:
            raise RuntimeError("NetBed %s is closed" % self.ns)
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(self.wrap(argv), **kw)
        self.procs.append(p)
        return p

    # -- devices -----------------------------------------------------------

    def add_tap(self, name):
        """Create persistent tap NAME, attach it to the bridge and set it
        up."""
        if name in self.taps:
            return name
        if len(name) > 15:
            raise ValueError("interface name too long: %r" % name)
        self.ip("tuntap", "add", name, "mode", "tap")
        self.taps.append(name)
        self.ip("link", "set", name, "master", self.bridge)
        self.ip("link", "set", name, "up")
        return name

    def fdb(self):
        """The bridge's forwarding database (text), for diagnostics."""
        return _run(["bridge", "-n", self.ns, "fdb", "show", "br",
                     self.bridge],
                    check=False).stdout

    def fdb_port(self, mac):
        """The bridge port (tap) the bridge has learnt MAC on, or None."""
        mac = mac.lower()
        for line in self.fdb().splitlines():
            f = line.split()
            if f and f[0].lower() == mac and "dev" in f and \
                    "permanent" not in f:
                return f[f.index("dev") + 1]
        return None

    def free_port(self):
        """A TCP port free on 127.0.0.1 inside the namespace."""
        code = ("import socket; s = socket.socket(); "
                "s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
        from colo_env import PYTHON
        return int(self.run([PYTHON, "-c", code]).stdout.strip())

    # -- teardown ------------------------------------------------------------

    def close(self):
        """Kill everything started here, delete the namespace.  Idempotent."""
        if self.closed:
            return
        self.closed = True
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self._created:
            # Anything else still in there (children, strays).
            _kill_ns_pids(self.ns)
            # Deleting the namespace removes br0 and the taps with it.
            _run(["ip", "netns", "del", self.ns], check=False)
            self._created = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "NetBed(%s, taps=%s)" % (self.ns, self.taps)
