"""The watchers scenario's summary: medians, ratios, the targets of issue 6, the markdown
tables."""

import statistics

from .common import ALL_KINDS, KINDS, NOTIFY_KINDS
from .procfs import mb


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(R):
    S = {"trees": {}}
    for tname in R["trees"]:
        per = {}
        for kind in ALL_KINDS:
            rs = [r for r in R["runs"] if r["tree"] == tname and r["kind"] == kind and "setup_s" in r]
            if not rs:
                continue
            per[kind] = {
                "runs": len(rs),
                "setup_s": med(r["setup_s"] for r in rs),
                "rss_ready_mb": med(mb(r["rss_ready_kb"]) for r in rs),
                "rss_ready_anon_mb": med(mb(r["rss_ready_anon_kb"]) for r in rs),
                "rss_ready_file_mb": med(mb(r["rss_ready_file_kb"]) for r in rs),
                "rss_after_storm_anon_mb": med(mb(r["rss_after_storm_anon_kb"]) for r in rs),
                "rss_after_storm_file_mb": med(mb(r["rss_after_storm_file_kb"]) for r in rs),
                "rss_storm_max_mb": med(mb(r["rss_storm_max_kb"]) for r in rs),
                "rss_growth": med(r["rss_growth"] for r in rs),
                "rss_growth_max": max(r["rss_growth"] for r in rs),
                "storm_cpu_s": med(r["storm_cpu_s"] for r in rs),
                "storm_rate": med(r["storm_rate"] for r in rs),
                "storm_wakeups": med(r.get("storm_wakeups") for r in rs),
                "storm_watch_thread_cpu_s": med(r.get("storm_watch_thread_cpu_s") for r in rs),
                "burst_cpu_s": med(r["burst_cpu_s"] for r in rs),
                "missed_storm": sum(r["missed_storm"] for r in rs),
                "missed_burst": sum(r["missed_burst"] for r in rs),
                "markers_expected": sum(r["markers_expected"] for r in rs),
                "overflow_at_start": sum(r.get("overflow_at_start", 0) for r in rs),
                "overflow_total": sum(r.get("overflow_total", 0) for r in rs),
                "resets": sum(r.get("resets", 0) for r in rs),
                "duplicate_requests": sum(r.get("duplicate_requests", 0) for r in rs),
            }
        S["trees"][tname] = per
    base = {}
    for kind in ALL_KINDS:
        rs = [b for b in R.get("baseline", []) if b["kind"] == kind]
        if rs:
            base[kind] = {"setup_s": med(b["setup_s"] for b in rs),
                          "rss_ready_mb": med(mb(b["rss_ready_kb"]) for b in rs),
                          "rss_ready_anon_mb": med(mb(b["rss_ready_anon_kb"]) for b in rs),
                          "rss_ready_file_mb": med(mb(b["rss_ready_file_kb"]) for b in rs)}
    S["empty_tree"] = base
    # Setup = empty-tree cost + b·folders + c·files, solved from trees S and B (two equations);
    # RSS per folder from B − S.
    model = {}
    if "S" in R["trees"] and "B" in R["trees"]:
        fS, nS = R["trees"]["S"]["folders"] - 1, R["trees"]["S"]["files"]
        fB, nB = R["trees"]["B"]["folders"] - 1, R["trees"]["B"]["files"]
        det = fS * nB - fB * nS
        for kind in ALL_KINDS:
            s_, b_ = S["trees"]["S"].get(kind), S["trees"]["B"].get(kind)
            if not s_ or not b_ or kind not in base or det == 0:
                continue
            ns = s_["setup_s"] - base[kind]["setup_s"]
            nb = b_["setup_s"] - base[kind]["setup_s"]
            model[kind] = {
                "setup_us_per_folder": (ns * nB - nb * nS) / det * 1e6,
                "setup_us_per_file": (fS * nb - fB * ns) / det * 1e6,
                "rss_bytes_per_folder": (b_["rss_ready_mb"] - s_["rss_ready_mb"]) * 1e6 / (fB - fS),
            }
    S["cost_model"] = model
    lat = R.get("latency")
    if lat:
        S["latency"] = {
            "head_p50_ms": med(lat["head_ms"]), "head_p99_ms": pct(lat["head_ms"], 0.99),
            "head_max_ms": max(lat["head_ms"]) if lat["head_ms"] else None,
            "inv_p50_ms": med(lat["invalidation_ms"]),
            "inv_p99_ms": pct(lat["invalidation_ms"], 0.99),
            "inv_emulator_p50_ms": med(lat.get("emulator_ms", [])),
            "inv_own_p50_ms": med([a - b for a, b in zip(lat["invalidation_ms"],
                                                         lat.get("emulator_ms", []))]),
            "samples": len(lat["head_ms"]), "lost": lat["lost"],
            "proxy_p50_ms": med(lat.get("proxy_delay_ms", [])),
            "proxy_p99_ms": pct(lat.get("proxy_delay_ms", []), 0.99),
            "timeline": timeline(lat.get("timelines", []))}
    sh = R.get("shell_peer")
    if sh:
        S["shell_peer"] = {"inv_p50_ms": med(sh["invalidation_ms"]),
                           "inv_emulator_p50_ms": med(sh.get("emulator_ms", [])),
                           "samples": len(sh["invalidation_ms"]), "lost": sh["lost"]}
    return S


def timeline(samples):
    """The median request timeline of the samples that share the most common shape: each step
    (a request sent, a response started) and the median ms since the step before it. Gaps that
    end in RESP are the emulator's; the others are the daemon's."""
    shapes = {}
    for tl in samples:
        shapes.setdefault(tuple(m for m, _ in tl), []).append([t for _, t in tl])
    if not shapes:
        return []
    shape, times = max(shapes.items(), key=lambda kv: len(kv[1]))
    out = []
    for i, m in enumerate(shape):
        gaps = [t[i] - (t[i - 1] if i else 0.0) for t in times]
        out.append([m, round(med(gaps), 3)])
    return out


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def targets(R, S):
    """[(target, measured, verdict)] — verdict True/False/None (not measured)."""
    T = []
    tr = S["trees"]
    names = list(tr)

    def g(t, k, m):
        return tr.get(t, {}).get(k, {}).get(m)

    limits_setup = {"S": 0.6, "B": 0.75}
    limits_rss = {"S": 12.0, "B": 25.0}
    for t in names:
        r = ratio(g(t, "purgewatch", "setup_s"), g(t, "inotifywait", "setup_s"))
        lim = limits_setup.get(t, 0.6)
        T.append(("Setup to READY on %s ≤ %.2f× inotifywait" % (t, lim),
                  fmt_x(r), None if r is None else r <= lim))
    for t in names:
        v = g(t, "purgewatch", "rss_ready_mb")
        lim = limits_rss.get(t, 12.0)
        T.append(("RSS at READY on %s ≤ %g MB" % (t, lim), fmt_n(v, " MB"),
                  None if v is None else v <= lim))
    for t in names:
        v = tr.get(t, {}).get("purgewatch", {}).get("rss_growth_max")
        T.append(("RSS growth through the storm on %s < 10%% (worst run)" % t, fmt_pct(v),
                  None if v is None else v < 0.10))
    for t in names:
        r = ratio(g(t, "purgewatch", "storm_cpu_s"), g(t, "inotifywait", "storm_cpu_s"))
        T.append(("Paced storm CPU on %s ≤ 0.6× inotifywait" % t, fmt_x(r),
                  None if r is None else r <= 0.6))
        r = ratio(g(t, "purgewatch", "storm_cpu_s"), g(t, "lsyncd", "storm_cpu_s"))
        T.append(("Paced storm CPU on %s ≤ 0.03× lsyncd" % t, fmt_x(r, 3),
                  None if r is None else r <= 0.03))
        r = ratio(g(t, "purgewatch", "burst_cpu_s"), g(t, "inotifywait", "burst_cpu_s"))
        T.append(("Burst (cp -r) CPU on %s ≤ 1.0× inotifywait" % t, fmt_x(r),
                  None if r is None else r <= 1.0))
    missed = sum((g(t, "purgewatch", "missed_storm") or 0) + (g(t, "purgewatch", "missed_burst") or 0)
                 for t in names)
    expected = sum(g(t, "purgewatch", "markers_expected") or 0 for t in names)
    T.append(("No marker missed by purgewatch (storms and bursts)",
              "%d of %d missed" % (missed, expected), missed == 0 and expected > 0))
    ov0 = sum(g(t, "purgewatch", "overflow_at_start") or 0 for t in names)
    ovt = sum(g(t, "purgewatch", "overflow_total") or 0 for t in names)
    T.append(("No overflow rescan at start (any run counted)",
              "%d at start, %d in all" % (ov0, ovt), ov0 == 0))
    L = S.get("latency")
    if L:
        T.append(("Marker close → HeadObject sent, p99 ≤ 2 ms (settle 0)",
                  "p50 %s, p99 %s (%d samples)" % (fmt_n(L["head_p50_ms"], " ms", 2),
                                                   fmt_n(L["head_p99_ms"], " ms", 2), L["samples"]),
                  None if L["head_p99_ms"] is None else L["head_p99_ms"] <= 2.0))
    sh = S.get("shell_peer")
    if L and sh:
        r = ratio(sh["inv_p50_ms"], L["inv_p50_ms"])
        T.append(("Marker → CreateInvalidation ≥ 50× faster than the shell peer",
                  "%s vs %s: %s" % (fmt_n(L["inv_p50_ms"], " ms", 1), fmt_n(sh["inv_p50_ms"], " ms", 0),
                                    fmt_x(r, 0)),
                  None if r is None else r >= 50))
    idl = R.get("idle")
    if idl:
        a = idl["watchers"]["purgewatch"]
        b = idl["watchers"]["purgewatch (WatchdogSec=60)"]
        ok = a["voluntary"] <= 2 and b["voluntary"] <= 2 + 4 * b.get("watchdog_pings", 0)
        T.append(("Idle: no wakeups beyond the watchdog's (%d s window)" % idl["window_s"],
                  "%d switches without watchdog; %d with WatchdogSec=60 (%d pings)" % (
                      a["voluntary"], b["voluntary"], b.get("watchdog_pings", 0)), ok))
    if "S" in tr and "B" in tr and "purgewatch" in tr["S"] and "purgewatch" in tr["B"]:
        fr = R["trees"]["B"]["folders"] / R["trees"]["S"]["folders"]
        e = S["empty_tree"].get("purgewatch", {})
        for m, label in (("setup_s", "setup"), ("rss_ready_mb", "RSS")):
            b, s = g("B", "purgewatch", m), g("S", "purgewatch", m)
            raw = ratio(b, s)
            net = ratio(b - e.get(m, 0), s - e.get(m, 0)) if e and b and s else None
            ok = None if net is None else abs(net / fr - 1) <= 0.25
            T.append(("Scaling: %s B/S within ±25%% of the folder ratio %.2f" % (label, fr),
                      "%s net of the empty-tree cost (raw %s)" % (fmt_n(net, "", 2), fmt_n(raw, "", 2)),
                      ok))
    return T


