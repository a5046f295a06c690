"""What the arbitration through etcd (#13, tests/model/colo-manager.pml)
takes from etcd, checked against Debian's etcd itself:

  expiry     the primary key lives on its holder's etcd lease: renewed, it
             stays past its TTL; left alone, it goes within its TTL and a
             little more; an expired lease cannot be renewed, and the key
             does not come back.
  take_over  the secondary's transaction takes the primary key only when
             the key is gone and the successor key names it; it puts its
             own key and removes the successor in the same step.
  alone      the primary's transaction removes the successor only while it
             holds the primary key; once the successor is removed, the
             secondary cannot take over, even after the key expired.
  down       an etcd that is down keeps its leases running no shorter: a
             key whose lease would have expired during the downtime is
             still there after the restart.
"""

import time

PRIMARY = "colo/vm0/primary"
SUCCESSOR = "colo/vm0/successor"
TTL = 2                 # seconds; etcd's smallest allowed here is 2
EXPIRY_SLACK = 3        # etcd checks for expired leases every 500 ms


def wait_gone(etcd, key, timeout):
    """Wait (bounded) until KEY is gone; the seconds it took."""
    t0 = time.monotonic()
    while etcd.get(key) is not None:
        assert time.monotonic() - t0 < timeout, "%s still there" % key
        time.sleep(0.1)
    return time.monotonic() - t0


def take_over(etcd, host, lease):
    """The secondary's transaction (colo-manager.pml: TXN_TAKE)."""
    return etcd.txn([etcd.absent(PRIMARY), etcd.equals(SUCCESSOR, host)],
                    [etcd.op_put(PRIMARY, host, lease),
                     etcd.op_delete(SUCCESSOR)])


def alone(etcd, host):
    """The primary's transaction once its QEMU is alone (TXN_ALONE)."""
    return etcd.txn([etcd.equals(PRIMARY, host)],
                    [etcd.op_delete(SUCCESSOR)])


def test_expiry(etcd):
    lease = etcd.grant(TTL)
    etcd.put(PRIMARY, "host-a", lease)
    # Renewed every half second for twice its TTL: still there.
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2 * TTL:
        assert etcd.keepalive(lease) == TTL
        time.sleep(0.5)
    assert etcd.get(PRIMARY) == ("host-a", lease)
    # Left alone: gone within TTL and the expiry check's slack.
    took = wait_gone(etcd, PRIMARY, TTL + EXPIRY_SLACK)
    assert took > TTL / 2, took
    # An expired lease stays expired: a late keep-alive does not revive it.
    assert etcd.keepalive(lease) == 0
    assert etcd.get(PRIMARY) is None


def test_take_over(etcd):
    lease_a = etcd.grant(TTL)
    etcd.put(PRIMARY, "host-a", lease_a)
    etcd.put(SUCCESSOR, "host-b")
    lease_b = etcd.grant(30)
    # The key is held: no take-over, nothing changed.
    assert not take_over(etcd, "host-b", lease_b)
    assert etcd.get(PRIMARY) == ("host-a", lease_a)
    wait_gone(etcd, PRIMARY, TTL + EXPIRY_SLACK)
    # Another host than the successor: refused.
    assert not take_over(etcd, "host-c", lease_b)
    assert etcd.get(PRIMARY) is None
    # The successor: takes the key under its own lease, the successor key
    # goes with it.
    assert take_over(etcd, "host-b", lease_b)
    assert etcd.get(PRIMARY) == ("host-b", lease_b)
    assert etcd.get(SUCCESSOR) is None
    # The old primary: its lease is gone, and it holds the key no more.
    assert etcd.keepalive(lease_a) == 0
    assert not alone(etcd, "host-a")


def test_alone(etcd):
    lease_a = etcd.grant(TTL)
    etcd.put(PRIMARY, "host-a", lease_a)
    etcd.put(SUCCESSOR, "host-b")
    # Another host than the holder: refused, the successor stays.
    assert not alone(etcd, "host-b")
    assert etcd.get(SUCCESSOR) == ("host-b", "0")
    # The holder: the successor goes.
    assert alone(etcd, "host-a")
    assert etcd.get(SUCCESSOR) is None
    # The key expires: the secondary cannot take over (the sole rule).
    wait_gone(etcd, PRIMARY, TTL + EXPIRY_SLACK)
    assert not take_over(etcd, "host-b", etcd.grant(30))
    assert etcd.get(PRIMARY) is None


def test_down(etcd):
    lease = etcd.grant(TTL)
    etcd.put(PRIMARY, "host-a", lease)
    assert etcd.keepalive(lease) == TTL
    etcd.stop()
    time.sleep(TTL + 1)     # the downtime itself: longer than the TTL
    etcd.start()
    # Not expired by the downtime: etcd restores leases at full TTL.
    assert etcd.get(PRIMARY) == ("host-a", lease)
    assert etcd.keepalive(lease) == TTL
    wait_gone(etcd, PRIMARY, TTL + EXPIRY_SLACK)
