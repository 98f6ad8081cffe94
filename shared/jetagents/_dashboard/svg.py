"""Pictures drawn on the server as inline SVG (no JavaScript, no chart library): the partition
ring, and line charts of figures over time. Every text that came from the cluster (host ids)
is escaped; numbers are formatted here.

>>> "<svg" in ring_svg(["h1", "h2", "", "h1"])
True
>>> "<polyline" in line_chart({"p50": [(0.0, 1.0), (1.0, 2.0)]}, unit="ms")
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

# colours for hosts (and series), picked in order; readable on white, distinct for ~10
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
UNOWNED_COLOUR = "#d9dde3"


def colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per distinct name, in sorted order (stable across pages and reloads)."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(sorted({n for n in names if n}))}


def ring_svg(owners: Sequence[str], size: int = 360) -> Markup:
    """The ring: one arc per partition, coloured by its owner (grey: nobody), with the
    partition numbers at every eighth arc and a legend of hosts and their share."""
    n = max(1, len(owners))
    c = size / 2
    r_out, r_in = c - 24, c - 70
    palette = colours(owners)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 220}" height="{size}" '
        f'role="img" aria-label="partition ring" id="ring-svg">'
    ]
    gap = 0.004 if n > 1 else 0.0
    for p, owner in enumerate(owners):
        a0 = 2 * math.pi * p / n - math.pi / 2 + gap
        a1 = 2 * math.pi * (p + 1) / n - math.pi / 2 - gap
        large = 1 if a1 - a0 > math.pi else 0
        pts = [
            (c + r_out * math.cos(a0), c + r_out * math.sin(a0)),
            (c + r_out * math.cos(a1), c + r_out * math.sin(a1)),
            (c + r_in * math.cos(a1), c + r_in * math.sin(a1)),
            (c + r_in * math.cos(a0), c + r_in * math.sin(a0)),
        ]
        d = (
            f"M{pts[0][0]:.1f},{pts[0][1]:.1f} A{r_out:.0f},{r_out:.0f} 0 {large} 1 {pts[1][0]:.1f},{pts[1][1]:.1f} "
            f"L{pts[2][0]:.1f},{pts[2][1]:.1f} A{r_in:.0f},{r_in:.0f} 0 {large} 0 {pts[3][0]:.1f},{pts[3][1]:.1f} Z"
        )
        fill = palette.get(owner, UNOWNED_COLOUR)
        title = escape(f"partition {p}: {owner or 'unowned'}")
        parts.append(
            f'<path d="{d}" fill="{fill}" data-partition="{p}" data-owner="{escape(owner)}">'
            f"<title>{title}</title></path>"
        )
        if p % max(1, n // 8) == 0:
            am = (a0 + a1) / 2
            x, y = c + (r_out + 12) * math.cos(am), c + (r_out + 12) * math.sin(am)
            parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="10" text-anchor="middle" dy="3">{p}</text>')
    counts = {h: sum(1 for o in owners if o == h) for h in palette}
    unowned = sum(1 for o in owners if not o)
    parts.append(f'<text x="{c:.0f}" y="{c:.0f}" text-anchor="middle" font-size="14">{len(owners)} partitions</text>')
    y = 30
    for host, colour in palette.items():
        parts.append(f'<rect x="{size + 10}" y="{y - 11}" width="14" height="14" fill="{colour}"/>')
        parts.append(f'<text x="{size + 30}" y="{y}" font-size="13">{escape(host)} ({counts[host]})</text>')
        y += 22
    if unowned:
        parts.append(f'<rect x="{size + 10}" y="{y - 11}" width="14" height="14" fill="{UNOWNED_COLOUR}"/>')
        parts.append(f'<text x="{size + 30}" y="{y}" font-size="13">unowned ({unowned})</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _nice(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    unit: str,
    width: int = 660,
    height: int = 180,
    chart_id: str = "",
) -> Markup:
    """Lines of (seconds ago or any x, value) points sharing one y axis from 0, with the
    last value of each series in the legend. No points: an empty frame that says so."""
    pad_l, pad_b, pad_t, pad_r = 48, 20, 10, 200
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    ident = f' id="{escape(chart_id)}"' if chart_id else ""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img"{ident}>']
    out.append(f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="#fafbfc" stroke="#e1e5eb"/>')
    if not xs:
        out.append(
            f'<text x="{pad_l + 10}" y="{pad_t + h / 2:.0f}" font-size="12" fill="#6b7585">no figures yet</text>'
        )
        out.append("</svg>")
        return Markup("".join(out))
    x0, x1 = min(xs), max(xs)
    top = max(ys) * 1.1 or 1.0
    span = (x1 - x0) or 1.0
    for frac in (0.0, 0.5, 1.0):
        yy = pad_t + h - frac * h
        out.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e1e5eb"/>')
        out.append(
            f'<text x="{pad_l - 4}" y="{yy + 4:.1f}" font-size="10" text-anchor="end">{_nice(top * frac)}</text>'
        )
    out.append(f'<text x="{pad_l}" y="{height - 4}" font-size="10">{escape(unit)} · last {span:.0f} s</text>')
    ly = pad_t + 12
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        if pts:
            coords = " ".join(f"{pad_l + (x - x0) / span * w:.1f},{pad_t + h - y / top * h:.1f}" for x, y in pts)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        last = _nice(pts[-1][1]) if pts else "-"
        out.append(f'<rect x="{pad_l + w + 8}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>')
        out.append(
            f'<text x="{pad_l + w + 22}" y="{ly}" font-size="11" class="last" data-series="{escape(name)}">'
            f"{escape(name)}: {last}</text>"
        )
        ly += 16
    out.append("</svg>")
    return Markup("".join(out))
