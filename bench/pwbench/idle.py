"""Idle: every watcher at once on a tree, untouched; voluntary context switches and CPU."""

import time

from .procfs import cpu_ns, ctx_switches
from .watcher import start_inotifywait, start_lsyncd, start_purgewatch


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
