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
4. Latency: markers already in S3, written one at a time, purgewatch with settle 0:
   close → HeadObject and close → CreateInvalidation as the proxy saw them; the same for the
   shell peer (`inotifywait | while read; aws s3api head-object; aws cloudfront create-invalidation`).
5. Idle: all watchers at once on tree S; voluntary context switches summed over every thread.
6. Table of medians and ratios (stdout, bench/results/latest.md), JSON, SVG chart.
"""

import argparse
import datetime
import hashlib
import json
import os
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
import threading
import time
import urllib.error
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


def start_purgewatch(ctx, tag, root, watchdog=False):
    w = Watcher("purgewatch", tag, root, ctx.work)
    state = os.path.join(ctx.state_dir, tag)
    shutil.rmtree(state, ignore_errors=True)
    os.makedirs(state)
    w.db = os.path.join(state, "purgewatch.db")
    cfg = os.path.join(state, "purgewatch.toml")
    with open(cfg, "w") as f:
        f.write("""[watch]
root = "%s"
settle = "0s"

[origin]
bucket = "%s"
wait_timeout = "2m"

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
""" % (root, ORIGIN_BUCKET, COUNT_BUCKET, ctx.emu.dist, w.db, ctx.emu.endpoint))
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


def paced_storm(files, markers, rate, sampler, limit):
    """Rewrites `files` at `rate` per second; markers[k] = (path, content, rename) is written
    after the k-th rewrite. Returns (seconds, achieved rate)."""
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
    if kind == "purgewatch":  # the origin already holds them: requests complete, no polling
        for path, content, _ in storm_markers.values():
            ctx.emu.put_marker(os.path.relpath(path, tree.root), content)
        for rel in ctx.burst_markers:
            ctx.emu.put_marker(burst_dst + "/" + rel, ctx.burst_marker_content)
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
                               sampler, limit=ctx.storm_writes / ctx.storm_rate * 3 + 30)
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


def marker_latency(ctx, tree, samples, gap):
    """purgewatch (settle 0): marker close → HeadObject and → CreateInvalidation received."""
    w = start_purgewatch(ctx, "%s-lat" % tree.name, tree.root)
    plog = ProxyLog(ctx.emu.proxy_log)
    plog.new()
    heads, invs, emus, timelines, lost = [], [], [], [], 0
    leaves = tree.pick_leaves(samples, 4242)
    try:
        for i, leaf in enumerate(leaves):
            rel = leaf + "/.purge"
            content = ("bench latency %d %d\n" % (i, time.time_ns())).encode()
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
                continue
            heads.append((head - t0) / 1e6)
            invs.append((inv - t0) / 1e6)
            emus.append(emu / 1e6)
            timelines.append([(m, round(t / 1e6, 3)) for m, t in steps])
        res = {"samples": len(leaves), "lost": lost, "head_ms": heads, "invalidation_ms": invs,
               "emulator_ms": emus, "timelines": timelines, "alive": w.alive()}
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
    a = ap.parse_args()
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
