"""The Gradio app: one page, one tab per job of the workflow."""
from __future__ import annotations

import gradio as gr

from gui.context import GuiContext
from gui.training_tab import TrainingTab



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
        with gr.Tabs():
            with gr.Tab("Training", id="training"):
                training = TrainingTab(ctx)
            _optional_tabs(ctx, training)
            with gr.Tab("Generate", id="generate"):  # after Evaluate: "Send to grid" fills its form
                from gui.generate_tab import GenerateTab

                GenerateTab(ctx, training)
        demo.load(training.refresh, outputs=training.live_outputs)
        demo.load(training.refresh_presets, outputs=training.preset)  # presets saved in another tab or session
        training.check_on_load(demo)  # Start is disabled until the form has no errors
    demo.lorasmith_training = training  # for tests: the field name → component map
    return demo


def _optional_tabs(ctx: GuiContext, training: TrainingTab) -> None:
    """Dataset, Regularization and Evaluate tabs, each present when its module is installed."""
    from gui import tool_tabs

    tool_tabs.build_tool_tabs(ctx, training)
