"""colo-manager (tools/colo-manager/) for the tests: one per host, its
configuration written from arguments, its log in WORKDIR.

    m = ManagerProc(workdir, "host-a", "host-b", qmp_sock, etcd.url,
                    gated=True)     # m.gate cuts it off etcd
    m.start()
    m.status()        # colo-manager status --json, parsed
    m.kill()          # SIGKILL; m.start() again is a restarted manager
    m.close()
"""

import json
import os
import signal
import subprocess

from colo_env import BUILD_DIR
from etcd_gate import EtcdGate

MANAGER_BIN = os.environ.get("COLO_MANAGER") or os.path.join(
    BUILD_DIR, "qemu", "tools", "colo-manager", "colo-manager")

# A primary waiting on a silent secondary may not answer its monitor for
# about the silence timeout (2 s): QEMU's lease outlasts that, and etcd's
# TTL QEMU's lease (colo-manager refuses a TTL that does not).
VALIDITY_MS = 4000
RENEW_MS = 500
TTL_S = 5


class ManagerProc:
    def __init__(self, workdir, host, peer, qmp_sock, etcd_url, vm="vm0",
                 validity_ms=VALIDITY_MS, renew_ms=RENEW_MS, ttl_s=TTL_S,
                 gated=False, host_extra="", extra=""):
        """HOST_EXTRA: more lines of [host]; EXTRA: more groups."""
        self.host = host
        self.gate = None
        if gated:
            self.gate = EtcdGate(int(etcd_url.rsplit(":", 1)[1]))
            etcd_url = self.gate.url
        self.config = os.path.join(workdir, "manager-%s.conf" % host)
        self.log_path = os.path.join(workdir, "manager-%s.log" % host)
        self.state_file = os.path.join(workdir, "manager-%s.json" % host)
        self.proc = None
        with open(self.config, "w") as f:
            f.write("[vm]\nname = %s\n\n"
                    "[host]\nname = %s\npeer = %s\nqmp = %s\n"
                    "state-file = %s\n%s\n"
                    "[etcd]\nendpoints = %s\nttl = %d\ntimeout-ms = 1000\n\n"
                    "[lease]\nvalidity-ms = %d\nrenew-ms = %d\n"
                    "qmp-timeout-ms = 300\n%s"
                    % (vm, host, peer, qmp_sock, self.state_file, host_extra,
                       etcd_url, ttl_s, validity_ms, renew_ms, extra))

    def start(self):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([MANAGER_BIN, "run", self.config],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def status(self, as_json=True):
        """colo-manager status: parsed with AS_JSON, else its text."""
        out = subprocess.run([MANAGER_BIN, "status", self.config] +
                             (["--json"] if as_json else []),
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
