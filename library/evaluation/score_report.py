"""Epoch scores out to people and tools: a terminal table, JSON, CSV, a chart PNG, TensorBoard scalars.

Every file is written atomically (library.fileio). The chart is drawn with Pillow
(no plotting library needed): fidelity and drift against epoch, one line per weight,
the recommended point circled. TensorBoard tags: `evaluation/fidelity/w<weight>`
and `evaluation/drift/w<weight>` with x = epoch.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from library.scoring.scores import EpochScore, Recommendation, score_x, tensorboard_values
from library.fileio import atomic_path, atomic_write_text

CSV_FIELDS = ("file", "epoch", "weight", "fidelity", "drift", "class_drift", "prior_drift", "reg_drift", "loss",
              "base_loss", "ema", "clip_i", "clip_t", "dino")
LINE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def table(scores: Sequence[EpochScore], rec: Recommendation | None = None) -> str:
    """One row per (file, weight); the recommended row marked with '<'."""
    lines = [f"{'file':<32} {'epoch':>5} {'weight':>6} {'fidelity':>8} {'drift':>7} {'class':>7} {'prior':>7} {'reg':>7}"]

    def num(v):
        return f"{v:7.3f}" if v is not None else f"{'-':>7}"

    extra = [k for k in ("clip_i", "clip_t", "dino") if any(getattr(s, k) is not None for s in scores)]
    lines[0] += "".join(f" {k:>7}" for k in extra)
    for s in scores:
        mark = "  <" if rec is not None and (s.file, s.weight) == (rec.file, rec.weight) else ""
        lines.append(f"{Path(s.file).name[-32:]:<32} {s.epoch if s.epoch is not None else '-':>5} {s.weight:6.2f} "
                     f"{s.fidelity:8.3f} {s.drift:7.3f} {num(s.class_drift)} {num(s.prior_drift)} {num(s.reg_drift)}"
                     + "".join(f" {num(getattr(s, k))}" for k in extra) + mark)
    return "\n".join(lines)


def to_json(scores: Sequence[EpochScore], rec: Recommendation | None, info: dict | None = None) -> str:
    return json.dumps({"scores": [s.to_dict() for s in scores], "recommendation": rec.to_dict() if rec else None,
                       **(info or {})}, indent=1)


def to_csv(scores: Sequence[EpochScore]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for s in scores:
        row = s.to_dict()
        writer.writerow({k: row[k] for k in CSV_FIELDS})
    return buf.getvalue()


def _series(scores: Sequence[EpochScore], key: str) -> dict[float, list[tuple[int, float]]]:
    out: dict[float, list[tuple[int, float]]] = {}
    files = list(dict.fromkeys(s.file for s in scores))
    for s in scores:
        out.setdefault(s.weight, []).append((score_x(s, files.index(s.file)), float(getattr(s, key))))
    return {w: sorted(v) for w, v in out.items()}


def chart(scores: Sequence[EpochScore], rec: Recommendation | None = None, size: tuple[int, int] = (900, 360),
          drift_threshold: float | None = None):
    """Two panels, fidelity and drift against epoch; one coloured line per weight; a ring on the recommendation;
    the drift threshold as a dashed grey line."""
    from PIL import Image, ImageDraw

    from library.evaluation.render import get_font

    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = get_font(13)
    files = list(dict.fromkeys(s.file for s in scores))
    panel_w = (w - 60) // 2  # 20 px margins left, between and right
    for p, (key, title) in enumerate((("fidelity", "fidelity (loss / base; lower = closer)"),
                                      ("drift", "drift (vs base; lower = less damage)"))):
        series = _series(scores, key)
        x0, y0, x1, y1 = 20 + p * (panel_w + 20) + 45, 30, 20 + p * (panel_w + 20) + panel_w, h - 70
        xs = [x for pts in series.values() for x, _ in pts]
        ys = [y for pts in series.values() for _, y in pts]
        limit = drift_threshold if key == "drift" else None
        if limit is not None:
            ys.append(limit)
        lo, hi = min(ys), max(ys)
        lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        xmin, xmax = min(xs), max(xs)

        def px(x, y):
            fx = 0.5 if xmax == xmin else (x - xmin) / (xmax - xmin)
            return x0 + fx * (x1 - x0), y1 - (y - lo) / (hi - lo) * (y1 - y0)

        draw.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
        draw.text((x0, 8), title, fill="black", font=font)
        for frac in (0.0, 0.5, 1.0):
            v = lo + frac * (hi - lo)
            draw.text((x0 - 44, px(xmin, v)[1] - 7), f"{v:.3g}", fill="black", font=font)
        for x in sorted(set(xs)):
            draw.text((px(x, lo)[0] - 4, y1 + 4), str(x), fill="black", font=font)
        draw.text(((x0 + x1) / 2 - 15, y1 + 22), "epoch", fill="black", font=font)
        if limit is not None:
            y = px(xmin, limit)[1]
            for x in range(int(x0), int(x1), 10):
                draw.line([(x, y), (min(x + 5, x1), y)], fill=(120, 120, 120), width=1)
            draw.text((x1 - 110, y - 16), f"threshold {limit:g}", fill=(120, 120, 120), font=font)
        for i, (weight, pts) in enumerate(sorted(series.items())):
            colour = LINE_COLOURS[i % len(LINE_COLOURS)]
            points = [px(x, y) for x, y in pts]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for cx, cy in points:
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
            if rec is not None and weight == rec.weight and rec.score is not None:
                cx, cy = px(score_x(rec.score, files.index(rec.file) if rec.file in files else 0), getattr(rec.score, key))
                draw.ellipse([cx - 8, cy - 8, cx + 8, cy + 8], outline="black", width=2)
            draw.text((x0 + 10 + i * 90, h - 24), f"weight {weight:g}", fill=colour, font=font)
    return img


def write_reports(scores: Sequence[EpochScore], rec: Recommendation | None, out_dir: str | os.PathLike[str], *,
                  stem: str = "evaluation", info: dict | None = None) -> dict[str, Path]:
    """JSON, CSV and chart PNG in out_dir (created), each written atomically; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "chart": out / f"{stem}.png"}
    atomic_write_text(paths["json"], to_json(scores, rec, info))
    atomic_write_text(paths["csv"], to_csv(scores))
    with atomic_path(paths["chart"]) as tmp:
        chart(scores, rec, drift_threshold=(info or {}).get("drift_threshold")).save(tmp, format="PNG")
    return paths


