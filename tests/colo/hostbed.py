"""Hosts in namespaces: each host of a pair (its colo-manager and the QEMU
it runs) in a network namespace of its own, linked to the bed's namespace
(netbed.NetBed: the client's side) by two veth pairs:

    bed namespace (the client; the "switch")        host namespace
      br0 10.77.0.1/24   the guest's LAN  --- veth ---  lan0 - br-lan - tap
      br1 10.78.0.254/24 the backbone     --- veth ---  bb0 10.78.0.N/24

The pair's replication (migration into COLO, NBD) runs over the backbone
between bb0 addresses.  etcd stays on the test's loopback: each host's
manager reaches it through an etcd_gate.EtcdGate listening on the host's
own loopback (a socket made inside the host's namespace), which is the
host's link to etcd (cut: the host cannot reach etcd).  A host is
isolated by taking its two links down and cutting its gate; one-way cuts
of the replication are iptables rules in the host's namespace, gone with
it.

    host = HostNs(bed, 1)                  # 10.78.0.1; a NetBed itself
    host.add_tap("tap-a")                  # on br-lan
    host.popen([...]); host.wrap([...])    # run inside it
    host.links_down(); host.links_up()
    host.close()                           # kills what runs inside and
                                           # deletes it, veths included
"""

import ctypes
import os
import socket
import threading

import netbed
from netbed import _run

BACKBONE = "br1"
BACKBONE_NET = "10.78.0.%d"
BACKBONE_BED = 254
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def socket_in_ns(ns, *args):
    """A socket made inside network namespace NS (a thread of its own
    enters the namespace, makes it and ends; the socket stays there)."""
    out = {}

    def make():
        try:
            fd = os.open("/var/run/netns/%s" % ns, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, "setns %s: %s" % (ns,
                                                         os.strerror(err)))
            finally:
                os.close(fd)
            out["sock"] = socket.socket(*args)
        except BaseException as e:
            out["error"] = e
    t = threading.Thread(target=make)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["sock"]


def add_backbone(bed):
    """The bed's end of the backbone: bridge br1, 10.78.0.254/24."""
    if BACKBONE in _run(["ip", "-n", bed.ns, "-o", "link", "show"]).stdout:
        return
    bed.ip("link", "add", BACKBONE, "type", "bridge", "stp_state", "0",
           "forward_delay", "0")
    bed.ip("addr", "add", "%s/24" % (BACKBONE_NET % BACKBONE_BED), "dev",
           BACKBONE)
    bed.ip("link", "set", BACKBONE, "up")


class HostNs(netbed.NetBed):
    """Host number N (1..253) of BED: a NetBed of its own whose bridge is
    br-lan (no address), with its links to BED."""

    def __init__(self, bed, n, ageing_s=netbed.AGEING_S):
        self.bed = bed
        self.n = n
        self.addr = BACKBONE_NET % n
        super().__init__(ageing_s, bridge="br-lan", bridge_addr=None)
        try:
            add_backbone(bed)
            # The veths' bed ends are named after the host: lanN, bbN.
            for here, there, master in (("lan0", "lan%d" % n, bed.bridge),
                                        ("bb0", "bb%d" % n, BACKBONE)):
                self.ip("link", "add", here, "type", "veth", "peer", "name",
                        there, "netns", bed.ns)
                bed.ip("link", "set", there, "master", master)
                bed.ip("link", "set", there, "up")
            self.ip("link", "set", "lan0", "master", self.bridge)
            self.ip("addr", "add", "%s/24" % self.addr, "dev", "bb0")
            self.links_up()
        except BaseException:
            self.close()
            raise

    def free_port(self):
        """A TCP port free on this host's backbone address."""
        s = socket_in_ns(self.ns)
        try:
            s.bind((self.addr, 0))
            return s.getsockname()[1]
        finally:
            s.close()

    def links_down(self):
        """The host cut off: no LAN, no backbone."""
        for link in ("lan0", "bb0"):
            self.ip("link", "set", link, "down")

    def links_up(self):
        for link in ("lan0", "bb0"):
            self.ip("link", "set", link, "up")

    def drop_ports(self, ports, direction):
        """iptables rules in this host's namespace that drop TCP to PORTS
        ("in": packets arriving to them) or from them ("out"), or both.
        Returns the heal."""
        rules = []
        for port in ports:
            if direction in ("in", "both"):
                rules.append(["INPUT", "-p", "tcp", "--dport", str(port),
                              "-j", "DROP"])
            if direction in ("out", "both"):
                rules.append(["OUTPUT", "-p", "tcp", "--sport", str(port),
                              "-j", "DROP"])
        for r in rules:
            self.run(["iptables", "-A"] + r)

        def heal():
            for r in rules:
                self.run(["iptables", "-D"] + r, check=False)
        return heal

    def __repr__(self):
        return "HostNs(%s, %s)" % (self.ns, self.addr)
