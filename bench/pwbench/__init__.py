"""Side-by-side benchmark of purgewatch, `inotifywait -m -r` and lsyncd (issue 6).

Run it through `bench/run` (which installs the peers, the emulator venv and builds the daemon).
Python 3 standard library only; the chart is an SVG written by hand.

What it does, in order (every loop is bounded in count and in time; everything on 127.0.0.1):

1. Mounts a tmpfs (root) or uses a disk folder; builds tree S, tree B, an empty tree and the
   folder tree that `cp -r` copies in the burst.
2. Starts moto_server (S3 + CloudFront emulator) and, in front of it, a timestamping TCP proxy
   (`bench.py proxy`, pwbench.proxy) that logs CLOCK_MONOTONIC arrival of every request line.
3. For each run, each tree, each watcher (order rotated per run): start → ready (setup time, RSS),
   paced storm (100k rewrites at 5,000/s, a `.purge` after every 20k), burst (`cp -r`), markers
   seen, stop. CPU is utime+stime from /proc/PID/stat from the storm's start until the watcher
   has been quiet (no CPU tick) for 1.5 s — backlog included.
4. Latency: markers already in S3 (uploaded just before, within the same second), written one
   at a time, purgewatch with settle 0: close → HeadObject and close → CreateInvalidation as
   the proxy saw them; the same for the shell peer (`inotifywait | while read; aws s3api
   head-object; aws cloudfront create-invalidation`).
5. Idle: all watchers at once on tree S; voluntary context switches summed over every thread.
6. Table of medians and ratios (stdout, bench/results/latest.md), JSON, SVG chart.

`--scenario changes` (issue 13) runs instead the whole-change wait at deploy scale: per case
(5,000 files; 200,000 with --changes-large) a fresh emulator and a bucket holding the tree, then
per plan (`[origin] changes_check` = sweep, folders, head) a fresh daemon with
`wait_for = "changes"`, every file rewritten locally, the marker written, every file uploaded
with 16 parallel PUTs in random order straight to moto, the marker last. From the proxy's log:
the daemon's S3 calls per pass and in all, against the fewest 1,000-key pages that cover the
changed keys; last upload → CreateInvalidation; from /proc and the database: peak RSS (VmHWM),
the database's size. bench/results/changes.{json,md} and changes-chart.svg.

`--scenario upload` (issue 25): the marker's upload end → CreateInvalidation with real lsyncd
(the project's example config, `aws s3 sync`) at lsyncd delays 1, 15 and 40 s, K sites at once
per binary behind the proxy (which tells the daemon from the aws CLI by User-Agent), rounds
alternating between the binary (B) and the one before it (A, `--purgewatch-a`); the daemon's S3
calls per request against one per 2 s of waiting + 20; one deploy with `wait_for = "changes"`.
bench/results/upload.{json,md,svg}.

The modules: the shared harness (common: clock, paths, names; proxy: the timestamping proxy;
emulator: moto and process stops; procfs: /proc sampling; tree: the trees and markers;
watcher: each watcher started, stopped and read; machine: machine, tmpfs, load; report and
chart: the watchers' tables and SVG), the scenarios (watchers: storm, burst, baseline and the
run itself; latency: purgewatch and the shell peer; idle; changes, changes_tree and
changes_report: issue 13; upload and upload_report: issue 25), and cli: bench.py's command line.
"""
