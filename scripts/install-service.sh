#!/usr/bin/env bash
# Install streamclf from this checkout as the system service of docs/deploy.md (sections 1, 3, 4):
# the venv in /opt/streamclf/venv, the config in /etc/streamclf, the unit in /etc/systemd/system.
# Usage, as root: scripts/install-service.sh [EXTRA]   (EXTRA: e.g. "gpu" on an NVIDIA machine)
# Idempotent: re-run it to upgrade. It keeps an existing /etc/streamclf/streamclf.toml, and it
# neither enables nor starts the unit: pick the input in the config first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "install-service: run as root: sudo $0 $*" >&2
  exit 1
fi
# procps: /usr/bin/kill, which the unit's ExecReload= runs.
APT_PACKAGES=(python3 python3-venv libportaudio2 libsndfile1 ffmpeg procps)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "install-service: installing apt packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[[ -x /opt/streamclf/venv/bin/python ]] || python3 -m venv /opt/streamclf/venv
/opt/streamclf/venv/bin/pip install -q "$PWD${1:+[$1]}"

install -d -m 0755 /etc/streamclf
[[ -f /etc/streamclf/streamclf.toml ]] || install -m 0644 configs/default.toml /etc/streamclf/streamclf.toml
install -m 0644 systemd/streamclf.service /etc/systemd/system/streamclf.service
# Outside a booted system (a chroot, an image build) there is no manager to tell.
if [[ -d /run/systemd/system ]]; then
  systemctl daemon-reload
fi
echo "install-service: installed; next: edit /etc/streamclf/streamclf.toml, then" \
     "systemctl enable --now streamclf (docs/deploy.md)"
