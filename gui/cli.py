"""`lorasmith gui`: start the web page, on this machine only unless asked otherwise."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from library.errors import ConfigError

LOCAL_HOST = "127.0.0.1"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("gui", help="start the web GUI (binds to 127.0.0.1 unless --listen)",
                              description="The lorasmith web GUI: training form, presets, live progress, dataset tools and grids.")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--listen", action="store_true", help="bind to 0.0.0.0 so other machines can connect: anyone who reaches this machine can start runs "
                        "and read and write the allowed folders (use --auth)")
    p.add_argument("--share", action="store_true", help="make a public Gradio share link: anyone with the link can start runs and read and write the "
                        "allowed folders (use --auth)")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this user name and password")
    p.add_argument("--allow", action="append", default=None, metavar="DIR",
                   help="a folder the GUI may read and write (repeatable; default: the current folder)")
    p.add_argument("--jobs_dir", default=None, help="where job configs, progress and logs go (default ~/.lorasmith/gui-jobs)")
    p.add_argument("--inbrowser", action="store_true", help="open the page in the default browser")
    p.set_defaults(func=run_gui)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"--auth {text!r} is not USER:PASS", ["write e.g. --auth alice:a-long-password"])
    return user, password


def exposure_warnings(args: argparse.Namespace) -> list[str]:
    """What the user must know before the GUI is reachable from other machines."""
    lines = []
    if args.listen or args.share:
        where = "anyone with the public share link" if args.share else "every machine that can reach this one"
        lines.append(f"WARNING: the GUI is reachable by {where}. It can start training runs and read and write "
                     "files in the allowed folders with your rights.")
        if not args.auth:
            lines.append("WARNING: no --auth given: nobody is asked for a password.")
    return lines


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_gui(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    auth = parse_auth(args.auth)
    allowed = args.allow or [os.getcwd()]
    for folder in allowed:
        if not Path(folder).expanduser().is_dir():
            raise ConfigError(f"--allow {folder!r} is not a folder", ["create it or pass an existing folder"])
    from gui.app import build_app
    from gui.context import GuiContext

    ctx = GuiContext.create(allowed, args.jobs_dir)
    for line in exposure_warnings(args):
        print(line, file=sys.stderr)
    print("Allowed folders: " + ", ".join(str(r) for r in ctx.guard.roots), file=sys.stderr)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    demo = build_app(ctx)
    try:
        demo.launch(
            server_name="0.0.0.0" if args.listen else LOCAL_HOST, server_port=args.port, share=args.share,
            auth=auth, allowed_paths=[str(r) for r in ctx.guard.roots], inbrowser=args.inbrowser,
            show_error=True, footer_links=[],
        )
    except KeyboardInterrupt:
        pass
    finally:
        ctx.close()
        demo.close()
    return 0
