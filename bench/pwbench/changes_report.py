"""The changes scenario's results: its tables, its chart, BASE.{json,md}, and the merge of
several runs (`bench.py changes-merge`)."""

import json
import os
import statistics

from .changes_tree import PLAN_COLORS, PLAN_LABEL
from .chart import esc
from .procfs import mb
from .report import fmt_x, ratio


def fmt_int(v):
    return "–" if v is None else "{:,}".format(int(v))


def per_pass_text(r):
    ps = r.get("passes") or []
    if not ps:
        return "–"

    def one(p):
        parts = []
        if p["list"]:
            parts.append("%s List" % fmt_int(p["list"]))
        if p["head"]:
            parts.append("%s Head" % fmt_int(p["head"]))
        return " + ".join(parts)
    if len(ps) <= 4:
        return " · ".join(one(p) for p in ps)
    n = sorted(p["list"] + p["head"] for p in ps)
    return "%d passes: first %s, median %s, last %s" % (
        len(ps), one(ps[0]), fmt_int(statistics.median(n)), one(ps[-1]))


def changes_shown(R):
    """Per case and plan, the run with the median last upload → CreateInvalidation time (none
    within the cap counts as the longest), with every run's time in `times_s`; skipped and
    failed plans as they are."""
    out = []
    for case in R["cases"]:
        plans = []
        for r in R["runs"]:
            if r["case"] == case and r["plan"] not in plans:
                plans.append(r["plan"])
        for plan in plans:
            rs = [r for r in R["runs"] if r["case"] == case and r["plan"] == plan]
            ok = [r for r in rs if "check_calls" in r]
            if not ok:
                out.append(rs[0])
                continue

            def t(r):
                v = r.get("last_upload_to_invalidation_s")
                return float("inf") if v is None else v
            ok.sort(key=t)
            pick = dict(ok[(len(ok) - 1) // 2])
            pick["times_s"] = [t(r) for r in ok]
            out.append(pick)
    return out


def changes_table(R):
    """Three tables: S3 calls; time and resources; the deploy itself."""
    L = []

    shown = changes_shown(R)

    def rows():
        for case, info in R["cases"].items():
            runs = [r for r in shown if r["case"] == case]
            base = next((r for r in runs if r["plan"] == "folders" and "check_calls" in r), None)
            for r in runs:
                yield case, info, r, base

    def spread(r):
        ts = r.get("times_s") or []
        if len(ts) < 2:
            return ""
        return " (%s over %d)" % ("–".join("%.2f" % x if x != float("inf") else "none"
                                           for x in (min(ts), max(ts))), len(ts))

    def cap_text(r):
        t = r.get("last_upload_to_invalidation_s")
        if t is not None:
            return "%.2f%s" % (t, spread(r))
        done = r.get("check_calls_after_last_upload", 0)
        return "none in %.0f s" % r.get("cap_s", 0) + (
            " (%s calls made)" % fmt_int(done) if done else "")

    L.append("| case | plan | check passes (looks) | S3 calls per pass | S3 calls in total "
             "| page bound: whole set · summed over the passes | calls ÷ bound | calls vs folders |")
    L.append("|---|---|---:|---|---:|---:|---:|---:|")
    for case, info, r, base in rows():
        plan = PLAN_LABEL.get(r["plan"], r["plan"])
        if "skipped" in r:
            L.append("| %s | %s | not run | | | %s · | | |" % (
                case, plan, fmt_int(info["page_bound_whole_set"])))
            continue
        if "error" in r:
            L.append("| %s | %s | failed: %s | | | | | |" % (case, plan, esc(r["error"][:100])))
            continue
        ck = "%s List" % fmt_int(r["lists"]) if r["lists"] else ""
        if r["heads"]:
            ck = (ck + " + " if ck else "") + "%s Head" % fmt_int(r["heads"])
        if not r.get("invalidation"):
            ck += " (unfinished)"
        L.append("| %s | %s | %d (%s) | %s | %s | %s · %s | %s | %s |" % (
            case, plan, len(r["passes"]), fmt_int(r.get("checks")), per_pass_text(r), ck or "0",
            fmt_int(info["page_bound_whole_set"]), fmt_int(r["page_bound_passes"]),
            fmt_x(ratio(r["check_calls"], r["page_bound_passes"] or None), 1),
            fmt_x(ratio(r["check_calls"], base["check_calls"]), 3)
            if base and r is not base else ""))
    L.append("")
    L.append("| case | plan | last upload → CreateInvalidation (s) | … until the first check "
             "call (s) | … from it (s) | … the emulator answering (s) | from it, vs folders | RSS at "
             "READY → peak (MB) | RSS growth | DB + WAL at the end (MB; after stop) | daemon CPU "
             "(s) |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case, info, r, base in rows():
        plan = PLAN_LABEL.get(r["plan"], r["plan"])
        if "skipped" in r:
            L.append("| %s | %s | not run | | | | | | | | |" % (
                case, plan))
            continue
        if "error" in r:
            continue
        fc = r.get("first_check_after_last_upload_s")
        eb = r.get("emulator_busy_after_last_upload_s")
        t = r.get("last_upload_to_invalidation_s")
        own = t - fc if t is not None and fc is not None else None
        bt = base_own = None
        if base and base.get("last_upload_to_invalidation_s") is not None and base.get(
                "first_check_after_last_upload_s") is not None:
            bt = base["last_upload_to_invalidation_s"]
            base_own = bt - base["first_check_after_last_upload_s"]
        L.append("| %s | %s | %s | %s | %s | %s | %s | %.1f → %.1f | %+.0f%% | %.2f (%.2f) | "
                 "%.2f |" % (
            case, plan, cap_text(r), "–" if fc is None else "%.2f" % fc,
            "–" if own is None else "%.2f" % own, "–" if eb is None else "%.2f" % eb,
            fmt_x(ratio(own, base_own), 3) if r is not base and own is not None and base_own
            else "",
            mb(r["rss_ready_kb"]), mb(r["hwm_kb"]),
            (r["hwm_kb"] - r["rss_ready_kb"]) / r["rss_ready_kb"] * 100,
            (r["db"] + r["db_wal"]) / 1e6, r["db_after_stop_bytes"] / 1e6, r["cpu_s"]))
    L.append("")
    L.append("| case | plan | deploy | PUTs (16 in flight), s, PUT/s | local rewrite (s) | "
             "last upload → CreateInvalidation (s) | check calls | changes verified / recorded / "
             "written | invalidated `/*`, every change verified |")
    L.append("|---|---|---:|---|---:|---:|---:|---|---|")
    for r in R["runs"]:
        if "check_calls" not in r:
            continue
        info = R["cases"][r["case"]]
        t = r.get("last_upload_to_invalidation_s")
        L.append("| %s | %s | %d | %s, %.1f, %.0f | %.1f | %s | %s | %s / %s / %s | %s |" % (
            r["case"], PLAN_LABEL.get(r["plan"], r["plan"]), r.get("rep", 0) + 1,
            fmt_int(info["files"] + 1),
            r["upload_s"], r["puts_per_s"], r["rewrite_s"],
            "%.2f" % t if t is not None else "none in %.0f s" % r.get("cap_s", 0),
            fmt_int(r["check_calls"]), fmt_int(r.get("verified_changes")),
            fmt_int(r.get("changes_recorded")), fmt_int(r["changes_expected"]),
            "yes" if r["covered"] else "**no**"))
    L.append("")
    for case, info in R["cases"].items():
        L.append("Case %s: %s (%s files, %s folders); populated before the daemon in %.0f s "
                 "(%.0f PUT/s); %d deploy(s) per plan, the median one shown above; %.0f s for "
                 "the case in all." % (
                     case, info["layout"], fmt_int(info["files"]), fmt_int(info["folders"]),
                     info["populate_s"], info["files"] / info["populate_s"], info.get("runs", 1),
                     info.get("wall_s", 0)))
    return "\n".join(L)


def changes_chart(R, path):
    """Two panels, log scale: S3 check calls per deploy (the page bound dashed) and last upload
    → CreateInvalidation; per case, one bar per plan ("not run" when not measured)."""
    import math
    cases = list(R["cases"])
    shown = changes_shown(R)
    plans = []
    for r in R["runs"]:
        if r["plan"] not in plans:
            plans.append(r["plan"])
    W, H = 900, 470
    pw_, ph = 380, 280
    m = R["machine"]
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="16" text-anchor="middle">wait_for = "changes": a whole '
           'deploy, uploaded in random order, marker %s</text>' % (
               W // 2, R["settings"].get("marker_uploaded", "last")),
           '<text x="%d" y="40" fill="#555" text-anchor="middle">%s</text>' % (W // 2, esc(
               "%d cores, Linux %s; moto %s behind a timestamping proxy; %d parallel PUTs" % (
                   m["nproc"], m["kernel"], R["settings"].get("moto", "?"),
                   R["settings"]["parallel_puts"])))]

    def val(case, plan, key):
        """(value, unfinished): a run with no invalidation within the cap shows what it did
        by then (its calls, the cap) as an open bar."""
        r = next((r for r in shown if r["case"] == case and r["plan"] == plan), None)
        if r is None or "check_calls" not in r:
            return None, False
        if not r.get("invalidation"):
            if key == "last_upload_to_invalidation_s":
                return r.get("cap_s"), True
            return r.get(key), True
        return r.get(key), False

    def own(case, plan):
        r = next((r for r in shown if r["case"] == case and r["plan"] == plan), None)
        if not r or r.get("last_upload_to_invalidation_s") is None or r.get(
                "first_check_after_last_upload_s") is None:
            return None
        return r["last_upload_to_invalidation_s"] - r["first_check_after_last_upload_s"]

    def panel(x0, title, key, bound_key, target, fmt, inner=None):
        y0 = 90
        vals = [val(c, p, key)[0] for c in cases for p in plans]
        if inner:
            vals += [inner(c, p) for c in cases for p in plans]
        vals = [v for v in vals if v]
        vals += [R["cases"][c]["page_bound_whole_set"] for c in cases] if bound_key else []
        if target:
            vals += list(target.values())
        if not vals:
            return
        lo = 10 ** math.floor(math.log10(min(vals)))
        hi = 10 ** math.ceil(math.log10(max(vals) * 1.01))

        def y(v):
            return y0 + ph - ph * (math.log10(max(v, lo)) - math.log10(lo)) / (
                math.log10(hi) - math.log10(lo))
        out.append('<text x="%d" y="%d" font-size="14" text-anchor="middle">%s</text>' % (
            x0 + pw_ // 2, y0 - 12, esc(title)))
        t = lo
        while t <= hi * 1.0001:
            out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (
                x0, x0 + pw_, y(t), y(t)))
            out.append('<text x="%d" y="%.1f" text-anchor="end" fill="#555">%s</text>' % (
                x0 - 4, y(t) + 4, "{:,}".format(int(round(t))) if t >= 1 else "%g" % t))
            t *= 10
        out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#333"/>' % (
            x0, x0 + pw_, y0 + ph, y0 + ph))
        gw = pw_ / max(1, len(cases))
        bw = gw / (len(plans) + 1.5)
        for i, c in enumerate(cases):
            gx = x0 + i * gw + bw * 0.75
            for j, p in enumerate(plans):
                v, unfinished = val(c, p, key)
                bx = gx + j * bw
                if not v:
                    out.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-size="11" '
                               'fill="%s">%s</text>' % (bx + bw * 0.45, y0 + ph - 4,
                                                       PLAN_COLORS.get(p, "#777"),
                                                       "not run" if v is None else "0"))
                    continue
                by = y(v)
                col = PLAN_COLORS.get(p, "#777")
                out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" %s/>' % (
                    bx, by, bw * 0.9, y0 + ph - by,
                    ('fill="white" stroke="%s" stroke-width="2" stroke-dasharray="5,3"' % col)
                    if unfinished else 'fill="%s"' % col))
                out.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-size="11">%s'
                           '</text>' % (bx + bw * 0.45, by - 3,
                                        ("&gt; " if unfinished else "") + fmt(v)))
                if inner and not unfinished:
                    # The part after the first check call, solid over the whole (pale): what
                    # the plan itself took, apart from the wait before the look.
                    iv = inner(c, p)
                    if iv:
                        out[-2] = out[-2].replace('fill="%s"' % col,
                                                  'fill="%s" fill-opacity="0.35"' % col)
                        iy = y(iv)
                        out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" '
                                   'fill="%s"/>' % (bx + bw * 0.15, iy, bw * 0.6, y0 + ph - iy,
                                                    col))
                        if y0 + ph - iy >= 16:  # the part's value inside its bar
                            out.append('<text x="%.1f" y="%.1f" text-anchor="middle" '
                                       'font-size="10" fill="white">%s</text>' % (
                                           bx + bw * 0.45, max(iy, by + 4) + 12, fmt(iv)))
                        else:
                            out.append('<text x="%.1f" y="%.1f" text-anchor="middle" '
                                       'font-size="10" fill="%s">%s</text>' % (
                                           bx + bw * 0.45, iy - 3, col, fmt(iv)))
            lx0, lx1 = gx - bw * 0.2, gx + len(plans) * bw
            if bound_key:
                b = R["cases"][c]["page_bound_whole_set"]
                out.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#c00" '
                           'stroke-width="2" stroke-dasharray="4,3"/>' % (lx0, lx1, y(b), y(b)))
            if target and c in target:
                out.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#c00" '
                           'stroke-width="2" stroke-dasharray="4,3"/>' % (
                               lx0, lx1, y(target[c]), y(target[c])))
            info = R["cases"][c]
            out.append('<text x="%.1f" y="%d" text-anchor="middle">%s files (%s folders)</text>'
                       % (x0 + i * gw + gw / 2, y0 + ph + 18, "{:,}".format(info["files"]),
                          "{:,}".format(info["folders"])))

    panel(80, "S3 check calls per deploy (log scale)", "check_calls", True, None,
          lambda v: "{:,}".format(int(v)))
    panel(510, "Last upload → CreateInvalidation (s, log)", "last_upload_to_invalidation_s",
          False, {"5k": 2.0}, lambda v: "%.0f" % v if v >= 100 else "%.1f" % v if v >= 1
          else "%.2f" % v, inner=own)
    out.append('<text x="%d" y="%d" fill="#555" text-anchor="middle">pale: the whole wait · '
               'solid: from the first check call after it</text>' % (700, 406))
    lx = 60
    for p in plans:
        out.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>' % (
            lx, H - 30, PLAN_COLORS.get(p, "#777")))
        out.append('<text x="%d" y="%d">%s</text>' % (lx + 16, H - 20, esc(PLAN_LABEL.get(p, p))))
        lx += 150
    out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#c00" stroke-width="2" '
               'stroke-dasharray="4,3"/>' % (lx, lx + 22, H - 24, H - 24))
    out.append('<text x="%d" y="%d">page bound · 2 s target (5k)</text>' % (lx + 28, H - 20))
    if any(not r.get("invalidation") for r in R["runs"] if "check_calls" in r):
        out.append('<text x="%d" y="%d" fill="#555">open bar: no invalidation within the cap '
                   '(calls made by then)</text>' % (W // 2, H - 4))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def changes_write(R, base, chart=True):
    """BASE.json, BASE.md (a header line, the tables, the notes) and BASE-chart.svg."""
    m = R["machine"]
    head = ("%s · %d cores, %.0f GB, Linux %s, trees on %s · purgewatch %s · load %.2f at start, "
            "%.2f at end · %.0f s" % (m["cpu"], m["nproc"], m["mem_gb"], m["kernel"],
                                     m["tree_fs"], R.get("purgewatch_label", "?"),
                                     R["load_at_start"][0], R["load_at_end"][0], R["elapsed_s"]))
    tbl = changes_table(R)
    R["table_md"] = tbl
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(R, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(head + "\n\n" + tbl + "\n" + "".join("\nnote: " + n for n in R["notes"]) + "\n")
    if chart:
        changes_chart(R, base + "-chart.svg")
    return head, tbl


def changes_merge(base, paths):
    Rs = []
    for p in paths:
        with open(p) as f:
            Rs.append(json.load(f))
    R = dict(Rs[0])
    R["cases"], R["runs"], R["notes"] = {}, [], []
    R["purgewatch_label"] = " / ".join(sorted(set(
        x.get("purgewatch_label") or x.get("purgewatch_binary", {}).get("path", "?") for x in Rs)))
    R["merged_from"] = [os.path.basename(p) for p in paths]
    for p, x in zip(paths, Rs):
        for c, info in x["cases"].items():
            R["cases"][c] = dict(info, results=os.path.basename(p), date=x["machine"]["date"],
                                 load=[x["load_at_start"][0], x["load_at_end"][0]],
                                 purgewatch=x.get("purgewatch_label")
                                 or x.get("purgewatch_binary", {}).get("path"))
        R["runs"] += x["runs"]
        R["notes"] += ["%s: %s" % (os.path.basename(p), n) for n in x["notes"]]
    R["elapsed_s"] = sum(x["elapsed_s"] for x in Rs)
    R["load_at_end"] = Rs[-1]["load_at_end"]
    head, tbl = changes_write(R, base)
    print(head + "\n\n" + tbl)
    return 0
