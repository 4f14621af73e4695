"""`lorasmith inspect LORA [--base MODEL] [--json]` and `lorasmith verify LORA`."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect", help="show what a LoRA file holds: modules, rank, alpha, training settings, tags",
        description="Describe a LoRA file. With --base, also list keys that match no layer of the "
        "base model and base layers that carry no LoRA.",
    )
    p.add_argument("lora", help="LoRA file (.safetensors, Kohya or diffusers/PEFT keys)")
    p.add_argument("--base", metavar="MODEL", help="base model (built-in name, diffusers folder or checkpoint), "
                   "or an architecture name (sd15) to check the keys against that architecture without loading weights")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--tags", type=int, default=15, metavar="N", help="tags to show per folder (default 15)")
    p.set_defaults(func=_inspect)

    v = subparsers.add_parser(
        "verify", help="check a LoRA file: header, down/up pairs, NaN/inf, stored hash",
        description="Exit status 0 when the file is intact, 1 when any check fails.",
    )
    v.add_argument("lora", help="LoRA file to check")
    v.set_defaults(func=_verify)


def _inspect(args: argparse.Namespace) -> int:
    from library.lora.inspect import inspect_lora  # torch: only when the command runs

    report = inspect_lora(args.lora, base=args.base)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_report(report, max_tags=args.tags))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from library.lora.inspect import verify_lora

    passed, problems = verify_lora(args.lora)
    for line in passed:
        print(f"ok: {line}")
    for line in problems:
        print(f"problem: {line}", file=sys.stderr)
    print(f"{args.lora}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 0 if not problems else 1


def _value(x: Any) -> str:
    return "-" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def format_report(report: dict[str, Any], max_tags: int = 15) -> str:
    """The inspect report as text for a terminal."""
    lines = [
        f"{report['path']}",
        f"  format        {report['format']}, {', '.join(report['dtype'])}, {report['file_size']:,} bytes",
        f"  modules       {report['num_modules']} ({report['num_unet_modules']} UNet, "
        f"{report['num_text_encoder_modules']} text encoder), {report['num_tensors']} tensors",
        f"  algorithm     {', '.join(report['algorithms'])}" + (" with DoRA" if report["dora"] else ""),
        f"  rank / alpha  {_value(report['rank'])} / {_value(report['alpha'])}",
    ]
    if report["num_conv_modules"]:
        lines.append(
            f"  conv (LoCon)  {report['num_conv_modules']} modules, rank {_value(report['conv_rank'])} "
            f"alpha {_value(report['conv_alpha'])}"
        )
    if report["training"]:
        lines.append("training")
        lines += [f"  {k:<13} {v}" for k, v in report["training"].items()]
    for title, table in (("blocks", report["blocks"]), ("sd-scripts", report["sd_blocks"])):
        lines.append(f"{title:<14} modules  rank    alpha    mean |dW|  max |dW|")
        for block, b in table.items():
            ranks = ",".join(str(r) for r in b["ranks"])
            alphas = ",".join(_value(a) for a in b["alphas"])
            lines.append(
                f"  {block:<13} {b['modules']:>6}  {ranks:<7} {alphas:<8} {b['mean_norm']:.3e}  {b['max_norm']:.3e}"
            )
    for folder, tags in report["tag_frequency"].items():
        top = sorted(tags.items(), key=lambda kv: -kv[1])[:max_tags]
        lines.append(f"tags in {folder}: " + ", ".join(f"{t} ({n})" for t, n in top))
    if "base" in report:
        only = " (architecture only, no weights loaded)" if report.get("base_architecture_only") else ""
        lines.append(
            f"against {report['base']}{only}: {report['matched_modules']} of {report['num_modules']} modules match, "
            f"{len(report['unmatched_keys'])} unmatched keys, "
            f"{len(report['modules_without_lora'])} base layers without LoRA"
        )
        lines += [f"  unmatched: {r}" for r in report["unmatched_reasons"][:20]]
        lines += [f"  no LoRA:   {n}" for n in report["modules_without_lora"][:20]]
    return "\n".join(lines)
