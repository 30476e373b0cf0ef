"""bench.py's command line: the `proxy`, `chart` and `changes-merge` sub-commands, then the
options of a run and its scenario."""

import argparse
import json
import os
import sys

from . import __doc__ as PACKAGE_DOC
from .changes import changes_main
from .changes_report import changes_merge
from .chart import S_FOLDERS, chart, chart_subtitle
from .common import HERE, REPO
from .proxy import proxy_main
from .upload import upload_main
from .watchers import PROFILES, watchers_main


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
    if len(sys.argv) > 1 and sys.argv[1] == "changes-merge":
        # bench.py changes-merge OUT_BASE A.json B.json …: the cases of several changes runs in
        # one table and chart (each case's plans still ran side by side in one run).
        return changes_merge(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=PACKAGE_DOC.split("\n")[0])
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
    ap.add_argument("--scenario", choices=("watchers", "changes", "upload"), default="watchers",
                    help="watchers: the side-by-side of issue 6 (the default); changes: the "
                    "whole-change wait at deploy scale of issue 13 (results changes.{json,md}); "
                    "upload: marker upload end → CreateInvalidation with real lsyncd, issue 25 "
                    "(results upload.{json,md,svg})")
    ap.add_argument("--changes-large", action="store_true",
                    help="changes: also the 200,000-file case (opt-in: over an hour on 2 cores)")
    ap.add_argument("--changes-cases", help="changes: comma list of cases (5k,50k,200k)")
    ap.add_argument("--plans", help="changes: comma list of sweep,folders,head (the default: "
                    "all three; the smoke profile: default = no changes_check key)")
    ap.add_argument("--purgewatch-label", help="changes: what the binary is (a commit), when "
                    "it is not this checkout's target/release/purgewatch")
    ap.add_argument("--changes-runs", type=int, help="changes: deploys per plan (default 3 for "
                    "the 5k case, 1 for 200k and in the smoke); the table shows the median one")
    ap.add_argument("--changes-parallel", type=int, default=16, help="changes: PUTs in flight")
    ap.add_argument("--changes-marker", choices=("last", "first"), default="last",
                    help="changes: the marker uploaded after every file (the issue's deploy) or "
                    "before them (then the changes are checked while the upload runs: passes "
                    "that prove part of them)")
    ap.add_argument("--changes-write-rate", type=int, default=10000,
                    help="changes: local rewrites per second")
    ap.add_argument("--changes-cap", type=float, default=900,
                    help="changes: seconds after the last upload to wait for CreateInvalidation")
    ap.add_argument("--changes-timeout", default="30m", help="changes: the daemon's wait_timeout")
    ap.add_argument("--changes-s3-list-ms", type=float, default=None,
                    help="changes: the origin bucket answers ListObjectsV2 as S3 does, from an "
                    "index in this many ms a page (S3: about 100), through tests/moto_atomic.py; "
                    "default: moto's own listing (it sorts the bucket for every page)")
    ap.add_argument("--assert-covered", action="store_true",
                    help="changes: exit 1 unless every deploy was invalidated (/*) with all its "
                    "changes verified (the CI smoke's only assertion)")
    ap.add_argument("--purgewatch-a", help="upload: the previous binary (A), run round for round "
                    "with --purgewatch (B); without it only B runs")
    ap.add_argument("--label", help="upload: what --purgewatch (B) is, for the tables")
    ap.add_argument("--label-a", help="upload: what --purgewatch-a (A) is")
    ap.add_argument("--upload-delays", help="upload: comma list of lsyncd delays in seconds "
                    "(full: 1,15,40; dev: 1,15; smoke: 1)")
    ap.add_argument("--upload-sites", type=int, help="upload: sites per binary, each a tree with "
                    "its own lsyncd, bucket and distribution (full 10, dev 4, smoke 2)")
    ap.add_argument("--upload-rounds", type=int, help="upload: rounds per delay and binary, a "
                    "marker per site each (full 10, dev 3, smoke 2)")
    ap.add_argument("--upload-stagger", type=float, default=0.3,
                    help="upload: seconds between the markers of one round")
    ap.add_argument("--upload-cap", type=float, default=90, help="upload: seconds past the "
                    "lsyncd delay to wait for a round's invalidations")
    ap.add_argument("--upload-deploy-files", type=int, help="upload: files of the deploy "
                    "(wait_for = \"changes\"; full 2,000, dev 500, smoke 200; 0: no deploy)")
    ap.add_argument("--upload-deploy-delay", type=float, default=1,
                    help="upload: the deploy's lsyncd delay, seconds")
    ap.add_argument("--upload-deploy-cap", type=float, default=600,
                    help="upload: seconds after the deploy's marker to wait for its invalidation")
    ap.add_argument("--assert-invalidated", action="store_true",
                    help="upload: exit 1 unless every marker got its invalidation (the CI "
                    "smoke's only assertion)")
    a = ap.parse_args()
    if a.scenario == "upload":
        return upload_main(a)
    if a.scenario == "changes":
        return changes_main(a)
    return watchers_main(a)
