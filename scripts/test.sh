#!/usr/bin/env bash
# Set up (if needed, with the dev and train extras), lint with ruff, and run the whole test suite.
# Extra arguments go to pytest (e.g. --soak for the 30-minute reliability soak).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,train
.venv/bin/ruff check .  # pyproject.toml's [tool.ruff]
exec .venv/bin/python -m pytest "$@"
