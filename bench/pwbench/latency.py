"""Latency: marker close → HeadObject and → CreateInvalidation as the proxy received them,
for purgewatch (settle 0) and for the shell peer; the proxy's own stamping delay."""

import os
import socket
import sqlite3
import subprocess
import time

from .common import FAKE_AUTH, NOW, ORIGIN_BUCKET, log
from .emulator import aws_env, stop_proc
from .proxy import ProxyLog
from .watcher import Reader, start_purgewatch


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
