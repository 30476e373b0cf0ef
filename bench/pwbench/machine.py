"""The machine (CPU, memory, kernel, peers' versions, the checkout's commit), the work dir
(a tmpfs when root) and the wait for a quiet machine."""

import datetime
import os
import platform
import shutil
import subprocess
import time

from .common import REPO, loadavg, log


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


def fresh_run(a, ctx):
    """The start every scenario shares: wait (bounded) for a quiet machine, then a fresh work
    folder (a tmpfs when root may mount one) and a fresh state folder. Sets ctx.work and
    ctx.state_dir; returns (fs type, mounted, 1-min load, seconds waited, monotonic start)."""
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
    return fs, mounted, l1, waited, t_begin


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
