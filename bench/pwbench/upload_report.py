"""The upload scenario's reading of the proxy's log (who sent what, when it was answered), its
summary, tables (NAME.md, NAME.json) and chart (NAME.svg: latency percentiles per lsyncd
delay, A and B side by side, log scale, in chart.py's look)."""

import json
import math
import os
import urllib.parse

from .chart import esc
from .proxy import ProxyLog

COLORS = {"a": "#e07b16", "b": "#1f6fb4"}
TARGET_P99_MS = 500
PCTS = (("p50", 50), ("p90", 90), ("p99", 99))
MARKER = ".purge"


# ---------------------------------------------------------------- the proxy's log, parsed

class Traffic:
    """Every request the proxy saw (time, connection, method, bucket, key or path, response
    time, client), read incrementally from its log and LOG.ua."""

    def __init__(self, proxy_log):
        self.plog = ProxyLog(proxy_log)
        self.ua_path = proxy_log + ".ua"
        self.ua_off = 0
        self.ua = {}
        self.reqs = []
        self.open = {}  # connection → indexes of its requests waiting for their response
        self.invs = {}  # distribution → times of its CreateInvalidation requests

    def poll(self):
        for t, cid, meth, path in self.plog.new():
            if meth == "RESP":
                q = self.open.get(cid)
                if q:
                    self.reqs[q.pop(0)]["resp"] = t
                continue
            base, _, query = path.partition("?")
            parts = base.split("/", 2)
            bucket = parts[1] if len(parts) > 1 else ""
            key = urllib.parse.unquote(parts[2]) if len(parts) > 2 else ""
            if meth == "POST" and bucket == "2020-05-31" and key.endswith("/invalidation"):
                self.invs.setdefault(key.split("/")[1], []).append(t)
            self.open.setdefault(cid, []).append(len(self.reqs))
            self.reqs.append({"t": t, "cid": cid, "meth": meth, "bucket": bucket, "key": key,
                              "query": query, "resp": None})
        try:
            with open(self.ua_path, "rb") as f:
                f.seek(self.ua_off)
                data = f.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1
        self.ua_off += end
        for ln in data[:end].decode("latin-1").splitlines():
            cid, _, ua = ln.partition(" ")
            self.ua[int(cid)] = ua

    def client(self, r):
        ua = self.ua.get(r["cid"], "")
        if ua.startswith("aws-cli/"):
            return "cli"
        return "daemon" if ua else "unknown"

    def invalidation(self, dist, t_from):
        """The first CreateInvalidation for the distribution at or after t_from."""
        return min((t for t in self.invs.get(dist, ()) if t >= t_from), default=None)

    def since(self, t_from):
        """The requests from t_from on (the list is in log order, nearly time order)."""
        return [r for r in self.reqs if r["t"] >= t_from]


def daemon_calls(tr, reqs, bucket, t_from, t_to):
    calls = [r for r in reqs if r["bucket"] == bucket and tr.client(r) != "cli"
             and t_from <= r["t"] <= t_to]
    kinds = {}
    for r in calls:
        k = ("list" if r["meth"] == "GET" and not r["key"] else r["meth"].lower())
        kinds[k] = kinds.get(k, 0) + 1
    return calls, kinds


def marker_put(tr, reqs, bucket, t_write, t_inv):
    """The aws CLI's PUT of the bucket's marker whose response ends the wait: the last one sent
    before the invalidation (else the first after the write: the daemon was early)."""
    puts = [r for r in reqs if r["meth"] == "PUT" and r["bucket"] == bucket
            and r["key"] == MARKER and r["t"] >= t_write and tr.client(r) != "daemon"]
    before = [r for r in puts if t_inv is not None and r["t"] <= t_inv]
    return (before[-1] if before else (puts[0] if puts else None)), len(puts)


