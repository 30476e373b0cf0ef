"""`bench/run --scenario upload` (issue 25): from the end of the marker's upload by real lsyncd
(examples/lsyncd-s3.conf.lua, `aws s3 sync`) to CreateInvalidation, per lsyncd delay, and the
daemon's S3 calls while it waited; an A/B of two binaries, round for round.

K sites per binary, each a tree, its own lsyncd process, bucket, distribution and quota; one
daemon per binary with K `[[site]]` tables (and one more, the deploy site, `wait_for =
"changes"`). Both daemons and every lsyncd's aws CLI talk to the timestamping proxy in front of
moto; the proxy tells their connections apart by User-Agent (LOG.ua). A round writes a marker
(unique bytes) in each of one binary's K trees, a few hundred ms apart, and waits (bounded) for
each site's CreateInvalidation; rounds alternate A, B, A, B… per delay. Per sample:
t_put_end = the proxy's time of the response to the aws CLI's PUT of that site's `.purge` (the
last one sent before the invalidation), t_inv = the daemon's POST …/invalidation for that site's
distribution, latency = t_inv − t_put_end; the daemon's requests on the site's bucket between
the marker's write and t_inv against the budget waited/2 + 20 (waited = write → t_put_end). Then
one deploy per binary on its deploy site: every file rewritten, the marker written, lsyncd
uploads them; last upload's end → CreateInvalidation and the marker's upload end → it."""

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from .changes import moto_version, read_request
from .common import COUNT_BUCKET, NOW, REPO, Ctx, loadavg, log
from .emulator import Emulator, aws_env, http, stop_proc
from .machine import machine, fresh_run
from .tree import write_marker
from .upload_report import MARKER, Traffic, daemon_calls, marker_put, summarize, upload_write
from .watcher import Reader, Watcher, wait_ready

LSYNCD_CONF = os.path.join(REPO, "examples", "lsyncd-s3.conf.lua")
PROFILES = {
    # K sites per binary, rounds per delay and binary, lsyncd delays (s), files of the deploy
    "full": dict(sites=10, rounds=10, delays=(1, 15, 40), deploy_files=2000),
    "dev": dict(sites=4, rounds=3, delays=(1, 15), deploy_files=500),
    "smoke": dict(sites=2, rounds=2, delays=(1,), deploy_files=200),
}
BUDGET_PER_S = 0.5   # S3 calls per second of waiting (one per 2 s) …
BUDGET_EXTRA = 20    # … plus 20 per request
FILES_PER_FOLDER = 50

DIST_SCRIPT = r"""
import json, sys, boto3
cf = boto3.client("cloudfront", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
out = {}
for b in sys.argv[2:]:
    d = cf.create_distribution(DistributionConfig={
        "CallerReference": "bench-" + b, "Comment": b, "Enabled": True,
        "Origins": {"Quantity": 1, "Items": [{"Id": b, "DomainName": b + ".s3.amazonaws.com",
                                              "S3OriginConfig": {"OriginAccessIdentity": ""}}]},
        "DefaultCacheBehavior": {"TargetOriginId": b, "ViewerProtocolPolicy": "allow-all",
                                 "MinTTL": 0, "TrustedSigners": {"Enabled": False, "Quantity": 0},
                                 "ForwardedValues": {"QueryString": False,
                                                     "Cookies": {"Forward": "none"}}}})
    out[b] = d["Distribution"]["Id"]
print(json.dumps(out))
"""


class Site:
    def __init__(self, binary, name, root, deploy=False):
        self.binary = binary
        self.name = name
        self.root = root
        self.bucket = "up-" + name
        self.deploy = deploy
        self.dist = None
        self.lsyncd = None
        self.lsyncd_log = None

    @property
    def marker(self):
        return os.path.join(self.root, MARKER)


class Binary:
    """One daemon under test: A (the previous binary) or B (the new one)."""

    def __init__(self, key, path, label):
        self.key = key
        self.path = path
        self.label = label
        self.sites = []
        self.deploy = None
        self.w = None

    def all_sites(self):
        return self.sites + ([self.deploy] if self.deploy else [])


