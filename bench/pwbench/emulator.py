"""The S3 + CloudFront emulator (moto_server) behind the timestamping proxy, and stopping
the processes the bench starts."""

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from .common import COUNT_BUCKET, FAKE_AUTH, HERE, ORIGIN_BUCKET


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http(method, url, data=None, timeout=10):
    h = {"Authorization": FAKE_AUTH, "Content-Type": "application/octet-stream"}
    r = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Emulator:
    def __init__(self, venv, work, s3_list_ms=None):
        """`s3_list_ms`: run moto through tests/moto_atomic.py and have the origin bucket answer
        ListObjectsV2 as S3 does (a page from an index, in this many ms) instead of moto's
        sort of the whole bucket per page."""
        self.venv = venv
        self.work = work
        self.s3_list_ms = s3_list_ms
        self.moto_port = free_port()
        self.proxy_port = free_port()
        self.procs = []
        self.proxy_log = os.path.join(work, "proxy.log")
        self.dist = None

    @property
    def moto(self):
        return "http://127.0.0.1:%d" % self.moto_port

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.proxy_port

    def start(self):
        out = open(os.path.join(self.work, "moto.log"), "w")
        if self.s3_list_ms is None:
            server = [os.path.join(self.venv, "bin", "moto_server")]
        else:
            server = [os.path.join(self.venv, "bin", "python"),
                      os.path.join(HERE, "..", "tests", "moto_atomic.py")]
        self.procs.append(subprocess.Popen(
            server + ["-H", "127.0.0.1", "-p", str(self.moto_port)], stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True))
        self.procs.append(subprocess.Popen(
            [sys.executable, os.path.join(HERE, "bench.py"), "proxy", str(self.proxy_port),
             str(self.moto_port), self.proxy_log], start_new_session=True))
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.moto + "/moto-api/", timeout=1).read()
                s = socket.create_connection(("127.0.0.1", self.proxy_port), timeout=1)
                s.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server or the proxy did not come up in 60 s")
                for p in self.procs:
                    if p.poll() is not None:
                        raise RuntimeError("moto_server or the proxy died; see %s" % self.work)
                time.sleep(0.1)
        for b in (ORIGIN_BUCKET, COUNT_BUCKET):
            st, body = http("PUT", "%s/%s" % (self.moto, b))
            if st != 200:
                raise RuntimeError("cannot create bucket %s: %s %s" % (b, st, body[:200]))
        if self.s3_list_ms is not None:
            import json
            opts = {"bucket": ORIGIN_BUCKET, "list_ms": self.s3_list_ms, "s3_list": True,
                    "checksums": False}
            req = urllib.request.Request(self.moto + "/_strict", data=json.dumps(opts).encode(),
                                         method="POST")
            urllib.request.urlopen(req, timeout=10).read()
        env = aws_env()
        r = subprocess.run([os.path.join(self.venv, "bin", "aws"), "--endpoint-url", self.moto,
                            "cloudfront", "create-distribution", "--origin-domain-name",
                            ORIGIN_BUCKET + ".s3.amazonaws.com", "--query", "Distribution.Id",
                            "--output", "text"], env=env, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError("create-distribution failed: " + r.stderr)
        self.dist = r.stdout.strip()

    def put_marker(self, rel, content):
        st, body = http("PUT", "%s/%s/%s" % (self.moto, ORIGIN_BUCKET, rel), content)
        if st != 200:
            raise RuntimeError("cannot upload %s: %s %s" % (rel, st, body[:200]))

    def uploader(self):
        """Uploads markers on a thread of its own, after their local write, as lsyncd would:
        a marker's object must be newer than its write (issue 12), so it cannot go up first."""
        q = queue.Queue()

        def run():
            while True:
                item = q.get()
                if item is None:
                    return
                self.put_marker(*item)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return q, t

    def stop(self):
        for p in self.procs:
            stop_proc(p)


def aws_env(extra=None):
    env = dict(os.environ)
    env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "RUST_LOG"):
        env.pop(k, None)
    if extra:
        env.update(extra)
    return env


def stop_proc(p, grace=5.0):
    """SIGTERM this process (and its own session, when it has one), then SIGKILL."""
    if p is None or p.poll() is not None:
        return
    try:
        if os.getpgid(p.pid) == p.pid:
            os.killpg(p.pid, signal.SIGTERM)
        else:
            p.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            if os.getpgid(p.pid) == p.pid:
                os.killpg(p.pid, signal.SIGKILL)
            else:
                p.kill()
        except ProcessLookupError:
            pass
        p.wait(timeout=5)
