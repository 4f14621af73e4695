#!/usr/bin/env python
"""sd-scripts-compatible entry point: `python train_network.py --pretrained_model_name_or_path ... ` trains a LoRA.

Same flag names as kohya-ss/sd-scripts' train_network.py; also --config_file,
--preset, --output_config, --print_plan and --progress_file. Errors are shown on
one screen (a traceback only with --debug); exit codes: 0 done, 2 a problem to
fix, 130 interrupted.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from library.cli import run_handler
    from library.config_io import build_train_parser
    from library.training.cli import run_training

    args = build_train_parser().parse_args(argv)
    return run_handler(run_training, args)


if __name__ == "__main__":
    sys.exit(main())
