"""The 'replication' block driver on its own, on small images, in a QEMU
without a guest (-machine none).  Replication is driven the way Xen's COLO
drives it (xen-set-replication, xen-colo-do-checkpoint,
query-xen-replication-status), which calls the same registry as the COLO
frame.  The primary's writes come in through an NBD export of the
secondary disk, the SVM's through an export of the replication node.

  secondary_cycle      start, a checkpoint, failover: what each side reads
                       and what ends up in the image
  stop_and_restart     stop without failover leaves the chain as it was
  primary              pass-through, dropped after stop, errors recorded
  start errors         missing overlays, wrong mode, double start; a failed
                       start leaves no node half started
  bad options          mode, top-id
"""

import json
import os
import subprocess

import pytest

import colo_env
from colo_pair import wait_until
from vm import QMPCommandError

SIZE = 4 << 20
CHUNK = 64 << 10


def qemu_img(*args):
    subprocess.run([colo_env.tool("qemu-img")] + list(args), check=True,
                   timeout=30, capture_output=True)


class Images:
    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "img")
        os.makedirs(self.dir, exist_ok=True)
        self.disk = self.path("disk.raw")
        with open(self.disk, "wb") as f:
            f.write(b"\x11" * SIZE)
        for name in ("hidden", "active"):
            qemu_img("create", "-q", "-f", "qcow2", self.path(name + ".qcow2"),
                     str(SIZE))
        self.nbd_sock = self.path("nbd.sock")

    def path(self, name):
        return os.path.join(self.dir, name)

    def nbd_uri(self, export):
        return "nbd+unix:///%s?socket=%s" % (export, self.nbd_sock)

    def byte(self, offset):
        with open(self.disk, "rb") as f:
            f.seek(offset)
            return f.read(1)[0]


def file_node(name, path, driver="raw", **kw):
    d = {"node-name": name, "driver": driver,
         "file": {"driver": "file", "filename": path}}
    d.update(kw)
    return d


@pytest.fixture
def images(workdir):
    return Images(workdir)


@pytest.fixture
def blockvm(vm_factory, images):
    """A QEMU with the secondary's chain and an NBD server; not started."""
    vm = vm_factory("blk", machine="none")
    vm.qmp("blockdev-add", file_node("disk", images.disk))
    vm.qmp("blockdev-add", file_node("hidden", images.path("hidden.qcow2"),
                                     "qcow2", backing="disk"))
    vm.qmp("blockdev-add", file_node("active", images.path("active.qcow2"),
                                     "qcow2", backing="hidden"))
    vm.qmp("nbd-server-start",
           addr={"type": "unix", "data": {"path": images.nbd_sock}})
    return vm


def add_secondary(vm, name="repl", file="active", **kw):
    vm.qmp("blockdev-add", dict({"node-name": name, "driver": "replication",
                                 "mode": "secondary", "file": file}, **kw))


def export(vm, node, writable=True):
    vm.qmp("block-export-add", {"type": "nbd", "id": node, "node-name": node,
                                "name": node, "writable": writable})


