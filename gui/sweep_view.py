"""Sweeps from the GUI (issue 18): the form's config as the base, fields to vary, a queued `lorasmith sweep` job.

The sweep runs as the same CLI a user would type (library.sweep does the work)
in the job queue; its progress is read from its log (`[2/6] name: training` and
the variant's step bar) and, when it ends, its ranking.json / ranking.png are
shown (pure functions here, no Gradio).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from library.errors import ConfigError

_VARIANT = re.compile(r"^\[(\d+)/(\d+)\] (\S+): (.*)$")
RANK_BY = ("scores", "validation_loss")


def sweep_args(vary_text: str, rank_by: str = "scores", grid: bool = True) -> list[str]:
    """`--vary FIELD=V1,V2` per non-empty line (checked as the CLI checks them), plus --rank_by / --no_grid."""
    from library.sweep.variants import parse_vary

    items = [line.strip() for line in (vary_text or "").splitlines() if line.strip()]
    if not items:
        raise ConfigError("Vary is empty", ["write one FIELD=V1,V2 per line, e.g. network_dim=8,16,32"])
    pairs = parse_vary(items)  # ConfigError naming each bad line
    if len(pairs) and all(len(values) < 2 for _, values in pairs):
        raise ConfigError("a sweep needs at least two values of one field", ["e.g. network_dim=8,16"])
    if rank_by not in RANK_BY:
        raise ConfigError(f"rank by {rank_by!r} is not one of: {', '.join(RANK_BY)}")
    args: list[str] = []
    for item in items:
        args += ["--vary", item]
    args += ["--rank_by", rank_by]
    if not grid:
        args.append("--no_grid")
    return args


def variant_count(vary_text: str) -> int:
    from library.sweep.variants import parse_vary

    n = 1
    for _, values in parse_vary([ln.strip() for ln in (vary_text or "").splitlines() if ln.strip()]):
        n *= len(values)
    return n


def sweep_task(log_text: str) -> dict | None:
    """{'what', 'done', 'total', 'eta_s'} from a sweep's log: the variant it is on and that variant's step bar."""
    from gui.cli_runner import parse_tqdm

    current = None
    bar = None
    scoring = None
    for line in log_text.splitlines():
        m = _VARIANT.match(line.strip())
        if m:
            current, bar, scoring = (int(m[1]), int(m[2]), m[3], m[4]), None, None
            continue
        if line.startswith("scoring ") and ":" in line:  # the ranking phase: each variant's files are scored
            scoring = line[len("scoring "):].split(":", 1)[0]
            continue
        found = parse_tqdm(line)
        if found is not None:
            bar = found
    if current is None:
        return None
    index, total, name, doing = current
    if scoring is not None:
        return {"what": f"all variants trained; scoring {scoring}", "done": total, "total": total, "eta_s": None}
    what = f"variant {index}/{total} {name}"
    if bar is not None:
        what += f" (step {bar['done']}/{bar['total']})"
    elif doing:
        what += f" ({doing})"
    finished = doing.startswith(("finished", "failed"))
    return {"what": what, "done": index if finished else index - 1, "total": total,
            "eta_s": bar["eta_s"] if bar is not None else None}


def ranking_path(cfg: Any) -> Path | None:
    folder = getattr(cfg, "output_dir", None)
    path = Path(folder) / "ranking.json" if folder else None
    return path if path is not None and path.is_file() else None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def ranking_markdown(path: Path) -> tuple[str, str | None]:
    """(Markdown table best first with the winner's reason, ranking.png path or None) from a sweep's ranking.json."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        rows = list(doc["variants"])
        fields = list(doc.get("varied") or [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"**Cannot read the sweep ranking** `{path}`: {exc}", None
    cols = ["rank", "variant", *fields, "status", "value", "best epoch", "weight", "drift"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r.get("rank"), r.get("name"), *[r.get("values", {}).get(f) for f in fields], r.get("status"),
                 r.get("value"), r.get("best_epoch"), r.get("best_weight"), r.get("drift")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    best = next((r for r in rows if r.get("rank") == 1), None)
    head = f"**Sweep ranking** by {doc.get('rank_by', 'scores')} (lower is better)"
    if best is not None:
        head += f"  \n**Best:** {best['name']}: {best.get('why') or ''}"
    if doc.get("note"):
        head += f"  \n_{doc['note']}_"
    chart = path.with_name("ranking.png")
    return head + "\n\n" + "\n".join(lines), str(chart) if chart.is_file() else None
