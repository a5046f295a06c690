"""colo-manager (tools/colo-manager/) for the tests: one per host, its
configuration written from arguments, its log in WORKDIR; ManagedHost, a
host whose manager runs its QEMU too (a [qemu] group).

    m = ManagerProc(workdir, "host-a", "host-b", qmp_sock, etcd.url,
                    gated=True)     # m.gate cuts it off etcd
    m.start()
    m.status()        # colo-manager status --json, parsed
    m.kill()          # SIGKILL; m.start() again is a restarted manager
    m.close()
"""

import json
import os
import re
import signal
import subprocess

import colo_env
from colo_env import BUILD_DIR
from etcd_gate import EtcdGate
from vm import GUEST_IP, GUEST_MAC, QEMUMonitorProtocol

MANAGER_BIN = os.environ.get("COLO_MANAGER") or os.path.join(
    BUILD_DIR, "qemu", "tools", "colo-manager", "colo-manager")

# colo-manager's defaults: QEMU's lease is read and renewed out-of-band,
# whatever its main loop waits on; etcd's TTL outlasts it (colo-manager
# refuses a TTL that does not).  A 1 s TTL takes the test's etcd with a
# short election timeout (etcd_member.py).
VALIDITY_MS = 900
RENEW_MS = 180
TTL_S = 1
ETCD_TIMEOUT_MS = 300
QMP_TIMEOUT_MS = 200


class ManagerProc:
    def __init__(self, workdir, host, peer, qmp_sock, etcd_url, vm="vm0",
                 validity_ms=VALIDITY_MS, renew_ms=RENEW_MS, ttl_s=TTL_S,
                 gated=False, host_extra="", extra="", wrap=None,
                 gate_ns=None):
        """HOST_EXTRA: more lines of [host]; EXTRA: more groups; WRAP(argv)
        the command line that runs the manager (in a host's namespace);
        GATE_NS the namespace on whose loopback its gate listens."""
        self.wrap = wrap or (lambda argv: argv)
        self.host = host
        self.gate = None
        if gated:
            self.gate = EtcdGate(int(etcd_url.rsplit(":", 1)[1]), gate_ns)
            etcd_url = self.gate.url
        self.config = os.path.join(workdir, "manager-%s.conf" % host)
        self.log_path = os.path.join(workdir, "manager-%s.log" % host)
        self.state_file = os.path.join(workdir, "manager-%s.json" % host)
        self.proc = None
        with open(self.config, "w") as f:
            f.write("[vm]\nname = %s\n\n"
                    "[host]\nname = %s\npeer = %s\nqmp = %s\n"
                    "state-file = %s\n%s\n"
                    "[etcd]\nendpoints = %s\nttl = %d\ntimeout-ms = %d\n\n"
                    "[lease]\nvalidity-ms = %d\nrenew-ms = %d\n"
                    "qmp-timeout-ms = %d\n%s"
                    % (vm, host, peer, qmp_sock, self.state_file, host_extra,
                       etcd_url, ttl_s, ETCD_TIMEOUT_MS, validity_ms,
                       renew_ms, QMP_TIMEOUT_MS, extra))

    def start(self):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.wrap([MANAGER_BIN, "run",
                                                self.config]),
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def status(self, as_json=True):
        """colo-manager status: parsed with AS_JSON, else its text."""
        out = subprocess.run(self.wrap([MANAGER_BIN, "status", self.config] +
                                       (["--json"] if as_json else [])),
                             capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout) if as_json else out.stdout

    def state(self):
        """What the running manager wrote last (its state file), or {}."""
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self):
        """SIGTERM (SIGCONT first: it may be stopped), then SIGKILL."""
        if self.gate is not None:
            self.gate.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


