"""A disk protected by COLO block replication, for a pair of colo_pair.

    primary:   virtio-blk -> colo-disk0 (quorum, fifo, vote-threshold 1)
                               |- pri-disk (raw, primary.raw)
                               '- colo-disk0-replica (replication, primary)
                                     '- NBD client --unix socket--.
    secondary: virtio-blk -> colo-disk0 (replication, secondary)   |
                               '- colo-active (qcow2)              |
                                  '- colo-hidden (qcow2)           |
                                     '- sec-disk (raw) <-- NBD export

The user starts from one image: the secondary's is created empty and
filled by a mirror job before COLO starts (protect()).
"""

import json
import os
import subprocess

import colo_env

NODE = "colo-disk0"
REPLICA = "colo-disk0-replica"
SECONDARY_CHILD = "colo-disk0-secondary"
EXPORT = "colo-disk0"
DEVICE = ["-device", "virtio-blk-pci,drive=%s,id=vd0" % NODE]


def _blockdev(opts):
    return ["-blockdev", json.dumps(opts)]


def _file(path):
    return {"driver": "file", "filename": path}


class ReplicatedDisk:
    def __init__(self, workdir, size_mb=64, seed_image=None,
                 primary_device=DEVICE, subdir="disk", reprotectable=False):
        self.reprotectable = reprotectable
        self.dir = os.path.join(workdir, subdir)
        os.makedirs(self.dir, exist_ok=True)
        self.primary_image = os.path.join(self.dir, "primary.raw")
        self.secondary_image = os.path.join(self.dir, "secondary.raw")
        self.hidden_image = os.path.join(self.dir, "hidden.qcow2")
        self.active_image = os.path.join(self.dir, "active.qcow2")
        self.nbd_sock = os.path.join(self.dir, "nbd.sock")
        self.size = size_mb << 20
        self.primary_device = primary_device
        img = colo_env.tool("qemu-img")
        for path, fmt in ((self.primary_image, "raw"),
                          (self.secondary_image, "raw"),
                          (self.hidden_image, "qcow2"),
                          (self.active_image, "qcow2")):
            if path == self.primary_image and seed_image:
                continue
            subprocess.run([img, "create", "-q", "-f", fmt, path,
                            str(self.size)], check=True, timeout=30)
        if seed_image:
            with open(seed_image, "rb") as src, \
                    open(self.primary_image, "wb") as dst:
                dst.write(src.read())

    # -- command lines ---------------------------------------------------

    def primary_args(self):
        return (_blockdev({"node-name": "pri-disk", "driver": "raw",
                           "file": _file(self.primary_image)}) +
                _blockdev({"node-name": NODE, "driver": "quorum",
                           "read-pattern": "fifo", "vote-threshold": 1,
                           "children": ["pri-disk"]}) +
                self.primary_device)

    def secondary_args(self):
        return (_blockdev({"node-name": "sec-disk", "driver": "raw",
                           "file": _file(self.secondary_image)}) +
                _blockdev({"node-name": "colo-hidden", "driver": "qcow2",
                           "file": _file(self.hidden_image),
                           "backing": "sec-disk"}) +
                _blockdev({"node-name": "colo-active", "driver": "qcow2",
                           "file": _file(self.active_image),
                           "backing": "colo-hidden"}) +
                self._secondary_top() + DEVICE)

    def _secondary_top(self):
        """The replication node is the guest's disk, or, REPROTECTABLE,
        the first child of a quorum that is, as on a primary: after a
        failover a replica for a new secondary joins that quorum."""
        repl = {"driver": "replication", "mode": "secondary",
                "file": "colo-active"}
        if not self.reprotectable:
            return _blockdev(dict(repl, **{"node-name": NODE}))
        return (_blockdev(dict(repl, **{"node-name": SECONDARY_CHILD,
                                        "top-id": NODE})) +
                _blockdev({"node-name": NODE, "driver": "quorum",
                           "read-pattern": "fifo", "vote-threshold": 1,
                           "children": [SECONDARY_CHILD]}))

    def nbd_client(self):
        return {"driver": "nbd", "export": EXPORT,
                "server": {"type": "unix", "path": self.nbd_sock}}

    # -- set-up and tear-down ----------------------------------------------

    def protect(self, pvm, svm, timeout=120):
        """Before migrate: export the secondary's disk, copy the primary's
        into it, then make the replica a child of the primary's quorum.
        The primary is stopped only for the hand-over from the mirror job
        to the replica, so that no write falls between the two."""
        svm.qmp("nbd-server-start",
                addr={"type": "unix", "data": {"path": self.nbd_sock}})
        svm.qmp("block-export-add", {"type": "nbd", "id": EXPORT,
                                     "node-name": "sec-disk",
                                     "name": EXPORT, "writable": True})
        target = dict(self.nbd_client(), **{"node-name": "colo-sync-target"})
        pvm.qmp("blockdev-add", target)
        pvm.qmp("blockdev-mirror", {"job-id": "colo-sync", "device": NODE,
                                    "target": "colo-sync-target",
                                    "sync": "full"})
        pvm.wait_event("BLOCK_JOB_READY", timeout,
                       match=lambda e: e["data"]["device"] == "colo-sync")
        was_running = pvm.qmp("query-status")["running"]
        pvm.qmp("stop")
        # Cancelling a ready mirror completes it: the copy is exact now.
        pvm.qmp("block-job-cancel", device="colo-sync")
        ev = pvm.wait_event("BLOCK_JOB_COMPLETED", timeout,
                            match=lambda e: e["data"]["device"] == "colo-sync")
        assert "error" not in ev["data"], ev
        pvm.qmp("blockdev-del", {"node-name": "colo-sync-target"})
        pvm.qmp("blockdev-add", {"node-name": REPLICA, "driver": "replication",
                                 "mode": "primary",
                                 "file": self.nbd_client()})
        pvm.qmp("x-blockdev-change", parent=NODE, node=REPLICA)
        if was_running:
            pvm.qmp("cont")

    @staticmethod
    def drop_replica(pvm):
        """On a primary left alone: remove the replica from the quorum."""
        pvm.qmp("x-blockdev-change", parent=NODE, child="children.1")
        pvm.qmp("blockdev-del", {"node-name": REPLICA})

    @staticmethod
    def node_names(vm):
        return {n["node-name"]
                for n in vm.qmp("query-named-block-nodes", flat=True)}

    # -- inspection ----------------------------------------------------------

    def overlay_bytes(self, svm):
        """Bytes the secondary's overlays hold (hidden, active): their
        metadata is flushed first, then read from the image files."""
        out = {}
        for node, path in (("colo-hidden", self.hidden_image),
                           ("colo-active", self.active_image)):
            svm.hmp('qemu-io %s "flush"' % node)
            r = subprocess.run([colo_env.tool("qemu-img"), "map", "-U",
                                "--output=json", "-f", "qcow2", path],
                               capture_output=True, text=True, check=True,
                               timeout=30)
            out[node] = sum(e["length"] for e in json.loads(r.stdout)
                            if e["present"])
        return out

    def verify(self, image, last_seq):
        """colo-disk-verify IMAGE LAST_SEQ -> (ok, report dict)."""
        r = subprocess.run([colo_env.tool("colo-disk-verify"), image,
                            str(last_seq)], capture_output=True, text=True,
                           timeout=60)
        if r.returncode not in (0, 1):
            raise AssertionError("colo-disk-verify failed: %s" % r.stderr)
        report = json.loads(r.stdout)
        report["stderr"] = r.stderr
        return r.returncode == 0, report

    def guest_append(self, interval_ms=5):
        return "colo.disk=/dev/vda colo.disk_interval_ms=%d" % interval_ms
