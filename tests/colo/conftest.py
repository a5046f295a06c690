"""pytest fixtures of the COLO end-to-end bed.

  bed           a NetBed (namespace + br0), always closed
  workdir       a short private temp dir (QMP sockets, serial logs, client
                logs), removed at the end; copied to $COLO_RESULTS_DIR/<test>
                on failure when that is set; kept when COLO_KEEP_TMP=1
  results_dir   where tests write their JSON results: $COLO_RESULTS_DIR if
                set, else pytest's tmp_path
  guest_images  (vmlinuz, initrd.img); a clear error when not built
  qemu_bin      the QEMU binary (and the firmware it needs); a clear error
                when not built
  vm_factory    make_vm(name, tap=..., **QemuVM kwargs) -> started QemuVM;
                every VM is killed at teardown
  counter       make_client(**CounterClient kwargs) -> running client;
                stopped at teardown

Cleanup also happens on KeyboardInterrupt, SIGTERM/SIGHUP (turned into a
KeyboardInterrupt after cleaning up) and at exit.  At session start, colo-*
namespaces left by a dead run of this harness (the pid in their name is
gone) are removed, and so are work dirs colo-t-<pid>-* of dead runs.
"""

import atexit
import glob
import os
import re
import shutil
import signal
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import colo_env  # noqa: E402
import netbed  # noqa: E402
from counter_client import CounterClient  # noqa: E402
from etcd_member import EtcdMember  # noqa: E402
from vm import QemuVM  # noqa: E402

# Everything alive, for the atexit / signal paths (fixtures do the normal
# cleanup; all cleanups are idempotent).
_live_vms = []
_live_clients = []
_live_beds = []


def _cleanup_all():
    for c in list(_live_clients):
        try:
            c.proc.kill()
        except Exception:
            pass
    for vm in list(_live_vms):
        try:
            vm.kill()
        except Exception:
            pass
    for b in list(_live_beds):
        try:
            b.close()
        except Exception:
            pass


def _on_signal(signum, frame):
    _cleanup_all()
    raise KeyboardInterrupt("signal %d" % signum)


def pytest_configure(config):
    atexit.register(_cleanup_all)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)


def _tmp_base():
    return os.environ.get("COLO_TMPDIR") or "/tmp"


def _sweep_stale_workdirs():
    """Remove colo-t-<pid>-* work dirs whose pid is dead (a killed run)."""
    for d in glob.glob(os.path.join(_tmp_base(), "colo-t-*-*")):
        m = re.match(r"colo-t-(\d+)-", os.path.basename(d))
        if m and not netbed._pid_alive(int(m.group(1))):
            print("colo: removing stale work dir %s" % d)
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _sweep_stale():
    if os.geteuid() != 0:
        pytest.fail("the COLO bed needs root (network namespaces, taps)",
                    pytrace=False)
    netbed.sweep_stale()
    _sweep_stale_workdirs()
    yield
    _cleanup_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the item; attach VM / client logs to
    the report of a failed setup or call."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed and rep.when in ("setup", "call"):
        for vm in getattr(item, "_colo_vms", []):
            rep.sections.append(("colo VM %s" % vm.name, vm.log_tail(6000)))
        for c in getattr(item, "_colo_clients", []):
            tail = ""
            try:
                with open(c.out) as f:
                    lines = f.read().splitlines()
                tail = "\n".join(lines[-15:])
            except OSError:
                pass
            rep.sections.append(("colo client %s" % os.path.basename(c.out),
                                 "stderr:\n%s\nlog tail:\n%s"
                                 % (c.stderr_text()[-2000:], tail)))
        b = getattr(item, "_colo_bed", None)
        if b is not None and not b.closed:
            rep.sections.append(("colo bridge fdb", b.fdb()))


def _failed(request):
    return any(getattr(getattr(request.node, "rep_" + w, None), "failed",
                       False) for w in ("setup", "call"))


