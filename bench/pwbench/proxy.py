"""The timestamping proxy (a separate process: `bench.py proxy LISTEN UPSTREAM LOG`) and
the reader of its log.

LOG has a line per request (`T CONNECTION METHOD PATH`) and per response (`T CONNECTION RESP
STATUS`, when its status line arrives from upstream; interim `100 Continue` answers are not
responses). Beside it, LOG.ua names each connection's client: `CONNECTION USER-AGENT`, once per
connection, from its first request (the aws CLI sends `aws-cli/…`, the daemon `aws-sdk-rust/…`);
written after the request is passed on, so it costs the timed path nothing."""

import re
import select
import socket
import struct
import threading
import time

from .common import NOW


REQ_LINE = re.compile(rb"(?:^|\r\n)(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.[01]\r\n")
USER_AGENT = re.compile(rb"\r\nuser-agent:[ \t]*([^\r\n]*)", re.I)
INTERIM = re.compile(rb"HTTP/1\.[01] 1\d\d[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n")


def proxy_main(listen_port, upstream_port, log_path):
    out = open(log_path, "a", buffering=1)
    ua_out = open(log_path + ".ua", "a", buffering=1)
    lock = threading.Lock()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen_port))
    srv.listen(256)

    ids = iter(range(1, 1 << 62))

    # The kernel's receive timestamp of each chunk (SO_TIMESTAMPNS, CLOCK_REALTIME), moved to
    # CLOCK_MONOTONIC: when the bytes reached this socket, whatever Python's own scheduling
    # adds. The upstream connection is opened after the first request has been stamped, so
    # that a fresh client connection is not charged for the proxy's own connect to moto.
    so_ts = getattr(socket, "SO_TIMESTAMPNS", 35)

    def mono_of(anc):
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == so_ts and len(payload) >= 16:
                sec, nsec = struct.unpack("qq", payload[:16])
                offset = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.monotonic_ns()
                return sec * 1_000_000_000 + nsec - offset
        return NOW()

    def pump(c, cid):
        u = None
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            c.setsockopt(socket.SOL_SOCKET, so_ts, 1)
        except OSError:
            pass
        tail = b""
        waiting = 0  # requests seen whose response has not begun
        ua = None    # the connection's User-Agent, once its first request's head is seen
        try:
            while True:
                socks = [c] if u is None else [c, u]
                ready, _, _ = select.select(socks, [], [], 300)
                if not ready:
                    return
                for s in ready:
                    if s is c:
                        data, anc, _, _ = c.recvmsg(65536, 256)
                        t = mono_of(anc)
                    else:
                        data = s.recv(65536)
                        t = NOW()
                    if not data:
                        return
                    if s is c:
                        buf = tail + data
                        for m in REQ_LINE.finditer(buf):
                            if m.end() > len(tail):  # not already logged with the last chunk
                                waiting += 1
                                with lock:
                                    out.write("%d %d %s %s\n" % (t, cid, m.group(1).decode(),
                                                                 m.group(2).decode("latin-1")))
                        tail = buf[-2048:]
                        if u is None:
                            u = socket.create_connection(("127.0.0.1", upstream_port), timeout=10)
                            u.settimeout(None)
                            u.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        u.sendall(data)
                        if ua is None:
                            m = USER_AGENT.search(buf)
                            if m:
                                ua = m.group(1).decode("latin-1")
                                with lock:
                                    ua_out.write("%d %s\n" % (cid, ua))
                    else:
                        # `100 Continue` (moto sends it, twice, to the aws CLI's
                        # `Expect: 100-continue` PUTs) is not the response: skip it.
                        head = data
                        while waiting and head.startswith(b"HTTP/1.") and head[9:10] == b"1":
                            m = INTERIM.match(head)
                            if not m:
                                break
                            head = head[m.end():]
                        if waiting and head.startswith(b"HTTP/1.") and head[9:10] != b"1":
                            waiting -= 1
                            with lock:
                                out.write("%d %d RESP %s\n" % (t, cid, head[9:12].decode("latin-1")))
                        c.sendall(data)
        except OSError:
            return
        finally:
            c.close()
            if u is not None:
                u.close()

    while True:
        c, _ = srv.accept()
        threading.Thread(target=pump, args=(c, next(ids)), daemon=True).start()


class ProxyLog:
    """Reads the proxy's log incrementally: (t_ns, connection, method or RESP, path or status)."""

    def __init__(self, path):
        self.path = path
        self.off = 0
        self.partial = b""

    def new(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except FileNotFoundError:
            return []
        self.off += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        out = []
        for ln in lines:
            p = ln.decode("latin-1").split(" ", 3)
            if len(p) == 4:
                out.append((int(p[0]), int(p[1]), p[2], p[3]))
        return out
