"""Self-test of the bed itself, without QEMU or the guest (a few seconds).

NetBed life cycle, the stale-namespace sweep, and the counter client against
fake_guest.py (a Python stand-in for the guest's service) including a pause
of the server that the client must ride out, and a server crash that it must
record.
"""

import os
import signal
import subprocess
import time

import netbed
from colo_env import PYTHON
from counter_client import CounterLog

HERE = os.path.dirname(os.path.abspath(__file__))


def _wait_file(path, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "%s did not appear" % path
        time.sleep(0.05)


def test_netbed_lifecycle():
    b = netbed.NetBed()
    try:
        assert b.ns in netbed.list_namespaces()
        b.add_tap("tap-p")
        b.add_tap("tap-s")
        addr = b.ip("-br", "addr", "show", "br0").stdout
        assert "10.77.0.1/24" in addr
        for tap in ("tap-p", "tap-s"):
            link = b.ip("-d", "link", "show", tap).stdout
            assert "master br0" in link, link
        assert "127.0.0.1" in b.ip("-br", "addr", "show", "lo").stdout
        p = b.popen(["sleep", "600"])
        assert p.poll() is None
    finally:
        b.close()
    b.close()   # idempotent
    assert b.ns not in netbed.list_namespaces()
    assert p.poll() is not None
    host_links = subprocess.run(["ip", "-br", "link"], capture_output=True,
                                text=True).stdout
    assert "tap-p" not in host_links


def test_sweep_stale():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = "colo-%d-0" % dead.pid
    live = netbed.NetBed()
    try:
        subprocess.run(["ip", "netns", "add", stale], check=True)
        removed = netbed.sweep_stale(log=lambda m: None)
        assert stale in removed
        assert stale not in netbed.list_namespaces()
        assert live.ns in netbed.list_namespaces()   # our pid is alive
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
        live.close()


def test_client_rides_out_pause(bed, counter, workdir):
    # The fake service listens on the guest's address, held by br0 here.
    bed.ip("addr", "add", "10.77.0.10/24", "dev", "br0")
    ready = os.path.join(workdir, "fake.ready")
    srv = bed.popen([PYTHON, os.path.join(HERE, "fake_guest.py"),
                     "--ready-file", ready])
    _wait_file(ready, 10)

    c = counter(interval=0.02, timeout=10)
    c.wait_replies(20, 10)
    # Pause the service for 1.5 s: the client must wait, not fail.
    srv.send_signal(signal.SIGSTOP)
    t_pause = time.monotonic()
    time.sleep(1.5)     # the pause itself is the point of the test
    srv.send_signal(signal.SIGCONT)
    log = c.wait_replies(20, 10, after=t_pause + 1.5)
    assert c.stop() == 0
    log = CounterLog(c.out)
    assert log.errors() == []
    assert log.strictly_increasing()
    assert log.skips() == []
    gap, ta, tb, v = log.longest_gap()
    assert 1.4 < gap < 5, gap
    assert ta <= t_pause + 0.1 and tb >= t_pause + 1.4
    assert log.stop_reason() == "signal"

    # One-shot query on a fresh connection.
    r = bed.run([PYTHON, os.path.join(HERE, "counter_client.py"),
                 "--query", "get"])
    assert int(r.stdout) == log.last_value()

    # A crashing service is recorded as an error, and the client stops.
    c2 = counter(name="client2", interval=0.02, timeout=5)
    c2.wait_replies(5, 10)
    srv.kill()
    srv.wait(timeout=10)
    deadline = time.monotonic() + 15
    while c2.running():
        assert time.monotonic() < deadline, "client did not notice the crash"
        time.sleep(0.05)
    assert c2.proc.returncode == 2
    log2 = CounterLog(c2.out)
    assert len(log2.errors()) == 1
    assert log2.stop_reason() == "error"
