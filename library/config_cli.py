"""`lorasmith config …`: import kohya_ss configs, show, validate and list presets."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from library.config_io import add_config_arguments, add_source_arguments, config_to_toml, parse_structured, write_config
from library.config_resolve import resolve_config
from library.config_validate import validate
from library.errors import ConfigError
from library.presets import list_presets


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="import, show and check training configs")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)

    imp = sub.add_parser("import-kohya", help="convert a kohya_ss GUI JSON config")
    imp.add_argument("file", help="the kohya_ss JSON file")
    imp.add_argument("-o", "--output", default=None, help="write the result as .toml or .json (sparse preset)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    imp.set_defaults(func=_import_kohya)

    for name, func, text in (("show", _show, "print the effective config as TOML"), ("validate", _validate, "check a config without training")):
        p = sub.add_parser(name, help=text)
        add_source_arguments(p)
        add_config_arguments(p)
        p.set_defaults(func=func)

    pre = sub.add_parser("presets", help="list built-in and user presets")
    pre.add_argument("--json", action="store_true")
    pre.set_defaults(func=_presets)


def _import_kohya(args: argparse.Namespace) -> int:
    from library.config_io import is_kohya_gui_config
    from library.kohya_import import import_kohya_config

    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable JSON file: {exc}") from None
    data = parse_structured(text, ".json", str(path))
    if not isinstance(data, dict) or not is_kohya_gui_config(data):
        raise ConfigError(f"{path} does not look like a kohya_ss GUI config", ["expected keys such as LoRA_type, epoch, max_resolution, optimizer"])
    result = import_kohya_config(data, source=str(path))
    if args.output:
        out = Path(args.output)
        if out.exists() and not args.overwrite:
            raise ConfigError(f"{out} exists", ["pass --overwrite or choose another name"])
        if result.sample_prompts_text:
            result.materialize_sample_prompts(out.parent / f"{out.stem}_prompts")
        write_config(result.config, out)
    print(result.summary())
    if args.output:
        print(f"Wrote {args.output}")
    else:
        print()
        print(config_to_toml(result.config, only_changed=True))
    return 0


def _show(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    print(config_to_toml(cfg))
    return 0


def _validate(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    for line in validate(cfg):
        print(f"warning: {line}")
    print("config is valid")
    return 0


def _presets(args: argparse.Namespace) -> int:
    found = list_presets()
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for p in found:
            print(f"{p['name']:<28} {p['source']:<8} {p['description']}")
    return 0
