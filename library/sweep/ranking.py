"""Rank a sweep's variants: one table in the terminal, `ranking.json` and `ranking.csv` (+ `scores.csv`).

Two measures:
- `scores` (default): every epoch file (and EMA file) of every finished variant is
  scored with library.scoring.scores (fidelity and prior drift at several LoRA
  weights, on the same evaluation set for all); each variant's best setting is what
  `recommend` picks among its own files, and variants are ranked by that setting:
  those whose drift stays under the threshold first, by fidelity (lower = closer to
  the concept), then the rest by drift.
- `validation_loss`: the validation loss at each variant's last epoch (needs
  --validation_split), lower first. Loads nothing: the trainer recorded it.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from library.errors import ConfigError
from library.fileio import atomic_write_text
from library.sweep.manifest import FINISHED, Manifest, VariantRecord

RANK_BY = ("scores", "validation_loss")


@dataclass
class VariantRank:
    rank: int | None  # None: not ranked (not finished, or no measure)
    name: str
    values: dict[str, Any]
    status: str
    measure: str  # "fidelity" or "final validation loss"
    value: float | None  # the ranked number (lower is better)
    best_file: str | None = None
    best_epoch: int | None = None
    best_weight: float | None = None
    fidelity: float | None = None
    drift: float | None = None
    under_threshold: bool | None = None
    final_validation_loss: float | None = None
    why: str = ""
    scores: list[dict[str, Any]] = field(default_factory=list)  # every (file, weight) score of this variant


def final_validation_loss(rec: VariantRecord) -> float | None:
    return float(rec.validation_losses[-1][1]) if rec.validation_losses else None


def best_validation_epoch(rec: VariantRecord) -> tuple[int, float] | None:
    if not rec.validation_losses:
        return None
    epoch, loss = min(rec.validation_losses, key=lambda x: (x[1], x[0]))
    return int(epoch), float(loss)


def file_of_epoch(rec: VariantRecord, epoch: int) -> str | None:
    """The LoRA file saved at `epoch` (the final file for the last epoch)."""
    for path in rec.files:
        if Path(path).stem.endswith(f"-{epoch:06d}"):
            return path
    last = int(rec.validation_losses[-1][0]) if rec.validation_losses else None
    return rec.final_file if epoch == last else None


def rank_by_validation_loss(manifest: Manifest) -> list[VariantRank]:
    rows = []
    for rec in manifest.variants:
        final = final_validation_loss(rec) if rec.status == FINISHED else None
        best = best_validation_epoch(rec) if rec.status == FINISHED else None
        why = ("no validation loss: train with --validation_split to rank by it" if rec.status == FINISHED and final is None
               else "" if rec.status == FINISHED else f"not finished ({rec.status})")
        if best:
            why = f"lowest validation loss at epoch {best[0]} ({best[1]:.5f})"
        rows.append(VariantRank(None, rec.name, rec.values, rec.status, "final validation loss", final,
                                best_file=file_of_epoch(rec, best[0]) if best else None, best_epoch=best[0] if best else None,
                                final_validation_loss=final, why=why))
    return _numbered(rows, key=lambda r: r.value)


def _numbered(rows: list[VariantRank], key: Callable[[VariantRank], Any]) -> list[VariantRank]:
    ranked = sorted((r for r in rows if r.value is not None), key=key)
    for i, row in enumerate(ranked, 1):
        row.rank = i
    return ranked + [r for r in rows if r.value is None]


def rank_by_scores(manifest: Manifest, score: Callable[[VariantRecord, list[str]], list[Any]], *,
                   drift_threshold: float, include_ema: bool = True) -> list[VariantRank]:
    """`score(record, files) -> [EpochScore]` for each finished variant; ranked as the module says."""
    from library.scoring.scores import recommend

    rows = []
    for rec in manifest.variants:
        row = VariantRank(None, rec.name, rec.values, rec.status, "fidelity", None,
                          final_validation_loss=final_validation_loss(rec) if rec.status == FINISHED else None)
        files = list(rec.files) + (list(rec.ema_files) if include_ema else [])
        if rec.status != FINISHED or not files:
            row.why = f"not finished ({rec.status})" if rec.status != FINISHED else "no LoRA file to score"
            rows.append(row)
            continue
        scores = score(rec, files)
        pick = recommend(scores, drift_threshold=drift_threshold)
        best = pick.score
        row.scores = [s.to_dict() for s in scores]
        row.best_file, row.best_epoch, row.best_weight, row.why = pick.file, pick.epoch, pick.weight, pick.why
        if best is not None:
            row.fidelity, row.drift = best.fidelity, best.drift
            row.under_threshold = best.drift <= drift_threshold
            row.value = best.fidelity if row.under_threshold else best.drift
        rows.append(row)
    # under the threshold first (by fidelity), then the others (by drift)
    return _numbered(rows, key=lambda r: (not r.under_threshold, r.value))


# --- output --------------------------------------------------------------------------

COLUMNS = ("rank", "variant", "status", "measure", "value", "best_epoch", "best_weight", "fidelity", "drift",
           "final_validation_loss", "best_file")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def table_rows(rows: Sequence[VariantRank], fields: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        d = {"rank": r.rank, "variant": r.name, **{f: r.values.get(f) for f in fields}, "status": r.status,
             "measure": r.measure, "value": r.value, "best_epoch": r.best_epoch, "best_weight": r.best_weight,
             "fidelity": r.fidelity, "drift": r.drift, "final_validation_loss": r.final_validation_loss,
             "best_file": Path(r.best_file).name if r.best_file else None}
        out.append(d)
    return out


def format_table(rows: Sequence[VariantRank], fields: Sequence[str], title: str) -> str:
    """A fixed-width table, best variant first."""
    data = table_rows(rows, fields)
    by_scores = bool(rows) and rows[0].measure == "fidelity"
    cols = ["rank", "variant", *fields, "status", "value", "best_epoch"]
    cols += ["best_weight", "drift", "final_validation_loss", "best_file"] if by_scores else ["best_file"]
    head = {"value": rows[0].measure if rows else "value", "final_validation_loss": "final val loss",
            "best_epoch": "best epoch", "best_weight": "weight", "best_file": "file"}
    texts = [[head.get(c, c) for c in cols]] + [[_cell(d[c]) for c in cols] for d in data]
    widths = [max(len(t[i]) for t in texts) for i in range(len(cols))]
    lines = [title, "  ".join(t.ljust(w) for t, w in zip(texts[0], widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(t.ljust(w) for t, w in zip(row, widths)) for row in texts[1:]]
    if rows and rows[0].rank is not None:
        lines.append(f"best: {rows[0].name}: {rows[0].why}")
    return "\n".join(lines)


def write_ranking(rows: Sequence[VariantRank], fields: Sequence[str], folder: Path, *, rank_by: str,
                  drift_threshold: float | None, note: str = "") -> dict[str, Path]:
    """ranking.json (everything), ranking.csv (one row per variant), scores.csv (every scored file and weight)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "ranking.json", "csv": folder / "ranking.csv"}
    doc = {"rank_by": rank_by, "drift_threshold": drift_threshold, "varied": list(fields), "note": note,
           "variants": [asdict(r) for r in rows]}
    atomic_write_text(paths["json"], json.dumps(doc, indent=1, default=str))
    atomic_write_text(paths["csv"], _csv(table_rows(rows, fields), ["rank", "variant", *fields, *COLUMNS[2:]]))
    score_rows = [{"variant": r.name, **{f: r.values.get(f) for f in fields}, **s} for r in rows for s in r.scores]
    if score_rows:
        paths["scores_csv"] = folder / "scores.csv"
        atomic_write_text(paths["scores_csv"], _csv(score_rows, list(score_rows[0])))
    return paths


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buf.getvalue()


def check_rank_by(rank_by: str) -> None:
    if rank_by not in RANK_BY:
        raise ConfigError(f"--rank_by {rank_by!r} is not one of: {', '.join(RANK_BY)}")
