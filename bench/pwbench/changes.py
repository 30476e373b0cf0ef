"""`bench/run --scenario changes` (issue 13): per case a fresh emulator and a bucket holding
the tree, then per plan a fresh daemon with `wait_for = "changes"` and one whole deploy."""

import datetime
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse

from .changes_report import changes_write
from .changes_tree import (CHANGE_CASES, CHANGE_PLANS, DEPLOY_MARKER, PASS_GAP_NS, VERIFIED_RE,
                           ChangeTree, read_file, s3_put, s3_upload)
from .common import NOW, ORIGIN_BUCKET, REPO, Ctx, loadavg, log
from .emulator import Emulator, aws_env
from .machine import fs_type, machine, fresh_run
from .procfs import cpu_ns, mb, rss_kb, status_kb
from .proxy import ProxyLog
from .tree import write_marker
from .watcher import start_purgewatch


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
        # Every body read from the tree by this process, as an uploader does (the daemon may
        # hear those reads).
        items = list(tree.rels)
        random.Random("%s-%d" % (tree.case, gen)).shuffle(items)
        res["marker_uploaded"] = a.changes_marker
        t_m = None
        put_marker = lambda: s3_put(ctx.emu.moto_port, DEPLOY_MARKER,  # noqa: E731
                                    read_file(tree.root, DEPLOY_MARKER))
        if a.changes_marker == "first":  # the order the issue did not measure: see --help
            t_m = put_marker()
        done, up_s = s3_upload(ctx.emu.moto_port, items, a.changes_parallel, root=tree.root)
        if t_m is None:
            t_m = put_marker()
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
    fs, mounted, l1, waited, t_begin = fresh_run(a, ctx)
    work = ctx.work
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
            emu = Emulator(ctx.venv, cdir, a.changes_s3_list_ms)
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