class ManagedHost:
    """A host of the pair: its manager, its QEMU (started by the manager)
    and a monitor of the test's own on that QEMU.  With HOST
    (hostbed.HostNs), both run in the host's namespace, the replication
    on its backbone address and its link to etcd a gate on its loopback;
    else the QEMU runs in the bed's namespace (127.0.0.1) and the manager
    beside the test."""

    def __init__(self, bed, workdir, etcd_url, name, peer, tap, disk,
                 append="", host=None, **manager_kw):
        self.name = name
        self.bed = bed
        self.host = host
        net = host or bed
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.disk = disk
        self.tap = tap
        self.test_sock = os.path.join(self.dir, "test-qmp.sock")
        self.serial = os.path.join(self.dir, "serial.log")
        net.add_tap(tap)
        kernel, initrd = colo_env.guest_images()
        append = ("console=ttyS0 quiet colo.ip=%s/24 colo.port=7777 "
                  "colo.disk=/dev/vda colo.disk_interval_ms=5 %s"
                  % (GUEST_IP, append))
        args = (["-name", name, "-machine", "pc", "-nodefaults",
                 "-no-user-config", "-display", "none",
                 "-accel", colo_env.ACCEL, "-m", "256", "-smp", "1",
                 "-serial", "file:%s" % self.serial,
                 "-kernel", kernel, "-initrd", initrd, "-append", append] +
                colo_env.firmware_args() +
                ["-netdev", "tap,id=hn0,ifname=%s,script=no,downscript=no"
                 % tap,
                 "-device", "virtio-net-pci,netdev=hn0,mac=%s" % GUEST_MAC,
                 "-chardev", "socket,id=test,path=%s,server=on,wait=off"
                 % self.test_sock, "-mon", "chardev=test,mode=control"])
        quote = subprocess.list2cmdline
        migrate_port, nbd_port = net.free_port(), net.free_port()
        while nbd_port == migrate_port:
            nbd_port = net.free_port()
        self.migrate_port, self.nbd_port = migrate_port, nbd_port
        if host is not None:
            manager_kw.update(wrap=host.wrap, gate_ns=host.ns, gated=True)
        self.manager = ManagerProc(
            workdir, name, peer, os.path.join(self.dir, "manager-qmp.sock"),
            etcd_url,
            host_extra="address = %s\nmigrate-port = %d\n"
                       "nbd-port = %d\n" % (getattr(net, "addr", "127.0.0.1"),
                                            migrate_port, nbd_port),
            extra="\n[qemu]\nbinary = %s\nimg = %s\nwrapper = %s\n"
                  "args = %s\ndisk = %s\nworkdir = %s\n"
                  "checkpoint-delay-ms = 100\n"
                  % (colo_env.qemu_binary(), colo_env.tool("qemu-img"),
                     quote(net.wrap([])), quote(args), disk, self.dir),
            **manager_kw)

    def qmp(self, cmd, args=None, **kw):
        """Like QemuVM.qmp, on the QEMU the manager runs now."""
        a = dict(args or {})
        a.update(kw)
        mon = QEMUMonitorProtocol(self.test_sock, nickname=self.name)
        try:
            mon.connect(negotiate=True)
            mon.settimeout(30)
            r = mon.cmd_raw(cmd, a)
        finally:
            mon.close()
        if "error" in r:
            raise RuntimeError("%s: %s: %s" % (self.name, cmd, r["error"]))
        return r["return"]

    def wait_guest(self, timeout):
        """The guest this host booted is up: its service is ready."""
        from colo_pair import READY_RE, wait_until

        def ready():
            with open(self.serial) as f:
                return re.search(READY_RE, f.read())
        wait_until(ready, timeout, "%s's guest" % self.name)

    def colo_status(self):
        try:
            return self.qmp("query-colo-status")
        except Exception:
            return None

    def qemu_pid(self):
        return self.manager.state().get("qemu-pid", 0)

    def kill_qemu(self):
        pid = self.qemu_pid()
        assert pid, self.manager.state()
        os.kill(pid, signal.SIGKILL)
        return pid


def managed_disks(workdir, size_mb=64):
    """Disk images for host-a and host-b: the first a blank raw image,
    the second a file of the same size, which the first copy overwrites."""
    disk_a = os.path.join(workdir, "disk-a.raw")
    disk_b = os.path.join(workdir, "disk-b.raw")
    subprocess.run([colo_env.tool("qemu-img"), "create", "-q", "-f", "raw",
                    disk_a, "%dM" % size_mb], check=True, timeout=30)
    with open(disk_b, "wb") as f:
        f.truncate(size_mb << 20)
    return disk_a, disk_b


def pair_protected(etcd, hosts, vm="vm0"):
    """(primary host, secondary host) once the successor key names the
    other host and its QEMU is a secondary in COLO, else None."""
    p = etcd.get("colo/%s/primary" % vm)
    s = etcd.get("colo/%s/successor" % vm)
    if not p or not s:
        return None
    by = {h.name: h for h in hosts}
    st = by[s[0]].colo_status()
    if st and st["mode"] == "secondary" and \
            (by[p[0]].colo_status() or {}).get("mode") == "primary":
        return by[p[0]], by[s[0]]
    return None
