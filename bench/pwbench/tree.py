"""The trees the watchers watch (built on the tmpfs) and how a marker is written."""

import os
import random
import shutil
import time

from .common import PAYLOAD


class Tree:
    """fanouts per level below the root; files only in the leaves."""

    def __init__(self, name, base, fanouts, files_per_leaf):
        self.name = name
        self.root = os.path.join(base, name, "root")
        self.fanouts = fanouts
        self.files_per_leaf = files_per_leaf
        self.leaves = []
        self.folders = 1
        n = 1
        for f in fanouts:
            n *= f
            self.folders += n
        self.files = n * files_per_leaf if fanouts else 0

    def build(self):
        if os.path.exists(os.path.dirname(self.root)):
            shutil.rmtree(os.path.dirname(self.root))
        os.makedirs(self.root)
        t = time.monotonic()
        prefix = [""]
        for f in self.fanouts:
            names = [("d%0" + str(len(str(f - 1))) + "d") % i for i in range(f)]
            nxt = []
            for p in prefix:
                for n in names:
                    r = (p + "/" + n) if p else n
                    os.mkdir(os.path.join(self.root, r))
                    nxt.append(r)
            prefix = nxt
        self.leaves = prefix if self.fanouts else []
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        for leaf in self.leaves:
            d = os.path.join(self.root, leaf)
            for j in range(self.files_per_leaf):
                fd = os.open("%s/f%d.html" % (d, j), flags, 0o644)
                os.write(fd, PAYLOAD)
                os.close(fd)
        return time.monotonic() - t

    def storm_files(self, count):
        """`count` existing files to rewrite, folder by folder (as a deploy writes them)."""
        if not self.leaves:
            return []
        per = min(self.files_per_leaf, -(-count // len(self.leaves)))
        out = []
        for leaf in self.leaves:
            for j in range(per):
                out.append("%s/%s/f%d.html" % (self.root, leaf, j))
                if len(out) == count:
                    return out
        return out

    def pick_leaves(self, n, seed):
        rnd = random.Random(seed)
        return rnd.sample(self.leaves, min(n, len(self.leaves)))

    def describe(self):
        return {"folders": self.folders, "files": self.files, "fanouts": self.fanouts,
                "files_per_leaf": self.files_per_leaf}


def write_marker(path, content, rename):
    if rename:  # as rsync does: a temporary name, then renamed into place (IN_MOVED_TO)
        tmp = os.path.join(os.path.dirname(path), ".purge.bench-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, content)
        os.close(fd)
        os.rename(tmp, path)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, content)
        os.close(fd)
