#!/usr/bin/env bash
# Sets up and runs the whole test suite on a fresh machine with Python 3.11 and pip.
# torch is pinned through constraints.txt (a CPU wheel); pyproject keeps a range.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -c constraints.txt -e ".[test]"
python -m ruff check .
# The browser test drives Debian's chromium (Playwright's own browser download is never used).
command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
python -m pytest -n 2 "$@"
