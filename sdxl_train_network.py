#!/usr/bin/env python
"""sd-scripts-compatible SDXL entry point: `python sdxl_train_network.py --pretrained_model_name_or_path ...`.

Same flags as train_network.py (and as kohya-ss/sd-scripts' sdxl_train_network.py:
--cache_text_encoder_outputs, --cache_text_encoder_outputs_to_disk,
--network_train_unet_only, --no_half_vae, --text_encoder_lr TE1 [TE2]). The model
family (SD1.x, SD2.x, SDXL) is read from the model itself, so this script,
train_network.py and `lorasmith train` train the same way on the same flags.
Exit codes: 0 done, 2 a problem to fix, 130 interrupted.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from library.cli import run_handler
    from library.config_io import build_train_parser
    from library.training.cli import run_training

    args = build_train_parser(prog="sdxl_train_network.py").parse_args(argv)
    return run_handler(run_training, args)


if __name__ == "__main__":
    sys.exit(main())
