"""`lorasmith sweep`: train every combination of a few settings, then rank the variants.

    lorasmith sweep --config base.toml --vary network_dim=8,16,32 --vary learning_rate=0.5,1.0
    lorasmith sweep --sweep_file sweep.toml          # the same as a file (see README "Sweeps")

Any training flag also works here and changes the base config for every variant.
Run the same command again after an interruption: finished variants are skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

SWEEP_FILE_KEYS = ("config", "sweep_dir", "rank_by", "drift_threshold", "eval_weights", "vary")


def register(subparsers: argparse._SubParsersAction) -> None:
    from library.config_io import add_config_arguments

    p = subparsers.add_parser("sweep", help="train every combination of --vary values and rank the variants",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "--config_file", dest="config_file", default=None,
                   help="the base training config (TOML, JSON preset or kohya_ss JSON)")
    p.add_argument("--preset", default=None, help="a preset as the base config")
    p.add_argument("--sweep_file", default=None,
                   help="TOML with `config = \"base.toml\"` and a [vary] table (field = [values]); --vary adds to it")
    p.add_argument("--vary", action="append", default=[], metavar="FIELD=V1,V2",
                   help="a field and its values (repeatable); a JSON list for values with commas: 'resolution=[\"512\",\"512,768\"]'")
    p.add_argument("--sweep_dir", default=None, help="where the variant folders and sweep.json go (default: output_dir)")
    p.add_argument("--rank_by", default=None, choices=("scores", "validation_loss"),
                   help="scores (fidelity/drift of every epoch, default) or the final validation loss (needs validation_split)")
    p.add_argument("--eval_weights", default=None, help="LoRA weights each file is scored at (default 0.6,0.8,1.0)")
    p.add_argument("--drift_threshold", type=float, default=None, help="most drift a recommended setting may have")
    p.add_argument("--dry_run", action="store_true", help="check every variant and list them; train nothing")
    p.add_argument("--rank_only", action="store_true", help="rank the variants finished so far; train nothing")
    p.add_argument("--no_grid", action="store_true", help="skip the grid of each variant's best epoch")
    p.add_argument("--grid_prompt", default=None, help="prompt of the best-epoch grid (default: the training folder's tokens)")
    add_config_arguments(p)
    p.set_defaults(func=run_sweep_command)


def read_sweep_file(path: str) -> dict[str, Any]:
    """The sweep file's settings, `config` made relative to the file's folder, `vary` as [(field, values)]."""
    from library.config_io import parse_structured
    from library.errors import ConfigError
    from library.sweep.variants import checked_values

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the sweep file {p}: {exc}") from None
    data = parse_structured(text, ".json" if p.suffix.lower() == ".json" else ".toml", str(p))
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: must hold a table of settings")
    problems = [f"{p}: unknown key {k!r} (known: {', '.join(SWEEP_FILE_KEYS)})" for k in data if k not in SWEEP_FILE_KEYS]
    vary = data.get("vary", {})
    if not isinstance(vary, dict):
        problems.append(f"{p}: [vary] must be a table of field = [values]")
        vary = {}
    pairs = []
    for key, values in vary.items():
        try:
            pairs.append(checked_values(key, values if isinstance(values, list) else [values], source=f"{p} [vary]"))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(f"Cannot read the sweep file {p}", problems)
    out = dict(data, vary=pairs)
    if isinstance(out.get("config"), str):
        out["config"] = str((p.parent / out["config"]).resolve()) if not Path(out["config"]).is_absolute() else out["config"]
    return out


def _weights(text: Any) -> tuple[float, ...]:
    from library.errors import ConfigError

    items = text if isinstance(text, list) else str(text).split(",")
    try:
        weights = tuple(float(w) for w in items)
    except ValueError:
        raise ConfigError(f"--eval_weights {text!r}: write numbers separated by commas, e.g. 0.6,0.8,1.0") from None
    if not weights:
        raise ConfigError("--eval_weights: give at least one weight")
    return weights


def run_sweep_command(args: argparse.Namespace) -> int:
    from library.config_resolve import resolve_config
    from library.errors import ConfigError
    from library.sweep.ranking import check_rank_by
    from library.sweep.runner import prepare_sweep, sweep_dir_of
    from library.sweep.variants import merge_vary, parse_vary

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise ConfigError("lorasmith sweep runs in one process; it was started with accelerate launch on several",
                          ["start the sweep with plain `lorasmith sweep …` (its variants train one after another)"])
    settings = read_sweep_file(args.sweep_file) if args.sweep_file else {"vary": []}
    if args.config_file is None and settings.get("config"):
        args.config_file = settings["config"]
    base = resolve_config(args)
    vary = merge_vary(settings["vary"], parse_vary(args.vary))
    rank_by = args.rank_by or settings.get("rank_by") or "scores"
    check_rank_by(rank_by)
    sweep_dir = sweep_dir_of(base, args.sweep_dir or settings.get("sweep_dir"))
    manifest, variants = prepare_sweep(base, vary, sweep_dir)
    print(f"sweep in {sweep_dir}: {len(variants)} variant(s), seed {manifest.seed}")
    for v in variants:
        print(f"  {v.name}: {', '.join(f'{k}={x}' for k, x in v.values.items())} "
              f"({manifest.record(v.name).status})")
    if args.dry_run:
        print("every variant's config is valid (--dry_run: nothing was trained)")
        return 0
    code = 0
    if not args.rank_only:
        outcome = train_all(manifest, variants)
        if outcome.stopped:
            return 130
    failed = [r for r in manifest.variants if r.status == "failed"]
    if failed:
        print(f"{len(failed)} variant(s) failed: {', '.join(r.name for r in failed)}; run the sweep again to retry them",
              file=sys.stderr)
        code = 1
    if not any(r.status == "finished" for r in manifest.variants):
        raise ConfigError("no variant has finished, so there is nothing to rank")
    weights = _weights(args.eval_weights or settings.get("eval_weights") or "0.6,0.8,1.0")
    threshold = args.drift_threshold if args.drift_threshold is not None else settings.get("drift_threshold")
    rank_and_report(manifest, variants, sweep_dir, rank_by=rank_by, weights=weights, drift_threshold=threshold,
                    grid=not args.no_grid, grid_prompt=args.grid_prompt)
    return code


def train_all(manifest, variants):
    from library.sweep.runner import run_sweep
    from library.training.console import ConsoleEvents
    from library.training.events import Commands
    from library.training.signals import stop_on_signals

    commands = Commands()
    with stop_on_signals(commands):
        return run_sweep(manifest, variants, events_for=lambda v: ConsoleEvents(), commands=commands)


def rank_and_report(manifest, variants, sweep_dir: Path, *, rank_by: str, weights=(0.6, 0.8, 1.0),
                    drift_threshold: float | None = None, grid: bool = False, grid_prompt: str | None = None,
                    log=print) -> dict[str, Path]:
    """Rank, print the table and write ranking.json / ranking.csv into `sweep_dir`; by scores also
    scores.csv, the chart ranking.png, each variant's evaluation.json/.csv/.png in its folder and,
    with `grid`, the grid of each variant's best epoch (best_grid/)."""
    from library.sweep.ranking import (
        format_table,
        rank_by_scores,
        rank_by_validation_loss,
        write_ranking,
    )
    from library.sweep.scoring import SweepScorer, comparability_note

    fields = [f for f, _ in manifest.vary]
    if rank_by == "validation_loss":
        rows = rank_by_validation_loss(manifest)
        title, note = "Sweep ranking by the final validation loss (lower is better; not the fidelity/drift score)", ""
    else:
        from library.scoring.scores import DEFAULT_DRIFT_THRESHOLD

        drift_threshold = DEFAULT_DRIFT_THRESHOLD if drift_threshold is None else drift_threshold
        scorer = SweepScorer(variants, weights=weights, progress=log)
        rows = rank_by_scores(manifest, scorer, drift_threshold=drift_threshold)
        note = comparability_note(fields)
        title = (f"Sweep ranking by score: the best epoch and weight of each variant (fidelity, lower is closer; "
                 f"drift under {drift_threshold:g} first)")
    log(format_table(rows, fields, title))
    if note:
        log(f"note: {note}")
    paths = write_ranking(rows, fields, sweep_dir, rank_by=rank_by,
                          drift_threshold=drift_threshold if rank_by == "scores" else None, note=note)
    if rank_by == "scores":
        paths.update(write_score_reports(rows, variants, sweep_dir, drift_threshold))
        if grid:
            grid_path = _grid(rows, variants, sweep_dir, scorer, grid_prompt, manifest.seed, log)
            if grid_path is not None:
                paths["grid"] = grid_path
    log("written: " + ", ".join(str(p) for p in paths.values()))
    return paths