def log_tensorboard(scores: Sequence[EpochScore], log_dir: str | os.PathLike[str]) -> Path:
    from library.training.tracking import TensorBoardLog

    tb = TensorBoardLog(Path(log_dir))
    try:
        for epoch, values in sorted(tensorboard_values(scores).items()):
            tb.scalars(values, epoch)
    finally:
        tb.close()
    return Path(log_dir)


def read_scores(path: str | os.PathLike[str]) -> tuple[list[EpochScore], Recommendation | None]:
    """Scores and recommendation back from an evaluation.json (`lorasmith evaluate`'s output)."""
    from library.errors import ConfigError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        scores = [EpochScore(**row) for row in data["scores"]]
        rec = data.get("recommendation")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not an evaluation.json written by `lorasmith evaluate` ({exc})",
                          ["pass the evaluation.json from `lorasmith evaluate --output_dir ...`"]) from None
    if rec is None:
        return scores, None
    match = next((s for s in scores if (s.file, s.weight) == (rec["file"], rec["weight"])), None)
    return scores, Recommendation(rec["file"], rec["epoch"], rec["weight"], rec["why"], match)


def score_notes(scores: Sequence[EpochScore], rec: Recommendation | None):
    """A grid's `cell_note`: "F 0.70 D 0.18" on cells whose LoRA file and weight were scored; the
    recommended one marked. Files compare by resolved path."""
    by = {(str(Path(s.file).resolve()), round(s.weight, 6)): s for s in scores}
    marked = (str(Path(rec.file).resolve()), round(rec.weight, 6)) if rec is not None else None

    def note(settings) -> tuple[str | None, bool]:
        if settings.lora_file is None:
            return None, False
        key = (str(Path(settings.lora_file).resolve()), round(float(settings.lora_weight), 6))
        s = by.get(key)
        if s is None:
            return None, False
        return f"F {s.fidelity:.2f} D {s.drift:.2f}", key == marked

    return note
