"""Bring a primary and a secondary of the test guest into COLO in a NetBed.

    primary (tap-p) --migrate, x-colo--> secondary (tap-s, -incoming)

With via_proxy=True the replication stream passes through stream_proxy.py,
which can cut or corrupt it on command.
"""

import contextlib
import os
import shutil
import socket
import tempfile
import time

import netbed
from arbiter import qmp_args
from colo_env import PYTHON
from vm import QemuVM

HERE = os.path.dirname(os.path.abspath(__file__))
READY_RE = r"COLO-GUEST READY ip=\S+ port=\d+"
BOOT_TIMEOUT = float(os.environ.get("COLO_BOOT_TIMEOUT", "180"))
COLO_TIMEOUT = float(os.environ.get("COLO_MIGRATION_TIMEOUT", "300"))
X_COLO = {"capabilities": [{"capability": "x-colo", "state": True}]}


def query_guest(bed, cmd):
    """One request to the guest's service, answered by whoever serves it."""
    r = bed.run([PYTHON, os.path.join(HERE, "counter_client.py"),
                 "--query", cmd], timeout=60)
    return r.stdout.strip()


def colo_status(vm):
    return vm.qmp("query-colo-status")


def checkpoints(vm):
    return colo_status(vm)["stats"]["checkpoints"]


