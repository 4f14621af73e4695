"""The lorasmith web GUI (Gradio), started with `lorasmith gui`.

- `form`: the training form generated from `TrainConfig`; values travel by field name.
- `checks`, `run_view`, `progress`: validation/plan panels and the live view of a run (pure functions).
- `jobs`: the queue running `lorasmith train --progress_file` as child processes (Stop = SIGINT, again = kill).
- `safety`: the allowed folders every browser-given path is checked against.
- `training_tab`, `dataset_tab`, `regularization_tab`, `evaluate_tab`: the tabs; `app.build_app` puts them together.
"""
