#!/usr/bin/env bash
# Browser tests (tests/test_gui_browser.py): Debian's chromium, driven by the playwright Python package
# through executable_path=/usr/bin/chromium, so no browser download (`playwright install`) is needed.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi
if ! python3 -c "import playwright" >/dev/null 2>&1; then
    python3 -m pip install -q "playwright>=1.45"
fi
