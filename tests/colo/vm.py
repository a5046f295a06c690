"""One QEMU of the test bed, run inside a NetBed's namespace.

    vm = QemuVM(bed, "primary", workdir, tap="tap-p",
                append="colo.dirty_mbps=5")
    vm.start()
    vm.wait_serial(r"COLO-GUEST READY", 120)
    vm.qmp("query-status")             # -> {'status': 'running', ...}
    vm.hmp("info migrate")
    vm.shutdown()

Files of a VM, in WORKDIR/<name>/: qmp.sock, serial.log, stderr.log,
cmdline.txt.  log_tail() gives the end of each for failure reports.
"""

import asyncio
import os
import re
import shlex
import signal
import subprocess
import time

import colo_env
from qemu.qmp.legacy import QEMUMonitorProtocol  # noqa: E402 (colo_env)

GUEST_MAC = "52:54:00:12:34:56"
GUEST_IP = "10.77.0.10"
GUEST_PREFIX = 24
GUEST_PORT = 7777
# Run states from which a guest will not reach its serial milestones.
DEAD_STATES = ("internal-error", "guest-panicked", "shutdown", "io-error")


class QMPCommandError(Exception):
    """A QMP command answered with an error."""

    def __init__(self, vm, cmd, args, error):
        self.cmd = cmd
        self.args = args
        self.error = error      # {'class': ..., 'desc': ...}
        super().__init__("%s: QMP %s %s failed: %s: %s" % (
            vm, cmd, args or "", error.get("class"), error.get("desc")))


class VMError(Exception):
    """The VM died, a wait timed out, or similar; carries the logs' tails."""


