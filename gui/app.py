"""The Gradio app: one page, one tab per job of the workflow."""
from __future__ import annotations

import gradio as gr

from gui.context import GuiContext
from gui.training_tab import TrainingTab

CSS = ".ls-error { color: #c0392b; font-weight: 600; }"


def build_app(ctx: GuiContext) -> gr.Blocks:
    """The Blocks for `ctx`; the caller launches it (see `gui.cli`)."""
    with gr.Blocks(title="lorasmith") as demo:
        gr.Markdown("# lorasmith\nPrepare a dataset, fill the form, train while watching loss and d·lr, compare epochs.")
        with gr.Tabs():
            with gr.Tab("Training", id="training"):
                training = TrainingTab(ctx)
            _optional_tabs(ctx, training)
        demo.load(training.refresh, outputs=[training.progress, training.loss_plot, training.samples,
                                             training.log, training.queue])
    demo.lorasmith_training = training  # for tests: the field name → component map
    return demo


def _optional_tabs(ctx: GuiContext, training: TrainingTab) -> None:
    """Dataset, Regularization and Evaluate tabs, each present when its module is installed."""
    from gui import tool_tabs

    tool_tabs.build_tool_tabs(ctx, training)
