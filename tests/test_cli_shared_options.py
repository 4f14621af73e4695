"""sample / grid / inspect-model / convert take the trainer's model flags, generated from TrainConfig."""
from __future__ import annotations

import argparse

import pytest

from library.cli import build_parser, main
from library.config import TrainConfig
from library.config_io import add_config_arguments, build_train_parser

SHARED = {
    "sample": ("pretrained_model_name_or_path", "vae", "use_ema_weights", "seed", "clip_skip"),
    "grid": ("pretrained_model_name_or_path", "vae", "use_ema_weights", "seed", "clip_skip"),
    "inspect-model": ("pretrained_model_name_or_path", "vae", "use_ema_weights"),
    "convert": ("pretrained_model_name_or_path", "vae", "use_ema_weights"),
}


def _action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    for action in parser._actions:
        if flag in action.option_strings:
            return action
    raise LookupError(f"{parser.prog} has no {flag}")


@pytest.fixture(scope="module")
def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("command", sorted(SHARED))
def test_model_flags_match_the_trainer(subparsers, command):
    trainer = build_train_parser()
    for name in SHARED[command]:
        ours, theirs = _action(subparsers[command], f"--{name}"), _action(trainer, f"--{name}")
        assert ours.help == theirs.help and ours.help
        assert ours.option_strings == theirs.option_strings
        assert type(ours) is type(theirs)


def test_pretrained_model_help_is_the_trainers(subparsers):
    """The one the brief names explicitly: the text shown by `--help` is the trainer's."""
    trainer_help = _action(build_train_parser(), "--pretrained_model_name_or_path").help
    assert trainer_help.startswith("Base model:")
    for command in ("sample", "grid", "inspect-model"):
        assert _action(subparsers[command], "--pretrained_model_name_or_path").help == trainer_help


def test_sampler_defaults_that_differ_on_purpose(subparsers):
    args = subparsers["sample"].parse_args(["--pretrained_model_name_or_path", "tiny", "--prompt", "x"])
    assert (args.seed, args.clip_skip, args.vae, args.use_ema_weights) == (-1, 1, None, False)
    args = subparsers["grid"].parse_args(["--pretrained_model_name_or_path", "tiny", "--prompt", "x",
                                          "--seed", "-1", "--use_ema_weights"])
    assert args.seed == -1 and args.use_ema_weights is True
    assert TrainConfig().seed is None  # the trainer keeps "unset"


def test_sample_still_requires_a_model(subparsers, capsys):
    with pytest.raises(SystemExit):
        subparsers["sample"].parse_args(["--prompt", "x"])
    assert "--pretrained_model_name_or_path" in capsys.readouterr().err


def test_inspect_model_takes_the_flag_or_the_positional(capsys):
    assert main(["inspect-model", "--pretrained_model_name_or_path", "tiny", "--json"]) == 0
    assert '"name"' in capsys.readouterr().out
    assert main(["inspect-model", "tiny", "--pretrained_model_name_or_path", "other"]) == 2
    assert "two models given" in capsys.readouterr().err
    assert main(["inspect-model"]) == 2
    assert "no model given" in capsys.readouterr().err


def test_overrides_must_name_config_fields():
    with pytest.raises(ValueError, match="not_a_field"):
        add_config_arguments(argparse.ArgumentParser(), ["vae"], defaults={"not_a_field": 1})
    with pytest.raises(ValueError, match="vea"):
        add_config_arguments(argparse.ArgumentParser(), ["vea"])


def test_sampling_defaults_come_from_the_one_declaration(subparsers):
    """seed -1 / clip skip 1 are declared on the TrainConfig fields, not in a second table in the sampler."""
    from library.config import option_fields, spec_of

    declared = {f.name: spec_of(f).sample_default for f in option_fields() if spec_of(f).sample_default is not None}
    assert declared == {"seed": -1, "clip_skip": 1}
    for command in ("sample", "grid"):
        assert _action(subparsers[command], "--seed").default == -1
        assert _action(subparsers[command], "--clip_skip").default == 1
    assert "-1, as AUTOMATIC1111" in _action(build_train_parser(), "--seed").help
