#!/usr/bin/env python3
"""Side-by-side benchmark of purgewatch, `inotifywait -m -r` and lsyncd (issue 6).

Run it through `bench/run` (which installs the peers, the emulator venv and builds the daemon).
Python 3 standard library only; the chart is an SVG written by hand.

What it does, in order (every loop is bounded in count and in time; everything on 127.0.0.1):

1. Mounts a tmpfs (root) or uses a disk folder; builds tree S, tree B, an empty tree and the
   folder tree that `cp -r` copies in the burst.
2. Starts moto_server (S3 + CloudFront emulator) and, in front of it, a timestamping TCP proxy
   (this file, `proxy` sub-command) that logs CLOCK_MONOTONIC arrival of every request line.
3. For each run, each tree, each watcher (order rotated per run): start → ready (setup time, RSS),
   paced storm (100k rewrites at 5,000/s, a `.purge` after every 20k), burst (`cp -r`), markers
   seen, stop. CPU is utime+stime from /proc/PID/stat from the storm's start until the watcher
   has been quiet (no CPU tick) for 1.5 s — backlog included.
4. Latency: markers already in S3 (uploaded just before, within the same second), written one
   at a time, purgewatch with settle 0: close → HeadObject and close → CreateInvalidation as
   the proxy saw them; the same for the shell peer (`inotifywait | while read; aws s3api
   head-object; aws cloudfront create-invalidation`).
5. Idle: all watchers at once on tree S; voluntary context switches summed over every thread.
6. Table of medians and ratios (stdout, bench/results/latest.md), JSON, SVG chart.

`--scenario changes` (issue 13) runs instead the whole-change wait at deploy scale: per case
(5,000 files; 200,000 with --changes-large) a fresh emulator and a bucket holding the tree, then
per plan (`[origin] changes_check` = sweep, folders, head) a fresh daemon with
`wait_for = "changes"`, every file rewritten locally, the marker written, every file uploaded
with 16 parallel PUTs in random order straight to moto, the marker last. From the proxy's log:
the daemon's S3 calls per pass and in all, against the fewest 1,000-key pages that cover the
changed keys; last upload → CreateInvalidation; from /proc and the database: peak RSS (VmHWM),
the database's size. bench/results/changes.{json,md} and changes-chart.svg.
"""

import argparse
import concurrent.futures
import datetime
import hashlib
from http import client as http_client  # (`http` is this file's helper below)
import json
import os
import queue
import platform
import random
import re
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

NOW = time.monotonic_ns  # CLOCK_MONOTONIC: the same clock in every process of the machine
CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
KINDS = ("purgewatch", "inotifywait", "lsyncd")
# Run only when named in --kinds: notify 8's recommended watcher and notify 9's narrowed to
# purgewatch's events (bench/notify-probe), the crate issue 6 asks to be measured against the
# inotify backend purgewatch uses directly.
NOTIFY_KINDS = ("notify", "notify9")
ALL_KINDS = KINDS + NOTIFY_KINDS
SHORT = {"purgewatch": "pw", "inotifywait": "iw", "lsyncd": "ls", "notify": "nt", "notify9": "n9"}
ORIGIN_BUCKET = "bench-origin"
COUNT_BUCKET = "bench-count"
FAKE_AUTH = ("AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/s3/aws4_request, "
             "SignedHeaders=host, Signature=0")
PAYLOAD = b"<!doctype html><title>bench</title><p>" + b"x" * 60 + b"</p>\n"


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# ---------------------------------------------------------------------------------------------
# The timestamping proxy (a separate process: `bench.py proxy LISTEN UPSTREAM LOG`)
# ---------------------------------------------------------------------------------------------

REQ_LINE = re.compile(rb"(?:^|\r\n)(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.[01]\r\n")


def proxy_main(listen_port, upstream_port, log_path):
    out = open(log_path, "a", buffering=1)
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
                    else:
                        if waiting and data.startswith(b"HTTP/1."):
                            waiting -= 1
                            with lock:
                                out.write("%d %d RESP %s\n" % (t, cid, data[9:12].decode("latin-1")))
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


# ---------------------------------------------------------------------------------------------
# /proc
# ---------------------------------------------------------------------------------------------

