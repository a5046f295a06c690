#!/usr/bin/python3
"""A stand-in for the test guest's counter service, for the bed's self-test.

Same protocol as the guest (inc / get / disk / stats, one reply line per
request line, many requests per connection).  Run it inside a NetBed:

    fake_guest.py --host 10.77.0.10 --port 7777 [--ready-file F]

--ready-file is created once the socket listens.
"""

import argparse
import socketserver
import threading

_lock = threading.Lock()
_state = {"counter": 0, "requests": 0}


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for raw in self.rfile:
            cmd = raw.decode(errors="replace").strip()
            with _lock:
                _state["requests"] += 1
                if cmd == "inc":
                    _state["counter"] += 1
                    reply = str(_state["counter"])
                elif cmd == "get":
                    reply = str(_state["counter"])
                elif cmd == "disk":
                    reply = "0"
                elif cmd == "stats":
                    reply = "counter=%d requests=%d fake=1" % (
                        _state["counter"], _state["requests"])
                else:
                    reply = "error unknown-command"
            self.wfile.write(reply.encode() + b"\n")
            self.wfile.flush()


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="10.77.0.10")
    ap.add_argument("--port", type=int, default=7777)
    ap.add_argument("--ready-file")
    a = ap.parse_args()
    srv = Server((a.host, a.port), Handler)
    if a.ready_file:
        open(a.ready_file, "w").close()
    srv.serve_forever()


if __name__ == "__main__":
    main()
