#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: apt packages, a venv in .venv, the package.
# Usage: scripts/setup.sh [EXTRAS]   (EXTRAS: comma list of pyproject extras, e.g. "dev,train")
# As root it installs the apt packages itself; otherwise it prints the one sudo line to run.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
# python3-venv: Debian's python3 has no ensurepip without it, so `python3 -m venv` would fail.
APT_PACKAGES=(python3 python3-venv libportaudio2 libsndfile1 ffmpeg pulseaudio pulseaudio-utils)
# The booted-container test (tests/test_systemd_container.py) builds a Debian root and boots it.
[[ ",$extras," == *",dev,"* ]] && APT_PACKAGES+=(systemd-container debootstrap)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# systemd-analyze (used by the unit-file tests) comes with the systemd package.
if [[ ",$extras," == *",dev,"* ]] && ! command -v systemd-analyze >/dev/null; then missing+=(systemd); fi
# A real Prometheus server and promtool for the /metrics tests (tests/test_metrics.py).
if [[ ",$extras," == *",dev,"* ]] && ! command -v promtool >/dev/null; then missing+=(prometheus); fi
# The chain tests run the real programs: an MQTT broker, Liquidsoap, an Icecast server.
if [[ ",$extras," == *",dev,"* ]]; then
  for pkg in mosquitto liquidsoap icecast2; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
fi
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "setup: installing apt packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing system packages; run this once, then re-run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

PYTHON="${PYTHON:-python3}"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
spec="."
[[ -n "$extras" ]] && spec=".[${extras}]"
# Re-install only when pyproject.toml or the extras changed since the last set-up.
stamp=".venv/.streamclf-setup"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) ${extras}"
if [[ ! -f "$stamp" ]] || ! grep -qxF "$want" "$stamp"; then
  echo "setup: installing streamclf${extras:+[$extras]} into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$spec"
  echo "$want" >> "$stamp"
fi

# The model-import tests convert the original checkpoints inside the musicnn wheel (PyPI, ISC).
wheel=".whl/musicnn-0.1.0-py3-none-any.whl"
if [[ ",$extras," == *",dev,"* && ! -f "$wheel" ]]; then
  .venv/bin/python -m pip download -q --no-deps musicnn==0.1.0 -d .whl \
    || echo "setup: could not download the musicnn wheel; the import tests will skip" >&2
fi
