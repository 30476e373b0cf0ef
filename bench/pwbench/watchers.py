"""The side-by-side of issue 6 (`--scenario watchers`, the default): per run, tree and
watcher: setup, paced storm, burst, markers; the empty-tree baseline; then latency and idle,
the summary and the results files."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from .chart import S_FOLDERS, chart, chart_subtitle
from .common import ALL_KINDS, CLK_TCK, KINDS, NOTIFY_KINDS, PAYLOAD, SHORT, Ctx, loadavg, log
from .emulator import Emulator
from .idle import idle
from .latency import marker_latency, proxy_calibration, shell_latency
from .machine import fs_type, machine, fresh_run
from .procfs import (Sampler, cpu_ns, cpu_ticks, mb, rss_kb, rss_parts, thread_delta, thread_stats,
                     wait_quiet)
from .report import summarize, table, targets
from .tree import Tree, write_marker
from .watcher import markers_seen, start


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


def watchers_main(a):
    """`--scenario watchers`: the trees, the emulator, every run of every watcher, latency,
    idle; BASE.json, BASE.md and the chart."""
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

    fs, mounted, l1, waited, t_begin = fresh_run(a, ctx)
    work = ctx.work
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
