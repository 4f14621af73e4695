"""Dataset, Regularization, Evaluate and Utilities tabs, each shown when the module it drives is installed."""
from __future__ import annotations

import importlib.util

import gradio as gr


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def build_tool_tabs(ctx, training) -> None:
    if _have("dataset_tools.report"):
        from gui.dataset_tab import DatasetTab

        with gr.Tab("Dataset", id="dataset"):
            DatasetTab(ctx, training)
    if _have("regularization.cli"):
        from gui.regularization_tab import RegularizationTab

        with gr.Tab("Regularization", id="regularization") as tab:
            reg = RegularizationTab(ctx, training)
        reg.tab_select(tab)
    if _have("library.evaluation.grid"):
        from gui.evaluate_tab import EvaluateTab

        with gr.Tab("Evaluate", id="evaluate"):
            EvaluateTab(ctx, training)
    if _have("library.lora.tools.resize"):
        from gui.utilities_tab import UtilitiesTab

        with gr.Tab("Utilities", id="utilities"):
            UtilitiesTab(ctx)
    from gui.history_tab import HistoryTab

    with gr.Tab("History", id="history") as tab:
        hist = HistoryTab(ctx, training)
    hist.tab_select(tab)
