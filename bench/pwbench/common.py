"""What every part of the bench shares: the clock, paths, the watchers' names, the
buckets, the log line."""

import os
import time


NOW = time.monotonic_ns  # CLOCK_MONOTONIC: the same clock in every process of the machine
CLK_TCK = os.sysconf("SC_CLK_TCK")
# bench/, the folder above this package (the results, bench.py, notify-probe live there)
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


class Ctx:
    pass
