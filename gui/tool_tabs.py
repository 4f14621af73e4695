"""Dataset, Regularization and Evaluate tabs (filled in as their modules land)."""
from __future__ import annotations


def build_tool_tabs(ctx, training) -> None:
    return None
