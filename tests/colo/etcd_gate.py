"""A TCP forwarder between one colo-manager and etcd that can be cut as a
link is: while cut, nothing moves either way (what was sent waits, as in
a dropped link's retransmissions, and arrives after the heal unless its
sender gave up), and new connections get no answer.

    gate = EtcdGate(etcd.client_port)       # listens on the test's loopback
    gate = EtcdGate(etcd.client_port, ns)   # on namespace NS's loopback:
                                            # a host's link to etcd
    ManagerProc(..., gate.url)
    gate.cut(); gate.heal(); gate.close()
"""

import select
import socket
import threading

from hostbed import socket_in_ns


class EtcdGate:
    def __init__(self, target_port, ns=None):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket_in_ns(ns) if ns else socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        self.passing = threading.Event()
        self.passing.set()
        self.closed = False
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self):
        self.passing.clear()

    def heal(self):
        self.passing.set()

    def close(self):
        self.closed = True
        self.passing.set()
        for s in [self.listener] + self.socks:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.socks.append(client)
            threading.Thread(target=self._pump, args=(client,),
                             daemon=True).start()

    def _pump(self, client):
        upstream = None
        try:
            # A connection made while cut waits, unanswered.
            while not self.passing.wait(0.1):
                if self.closed:
                    return
            upstream = socket.create_connection(self.target, timeout=5)
            self.socks.append(upstream)
            peer = {client: upstream, upstream: client}
            while not self.closed:
                if not self.passing.wait(0.1):
                    continue
                ready, _, _ = select.select([client, upstream], [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peer[s].sendall(data)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass
