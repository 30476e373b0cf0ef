"""The watchers scenario's chart (an SVG written by hand) and what SVG text needs."""

from .common import KINDS


COLORS = {"purgewatch": "#1f6fb4", "inotifywait": "#e07b16", "lsyncd": "#2b9a3a"}


def chart(S, path, subtitle):
    """Two panels: setup to ready, paced storm CPU (log scale); per tree, one bar per watcher."""
    import math
    trees = list(S["trees"])
    W, H = 900, 440
    pw_, ph = 380, 280
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="16" text-anchor="middle">purgewatch vs inotifywait -m -r '
           'vs lsyncd (medians)</text>' % (W // 2),
           '<text x="%d" y="40" fill="#555" text-anchor="middle">%s</text>' % (W // 2, esc(subtitle))]

    def panel(x0, title, key, logscale, target):
        y0 = 90
        vals = [S["trees"][t].get(k, {}).get(key) for t in trees for k in KINDS]
        vals = [v for v in vals if v]
        if not vals:
            return
        vmax = max(vals)
        if logscale:
            lo = 10 ** math.floor(math.log10(min(vals)))
            hi = 10 ** math.ceil(math.log10(vmax))

            def y(v):
                return y0 + ph - ph * (math.log10(max(v, lo)) - math.log10(lo)) / (
                    math.log10(hi) - math.log10(lo))
            ticks = []
            t = lo
            while t <= hi * 1.0001:
                ticks.append(t)
                t *= 10
        else:
            step = nice_step(vmax / 5)
            hi = step * math.ceil(vmax / step)

            def y(v):
                return y0 + ph - ph * v / hi
            ticks = [step * i for i in range(int(round(hi / step)) + 1)]
        out.append('<text x="%d" y="%d" font-size="14" text-anchor="middle">%s</text>' % (
            x0 + pw_ // 2, y0 - 12, esc(title)))
        for t in ticks:
            out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (
                x0, x0 + pw_, y(t), y(t)))
            out.append('<text x="%d" y="%.1f" text-anchor="end" fill="#555">%s</text>' % (
                x0 - 4, y(t) + 4, ("%g" % t)))
        out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#333"/>' % (
            x0, x0 + pw_, y0 + ph, y0 + ph))
        gw = pw_ / max(1, len(trees))
        bw = gw / (len(KINDS) + 1.5)
        for i, t in enumerate(trees):
            gx = x0 + i * gw + bw * 0.75
            for j, k in enumerate(KINDS):
                v = S["trees"][t].get(k, {}).get(key)
                if not v:
                    continue
                bx = gx + j * bw
                by = y(v)
                out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>' % (
                    bx, by, bw * 0.9, y0 + ph - by, COLORS[k]))
                out.append('<text x="%.1f" y="%.1f" text-anchor="middle" font-size="11">%s</text>' % (
                    bx + bw * 0.45, by - 3, ("%.2f" % v) if v < 10 else ("%.1f" % v)))
                iw = S["trees"][t].get("inotifywait", {}).get(key)
                if k == "purgewatch" and iw and t in target:
                    ty = y(target[t] * iw)
                    out.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#c00" '
                               'stroke-width="2" stroke-dasharray="4,3"/>' % (
                                   bx - 3, bx + bw * 0.9 + 3, ty, ty))
            f = S_FOLDERS.get(t)
            out.append('<text x="%.1f" y="%d" text-anchor="middle">tree %s%s</text>' % (
                x0 + i * gw + gw / 2, y0 + ph + 18, t, (" (%s folders)" % f) if f else ""))

    panel(70, "Setup to ready (s)", "setup_s", False, {"S": 0.6, "B": 0.75})
    panel(510, "Paced storm CPU (s, log scale)", "storm_cpu_s", True, {"S": 0.6, "B": 0.6})
    lx = 110
    out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#c00" stroke-width="2" '
               'stroke-dasharray="4,3"/>' % (lx + 400, lx + 422, H - 24, H - 24))
    out.append('<text x="%d" y="%d">target for purgewatch (0.6× / 0.75× inotifywait)</text>' % (
        lx + 428, H - 20))
    for k in KINDS:
        out.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>' % (lx, H - 30, COLORS[k]))
        out.append('<text x="%d" y="%d">%s</text>' % (lx + 16, H - 20, k))
        lx += 130
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


S_FOLDERS = {}


def chart_subtitle(R):
    m, st = R["machine"], R["settings"]
    return "%d cores, Linux %s, trees on %s; %d run(s); paced storm: {:,} rewrites at {:,}/s".format(
        st["storm_writes"], st["storm_rate"]) % (m["nproc"], m["kernel"], m["tree_fs"],
                                               R["runs_planned"])


def nice_step(x):
    import math
    if x <= 0:
        return 1
    e = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= x:
            return m * e
    return 10 * e


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
