#!/usr/bin/env bash
# Set up (if needed) and run `streamclf listen` on the default input device, or on the bundled
# music clip (looped, in real time) when this machine has no input device.
# Extra arguments go to `streamclf listen`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if .venv/bin/python -c 'import sounddevice as sd; sd.query_devices(kind="input")' >/dev/null 2>&1; then
  exec .venv/bin/streamclf listen "$@"
fi
echo "run: no input device on this machine; listening to the bundled clip (streamclf listen --demo)"
exec .venv/bin/streamclf listen --demo "$@"