@pytest.fixture
def workdir(request):
    d = tempfile.mkdtemp(prefix="colo-t-%d-" % os.getpid(), dir=_tmp_base())
    yield d
    results = os.environ.get("COLO_RESULTS_DIR")
    if _failed(request) and results:
        dest = os.path.join(results, "failed-" + request.node.name
                            .replace("/", "_").replace("[", "-")
                            .replace("]", ""))
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(d, dest, ignore=shutil.ignore_patterns("*.sock"))
        print("colo: logs of the failed test copied to %s" % dest)
    if os.environ.get("COLO_KEEP_TMP") == "1":
        print("colo: kept %s" % d)
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def results_dir(request):
    d = os.environ.get("COLO_RESULTS_DIR")
    if d:
        os.makedirs(d, exist_ok=True)
        return d
    return str(request.getfixturevalue("tmp_path"))


@pytest.fixture(scope="session")
def guest_images():
    try:
        return colo_env.guest_images()
    except colo_env.SetupError as e:
        msg = str(e)
    pytest.fail(msg, pytrace=False)


@pytest.fixture(scope="session")
def qemu_bin():
    try:
        b = colo_env.qemu_binary()
        colo_env.firmware_args()
        return b
    except colo_env.SetupError as e:
        msg = str(e)
    pytest.fail(msg, pytrace=False)


@pytest.fixture
def bed(request):
    b = netbed.NetBed()
    _live_beds.append(b)
    request.node._colo_bed = b
    try:
        yield b
    finally:
        b.close()
        _live_beds.remove(b)


@pytest.fixture
def vm_factory(request, bed, workdir, guest_images, qemu_bin):
    vms = []
    request.node._colo_vms = vms

    def make_vm(name, tap=None, start=True, **kw):
        kernel, initrd = guest_images
        kw.setdefault("kernel", kernel)
        kw.setdefault("initrd", initrd)
        vm = QemuVM(bed, name, workdir, tap=tap, **kw)
        vms.append(vm)
        _live_vms.append(vm)
        if start:
            vm.start()
        return vm

    try:
        yield make_vm
    finally:
        for vm in vms:
            vm.kill()
            if vm in _live_vms:
                _live_vms.remove(vm)


@pytest.fixture
def counter(request, bed, workdir):
    clients = []
    request.node._colo_clients = clients

    def make_client(name="client", **kw):
        out = os.path.join(workdir, name + ".jsonl")
        c = CounterClient(bed, out, **kw)
        clients.append(c)
        _live_clients.append(c)
        return c

    try:
        yield make_client
    finally:
        for c in clients:
            c.stop(timeout=5)
            if c in _live_clients:
                _live_clients.remove(c)


@pytest.fixture
def etcd(workdir):
    """One etcd member on loopback (etcd_member.py), gone afterwards."""
    member = EtcdMember(workdir)
    yield member
    member.close()


@pytest.fixture
def managers():
    """colo-manager processes (colo_manager.ManagerProc) a test started:
    stopped afterwards."""
    procs = []
    yield procs
    for m in procs:
        m.close()


@pytest.fixture
def managed_hosts(bed, workdir, etcd):
    """host-a and host-b of a pair that colo-manager runs (one
    `colo-manager run` each, not started yet), each a network namespace
    of its own (hostbed.HostNs), with a 64 MiB disk image each
    (colo_manager.managed_disks()).  Managers stopped and namespaces,
    with what runs inside, removed afterwards."""
    from colo_manager import ManagedHost, managed_disks
    from hostbed import HostNs
    disks = managed_disks(workdir)
    nets = []
    pair = []
    try:
        for n, (name, peer) in enumerate((("host-a", "host-b"),
                                          ("host-b", "host-a")), 1):
            nets.append(HostNs(bed, n))
            _live_beds.append(nets[-1])     # removed on a signal too
            pair.append(ManagedHost(bed, workdir, etcd.url, name, peer,
                                    "tap-%s" % name[-1], disks[n - 1],
                                    host=nets[-1]))
        yield pair
    finally:
        for h in pair:
            h.manager.close()
        for net in nets:
            net.close()         # what runs inside goes with it
            _live_beds.remove(net)