def wait_until(cond, timeout, what, poll=0.05):
    """Poll COND until true, at most TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s"
                                 % (timeout, what))
        time.sleep(poll)


def wait_checkpoints(vm, n, timeout=60):
    """Wait until VM has completed more than N checkpoints."""
    return wait_until(lambda: checkpoints(vm) > n, timeout,
                      "%s to pass %d checkpoints" % (vm.name, n))


class StreamProxy:
    """stream_proxy.py running in the bed; see its docstring."""

    def __init__(self, bed, workdir, target_port):
        self.port = bed.free_port()
        self.control = os.path.join(workdir, "proxy.sock")
        self.log = open(os.path.join(workdir, "proxy.log"), "w")
        self.proc = bed.popen([PYTHON, os.path.join(HERE, "stream_proxy.py"),
                               str(self.port), str(target_port),
                               self.control], stdout=self.log,
                              stderr=self.log)
        wait_until(lambda: os.path.exists(self.control), 30, "the proxy")

    def command(self, line):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(self.control)
            s.sendall(line.encode() + b"\n")
            return s.recv(64).decode().strip()

    def arm(self, line):
        """Send LINE, a command answered later (forge, reset): returns the
        connection to read the answer from with answer()."""
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(60)
        s.connect(self.control)
        s.sendall(line.encode() + b"\n")
        return s

    @staticmethod
    def answer(conn):
        with conn:
            return conn.recv(64).decode().strip()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


@contextlib.contextmanager
def standalone_bed(prefix):
    """For scripts outside pytest (demo, benchmarks): a NetBed, a work dir
    and a VM factory; the VMs, the bed and the dir are removed at the end,
    also on an exception or Ctrl-C."""
    netbed.sweep_stale()
    workdir = tempfile.mkdtemp(prefix=prefix)
    bed = netbed.NetBed()
    vms = []

    def make_vm(name, tap=None, **kw):
        vm = QemuVM(bed, name, workdir, tap=tap, **kw)
        vms.append(vm)
        return vm.start()

    try:
        yield bed, make_vm, workdir
    finally:
        for vm in vms:
            vm.kill()
        bed.close()
        shutil.rmtree(workdir, ignore_errors=True)


def start_pair(bed, vm_factory, workdir, append="", delay_ms=100,
               primary_args=(), secondary_args=(), via_proxy=False,
               qemu=None, isolate_secondary=False, disk=None,
               before_migrate=None, vm_kw=None, output_delay_us=None):
    """Boot the primary, start the secondary and enter COLO (with QEMU
    binary QEMU, default the build's).  ISOLATE_SECONDARY takes the
    secondary's tap off the bridge, for a COLO whose secondary runs and
    talks between checkpoints (the base's in periodic mode).  DISK, a
    colo_disk.ReplicatedDisk, gives the guest a disk protected by block
    replication.  BEFORE_MIGRATE(primary, secondary) runs just before
    migrate.  VM_KW are more arguments for both QemuVMs.
    OUTPUT_DELAY_US sets x-colo-output-delay (ours only; 0: periodic
    checkpoints), else the default stands.  Returns (primary, secondary,
    proxy or None)."""
    if disk is not None:
        primary_args = list(primary_args) + disk.primary_args()
        secondary_args = list(secondary_args) + disk.secondary_args()
    vm_kw = vm_kw or {}
    pvm = vm_factory("primary", tap="tap-p", append=append,
                     extra_args=list(primary_args), qemu=qemu, **vm_kw)
    pvm.wait_serial(READY_RE, BOOT_TIMEOUT)
    port = bed.free_port()
    svm = vm_factory("secondary", tap="tap-s", append=append,
                     incoming="tcp:127.0.0.1:%d" % port,
                     extra_args=list(secondary_args), qemu=qemu, **vm_kw)
    svm.incoming_port = port
    if isolate_secondary:
        bed.ip("link", "set", "tap-s", "nomaster")
    proxy = StreamProxy(bed, workdir, port) if via_proxy else None
    if disk is not None:
        disk.protect(pvm, svm)
    for vm in (pvm, svm):
        vm.qmp("migrate-set-capabilities", X_COLO)
    pvm.qmp("migrate-set-parameters", {"x-checkpoint-delay": delay_ms,
                                       "max-bandwidth": 256 << 20})
    if output_delay_us is not None:
        pvm.qmp("migrate-set-parameters",
                {"x-colo-output-delay": output_delay_us})
    if before_migrate:
        before_migrate(pvm, svm)
    pvm.qmp("migrate", uri="tcp:127.0.0.1:%d"
            % (proxy.port if proxy else port))
    def primary_in_colo():
        st = pvm.qmp("query-migrate")
        if st.get("status") == "failed":
            raise AssertionError("the migration to the secondary failed: %s"
                                 % st.get("error-desc"))
        return colo_status(pvm)["mode"] == "primary"

    wait_until(primary_in_colo, COLO_TIMEOUT, "the primary to enter COLO")
    wait_until(lambda: colo_status(svm)["mode"] == "secondary", 60,
               "the secondary to enter COLO")
    assert pvm.qmp("query-migrate")["status"] == "colo"
    assert svm.qmp("query-migrate")["status"] == "colo"
    return pvm, svm, proxy


def start_arbitrated_pair(bed, vm_factory, workdir, **kw):
    """start_pair(..., **KW) with capability x-colo-arbitrated on both
    sides and, on each, a QMP monitor of its arbiter's own
    (arbiter.qmp_args()).  Returns (primary, secondary, (the primary's
    arbiter socket, the secondary's))."""
    socks = (os.path.join(workdir, "arbiter-p.sock"),
             os.path.join(workdir, "arbiter-s.sock"))

    def arbitrated(pvm, svm):
        for vm in (pvm, svm):
            vm.qmp("migrate-set-capabilities", {"capabilities": [
                {"capability": "x-colo-arbitrated", "state": True}]})

    pvm, svm, _ = start_pair(bed, vm_factory, workdir,
                             primary_args=qmp_args(socks[0]),
                             secondary_args=qmp_args(socks[1]),
                             before_migrate=arbitrated, **kw)
    return pvm, svm, socks


def save_memory(vm, path, size_mb=256):
    vm.qmp("pmemsave", val=0, size=size_mb << 20, filename=path)
    return path


def differing_pages(path_a, path_b):
    with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
        a, b = fa.read(), fb.read()
    assert len(a) == len(b)
    return [hex(i) for i in range(0, len(a), 4096)
            if a[i:i + 4096] != b[i:i + 4096]]


def checkpoint_stopped(pvm, svm):
    """Take a checkpoint with the primary stopped, so that both sides stand
    at the same state, and return the secondary's checkpoint count then.
    Periodic and output-driven checkpoints are held off from then on: the
    next is the one the caller asks for.

    Counted by cause, not by number: a request is one flag, so a request
    made while an earlier one is still pending is merged into it.  The
    checkpoint that consumed this request was started after it, so after
    the stop took effect (a stop during a checkpoint takes effect at its
    end); once the secondary loaded it, nothing is pending."""
    pvm.qmp("migrate-set-parameters", {"x-checkpoint-delay": 3600 * 1000,
                                       "x-colo-output-delay": 0})
    pvm.qmp("stop")
    requested = colo_status(pvm)["x-output"]["by-request"]
    pvm.qmp("x-colo-checkpoint")
    wait_until(lambda: colo_status(pvm)["x-output"]["by-request"] >
               requested, 60, "the requested checkpoint")

    # The primary counts a checkpoint at its RECEIVED, the secondary once
    # loaded.  (The primary's in-flight count is no help: it learns of a
    # LOADED only at its next exchange.)
    wait_until(lambda: checkpoints(svm) == checkpoints(pvm), 60,
               "the secondary to load every checkpoint sent")
    return checkpoints(svm)
