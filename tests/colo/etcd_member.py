"""One etcd member on loopback, for tests, and a small client of its v3
JSON gateway (the API colo-manager uses).

    with EtcdMember(workdir) as etcd:
        lease = etcd.grant(5)
        etcd.put("k", "v", lease)
        etcd.keepalive(lease)      # the TTL left; 0 once the lease is gone

The member is Debian's etcd (package etcd-server), on free ports of
127.0.0.1 with its data under WORKDIR/etcd; stop() and start() keep the
data, as a restarted etcd does.  Nothing of it outlives close().
"""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT = 30


HEARTBEAT_MS = 50
ELECTION_TIMEOUT_MS = 500


def _free_ports(n):
    """N distinct free ports of 127.0.0.1 (held together while chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _b64(s):
    return base64.b64encode(s.encode()).decode()


class EtcdMember:
    def __init__(self, workdir, name="colo-test"):
        if not os.access(ETCD, os.X_OK):
            raise RuntimeError("etcd is missing: run scripts/install-deps.sh "
                               "(Debian package etcd-server)")
        self.name = name
        self.dir = os.path.join(workdir, "etcd")
        self.proc = None
        self.log = os.path.join(workdir, "etcd.log")
        # A port chosen free may be taken before etcd binds it: new ones.
        for attempt in range(3):
            self.client_port, self.peer_port = _free_ports(2)
            self.url = "http://127.0.0.1:%d" % self.client_port
            try:
                self.start()
                return
            except RuntimeError:
                with open(self.log) as f:
                    if attempt == 2 or "address already in use" not in \
                            f.read():
                        raise
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        peer = "http://127.0.0.1:%d" % self.peer_port
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [ETCD, "--name", self.name, "--data-dir", self.dir,
                 "--listen-client-urls", self.url,
                 "--advertise-client-urls", self.url,
                 "--listen-peer-urls", peer,
                 "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", "%s=%s" % (self.name, peer),
                 # A 1 s lease TTL needs a shorter election timeout:
                 # etcd's shortest TTL is 1.5 election timeouts.
                 "--heartbeat-interval", str(HEARTBEAT_MS),
                 "--election-timeout", str(ELECTION_TIMEOUT_MS)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health",
                                            timeout=1) as r:
                    if json.load(r).get("health") == "true":
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("etcd exited with %d, see %s"
                                   % (self.proc.returncode, self.log))
            if time.monotonic() > deadline:
                raise RuntimeError("etcd not healthy after %d s, see %s"
                                   % (START_TIMEOUT, self.log))
            time.sleep(0.1)

    def stop(self):
        """Stop the member (SIGTERM, then SIGKILL); its data stays."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the v3 JSON gateway -------------------------------------------------

    def call(self, path, body):
        req = urllib.request.Request(self.url + path,
                                     data=json.dumps(body).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def grant(self, ttl):
        return self.call("/v3/lease/grant", {"TTL": ttl})["ID"]

    def keepalive(self, lease):
        """Renew LEASE once; the TTL it now has, 0 if it is gone."""
        res = self.call("/v3/lease/keepalive", {"ID": lease})["result"]
        return int(res.get("TTL", 0))

    def put(self, key, value, lease=None):
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        self.call("/v3/kv/put", body)

    def get(self, key):
        """KEY's value and lease, or None."""
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        if not kvs:
            return None
        kv = kvs[0]
        return (base64.b64decode(kv.get("value", "")).decode(),
                kv.get("lease", "0"))

    def txn(self, compare, success):
        """An etcd transaction; whether its comparisons held."""
        return bool(self.call("/v3/kv/txn", {"compare": compare,
                                             "success": success})
                    .get("succeeded", False))

    # Comparisons and requests, in the gateway's JSON.
    @staticmethod
    def absent(key):
        return {"key": _b64(key), "target": "VERSION", "result": "EQUAL",
                "version": "0"}

    @staticmethod
    def equals(key, value):
        return {"key": _b64(key), "target": "VALUE", "result": "EQUAL",
                "value": _b64(value)}

    @staticmethod
    def op_put(key, value, lease=None):
        op = {"key": _b64(key), "value": _b64(value)}
        if lease:
            op["lease"] = lease
        return {"requestPut": op}

    @staticmethod
    def op_delete(key):
        return {"requestDeleteRange": {"key": _b64(key)}}