def cpu_ticks(pid):
    """(utime+stime, cutime+cstime) in clock ticks, all threads of the process."""
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    # after the comm: state(3) ppid ... utime is field 14 overall → index 11 here
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def cpu_ns(pid):
    """CPU time of the whole process (every thread, dead ones included), in ns: the process's
    CPUCLOCK_SCHED clock, as clock_getcpuclockid(3) would return it."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2)
    except OSError:
        return cpu_ticks(pid)[0] * (1_000_000_000 // CLK_TCK)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_parts(pid):
    """VmRSS split: anonymous (heap, stacks) and file-backed (the executable's text, libraries;
    RssShmem counted with it, as a binary on tmpfs maps its text that way)."""
    d = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                d[k] = int(v.split()[0])
    return {"anon_kb": d.get("RssAnon", 0), "file_kb": d.get("RssFile", 0) + d.get("RssShmem", 0)}


def ctx_switches(pid):
    """{tid: (voluntary, nonvoluntary)} over every live thread."""
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except FileNotFoundError:
        return out
    for tid in tids:
        v = n = 0
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        v = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        n = int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[tid] = (v, n)
    return out


def thread_stats(pid):
    """{tid: (name, cpu_ns, voluntary switches)} over every live thread."""
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except FileNotFoundError:
        return out
    for tid in tids:
        base = "/proc/%d/task/%s/" % (pid, tid)
        try:
            with open(base + "comm") as f:
                name = f.read().strip()
            with open(base + "schedstat") as f:
                cpu = int(f.read().split()[0])
            vol = 0
            with open(base + "status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol = int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        out[tid] = (name, cpu, vol)
    return out


def thread_delta(before, after):
    """(CPU s and wakeups of the watch thread, wakeups of all threads) between two snapshots."""
    watch_cpu = watch_vol = 0
    vol = 0
    for tid, (name, cpu, v) in after.items():
        b = before.get(tid, (name, 0, 0))
        vol += v - b[2]
        if name.startswith("purgewatch-watc"):
            watch_cpu += cpu - b[1]
            watch_vol += v - b[2]
    return watch_cpu / 1e9, watch_vol, vol


def mb(kb):
    """VmRSS (KiB) in MB of 10^6 bytes: the stricter reading of the targets."""
    return kb * 1024 / 1e6


# ---------------------------------------------------------------------------------------------
# Trees
# ---------------------------------------------------------------------------------------------

class Tree:
    """fanouts per level below the root; files only in the leaves."""

    def __init__(self, name, base, fanouts, files_per_leaf):
        self.name = name
        self.root = os.path.join(base, name, "root")
        self.fanouts = fanouts
        self.files_per_leaf = files_per_leaf
        self.leaves = []
        self.folders = 1
        n = 1
        for f in fanouts:
            n *= f
            self.folders += n
        self.files = n * files_per_leaf if fanouts else 0

    def build(self):
        if os.path.exists(os.path.dirname(self.root)):
            shutil.rmtree(os.path.dirname(self.root))
        os.makedirs(self.root)
        t = time.monotonic()
        prefix = [""]
        for f in self.fanouts:
            names = [("d%0" + str(len(str(f - 1))) + "d") % i for i in range(f)]
            nxt = []
            for p in prefix:
                for n in names:
                    r = (p + "/" + n) if p else n
                    os.mkdir(os.path.join(self.root, r))
                    nxt.append(r)
            prefix = nxt
        self.leaves = prefix if self.fanouts else []
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        for leaf in self.leaves:
            d = os.path.join(self.root, leaf)
            for j in range(self.files_per_leaf):
                fd = os.open("%s/f%d.html" % (d, j), flags, 0o644)
                os.write(fd, PAYLOAD)
                os.close(fd)
        return time.monotonic() - t

    def storm_files(self, count):
        """`count` existing files to rewrite, folder by folder (as a deploy writes them)."""
        if not self.leaves:
            return []
        per = min(self.files_per_leaf, -(-count // len(self.leaves)))
        out = []
        for leaf in self.leaves:
            for j in range(per):
                out.append("%s/%s/f%d.html" % (self.root, leaf, j))
                if len(out) == count:
                    return out
        return out

    def pick_leaves(self, n, seed):
        rnd = random.Random(seed)
        return rnd.sample(self.leaves, min(n, len(self.leaves)))

    def describe(self):
        return {"folders": self.folders, "files": self.files, "fanouts": self.fanouts,
                "files_per_leaf": self.files_per_leaf}


# ---------------------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------------------

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
    def __init__(self, venv, work):
        self.venv = venv
        self.work = work
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
        self.procs.append(subprocess.Popen(
            [os.path.join(self.venv, "bin", "moto_server"), "-H", "127.0.0.1", "-p",
             str(self.moto_port)], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True))
        self.procs.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "proxy", str(self.proxy_port),
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


# ---------------------------------------------------------------------------------------------
# Watchers
# ---------------------------------------------------------------------------------------------

class Reader(threading.Thread):
    """Drains a pipe line by line, with arrival times; fires `ready` on the first `pattern`."""

    def __init__(self, pipe, pattern):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.pattern = pattern
        self.lines = []
        self.ready = threading.Event()
        self.ready_t = None

    def run(self):
        for raw in iter(self.pipe.readline, b""):
            t = NOW()
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append((t, line))
            if self.pattern and self.ready_t is None and self.pattern in line:
                self.ready_t = t
                self.ready.set()


class Watcher:
    """One running watcher: kind, pid, ready time; knows how to say which markers it saw."""

    def __init__(self, kind, tag, root, work):
        self.kind = kind
        self.tag = tag
        self.root = root
        self.work = work
        self.proc = None
        self.reader = None
        self.t_spawn = None
        self.t_ready = None
        self.notify = None
        self.db = None
        self.out = None

    @property
    def pid(self):
        return self.proc.pid

    def setup_s(self):
        return (self.t_ready - self.t_spawn) / 1e9

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        stop_proc(self.proc)
        if self.reader:
            self.reader.join(timeout=5)
        if self.notify:
            self.notify.close()

    def stderr_tail(self, n=20):
        if not self.reader:
            return ""
        return "\n".join(l for _, l in self.reader.lines[-n:])


def start_purgewatch(ctx, tag, root, watchdog=False, origin_extra="", wait_timeout="2m"):
    """`origin_extra`: more lines for [origin] (the changes scenario's wait_for, changes_check)."""
    w = Watcher("purgewatch", tag, root, ctx.work)
    state = os.path.join(ctx.state_dir, tag)
    shutil.rmtree(state, ignore_errors=True)
    os.makedirs(state)
    w.db = os.path.join(state, "purgewatch.db")
    cfg = os.path.join(state, "config.toml")
    with open(cfg, "w") as f:
        f.write("""[watch]
root = "%s"
settle = "0s"

[origin]
bucket = "%s"
wait_timeout = "%s"
%s
[quota]
max = 1000000
count_bucket = "%s"

[cloudfront]
distribution_id = "%s"

[state]
database = "%s"

[aws]
region = "us-east-1"
endpoint_url = "%s"
""" % (root, ORIGIN_BUCKET, wait_timeout, origin_extra, COUNT_BUCKET, ctx.emu.dist, w.db,
       ctx.emu.endpoint))
    sock_path = os.path.join(ctx.work, "notify-%s.sock" % tag)
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    w.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    w.notify.bind(sock_path)
    extra = {"NOTIFY_SOCKET": sock_path}
    if watchdog:
        extra["WATCHDOG_USEC"] = "60000000"  # the unit's WatchdogSec=60
    env = aws_env(extra)
    w.t_spawn = NOW()
    w.proc = subprocess.Popen([ctx.pw, "--config", cfg, "run"], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    w.reader = Reader(w.proc.stderr, None)
    w.reader.start()
    deadline = time.monotonic() + ctx.ready_timeout
    w.notify.settimeout(0.2)
    while True:
        try:
            msg = w.notify.recv(4096)
        except socket.timeout:
            msg = b""
        if b"READY=1" in msg:
            w.t_ready = NOW()
            break
        if not w.alive() or time.monotonic() > deadline:
            w.stop()
            raise RuntimeError("purgewatch did not send READY=1:\n" + w.stderr_tail())
    return w


def start_line_watcher(ctx, kind, tag, root, argv):
    """A watcher that prints inotifywait's `%e %w%f` lines (to a file) and says
    "Watches established." on stderr once every watch is set."""
    w = Watcher(kind, tag, root, ctx.work)
    w.out = os.path.join(ctx.work, "%s-%s.out" % (SHORT[kind], tag))
    out = open(w.out, "wb")
    w.t_spawn = NOW()
    w.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
    out.close()
    w.reader = Reader(w.proc.stderr, "Watches established.")
    w.reader.start()
    if not w.reader.ready.wait(ctx.ready_timeout):
        w.stop()
        raise RuntimeError("%s never said 'Watches established.':\n%s" % (kind, w.stderr_tail()))
    w.t_ready = w.reader.ready_t
    return w


def start_notify(ctx, tag, root):
    return start_line_watcher(ctx, "notify", tag, root, [ctx.notify_probe, root])


def start_notify9(ctx, tag, root):
    return start_line_watcher(ctx, "notify9", tag, root, [ctx.notify_probe, "--v9", root])


def start_inotifywait(ctx, tag, root):
    args = ["inotifywait", "-m", "-r"]
    if ctx.iw_events != "all":
        for e in ctx.iw_events.split(","):
            args += ["-e", e]
    return start_line_watcher(ctx, "inotifywait", tag, root, args + ["--format", "%e %w%f", root])


LSYNCD_CONF = """-- written by bench/bench.py: lsyncd with delay 1 and a cheap action (one /bin/true per
-- batch, as default.rsync runs one rsync per batch); markers are logged by the action.
settings { nodaemon = true, insist = true }
bench = {
  delay = 1,
  maxProcesses = 1,
  -- init runs on lsyncd's first cycle, after Inotify.addSync has watched every folder
  init = function(event) log('Normal', 'BENCH-READY'); spawn(event, '/bin/true') end,
  action = function(inlet)
    local elist = inlet.getEvents()
    local n = 0
    for _, p in ipairs(elist.getPaths()) do
      n = n + 1
      if string.sub(p, -7) == '/.purge' then log('Normal', 'BENCH-MARKER ' .. p) end
    end
    log('Normal', 'BENCH-BATCH ' .. n)
    spawn(elist, '/bin/true')
  end,
}
sync { bench, source = "%s" }
"""


def start_lsyncd(ctx, tag, root):
    w = Watcher("lsyncd", tag, root, ctx.work)
    cfg = os.path.join(ctx.work, "ls-%s.lua" % tag)
    with open(cfg, "w") as f:
        f.write(LSYNCD_CONF % root)
    w.t_spawn = NOW()
    w.proc = subprocess.Popen(["lsyncd", cfg], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    w.reader = Reader(w.proc.stdout, "BENCH-READY")
    w.reader.start()
    if not w.reader.ready.wait(ctx.ready_timeout):
        w.stop()
        raise RuntimeError("lsyncd never ran its init:\n" + w.stderr_tail())
    w.t_ready = w.reader.ready_t
    return w


def start(ctx, kind, tag, root):
    return {"purgewatch": start_purgewatch, "inotifywait": start_inotifywait,
            "lsyncd": start_lsyncd, "notify": start_notify,
            "notify9": start_notify9}[kind](ctx, tag, root)


def markers_seen(w, root):
    """Relative paths of the markers the watcher reported, and what else it says."""
    info = {}
    seen = set()
    if w.kind == "purgewatch":
        # One request per marker path (coalescing only merges writes of the same path while
        # its request is open): each storm/burst marker is in a folder of its own, so a
        # detected marker is a row in `requests` with that path.
        rows = []
        for _ in range(50):
            try:
                c = sqlite3.connect("file:%s?mode=ro" % w.db, uri=True, timeout=5)
                rows = c.execute("SELECT marker, origin, status FROM requests").fetchall()
                c.close()
                break
            except sqlite3.Error:
                time.sleep(0.1)
        seen = {r[0] for r in rows if r[0]}
        info["requests"] = len(rows)
        info["duplicate_requests"] = len(rows) - len(seen)
        st = {}
        for r in rows:
            st[r[2]] = st.get(r[2], 0) + 1
        info["statuses"] = st
        info["by_scan"] = sum(1 for r in rows if r[1] == "scan")
        lines = w.reader.lines
        ov = [t for t, l in lines if "queue overflow" in l]
        info["overflow_at_start"] = sum(1 for t in ov if t <= w.t_ready)
        info["overflow_total"] = len(ov)
        info["warnings"] = sum(1 for _, l in lines if " WARN " in l or " ERROR " in l)
    elif w.kind in ("inotifywait",) + NOTIFY_KINDS:
        ov = 0
        created = set()
        with open(w.out, "rb") as f:
            for raw in f:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                ev, _, path = line.partition(" ")
                if "OVERFLOW" in ev:
                    ov += 1
                if path.endswith("/.purge") and ("CLOSE_WRITE" in ev or "MOVED_TO" in ev):
                    seen.add(os.path.relpath(path, root))
                elif path.endswith("/.purge") and ev.startswith("CREATE"):
                    created.add(os.path.relpath(path, root))
        # Reported as created but never as written: not counted as seen, since a creation
        # alone may precede the marker's bytes.
        info["created_only"] = sorted(created - seen)
        info["overflow_total"] = ov
        info["overflow_at_start"] = 0
    else:
        lines = w.reader.lines
        for _, l in lines:
            i = l.find("BENCH-MARKER ")
            if i >= 0:
                seen.add(l[i + len("BENCH-MARKER "):].lstrip("/"))
        info["overflow_total"] = sum(1 for _, l in lines if "OVERFLOW" in l)
        info["overflow_at_start"] = 0
        info["resets"] = max(0, sum(1 for _, l in lines if "BENCH-READY" in l) - 1)
        info["events_seen"] = sum(int(l.rsplit(" ", 1)[1]) for _, l in lines
                                  if "BENCH-BATCH " in l)
    return seen, info


# ---------------------------------------------------------------------------------------------
# Storm, burst, quiet
# ---------------------------------------------------------------------------------------------

class Sampler:
    """RSS of one process every 100 ms, whoever calls tick()."""

    def __init__(self, pid):
        self.pid = pid
        self.max_kb = 0
        self.next = 0.0

    def tick(self):
        t = time.monotonic()
        if t >= self.next:
            self.next = t + 0.1
            try:
                self.max_kb = max(self.max_kb, rss_kb(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                pass


def wait_quiet(w, sampler, quiet=1.5, limit=30.0, eps_ns=2_000_000):
    """Until the watcher used less than 2 ms of CPU in the last `quiet` seconds (bounded)."""
    t0 = time.monotonic()
    hist = [(t0, cpu_ns(w.pid))]
    while True:
        time.sleep(0.05)
        sampler.tick()
        if not w.alive():
            return False
        now = time.monotonic()
        hist.append((now, cpu_ns(w.pid)))
        while len(hist) > 2 and now - hist[1][0] >= quiet:
            hist.pop(0)
        if now - hist[0][0] >= quiet and hist[-1][1] - hist[0][1] < eps_ns:
            return True
        if now - t0 >= limit:
            return False


def write_marker(path, content, rename):
    if rename:  # as rsync does: a temporary name, then renamed into place (IN_MOVED_TO)
        tmp = os.path.join(os.path.dirname(path), ".purge.bench-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, content)
        os.close(fd)
        os.rename(tmp, path)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, content)
        os.close(fd)


def paced_storm(files, markers, rate, sampler, limit, written=None):
    """Rewrites `files` at `rate` per second; markers[k] = (path, content, rename) is written
    after the k-th rewrite, then handed to `written` (the uploader). Returns (seconds, achieved
    rate)."""
    n = len(files)
    step = max(1, rate // 200)  # a batch every 5 ms
    period = step / rate
    flags = os.O_WRONLY | os.O_TRUNC
    t0 = time.monotonic()
    due = t0
    i = 0
    while i < n:
        end = min(n, i + step)
        for j in range(i, end):
            fd = os.open(files[j], flags)
            os.write(fd, PAYLOAD)
            os.close(fd)
            m = markers.get(j + 1)
            if m:
                write_marker(*m)
                if written:
                    written(m[0], m[1])
        i = end
        sampler.tick()
        due += period
        d = due - time.monotonic()
        if d > 0:
            time.sleep(d)
        elif time.monotonic() - t0 > limit:
            raise RuntimeError("storm writer fell behind beyond %.0f s" % limit)
    dt = time.monotonic() - t0
    return dt, n / dt if dt > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# One watcher run
# ---------------------------------------------------------------------------------------------

def watcher_run(ctx, kind, tree, run):
    tag = "%s-%s-r%d" % (tree.name, SHORT[kind], run)
    seed = int(hashlib.md5(tag.encode()).hexdigest()[:8], 16)
    res = {"tree": tree.name, "kind": kind, "run": run, "load_before": loadavg()}
    # The markers: one per folder; storm ones alternate plain write / rename into place.
    leaves = tree.pick_leaves(ctx.storm_markers, seed)
    storm_markers = {}
    expected = {}
    for m, leaf in enumerate(leaves, 1):
        rel = leaf + "/.purge"
        content = ("bench %s storm %d\n" % (tag, m)).encode()
        storm_markers[m * ctx.marker_every] = (os.path.join(tree.root, rel), content, m % 2 == 0)
        expected[rel] = "storm"
    burst_dst = "burst-" + tag
    for rel in ctx.burst_markers:
        expected[burst_dst + "/" + rel] = "burst"
    # purgewatch's markers are uploaded right after their write (the uploader thread), so each
    # request runs the whole pipeline to a completed invalidation; its CPU is in the storm's.
    uploads, uploader, written = None, None, None
    if kind == "purgewatch":
        uploads, uploader = ctx.emu.uploader()
        written = lambda path, content: uploads.put((os.path.relpath(path, tree.root), content))
    w = start(ctx, kind, tag, tree.root)
    try:
        res["setup_s"] = w.setup_s()
        res["rss_ready_kb"] = rss_kb(w.pid)
        parts = rss_parts(w.pid)
        res["rss_ready_anon_kb"], res["rss_ready_file_kb"] = parts["anon_kb"], parts["file_kb"]
        time.sleep(0.5)  # lsyncd's init spawn, purgewatch's last start-up writes
        sampler = Sampler(w.pid)
        sampler.tick()
        # paced storm
        c0, k0 = cpu_ns(w.pid), cpu_ticks(w.pid)[1]
        th0 = thread_stats(w.pid)
        dt, rate = paced_storm(ctx.storm_files[tree.name], storm_markers, ctx.storm_rate,
                               sampler, limit=ctx.storm_writes / ctx.storm_rate * 3 + 30,
                               written=written)
        quiet = wait_quiet(w, sampler, limit=ctx.quiet_limit)
        if not w.alive():
            raise RuntimeError("%s died in the storm:\n%s" % (kind, w.stderr_tail()))
        c1, k1 = cpu_ns(w.pid), cpu_ticks(w.pid)[1]
        wcpu, wvol, vol = thread_delta(th0, thread_stats(w.pid))
        res["storm_wakeups"] = vol
        if kind == "purgewatch":
            res["storm_watch_thread_cpu_s"] = wcpu
            res["storm_watch_thread_wakeups"] = wvol
        res["storm_s"] = dt
        res["storm_rate"] = rate
        res["storm_cpu_s"] = (c1 - c0) / 1e9
        res["storm_child_cpu_s"] = (k1 - k0) / CLK_TCK
        res["storm_quiet"] = quiet
        res["rss_storm_max_kb"] = sampler.max_kb
        res["rss_after_storm_kb"] = rss_kb(w.pid)
        parts = rss_parts(w.pid)
        res["rss_after_storm_anon_kb"] = parts["anon_kb"]
        res["rss_after_storm_file_kb"] = parts["file_kb"]
        res["rss_growth"] = (max(sampler.max_kb, res["rss_after_storm_kb"]) -
                             res["rss_ready_kb"]) / res["rss_ready_kb"]
        # burst: cp -r of a folder tree
        c0, k0 = cpu_ns(w.pid), cpu_ticks(w.pid)[1]
        t = time.monotonic()
        subprocess.run(["cp", "-r", ctx.burst_src, os.path.join(tree.root, burst_dst)],
                       check=True, timeout=120)
        res["burst_cp_s"] = time.monotonic() - t
        if uploads:
            for rel in ctx.burst_markers:
                uploads.put((burst_dst + "/" + rel, ctx.burst_marker_content))
        res["burst_quiet"] = wait_quiet(w, sampler, limit=ctx.quiet_limit)
        c1, k1 = cpu_ns(w.pid), cpu_ticks(w.pid)[1]
        res["burst_cpu_s"] = (c1 - c0) / 1e9
        res["burst_child_cpu_s"] = (k1 - k0) / CLK_TCK
        res["alive"] = w.alive()
        seen, info = markers_seen(w, tree.root)
        res.update(info)
        missed = sorted(r for r in expected if r not in seen)
        res["markers_expected"] = len(expected)
        res["missed_storm"] = sum(1 for r in missed if expected[r] == "storm")
        res["missed_burst"] = sum(1 for r in missed if expected[r] == "burst")
        res["missed"] = missed
    finally:
        if uploads:
            uploads.put(None)
            uploader.join(timeout=30)
        w.stop()
        for path, _, _ in storm_markers.values():
            for p in (path, os.path.join(os.path.dirname(path), ".purge.bench-tmp")):
                if os.path.exists(p):
                    os.unlink(p)
        shutil.rmtree(os.path.join(tree.root, burst_dst), ignore_errors=True)
    log("  %-11s %s run %d: setup %.3f s, RSS %.1f MB (storm max %.1f), storm CPU %.2f s "
        "(%.0f writes/s), burst CPU %.2f s, missed %d/%d, overflows %d" % (
            kind, tree.name, run, res["setup_s"], mb(res["rss_ready_kb"]),
            mb(res["rss_storm_max_kb"]), res["storm_cpu_s"], res["storm_rate"],
            res["burst_cpu_s"], len(res["missed"]), res["markers_expected"],
            res.get("overflow_total", 0)))
    return res


def baseline_run(ctx, kind, run):
    tag = "E-%s-r%d" % (SHORT[kind], run)
    w = start(ctx, kind, tag, ctx.empty_root)
    try:
        parts = rss_parts(w.pid)
        return {"kind": kind, "run": run, "setup_s": w.setup_s(), "rss_ready_kb": rss_kb(w.pid),
                "rss_ready_anon_kb": parts["anon_kb"], "rss_ready_file_kb": parts["file_kb"]}
    finally:
        w.stop()


# ---------------------------------------------------------------------------------------------
# Latency
# ---------------------------------------------------------------------------------------------

def wait_requests(plog, t0, key, want_head, timeout):
    """First HEAD of `key` and first POST …/invalidation after t0 (ns), as the proxy saw them,
    and the emulator's share before that POST: the sum of request → response start times."""
    head = inv = None
    pending = {}
    emu_ns = 0
    steps = []  # (method or RESP, ns after t0), up to the POST: where the time goes
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t, cid, meth, path in plog.new():
            if t < t0:
                continue
            if meth == "RESP":
                if cid in pending and inv is None:
                    emu_ns += t - pending.pop(cid)
                    steps.append(("RESP", t - t0))
                continue
            if inv is None:
                pending[cid] = t
                steps.append((meth, t - t0))
            if meth == "HEAD" and head is None and path.split("?")[0].endswith("/" + key):
                head = t
            if meth == "POST" and inv is None and path.split("?")[0].endswith("/invalidation"):
                inv = t
        if inv is not None and (head is not None or not want_head):
            return head, inv, emu_ns, steps
        # The times come from the proxy's log, not from when this loop sees them: polling at
        # 1 kHz would only take CPU from the daemon on a 2-core machine.
        time.sleep(0.005)
    return head, inv, emu_ns, steps


def proxy_calibration(ctx, n):
    """How late the proxy stamps a request: client send → logged time, over fresh connections
    (the daemon keeps its connections open, so this is an upper bound of what it adds)."""
    plog = ProxyLog(ctx.emu.proxy_log)
    plog.new()
    delays = []
    for i in range(n):
        c = socket.create_connection(("127.0.0.1", ctx.emu.proxy_port), timeout=10)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = "calibration-%d-%d" % (os.getpid(), i)
        req = ("HEAD /%s/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n"
               "Connection: close\r\n\r\n" % (ORIGIN_BUCKET, key, FAKE_AUTH)).encode()
        time.sleep(0.02)
        t0 = NOW()
        c.sendall(req)
        try:
            while c.recv(4096):
                pass
        except OSError:
            pass
        c.close()
        head = None
        deadline = time.monotonic() + 5
        while head is None and time.monotonic() < deadline:
            for t, _, meth, path in plog.new():
                if meth == "HEAD" and path.endswith("/" + key):
                    head = t
            if head is None:
                time.sleep(0.001)
        if head is not None:
            delays.append((head - t0) / 1e6)
    return delays


def request_state(db, rel):
    """The marker's request as the daemon's history has it: why a sample was lost."""
    try:
        c = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=2)
        row = c.execute("SELECT r.id, r.status, (SELECT detail FROM events e WHERE "
                        "e.request_id = r.id ORDER BY e.id DESC LIMIT 1) FROM requests r "
                        "WHERE r.marker = ? ORDER BY r.id DESC LIMIT 1", (rel,)).fetchone()
        c.close()
    except sqlite3.Error as e:
        return "%s: database unreadable (%s)" % (rel, e)
    if row is None:
        return "%s: no request" % rel
    return "%s: request %d %s: %s" % (rel, row[0], row[1], row[2])


def marker_latency(ctx, tree, samples, gap):
    """purgewatch (settle 0): marker close → HeadObject and → CreateInvalidation received."""
    w = start_purgewatch(ctx, "%s-lat" % tree.name, tree.root)
    plog = ProxyLog(ctx.emu.proxy_log)
    plog.new()
    heads, invs, emus, timelines, lost, why = [], [], [], [], 0, []
    leaves = tree.pick_leaves(samples, 4242)
    try:
        for i, leaf in enumerate(leaves):
            rel = leaf + "/.purge"
            content = ("bench latency %d %d\n" % (i, time.time_ns())).encode()
            # Uploaded `gap` before the write, so the first HeadObject finds it; both within one
            # whole second, since S3's LastModified has whole seconds and the daemon takes an
            # object last modified over 1 s before the write for an older upload (issue 12).
            frac = time.time() % 1
            if frac + gap > 0.9:
                time.sleep(1.02 - frac)
            ctx.emu.put_marker(rel, content)
            time.sleep(gap)
            path = os.path.join(tree.root, rel)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, content)
            t0 = NOW()  # the write is done; the event is raised inside close()
            os.close(fd)
            head, inv, emu, steps = wait_requests(plog, t0, rel, True, 10)
            if head is None or inv is None:
                lost += 1
                why.append(request_state(w.db, rel))
                continue
            heads.append((head - t0) / 1e6)
            invs.append((inv - t0) / 1e6)
            emus.append(emu / 1e6)
            timelines.append([(m, round(t / 1e6, 3)) for m, t in steps])
        res = {"samples": len(leaves), "lost": lost, "head_ms": heads, "invalidation_ms": invs,
               "emulator_ms": emus, "timelines": timelines, "alive": w.alive(),
               "lost_why": why}
        for state in why:
            log("  latency: lost %s" % state)
        if why:
            log("  latency: the daemon's last lines:\n" + w.stderr_tail(40))
    finally:
        w.stop()
        for leaf in leaves:
            p = os.path.join(tree.root, leaf, ".purge")
            if os.path.exists(p):
                os.unlink(p)
    return res


SHELL_PEER = r"""
set -u
inotifywait -m -r -e close_write -e moved_to --format '%w%f' "$ROOT" | while IFS= read -r f; do
  case "$f" in
    */.purge)
      rel=${f#"$ROOT"/}
      "$AWS" --endpoint-url "$ENDPOINT" s3api head-object --bucket "$BUCKET" --key "$rel" >/dev/null &&
      "$AWS" --endpoint-url "$ENDPOINT" cloudfront create-invalidation --distribution-id "$DIST" \
          --paths '/*' >/dev/null
      ;;
  esac
done
"""


def shell_latency(ctx, tree, samples):
    """The shell peer an operator would write, timed like purgewatch."""
    env = aws_env({"ROOT": tree.root, "AWS": os.path.join(ctx.venv, "bin", "aws"),
                   "ENDPOINT": ctx.emu.endpoint, "BUCKET": ORIGIN_BUCKET,
                   "DIST": ctx.emu.dist})
    p = subprocess.Popen(["bash", "-c", SHELL_PEER], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    r = Reader(p.stderr, "Watches established.")
    r.start()
    invs, heads, emus, lost = [], [], [], 0
    leaves = tree.pick_leaves(samples, 777)
    try:
        if not r.ready.wait(ctx.ready_timeout):
            raise RuntimeError("shell peer: inotifywait never ready")
        plog = ProxyLog(ctx.emu.proxy_log)
        plog.new()
        for i, leaf in enumerate(leaves):
            rel = leaf + "/.purge"
            content = ("bench shell %d %d\n" % (i, time.time_ns())).encode()
            ctx.emu.put_marker(rel, content)
            time.sleep(0.2)
            fd = os.open(os.path.join(tree.root, rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                         0o644)
            os.write(fd, content)
            t0 = NOW()
            os.close(fd)
            head, inv, emu, _ = wait_requests(plog, t0, rel, True, 30)
            if inv is None:
                lost += 1
                continue
            invs.append((inv - t0) / 1e6)
            emus.append(emu / 1e6)
            if head is not None:
                heads.append((head - t0) / 1e6)
            time.sleep(0.5)
    finally:
        stop_proc(p)
        for leaf in leaves:
            pth = os.path.join(tree.root, leaf, ".purge")
            if os.path.exists(pth):
                os.unlink(pth)
    return {"samples": len(leaves), "lost": lost, "head_ms": heads, "invalidation_ms": invs,
            "emulator_ms": emus}


# ---------------------------------------------------------------------------------------------
# Idle
# ---------------------------------------------------------------------------------------------

def idle(ctx, tree):
    """Every watcher at once on `tree`, untouched for ctx.idle seconds."""
    ws = []
    try:
        ws.append(("purgewatch", start_purgewatch(ctx, "%s-idle-pw" % tree.name, tree.root)))
        ws.append(("purgewatch (WatchdogSec=60)",
                   start_purgewatch(ctx, "%s-idle-pwwd" % tree.name, tree.root, watchdog=True)))
        ws.append(("inotifywait", start_inotifywait(ctx, "%s-idle-iw" % tree.name, tree.root)))
        ws.append(("lsyncd", start_lsyncd(ctx, "%s-idle-ls" % tree.name, tree.root)))
        time.sleep(ctx.idle_settle)
        # drain watchdog pings sent so far
        wd = ws[1][1]
        wd.notify.setblocking(False)
        while True:
            try:
                wd.notify.recv(4096)
            except BlockingIOError:
                break
        before = {name: ctx_switches(w.pid) for name, w in ws}
        cpu_before = {name: cpu_ns(w.pid) for name, w in ws}
        time.sleep(ctx.idle)
        after = {name: ctx_switches(w.pid) for name, w in ws}
        cpu_after = {name: cpu_ns(w.pid) for name, w in ws}
        pings = 0
        while True:
            try:
                if b"WATCHDOG=1" in wd.notify.recv(4096):
                    pings += 1
            except BlockingIOError:
                break
        out = {"window_s": ctx.idle, "settle_s": ctx.idle_settle, "watchers": {}}
        for name, _ in ws:
            b, a = before[name], after[name]
            vol = sum(a[t][0] - b.get(t, (0, 0))[0] for t in a)
            inv = sum(a[t][1] - b.get(t, (0, 0))[1] for t in a)
            out["watchers"][name] = {
                "voluntary": vol, "nonvoluntary": inv, "threads": len(a),
                "threads_gone": sorted(set(b) - set(a)),
                "cpu_s": (cpu_after[name] - cpu_before[name]) / 1e9}
        out["watchers"]["purgewatch (WatchdogSec=60)"]["watchdog_pings"] = pings
        return out
    finally:
        for _, w in ws:
            w.stop()


# ---------------------------------------------------------------------------------------------
# Summary: medians, ratios, targets, table, chart
# ---------------------------------------------------------------------------------------------

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(R):
    S = {"trees": {}}
    for tname in R["trees"]:
        per = {}
        for kind in ALL_KINDS:
            rs = [r for r in R["runs"] if r["tree"] == tname and r["kind"] == kind and "setup_s" in r]
            if not rs:
                continue
            per[kind] = {
                "runs": len(rs),
                "setup_s": med(r["setup_s"] for r in rs),
                "rss_ready_mb": med(mb(r["rss_ready_kb"]) for r in rs),
                "rss_ready_anon_mb": med(mb(r["rss_ready_anon_kb"]) for r in rs),
                "rss_ready_file_mb": med(mb(r["rss_ready_file_kb"]) for r in rs),
                "rss_after_storm_anon_mb": med(mb(r["rss_after_storm_anon_kb"]) for r in rs),
                "rss_after_storm_file_mb": med(mb(r["rss_after_storm_file_kb"]) for r in rs),
                "rss_storm_max_mb": med(mb(r["rss_storm_max_kb"]) for r in rs),
                "rss_growth": med(r["rss_growth"] for r in rs),
                "rss_growth_max": max(r["rss_growth"] for r in rs),
                "storm_cpu_s": med(r["storm_cpu_s"] for r in rs),
                "storm_rate": med(r["storm_rate"] for r in rs),
                "storm_wakeups": med(r.get("storm_wakeups") for r in rs),
                "storm_watch_thread_cpu_s": med(r.get("storm_watch_thread_cpu_s") for r in rs),
                "burst_cpu_s": med(r["burst_cpu_s"] for r in rs),
                "missed_storm": sum(r["missed_storm"] for r in rs),
                "missed_burst": sum(r["missed_burst"] for r in rs),
                "markers_expected": sum(r["markers_expected"] for r in rs),
                "overflow_at_start": sum(r.get("overflow_at_start", 0) for r in rs),
                "overflow_total": sum(r.get("overflow_total", 0) for r in rs),
                "resets": sum(r.get("resets", 0) for r in rs),
                "duplicate_requests": sum(r.get("duplicate_requests", 0) for r in rs),
            }
        S["trees"][tname] = per
    base = {}
    for kind in ALL_KINDS:
        rs = [b for b in R.get("baseline", []) if b["kind"] == kind]
        if rs:
            base[kind] = {"setup_s": med(b["setup_s"] for b in rs),
                          "rss_ready_mb": med(mb(b["rss_ready_kb"]) for b in rs),
                          "rss_ready_anon_mb": med(mb(b["rss_ready_anon_kb"]) for b in rs),
                          "rss_ready_file_mb": med(mb(b["rss_ready_file_kb"]) for b in rs)}
    S["empty_tree"] = base
    # Setup = empty-tree cost + b·folders + c·files, solved from trees S and B (two equations);
    # RSS per folder from B − S.
    model = {}
    if "S" in R["trees"] and "B" in R["trees"]:
        fS, nS = R["trees"]["S"]["folders"] - 1, R["trees"]["S"]["files"]
        fB, nB = R["trees"]["B"]["folders"] - 1, R["trees"]["B"]["files"]
        det = fS * nB - fB * nS
        for kind in ALL_KINDS:
            s_, b_ = S["trees"]["S"].get(kind), S["trees"]["B"].get(kind)
            if not s_ or not b_ or kind not in base or det == 0:
                continue
            ns = s_["setup_s"] - base[kind]["setup_s"]
            nb = b_["setup_s"] - base[kind]["setup_s"]
            model[kind] = {
                "setup_us_per_folder": (ns * nB - nb * nS) / det * 1e6,
                "setup_us_per_file": (fS * nb - fB * ns) / det * 1e6,
                "rss_bytes_per_folder": (b_["rss_ready_mb"] - s_["rss_ready_mb"]) * 1e6 / (fB - fS),
            }
    S["cost_model"] = model
    lat = R.get("latency")
    if lat:
        S["latency"] = {
            "head_p50_ms": med(lat["head_ms"]), "head_p99_ms": pct(lat["head_ms"], 0.99),
            "head_max_ms": max(lat["head_ms"]) if lat["head_ms"] else None,
            "inv_p50_ms": med(lat["invalidation_ms"]),
            "inv_p99_ms": pct(lat["invalidation_ms"], 0.99),
            "inv_emulator_p50_ms": med(lat.get("emulator_ms", [])),
            "inv_own_p50_ms": med([a - b for a, b in zip(lat["invalidation_ms"],
                                                         lat.get("emulator_ms", []))]),
            "samples": len(lat["head_ms"]), "lost": lat["lost"],
            "proxy_p50_ms": med(lat.get("proxy_delay_ms", [])),
            "proxy_p99_ms": pct(lat.get("proxy_delay_ms", []), 0.99),
            "timeline": timeline(lat.get("timelines", []))}
    sh = R.get("shell_peer")
    if sh:
        S["shell_peer"] = {"inv_p50_ms": med(sh["invalidation_ms"]),
                           "inv_emulator_p50_ms": med(sh.get("emulator_ms", [])),
                           "samples": len(sh["invalidation_ms"]), "lost": sh["lost"]}
    return S


def timeline(samples):
    """The median request timeline of the samples that share the most common shape: each step
    (a request sent, a response started) and the median ms since the step before it. Gaps that
    end in RESP are the emulator's; the others are the daemon's."""
    shapes = {}
    for tl in samples:
        shapes.setdefault(tuple(m for m, _ in tl), []).append([t for _, t in tl])
    if not shapes:
        return []
    shape, times = max(shapes.items(), key=lambda kv: len(kv[1]))
    out = []
    for i, m in enumerate(shape):
        gaps = [t[i] - (t[i - 1] if i else 0.0) for t in times]
        out.append([m, round(med(gaps), 3)])
    return out


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def targets(R, S):
    """[(target, measured, verdict)] — verdict True/False/None (not measured)."""
    T = []
    tr = S["trees"]
    names = list(tr)

    def g(t, k, m):
        return tr.get(t, {}).get(k, {}).get(m)

    limits_setup = {"S": 0.6, "B": 0.75}
    limits_rss = {"S": 12.0, "B": 25.0}
    for t in names:
        r = ratio(g(t, "purgewatch", "setup_s"), g(t, "inotifywait", "setup_s"))
        lim = limits_setup.get(t, 0.6)
        T.append(("Setup to READY on %s ≤ %.2f× inotifywait" % (t, lim),
                  fmt_x(r), None if r is None else r <= lim))
    for t in names:
        v = g(t, "purgewatch", "rss_ready_mb")
        lim = limits_rss.get(t, 12.0)
        T.append(("RSS at READY on %s ≤ %g MB" % (t, lim), fmt_n(v, " MB"),
                  None if v is None else v <= lim))
    for t in names:
        v = tr.get(t, {}).get("purgewatch", {}).get("rss_growth_max")
        T.append(("RSS growth through the storm on %s < 10%% (worst run)" % t, fmt_pct(v),
                  None if v is None else v < 0.10))
    for t in names:
        r = ratio(g(t, "purgewatch", "storm_cpu_s"), g(t, "inotifywait", "storm_cpu_s"))
        T.append(("Paced storm CPU on %s ≤ 0.6× inotifywait" % t, fmt_x(r),
                  None if r is None else r <= 0.6))
        r = ratio(g(t, "purgewatch", "storm_cpu_s"), g(t, "lsyncd", "storm_cpu_s"))
        T.append(("Paced storm CPU on %s ≤ 0.03× lsyncd" % t, fmt_x(r, 3),
                  None if r is None else r <= 0.03))
        r = ratio(g(t, "purgewatch", "burst_cpu_s"), g(t, "inotifywait", "burst_cpu_s"))
        T.append(("Burst (cp -r) CPU on %s ≤ 1.0× inotifywait" % t, fmt_x(r),
                  None if r is None else r <= 1.0))
    missed = sum((g(t, "purgewatch", "missed_storm") or 0) + (g(t, "purgewatch", "missed_burst") or 0)
                 for t in names)
    expected = sum(g(t, "purgewatch", "markers_expected") or 0 for t in names)
    T.append(("No marker missed by purgewatch (storms and bursts)",
              "%d of %d missed" % (missed, expected), missed == 0 and expected > 0))
    ov0 = sum(g(t, "purgewatch", "overflow_at_start") or 0 for t in names)
    ovt = sum(g(t, "purgewatch", "overflow_total") or 0 for t in names)
    T.append(("No overflow rescan at start (any run counted)",
              "%d at start, %d in all" % (ov0, ovt), ov0 == 0))
    L = S.get("latency")
    if L:
        T.append(("Marker close → HeadObject sent, p99 ≤ 2 ms (settle 0)",
                  "p50 %s, p99 %s (%d samples)" % (fmt_n(L["head_p50_ms"], " ms", 2),
                                                   fmt_n(L["head_p99_ms"], " ms", 2), L["samples"]),
                  None if L["head_p99_ms"] is None else L["head_p99_ms"] <= 2.0))
    sh = S.get("shell_peer")
    if L and sh:
        r = ratio(sh["inv_p50_ms"], L["inv_p50_ms"])
        T.append(("Marker → CreateInvalidation ≥ 50× faster than the shell peer",
                  "%s vs %s: %s" % (fmt_n(L["inv_p50_ms"], " ms", 1), fmt_n(sh["inv_p50_ms"], " ms", 0),
                                    fmt_x(r, 0)),
                  None if r is None else r >= 50))
    idl = R.get("idle")
    if idl:
        a = idl["watchers"]["purgewatch"]
        b = idl["watchers"]["purgewatch (WatchdogSec=60)"]
        ok = a["voluntary"] <= 2 and b["voluntary"] <= 2 + 4 * b.get("watchdog_pings", 0)
        T.append(("Idle: no wakeups beyond the watchdog's (%d s window)" % idl["window_s"],
                  "%d switches without watchdog; %d with WatchdogSec=60 (%d pings)" % (
                      a["voluntary"], b["voluntary"], b.get("watchdog_pings", 0)), ok))
    if "S" in tr and "B" in tr and "purgewatch" in tr["S"] and "purgewatch" in tr["B"]:
        fr = R["trees"]["B"]["folders"] / R["trees"]["S"]["folders"]
        e = S["empty_tree"].get("purgewatch", {})
        for m, label in (("setup_s", "setup"), ("rss_ready_mb", "RSS")):
            b, s = g("B", "purgewatch", m), g("S", "purgewatch", m)
            raw = ratio(b, s)
            net = ratio(b - e.get(m, 0), s - e.get(m, 0)) if e and b and s else None
            ok = None if net is None else abs(net / fr - 1) <= 0.25
            T.append(("Scaling: %s B/S within ±25%% of the folder ratio %.2f" % (label, fr),
                      "%s net of the empty-tree cost (raw %s)" % (fmt_n(net, "", 2), fmt_n(raw, "", 2)),
                      ok))
    return T


def fmt_n(v, unit="", nd=2):
    return "–" if v is None else ("%." + str(nd) + "f%s") % (v, unit)


def fmt_x(v, nd=2):
    return "–" if v is None else ("%." + str(nd) + "f×") % v


def fmt_pct(v):
    return "–" if v is None else "%+.1f%%" % (v * 100)


def table(R, S, T):
    L = []
    tr = S["trees"]
    L.append("| metric | tree | purgewatch | inotifywait | lsyncd | pw / iw | pw / ls |")
    L.append("|---|---|---:|---:|---:|---:|---:|")

    def row(label, key, f, nd=2):
        for t in tr:
            v = {k: tr[t].get(k, {}).get(key) for k in KINDS}
            L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                label, t, f(v["purgewatch"]), f(v["inotifywait"]), f(v["lsyncd"]),
                fmt_x(ratio(v["purgewatch"], v["inotifywait"]), nd),
                fmt_x(ratio(v["purgewatch"], v["lsyncd"]), 3)))

    row("setup to ready (s)", "setup_s", lambda v: fmt_n(v, "", 3))
    row("RSS at ready (MB)", "rss_ready_mb", lambda v: fmt_n(v, "", 1))
    row("RSS at ready: anonymous (MB)", "rss_ready_anon_mb", lambda v: fmt_n(v, "", 1))
    row("RSS at ready: file-backed (MB)", "rss_ready_file_mb", lambda v: fmt_n(v, "", 1))
    row("RSS max in storm (MB)", "rss_storm_max_mb", lambda v: fmt_n(v, "", 1))
    row("RSS after storm: anonymous (MB)", "rss_after_storm_anon_mb", lambda v: fmt_n(v, "", 1))
    row("RSS after storm: file-backed (MB)", "rss_after_storm_file_mb", lambda v: fmt_n(v, "", 1))
    for t in tr:
        v = {k: tr[t].get(k, {}).get("rss_growth") for k in KINDS}
        L.append("| RSS growth through storm | %s | %s | %s | %s | | |" % (
            t, fmt_pct(v["purgewatch"]), fmt_pct(v["inotifywait"]), fmt_pct(v["lsyncd"])))
    row("storm CPU, paced (s)", "storm_cpu_s", lambda v: fmt_n(v, "", 2))
    for t in tr:
        v = tr[t].get("purgewatch", {}).get("storm_watch_thread_cpu_s")
        L.append("| … of which purgewatch's watch thread (s) | %s | %s | | | | |" % (t, fmt_n(v, "", 2)))
    row("wakeups in the storm (voluntary ctx switches)", "storm_wakeups", lambda v: fmt_n(v, "", 0))
    row("burst CPU, cp -r (s)", "burst_cpu_s", lambda v: fmt_n(v, "", 3))
    for t in tr:
        cells = []
        for k in KINDS:
            d = tr[t].get(k)
            cells.append("–" if not d else "%d+%d of %d" % (d["missed_storm"], d["missed_burst"],
                                                          d["markers_expected"]))
        L.append("| markers missed (storm+burst, all runs) | %s | %s | %s | %s | | |" % (t, *cells))
    for t in tr:
        cells = []
        for k in KINDS:
            d = tr[t].get(k)
            if not d:
                cells.append("–")
            elif k == "lsyncd":
                cells.append("%d (%d resets)" % (d["overflow_total"], d["resets"]))
            else:
                cells.append("%d (%d at start)" % (d["overflow_total"], d["overflow_at_start"]))
        L.append("| queue overflows (all runs) | %s | %s | %s | %s | | |" % (t, *cells))
    for t in tr:
        v = {k: tr[t].get(k, {}).get("storm_rate") for k in KINDS}
        L.append("| storm writes/s achieved | %s | %s | %s | %s | | |" % (
            t, fmt_n(v["purgewatch"], "", 0), fmt_n(v["inotifywait"], "", 0), fmt_n(v["lsyncd"], "", 0)))
    e = S.get("empty_tree", {})
    if e:
        v = {k: e.get(k, {}).get("setup_s") for k in KINDS}
        L.append("| setup, empty tree (s) | – | %s | %s | %s | %s | %s |" % (
            fmt_n(v["purgewatch"], "", 3), fmt_n(v["inotifywait"], "", 3), fmt_n(v["lsyncd"], "", 3),
            fmt_x(ratio(v["purgewatch"], v["inotifywait"])), fmt_x(ratio(v["purgewatch"], v["lsyncd"]), 3)))
        v = {k: e.get(k, {}).get("rss_ready_mb") for k in KINDS}
        L.append("| RSS, empty tree (MB) | – | %s | %s | %s | %s | %s |" % (
            fmt_n(v["purgewatch"], "", 1), fmt_n(v["inotifywait"], "", 1), fmt_n(v["lsyncd"], "", 1),
            fmt_x(ratio(v["purgewatch"], v["inotifywait"])), fmt_x(ratio(v["purgewatch"], v["lsyncd"]), 3)))
    cm = S.get("cost_model", {})
    if cm:
        for key, label, nd in (("setup_us_per_folder", "setup per folder (µs, fitted)", 2),
                               ("setup_us_per_file", "setup per file (µs, fitted)", 2),
                               ("rss_bytes_per_folder", "RSS per folder (bytes, B − S)", 0)):
            v = {k: cm.get(k, {}).get(key) for k in KINDS}
            L.append("| %s | – | %s | %s | %s | %s | %s |" % (
                label, fmt_n(v["purgewatch"], "", nd), fmt_n(v["inotifywait"], "", nd),
                fmt_n(v["lsyncd"], "", nd), fmt_x(ratio(v["purgewatch"], v["inotifywait"])),
                fmt_x(ratio(v["purgewatch"], v["lsyncd"]), 3)))
    idl = R.get("idle")
    if idl:
        w = idl["watchers"]
        L.append("| idle voluntary ctx switches / %d s | %s | %s (%s with WatchdogSec=60, %d pings) "
                 "| %s | %s | | |" % (
                     idl["window_s"], idl["tree"], w["purgewatch"]["voluntary"],
                     w["purgewatch (WatchdogSec=60)"]["voluntary"],
                     w["purgewatch (WatchdogSec=60)"].get("watchdog_pings", 0),
                     w["inotifywait"]["voluntary"], w["lsyncd"]["voluntary"]))
    lat, sh = S.get("latency"), S.get("shell_peer")
    if lat:
        L.append("| marker close → HeadObject, p50 / p99 (ms) | %s | %s / %s | | | | |" % (
            R["latency"]["tree"], fmt_n(lat["head_p50_ms"], "", 2), fmt_n(lat["head_p99_ms"], "", 2)))
        L.append("| (the proxy's own stamping delay, p50 / p99, ms) | | %s / %s | | | | |" % (
            fmt_n(lat["proxy_p50_ms"], "", 3), fmt_n(lat["proxy_p99_ms"], "", 3)))
        L.append("| marker → CreateInvalidation, median (ms) | %s | %s | shell peer: %s | | %s faster | |" % (
            R["latency"]["tree"], fmt_n(lat["inv_p50_ms"], "", 1),
            fmt_n(sh["inv_p50_ms"], "", 0) if sh else "–",
            fmt_x(ratio(sh["inv_p50_ms"], lat["inv_p50_ms"]), 0) if sh else "–"))
        L.append("| … of which waiting on the emulator (ms) | %s | %s | shell peer: %s | | | |" % (
            R["latency"]["tree"], fmt_n(lat["inv_emulator_p50_ms"], "", 1),
            fmt_n(sh.get("inv_emulator_p50_ms"), "", 1) if sh else "–"))
        if lat.get("timeline"):
            # → GET 0.41 means the daemon sent the GET 0.41 ms after the step before it.
            L.append("| … step by step, median ms (→ sent by purgewatch, ⇐ the emulator's answer "
                     "began) | %s | %s | | | | |" % (R["latency"]["tree"], " · ".join(
                         ("⇐ %.2f" if m == "RESP" else "→ " + m + " %.2f") % g
                         for m, g in lat["timeline"])))
    for kind in NOTIFY_KINDS:
        if any(kind in tr[t] for t in tr):
            L.append("")
            L.append(notify_table(S, kind))
    L.append("")
    L.append("| target (issue 6) | measured | met |")
    L.append("|---|---|---|")
    for name, val, ok in T:
        L.append("| %s | %s | %s |" % (name, val, {True: "yes", False: "**no**", None: "not measured"}[ok]))
    return "\n".join(L)


NOTIFY_LABELS = {"notify": "notify 8 (`notify-probe`)",
                 "notify9": "notify 9 rc, narrowed (`notify-probe --v9`)"}


def notify_table(S, kind):
    """A notify watcher (recursive) beside inotifywait and purgewatch, when it ran
    (--kinds ...,notify or ...,notify9)."""
    tr = S["trees"]
    L = ["| %s | tree | %s | inotifywait | purgewatch | %s / iw | pw / %s |" % (
        NOTIFY_LABELS[kind], kind, kind, kind), "|---|---|---:|---:|---:|---:|---:|"]

    def row(label, key, f, nd=2):
        for t in tr:
            v = {k: tr[t].get(k, {}).get(key) for k in (kind, "inotifywait", "purgewatch")}
            L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                label, t, f(v[kind]), f(v["inotifywait"]), f(v["purgewatch"]),
                fmt_x(ratio(v[kind], v["inotifywait"]), nd),
                fmt_x(ratio(v["purgewatch"], v[kind]), nd)))

    row("setup to ready (s)", "setup_s", lambda v: fmt_n(v, "", 3))
    row("RSS at ready (MB)", "rss_ready_mb", lambda v: fmt_n(v, "", 1))
    row("storm CPU, paced (s)", "storm_cpu_s", lambda v: fmt_n(v, "", 2))
    row("wakeups in the storm", "storm_wakeups", lambda v: fmt_n(v, "", 0))
    row("burst CPU, cp -r (s)", "burst_cpu_s", lambda v: fmt_n(v, "", 3))
    for t in tr:
        cells = []
        for k in (kind, "inotifywait", "purgewatch"):
            d = tr[t].get(k)
            cells.append("–" if not d else "%d+%d of %d; %d overflow(s)" % (
                d["missed_storm"], d["missed_burst"], d["markers_expected"], d["overflow_total"]))
        L.append("| markers missed; queue overflows | %s | %s | %s | %s | | |" % (t, *cells))
    return "\n".join(L)


COLORS = {"purgewatch": "#1f6fb4", "inotifywait": "#e07b16", "lsyncd": "#2b9a3a"}


def chart(S, path, subtitle):
    """Two panels: setup to ready, paced storm CPU (log scale); per tree, one bar per watcher."""
    import math
    trees = list(S["trees"])
    W, H = 900, 440
    pw_, ph = 380, 280
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="16" text-anchor="middle">purgewatch vs inotifywait -m -r '
           'vs lsyncd (medians)</text>' % (W // 2),
           '<text x="%d" y="40" fill="#555" text-anchor="middle">%s</text>' % (W // 2, esc(subtitle))]

    def panel(x0, title, key, logscale, target):
        y0 = 90
        vals = [S["trees"][t].get(k, {}).get(key) for t in trees for k in KINDS]
        vals = [v for v in vals if v]
        if not vals:
            return
        vmax = max(vals)
        if logscale:
            lo = 10 ** math.floor(math.log10(min(vals)))
            hi = 10 ** math.ceil(math.log10(vmax))

            def y(v):
                return y0 + ph - ph * (math.log10(max(v, lo)) - math.log10(lo)) / (
                    math.log10(hi) - math.log10(lo))
            ticks = []
            t = lo
            while t <= hi * 1.0001:
                ticks.append(t)
                t *= 10
        else:
            step = nice_step(vmax / 5)
            hi = step * math.ceil(vmax / step)

            def y(v):
                return y0 + ph - ph * v / hi
            ticks = [step * i for i in range(int(round(hi / step)) + 1)]
        out.append('<text x="%d" y="%d" font-size="14" text-anchor="middle">%s</text>' % (
            x0 + pw_ // 2, y0 - 12, esc(title)))
        for t in ticks:
            out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (
                x0, x0 + pw_, y(t), y(t)))
            out.append('<text x="%d" y="%.1f" text-anchor="end" fill="#555">%s</text>' % (
                x0 - 4, y(t) + 4, ("%g" % t)))
        out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#333"/>' % (
            x0, x0 + pw_, y0 + ph, y0 + ph))
        gw = pw_ / max(1, len(trees))
        bw = gw / (len(KINDS) + 1.5)
        for i, t in enumerate(trees):
            gx = x0 + i * gw + bw * 0.75
            for j, k in enumerate(KINDS):
                v = S["trees"][t].get(k, {}).get(key)
                if not v:
                    continue
                bx = gx + j * bw
                by = y(v)
                out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>' % (
                    bx, by, bw * 0.9, y0 + ph - by, COLORS[k]))
                out.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-size="11">%s</text>' % (
                    bx + bw * 0.45, by - 3, ("%.2f" % v) if v < 10 else ("%.1f" % v)))
                iw = S["trees"][t].get("inotifywait", {}).get(key)
                if k == "purgewatch" and iw and t in target:
                    ty = y(target[t] * iw)
                    out.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#c00" '
                               'stroke-width="2" stroke-dasharray="4,3"/>' % (
                                   bx - 3, bx + bw * 0.9 + 3, ty, ty))
            f = S_FOLDERS.get(t)
            out.append('<text x="%.1f" y="%d" text-anchor="middle">tree %s%s</text>' % (
                x0 + i * gw + gw / 2, y0 + ph + 18, t, (" (%s folders)" % f) if f else ""))

    panel(70, "Setup to ready (s)", "setup_s", False, {"S": 0.6, "B": 0.75})
    panel(510, "Paced storm CPU (s, log scale)", "storm_cpu_s", True, {"S": 0.6, "B": 0.6})
    lx = 110
    out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#c00" stroke-width="2" '
               'stroke-dasharray="4,3"/>' % (lx + 400, lx + 422, H - 24, H - 24))
    out.append('<text x="%d" y="%d">target for purgewatch (0.6× / 0.75× inotifywait)</text>' % (
        lx + 428, H - 20))
    for k in KINDS:
        out.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>' % (lx, H - 30, COLORS[k]))
        out.append('<text x="%d" y="%d">%s</text>' % (lx + 16, H - 20, k))
        lx += 130
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