class QemuVM:
    def __init__(self, bed, name, workdir, tap=None, mem=256, accel=None,
                 append="", extra_args=(), incoming=None, kernel=None,
                 initrd=None, mac=GUEST_MAC, guest_ip=GUEST_IP,
                 guest_port=GUEST_PORT, qmp_timeout=60.0, qemu=None,
                 machine="pc", net_hub=False, tap_opts=""):
        self.bed = bed
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.tap = tap
        self.mem = mem
        self.accel = accel or colo_env.ACCEL
        self.append_extra = append
        self.extra_args = list(extra_args)
        self.incoming = incoming
        self.kernel = kernel
        self.initrd = initrd
        self.mac = mac
        self.guest_ip = guest_ip
        self.guest_port = guest_port
        self.qmp_timeout = qmp_timeout
        self.qemu = qemu            # another QEMU binary than the build's
        self.machine = machine      # "none": no guest, block layer only
        self.net_hub = net_hub      # NIC and tap joined through a hub
        self.tap_opts = tap_opts    # more options of the tap netdev
        self.sock_path = os.path.join(self.dir, "qmp.sock")
        self.serial_path = os.path.join(self.dir, "serial.log")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.proc = None
        self._mon = None
        self._stderr = None
        self.events = []            # every QMP event seen, in order
        self._event_pos = 0         # wait_event consumes from here

    def __repr__(self):
        return "QemuVM(%s)" % self.name

    # -- command line ----------------------------------------------------------

    def kernel_cmdline(self):
        parts = ["console=ttyS0", "quiet",
                 "colo.ip=%s/%d" % (self.guest_ip, GUEST_PREFIX),
                 "colo.port=%d" % self.guest_port]
        if self.append_extra:
            parts.append(self.append_extra)
        return " ".join(parts)

    def args(self):
        a = [self.qemu or colo_env.qemu_binary(),
             "-name", self.name,
             "-machine", self.machine,
             "-nodefaults", "-no-user-config",
             "-display", "none",
             "-chardev", "socket,id=qmp0,path=%s,server=on,wait=off"
             % self.sock_path,
             "-mon", "chardev=qmp0,mode=control"]
        if self.machine == "none":
            return a + self.extra_args
        if self.kernel is None or self.initrd is None:
            self.kernel, self.initrd = colo_env.guest_images()
        a += ["-accel", self.accel,
              "-m", str(self.mem),
              "-smp", "1",
              "-serial", "file:%s" % self.serial_path,
              "-kernel", self.kernel,
              "-initrd", self.initrd,
              "-append", self.kernel_cmdline()]
        a += colo_env.firmware_args()
        if self.tap:
            a += ["-netdev", "tap,id=hn0,ifname=%s,script=no,downscript=no%s"
                  % (self.tap, "," + self.tap_opts if self.tap_opts else "")]
            nic = "hn0"
            if self.net_hub:
                a += ["-netdev", "hubport,id=hub-tap,hubid=0,netdev=hn0",
                      "-netdev", "hubport,id=hub-nic,hubid=0"]
                nic = "hub-nic"
            a += ["-device", "virtio-net-pci,netdev=%s,mac=%s"
                  % (nic, self.mac)]
        if self.incoming:
            a += ["-incoming", self.incoming]
        a += self.extra_args
        return a

    # -- life cycle --------------------------------------------------------------

    def start(self, timeout=30.0):
        """Start QEMU in the bed's namespace and connect QMP (bounded)."""
        if self.tap:
            self.bed.add_tap(self.tap)
        argv = self.args()
        with open(os.path.join(self.dir, "cmdline.txt"), "w") as f:
            f.write(" ".join(shlex.quote(x) for x in self.bed.wrap(argv))
                    + "\n")
        for p in (self.sock_path, self.serial_path):
            if os.path.exists(p):
                os.unlink(p)
        self._stderr = open(self.stderr_path, "w")
        self.proc = self.bed.popen(argv, stdout=self._stderr,
                                   stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if self.proc.poll() is not None:
                raise VMError("%s: QEMU exited with status %s at start\n%s"
                              % (self, self.proc.returncode, self.log_tail()))
            if os.path.exists(self.sock_path):
                mon = QEMUMonitorProtocol(self.sock_path, nickname=self.name)
                try:
                    mon.connect(negotiate=True)
                    mon.settimeout(self.qmp_timeout)
                    self._mon = mon
                    return self
                except Exception as e:  # ConnectError, OSError
                    last = e
                    try:
                        mon.close()
                    except Exception:
                        pass
            if time.monotonic() > deadline:
                raise VMError("%s: no QMP connection after %.0f s (%s)\n%s"
                              % (self, timeout, last, self.log_tail()))
            time.sleep(0.05)

    def is_running(self):
        return self.proc is not None and self.proc.poll() is None

    def _close_qmp(self):
        mon, self._mon = self._mon, None
        if mon is not None:
            try:
                mon.close()
            except Exception:
                pass

    def kill(self):
        """SIGKILL QEMU (a crash, for failover tests) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._close_qmp()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def shutdown(self, timeout=10.0):
        """`quit` via QMP; SIGKILL when QEMU is still there after TIMEOUT."""
        if self.is_running() and self._mon is not None:
            try:
                self._mon.cmd("quit")
            except Exception:
                pass   # QEMU may close the socket before answering
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return self.proc.returncode if self.proc else None

    # -- QMP / HMP -------------------------------------------------------------

    def _monitor(self):
        if self._mon is None:
            raise VMError("%s: no QMP connection (not started or killed)"
                          % self)
        return self._mon

    def qmp(self, cmd, args=None, **kw):
        """Run QMP command CMD; returns its 'return' value.

        Arguments come from the dict ARGS and/or keywords (use ARGS for
        names with dashes: vm.qmp('migrate-set-parameters',
        {'downtime-limit': 300})).  Raises QMPCommandError on a QMP error.
        """
        a = dict(args or {})
        a.update(kw)
        mon = self._monitor()
        try:
            r = mon.cmd_raw(cmd, a)
        except Exception as e:
            if not self.is_running():
                raise VMError("%s: QEMU died during QMP %s (status %s)\n%s"
                              % (self, cmd, self.proc.returncode,
                                 self.log_tail())) from e
            raise
        self._collect_events()
        if "error" in r:
            raise QMPCommandError(self, cmd, a, r["error"])
        return r.get("return")

    def hmp(self, cmdline):
        """Run an HMP command line via human-monitor-command; its output."""
        return self.qmp("human-monitor-command",
                        {"command-line": cmdline})

    def _collect_events(self, wait=0.0):
        mon = self._monitor()
        try:
            if wait > 0:
                ev = mon.pull_event(wait=float(wait))
                if ev:
                    self.events.append(ev)
            for ev in mon.get_events(wait=False):
                self.events.append(ev)
        except asyncio.TimeoutError:
            pass    # nothing came in WAIT seconds

    def wait_event(self, name, timeout, match=None):
        """Wait (bounded) for the next event NAME not yet consumed by an
        earlier wait_event (optionally MATCH(event) true); returns it."""
        deadline = time.monotonic() + timeout
        while True:
            while self._event_pos < len(self.events):
                ev = self.events[self._event_pos]
                self._event_pos += 1
                if ev.get("event") == name and (match is None or match(ev)):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise VMError("%s: no event %s in %.0f s; seen: %s\n%s" % (
                    self, name, timeout,
                    [e.get("event") for e in self.events[-20:]],
                    self.log_tail()))
            if not self.is_running():
                raise VMError("%s: QEMU exited (status %s) waiting for %s\n%s"
                              % (self, self.proc.returncode, name,
                                 self.log_tail()))
            self._collect_events(wait=min(left, 0.5))

    def wait_migration(self, status_set, timeout, fail_set=("failed",)):
        """Poll query-migrate until its status is in STATUS_SET; returns the
        query-migrate answer.  A status in FAIL_SET (not in STATUS_SET)
        raises at once."""
        if isinstance(status_set, str):
            status_set = {status_set}
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = self.qmp("query-migrate")
            st = last.get("status")
            if st in status_set:
                return last
            if st in fail_set:
                raise VMError("%s: migration %s: %s\n%s" % (
                    self, st, last.get("error-desc"), self.log_tail()))
            if time.monotonic() > deadline:
                raise VMError("%s: migration status %r, not %s after %.0f s"
                              "; last query-migrate: %s" % (
                                  self, st, sorted(status_set), timeout,
                                  last))
            time.sleep(0.1)

    def wait_status(self, status_set, timeout):
        """Poll query-status until its status is in STATUS_SET."""
        if isinstance(status_set, str):
            status_set = {status_set}
        deadline = time.monotonic() + timeout
        while True:
            st = self.qmp("query-status").get("status")
            if st in status_set:
                return st
            if time.monotonic() > deadline:
                raise VMError("%s: run state %r, not %s after %.0f s" % (
                    self, st, sorted(status_set), timeout))
            time.sleep(0.1)

    # -- serial console --------------------------------------------------------

    def serial_text(self):
        try:
            with open(self.serial_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_serial(self, pattern, timeout, start=0):
        """Wait (bounded) for regex PATTERN in the serial log (from byte
        offset START); returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        next_state_check = time.monotonic() + 1.0
        while True:
            m = rx.search(self.serial_text(), start)
            if m:
                return m
            if self._mon is not None and time.monotonic() > next_state_check:
                # Fail fast when the guest cannot get there any more.
                next_state_check = time.monotonic() + 1.0
                st = self.qmp("query-status").get("status")
                if st in DEAD_STATES:
                    raise VMError("%s: run state %r while waiting for %r on "
                                  "the serial console\n%s" % (
                                      self, st, pattern, self.log_tail()))
            if not self.is_running():
                raise VMError("%s: QEMU exited (status %s) before %r on the "
                              "serial console\n%s" % (
                                  self, self.proc.returncode if self.proc
                                  else None, pattern, self.log_tail()))
            if time.monotonic() > deadline:
                raise VMError("%s: %r not on the serial console after %.0f s"
                              "\n%s" % (self, pattern, timeout,
                                        self.log_tail()))
            time.sleep(0.1)

    # -- logs --------------------------------------------------------------------

    def log_files(self):
        return [p for p in (os.path.join(self.dir, "cmdline.txt"),
                            self.stderr_path, self.serial_path)
                if os.path.exists(p)]

    def log_tail(self, nbytes=3000):
        out = []
        for p in self.log_files():
            with open(p, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - nbytes))
                text = f.read().decode(errors="replace")
            out.append("----- %s: %s (last %d of %d bytes) -----\n%s" % (
                self.name, os.path.basename(p), min(nbytes, size), size,
                text))
        return "\n".join(out)
