#!/usr/bin/env bash
# Set up (if needed, with the dev and train extras) and run the whole test suite.
# Extra arguments go to pytest (e.g. --soak for the 30-minute reliability soak).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,train
exec .venv/bin/python -m pytest "$@"