S_FOLDERS = {}


def chart_subtitle(R):
    m, st = R["machine"], R["settings"]
    return "%d cores, Linux %s, trees on %s; %d run(s); paced storm: {:,} rewrites at {:,}/s".format(
        st["storm_writes"], st["storm_rate"]) % (m["nproc"], m["kernel"], m["tree_fs"],
                                               R["runs_planned"])


def nice_step(x):
    import math
    if x <= 0:
        return 1
    e = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= x:
            return m * e
    return 10 * e


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------------------------
# Whole-change wait at deploy scale (issue 13): `bench/run --scenario changes`
# ---------------------------------------------------------------------------------------------
#
# A deploy as `wait_for = "changes"` sees it: every file of a tree rewritten locally, the
# marker written, then every file uploaded (16 parallel PUTs straight to the emulator, random
# order), the marker last. The daemon's S3 calls reach the emulator through the timestamping
# proxy (the uploads do not), so the proxy's log holds only the daemon's calls: ListObjectsV2
# (GET /bucket?list-type=2), HeadObject of a changed key, HeadObject of the marker (each look
# starts with it), and CreateInvalidation (POST …/invalidation).

# case: (sections, folders per section, files per folder). Keys sit under sec*/ prefixes as a
# site's sections do; each deploy rewrites and uploads every file of the tree.
CHANGE_CASES = {
    "5k": (10, 100, 5),       # 1,000 folders × 5 files under sec0/ … sec9/: the issue's deploy
    "200k": (100, 200, 10),   # 20,000 folders × 10 files under sec00/ … sec99/
}
CHANGE_PLANS = ("sweep", "folders", "head")
PLAN_LABEL = {"sweep": "sweep (new)", "folders": "folders (before)", "head": "head (naive)",
              "default": "the daemon's default"}
