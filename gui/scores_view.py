"""Epoch scores (issue 18) as the page shows them: a table, the chart and the recommendation.

Scores come from the trainer's events (`--evaluate_every_n_epochs` sends each
epoch's scores and the running recommendation with its log line) or from an
`evaluation.json` that `lorasmith evaluate` wrote for the run's files.  The
chart is score_report.chart, the recommendation scoring.scores.recommend's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

EVALUATION_JSON = ("grids/evaluation/evaluation.json", "evaluation/evaluation.json", "evaluation.json")


def scores_markdown(scores: list, rec: Any | None) -> str:
    """'**Recommended:** why' and a Markdown table, the recommended row in bold."""
    rows = ["| file | epoch | weight | fidelity | drift |", "|---|---|---|---|---|"]
    for sc in scores:
        pick = rec is not None and (sc.file, sc.weight) == (rec.file, rec.weight)
        cells = [Path(sc.file).name, str(sc.epoch if sc.epoch is not None else "-"), f"{sc.weight:g}",
                 f"{sc.fidelity:.3f}", f"{sc.drift:.3f}"]
        rows.append("| " + " | ".join(f"**{c}**" if pick else c for c in cells) + " |")
    why = f"**Recommended:** {rec.why}\n\n" if rec is not None else ""
    return why + "\n".join(rows)


def scores_from_events(rows: list[dict], rec: dict | None):
    """EpochScore objects and a Recommendation from the dicts the trainer's events carry."""
    from dataclasses import fields

    from library.scoring.scores import EpochScore, Recommendation

    names = {f.name for f in fields(EpochScore)}
    scores = [EpochScore(**{k: v for k, v in row.items() if k in names}) for row in rows]
    recommendation = None
    if isinstance(rec, dict) and {"file", "weight", "why"} <= set(rec):
        match = next((s for s in scores if (s.file, s.weight) == (rec["file"], rec["weight"])), None)
        recommendation = Recommendation(rec["file"], rec.get("epoch"), rec["weight"], rec["why"], match)
    return scores, recommendation


def evaluation_json(cfg: Any | None) -> Path | None:
    """The newest evaluation.json written for the run's output folder (by the Evaluate tab or the CLI)."""
    if cfg is None or not getattr(cfg, "output_dir", None):
        return None
    out = Path(cfg.output_dir)
    found = [out / rel for rel in EVALUATION_JSON if (out / rel).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def run_scores(progress: Any, cfg: Any | None):
    """(scores, recommendation) of a run: from its events, else from an evaluation.json; ([], None) if none."""
    if getattr(progress, "scores", None):
        return scores_from_events(progress.scores, progress.recommendation)
    path = evaluation_json(cfg)
    if path is None:
        return [], None
    from library.errors import LorasmithError
    from library.evaluation.score_report import read_scores

    try:
        return read_scores(path)
    except LorasmithError:
        return [], None


def run_scores_markdown(progress: Any, cfg: Any | None):
    """(Markdown, chart PIL image or None) for a run's scores; ("", None) when it has none."""
    scores, rec = run_scores(progress, cfg)
    if not scores:
        return "", None
    from library.evaluation.score_report import chart

    return "**Epoch scores** (fidelity: lower fits the concept closer; drift: lower changes the rest less)\n\n" + \
        scores_markdown(scores, rec), chart(scores, rec)
