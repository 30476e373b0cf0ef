"""A process as /proc shows it: CPU, RSS, context switches, per-thread stats; RSS sampled
through a storm, and the wait until a watcher is quiet."""

import os
import time

from .common import CLK_TCK


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


def status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0