def nbd_write(images, export_name, pattern, offset):
    r = subprocess.run([colo_env.tool("qemu-io"), "-f", "raw",
                        images.nbd_uri(export_name), "-c",
                        "write -P 0x%x %d %d" % (pattern, offset, CHUNK)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "wrote" in r.stdout, r.stdout + r.stderr


def nbd_byte(images, export_name, offset):
    """The first byte at OFFSET as read through an export."""
    out = images.path("read.raw")
    subprocess.run([colo_env.tool("qemu-img"), "convert", "-f", "raw",
                    "-O", "raw", images.nbd_uri(export_name), out],
                   check=True, timeout=30, capture_output=True)
    with open(out, "rb") as f:
        f.seek(offset)
        return f.read(1)[0]


def drivers(vm):
    return [n["drv"] for n in vm.qmp("query-named-block-nodes", flat=True)]


def overlay_bytes(vm, images, node):
    vm.hmp('qemu-io %s "flush"' % node)
    r = subprocess.run([colo_env.tool("qemu-img"), "map", "-U",
                        "--output=json", "-f", "qcow2",
                        images.path(node + ".qcow2")],
                       capture_output=True, text=True, check=True, timeout=30)
    return sum(e["length"] for e in json.loads(r.stdout) if e["present"])


def replication(vm, **kw):
    return vm.qmp("xen-set-replication", **kw)


def qmp_error(vm, cmd, args=None, **kw):
    with pytest.raises(QMPCommandError) as e:
        vm.qmp(cmd, args, **kw)
    return str(e.value)


def test_secondary_cycle(blockvm, images):
    vm = blockvm
    add_secondary(vm)
    export(vm, "disk")       # the primary's writes
    export(vm, "repl")       # the SVM's view
    replication(vm, enable=True, primary=False)
    assert "copy-before-write" in drivers(vm)

    # The primary overwrites: the SVM still reads the checkpoint.
    nbd_write(images, "disk", 0x22, 0)
    assert images.byte(0) == 0x22
    assert nbd_byte(images, "repl", 0) == 0x11
    assert overlay_bytes(vm, images, "hidden") >= CHUNK

    # A checkpoint: the disk as the primary wrote it, overlays empty.
    vm.qmp("xen-colo-do-checkpoint")
    assert nbd_byte(images, "repl", 0) == 0x22
    assert overlay_bytes(vm, images, "hidden") == 0
    assert overlay_bytes(vm, images, "active") == 0

    # More from the primary, and a write of the SVM's own.
    nbd_write(images, "disk", 0x33, 0)
    nbd_write(images, "repl", 0x44, 1 << 20)
    assert images.byte(1 << 20) == 0x11     # in the active disk only
    assert overlay_bytes(vm, images, "active") >= CHUNK

    replication(vm, enable=False, primary=False, failover=True)
    # Fenced: the primary's export is closed.
    assert "disk" not in [e["id"] for e in vm.qmp("query-block-exports")]
    assert "copy-before-write" not in drivers(vm)
    # The checkpoint plus the SVM's write, in the image itself.
    assert images.byte(0) == 0x22
    assert images.byte(1 << 20) == 0x44
    # From now on the node writes the image directly.
    nbd_write(images, "repl", 0x55, 2 << 20)
    assert images.byte(2 << 20) == 0x55
    # A failed-over node is out of replication: a new start leaves it be.
    replication(vm, enable=True, primary=False)
    assert "copy-before-write" not in drivers(vm)


def test_stop_and_restart(blockvm, images):
    vm = blockvm
    add_secondary(vm)
    export(vm, "disk")
    replication(vm, enable=True, primary=False)
    nbd_write(images, "disk", 0x22, 0)
    replication(vm, enable=False, primary=False)
    assert "copy-before-write" not in drivers(vm)
    assert images.byte(0) == 0x22
    assert "not started" in qmp_error(vm, "xen-colo-do-checkpoint")
    # Started again, it protects the disk as it is now.
    replication(vm, enable=True, primary=False)
    assert overlay_bytes(vm, images, "hidden") == 0
    nbd_write(images, "disk", 0x33, 0)
    replication(vm, enable=False, primary=False, failover=True)
    assert images.byte(0) == 0x22


def test_primary(vm_factory, images, workdir):
    target = images.path("target.raw")
    qemu_img("create", "-q", "-f", "raw", target, str(SIZE))
    nbd = subprocess.Popen([colo_env.tool("qemu-nbd"), "-k", images.nbd_sock,
                            "-f", "raw", "-x", "t", "--persistent", target])
    try:
        wait_until(lambda: os.path.exists(images.nbd_sock) or
                   nbd.poll() is not None, 30, "qemu-nbd")
        assert nbd.poll() is None, "qemu-nbd exited"
        vm = vm_factory("pri", machine="none")
        vm.qmp("blockdev-add", {"node-name": "repl", "driver": "replication",
                                "mode": "primary",
                                "file": {"driver": "nbd", "export": "t",
                                         "server": {"type": "unix",
                                                    "path": images.nbd_sock}}})
        vm.hmp('qemu-io repl "write -P 0x66 0 64k"')
        replication(vm, enable=True, primary=True)
        assert "already started" in qmp_error(
            vm, "xen-set-replication", enable=True, primary=True)
        vm.hmp('qemu-io repl "write -P 0x77 64k 64k"')
        assert vm.qmp("query-xen-replication-status") == {"error": False}
        replication(vm, enable=False, primary=True, failover=True)
        # Dropped: nothing reaches the secondary any more.
        vm.hmp('qemu-io repl "write -P 0x88 128k 64k"')
        with open(target, "rb") as f:
            data = f.read(3 * CHUNK)
        assert data[0] == 0x66 and data[CHUNK] == 0x77
        assert data[2 * CHUNK] == 0
        # A lost secondary is reported, not hidden.
        replication(vm, enable=True, primary=True)
        nbd.kill()
        nbd.wait(timeout=10)
        vm.hmp('qemu-io repl "write -P 0x99 0 64k"')
        st = vm.qmp("query-xen-replication-status")
        assert st["error"] and "secondary" in st["desc"], st
    finally:
        if nbd.poll() is None:
            nbd.kill()
            nbd.wait(timeout=10)


@pytest.mark.parametrize("chain, message", [
    ("disk", "cannot be emptied"),
    ("qcow2-alone", "no backing (hidden) disk"),
    ("hidden-alone", "no backing (secondary) disk"),
])
def test_start_missing_overlays(blockvm, images, chain, message):
    vm = blockvm
    if chain == "disk":
        file = "disk"
    else:
        # A qcow2 node without a backing disk.
        name = "lone-" + chain
        path = images.path(name + ".qcow2")
        qemu_img("create", "-q", "-f", "qcow2", path, str(SIZE))
        vm.qmp("blockdev-add", file_node(name, path, "qcow2", backing=None))
        file = name
        if chain == "hidden-alone":
            top = images.path("top.qcow2")
            qemu_img("create", "-q", "-f", "qcow2", top, str(SIZE))
            vm.qmp("blockdev-add", file_node("top", top, "qcow2",
                                             backing=name))
            file = "top"
    add_secondary(vm, file=file)
    err = qmp_error(vm, "xen-set-replication", enable=True, primary=False)
    assert message in err, err
    assert "copy-before-write" not in drivers(vm)


def test_start_errors(blockvm, images):
    vm = blockvm
    add_secondary(vm)
    assert "is in secondary mode" in qmp_error(
        vm, "xen-set-replication", enable=True, primary=True)
    assert "only for disabling" in qmp_error(
        vm, "xen-set-replication", enable=True, primary=False, failover=True)
    assert "not started" in qmp_error(
        vm, "xen-set-replication", enable=False, primary=False)
    replication(vm, enable=True, primary=False)
    assert "already started" in qmp_error(
        vm, "xen-set-replication", enable=True, primary=False)
    replication(vm, enable=False, primary=False)



def test_failed_start_undoes(blockvm):
    vm = blockvm
    # Nodes start newest first: the good one starts, then the bad one fails.
    add_secondary(vm, name="bad", file="disk")
    add_secondary(vm)
    assert "cannot be emptied" in qmp_error(
        vm, "xen-set-replication", enable=True, primary=False)
    assert "copy-before-write" not in drivers(vm)
    assert "not started" in qmp_error(vm, "xen-colo-do-checkpoint")


def test_bad_options(blockvm):
    vm = blockvm
    base = {"node-name": "r", "driver": "replication", "file": "active"}
    err = qmp_error(vm, "blockdev-add", base)
    assert "mode" in err, err
    err = qmp_error(vm, "blockdev-add", dict(base, mode="tertiary"))
    assert "tertiary" in err, err
    err = qmp_error(vm, "blockdev-add", dict(base, mode="primary",
                                             **{"top-id": "x"}))
    assert "top-id" in err, err
    add_secondary(vm, **{"top-id": "no-such-node"})
    err = qmp_error(vm, "xen-set-replication", enable=True, primary=False)
    assert "top-id" in err, err
