#!/usr/bin/env bash
# One-step set-up on a fresh Debian bookworm machine (x86_64 or aarch64, Python >= 3.10):
#   1. Debian packages: Mesa's lavapipe Vulkan driver from bookworm-backports (SAPIEN renders on the CPU),
#      the Vulkan loader and the X11/EGL client libraries SAPIEN links against.
#   2. A virtual environment in .venv with the project installed editable, plus the test tools.
# Idempotent: a re-run with nothing changed prints one line and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${RF_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.rf_install_stamp"
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=0
if ! dpkg -s mesa-vulkan-drivers libvulkan1 libx11-6 libegl1 libgl1 >/dev/null 2>&1; then need_apt=1
else
  mesa_ver=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)
  case "$mesa_ver" in 22.*) need_apt=1 ;; esac
fi
if [ "$need_apt" = 1 ]; then
  echo "[install] Debian packages: Vulkan (lavapipe from bookworm-backports), X11/EGL client libraries"
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libvulkan1 libx11-6 libegl1 libgl1 libglib2.0-0 >/dev/null
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[install] up to date ($VENV)"
  exit 0
fi

echo "[install] Python environment in $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# torch and torchvision must come as a matching pair (PyPI's torchvision does not import beside a
# CPU-only torch wheel of another release).
case "$(uname -m)" in
  x86_64) TORCH=("torch==2.14.1" "torchvision==0.29.1") ;;
  *) TORCH=("torch==2.9.1" "torchvision==0.24.1") ;;
esac
$PIP install -q "${TORCH[@]}"
$PIP install -q -e ".[test]" "${TORCH[@]}"
$PIP check >/dev/null
echo "$want" > "$STAMP"
echo "[install] done"
