"""The watchers as processes: purgewatch, inotifywait, lsyncd, notify-probe started until
ready, stopped, and which markers each one reported."""

import os
import shutil
import socket
import sqlite3
import subprocess
import threading
import time

from .common import COUNT_BUCKET, NOTIFY_KINDS, NOW, ORIGIN_BUCKET, SHORT
from .emulator import aws_env, stop_proc


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
    wait_ready(w, ctx.ready_timeout, "purgewatch")
    return w


def wait_ready(w, timeout, what):
    """Until the daemon `w` sends READY=1 on its notify socket (sets w.t_ready); stopped and
    an error after `timeout` seconds, or if it dies first."""
    deadline = time.monotonic() + timeout
    w.notify.settimeout(0.2)
    while True:
        try:
            msg = w.notify.recv(4096)
        except socket.timeout:
            msg = b""
        if b"READY=1" in msg:
            w.t_ready = NOW()
            return
        if not w.alive() or time.monotonic() > deadline:
            w.stop()
            raise RuntimeError("%s did not send READY=1:\n%s" % (what, w.stderr_tail()))


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