def fmt_n(v, unit="", nd=2):
    return "–" if v is None else ("%." + str(nd) + "f%s") % (v, unit)


def fmt_x(v, nd=2):
    return "–" if v is None else ("%." + str(nd) + "f×") % v


def fmt_pct(v):
    return "–" if v is None else "%+.1f%%" % (v * 100)


def table(R, S, T):
    L = []
    tr = S["trees"]
    L.append("| metric | tree | purgewatch | inotifywait | lsyncd | pw / iw | pw / ls |")
    L.append("|---|---|---:|---:|---:|---:|---:|")

    def row(label, key, f, nd=2):
        for t in tr:
            v = {k: tr[t].get(k, {}).get(key) for k in KINDS}
            L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                label, t, f(v["purgewatch"]), f(v["inotifywait"]), f(v["lsyncd"]),
                fmt_x(ratio(v["purgewatch"], v["inotifywait"]), nd),
                fmt_x(ratio(v["purgewatch"], v["lsyncd"]), 3)))

    row("setup to ready (s)", "setup_s", lambda v: fmt_n(v, "", 3))
    row("RSS at ready (MB)", "rss_ready_mb", lambda v: fmt_n(v, "", 1))
    row("RSS at ready: anonymous (MB)", "rss_ready_anon_mb", lambda v: fmt_n(v, "", 1))
    row("RSS at ready: file-backed (MB)", "rss_ready_file_mb", lambda v: fmt_n(v, "", 1))
    row("RSS max in storm (MB)", "rss_storm_max_mb", lambda v: fmt_n(v, "", 1))
    row("RSS after storm: anonymous (MB)", "rss_after_storm_anon_mb", lambda v: fmt_n(v, "", 1))
    row("RSS after storm: file-backed (MB)", "rss_after_storm_file_mb", lambda v: fmt_n(v, "", 1))
    for t in tr:
        v = {k: tr[t].get(k, {}).get("rss_growth") for k in KINDS}
        L.append("| RSS growth through storm | %s | %s | %s | %s | | |" % (
            t, fmt_pct(v["purgewatch"]), fmt_pct(v["inotifywait"]), fmt_pct(v["lsyncd"])))
    row("storm CPU, paced (s)", "storm_cpu_s", lambda v: fmt_n(v, "", 2))
    for t in tr:
        v = tr[t].get("purgewatch", {}).get("storm_watch_thread_cpu_s")
        L.append("| … of which purgewatch's watch thread (s) | %s | %s | | | | |" % (t, fmt_n(v, "", 2)))
    row("wakeups in the storm (voluntary ctx switches)", "storm_wakeups", lambda v: fmt_n(v, "", 0))
    row("burst CPU, cp -r (s)", "burst_cpu_s", lambda v: fmt_n(v, "", 3))
    for t in tr:
        cells = []
        for k in KINDS:
            d = tr[t].get(k)
            cells.append("–" if not d else "%d+%d of %d" % (d["missed_storm"], d["missed_burst"],
                                                          d["markers_expected"]))
        L.append("| markers missed (storm+burst, all runs) | %s | %s | %s | %s | | |" % (t, *cells))
    for t in tr:
        cells = []
        for k in KINDS:
            d = tr[t].get(k)
            if not d:
                cells.append("–")
            elif k == "lsyncd":
                cells.append("%d (%d resets)" % (d["overflow_total"], d["resets"]))
            else:
                cells.append("%d (%d at start)" % (d["overflow_total"], d["overflow_at_start"]))
        L.append("| queue overflows (all runs) | %s | %s | %s | %s | | |" % (t, *cells))
    for t in tr:
        v = {k: tr[t].get(k, {}).get("storm_rate") for k in KINDS}
        L.append("| storm writes/s achieved | %s | %s | %s | %s | | |" % (
            t, fmt_n(v["purgewatch"], "", 0), fmt_n(v["inotifywait"], "", 0), fmt_n(v["lsyncd"], "", 0)))
    e = S.get("empty_tree", {})
    if e:
        v = {k: e.get(k, {}).get("setup_s") for k in KINDS}
        L.append("| setup, empty tree (s) | – | %s | %s | %s | %s | %s |" % (
            fmt_n(v["purgewatch"], "", 3), fmt_n(v["inotifywait"], "", 3), fmt_n(v["lsyncd"], "", 3),
            fmt_x(ratio(v["purgewatch"], v["inotifywait"])), fmt_x(ratio(v["purgewatch"], v["lsyncd"]), 3)))
        v = {k: e.get(k, {}).get("rss_ready_mb") for k in KINDS}
        L.append("| RSS, empty tree (MB) | – | %s | %s | %s | %s | %s |" % (
            fmt_n(v["purgewatch"], "", 1), fmt_n(v["inotifywait"], "", 1), fmt_n(v["lsyncd"], "", 1),
            fmt_x(ratio(v["purgewatch"], v["inotifywait"])), fmt_x(ratio(v["purgewatch"], v["lsyncd"]), 3)))
    cm = S.get("cost_model", {})
    if cm:
        for key, label, nd in (("setup_us_per_folder", "setup per folder (µs, fitted)", 2),
                               ("setup_us_per_file", "setup per file (µs, fitted)", 2),
                               ("rss_bytes_per_folder", "RSS per folder (bytes, B − S)", 0)):
            v = {k: cm.get(k, {}).get(key) for k in KINDS}
            L.append("| %s | – | %s | %s | %s | %s | %s |" % (
                label, fmt_n(v["purgewatch"], "", nd), fmt_n(v["inotifywait"], "", nd),
                fmt_n(v["lsyncd"], "", nd), fmt_x(ratio(v["purgewatch"], v["inotifywait"])),
                fmt_x(ratio(v["purgewatch"], v["lsyncd"]), 3)))
    idl = R.get("idle")
    if idl:
        w = idl["watchers"]
        L.append("| idle voluntary ctx switches / %d s | %s | %s (%s with WatchdogSec=60, %d pings) "
                 "| %s | %s | | |" % (
                     idl["window_s"], idl["tree"], w["purgewatch"]["voluntary"],
                     w["purgewatch (WatchdogSec=60)"]["voluntary"],
                     w["purgewatch (WatchdogSec=60)"].get("watchdog_pings", 0),
                     w["inotifywait"]["voluntary"], w["lsyncd"]["voluntary"]))
    lat, sh = S.get("latency"), S.get("shell_peer")
    if lat:
        L.append("| marker close → HeadObject, p50 / p99 (ms) | %s | %s / %s | | | | |" % (
            R["latency"]["tree"], fmt_n(lat["head_p50_ms"], "", 2), fmt_n(lat["head_p99_ms"], "", 2)))
        L.append("| (the proxy's own stamping delay, p50 / p99, ms) | | %s / %s | | | | |" % (
            fmt_n(lat["proxy_p50_ms"], "", 3), fmt_n(lat["proxy_p99_ms"], "", 3)))
        L.append("| marker → CreateInvalidation, median (ms) | %s | %s | shell peer: %s | | %s faster | |" % (
            R["latency"]["tree"], fmt_n(lat["inv_p50_ms"], "", 1),
            fmt_n(sh["inv_p50_ms"], "", 0) if sh else "–",
            fmt_x(ratio(sh["inv_p50_ms"], lat["inv_p50_ms"]), 0) if sh else "–"))
        L.append("| … of which waiting on the emulator (ms) | %s | %s | shell peer: %s | | | |" % (
            R["latency"]["tree"], fmt_n(lat["inv_emulator_p50_ms"], "", 1),
            fmt_n(sh.get("inv_emulator_p50_ms"), "", 1) if sh else "–"))
        if lat.get("timeline"):
            # → GET 0.41 means the daemon sent the GET 0.41 ms after the step before it.
            L.append("| … step by step, median ms (→ sent by purgewatch, ⇐ the emulator's answer "
                     "began) | %s | %s | | | | |" % (R["latency"]["tree"], " · ".join(
                         ("⇐ %.2f" if m == "RESP" else "→ " + m + " %.2f") % g
                         for m, g in lat["timeline"])))
    for kind in NOTIFY_KINDS:
        if any(kind in tr[t] for t in tr):
            L.append("")
            L.append(notify_table(S, kind))
    L.append("")
    L.append("| target (issue 6) | measured | met |")
    L.append("|---|---|---|")
    for name, val, ok in T:
        L.append("| %s | %s | %s |" % (name, val, {True: "yes", False: "**no**", None: "not measured"}[ok]))
    return "\n".join(L)