# ---------------------------------------------------------------- processes

def create_sites(emu, venv, sites):
    for s in sites:
        st, body = http("PUT", "%s/%s" % (emu.moto, s.bucket))
        if st != 200:
            raise RuntimeError("cannot create bucket %s: %s %s" % (s.bucket, st, body[:200]))
    r = subprocess.run([os.path.join(venv, "bin", "python"), "-c", DIST_SCRIPT, emu.moto]
                       + [s.bucket for s in sites], env=aws_env(), capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError("create-distribution failed: " + r.stderr[-2000:])
    ids = json.loads(r.stdout)
    for s in sites:
        s.dist = ids[s.bucket]


def build_tree(s, files):
    """A small site (index, two folders) or the deploy's `files` pages in folders of 50."""
    shutil.rmtree(s.root, ignore_errors=True)
    os.makedirs(s.root)
    rels = ["index.html"] + ["sec%d/p%d.html" % (i, j) for i in range(2) for j in range(5)]
    if files:
        rels = ["d%03d/f%02d.html" % (i // FILES_PER_FOLDER, i % FILES_PER_FOLDER)
                for i in range(files)]
    for rel in rels:
        p = os.path.join(s.root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(page(rel, 0))
    return rels


def page(rel, gen):
    return (b"<!doctype html><title>%s</title><p>deploy %d</p>\n" % (rel.encode(), gen)
            + b"x" * 40 + b"\n")


def daemon_config(ctx, b, db):
    out = ['# written by bench/bench.py --scenario upload', '[origin]', 'wait_timeout = "15m"',
           '', '[state]', 'database = "%s"' % db, '', '[aws]', 'region = "us-east-1"',
           'endpoint_url = "%s"' % ctx.emu.endpoint, '']
    for s in b.all_sites():
        extra = ', wait_for = "changes"' if s.deploy else ""
        out += ['[[site]]', 'name = "%s"' % s.name, 'root = "%s"' % s.root,
                'origin = { bucket = "%s"%s }' % (s.bucket, extra),
                'cloudfront = { distribution_id = "%s" }' % s.dist, 'quota = "%s"' % s.name, '']
    for s in b.all_sites():
        out += ['[quotas.%s]' % s.name, 'max = 1000000', 'count_bucket = "%s"' % COUNT_BUCKET,
                'key_prefix = "%s/"' % s.name, '']
    return "\n".join(out)


def start_daemon(ctx, b):
    """The binary with every site of its own; READY on a notify socket of the bench's."""
    import socket
    w = Watcher("purgewatch", "upload-" + b.key, None, ctx.work)
    state = os.path.join(ctx.state_dir, b.key)
    shutil.rmtree(state, ignore_errors=True)
    os.makedirs(state)
    w.db = os.path.join(state, "purgewatch.db")
    cfg = os.path.join(state, "config.toml")
    with open(cfg, "w") as f:
        f.write(daemon_config(ctx, b, w.db))
    sock_path = os.path.join(ctx.work, "notify-upload-%s.sock" % b.key)
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    w.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    w.notify.bind(sock_path)
    w.notify.settimeout(0.2)
    w.t_spawn = NOW()
    w.proc = subprocess.Popen([b.path, "--config", cfg, "run"], env=aws_env(
        {"NOTIFY_SOCKET": sock_path}), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True)
    w.reader = Reader(w.proc.stderr, None)
    w.reader.start()
    wait_ready(w, 120, "purgewatch %s (%s)" % (b.key.upper(), b.path))
    b.w = w
    log("daemon %s ready in %.2f s: %s (%d sites)" % (b.key.upper(), w.setup_s(), b.label,
                                                       len(b.all_sites())))


def start_lsyncd(ctx, s, delay):
    d = os.path.join(ctx.work, "lsyncd")
    os.makedirs(d, exist_ok=True)
    tag = "%s-d%g" % (s.name, delay)
    s.lsyncd_log = os.path.join(d, tag + ".log")
    env = aws_env({"LSYNCD_SOURCE": s.root + "/", "LSYNCD_TARGET": "s3://%s/" % s.bucket,
                   "LSYNCD_AWS": os.path.join(ctx.venv, "bin", "aws"),
                   "LSYNCD_S3_ENDPOINT": ctx.emu.endpoint, "LSYNCD_LOG": s.lsyncd_log,
                   "LSYNCD_STATUS": os.path.join(d, tag + ".status"),
                   "LSYNCD_DELAY": "%g" % delay})
    out = open(os.path.join(d, tag + ".out"), "wb")
    s.lsyncd = subprocess.Popen(["lsyncd", "-nodaemon", "-log", "Exec", LSYNCD_CONF], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    out.close()


def lsyncd_text(s):
    try:
        with open(s.lsyncd_log, errors="replace") as f:
            return f.read()
    except (OSError, TypeError):
        return ""


def wait_lsyncd_ready(sites, timeout):
    """Until each lsyncd says its startup sync (a whole `aws s3 sync`) finished."""
    deadline = time.monotonic() + timeout
    left = list(sites)
    while left:
        for s in list(left):
            text = lsyncd_text(s)
            if "Startup of " in text and " finished." in text:
                left.remove(s)
            elif s.lsyncd.poll() is not None:
                raise RuntimeError("lsyncd for %s exited (%s):\n%s" % (
                    s.name, s.lsyncd.returncode, text[-2000:]))
        if left and time.monotonic() > deadline:
            raise RuntimeError("lsyncd's startup sync did not finish in %.0f s for %s:\n%s" % (
                timeout, ", ".join(s.name for s in left), lsyncd_text(left[0])[-2000:]))
        if left:
            time.sleep(0.2)


def stop_lsyncd(sites):
    for s in sites:
        stop_proc(s.lsyncd)
        s.lsyncd = None


# ---------------------------------------------------------------- rounds and the deploy

def run_round(ctx, tr, b, delay, rnd, stagger, cap):
    """One marker in each of the binary's trees, `stagger` s apart; each site's invalidation
    waited for (bounded); a sample per site."""
    tr.poll()
    load = loadavg()[0]
    writes = {}
    t0 = time.monotonic()
    for i, s in enumerate(b.sites):
        pause = t0 + i * stagger - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        content = ("bench upload %s delay %g round %d %d\n" % (
            s.name, delay, rnd, time.time_ns())).encode()
        write_marker(s.marker, content, False)
        writes[s.name] = NOW()
    t_first = min(writes.values())
    deadline = time.monotonic() + delay + cap
    invs = {}
    while time.monotonic() < deadline and len(invs) < len(b.sites):
        time.sleep(0.1)
        tr.poll()
        for s in b.sites:
            if s.name not in invs:
                t = tr.invalidation(s.dist, writes[s.name])
                if t is not None:
                    invs[s.name] = t
    time.sleep(0.3)  # responses still in flight
    tr.poll()
    reqs = tr.since(t_first)
    out = []
    for s in b.sites:
        t_w, t_inv = writes[s.name], invs.get(s.name)
        put, n_puts = marker_put(tr, reqs, s.bucket, t_w, t_inv)
        t_put = put["resp"] if put else None
        calls, kinds = daemon_calls(tr, reqs, s.bucket, t_w, t_inv if t_inv else NOW())
        smp = {"binary": b.key, "delay": delay, "round": rnd, "site": s.name,
               "invalidated": t_inv is not None, "marker_puts": n_puts,
               "put_sent_s": ((put["t"] - t_w) / 1e9) if put else None,
               "waited_s": ((t_put - t_w) / 1e9) if t_put else None,
               "latency_ms": ((t_inv - t_put) / 1e6) if (t_inv and t_put) else None,
               "write_to_invalidation_s": ((t_inv - t_w) / 1e9) if t_inv else None,
               "s3_calls": len(calls), "s3_kinds": kinds,
               "s3_calls_after_upload": (sum(1 for c in calls if c["t"] >= t_put)
                                         if t_put else None),
               "load": load}
        after = [c["t"] for c in calls if t_put and c["t"] >= t_put]
        smp["first_call_after_upload_ms"] = ((after[0] - t_put) / 1e6) if after else None
        if smp["waited_s"] is not None:
            smp["budget"] = smp["waited_s"] * BUDGET_PER_S + BUDGET_EXTRA
            smp["within_budget"] = smp["s3_calls"] <= smp["budget"]
        if t_inv is None:
            smp["why"] = ("no PUT of the marker seen (lsyncd: %s)" % lsyncd_tail(s)
                          if not put else "no CreateInvalidation within %.0f s of the write "
                          "(daemon: %s)" % (delay + cap, b.w.stderr_tail(3).replace("\n", " | ")))
        out.append(smp)
    lat = [x["latency_ms"] for x in out if x["latency_ms"] is not None]
    log("  %s delay %gs round %d: %d/%d invalidated; upload end → invalidation %s ms; "
        "S3 calls %s" % (b.key.upper(), delay, rnd + 1, len(invs), len(b.sites),
                         ",".join("%.0f" % v for v in lat) or "-",
                         ",".join(str(x["s3_calls"]) for x in out)))
    return out


def lsyncd_tail(s):
    lines = [l for l in lsyncd_text(s).splitlines() if l.strip()]
    return " | ".join(lines[-3:])


def run_deploy(ctx, tr, b, rels, gen, cap):
    """Every file of the deploy site rewritten, the marker written; lsyncd uploads them."""
    s = b.deploy
    tr.poll()
    res = {"binary": b.key, "files": len(rels), "load": loadavg()[0]}
    t_begin = NOW()
    for rel in rels:
        with open(os.path.join(s.root, rel), "wb") as f:
            f.write(page(rel, gen))
    write_marker(s.marker, ("bench upload deploy %s %d\n" % (b.key, time.time_ns())).encode(),
                 False)
    t_marker = NOW()
    res["rewrite_s"] = (t_marker - t_begin) / 1e9
    deadline = time.monotonic() + cap
    t_inv = None
    while t_inv is None and time.monotonic() < deadline:
        time.sleep(0.2)
        tr.poll()
        t_inv = tr.invalidation(s.dist, t_marker)
    time.sleep(0.3)
    tr.poll()
    reqs = tr.since(t_begin)
    puts = [r for r in reqs if r["meth"] == "PUT" and r["bucket"] == s.bucket
            and tr.client(r) != "daemon" and (t_inv is None or r["t"] <= t_inv)]
    ends = [r["resp"] for r in puts if r["resp"]]
    mput, _ = marker_put(tr, reqs, s.bucket, t_marker, t_inv)
    calls, kinds = daemon_calls(tr, reqs, s.bucket, t_marker, t_inv or NOW())
    res.update(invalidated=t_inv is not None, uploads=len(puts),
               uploads_s=((max(ends) - min(r["t"] for r in puts)) / 1e9) if ends else None,
               marker_to_last_upload_s=((max(ends) - t_marker) / 1e9) if ends else None,
               after_last_upload_s=((t_inv - max(ends)) / 1e9) if (t_inv and ends) else None,
               after_marker_upload_s=((t_inv - mput["resp"]) / 1e9)
               if (t_inv and mput and mput["resp"]) else None,
               marker_upload_before_last_s=((max(ends) - mput["resp"]) / 1e9)
               if (ends and mput and mput["resp"]) else None,
               s3_calls=len(calls), s3_kinds=kinds)
    if t_inv:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            rq = read_request(b.w.db)
            if rq.get("status") in ("completed", "failed", "origin_timeout"):
                break
            time.sleep(0.3)
        res["request"] = {k: rq.get(k) for k in ("status", "paths", "verified_changes",
                                                  "checks", "changes_unknown", "verified_detail")}
    else:
        res["why"] = "no CreateInvalidation within %.0f s (lsyncd: %s; daemon: %s)" % (
            cap, lsyncd_tail(s), b.w.stderr_tail(3).replace("\n", " | "))
    log("  %s deploy of %d files: %d PUTs; last upload end → invalidation %s s, marker's "
        "upload end → %s s; %d daemon S3 calls %s" % (
            b.key.upper(), len(rels), len(puts), fmt(res["after_last_upload_s"]),
            fmt(res["after_marker_upload_s"]), len(calls), kinds))
    return res


def fmt(v):
    return "-" if v is None else "%.2f" % v


# ---------------------------------------------------------------- the scenario

def upload_main(a):
    P = dict(PROFILES[a.profile])
    delays = [float(x) for x in a.upload_delays.split(",")] if a.upload_delays else list(
        P["delays"])
    K = a.upload_sites or P["sites"]
    rounds = a.upload_rounds or P["rounds"]
    deploy_files = P["deploy_files"] if a.upload_deploy_files is None else a.upload_deploy_files
    if not a.name:
        a.name = "upload" if a.profile == "full" else "upload-" + a.profile
    if shutil.which("lsyncd") is None:
        sys.exit("no lsyncd (bench/run installs it)")
    ctx = Ctx()
    ctx.venv = os.path.abspath(a.venv)
    if not os.access(os.path.join(ctx.venv, "bin", "aws"), os.X_OK):
        sys.exit("no aws CLI in %s (bench/run installs it)" % ctx.venv)
    bins = []
    if a.purgewatch_a:
        bins.append(Binary("a", os.path.abspath(a.purgewatch_a), a.label_a or a.purgewatch_a))
    bins.append(Binary("b", os.path.abspath(a.purgewatch), a.label or own_label(a.purgewatch)))
    for b in bins:
        if not os.access(b.path, os.X_OK):
            sys.exit("no purgewatch binary at %s" % b.path)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fs, mounted, l1, waited, t_begin = fresh_run(a, ctx)
    work = ctx.work
    R = {"scenario": "upload", "profile": a.profile, "machine": machine(fs),
         "binaries": {b.key: binary_info(b) for b in bins},
         "load_at_start": loadavg(), "waited_for_load_s": round(waited, 1),
         "settings": {"sites_per_binary": K, "rounds": rounds, "delays": delays,
                      "stagger_s": a.upload_stagger, "cap_after_delay_s": a.upload_cap,
                      "deploy_files": deploy_files, "deploy_delay": a.upload_deploy_delay,
                      "moto": moto_version(ctx.venv), "lsyncd_config": LSYNCD_CONF,
                      "budget": "S3 calls <= waited_s * %g + %d" % (BUDGET_PER_S, BUDGET_EXTRA),
                      "daemon": "one per binary: %d [[site]] (settle default, wait_timeout 15m, "
                                "a quota per site, max 1000000) + 1 deploy site (wait_for = "
                                "\"changes\")" % K,
                      "order": "per delay: every lsyncd started (LSYNCD_DELAY), then rounds "
                               "alternating %s" % ", ".join(b.key.upper() for b in bins)},
         "samples": [], "deploys": [], "notes": []}
    emu = None
    rc = 0
    everything = []
    try:
        emu = Emulator(ctx.venv, os.path.join(work, "emu"))
        os.makedirs(emu.work)
        emu.start()
        ctx.emu = emu
        tr = Traffic(emu.proxy_log)
        for b in bins:
            for i in range(K):
                n = "%s%d" % (b.key, i)
                b.sites.append(Site(b, n, os.path.join(work, "sites", n)))
            if deploy_files:
                n = "%s-deploy" % b.key
                b.deploy = Site(b, n, os.path.join(work, "sites", n), deploy=True)
            everything += b.all_sites()
        create_sites(emu, ctx.venv, everything)
        rels = []
        for s in everything:
            r = build_tree(s, deploy_files if s.deploy else 0)
            if s.deploy:
                rels = r
        log("upload: %d binar%s × %d site(s)%s; buckets and distributions made" % (
            len(bins), "y" if len(bins) == 1 else "ies", K,
            (" + a deploy site of %d files" % deploy_files) if deploy_files else ""))
        for b in bins:
            start_daemon(ctx, b)
        for delay in delays:
            sites = [s for b in bins for s in b.sites]
            for s in sites:
                start_lsyncd(ctx, s, delay)
            wait_lsyncd_ready(sites, 300)
            log("delay %gs: %d lsyncd processes synced at start" % (delay, len(sites)))
            for rnd in range(rounds):
                for b in bins:
                    R["samples"] += run_round(ctx, tr, b, delay, rnd, a.upload_stagger,
                                              a.upload_cap + K * a.upload_stagger)
                    time.sleep(0.5)
                save_partial(a, R)
            stop_lsyncd(sites)
        if deploy_files:
            deps = [b.deploy for b in bins]
            for s in deps:
                start_lsyncd(ctx, s, a.upload_deploy_delay)
            wait_lsyncd_ready(deps, 300 + deploy_files / 5)
            log("deploy: %d files in each deploy bucket (lsyncd's startup sync)" % deploy_files)
            for gen, b in enumerate(bins, 1):
                R["deploys"].append(run_deploy(ctx, tr, b, rels, gen, a.upload_deploy_cap))
            stop_lsyncd(deps)
        for b in bins:
            errs = b.w.reader.lines
            R["binaries"][b.key].update(
                alive=b.w.alive(), warnings=sum(1 for _, l in errs if " WARN " in l
                                                or " ERROR " in l),
                log_tail=[l for _, l in errs[-8:]])
    except Exception as e:
        log("upload FAILED: %s" % e)
        R["error"] = str(e)
        rc = 1
    finally:
        stop_lsyncd([s for s in everything if s.lsyncd])
        for b in bins:
            if b.w:
                b.w.stop()
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
    R["summary"] = summarize(R)
    head, tbl = upload_write(R, os.path.join(a.out, a.name), chart=not a.no_chart)
    try:
        os.unlink(os.path.join(a.out, a.name + ".partial.json"))
    except OSError:
        pass
    print()
    print(head)
    print()
    print(tbl)
    print()
    print("results: %s" % os.path.join(a.out, a.name + ".json"))
    if a.assert_invalidated:
        bad = [x for x in R["samples"] + R["deploys"] if not x.get("invalidated")]
        if bad or not R["samples"] or R.get("error"):
            print("FAIL: %s" % ("%d marker(s) without their invalidation" % len(bad) if bad
                                else R.get("error") or "no samples"))
            for x in bad[:20]:
                print("  %s %s: %s" % (x["binary"].upper(), x.get("site", "deploy"), x.get("why")))
            return 1
        print("OK: every marker got its invalidation (%d samples, %d deploy(s))" % (
            len(R["samples"]), len(R["deploys"])))
    return rc


def own_label(path):
    """This checkout's commit for its own target/release/purgewatch, else the path."""
    if os.path.abspath(path) != os.path.join(REPO, "target", "release", "purgewatch"):
        return path
    r = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                       text=True)
    d = subprocess.run(["git", "--no-optional-locks", "-C", REPO, "status", "--porcelain", "--",
                        "src", "Cargo.toml", "Cargo.lock"], capture_output=True, text=True)
    return (r.stdout.strip() or path) + (" (src modified)" if d.stdout.strip() else "")


def binary_info(b):
    st = os.stat(b.path)
    return {"path": b.path, "label": b.label, "bytes": st.st_size,
            "mtime": datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC")}


def save_partial(a, R):
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, a.name + ".partial.json"), "w") as f:
        json.dump(R, f, indent=1)