def write_score_reports(rows, variants, sweep_dir: Path, drift_threshold: float) -> dict[str, Path]:
    """The sweep chart (ranking.png) and, in each variant's folder, evaluation.json/.csv/.png."""
    from library.evaluation.score_report import write_reports
    from library.scoring.scores import EpochScore, recommend
    from library.fileio import atomic_path
    from library.sweep.chart import sweep_chart

    folders = {v.name: v.output_dir for v in variants}
    for row in rows:
        if row.scores:
            scores = [EpochScore(**s) for s in row.scores]
            write_reports(scores, recommend(scores, drift_threshold=drift_threshold), folders[row.name])
    path = sweep_dir / "ranking.png"
    with atomic_path(path) as tmp:
        sweep_chart(rows).save(tmp, format="PNG")
    return {"chart": path}


def _grid(rows, variants, sweep_dir: Path, scorer, prompt: str | None, seed: int, log) -> Path | None:
    from library.sweep.best_grid import best_epoch_grid

    cfg = variants[0].config
    path = best_epoch_grid(rows, cfg, sweep_dir, load_bundle=lambda _name: scorer.bundle_for(cfg), prompt=prompt,
                           seed=seed)
    if path is None:
        log("no best-epoch grid: no variant was scored, or no prompt (give --grid_prompt)")
    return path