PLAN_COLORS = {"sweep": "#1f6fb4", "folders": "#e07b16", "head": "#2b9a3a",
               "default": "#1f6fb4"}
LIST_PAGE = 1000       # keys in one ListObjectsV2 page (S3's maximum and default)
PASS_GAP_NS = 150_000_000  # no call outstanding for this long: the next call starts a new pass
DEPLOY_MARKER = ".purge"   # at the root: the request owns every change under it
VERIFIED_RE = re.compile(r"S3 holds (\d+) marker\(s\)(?: and (\d+) change\(s\))? "
                         r"after (\d+) check\(s\)")


class ChangeTree:
    """sections × folders × files, every file a page of its own bytes per deploy generation."""

    def __init__(self, case, base):
        self.case = case
        self.sections, self.per_section, self.per_folder = CHANGE_CASES[case]
        self.root = os.path.join(base, "changes-" + case, "root")
        sw, fw = len(str(self.sections - 1)), len(str(self.per_section - 1))
        self.folders = ["sec%0*d/d%0*d" % (sw, s, fw, d)
                        for s in range(self.sections) for d in range(self.per_section)]
        self.rels = ["%s/f%d.html" % (f, j) for f in self.folders for j in range(self.per_folder)]
        # The bucket's keys (origin prefix ""): every file and the marker, in S3's order
        # (UTF-8 bytes; these names are ASCII, so Python's order is the same).
        self.keys_sorted = sorted(self.rels + [DEPLOY_MARKER])
        self.index = {k: i for i, k in enumerate(self.keys_sorted)}

    @staticmethod
    def content(rel, gen):
        return (b"<!doctype html><title>%s</title><p>deploy %d</p>\n" % (rel.encode(), gen)
                + b"x" * 40 + b"\n")

    def build(self, gen):
        base = os.path.dirname(self.root)
        if os.path.exists(base):
            shutil.rmtree(base)
        t = time.monotonic()
        for f in self.folders:
            os.makedirs(os.path.join(self.root, f))
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        for rel in self.rels:
            fd = os.open(os.path.join(self.root, rel), flags, 0o644)
            os.write(fd, self.content(rel, gen))
            os.close(fd)
        return time.monotonic() - t

    def rewrite(self, gen, rate):
        """Every file rewritten in place (new bytes), folder by folder as a build or rsync
        writes them, paced at `rate` files/s so the kernel's event queue (16,384) is not the
        thing measured. Returns seconds."""
        flags = os.O_WRONLY | os.O_TRUNC
        step = max(1, rate // 200)
        t0 = time.monotonic()
        due = t0
        for i in range(0, len(self.rels), step):
            for rel in self.rels[i:i + step]:
                fd = os.open(os.path.join(self.root, rel), flags)
                os.write(fd, self.content(rel, gen))
                os.close(fd)
            due += step / rate
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
        return time.monotonic() - t0

    def marker_content(self, gen):
        return b"deploy %d of %s\n" % (gen, self.case.encode())

    def page_bound(self, changed):
        """The fewest 1,000-key ListObjectsV2 pages that cover every key of `changed`: greedy,
        a page starts at the first changed key not covered yet and covers it and the next 999
        keys of the bucket in key order (StartAfter the key before it)."""
        pos = sorted(self.index[k] for k in changed)
        n = j = 0
        while j < len(pos):
            end = pos[j] + LIST_PAGE
            n += 1
            while j < len(pos) and pos[j] < end:
                j += 1
        return n

    def describe(self):
        return {"files": len(self.rels), "folders": len(self.folders),
                "prefixes": self.sections, "folders_per_prefix": self.per_section,
                "files_per_folder": self.per_folder,
                "layout": "sec*/d*/f*.html, %d prefixes × %d folders × %d files" % (
                    self.sections, self.per_section, self.per_folder),
                "page_bound_whole_set": self.page_bound(self.rels)}


def s3_put(port, key, body, tries=4):
    """PUT straight to moto (not through the proxy); the time the answer was read, ns."""
    path = "/%s/%s" % (ORIGIN_BUCKET, urllib.parse.quote(key))
    for attempt in range(tries):
        c = http_client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            c.request("PUT", path, body=body, headers={"Authorization": FAKE_AUTH,
                                                       "Content-Type": "text/html"})
            r = c.getresponse()
            data = r.read()
            if r.status == 200:
                return NOW()
            err = "%s %s" % (r.status, data[:200])
        except OSError as e:
            err = str(e)
        finally:
            c.close()
        time.sleep(0.2 * (attempt + 1))
    raise RuntimeError("PUT %s failed %d times: %s" % (key, tries, err))


def s3_upload(port, items, parallel):
    """items: [(key, body)], uploaded with `parallel` PUTs in flight, each on its own
    connection (moto closes every one). Returns ({key: ns the PUT completed}, seconds)."""
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(parallel) as ex:
        times = list(ex.map(lambda kb: s3_put(port, kb[0], kb[1]), items))
    return {k: t for (k, _), t in zip(items, times)}, time.monotonic() - t0


def status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def supports_changes_check(pw):
    """Whether this daemon knows `[origin] changes_check` (its config rejects unknown keys with
    exit status 78 before anything starts)."""
    d = tempfile.mkdtemp(prefix="pw-bench-cfg.")
    try:
        cfg = os.path.join(d, "c.toml")
        with open(cfg, "w") as f:
            f.write('[watch]\nroot = "%s"\n[origin]\nbucket = "b"\nwait_for = "changes"\n'
                    'changes_check = "sweep"\n[quota]\nmax = 1\n[cloudfront]\n'
                    'distribution_id = "E1"\n[state]\ndatabase = "%s/pw.db"\n' % (d, d))
        r = subprocess.run([pw, "--config", cfg, "history", "--limit", "1"], env=aws_env(),
                           capture_output=True, text=True, timeout=30)
        return not (r.returncode == 78 and "changes_check" in r.stderr)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def call_kind(meth, path):
    base, _, query = path.partition("?")
    b = "/" + ORIGIN_BUCKET
    if meth == "GET" and base in (b, b + "/") and "list-type=2" in query:
        return "list", None
    if meth == "HEAD" and base.startswith(b + "/"):
        key = urllib.parse.unquote(base[len(b) + 1:])
        return ("marker" if key == DEPLOY_MARKER else "head"), key
    if meth == "POST" and base.endswith("/invalidation"):
        return "invalidation", None
    return "other", None


def analyze_calls(lines, tree, t_from, t_last, t_inv, done):
    """The daemon's calls from the marker's local write to CreateInvalidation, from the proxy's
    log: totals, passes, the page bound of each pass, the emulator's busy time after the last
    upload. A pass starts at the first check call (ListObjectsV2 or HeadObject of a change)
    after the marker's HeadObject, or after no call was outstanding for 150 ms."""
    lines = sorted(lines)
    calls = []       # [t_req, t_resp, kind]
    open_ = {}       # connection → indexes of calls waiting for their answer
    for t, cid, meth, path in lines:
        if meth == "RESP":
            q = open_.get(cid)
            if q:
                calls[q.pop(0)][1] = t
            continue
        if t < t_from or (t_inv is not None and t > t_inv):
            continue
        kind, _ = call_kind(meth, path)
        open_.setdefault(cid, []).append(len(calls))
        calls.append([t, None, kind])
    totals = {}
    for c in calls:
        totals[c[2]] = totals.get(c[2], 0) + 1
    passes = []
    cur = None
    busy_until = None
    for t, tr, kind in calls:
        if kind == "marker":
            cur = None
            continue
        if kind not in ("list", "head"):
            continue
        if cur is None or (busy_until is not None and t - busy_until >= PASS_GAP_NS):
            cur = {"start": t, "end": t, "list": 0, "head": 0}
            passes.append(cur)
        cur[kind] += 1
        cur["end"] = max(cur["end"], tr or t)
        busy_until = max(busy_until or 0, tr or t)
    # Per pass, the changes that may still be unverified: all of them for the first pass;
    # for a later one, those whose upload completed after the previous pass began (a pass
    # cannot have proven a key uploaded after it started). Generous to the daemon: a larger set
    # has a larger bound.
    rels = tree.rels
    prev = None
    for p in passes:
        if prev is None:
            p["bound"] = tree.page_bound(rels)
        else:
            p["bound"] = tree.page_bound([r for r in rels if done.get(r, 0) > prev])
        prev = p["start"]
    # The emulator's share after the last upload: when at least one call was being answered.
    iv = sorted((max(a, t_last), min(b, t_inv)) for a, b, _ in calls
                if b is not None and t_inv is not None and b > t_last and a < t_inv)
    busy = 0
    cs = ce = None
    for a, b in iv:
        if cs is None or a > ce:
            if cs is not None:
                busy += ce - cs
            cs, ce = a, b
        else:
            ce = max(ce, b)
    if cs is not None:
        busy += ce - cs
    checks = [c for c in calls if c[2] in ("list", "head")]
    after = [c for c in checks if c[0] >= t_last]
    return {
        "lists": totals.get("list", 0), "heads": totals.get("head", 0),
        "marker_heads": totals.get("marker", 0), "other_calls": totals.get("other", 0),
        "check_calls": len(checks), "check_calls_after_last_upload": len(after),
        "first_check_after_last_upload_s": ((after[0][0] - t_last) / 1e9) if after else None,
        "passes": [{"start_s": round((p["start"] - t_last) / 1e9, 3),
                    "duration_s": round((p["end"] - p["start"]) / 1e9, 3),
                    "list": p["list"], "head": p["head"], "bound": p["bound"]} for p in passes],
        "page_bound_passes": sum(p["bound"] for p in passes),
        "emulator_busy_after_last_upload_s": busy / 1e9 if t_inv is not None else None,
    }


def read_request(db):
    """The deploy's request as the daemon recorded it (read-only, while it runs)."""
    for _ in range(50):
        try:
            c = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
            try:
                rows = c.execute("SELECT id, status, paths, invalidation_id, changes_unknown "
                                 "FROM requests ORDER BY id").fetchall()
                out = {"requests": len(rows)}
                if not rows:
                    return out
                rid, status, paths, inv, unknown = rows[-1]
                ev = c.execute("SELECT to_status, detail FROM events WHERE request_id = ? "
                               "ORDER BY id", (rid,)).fetchall()
                n = c.execute("SELECT count(DISTINCT rel) FROM changes WHERE request_id = ?",
                              (rid,)).fetchone()[0]
            finally:
                c.close()
            out.update(status=status, paths=json.loads(paths) if paths else [],
                       invalidation_id=inv, changes_unknown=unknown, changes_recorded=n,
                       waiting_notes=sum(1 for _, d in ev if d and d.startswith("waiting:")))
            for _, d in ev:
                m = VERIFIED_RE.search(d or "")
                if m:
                    out["verified_detail"] = d
                    out["verified_markers"] = int(m.group(1))
                    out["verified_changes"] = int(m.group(2) or 0)
                    out["checks"] = int(m.group(3))
            return out
        except sqlite3.Error:
            time.sleep(0.1)
    return {"error": "database unreadable"}


def db_sizes(db):
    out = {}
    for sfx in ("", "-wal", "-shm"):
        try:
            out["db" + sfx.replace("-", "_")] = os.path.getsize(db + sfx)
        except OSError:
            out["db" + sfx.replace("-", "_")] = 0
    return out


def changes_run(ctx, tree, plan, gen, a):
    """One deploy of the whole tree with one plan; a fresh daemon and database."""
    tag = "chg-%s-%s" % (tree.case, plan)
    extra = 'wait_for = "changes"\n'
    if plan != "default" and ctx.changes_check:
        extra += 'changes_check = "%s"\n' % plan
    res = {"case": tree.case, "plan": plan, "config": extra.strip().split("\n"),
           "changes_expected": len(tree.rels), "load_before": loadavg()}
    plog = ProxyLog(ctx.emu.proxy_log)
    plog.new()
    w = start_purgewatch(ctx, tag, tree.root, origin_extra=extra, wait_timeout=a.changes_timeout)
    try:
        time.sleep(0.5)  # its last start-up writes
        res["setup_s"] = w.setup_s()
        res["rss_ready_kb"] = rss_kb(w.pid)
        res["hwm_ready_kb"] = status_kb(w.pid, "VmHWM")
        c0 = cpu_ns(w.pid)
        res["rewrite_s"] = tree.rewrite(gen, a.changes_write_rate)
        write_marker(os.path.join(tree.root, DEPLOY_MARKER), tree.marker_content(gen), False)
        t_marker = NOW()
        items = [(rel, tree.content(rel, gen)) for rel in tree.rels]
        random.Random("%s-%d" % (tree.case, gen)).shuffle(items)
        res["marker_uploaded"] = a.changes_marker
        t_m = None
        if a.changes_marker == "first":  # the order the issue did not measure: see --help
            t_m = s3_put(ctx.emu.moto_port, DEPLOY_MARKER, tree.marker_content(gen))
        done, up_s = s3_upload(ctx.emu.moto_port, items, a.changes_parallel)
        if t_m is None:
            t_m = s3_put(ctx.emu.moto_port, DEPLOY_MARKER, tree.marker_content(gen))
        done[DEPLOY_MARKER] = t_m
        t_last = max(done.values())
        res["upload_s"] = (t_last - t_marker) / 1e9
        res["puts_per_s"] = (len(items) + 1) / res["upload_s"]
        log("  %s %s: rewrote %d files in %.1f s, uploaded them in %.1f s (%.0f PUT/s), "
            "marker %s; waiting for CreateInvalidation" % (
                tree.case, plan, len(items), res["rewrite_s"], res["upload_s"],
                res["puts_per_s"], a.changes_marker))
        lines = []
        t_inv = None
        deadline = time.monotonic() + a.changes_cap
        while t_inv is None and time.monotonic() < deadline and w.alive():
            for ln in plog.new():
                lines.append(ln)
                if (t_inv is None and ln[2] == "POST"
                        and call_kind(ln[2], ln[3])[0] == "invalidation" and ln[0] >= t_marker):
                    t_inv = ln[0]
            if t_inv is None:
                time.sleep(0.05)
        res["invalidation"] = t_inv is not None
        res["last_upload_to_invalidation_s"] = (t_inv - t_last) / 1e9 if t_inv else None
        if t_inv is None:
            res["cap_s"] = a.changes_cap
        # The request's end as recorded (completed once CloudFront says so), bounded.
        rq = {}
        end = time.monotonic() + (15 if t_inv else 1)
        while time.monotonic() < end:
            rq = read_request(w.db)
            if rq.get("status") in ("completed", "failed", "origin_timeout") or not t_inv:
                break
            time.sleep(0.2)
        for ln in plog.new():
            lines.append(ln)
        res.update(rq)
        res["cpu_s"] = (cpu_ns(w.pid) - c0) / 1e9
        res["rss_end_kb"] = rss_kb(w.pid)
        res["hwm_kb"] = status_kb(w.pid, "VmHWM")
        res.update(db_sizes(w.db))
        res.update(analyze_calls(lines, tree, t_marker, t_last, t_inv, done))
        res["alive"] = w.alive()
        errs = w.reader.lines
        res["warnings"] = sum(1 for _, l in errs if " WARN " in l or " ERROR " in l)
        res["overflows"] = sum(1 for _, l in errs if "queue overflow" in l)
        res["log_tail"] = [l for _, l in errs[-8:]]
        res["covered"] = bool(t_inv and "/*" in (rq.get("paths") or [])
                              and rq.get("verified_changes", -1) >= len(tree.rels)
                              and not rq.get("changes_unknown"))
    finally:
        w.stop()
        res["db_after_stop_bytes"] = sum(db_sizes(w.db).values())
        p = os.path.join(tree.root, DEPLOY_MARKER)
        if os.path.exists(p):
            os.unlink(p)
    log("  %s %s: %s; %d check call(s) (%d List, %d Head) in %d pass(es), page bound %d; "
        "RSS %.1f → peak %.1f MB; DB %.1f MB" % (
            tree.case, plan,
            ("last upload → CreateInvalidation %.2f s" % res["last_upload_to_invalidation_s"])
            if res["invalidation"] else "NO invalidation within %.0f s" % a.changes_cap,
            res["check_calls"], res["lists"], res["heads"], len(res["passes"]),
            tree.page_bound(tree.rels), mb(res["rss_ready_kb"]), mb(res["hwm_kb"]),
            (res["db"] + res["db_wal"]) / 1e6))
    return res


def fmt_int(v):
    return "–" if v is None else "{:,}".format(int(v))


def per_pass_text(r):
    ps = r.get("passes") or []
    if not ps:
        return "–"

    def one(p):
        parts = []
        if p["list"]:
            parts.append("%s List" % fmt_int(p["list"]))
        if p["head"]:
            parts.append("%s Head" % fmt_int(p["head"]))
        return " + ".join(parts)
    if len(ps) <= 4:
        return " · ".join(one(p) for p in ps)
    n = sorted(p["list"] + p["head"] for p in ps)
    return "%d passes: first %s, median %s, last %s" % (
        len(ps), one(ps[0]), fmt_int(statistics.median(n)), one(ps[-1]))


def changes_shown(R):
    """Per case and plan, the run with the median last upload → CreateInvalidation time (none
    within the cap counts as the longest), with every run's time in `times_s`; skipped and
    failed plans as they are."""
    out = []
    for case in R["cases"]:
        plans = []
        for r in R["runs"]:
            if r["case"] == case and r["plan"] not in plans:
                plans.append(r["plan"])
        for plan in plans:
            rs = [r for r in R["runs"] if r["case"] == case and r["plan"] == plan]
            ok = [r for r in rs if "check_calls" in r]
            if not ok:
                out.append(rs[0])
                continue

            def t(r):
                v = r.get("last_upload_to_invalidation_s")
                return float("inf") if v is None else v
            ok.sort(key=t)
            pick = dict(ok[(len(ok) - 1) // 2])
            pick["times_s"] = [t(r) for r in ok]
            out.append(pick)
    return out


def changes_table(R):
    """Three tables: S3 calls; time and resources; the deploy itself."""
    L = []

    shown = changes_shown(R)

    def rows():
        for case, info in R["cases"].items():
            runs = [r for r in shown if r["case"] == case]
            base = next((r for r in runs if r["plan"] == "folders" and "check_calls" in r), None)
            for r in runs:
                yield case, info, r, base

    def spread(r):
        ts = r.get("times_s") or []
        if len(ts) < 2:
            return ""
        return " (%s over %d)" % ("–".join("%.2f" % x if x != float("inf") else "none"
                                           for x in (min(ts), max(ts))), len(ts))

    def cap_text(r):
        t = r.get("last_upload_to_invalidation_s")
        if t is not None:
            return "%.2f%s" % (t, spread(r))
        done = r.get("check_calls_after_last_upload", 0)
        return "none in %.0f s" % r.get("cap_s", 0) + (
            " (%s calls made)" % fmt_int(done) if done else "")

    L.append("| case | plan | check passes (looks) | S3 calls per pass | S3 calls in total "
             "| page bound: whole set · summed over the passes | calls ÷ bound | calls vs folders |")
    L.append("|---|---|---:|---|---:|---:|---:|---:|")
    for case, info, r, base in rows():
        plan = PLAN_LABEL.get(r["plan"], r["plan"])
        if "skipped" in r:
            L.append("| %s | %s | not run | | | %s · | | |" % (
                case, plan, fmt_int(info["page_bound_whole_set"])))
            continue
        if "error" in r:
            L.append("| %s | %s | failed: %s | | | | | |" % (case, plan, esc(r["error"][:100])))
            continue
        ck = "%s List" % fmt_int(r["lists"]) if r["lists"] else ""
        if r["heads"]:
            ck = (ck + " + " if ck else "") + "%s Head" % fmt_int(r["heads"])
        if not r.get("invalidation"):
            ck += " (unfinished)"
        L.append("| %s | %s | %d (%s) | %s | %s | %s · %s | %s | %s |" % (
            case, plan, len(r["passes"]), fmt_int(r.get("checks")), per_pass_text(r), ck or "0",
            fmt_int(info["page_bound_whole_set"]), fmt_int(r["page_bound_passes"]),
            fmt_x(ratio(r["check_calls"], r["page_bound_passes"] or None), 1),
            fmt_x(ratio(r["check_calls"], base["check_calls"]), 3)
            if base and r is not base else ""))
    L.append("")
    L.append("| case | plan | last upload → CreateInvalidation (s) | … until the first check "
             "call (s) | … from it (s) | … the emulator answering (s) | from it, vs folders | RSS at "
             "READY → peak (MB) | RSS growth | DB + WAL at the end (MB; after stop) | daemon CPU "
             "(s) |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case, info, r, base in rows():
        plan = PLAN_LABEL.get(r["plan"], r["plan"])
        if "skipped" in r:
            L.append("| %s | %s | not run | | | | | | | | |" % (
                case, plan))
            continue
        if "error" in r:
            continue
        fc = r.get("first_check_after_last_upload_s")
        eb = r.get("emulator_busy_after_last_upload_s")
        t = r.get("last_upload_to_invalidation_s")
        own = t - fc if t is not None and fc is not None else None
        bt = base_own = None
        if base and base.get("last_upload_to_invalidation_s") is not None and base.get(
                "first_check_after_last_upload_s") is not None:
            bt = base["last_upload_to_invalidation_s"]
            base_own = bt - base["first_check_after_last_upload_s"]
        L.append("| %s | %s | %s | %s | %s | %s | %s | %.1f → %.1f | %+.0f%% | %.2f (%.2f) | "
                 "%.2f |" % (
            case, plan, cap_text(r), "–" if fc is None else "%.2f" % fc,
            "–" if own is None else "%.2f" % own, "–" if eb is None else "%.2f" % eb,
            fmt_x(ratio(own, base_own), 3) if r is not base and own is not None and base_own
            else "",
            mb(r["rss_ready_kb"]), mb(r["hwm_kb"]),
            (r["hwm_kb"] - r["rss_ready_kb"]) / r["rss_ready_kb"] * 100,
            (r["db"] + r["db_wal"]) / 1e6, r["db_after_stop_bytes"] / 1e6, r["cpu_s"]))
    L.append("")
    L.append("| case | plan | deploy | PUTs (16 in flight), s, PUT/s | local rewrite (s) | "
             "last upload → CreateInvalidation (s) | check calls | changes verified / recorded / "
             "written | invalidated `/*`, every change verified |")
    L.append("|---|---|---:|---|---:|---:|---:|---|---|")
    for r in R["runs"]:
        if "check_calls" not in r:
            continue
        info = R["cases"][r["case"]]
        t = r.get("last_upload_to_invalidation_s")
        L.append("| %s | %s | %d | %s, %.1f, %.0f | %.1f | %s | %s | %s / %s / %s | %s |" % (
            r["case"], PLAN_LABEL.get(r["plan"], r["plan"]), r.get("rep", 0) + 1,
            fmt_int(info["files"] + 1),
            r["upload_s"], r["puts_per_s"], r["rewrite_s"],
            "%.2f" % t if t is not None else "none in %.0f s" % r.get("cap_s", 0),
            fmt_int(r["check_calls"]), fmt_int(r.get("verified_changes")),
            fmt_int(r.get("changes_recorded")), fmt_int(r["changes_expected"]),
            "yes" if r["covered"] else "**no**"))
    L.append("")
    for case, info in R["cases"].items():
        L.append("Case %s: %s (%s files, %s folders); populated before the daemon in %.0f s "
                 "(%.0f PUT/s); %d deploy(s) per plan, the median one shown above; %.0f s for "
                 "the case in all." % (
                     case, info["layout"], fmt_int(info["files"]), fmt_int(info["folders"]),
                     info["populate_s"], info["files"] / info["populate_s"], info.get("runs", 1),
                     info.get("wall_s", 0)))
    return "\n".join(L)


def changes_chart(R, path):
    """Two panels, log scale: S3 check calls per deploy (the page bound dashed) and last upload
    → CreateInvalidation; per case, one bar per plan ("not run" when not measured)."""
    import math
    cases = list(R["cases"])
    shown = changes_shown(R)
    plans = []
    for r in R["runs"]:
        if r["plan"] not in plans:
            plans.append(r["plan"])
    W, H = 900, 470
    pw_, ph = 380, 280
    m = R["machine"]
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="16" text-anchor="middle">wait_for = "changes": a whole '
           'deploy, uploaded in random order, marker %s</text>' % (
               W // 2, R["settings"].get("marker_uploaded", "last")),
           '<text x="%d" y="40" fill="#555" text-anchor="middle">%s</text>' % (W // 2, esc(
               "%d cores, Linux %s; moto %s behind a timestamping proxy; %d parallel PUTs" % (
                   m["nproc"], m["kernel"], R["settings"].get("moto", "?"),
                   R["settings"]["parallel_puts"])))]

    def val(case, plan, key):
        """(value, unfinished): a run with no invalidation within the cap shows what it did
        by then (its calls, the cap) as an open bar."""
        r = next((r for r in shown if r["case"] == case and r["plan"] == plan), None)
        if r is None or "check_calls" not in r:
            return None, False
        if not r.get("invalidation"):
            if key == "last_upload_to_invalidation_s":
                return r.get("cap_s"), True
            return r.get(key), True
        return r.get(key), False

    def own(case, plan):
        r = next((r for r in shown if r["case"] == case and r["plan"] == plan), None)
        if not r or r.get("last_upload_to_invalidation_s") is None or r.get(
                "first_check_after_last_upload_s") is None:
            return None
        return r["last_upload_to_invalidation_s"] - r["first_check_after_last_upload_s"]

    def panel(x0, title, key, bound_key, target, fmt, inner=None):
        y0 = 90
        vals = [val(c, p, key)[0] for c in cases for p in plans]
        if inner:
            vals += [inner(c, p) for c in cases for p in plans]
        vals = [v for v in vals if v]
        vals += [R["cases"][c]["page_bound_whole_set"] for c in cases] if bound_key else []
        if target:
            vals += list(target.values())
        if not vals:
            return
        lo = 10 ** math.floor(math.log10(min(vals)))
        hi = 10 ** math.ceil(math.log10(max(vals) * 1.01))

        def y(v):
            return y0 + ph - ph * (math.log10(max(v, lo)) - math.log10(lo)) / (
                math.log10(hi) - math.log10(lo))
        out.append('<text x="%d" y="%d" font-size="14" text-anchor="middle">%s</text>' % (
            x0 + pw_ // 2, y0 - 12, esc(title)))
        t = lo
        while t <= hi * 1.0001:
            out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (
                x0, x0 + pw_, y(t), y(t)))
            out.append('<text x="%d" y="%.1f" text-anchor="end" fill="#555">%s</text>' % (
                x0 - 4, y(t) + 4, "{:,}".format(int(round(t))) if t >= 1 else "%g" % t))
            t *= 10
        out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#333"/>' % (
            x0, x0 + pw_, y0 + ph, y0 + ph))
        gw = pw_ / max(1, len(cases))
        bw = gw / (len(plans) + 1.5)
        for i, c in enumerate(cases):
            gx = x0 + i * gw + bw * 0.75
            for j, p in enumerate(plans):
                v, unfinished = val(c, p, key)
                bx = gx + j * bw
                if not v:
                    out.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-size="11" '
                               'fill="%s">%s</text>' % (bx + bw * 0.45, y0 + ph - 4,
                                                       PLAN_COLORS.get(p, "#777"),
                                                       "not run" if v is None else "0"))
                    continue
                by = y(v)
                col = PLAN_COLORS.get(p, "#777")
                out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" %s/>' % (
                    bx, by, bw * 0.9, y0 + ph - by,
                    ('fill="white" stroke="%s" stroke-width="2" stroke-dasharray="5,3"' % col)
                    if unfinished else 'fill="%s"' % col))
                out.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-size="11">%s'
                           '</text>' % (bx + bw * 0.45, by - 3,
                                        ("&gt; " if unfinished else "") + fmt(v)))
                if inner and not unfinished:
                    # The part after the first check call, solid over the whole (pale): what
                    # the plan itself took, apart from the wait before the look.
                    iv = inner(c, p)
                    if iv:
                        out[-2] = out[-2].replace('fill="%s"' % col,
                                                  'fill="%s" fill-opacity="0.35"' % col)
                        iy = y(iv)
                        out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" '
                                   'fill="%s"/>' % (bx + bw * 0.15, iy, bw * 0.6, y0 + ph - iy,
                                                    col))
                        if y0 + ph - iy >= 16:  # the part's value inside its bar
                            out.append('<text x="%.1f" y="%.1f" text-anchor="middle" '
                                       'font-size="10" fill="white">%s</text>' % (
                                           bx + bw * 0.45, max(iy, by + 4) + 12, fmt(iv)))
                        else:
                            out.append('<text x="%.1f" y="%.1f" text-anchor="middle" '
                                       'font-size="10" fill="%s">%s</text>' % (
                                           bx + bw * 0.45, iy - 3, col, fmt(iv)))
            lx0, lx1 = gx - bw * 0.2, gx + len(plans) * bw
            if bound_key:
                b = R["cases"][c]["page_bound_whole_set"]
                out.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#c00" '
                           'stroke-width="2" stroke-dasharray="4,3"/>' % (lx0, lx1, y(b), y(b)))
            if target and c in target:
                out.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#c00" '
                           'stroke-width="2" stroke-dasharray="4,3"/>' % (
                               lx0, lx1, y(target[c]), y(target[c])))
            info = R["cases"][c]
            out.append('<text x="%.1f" y="%d" text-anchor="middle">%s files (%s folders)</text>'
                       % (x0 + i * gw + gw / 2, y0 + ph + 18, "{:,}".format(info["files"]),
                          "{:,}".format(info["folders"])))

    panel(80, "S3 check calls per deploy (log scale)", "check_calls", True, None,
          lambda v: "{:,}".format(int(v)))
    panel(510, "Last upload → CreateInvalidation (s, log)", "last_upload_to_invalidation_s",
          False, {"5k": 2.0}, lambda v: "%.0f" % v if v >= 100 else "%.1f" % v if v >= 1
          else "%.2f" % v, inner=own)
    out.append('<text x="%d" y="%d" fill="#555" text-anchor="middle">pale: the whole wait · '
               'solid: from the first check call after it</text>' % (700, 406))
    lx = 60
    for p in plans:
        out.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>' % (
            lx, H - 30, PLAN_COLORS.get(p, "#777")))
        out.append('<text x="%d" y="%d">%s</text>' % (lx + 16, H - 20, esc(PLAN_LABEL.get(p, p))))
        lx += 150
    out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#c00" stroke-width="2" '
               'stroke-dasharray="4,3"/>' % (lx, lx + 22, H - 24, H - 24))
    out.append('<text x="%d" y="%d">page bound · 2 s target (5k)</text>' % (lx + 28, H - 20))
    if any(not r.get("invalidation") for r in R["runs"] if "check_calls" in r):
        out.append('<text x="%d" y="%d" fill="#555">open bar: no invalidation within the cap '
                   '(calls made by then)</text>' % (W // 2, H - 4))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def changes_write(R, base, chart=True):
    """BASE.json, BASE.md (a header line, the tables, the notes) and BASE-chart.svg."""
    m = R["machine"]
    head = ("%s · %d cores, %.0f GB, Linux %s, trees on %s · purgewatch %s · load %.2f at start, "
            "%.2f at end · %.0f s" % (m["cpu"], m["nproc"], m["mem_gb"], m["kernel"],
                                     m["tree_fs"], R.get("purgewatch_label", "?"),
                                     R["load_at_start"][0], R["load_at_end"][0], R["elapsed_s"]))
    tbl = changes_table(R)
    R["table_md"] = tbl
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(R, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(head + "\n\n" + tbl + "\n" + "".join("\nnote: " + n for n in R["notes"]) + "\n")
    if chart:
        changes_chart(R, base + "-chart.svg")
    return head, tbl


def changes_merge(base, paths):
    Rs = []
    for p in paths:
        with open(p) as f:
            Rs.append(json.load(f))
    R = dict(Rs[0])
    R["cases"], R["runs"], R["notes"] = {}, [], []
    R["purgewatch_label"] = " / ".join(sorted(set(
        x.get("purgewatch_label") or x.get("purgewatch_binary", {}).get("path", "?") for x in Rs)))
    R["merged_from"] = [os.path.basename(p) for p in paths]
    for p, x in zip(paths, Rs):
        for c, info in x["cases"].items():
            R["cases"][c] = dict(info, results=os.path.basename(p), date=x["machine"]["date"],
                                 load=[x["load_at_start"][0], x["load_at_end"][0]],
                                 purgewatch=x.get("purgewatch_label")
                                 or x.get("purgewatch_binary", {}).get("path"))
        R["runs"] += x["runs"]
        R["notes"] += ["%s: %s" % (os.path.basename(p), n) for n in x["notes"]]
    R["elapsed_s"] = sum(x["elapsed_s"] for x in Rs)
    R["load_at_end"] = Rs[-1]["load_at_end"]
    head, tbl = changes_write(R, base)
    print(head + "\n\n" + tbl)
    return 0


def moto_version(venv):
    try:
        r = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                            "import moto; print(moto.__version__)"], capture_output=True,
                           text=True, timeout=30)
        return r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def changes_main(a):
    """`--scenario changes`: per case a fresh emulator, the tree built and uploaded once (the
    state before the deploy), then per plan a fresh daemon, a whole deploy and its numbers."""
    cases = a.changes_cases.split(",") if a.changes_cases else (
        ["5k", "200k"] if a.changes_large else ["5k"])
    for c in cases:
        if c not in CHANGE_CASES:
            sys.exit("unknown case %s (known: %s)" % (c, ", ".join(CHANGE_CASES)))
    plans = (a.plans or ("default" if a.profile == "smoke" else ",".join(CHANGE_PLANS))).split(",")
    for p in plans:
        if p not in CHANGE_PLANS + ("default",):
            sys.exit("unknown plan %s (known: sweep, folders, head, default)" % p)
    if not a.name:
        a.name = "changes" if a.profile == "full" else "changes-" + a.profile
    ctx = Ctx()
    ctx.pw = os.path.abspath(a.purgewatch)
    ctx.venv = os.path.abspath(a.venv)
    ctx.ready_timeout = 120
    if not os.access(ctx.pw, os.X_OK):
        sys.exit("no purgewatch binary at %s (cargo build --release)" % ctx.pw)
    ctx.changes_check = supports_changes_check(ctx.pw)
    # SIGTERM unwinds like an exception: the emulator stopped, the tmpfs unmounted (what was
    # measured so far is in NAME.partial.json).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    l1, waited = wait_for_quiet_machine(a.wait_load, a.wait_max)
    t_begin = time.monotonic()
    work = os.path.abspath(a.work)
    if os.path.ismount(work):
        subprocess.run(["umount", work], check=False)
    shutil.rmtree(work, ignore_errors=True)
    fs, mounted = prepare_work(work, not a.no_tmpfs)
    ctx.work = work
    ctx.state_dir = os.path.abspath(a.state)
    shutil.rmtree(ctx.state_dir, ignore_errors=True)
    os.makedirs(ctx.state_dir)
    st = os.stat(ctx.pw)
    R = {"scenario": "changes", "profile": a.profile, "machine": machine(fs),
         "purgewatch_binary": {"path": ctx.pw, "bytes": st.st_size, "mtime": datetime.datetime.fromtimestamp(
             st.st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")},
         "load_at_start": loadavg(), "waited_for_load_s": round(waited, 1),
         "settings": {"parallel_puts": a.changes_parallel,
                      "local_rewrite_rate": a.changes_write_rate,
                      "cap_after_last_upload_s": a.changes_cap,
                      "marker_uploaded": a.changes_marker,
                      "wait_timeout": a.changes_timeout, "moto": moto_version(ctx.venv),
                      "daemon_knows_changes_check": ctx.changes_check,
                      "purgewatch": "settle 0s, wait_for \"changes\", paths default [\"/*\"], "
                                    "database on %s" % fs_type(ctx.state_dir),
                      "order": "per case: populate (every file and an old marker, before the "
                               "daemon starts); per plan: start (READY), rewrite every file "
                               "locally, write the marker, upload every file in random order, "
                               "the marker %s" % a.changes_marker},
         "cases": {}, "runs": [], "notes": []}
    if not ctx.changes_check and set(plans) & set(CHANGE_PLANS):
        R["notes"].append("this daemon has no [origin] changes_check: 'folders' runs without it "
                          "(the only plan it has); 'sweep' and 'head' are not run")
        log(R["notes"][-1])
    rc = 0
    emu = None
    restore_watches = None
    try:
        need = max(len(ChangeTree(c, work).folders) for c in cases) * 2 + 50_000
        mw = R["machine"]["max_user_watches"] or 0
        if mw < need and os.geteuid() == 0:
            with open("/proc/sys/fs/inotify/max_user_watches", "w") as f:
                f.write(str(need))
            restore_watches = mw
            R["notes"].append("raised fs.inotify.max_user_watches from %d to %d for the run" % (
                mw, need))
        for case in cases:
            t_case = time.monotonic()
            tree = ChangeTree(case, work)
            dt = tree.build(0)
            info = tree.describe()
            info["build_s"] = round(dt, 1)
            R["cases"][case] = info
            log("changes %s: %s, built in %.1f s; page bound of the whole set: %d" % (
                case, info["layout"], dt, info["page_bound_whole_set"]))
            cdir = os.path.join(work, "emu-" + case)
            os.makedirs(cdir)
            emu = Emulator(ctx.venv, cdir)
            emu.start()
            ctx.emu = emu
            items = [(rel, tree.content(rel, 0)) for rel in tree.rels]
            _, up = s3_upload(emu.moto_port, items, a.changes_parallel)
            s3_put(emu.moto_port, DEPLOY_MARKER, b"an older deploy's marker\n")
            info["populate_s"] = up
            log("changes %s: the bucket holds the tree (%d PUTs in %.1f s: %.0f/s)" % (
                case, len(items), up, len(items) / up))
            reps = a.changes_runs or (1 if a.profile == "smoke" or case != "5k" else 3)
            info["runs"] = reps
            gen = 0
            for rep in range(reps):
                order = plans[rep % len(plans):] + plans[:rep % len(plans)]
                for plan in order:
                    if plan in ("sweep", "head") and not ctx.changes_check:
                        if rep == 0:
                            R["runs"].append({"case": case, "plan": plan, "rep": rep,
                                              "skipped": "no changes_check in this daemon"})
                        continue
                    gen += 1
                    try:
                        r = changes_run(ctx, tree, plan, gen, a)
                    except Exception as e:
                        log("  %s %s FAILED: %s" % (case, plan, e))
                        r = {"case": case, "plan": plan, "error": str(e)}
                        rc = 1
                    r["rep"] = rep
                    R["runs"].append(r)
                    # Kept as it goes: a long run stopped midway still has what it measured.
                    os.makedirs(a.out, exist_ok=True)
                    with open(os.path.join(a.out, a.name + ".partial.json"), "w") as f:
                        json.dump(R, f, indent=1)
            emu.stop()
            emu = None
            shutil.rmtree(os.path.dirname(tree.root), ignore_errors=True)
            info["wall_s"] = round(time.monotonic() - t_case, 1)
            log("changes %s: %.0f s in all" % (case, info["wall_s"]))
    finally:
        if emu:
            emu.stop()
        R["elapsed_s"] = round(time.monotonic() - t_begin, 1)
        R["load_at_end"] = loadavg()
        if mounted:
            r = subprocess.run(["umount", work], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", work], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ctx.state_dir, ignore_errors=True)
        if restore_watches is not None:
            time.sleep(1)
            try:
                with open("/proc/sys/fs/inotify/max_user_watches", "w") as f:
                    f.write(str(restore_watches))
            except OSError:
                pass
    m = R["machine"]
    own = ctx.pw == os.path.join(REPO, "target", "release", "purgewatch")
    R["purgewatch_label"] = a.purgewatch_label or (("%s%s" % (
        m["purgewatch_commit"], " (src modified)" if m["purgewatch_src_modified"] else ""))
        if own else ctx.pw)
    head, tbl = changes_write(R, os.path.join(a.out, a.name), chart=not a.no_chart)
    try:
        os.unlink(os.path.join(a.out, a.name + ".partial.json"))
    except OSError:
        pass
    print()
    print(head)
    print()
    print(tbl)
    print()
    for n in R["notes"]:
        print("note: " + n)
    print("results: %s" % os.path.join(a.out, a.name + ".json"))
    if a.assert_covered:
        ran = [r for r in R["runs"] if "skipped" not in r]
        bad = [r for r in ran if not r.get("covered")]
        if bad or not ran:
            for r in bad or [{}]:
                print("FAIL: %s %s: %s" % (r.get("case"), r.get("plan"), r.get("error") or (
                    "invalidation %s, paths %s, verified %s of %s change(s)%s" % (
                        "sent" if r.get("invalidation") else "NOT sent", r.get("paths"),
                        r.get("verified_changes"), r.get("changes_expected"),
                        ", changes unknown: %s" % r["changes_unknown"]
                        if r.get("changes_unknown") else ""))))
                for l in r.get("log_tail", []):
                    print("  | " + l)
            return 1
        print("OK: every deploy was invalidated (/*) once all its changes were verified (%s)" % (
            ", ".join("%s %s: %d" % (r["case"], r["plan"], r["verified_changes"]) for r in ran)))
    return rc


# ---------------------------------------------------------------------------------------------
# Machine, work dir
# ---------------------------------------------------------------------------------------------

def machine(work_fs):
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1])
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def cmd(args):
        try:
            r = subprocess.run(args, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    iw = cmd(["inotifywait", "--help"]).splitlines()
    ls = cmd(["lsyncd", "--version"]).splitlines()
    git = cmd(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = cmd(["git", "--no-optional-locks", "-C", REPO, "status", "--porcelain", "--",
                 "src", "Cargo.toml", "Cargo.lock"])

    def sysctl(n):
        try:
            with open("/proc/sys/fs/inotify/" + n) as f:
                return int(f.read())
        except OSError:
            return None
    return {"nproc": os.cpu_count(), "mem_gb": round(mem / 1024 / 1024, 1), "cpu": cpu,
            "kernel": platform.release(), "tree_fs": work_fs,
            "inotifywait": iw[0] if iw else "", "lsyncd": ls[0] if ls else "",
            "python": platform.python_version(),
            "purgewatch_commit": git, "purgewatch_src_modified": bool(dirty),
            "max_user_watches": sysctl("max_user_watches"),
            "max_queued_events": sysctl("max_queued_events"),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def prepare_work(base, want_tmpfs):
    os.makedirs(base, exist_ok=True)
    if want_tmpfs and os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g,mode=0755", "tmpfs", base],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return "tmpfs (mounted)", True
        log("cannot mount a tmpfs (%s); trying /dev/shm" % r.stderr.strip())
    return fs_type(base), False


def fs_type(path):
    best, typ = "", "unknown"
    with open("/proc/mounts") as f:
        for line in f:
            p = line.split()
            if path.startswith(p[1]) and len(p[1]) >= len(best):
                best, typ = p[1], p[2]
    return typ


def wait_for_quiet_machine(threshold, max_wait):
    t0 = time.monotonic()
    l1 = loadavg()[0]
    if threshold <= 0 or l1 < threshold:
        return l1, 0.0
    log("load %.2f ≥ %.2f: waiting up to %d s for a quieter machine" % (l1, threshold, max_wait))
    while time.monotonic() - t0 < max_wait:
        time.sleep(10)
        l1 = loadavg()[0]
        if l1 < threshold:
            break
    waited = time.monotonic() - t0
    log("load %.2f after %.0f s of waiting" % (l1, waited))
    return l1, waited


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

PROFILES = {
    # name: trees {name: (fanouts, files per leaf)}, burst (fanouts, files per leaf), storm, ...
    "full": dict(trees={"S": ((20, 50, 20), 10), "B": ((20, 50, 100), 1)},
                 burst=((20, 100), 10), storm_writes=100_000, marker_every=20_000, runs=3,
                 idle=60, idle_settle=12, latency_samples=100, shell_samples=5),
    "smoke": dict(trees={"S": ((10, 10, 20), 5)}, burst=((10, 20), 5), storm_writes=10_000,
                  marker_every=2_000, runs=1, idle=3, idle_settle=1, latency_samples=10,
                  shell_samples=1),
    "dev": dict(trees={"S": ((10, 20, 20), 10), "B": ((10, 20, 100), 1)}, burst=((10, 20), 5),
                storm_writes=20_000, marker_every=4_000, runs=1, idle=5, idle_settle=1,
                latency_samples=20, shell_samples=2),
}


class Ctx:
    pass


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "proxy":
        proxy_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "chart":  # bench.py chart RESULTS.json OUT.svg
        with open(sys.argv[2]) as f:
            R = json.load(f)
        for n, t in R["trees"].items():
            S_FOLDERS[n] = "{:,}".format(t["folders"])
        chart(R["summary"], sys.argv[3], chart_subtitle(R))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "changes-merge":
        # bench.py changes-merge OUT_BASE A.json B.json …: the cases of several changes runs in
        # one table and chart (each case's plans still ran side by side in one run).
        return changes_merge(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="full")
    ap.add_argument("--purgewatch", default=os.path.join(REPO, "target", "release", "purgewatch"))
    ap.add_argument("--venv", default=os.path.join(REPO, ".venv"))
    ap.add_argument("--runs", type=int)
    ap.add_argument("--trees", help="comma-separated subset of the profile's trees")
    ap.add_argument("--kinds", help="comma-separated watchers (default: purgewatch,inotifywait,"
                    "lsyncd; notify adds notify 8's watcher, notify9 notify 9's, bench/notify-probe)")
    ap.add_argument("--notify-probe", default=os.path.join(HERE, "notify-probe", "target",
                                                           "release", "notify-probe"))
    ap.add_argument("--storm-rate", type=int, default=5000)
    ap.add_argument("--latency-samples", type=int, help="markers timed in the latency phase")
    ap.add_argument("--idle", type=float, help="idle window, seconds")
    ap.add_argument("--iw-events", default="close_write,moved_to,create",
                    help="inotifywait -e list (purgewatch's own mask), or 'all'")
    ap.add_argument("--work", default="/tmp/purgewatch-bench")
    ap.add_argument("--state", default="/var/tmp/purgewatch-bench-state",
                    help="purgewatch's databases (on disk, as /var/lib/purgewatch is)")
    ap.add_argument("--no-tmpfs", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", help="base name of the result files (latest for the full profile, "
                    "else the profile's name)")
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--wait-load", type=float, default=0.0,
                    help="wait (bounded by --wait-max) until the 1-min load is below this")
    ap.add_argument("--wait-max", type=float, default=600)
    ap.add_argument("--budget", type=float, default=840,
                    help="seconds; runs that would start later are skipped (and said so)")
    ap.add_argument("--assert-no-missed", action="store_true",
                    help="exit 1 if purgewatch missed a marker (the CI smoke's only assertion)")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: latency,idle,baseline")
    ap.add_argument("--scenario", choices=("watchers", "changes"), default="watchers",
                    help="watchers: the side-by-side of issue 6 (the default); changes: the "
                    "whole-change wait at deploy scale of issue 13 (results changes.{json,md})")
    ap.add_argument("--changes-large", action="store_true",
                    help="changes: also the 200,000-file case (opt-in: over an hour on 2 cores)")
    ap.add_argument("--changes-cases", help="changes: comma list of cases (5k,200k)")
    ap.add_argument("--plans", help="changes: comma list of sweep,folders,head (the default: "
                    "all three; the smoke profile: default = no changes_check key)")
    ap.add_argument("--purgewatch-label", help="changes: what the binary is (a commit), when "
                    "it is not this checkout's target/release/purgewatch")
    ap.add_argument("--changes-runs", type=int, help="changes: deploys per plan (default 3 for "
                    "the 5k case, 1 for 200k and in the smoke); the table shows the median one")
    ap.add_argument("--changes-parallel", type=int, default=16, help="changes: PUTs in flight")
    ap.add_argument("--changes-marker", choices=("last", "first"), default="last",
                    help="changes: the marker uploaded after every file (the issue's deploy) or "
                    "before them (then the changes are checked while the upload runs: passes "
                    "that prove part of them)")
    ap.add_argument("--changes-write-rate", type=int, default=10000,
                    help="changes: local rewrites per second")
    ap.add_argument("--changes-cap", type=float, default=900,
                    help="changes: seconds after the last upload to wait for CreateInvalidation")
    ap.add_argument("--changes-timeout", default="30m", help="changes: the daemon's wait_timeout")
    ap.add_argument("--assert-covered", action="store_true",
                    help="changes: exit 1 unless every deploy was invalidated (/*) with all its "
                    "changes verified (the CI smoke's only assertion)")
    a = ap.parse_args()
    if a.scenario == "changes":
        return changes_main(a)
    P = PROFILES[a.profile]
    if not a.name:
        a.name = "latest" if a.profile == "full" else a.profile
    skip = set(x for x in a.skip.split(",") if x)

    ctx = Ctx()
    ctx.pw = os.path.abspath(a.purgewatch)
    ctx.venv = os.path.abspath(a.venv)
    ctx.storm_rate = a.storm_rate
    ctx.storm_writes = P["storm_writes"]
    ctx.marker_every = P["marker_every"]
    ctx.storm_markers = ctx.storm_writes // ctx.marker_every
    ctx.iw_events = a.iw_events
    ctx.ready_timeout = 120
    ctx.quiet_limit = 60
    ctx.idle = a.idle if a.idle is not None else P["idle"]
    ctx.idle_settle = P["idle_settle"]
    runs = P["runs"] if a.runs is None else a.runs
    for tool in ("inotifywait", "lsyncd", "cp"):
        if not shutil.which(tool):
            sys.exit("missing %s: run through bench/run, which installs it" % tool)
    ctx.notify_probe = os.path.abspath(a.notify_probe)
    if (a.kinds and set(NOTIFY_KINDS) & set(a.kinds.split(","))
            and not os.access(ctx.notify_probe, os.X_OK)):
        sys.exit("no notify-probe at %s (bench/run --kinds ...,notify builds it)" % ctx.notify_probe)
    if not os.access(ctx.pw, os.X_OK):
        sys.exit("no purgewatch binary at %s (cargo build --release)" % ctx.pw)

    l1, waited = wait_for_quiet_machine(a.wait_load, a.wait_max)
    t_begin = time.monotonic()
    work = os.path.abspath(a.work)
    if os.path.ismount(work):
        subprocess.run(["umount", work], check=False)
    shutil.rmtree(work, ignore_errors=True)
    fs, mounted = prepare_work(work, not a.no_tmpfs)
    ctx.work = work
    ctx.state_dir = os.path.abspath(a.state)
    shutil.rmtree(ctx.state_dir, ignore_errors=True)
    os.makedirs(ctx.state_dir)
    R = {"profile": a.profile, "runs_planned": runs, "machine": machine(fs),
         "load_at_start": loadavg(), "waited_for_load_s": round(waited, 1),
         "settings": {"storm_writes": ctx.storm_writes, "storm_rate": ctx.storm_rate,
                      "marker_every": ctx.marker_every, "inotifywait_events": ctx.iw_events,
                      "lsyncd": "delay 1, maxProcesses 1, one /bin/true per batch",
                      "purgewatch": "settle 0s, quota max 1000000 with count bucket, "
                                    "database on %s" % fs_type(ctx.state_dir),
                      "idle_window_s": ctx.idle, "quiet_s": 1.5},
         "trees": {}, "runs": [], "baseline": [], "notes": []}
    emu = None
    rc = 0
    restore_watches = None
    try:
        need = sum(Tree(n, work, *spec).folders for n, spec in P["trees"].items()) * 4 + 50_000
        mw = R["machine"]["max_user_watches"] or 0
        if mw < need and os.geteuid() == 0:
            try:
                with open("/proc/sys/fs/inotify/max_user_watches", "w") as f:
                    f.write(str(need))
                restore_watches = mw
                R["notes"].append("raised fs.inotify.max_user_watches from %d to %d for the run "
                                  "(restored at the end)" % (mw, need))
            except OSError as e:
                R["notes"].append("fs.inotify.max_user_watches is %d and cannot be raised (%s)"
                                  % (mw, e))
        trees = {}
        names = [n for n in P["trees"] if not a.trees or n in a.trees.split(",")]
        for n in names:
            fan, fpl = P["trees"][n]
            t = Tree(n, work, fan, fpl)
            dt = t.build()
            trees[n] = t
            S_FOLDERS[n] = "{:,}".format(t.folders)
            R["trees"][n] = dict(t.describe(), build_s=round(dt, 1))
            log("tree %s: %d folders, %d files, built in %.1f s on %s" % (n, t.folders, t.files, dt, fs))
        src = Tree("burst-src", work, *P["burst"])
        src.build()
        ctx.burst_src = src.root
        ctx.burst_markers = [leaf + "/.purge" for leaf in src.pick_leaves(3, 99)]
        ctx.burst_marker_content = b"bench burst marker\n"
        for rel in ctx.burst_markers:
            with open(os.path.join(src.root, rel), "wb") as f:
                f.write(ctx.burst_marker_content)
        R["burst"] = dict(src.describe(), markers=len(ctx.burst_markers))
        empty = Tree("E", work, (), 0)
        empty.build()
        ctx.empty_root = empty.root
        ctx.storm_files = {n: t.storm_files(ctx.storm_writes) for n, t in trees.items()}
        for n, fl in ctx.storm_files.items():
            if len(fl) < ctx.storm_writes:
                raise RuntimeError("tree %s has only %d files for the storm" % (n, len(fl)))
        log("starting the emulator")
        emu = Emulator(ctx.venv, work)
        emu.start()
        ctx.emu = emu

        for run in range(runs):
            if time.monotonic() - t_begin > a.budget:
                R["notes"].append("budget of %.0f s reached: run %d and later skipped" % (a.budget, run))
                log(R["notes"][-1])
                break
            sel = [k for k in ALL_KINDS
                   if (k in a.kinds.split(",") if a.kinds else k in KINDS)]
            order = sel[run % len(sel):] + sel[:run % len(sel)]
            log("run %d of %d (order %s), load %s" % (run + 1, runs, ", ".join(order), loadavg()))
            if "baseline" not in skip:
                for kind in order:
                    R["baseline"].append(baseline_run(ctx, kind, run))
            for n in names:
                for kind in order:
                    try:
                        R["runs"].append(watcher_run(ctx, kind, trees[n], run))
                    except Exception as e:  # a peer that fails is reported, the bench goes on
                        log("  %s on %s run %d FAILED: %s" % (kind, n, run, e))
                        R["runs"].append({"tree": n, "kind": kind, "run": run, "error": str(e)})
                        if kind == "purgewatch":
                            rc = 1
        lat_tree = trees[names[0]]
        if "latency" not in skip:
            n_lat = a.latency_samples or P["latency_samples"]
            log("latency: purgewatch (settle 0), %d markers already in S3" % n_lat)
            try:
                R["latency"] = marker_latency(ctx, lat_tree, n_lat, 0.1)
                R["latency"]["tree"] = lat_tree.name
                R["latency"]["proxy_delay_ms"] = proxy_calibration(ctx, 50)
            except Exception as e:
                log("  latency FAILED: %s" % e)
                R["notes"].append("latency phase failed: %s" % e)
                R.pop("latency", None)
            log("latency: the shell peer, %d markers" % P["shell_samples"])
            try:
                R["shell_peer"] = shell_latency(ctx, lat_tree, P["shell_samples"])
            except Exception as e:
                log("  shell peer FAILED: %s" % e)
                R["notes"].append("shell peer failed: %s" % e)
        if "idle" not in skip:
            log("idle: every watcher at once on %s for %g s" % (lat_tree.name, ctx.idle))
            try:
                R["idle"] = idle(ctx, lat_tree)
                R["idle"]["tree"] = lat_tree.name
            except Exception as e:
                log("  idle FAILED: %s" % e)
                R["notes"].append("idle phase failed: %s" % e)
    finally:
        if emu:
            emu.stop()
        R["elapsed_s"] = round(time.monotonic() - t_begin, 1)
        R["load_at_end"] = loadavg()
        if mounted:
            r = subprocess.run(["umount", work], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", work], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ctx.state_dir, ignore_errors=True)
        if restore_watches is not None:
            time.sleep(1)  # watches of stopped watchers are freed asynchronously
            try:
                with open("/proc/sys/fs/inotify/max_user_watches", "w") as f:
                    f.write(str(restore_watches))
            except OSError:
                pass

    S = summarize(R)
    T = targets(R, S)
    R["summary"] = S
    R["targets"] = [{"target": n, "measured": v, "met": ok} for n, v, ok in T]
    m = R["machine"]
    head = ("%s · %d cores, %.0f GB, Linux %s, trees on %s · load %.2f at start, %.2f at end · "
            "%.0f s" % (m["cpu"], m["nproc"], m["mem_gb"], m["kernel"], m["tree_fs"],
                        R["load_at_start"][0], R["load_at_end"][0], R["elapsed_s"]))
    tbl = table(R, S, T)
    R["table_md"] = tbl
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, a.name + ".json"), "w") as f:
        json.dump(R, f, indent=1, sort_keys=False)
    with open(os.path.join(a.out, a.name + ".md"), "w") as f:
        f.write(head + "\n\n" + tbl + "\n")
    if not a.no_chart:
        chart(S, os.path.join(a.out, "chart.svg" if a.name == "latest" else a.name + "-chart.svg"),
              chart_subtitle(R))
    print()
    print(head)
    print()
    print(tbl)
    print()
    for n in R["notes"]:
        print("note: " + n)
    print("results: %s" % os.path.join(a.out, a.name + ".json"))
    missed = sum(r.get("missed_storm", 0) + r.get("missed_burst", 0)
                 for r in R["runs"] if r["kind"] == "purgewatch")
    pw_runs = [r for r in R["runs"] if r["kind"] == "purgewatch"]
    if a.assert_no_missed:
        bad = [r for r in pw_runs if "error" in r]
        if missed or bad or not pw_runs:
            print("FAIL: purgewatch missed %d marker(s)%s" % (
                missed, "; %d run(s) failed" % len(bad) if bad else ""))
            for r in pw_runs:
                for x in r.get("missed", []):
                    print("  missed: %s (tree %s, run %d)" % (x, r["tree"], r["run"]))
                if "error" in r:
                    print("  error: %s" % r["error"])
            return 1
        print("OK: purgewatch missed no marker (%d expected across %d run(s))" % (
            sum(r["markers_expected"] for r in pw_runs), len(pw_runs)))
    return rc


if __name__ == "__main__":
    sys.exit(main())
