"""The sweep's chart: fidelity and drift against epoch, one line per variant (at its recommended weight).

Drawn with Pillow like library.evaluation.score_report's per-run chart, whose axes
style it follows; EMA files are left out of the lines (their numbers are in scores.csv).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from library.evaluation.score_report import LINE_COLOURS


def _px(frame: tuple[float, ...], x: float, y: float) -> tuple[float, float]:
    """Data (x, y) to pixels inside a panel frame (x0, y0, x1, y1, xmin, xmax, ymin, ymax)."""
    x0, y0, x1, y1, xmin, xmax, lo, hi = frame
    fx = 0.5 if xmax == xmin else (x - xmin) / (xmax - xmin)
    return x0 + fx * (x1 - x0), y1 - (y - lo) / (hi - lo) * (y1 - y0)


def variant_series(row: Any, key: str) -> list[tuple[int, float]]:
    """(epoch, value) of a ranked variant's non-EMA files at its recommended weight, by epoch."""
    pts = {int(s["epoch"]): float(s[key]) for s in row.scores
           if not s.get("ema") and s.get("epoch") is not None and s["weight"] == row.best_weight}
    return sorted(pts.items())


def sweep_chart(rows: Sequence[Any], size: tuple[int, int] = (960, 400)):
    """Two panels (fidelity, drift); a line per scored variant, its legend the variant's name."""
    from PIL import Image, ImageDraw

    from library.evaluation.render import get_font

    w, h = size
    scored = [r for r in rows if r.scores and r.best_weight is not None]
    legend_rows = (len(scored) + 3) // 4
    img = Image.new("RGB", (w, h + 18 * legend_rows), "white")
    draw = ImageDraw.Draw(img)
    font = get_font(13)
    panel_w = (w - 60) // 2
    for p, (key, title) in enumerate((("fidelity", "fidelity (loss / base; lower = closer)"),
                                      ("drift", "drift (vs base; lower = less damage)"))):
        series = {r.name: variant_series(r, key) for r in scored}
        pts_all = [pt for pts in series.values() for pt in pts]
        x0, y0, x1, y1 = 20 + p * (panel_w + 20) + 45, 30, 20 + p * (panel_w + 20) + panel_w, h - 50
        draw.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
        draw.text((x0, 8), title, fill="black", font=font)
        if not pts_all:
            continue
        xs, ys = [x for x, _ in pts_all], [y for _, y in pts_all]
        lo, hi = min(ys), max(ys)
        lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        xmin, xmax = min(xs), max(xs)

        frame = (x0, y0, x1, y1, xmin, xmax, lo, hi)
        for frac in (0.0, 0.5, 1.0):
            v = lo + frac * (hi - lo)
            draw.text((x0 - 44, _px(frame, xmin, v)[1] - 7), f"{v:.3g}", fill="black", font=font)
        for x in sorted(set(xs)):
            draw.text((_px(frame, x, lo)[0] - 4, y1 + 4), str(x), fill="black", font=font)
        draw.text(((x0 + x1) / 2 - 15, y1 + 22), "epoch", fill="black", font=font)
        for i, (name, pts) in enumerate(series.items()):
            colour = LINE_COLOURS[i % len(LINE_COLOURS)]
            points = [_px(frame, x, y) for x, y in pts]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for cx, cy in points:
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
    for i, r in enumerate(scored):
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        draw.text((20 + (i % 4) * (w // 4), h + 18 * (i // 4)), f"{r.rank or '-'}. {r.name} @ {r.best_weight:g}",
                  fill=colour, font=font)
    return img
