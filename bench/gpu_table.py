#!/usr/bin/env python
"""The short table bench/gpu_check.sh prints last, from train_speed.py's JSON lines.

    python bench/gpu_table.py OUT/train_speed.jsonl
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (("case", "case", 5), ("resolution", "px", 5), ("side", "side", 16), ("batch", "batch", 5), ("samples_per_s", "samples/s", 9),
           ("tflop_per_sample", "TFLOP/sample", 12), ("fraction_of_bf16_peak", "of bf16 peak", 12),
           ("peak_memory_gb", "peak GB", 8), ("speedup_vs_reference", "x ref", 6),
           ("speedup_vs_reference_cached", "x ref cached", 12), ("memory_vs_reference", "mem/ref", 7),
           ("vram_estimate_gb", "estimate GB", 11), ("estimate_over_measured", "est/meas", 8))


def table(rows: list[dict]) -> str:
    """One line per JSON row (errors as their last message), fixed-width columns."""
    lines = [" ".join(f"{title:>{width}}" for _, title, width in COLUMNS)]
    for row in rows:
        if "error" in row:
            lines.append(f"{row.get('case', '?'):>5} {'':>5} {row.get('side', '?'):>16} {row.get('batch', '?'):>5} "
                         f"ERROR {' | '.join(row['error'])[-160:]}")
            continue
        cells = []
        for key, _, width in COLUMNS:
            value = row.get(key)
            cells.append(f"{'-' if value is None else value:>{width}}")
        lines.append(" ".join(cells))
    first = next((r for r in rows if "gpu" in r), rows[0] if rows else {})
    head = (f"{first.get('precision', '')} on {first.get('gpu', first.get('device', '?'))} (bf16 peak {first.get('bf16_peak_tflops')} "
            f"TFLOP/s, {first.get('peak_source', '')})")
    return "\n".join([head] + lines)


def main() -> int:
    path = Path(sys.argv[1])
    rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("{")]
    print(table(rows) if rows else f"no results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
