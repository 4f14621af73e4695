"""The Gradio app: one page, one tab per job of the workflow."""
from __future__ import annotations

import gradio as gr

from gui.context import GuiContext
from gui.training_tab import TrainingTab

CSS = ".ls-error { color: #c0392b; font-weight: 600; }"


def warm_up(ctx: GuiContext) -> None:
    """Import the heavy modules the checks use now, not on the user's first edit (~20 s on a slow CPU)."""
    from gui.checks import form_issues
    from gui.form import config_to_values
    from library.config import TrainConfig

    form_issues(config_to_values(TrainConfig()), ctx.guard, for_training=True)
    try:
        import library.data.prepare  # noqa: F401  (the plan panel)
    except ImportError:
        pass


def build_app(ctx: GuiContext) -> gr.Blocks:
    """The Blocks for `ctx`; the caller launches it (see `gui.cli`)."""
    warm_up(ctx)
    with gr.Blocks(title="lorasmith") as demo:
        gr.Markdown("# lorasmith\nPrepare a dataset, fill the form, train while watching loss and d·lr, compare epochs.")
        with gr.Tabs():
            with gr.Tab("Training", id="training"):
                training = TrainingTab(ctx)
            _optional_tabs(ctx, training)
        demo.load(training.refresh, outputs=training.live_outputs)
        demo.load(training.refresh_presets, outputs=training.preset)  # presets saved in another tab or session
    demo.lorasmith_training = training  # for tests: the field name → component map
    return demo


def _optional_tabs(ctx: GuiContext, training: TrainingTab) -> None:
    """Dataset, Regularization and Evaluate tabs, each present when its module is installed."""
    from gui import tool_tabs

    tool_tabs.build_tool_tabs(ctx, training)