NOTIFY_LABELS = {"notify": "notify 8 (`notify-probe`)",
                 "notify9": "notify 9 rc, narrowed (`notify-probe --v9`)"}


def notify_table(S, kind):
    """A notify watcher (recursive) beside inotifywait and purgewatch, when it ran
    (--kinds ...,notify or ...,notify9)."""
    tr = S["trees"]
    L = ["| %s | tree | %s | inotifywait | purgewatch | %s / iw | pw / %s |" % (
        NOTIFY_LABELS[kind], kind, kind, kind), "|---|---|---:|---:|---:|---:|---:|"]

    def row(label, key, f, nd=2):
        for t in tr:
            v = {k: tr[t].get(k, {}).get(key) for k in (kind, "inotifywait", "purgewatch")}
            L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                label, t, f(v[kind]), f(v["inotifywait"]), f(v["purgewatch"]),
                fmt_x(ratio(v[kind], v["inotifywait"]), nd),
                fmt_x(ratio(v["purgewatch"], v[kind]), nd)))

    row("setup to ready (s)", "setup_s", lambda v: fmt_n(v, "", 3))
    row("RSS at ready (MB)", "rss_ready_mb", lambda v: fmt_n(v, "", 1))
    row("storm CPU, paced (s)", "storm_cpu_s", lambda v: fmt_n(v, "", 2))
    row("wakeups in the storm", "storm_wakeups", lambda v: fmt_n(v, "", 0))
    row("burst CPU, cp -r (s)", "burst_cpu_s", lambda v: fmt_n(v, "", 3))
    for t in tr:
        cells = []
        for k in (kind, "inotifywait", "purgewatch"):
            d = tr[t].get(k)
            cells.append("–" if not d else "%d+%d of %d; %d overflow(s)" % (
                d["missed_storm"], d["missed_burst"], d["markers_expected"], d["overflow_total"]))
        L.append("| markers missed; queue overflows | %s | %s | %s | %s | | |" % (t, *cells))
    return "\n".join(L)
