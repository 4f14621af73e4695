"""`lorasmith gui`: start the web page, on this machine only unless asked otherwise."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from library.errors import ConfigError

LOCAL_HOST = "127.0.0.1"
PROBE_SECONDS = 60.0  # how long the started server may take to answer its first request
PROBE_OK = (200, 401, 301, 302, 303, 307, 308)  # Gradio's own list: auth and redirects count as up


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


def patient_url_ok(url: str, deadline_s: float = PROBE_SECONDS, attempt_timeout_s: float = 5.0) -> bool:
    """Gradio's localhost probe, but retried until `deadline_s`: Gradio's own gives up on the
    first 3-second timeout, which a loaded machine easily misses, and then refuses to start."""
    import httpx

    end = time.monotonic() + deadline_s
    while True:
        try:
            if httpx.head(url, timeout=attempt_timeout_s, verify=False).status_code in PROBE_OK:
                return True
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() >= end:
            return False
        time.sleep(0.5)


def launch_app(demo: Any, *, host: str, port: int, share: bool, auth: tuple[str, str] | None,
               allowed_paths: list[str], inbrowser: bool = False, block: bool = True) -> None:
    """demo.launch with the patient probe; a server that never answers is a named error, never a share link."""
    import gradio.networking as networking

    original = networking.url_ok
    networking.url_ok = patient_url_ok
    try:
        from gui.page_assets import CSS, HEAD

        demo.launch(server_name=host, server_port=port, share=bool(share), auth=auth, allowed_paths=allowed_paths,
                    inbrowser=inbrowser, show_error=True, footer_links=[], prevent_thread_lock=not block,
                    css=CSS, head=HEAD)
    except ValueError as exc:
        if "localhost is not accessible" not in str(exc):
            raise
        raise ConfigError(f"the GUI server did not answer on http://{host}:{port} within {PROBE_SECONDS:.0f} s", [
            "the machine may be very busy, or a proxy setting (http_proxy/no_proxy) blocks localhost; try again",
            "lorasmith never falls back to a public share link; pass --share only if you want one"]) from None
    finally:
        networking.url_ok = original


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
        launch_app(demo, host="0.0.0.0" if args.listen else LOCAL_HOST, port=args.port, share=args.share,
                   auth=auth, allowed_paths=[str(r) for r in ctx.guard.roots], inbrowser=args.inbrowser)
    except KeyboardInterrupt:
        pass
    finally:
        ctx.close()
        demo.close()
    return 0