def pct(xs, q):
    """Linear interpolation between the closest ranks (numpy's default, Excel's PERCENTILE)."""
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100
    f = math.floor(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def mean(xs):
    return sum(xs) / len(xs) if xs else None


def summarize(R):
    out = {}
    for key in R["binaries"]:
        per = {}
        for d in R["settings"]["delays"]:
            S = [x for x in R["samples"] if x["binary"] == key and x["delay"] == d]
            if not S:
                continue
            lat = [x["latency_ms"] for x in S if x["latency_ms"] is not None]
            calls = [x["s3_calls"] for x in S if x["invalidated"]]
            budget = [x["budget"] for x in S if x.get("budget") is not None]
            first = [x["first_call_after_upload_ms"] for x in S
                     if x.get("first_call_after_upload_ms") is not None]
            r = {"samples": len(S), "invalidated": sum(1 for x in S if x["invalidated"]),
                 "timed": len(lat), "negative": sum(1 for v in lat if v < 0),
                 "min_ms": min(lat) if lat else None, "max_ms": max(lat) if lat else None,
                 "mean_ms": mean(lat),
                 "waited_mean_s": mean([x["waited_s"] for x in S if x["waited_s"] is not None]),
                 "put_sent_mean_s": mean([x["put_sent_s"] for x in S
                                          if x["put_sent_s"] is not None]),
                 "calls_mean": mean(calls), "calls_max": max(calls) if calls else None,
                 "budget_min": min(budget) if budget else None, "budget_mean": mean(budget),
                 "over_budget": sum(1 for x in S if x.get("within_budget") is False),
                 "first_call_after_upload_p50_ms": pct(first, 50),
                 "double_puts": sum(1 for x in S if x["marker_puts"] > 1),
                 # "on average": every request's calls against every request's budget
                 "calls_total": sum(calls), "budget_total": sum(budget)}
            for name, q in PCTS:
                r[name + "_ms"] = pct(lat, q)
            r["meets"] = bool(r["invalidated"] == r["samples"] and r["p99_ms"] is not None
                              and r["p99_ms"] <= TARGET_P99_MS and r["over_budget"] == 0)
            per["%g" % d] = r
        out[key] = per
    return out


def ms(v):
    if v is None:
        return "–"
    return ("%.0f" % v) if abs(v) >= 100 else ("%.1f" % v)


def num(v, f="%.2f"):
    return "–" if v is None else f % v


def upload_tables(R):
    m, st = R["machine"], R["settings"]
    B = R["binaries"]
    head = ("Marker upload end → CreateInvalidation (issue 25), real lsyncd (%s) and `aws s3 "
            "sync`, on %d cores (%s), Linux %s, %s; trees on %s; moto %s. %d site(s) per binary "
            "× %d round(s) per lsyncd delay, markers %.1f s apart; rounds alternate %s. "
            "Latency = the proxy's time of the daemon's POST …/invalidation − its time of "
            "the response to the aws CLI's PUT of the marker. Percentiles interpolate between "
            "ranks. Target: p99 ≤ %d ms at every delay; S3 calls per request ≤ waited/2 + 20 "
            "(waited = marker write → upload end). %.0f s in all." % (
                m["lsyncd"] or "lsyncd", m["nproc"], m["cpu"], m["kernel"], m["date"],
                m["tree_fs"], st["moto"], st["sites_per_binary"], st["rounds"], st["stagger_s"],
                " / ".join("%s = %s" % (k.upper(), B[k]["label"]) for k in B),
                TARGET_P99_MS, R.get("elapsed_s", 0)))
    rows = ["| binary | lsyncd delay (s) | samples | invalidated | p50 (ms) | p90 (ms) | "
            "p99 (ms) | max (ms) | min (ms) | write → PUT sent / upload end, mean (s) | "
            "first daemon call after upload end, p50 (ms) | S3 calls / request, mean / max | "
            "budget, min | over budget | met |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    S = R.get("summary", {})
    for d in st["delays"]:
        for k in B:
            r = S.get(k, {}).get("%g" % d)
            if not r:
                continue
            rows.append("| %s %s | %g | %d | %d%s | %s | %s | %s | %s | %s | %s / %s | %s | "
                        "%s / %s | %s | %d | %s |" % (
                            k.upper(), esc_md(B[k]["label"]), d, r["samples"], r["invalidated"],
                            (" (%d < 0)" % r["negative"]) if r["negative"] else "",
                            ms(r["p50_ms"]), ms(r["p90_ms"]), ms(r["p99_ms"]), ms(r["max_ms"]),
                            ms(r["min_ms"]), num(r["put_sent_mean_s"], "%.1f"),
                            num(r["waited_mean_s"], "%.1f"),
                            ms(r["first_call_after_upload_p50_ms"]),
                            num(r["calls_mean"], "%.1f"), num(r["calls_max"], "%d"),
                            num(r["budget_min"], "%.1f"), r["over_budget"],
                            "yes" if r["meets"] else "no"))
    for d in st["delays"]:
        for k in B:
            r = S.get(k, {}).get("%g" % d)
            if r and (r["timed"] < r["invalidated"] or r["double_puts"]):
                rows.append("")
                rows.append("%s, delay %g s: %d invalidated sample(s) without a timed upload end; "
                            "%d with the marker PUT more than once (the last PUT before the "
                            "invalidation counts)." % (k.upper(), d, r["invalidated"] - r["timed"],
                                                       r["double_puts"]))
    if R.get("deploys"):
        rows += ["", "Deploy (`wait_for = \"changes\"`, one per binary, lsyncd delay %g s): every "
                 "file rewritten, then the marker; lsyncd uploads them." % st["deploy_delay"], "",
                 "| binary | files | PUTs seen | uploads took (s) | marker's upload end before "
                 "the last's (s) | last upload end → CreateInvalidation (s) | marker's upload end "
                 "→ CreateInvalidation (s) | daemon S3 calls | request |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for x in R["deploys"]:
            rq = x.get("request") or {}
            rows.append("| %s | %d | %d | %s | %s | %s | %s | %d %s | %s |" % (
                x["binary"].upper(), x["files"], x["uploads"], num(x["uploads_s"]),
                num(x["marker_upload_before_last_s"]), num(x["after_last_upload_s"]),
                num(x["after_marker_upload_s"]), x["s3_calls"],
                " ".join("%s %d" % kv for kv in sorted(x["s3_kinds"].items())),
                esc_md(("%s, %s change(s) verified" % (rq.get("status"),
                                                      rq.get("verified_changes")))
                       if rq else x.get("why", "no invalidation"))))
    lost = [x for x in R["samples"] if not x["invalidated"]]
    if lost:
        rows += ["", "Markers without their invalidation:"]
        rows += ["- %s %s delay %g round %d: %s" % (x["binary"].upper(), x["site"], x["delay"],
                                                    x["round"] + 1, esc_md(x.get("why") or ""))
                 for x in lost[:20]]
    if R.get("error"):
        rows += ["", "**The run stopped early:** %s" % esc_md(R["error"])]
    return head, "\n".join(rows)


def esc_md(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def upload_write(R, base, chart=True):
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    head, tbl = upload_tables(R)
    with open(base + ".json", "w") as f:
        json.dump(R, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(head + "\n\n" + tbl + "\n")
    if chart:
        upload_chart(R, base + ".svg")
    return head, tbl


def upload_chart(R, path):
    """Per lsyncd delay, A's and B's p50 / p90 / p99 (three shades of the binary's colour),
    log scale in ms; the target (p99 ≤ 500 ms) dashed red."""
    S = R.get("summary", {})
    B = R["binaries"]
    delays = ["%g" % d for d in R["settings"]["delays"]]
    vals = [S[k][d][n + "_ms"] for k in S for d in S[k] for n, _ in PCTS
            if S[k][d].get(n + "_ms") is not None]
    W, H = 900, 440
    x0, y0, pw_, ph = 90, 80, 760, 280
    m = R["machine"]
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="16" text-anchor="middle">Marker upload end → '
           'CreateInvalidation, by lsyncd delay (ms, log scale)</text>' % (W // 2),
           '<text x="%d" y="40" fill="#555" text-anchor="middle">%s</text>' % (
               W // 2, esc("%d cores, Linux %s; lsyncd + aws s3 sync into moto; %d site(s) × %d "
                           "round(s) per delay and binary" % (
                               m["nproc"], m["kernel"], R["settings"]["sites_per_binary"],
                               R["settings"]["rounds"])))]
    pos = [v for v in vals if v > 0] + [TARGET_P99_MS]
    lo = 10 ** math.floor(math.log10(min(pos)))
    hi = 10 ** math.ceil(math.log10(max(pos) * 1.01))

    def y(v):
        return y0 + ph - ph * (math.log10(max(v, lo)) - math.log10(lo)) / (
            math.log10(hi) - math.log10(lo))
    t = lo
    while t <= hi * 1.0001:
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (
            x0, x0 + pw_, y(t), y(t)))
        out.append('<text x="%d" y="%.1f" text-anchor="end" fill="#555">%g</text>' % (
            x0 - 4, y(t) + 4, t))
        t *= 10
    out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#333"/>' % (
        x0, x0 + pw_, y0 + ph, y0 + ph))
    keys = list(B)
    gw = pw_ / max(1, len(delays))
    nb = len(keys) * len(PCTS)
    bw = gw / (nb + len(keys) + 1)
    shade = {"p50": 0.45, "p90": 0.7, "p99": 1.0}
    for i, d in enumerate(delays):
        gx = x0 + i * gw + bw
        for j, k in enumerate(keys):
            r = S.get(k, {}).get(d)
            for n, (name, _) in enumerate(PCTS):
                bx = gx + (j * (len(PCTS) + 1) + n) * bw
                v = r and r.get(name + "_ms")
                if v is None:
                    continue
                by = y(v)
                out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" '
                           'fill-opacity="%.2f"/>' % (bx, by, bw * 0.9, y0 + ph - by,
                                                      COLORS.get(k, "#777"), shade[name]))
                out.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%s'
                           '</text>' % (bx + bw * 0.45, by - 3, ms(v)))
                out.append('<text x="%.1f" y="%d" text-anchor="middle" font-size="10" '
                           'fill="#555">%s</text>' % (bx + bw * 0.45, y0 + ph + 13, name))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">lsyncd delay %s s</text>' % (
            x0 + i * gw + gw / 2, y0 + ph + 32, d))
    ty = y(TARGET_P99_MS)
    out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#c00" stroke-width="2" '
               'stroke-dasharray="4,3"/>' % (x0, x0 + pw_, ty, ty))
    lx = 90
    for k in keys:
        out.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>' % (
            lx, H - 30, COLORS.get(k, "#777")))
        lab = "%s: %s" % (k.upper(), B[k]["label"])
        lab = lab if len(lab) <= 40 else lab[:39] + "…"
        out.append('<text x="%d" y="%d">%s</text>' % (lx + 16, H - 20, esc(lab)))
        lx += 300
    out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#c00" stroke-width="2" '
               'stroke-dasharray="4,3"/>' % (lx, lx + 22, H - 24, H - 24))
    out.append('<text x="%d" y="%d">target p99 ≤ %d ms</text>' % (lx + 28, H - 20,
                                                                    TARGET_P99_MS))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
