"""Whole-change wait at deploy scale (issue 13): the deploy's tree and its uploads.

A deploy as `wait_for = "changes"` sees it: every file of a tree rewritten locally, the
marker written, then every file uploaded (16 parallel PUTs straight to the emulator, random
order), the marker last. The daemon's S3 calls reach the emulator through the timestamping
proxy (the uploads do not), so the proxy's log holds only the daemon's calls: ListObjectsV2
(GET /bucket?list-type=2), HeadObject of a changed key, HeadObject of the marker (each look
starts with it), and CreateInvalidation (POST …/invalidation)."""

import concurrent.futures
from http import client as http_client
import os
import re
import shutil
import time
import urllib.parse

from .common import FAKE_AUTH, NOW, ORIGIN_BUCKET


# case: (sections, folders per section, files per folder). Keys sit under sec*/ prefixes as a
# site's sections do; each deploy rewrites and uploads every file of the tree.
CHANGE_CASES = {
    "5k": (10, 100, 5),       # 1,000 folders × 5 files under sec0/ … sec9/: the deploy
    "50k": (50, 100, 10),     # 5,000 folders × 10 files under sec00/ … sec49/: a quick look at scale
    "200k": (100, 200, 10),   # 20,000 folders × 10 files under sec00/ … sec99/
}
CHANGE_PLANS = ("sweep", "folders", "head")
PLAN_LABEL = {"sweep": "sweep (new)", "folders": "folders (before)", "head": "head (naive)",
              "default": "the daemon's default"}
PLAN_COLORS = {"sweep": "#1f6fb4", "folders": "#e07b16", "head": "#2b9a3a",
               "default": "#1f6fb4"}
LIST_PAGE = 1000       # keys in one ListObjectsV2 page (S3's maximum and default)
PASS_GAP_NS = 150_000_000  # no call outstanding for this long: the next call starts a new pass
DEPLOY_MARKER = ".purge"   # at the root: the request owns every change under it
VERIFIED_RE = re.compile(r"S3 holds (\d+) marker\(s\)(?: and (\d+) change\(s\))? "
                         r"after (\d+) check\(s\)")


class ChangeTree:
    """sections × folders × files, every file a page of its own bytes per deploy generation."""

    def __init__(self, case, base):
        self.case = case
        self.sections, self.per_section, self.per_folder = CHANGE_CASES[case]
        self.root = os.path.join(base, "changes-" + case, "root")
        sw, fw = len(str(self.sections - 1)), len(str(self.per_section - 1))
        self.folders = ["sec%0*d/d%0*d" % (sw, s, fw, d)
                        for s in range(self.sections) for d in range(self.per_section)]
        self.rels = ["%s/f%d.html" % (f, j) for f in self.folders for j in range(self.per_folder)]
        # The bucket's keys (origin prefix ""): every file and the marker, in S3's order
        # (UTF-8 bytes; these names are ASCII, so Python's order is the same).
        self.keys_sorted = sorted(self.rels + [DEPLOY_MARKER])
        self.index = {k: i for i, k in enumerate(self.keys_sorted)}

    @staticmethod
    def content(rel, gen):
        return (b"<!doctype html><title>%s</title><p>deploy %d</p>\n" % (rel.encode(), gen)
                + b"x" * 40 + b"\n")

    def build(self, gen):
        base = os.path.dirname(self.root)
        if os.path.exists(base):
            shutil.rmtree(base)
        t = time.monotonic()
        for f in self.folders:
            os.makedirs(os.path.join(self.root, f))
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        for rel in self.rels:
            fd = os.open(os.path.join(self.root, rel), flags, 0o644)
            os.write(fd, self.content(rel, gen))
            os.close(fd)
        return time.monotonic() - t

    def rewrite(self, gen, rate):
        """Every file rewritten in place (new bytes), folder by folder as a build or rsync
        writes them, paced at `rate` files/s so the kernel's event queue (16,384) is not the
        thing measured. Returns seconds."""
        flags = os.O_WRONLY | os.O_TRUNC
        step = max(1, rate // 200)
        t0 = time.monotonic()
        due = t0
        for i in range(0, len(self.rels), step):
            for rel in self.rels[i:i + step]:
                fd = os.open(os.path.join(self.root, rel), flags)
                os.write(fd, self.content(rel, gen))
                os.close(fd)
            due += step / rate
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
        return time.monotonic() - t0

    def marker_content(self, gen):
        return b"deploy %d of %s\n" % (gen, self.case.encode())

    def page_bound(self, changed):
        """The fewest 1,000-key ListObjectsV2 pages that cover every key of `changed`: greedy,
        a page starts at the first changed key not covered yet and covers it and the next 999
        keys of the bucket in key order (StartAfter the key before it)."""
        pos = sorted(self.index[k] for k in changed)
        n = j = 0
        while j < len(pos):
            end = pos[j] + LIST_PAGE
            n += 1
            while j < len(pos) and pos[j] < end:
                j += 1
        return n

    def describe(self):
        return {"files": len(self.rels), "folders": len(self.folders),
                "prefixes": self.sections, "folders_per_prefix": self.per_section,
                "files_per_folder": self.per_folder,
                "layout": "sec*/d*/f*.html, %d prefixes × %d folders × %d files" % (
                    self.sections, self.per_section, self.per_folder),
                "page_bound_whole_set": self.page_bound(self.rels)}


def s3_put(port, key, body, tries=4):
    """PUT straight to moto (not through the proxy); the time the answer was read, ns."""
    path = "/%s/%s" % (ORIGIN_BUCKET, urllib.parse.quote(key))
    for attempt in range(tries):
        c = http_client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            c.request("PUT", path, body=body, headers={"Authorization": FAKE_AUTH,
                                                       "Content-Type": "text/html"})
            r = c.getresponse()
            data = r.read()
            if r.status == 200:
                return NOW()
            err = "%s %s" % (r.status, data[:200])
        except OSError as e:
            err = str(e)
        finally:
            c.close()
        time.sleep(0.2 * (attempt + 1))
    raise RuntimeError("PUT %s failed %d times: %s" % (key, tries, err))


def read_file(root, rel):
    """The body an uploader sends: the file read from the tree (opened, read, closed by this
    process, as `aws s3 sync`, rsync-style tools and rclone do)."""
    with open(os.path.join(root, rel), "rb") as f:
        return f.read()


def s3_upload(port, items, parallel, root=None):
    """items: [(key, body)], uploaded with `parallel` PUTs in flight, each on its own
    connection (moto closes every one); with `root`, items are keys and each body is read from
    the file under `root` just before its PUT. Returns ({key: ns the PUT completed}, seconds)."""
    if root is not None:
        items = [(k, None) for k in items]
    put = lambda kb: s3_put(port, kb[0], kb[1] if root is None else read_file(root, kb[0]))  # noqa: E731
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(parallel) as ex:
        times = list(ex.map(put, items))
    return {k: t for (k, _), t in zip(items, times)}, time.monotonic() - t0
